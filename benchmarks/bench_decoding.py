#!/usr/bin/env python
"""How a model's prior samples become molecules: every decoding strategy on the MOSES protocol.

    python benchmarks/bench_decoding.py --model moses --train ../shared/moses/train.csv.gz \\
        --test ../shared/moses/test.csv.gz --n 30000 --seeds 0 1 2 --jobs 2 --threads 1 \\
        --out benchmarks/results/bench_decoding_moses.json
    python benchmarks/bench_decoding.py --table benchmarks/results/bench_decoding_moses.json

For each strategy of :data:`STRATEGIES` and seed, ``--n`` molecules are sampled from the model's default
prior with that :class:`molvae.Decoding` on one thread (the time gives valid molecules per second per
thread) and measured with :func:`molvae.metrics.evaluate` against ``--test`` and ``--train``: FCD/Test,
SNN/Test, Frag/Scaf, IntDiv, Filters, unique@10k, novelty; plus the share of samples redrawn for each
rule, and the shares of radicals and of rings over 8 atoms among the molecules returned.

``summary`` holds the mean and standard deviation over seeds and ``choice`` applies the default's rule:
the lowest mean FCD/Test among strategies with unique@10k >= 0.998, novelty >= 0.85 and IntDiv within
0.01 of plain sampling at T = 1 without redraws (the reference row, measured in the same run).

The JSON at ``--out`` is rewritten after every finished run and read back at the start: a stopped run
continues where it stopped. ``--strategies`` runs a subset; ``--one-seed`` names strategies measured on
the first seed only (the slow beams).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: name -> molvae.Decoding fields. The reference row is the decoding molvae used before redraws existed.
STRATEGIES: dict[str, dict[str, Any]] = {
    "sample T=1, no redraws": {"temperature": 1.0, "allow_radicals": True, "max_ring_size": 0},
    "sample T=1": {"temperature": 1.0},
    "sample T=0.85": {"temperature": 0.85},
    "sample T=0.7": {"temperature": 0.7},
    "top-p 0.9": {"temperature": 1.0, "top_p": 0.9},
    "greedy": {"method": "greedy"},
    "beam 2": {"method": "beam", "beam_width": 2},
    "beam 4": {"method": "beam", "beam_width": 4},
    "beam 8": {"method": "beam", "beam_width": 8},
    "clean": {"method": "clean", "temperature": 1.0},
}
REFERENCE = "sample T=1, no redraws"
ONE_SEED = ("beam 2", "beam 8")
FIGURES = ("FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "Filters", "unique@10000", "Novelty",
           "valid", "valid_per_s", "redrawn_share", "radical_share", "large_ring_share")


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Sample and measure one (strategy, seed)."""
    import torch

    from molvae import Decoding, MolVAE, chem, metrics
    from molvae.sample import sample_molecules

    torch.set_num_threads(task["threads"])
    model = MolVAE.load(task["model"])
    decoding = Decoding(**STRATEGIES[task["strategy"]])
    redrawn: dict[str, int] = {}
    t = time.perf_counter()
    rows = [r for batch, _ in sample_molecules(model, task["n"], decoding=decoding, seed=task["seed"],
                                               batch_size=1000, redrawn=redrawn) for r in batch]
    seconds = time.perf_counter() - t
    smiles = [s for s, _, _ in rows]
    valid = [chem.decode_selfies(sel) for s, sel, _ in rows if s]
    evaluation = metrics.evaluate(smiles, train=task["train"], test=task["test"], k=(1000, 10000), n_jobs=1,
                                  device="cpu", threads=1)
    figures = {k: evaluation.metrics.get(k) for k in FIGURES if k in evaluation.metrics}
    figures.update({
        "valid_per_s": len(valid) / seconds,
        "sample_s": seconds,
        "redrawn": redrawn,
        "redrawn_share": sum(redrawn.values()) / task["n"],
        "radical_share": float(np.mean([m.radical for m in valid])) if valid else None,
        "large_ring_share": float(np.mean([m.largest_ring > 8 for m in valid])) if valid else None,
    })
    return {"strategy": task["strategy"], "seed": task["seed"], "decoding": decoding.to_dict(),
            "describe": decoding.describe(), "figures": figures}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean and std over seeds of each figure, and the seeds."""
    out: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "describe": mine[0]["describe"]}
        for key in FIGURES:
            values = [r["figures"].get(key) for r in mine]
            values = [v for v in values if v is not None]
            if values:
                entry[key] = float(np.mean(values))
                entry[key + "_std"] = float(np.std(values))
        out[name] = entry
    return out


def choose(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The default's rule applied to ``summary`` (see the module docstring)."""
    ref = summary.get(REFERENCE, {}).get("IntDiv")
    eligible, excluded = [], {}
    for name, s in summary.items():
        why = []
        if s.get("unique@10000", 0) < 0.998:
            why.append(f"unique@10k {s.get('unique@10000', 0):.4f} < 0.998")
        if s.get("Novelty", 0) < 0.85:
            why.append(f"novelty {s.get('Novelty', 0):.3f} < 0.85")
        if ref is not None and abs(s.get("IntDiv", 0) - ref) > 0.01:
            why.append(f"IntDiv {s.get('IntDiv', 0):.4f} more than 0.01 from {ref:.4f}")
        if why:
            excluded[name] = "; ".join(why)
        else:
            eligible.append(name)
    best = min(eligible, key=lambda n: summary[n]["FCD/Test"]) if eligible else None
    return {"best": best, "eligible": eligible, "excluded": excluded, "reference_IntDiv": ref}


def markdown(record: dict[str, Any]) -> str:
    cols = ("FCD/Test", "SNN/Test", "Scaf/Test", "IntDiv", "Filters", "unique@10000", "Novelty", "valid_per_s",
            "redrawn_share", "large_ring_share", "radical_share")
    head = ["strategy", "seeds"] + [c.replace("unique@10000", "unique@10k") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in record["summary"].items():
        cells = [name, str(len(s["seeds"]))]
        for c in cols:
            v = s.get(c)
            cells.append("" if v is None else (f"{v:,.0f}" if c == "valid_per_s" else f"{v:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    choice = record.get("choice", {})
    lines.append("")
    lines.append(f"Default by the rule: **{choice.get('best')}**; excluded: "
                 + "; ".join(f"{k} ({v})" for k, v in choice.get("excluded", {}).items()))
    return "\n".join(lines)


def _write(record: dict[str, Any], out: str | None) -> None:
    if not out:
        return
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a run's JSON and stop")
    ap.add_argument("--model", default="moses")
    ap.add_argument("--train", help="training set (novelty)")
    ap.add_argument("--test", help="test set (FCD, SNN, Frag, Scaf)")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--one-seed", nargs="*", default=list(ONE_SEED), help="strategies run on the first seed only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (one per core)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if not (args.train and args.test):
        ap.error("--train and --test are required")

    import torch

    from molvae import __version__, metrics
    from molvae.workers import ordered_map

    record: dict[str, Any] = {"benchmark": "bench_decoding", "rows": []}
    if args.out and Path(args.out).exists():
        record = json.loads(Path(args.out).read_text())
    done = {(r["strategy"], r["seed"]) for r in record["rows"]}
    record.update({
        "command": " ".join(["python", "benchmarks/bench_decoding.py", *sys.argv[1:]]), "molvae": __version__,
        "model": args.model, "n": args.n,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "avx512": "avx512" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
                    "torch": torch.__version__, "threads_per_job": args.threads, "jobs": args.jobs,
                    "load_before": os.getloadavg()},
    })
    tasks = [{"strategy": name, "seed": seed, "model": args.model, "n": args.n, "threads": args.threads,
              "train": args.train, "test": args.test}
             for name in args.strategies for seed in (args.seeds[:1] if name in args.one_seed else args.seeds)
             if (name, seed) not in done]
    if tasks:  # the reference statistics of train and test, computed once into the cache before the jobs share it
        metrics.evaluate(["CCO", "c1ccccc1"], train=args.train, test=args.test, n_jobs=args.jobs, device="cpu")
    t0 = time.perf_counter()
    for row in ordered_map(run_one, tasks, args.jobs, what="decoding strategies"):
        record["rows"].append(row)
        record["summary"] = summarize(record["rows"])
        record["choice"] = choose(record["summary"])
        print(f"{row['strategy']} seed {row['seed']}: FCD/Test {row['figures'].get('FCD/Test'):.3f}", file=sys.stderr,
              flush=True)
        _write(record, args.out)
    record["summary"] = summarize(record["rows"])
    record["choice"] = choose(record["summary"])
    record["wall_s"] = record.get("wall_s", 0) + time.perf_counter() - t0
    record["machine"]["load_after"] = os.getloadavg()
    _write(record, args.out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
