#!/usr/bin/env python
"""Training throughput and ELBO-per-wall-clock benchmark: molvae's default model and the MOSES VAE's architecture.

    python benchmarks/bench_train.py ../shared/moses/train.csv.gz --n-molecules 30000 --steps 20 --minutes 5

For each configuration, in its own process (so peak memory is its own):

1. throughput: ``--warmup`` steps, then ``--steps`` timed training steps (forward,
   backward, clip, Adam) on length-bucketed batches; molecules/s is the median over
   the timed steps, tokens/s counts real target tokens (``<eos>`` included);
2. learning speed: a fresh model trained for ``--minutes`` of wall-clock time (β rises
   linearly from 0 to 1 over the first half of the budget, the same for every
   configuration), then the negative ELBO (β = 1, nats per molecule, fp32, one posterior
   sample) on a fixed held-out set of ``--n-eval`` molecules.

Both use the exact training step of ``molvae.train`` (same model code, same mixed
precision decision, same bucketing). Prints one JSON document. Works unchanged on a
GPU (``--device auto`` picks CUDA; timings then synchronize the device).

``--variants`` also times the packed-sequence and fp32 variants of each configuration
(throughput only), to show what each implementation choice is worth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The MOSES VAE (moses/vae/config.py): 1-layer GRU encoder 256 (unidirectional), 3-layer GRU
# decoder 512, latent 128, batch 512. Its embedding is the vocabulary size (one-hot-like); 64 here.
MOSES_MODEL = {"embedding_dim": 64, "hidden_dim": 256, "encoder_layers": 1, "bidirectional": False,
               "decoder_hidden_dim": 512, "decoder_layers": 3, "latent_dim": 128}
CONFIGS = {
    "molvae_default": {"model": {}, "train": {}},
    "moses_architecture": {"model": MOSES_MODEL, "train": {"batch_size": 512}},
    # Cheaper encoders (the encoder is ~60% of the default's FLOPs; the decoder is the sampler).
    "encoder128": {"model": {"hidden_dim": 128}, "train": {}},
    "encoder128_decoder512": {"model": {"hidden_dim": 128, "decoder_hidden_dim": 512}, "train": {}},
    "encoder_unidirectional256": {"model": {"bidirectional": False}, "train": {}},
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _subset(data: str, n: int, seed: int, folder: Path) -> Path:
    """A seeded random subset of ``data`` as a CSV (the whole file when ``n`` is 0)."""
    if not n:
        return Path(data)
    import pandas as pd

    from molvae.data import read_molecules

    table = read_molecules(data)
    table = table.sample(n=min(n, len(table)), random_state=seed)
    out = folder / f"subset_{Path(data).name.split('.')[0]}_{n}_seed{seed}.csv"
    if not out.exists():
        pd.DataFrame({"smiles": table["input"].to_numpy()}).to_csv(out, index=False)
    return out


def run_one(args: argparse.Namespace) -> dict:
    """Benchmark one configuration in this process."""
    import numpy as np
    import torch

    from molvae import data as data_mod
    from molvae.cache import prepare_file
    from molvae.config import ModelConfig, TrainConfig
    from molvae.core import resolve_device
    from molvae.model import VAE
    from molvae.diagnostics import autocast as _autocast, evaluate_loss
    from molvae.training.schedules import kl_term, use_mixed_precision

    spec = CONFIGS[args.only]
    if args.threads:
        torch.set_num_threads(args.threads)
    tc = TrainConfig(**{**spec["train"], **({"batch_size": args.batch_size} if args.batch_size else {}),
                        "device": args.device, "seed": args.seed, "show_progress": False,
                        **({"cpu_amp": args.cpu_amp == "on"} if args.cpu_amp != "auto" else {})})
    t0 = time.perf_counter()
    prepared = prepare_file(args.data_file, n_jobs=0)
    prep_s = time.perf_counter() - t0
    device = resolve_device(tc.device)
    vocab = prepared.vocab
    longest = int(prepared.tokens.lengths.max())
    mc = ModelConfig(**spec["model"]).replace(max_len=longest + 1)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(prepared))
    n_eval = min(args.n_eval, len(prepared) // 10)
    eval_idx, train_idx = np.sort(perm[:n_eval]), np.sort(perm[n_eval:])
    lengths = prepared.tokens.lengths

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def make(impl: str, amp: bool):
        torch.manual_seed(args.seed)
        net = VAE(mc, len(vocab)).to(device)
        net.rnn_impl = impl
        opt = torch.optim.Adam(net.parameters(), lr=tc.learning_rate)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda"
                                      and not torch.cuda.is_bf16_supported())
        return net, opt, scaler, amp

    def step(state, idx, beta: float) -> int:
        net, opt, scaler, amp = state
        b = prepared.tokens.batch(idx, vocab.eos_id, vocab.pad_id)
        if device.type == "cuda":
            b = b.pin_memory()
        b = b.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = net(b.tokens, b.lengths, sample=True)
        loss = out.recon.mean() + beta * kl_term(out, tc)
        opt.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        if scaler.is_enabled():
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return int(b.lengths.sum())

    def batches(epoch: int) -> list:
        return data_mod.bucket_batches(lengths, train_idx, tc.batch_size, shuffle=True,
                                       rng=np.random.default_rng([args.seed, epoch]))

    def throughput(impl: str, amp: bool) -> dict:
        state = make(impl, amp)
        state[0].train()
        bl = batches(0)
        times, mols, toks, cpu = [], [], [], []
        for i in range(args.warmup + args.steps):
            idx = bl[i % len(bl)]
            sync()
            t, c = time.perf_counter(), time.process_time()
            n_tok = step(state, idx, 0.5)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                mols.append(len(idx))
                toks.append(n_tok)
        rates = [m / t for m, t in zip(mols, times)]
        return {"rnn_impl": impl, "mixed_precision": amp,
                "molecules_per_s": round(statistics.median(rates), 1),
                "s_per_step": round(statistics.median(times), 4),
                "tokens_per_s": round(statistics.median([k / t for k, t in zip(toks, times)]), 1),
                # CPU seconds of this process: with --threads 1 on a shared machine, the idle-machine
                # single-core rate (wall-clock figures then mostly measure the other load)
                "cpu_s_per_step": round(statistics.median(cpu), 4),
                "molecules_per_cpu_s": round(statistics.median([m / c for m, c in zip(mols, cpu)]), 1),
                "timed_steps": len(times), "warmup_steps": args.warmup,
                "molecules_per_step": round(float(np.mean(mols)), 1)}

    amp = use_mixed_precision(tc, device)
    result: dict = {"name": args.only, "model_config": mc.to_dict(),
                    "train_config": {"batch_size": tc.batch_size, "learning_rate": tc.learning_rate,
                                     "grad_clip": tc.grad_clip, "mixed_precision": amp},
                    "n_parameters": VAE(mc, len(vocab)).n_parameters(), "prepare_s": round(prep_s, 2),
                    "n_train": int(len(train_idx)), "n_eval": int(len(eval_idx))}
    result["throughput"] = throughput("padded", amp)
    if args.variants:
        result["variants"] = [throughput(impl, a) for impl, a in (("packed", False), ("padded", False),
                                                                   ("packed", amp)) if (impl, a) != ("padded", amp)]
    if args.minutes > 0:
        state = make("padded", amp)
        net = state[0]
        net.train()
        budget = 60.0 * args.minutes
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        t_start = clock()
        epoch, n_steps, n_mols = 0, 0, 0
        curve = []
        next_eval = budget / max(1, args.curve_points)
        elapsed = 0.0
        done = False
        while not done:
            for idx in batches(epoch):
                beta = min(1.0, elapsed / (0.5 * budget))
                step(state, idx, beta)
                sync()
                n_steps += 1
                n_mols += len(idx)
                elapsed = clock() - t_start
                if elapsed >= next_eval or elapsed >= budget:
                    t_eval = clock()
                    val = evaluate_loss(net, prepared.tokens, eval_idx, vocab, 512, device, seed=args.seed)
                    net.train()
                    curve.append({"train_s": round(elapsed, 1), "epochs": round(n_mols / len(train_idx), 3),
                                  "val_nelbo": round(val["nelbo"], 3), "val_recon": round(val["recon"], 3),
                                  "val_kl": round(val["kl"], 3), "val_token_acc": round(val["token_acc"], 4)})
                    print(f"[{args.only}] {curve[-1]}", file=sys.stderr, flush=True)
                    t_start += clock() - t_eval  # evaluation time is not training time
                    next_eval += budget / max(1, args.curve_points)
                    if elapsed >= budget:
                        done = True
                        break
            epoch += 1
        result["budget"] = {"minutes": args.minutes, "clock": args.clock, "steps": n_steps, "molecules_seen": n_mols,
                            "epochs": round(n_mols / len(train_idx), 3), "val_nelbo": curve[-1]["val_nelbo"],
                            "curve": curve}
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="molecule file, e.g. ../shared/moses/train.csv.gz")
    ap.add_argument("--n-molecules", type=int, default=30000, help="seeded random subset (0 = the whole file)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget for the ELBO (0 = skip)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what --minutes counts: wall-clock, or this process's CPU time (use with --threads 1 "
                         "on a shared machine)")
    ap.add_argument("--curve-points", type=int, default=5, help="held-out evaluations within the budget")
    ap.add_argument("--n-eval", type=int, default=2000, help="held-out molecules for the ELBO")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--batch-size", type=int, default=0, help="override every configuration's batch size")
    ap.add_argument("--cpu-amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast on the CPU")
    ap.add_argument("--variants", action="store_true", help="also time packed and fp32 variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--only", help=argparse.SUPPRESS)        # internal: run one configuration in this process
    ap.add_argument("--data-file", help=argparse.SUPPRESS)   # internal: the subset file
    args = ap.parse_args(argv)

    if args.only:
        print(json.dumps(run_one(args)))
        return 0

    import torch

    from molvae.workers import available_cpus as _available_cpus
    from molvae.core import cpu_has_fast_bf16

    with tempfile.TemporaryDirectory(prefix="molvae-bench-") as tmp:
        env = dict(os.environ)
        env.setdefault("MOLVAE_CACHE_DIR", str(Path(tmp) / "cache"))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        subset = _subset(args.data, args.n_molecules, args.seed, Path(tmp))
        # Fill the cache once, so that no configuration's time includes preprocessing.
        subprocess.run([sys.executable, "-c", "import sys; from molvae.cache import prepare_file; "
                        "prepare_file(sys.argv[1], n_jobs=0)", str(subset)], env=env, check=True)
        results = {}
        load_before = os.getloadavg()
        for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
            if name not in CONFIGS:
                raise SystemExit(f"unknown configuration {name!r}; expected some of {list(CONFIGS)}")
            cmd = [sys.executable, __file__, args.data, "--only", name, "--data-file", str(subset),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--minutes", str(args.minutes),
                   "--curve-points", str(args.curve_points), "--n-eval", str(args.n_eval),
                   "--device", args.device, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                   "--cpu-amp", args.cpu_amp, "--seed", str(args.seed), "--clock", args.clock] + (["--variants"] if args.variants else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            sys.stderr.write(proc.stderr[-4000:])
            if proc.returncode != 0:
                raise SystemExit(f"configuration {name} failed (exit {proc.returncode})")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[{name}] " + json.dumps(results[name]), file=sys.stderr, flush=True)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device
    report = {
        "data": str(args.data), "n_molecules": args.n_molecules or "all",
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name(),
        "device_type": "cuda" if device.startswith("cuda") else "cpu",
        "cpus": _available_cpus(), "torch_threads": args.threads or torch.get_num_threads(),
        "cpu_bf16_hardware": cpu_has_fast_bf16(), "torch": torch.__version__, "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "moses_reference_molecules_per_s": 51.0,
        "results": results,
    }
    for name, r in results.items():
        r["speedup_vs_moses_reference"] = round(r["throughput"]["molecules_per_s"] / 51.0, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
