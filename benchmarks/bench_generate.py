#!/usr/bin/env python
r"""How fast ``molvae generate`` makes molecules, and where the time goes. Prints one JSON document.

    python benchmarks/bench_generate.py --model moses-small --n 100000 --out benchmarks/results/bench_generate.json

1. **end to end**: the ``molvae generate --n N --seed 0 --out FILE.smi`` command in a subprocess, once with
   its default worker processes (all cores from 20,000 molecules) and once with ``-j 1`` for ``--n-ref``
   molecules (the single-process reference, measured in the same run); valid molecules per second of wall
   clock including start-up, and the peak RSS of the command and of its largest worker;
2. **where the time goes**, in this process on one thread over ``--n-profile`` molecules: the network
   (z → token ids, :meth:`molvae.model.VAE.generate`), SELFIES decoding (token ids → SMILES with
   ``selfies.decoder``) and RDKit canonicalization, each as molecules per second of one core.

The machine's load average is recorded before and after: on a shared machine the wall-clock figures are
lower; molecules per CPU-second (``valid_per_cpu_s``) are not, and times the cores give the rate an idle
machine reaches at best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_TIMED = r"""
import resource, subprocess, sys, time, json
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stderr=subprocess.DEVNULL)
wall = time.perf_counter() - t
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb_largest_process": kids.ru_maxrss / 1024,
                  "cpu_s": kids.ru_utime + kids.ru_stime}))
"""


def end_to_end(model: str, n: int, jobs: str | None, folder: Path) -> dict:
    out = folder / f"gen_{n}_{jobs or 'default'}.smi"
    cmd = [sys.executable, "-m", "molvae", "generate", "--model", model, "-n", str(n), "--seed", "0",
           "--out", str(out), "--no-progress"]
    if jobs is not None:
        cmd += ["-j", jobs]
    res = json.loads(subprocess.run([sys.executable, "-c", _TIMED, *cmd], capture_output=True, text=True,
                                    check=True).stdout)
    lines = out.read_text().splitlines() if out.exists() else []
    valid = sum(1 for s in lines if s)
    res.update({"n": n, "n_jobs": jobs or "default", "valid": valid,
                "valid_per_s": valid / res["wall_s"] if res["wall_s"] else None,
                # robust to other load on the machine: molecules per CPU-second of the command and its workers
                "valid_per_cpu_s": valid / res["cpu_s"] if res["cpu_s"] else None})
    return res


def profile(model_spec: str, n: int) -> dict:
    import selfies as sf
    import torch

    from molvae import MolVAE, chem
    from molvae.core import _fast_bf16_here

    torch.set_num_threads(1)
    model = MolVAE.load(model_spec)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, model.config.latent_dim, generator=gen)
    model.net.generate(z[:200], model.config.max_len, generator=gen, atom_tokens=model.atom_tokens)  # warm-up
    bf16 = _fast_bf16_here()  # as MolVAE.sample does
    t0 = time.perf_counter()
    ids = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, n, 1000):
            ids += model.net.generate(z[s:s + 1000], model.config.max_len, generator=gen,
                                      atom_tokens=model.atom_tokens)
    t1 = time.perf_counter()
    strings = [model.vocab.decode_selfies(seq) for seq in ids]
    smiles = [sf.decoder(s) for s in strings]
    t2 = time.perf_counter()
    canon = [chem.canonicalize(s) for s in smiles]
    t3 = time.perf_counter()
    total = t3 - t0
    return {"n": n, "threads": 1, "bf16": bf16,
            "network_per_s": n / (t1 - t0), "selfies_per_s": n / (t2 - t1), "rdkit_per_s": n / (t3 - t2),
            "share": {"network": (t1 - t0) / total, "selfies": (t2 - t1) / total, "rdkit": (t3 - t2) / total},
            "mean_tokens": sum(map(len, ids)) / n, "valid": sum(1 for c in canon if c) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moses-small")
    ap.add_argument("--n", type=int, default=100_000, help="molecules for the end-to-end run")
    ap.add_argument("--n-ref", type=int, default=20_000, help="molecules for the single-process reference")
    ap.add_argument("--n-profile", type=int, default=5000)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    record = {"benchmark": "generate", "model": args.model, "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        record["default_jobs"] = end_to_end(args.model, args.n, None, folder)
        record["load_mid"] = os.getloadavg()
        record["reference_one_process"] = end_to_end(args.model, args.n_ref, "1", folder)
    record["speedup_vs_one_process"] = (record["default_jobs"]["valid_per_s"]
                                        / record["reference_one_process"]["valid_per_s"])
    record["profile_one_thread"] = profile(args.model, args.n_profile)
    record["load_after"] = os.getloadavg()
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
