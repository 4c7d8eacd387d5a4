#!/usr/bin/env python
"""Train a molvae model on (a seeded subset of) the MOSES training set with `molvae train`.

This is how the shipped model `molvae/models/moses-small.pt` is made; see its model card.

    python scripts/train_moses.py ../shared/moses/train.csv.gz --n-molecules 250000 --seed 0 \
        --out runs/moses-small -- --epochs 4 --hidden-dim 128 --decoder-hidden-dim 320 ...

Everything after ``--`` is passed to `molvae train` unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split a command line at the first ``--``: ``(this script's options, molvae train options)``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    """The options of this script (those before ``--``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train_csv", help="MOSES train.csv.gz (column SMILES)")
    ap.add_argument("--n-molecules", type=int, default=0, help="seeded random subset size (0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset and of training")
    ap.add_argument("--out", default="runs/moses-small", help="run folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_argv(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)

    data = Path(args.train_csv)
    if args.n_molecules:
        # pandas' seeded sample: the same (file, n, seed) always gives the same subset.
        df = pd.read_csv(data)
        df = df.sample(n=min(args.n_molecules, len(df)), random_state=args.seed)
        subset = Path(args.out).with_suffix("").parent / f"moses_train_{args.n_molecules}_seed{args.seed}.csv"
        subset.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(subset, index=False)
        data = subset
    cmd = [sys.executable, "-m", "molvae", "train", str(data), "--out", args.out, "--seed", str(args.seed), *extra]
    print(" ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
