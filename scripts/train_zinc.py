#!/usr/bin/env python
"""Train a molvae model on the seeded ZINC250k train split with `molvae train`.

This is how the shipped model `molvae/models/zinc250k.pt` is made; see its model card.

    python scripts/train_zinc.py ../shared/zinc250k/zinc250k.txt.gz --seed 0 --out runs/zinc250k -- \
        --property qed --property plogp --max-time 80 ...

The split is the one every optimization script uses (``optim_common.zinc_split``: 90% train, seed 0); it is
written to ``<out's parent>/zinc_train_all_seed0.csv``. Everything after ``--`` is passed to `molvae train`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import optim_common as oc
from train_moses import split_argv


def build_parser() -> argparse.ArgumentParser:
    """The options before ``--`` (the rest go to `molvae train`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zinc", nargs="?", default=oc.DEFAULT_ZINC, help=f"ZINC250k SMILES file [{oc.DEFAULT_ZINC}]")
    ap.add_argument("--seed", type=int, default=0, help="seed of training (the split's seed is fixed: 0)")
    ap.add_argument("--out", default="runs/zinc250k", help="run folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_argv(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)

    data = oc.training_subset(args.zinc, Path(args.out).parent, 0)
    cmd = [sys.executable, "-m", "molvae", "train", str(data), "--out", args.out, "--seed", str(args.seed), *extra]
    print(" ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
