#!/usr/bin/env python
"""Peak memory of ``molvae generate --n N --out big.csv`` as N grows: it should stay flat.

    python benchmarks/bench_generate_memory.py                     # 10^5 and 10^6 with a tiny model
    python benchmarks/bench_generate_memory.py --n 2000 20000 --model runs/LATEST_RUN --json out.json

Each N runs ``python -m molvae generate`` in its own process; its peak resident set
size is read from the kernel (``os.wait4`` -> ``ru_maxrss``) when it exits. The output
file is checked too: exactly N data rows, every line complete (the file ends in a
newline), every row parses with three fields.

Without ``--model`` a tiny model (embedding 16, GRU 16/32, latent 4; ~10k parameters)
is trained for 3 epochs on ``tests/data/small.csv`` first. Its samples are junk
chemistry but go through the same decode -> SELFIES -> RDKit -> CSV path as a real
model's; memory, not quality, is measured. Peak memory of a larger model differs by
its weights and one batch of activations, not by N.

``--threads`` (default 1) sets OMP_NUM_THREADS for the generating process: on a
shared, oversubscribed CPU, torch's default thread pool spins and runs ~10x slower
(measured 5.7 vs 0.65 ms/molecule on a 2-core machine at load 12).

Result on that shared 2-CPU machine (``benchmarks/results/generate_memory.json``):
peak RSS 389.5 MB for 10^5 and 390.5 MB for 10^6 molecules (tiny model, batch 1000).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_tiny_model(out: Path) -> Path:
    """A tiny model trained on the test data (seconds)."""
    cmd = [sys.executable, "-m", "molvae", "train", str(ROOT / "tests" / "data" / "small.csv"), "--out", str(out),
           "--epochs", "3", "--batch-size", "32", "--embedding-dim", "16", "--hidden-dim", "16",
           "--decoder-hidden-dim", "32", "--latent-dim", "4", "--kl-warmup", "2", "--device", "cpu",
           "--threads", "1", "--seed", "0", "--no-progress", "--n-jobs", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env(1))
    return out / "model.pt"


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def check_output(path: Path, n: int) -> dict[str, object]:
    """Rows, completeness and validity of a generated CSV."""
    raw_end = b""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        raw_end = f.read(1)
    rows = bad = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        for row in reader:
            rows += 1
            if len(row) != 3 or row[2] not in ("True", "False"):
                bad += 1
    return {"bytes": size, "rows": rows, "rows_expected": n, "malformed_rows": bad,
            "ends_with_newline": raw_end == b"\n", "header": header}


def measure(model: Path, n: int, out: Path, threads: int, batch_size: int, seed: int = 0) -> dict[str, object]:
    """Run one generation in a child process; its peak RSS comes from wait4."""
    cmd = [sys.executable, "-m", "molvae", "generate", "--n", str(n), "--model", str(model), "--out", str(out),
           "--seed", str(seed), "--device", "cpu", "--batch-size", str(batch_size), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"generate --n {n} failed (exit {code}):\n{err}")
    result = {"n": n, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1),
              "ms_per_molecule": round(1000 * wall / n, 3), "cpu_user_s": round(usage.ru_utime, 1)}
    result.update(check_output(out, n))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="sample sizes")
    ap.add_argument("--model", type=Path, help="model file or run folder (default: train a tiny one)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the generating process")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--keep", type=Path, help="folder to keep the generated files in (default: deleted)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="molvae-bench-mem-") as tmp:
        tmp = Path(tmp)
        model = args.model or train_tiny_model(tmp / "tiny")
        where = args.keep or tmp
        where.mkdir(parents=True, exist_ok=True)
        results = []
        for n in args.n:
            out = where / f"generated_{n}.csv"
            r = measure(model, n, out, args.threads, args.batch_size)
            results.append(r)
            print(f"n={n:>9,}  peak RSS {r['peak_rss_mb']:8.1f} MB  wall {r['wall_s']:8.1f} s  "
                  f"({r['ms_per_molecule']:.3f} ms/mol)  rows {r['rows']:,}  malformed {r['malformed_rows']}  "
                  f"complete last line {r['ends_with_newline']}", file=sys.stderr, flush=True)
            if args.keep is None:
                out.unlink()
        report = {
            "benchmark": "generate peak memory vs n",
            "model": "tiny (trained by this script)" if args.model is None else str(args.model),
            "threads": args.threads, "batch_size": args.batch_size,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_at_end": [round(x, 1) for x in os.getloadavg()]},
            "results": results,
        }
        if len(results) > 1:
            report["rss_growth_mb"] = round(results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"], 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
