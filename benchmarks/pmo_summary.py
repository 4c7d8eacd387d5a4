#!/usr/bin/env python
r"""A markdown table of PMO runs: ``benchmarks/pmo.py`` JSON files in a folder -> AUC top-10 per task and method.

    python benchmarks/pmo_summary.py benchmarks/results/pmo [--out table.md]

One row per task, one column per molvae method (mean ± standard deviation over seeds, and the number
of seeds; a run that did not reach its budget is marked), then the published PMO rows where this
script knows them (``PUBLISHED``: AUC top-10 at 10,000 calls, mean of 5 seeds, from PMO's results
workbook as quoted in issue 15; "—" where not transcribed). The last row sums each column over the
tasks that every molvae column has, with the published sums over the same tasks only where all of
them are known.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

# AUC top-10, 10,000 calls, 5 seeds (Gao et al. 2022, PMO results workbook Mol_Opt.xlsx).
PUBLISHED = {
    "REINVENT": {"qed": 0.941, "celecoxib_rediscovery": 0.714, "osimertinib_mpo": 0.837, "fexofenadine_mpo": 0.785,
                 "median1": 0.357},
    "Graph GA": {"qed": 0.940, "celecoxib_rediscovery": 0.630, "osimertinib_mpo": 0.832, "fexofenadine_mpo": 0.761,
                 "median1": 0.295},
    "GP BO": {"qed": 0.937, "celecoxib_rediscovery": 0.724, "osimertinib_mpo": 0.787, "fexofenadine_mpo": 0.723,
              "median1": 0.302},
    "SELFIES-VAE-BO": {"qed": 0.936, "celecoxib_rediscovery": 0.326, "osimertinib_mpo": 0.766,
                       "fexofenadine_mpo": 0.670, "median1": 0.201},
}


def load(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if data.get("benchmark") == "pmo":
            runs.append(data)
    return runs


def table(runs: list[dict]) -> str:
    methods = sorted({r["method"] for r in runs})
    tasks = sorted({r["oracle"] for r in runs})
    cell: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        cell.setdefault((r["oracle"], r["method"]), []).append(r)
    header = ["task", *[f"molvae {m}" for m in methods], *PUBLISHED]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sums = {m: 0.0 for m in methods}
    complete = [t for t in tasks if all((t, m) in cell for m in methods)]
    for task in tasks:
        row = [task]
        for m in methods:
            rs = cell.get((task, m), [])
            if not rs:
                row.append("—")
                continue
            aucs = [r["auc_top10"] for r in rs]
            mean = statistics.fmean(aucs)
            sd = f" ± {statistics.stdev(aucs):.3f}" if len(aucs) > 1 else ""
            short = [r for r in rs if r["n_calls"] < r["budget"]]
            budgets = sorted({r["budget"] for r in rs})
            note = f" (n={len(rs)}" + (f", budget {budgets[0]}" if budgets != [10000] else "") + \
                   (f", {len(short)} stopped early" if short else "") + ")"
            row.append(f"{mean:.3f}{sd}{note}")
            if task in complete:
                sums[m] += mean
        for name, values in PUBLISHED.items():
            row.append(f"{values[task]:.3f}" if task in values else "—")
        lines.append("| " + " | ".join(row) + " |")
    sum_row = [f"sum over {len(complete)} tasks", *[f"{sums[m]:.3f}" for m in methods]]
    for values in PUBLISHED.values():
        sum_row.append(f"{sum(values[t] for t in complete):.3f}" if all(t in values for t in complete) else "—")
    lines.append("| " + " | ".join(sum_row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of pmo.py JSON files")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    runs = load(args.folder)
    if not runs:
        raise SystemExit(f"{args.folder}: no pmo.py JSON files")
    text = table(runs)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
