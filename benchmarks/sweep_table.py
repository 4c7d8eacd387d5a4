#!/usr/bin/env python
r"""The recipe sweep as a markdown table, from the JSON records of ``benchmarks/sweep_row.py``.

    python benchmarks/sweep_table.py benchmarks/results/sweep14/*.json > benchmarks/results/sweep14/README.md

One line per (row, prior): the recipe (β_max, free bits, schedule, sizes, precision), what the fixed
wall-clock budget bought (steps, molecules seen, molecules/s), the sampler (FCD/Test, Filters,
SNN/Test, Frag/Test, Scaf/Test, IntDiv, unique, novelty of ``n_samples`` prior samples against
``n_test`` test molecules) and the autoencoder (held-out greedy reconstruction, KL, active units,
median Tanimoto and filters share of decodes of μ + s·σ·ε at s = 1 and 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _opt(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def recipe(record: dict) -> dict[str, str]:
    a = record.get("train_args", [])
    return {
        "β_max": _opt(a, "--kl-weight", "1"),
        "free bits": _opt(a, "--free-bits", "0"),
        "schedule": _opt(a, "--kl-schedule", "linear") + f" {_opt(a, '--kl-warmup', '10')} ep",
        "enc/dec": f"{_opt(a, '--hidden-dim', '256')}/{_opt(a, '--decoder-hidden-dim', '384')}",
        "precision": record.get("precision") or ("bf16" if "--cpu-amp" in a else
                                                 ("fp32" if "--no-cpu-amp" in a else "auto")),
    }


def _f(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


COLUMNS = ("row", "β_max", "free bits", "schedule", "enc/dec", "precision", "steps", "mol seen", "mol/s", "prior",
           "FCD/Test", "Filters", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "unique", "novelty",
           "recon", "KL", "AU", "Tan s=1", "Filt s=1", "Tan s=2", "Filt s=2", "load")


def lines(record: dict) -> list[str]:
    r = recipe(record)
    t = record.get("throughput", {})
    h = record.get("heldout", {})
    sm = record.get("smoothness", {})
    s1, s2 = sm.get("1", {}), sm.get("2", {})
    load = record.get("load_after_train") or record.get("load_end") or [None]
    out = []
    for prior, p in record.get("priors", {}).items():
        cells = [record["name"], r["β_max"], r["free bits"], r["schedule"], r["enc/dec"], r["precision"],
                 str(t.get("steps", "")), f"{t.get('molecules_seen', 0):,}", _f(t.get("molecules_per_s"), 0), prior,
                 _f(p.get("FCD/Test"), 2), _f(p.get("Filters")), _f(p.get("SNN/Test")), _f(p.get("Frag/Test")),
                 _f(p.get("Scaf/Test")), _f(p.get("IntDiv")), _f(p.get("unique@1000")), _f(p.get("Novelty")),
                 _f(h.get("reconstruction")), _f(h.get("kl"), 1), str(h.get("active_units", "")),
                 _f(s1.get("median_tanimoto"), 2), _f(s1.get("passes_filters"), 2),
                 _f(s2.get("median_tanimoto"), 2), _f(s2.get("passes_filters"), 2), _f(load[0], 1)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    records = [json.loads(p.read_text()) for p in sorted(paths)]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for rec in records:
        for line in lines(rec):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
