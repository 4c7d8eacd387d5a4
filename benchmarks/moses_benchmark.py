#!/usr/bin/env python
"""MOSES benchmark of a molvae model: sample N molecules, run the full ``molvae evaluate`` suite.

    python benchmarks/moses_benchmark.py --model moses-small \\
        --train ../shared/moses/train.csv.gz --test ../shared/moses/test.csv.gz \\
        --test-scaffolds ../shared/moses/test_scaffolds.csv.gz --n 30000 --seed 0 --json out.json

Samples ``--n`` molecules from the prior (seeded), evaluates them with
:func:`molvae.metrics.evaluate` against the MOSES test and test-scaffold sets and the
train set, and prints the MOSES table row (markdown, in the paper's column order) on
stderr and one JSON document (device, versions, timings, every figure and the counts
behind it) on stdout. ``--json`` also writes that JSON to a file; the shipped model's
figures are such a file, ``molvae/models/<name>.metrics.json``, read by ``molvae models``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from molvae import Decoding, MolVAE
from molvae.checkpoint import versions
from molvae.core import find_model, resolve_device

log = logging.getLogger("moses_benchmark")

#: The MOSES table's columns (Polykovskiy et al. 2020, Table 2 and 3), in order.
ROW_COLUMNS = ("valid", "unique@1k", "unique@10k", "FCD/Test", "FCD/TestSF", "SNN/Test", "SNN/TestSF",
               "Frag/Test", "Frag/TestSF", "Scaf/Test", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters",
               "Novelty")

#: Published MOSES rows (MOSES README / paper) the README compares against.
PUBLISHED = {
    "MOSES VAE": {"valid": 0.977, "unique@10k": 0.998, "FCD/Test": 0.099, "SNN/Test": 0.626, "Frag/Test": 0.999,
                  "Scaf/Test": 0.939, "IntDiv": 0.856, "Filters": 0.997, "Novelty": 0.695},
    "MOSES CharRNN": {"FCD/Test": 0.073, "Novelty": 0.842},
}


def sample(model: MolVAE, n: int, seed: int, batch_size: int, prior: str | None = None,
           n_jobs: int = 1) -> tuple[list[str], float]:
    """``n`` SMILES sampled from ``prior`` (the model's default when ``None``; '' for an invalid one)
    and the seconds it took."""
    t = time.perf_counter()
    table = model.sample(n, seed=seed, batch_size=batch_size, prior=prior, n_jobs=n_jobs)
    return table["smiles"].fillna("").astype(str).tolist(), time.perf_counter() - t


def evaluate(smiles: list[str], model: MolVAE, args: argparse.Namespace):
    """Run the ``molvae evaluate`` suite (:func:`molvae.metrics.evaluate`) with the model's held-out figures."""
    from molvae import metrics

    return metrics.evaluate(smiles, train=args.train, test=args.test, test_scaffolds=args.test_scaffolds,
                            k=(1000, 10000), n_jobs=args.n_jobs, device=args.device, model=model,
                            seed=args.seed, progress=args.progress)


#: ``molvae.metrics`` names -> the MOSES table's column names.
RENAME = {"unique@1000": "unique@1k", "unique@10000": "unique@10k"}


def moses_row(figures: dict[str, Any]) -> dict[str, Any]:
    """The MOSES table row out of the evaluate figures (missing figures are ``None``)."""
    named = {RENAME.get(k, k): v for k, v in figures.items()}
    return {k: named.get(k) for k in ROW_COLUMNS}


#: The columns of the README's comparison table (the published rows have these).
README_COLUMNS = ("valid", "unique@10k", "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "Filters",
                  "Novelty")


def markdown_row(name: str, row: dict[str, Any], columns: tuple[str, ...] = ROW_COLUMNS) -> str:
    cells = [name] + ["" if row.get(k) is None else f"{row[k]:.3f}" for k in columns]
    return "| " + " | ".join(cells) + " |"


def markdown_header(columns: tuple[str, ...] = ROW_COLUMNS) -> str:
    return "| model | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="moses-small", help="model file, run folder or shipped name")
    ap.add_argument("--train", required=True, help="MOSES train set (novelty)")
    ap.add_argument("--test", required=True, help="MOSES test set")
    ap.add_argument("--test-scaffolds", required=True, help="MOSES scaffold test set")
    ap.add_argument("--n", type=int, default=30000, help="molecules to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--prior", default=None, help="prior to sample (default: the model's default prior)")
    ap.add_argument("--n-jobs", type=int, default=0, help="processes for the metrics (0 = all cores)")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples-out", help="also write the sampled SMILES here (one per line)")
    ap.add_argument("--json", dest="json_out", help="write the JSON result here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    path, how = find_model(args.model)
    model = MolVAE.load(path, device=device)
    log.info("using %s (%s): %s", how, path, model)
    t0 = time.perf_counter()
    prior = model.resolve_prior(args.prior)
    log.info("prior: %s (%s)", prior, model.describe_prior(prior))
    sample_jobs = args.n_jobs if device.type == "cpu" else 1
    smiles, t_sample = sample(model, args.n, args.seed, args.batch_size, prior, sample_jobs)
    log.info("sampled %d molecules in %.1f s", len(smiles), t_sample)
    if args.samples_out:
        Path(args.samples_out).write_text("".join(f"{s}\n" for s in smiles), encoding="utf-8")
    t = time.perf_counter()
    evaluation = evaluate(smiles, model, args)
    t_eval = time.perf_counter() - t
    row = moses_row(evaluation.metrics)
    meta = model.metadata
    result = {
        "benchmark": "moses",
        "command": " ".join(["python", "benchmarks/moses_benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": str(path),
        "model_parameters": model.net.n_parameters(),
        "model_file_bytes": Path(path).stat().st_size,
        "model_train_time_s": meta.get("train_time_s"),
        "model_epochs": len(model.history),
        "n_samples": args.n,
        "prior": prior,
        "prior_description": model.describe_prior(prior),
        "decoding": Decoding().describe(),
        "seed": args.seed,
        "reference": {"train": args.train, "test": args.test, "test_scaffolds": args.test_scaffolds},
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "timings_s": {"sample": t_sample, "evaluate": t_eval, "total": time.perf_counter() - t0},
        "row": row,
        "figures": evaluation.to_dict(),
        "published": PUBLISHED,
    }
    text = json.dumps(result, indent=2, default=str)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    name = Path(str(args.model)).stem
    for columns in (ROW_COLUMNS, README_COLUMNS):
        print(markdown_header(columns), file=sys.stderr)
        print(markdown_row(name, row, columns), file=sys.stderr)
        for pub_name, published in PUBLISHED.items():
            print(markdown_row(pub_name, published, columns), file=sys.stderr)
        print(file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
