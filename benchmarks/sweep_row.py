#!/usr/bin/env python
r"""One row of the training-recipe sweep: train for a fixed wall-clock budget, then measure the sampler
and the autoencoder, and print (and write) one JSON record.

    python benchmarks/sweep_row.py --train ../shared/moses/train.csv.gz --test ../shared/moses/test.csv.gz \
        --name b1_fb0.3 --minutes 15 --threads 1 --out benchmarks/results/sweep14/b1_fb0.3.json \
        -- --kl-weight 1 --free-bits 0.3 --kl-warmup 0.5

Everything after ``--`` goes to ``molvae train`` unchanged. What a row does:

1. a seeded subset of ``--n-train`` molecules of ``--train`` (the same file for every row with the
   same seed) is trained on with ``molvae train --max-time MINUTES --threads THREADS --val-fraction 0.02``
   into ``--runs-dir/NAME`` (skipped when that folder already holds a model and ``--eval-only`` is given);
2. a ``--fit-prior``-component Gaussian mixture prior is fitted to ``--n-fit`` training molecules'
   latent codes (:func:`molvae.sample.fit_prior`), then ``--n-samples`` molecules are sampled (seed 0)
   from N(0, I) and from it and evaluated with
   :func:`molvae.metrics.evaluate` against a seeded subset of ``--n-test`` molecules of ``--test``
   (FCD/Test, Filters, SNN/Test, Frag/Test, Scaf/Test, IntDiv, uniqueness, novelty against the training
   subset);
3. the model's held-out figures on ``--n-heldout`` test molecules: greedy reconstruction of μ, KL,
   active units (:func:`molvae.metrics.model_metrics`), and the latent smoothness figure of
   :func:`molvae.sample.perturbation_quality` (decode μ + s·σ·ε for s = 0.5, 1, 2);
4. training throughput (molecules per second of training, from ``history.csv``) and the machine's load.

The finite-sample floor of FCD at 3,000 samples against 5,000 test molecules is about 0.6 (3,000
*training* molecules score that), so rows are comparable with each other, not with the 30,000-sample
MOSES protocol of ``benchmarks/moses_benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def seeded_subset(source: Path, n: int, seed: int, folder: Path, tag: str) -> Path:
    """A CSV of ``n`` rows of ``source`` drawn with pandas' seeded sample; written once and reused."""
    out = folder / f"{tag}_{n}_seed{seed}.csv"
    if not out.is_file():
        df = pd.read_csv(source)
        df = df.sample(n=min(n, len(df)), random_state=seed)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(out)
    return out


def throughput(history: Path, batch_size: int) -> dict:
    h = pd.read_csv(history)
    if h.empty:
        return {}
    last = h.iloc[-1]
    steps = int(last["step"])
    train_s = float(h["epoch_time_s"].sum())
    return {"steps": steps, "epochs": float(len(h)), "train_seconds": train_s,
            "molecules_seen": steps * batch_size, "molecules_per_s": steps * batch_size / train_s if train_s else None,
            "val_nelbo": float(last["val_nelbo"]), "val_kl": float(last["val_kl"]),
            "val_recon": float(last["val_recon"])}


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_argv(list(sys.argv[1:] if argv is None else argv))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="MOSES train.csv.gz")
    ap.add_argument("--test", required=True, help="MOSES test.csv.gz")
    ap.add_argument("--name", required=True, help="row name (run folder name)")
    ap.add_argument("--n-train", type=int, default=200_000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--n-samples", type=int, default=3000)
    ap.add_argument("--n-heldout", type=int, default=500)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--priors", default="auto", help="comma-separated priors to sample (auto: all the model has)")
    ap.add_argument("--fit-prior", type=int, default=32, metavar="K",
                    help="fit a K-component mixture prior (molvae prior) on the training subset first (0: no)")
    ap.add_argument("--n-fit", type=int, default=20000, help="training molecules the mixture is fitted to")
    ap.add_argument("--runs-dir", default="runs/sweep14")
    ap.add_argument("--eval-only", action="store_true", help="evaluate an existing run folder")
    ap.add_argument("--out", help="write the JSON record here too")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    runs = Path(args.runs_dir)
    train_csv = seeded_subset(Path(args.train), args.n_train, args.seed, runs, "moses_train")
    test_csv = seeded_subset(Path(args.test), args.n_test, args.seed, runs, "moses_test")
    run = runs / args.name
    record: dict = {"name": args.name, "train_args": extra, "minutes": args.minutes, "threads": args.threads,
                    "n_train": args.n_train, "n_test": args.n_test, "n_samples": args.n_samples,
                    "seed": args.seed, "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    if not (args.eval_only and (run / "model.pt").is_file()):
        cmd = [sys.executable, "-m", "molvae", "train", str(train_csv), "--out", str(run),
               "--seed", str(args.seed), "--max-time", str(args.minutes), "--threads", str(args.threads),
               "--val-fraction", "0.02", "--epochs", "1000", "--no-progress", "--n-jobs", str(args.threads),
               *extra]
        record["command"] = " ".join(cmd)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        record["train_wall_s"] = time.perf_counter() - t0
        record["load_after_train"] = os.getloadavg()
        if rc != 0:
            print(json.dumps(record), flush=True)
            return rc

    from molvae import MolVAE
    from molvae.metrics import evaluate
    from molvae.metrics.model_metrics import model_metrics
    from molvae.sample import fit_prior, perturbation_quality

    model = MolVAE.load(run / "model.pt")
    from molvae.training.schedules import use_mixed_precision

    if "precision" not in record:  # what the run used, unless given (rows trained by an older rule)
        record["precision"] = "bf16" if use_mixed_precision(model.train_config, torch.device("cpu")) else "fp32"
    record["kl_weight"] = model.train_config.kl_weight
    record["free_bits"] = model.train_config.free_bits
    record["parameters"] = model.net.n_parameters()
    record["throughput"] = throughput(run / "history.csv", model.train_config.batch_size)
    test_smiles = pd.read_csv(test_csv).iloc[:, 0].tolist()
    record["heldout"] = model_metrics(model, test_smiles, n=args.n_heldout, seed=args.seed)
    t0 = time.perf_counter()
    smooth = perturbation_quality(model, test_smiles[:200], scales=(0.5, 1.0, 2.0), seed=args.seed)
    record["smoothness"] = smooth
    record["smoothness_s"] = time.perf_counter() - t0
    if args.fit_prior:
        t0 = time.perf_counter()
        train_smiles = pd.read_csv(train_csv).iloc[:, 0].tolist()
        prior = fit_prior(model, train_smiles, n_components=args.fit_prior, n_fit=args.n_fit, seed=args.seed)
        record["prior_fit"] = {**prior.info, "seconds": time.perf_counter() - t0}
    keep = ("valid", "unique@1000", "Novelty", "IntDiv", "Filters", "FCD/Test", "SNN/Test", "Frag/Test",
            "Scaf/Test", "SA", "logP", "QED", "weight")
    record["priors"] = {}
    priors = model.available_priors() if args.priors == "auto" else args.priors.split(",")
    for prior in priors:
        t0 = time.perf_counter()
        samples = model.sample(args.n_samples, seed=0, prior=prior)
        t_sample = time.perf_counter() - t0
        ev = evaluate(samples["smiles"].tolist(), train=str(train_csv), test=str(test_csv), k=(1000,),
                      n_jobs=args.threads, device="cpu")
        row = {k: ev.metrics.get(k) for k in keep}
        row["sample_s"] = t_sample
        row["evaluate_s"] = time.perf_counter() - t0 - t_sample
        record["priors"][prior] = row
    record["load_end"] = os.getloadavg()
    text = json.dumps(record, indent=2, default=float)
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
