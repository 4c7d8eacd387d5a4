#!/usr/bin/env python
r"""How fast ``molvae optimize`` spends an oracle budget, apart from the oracle. Prints one JSON document.

    python benchmarks/bench_optimize.py --model moses-small --budget 10000 --threads 1 \
        --out benchmarks/results/bench_optimize.json

For each method (``bo``, ``gradient``; ``bo-wr``, ``gradient-wr``: the same with weighted retraining
every 250 calls, as ``benchmarks/pmo.py`` runs them) one search of ``--budget`` calls on a cheap oracle
(RDKit QED, default guards) through the public :func:`molvae.optimize.optimize`, default settings, seed 0. The
objective is timed where it is called (``OptimizationResult.objective_s``; here also per call, from a
thin timing wrapper around the same objective); everything else (GP fits, acquisition, decoding,
canonicalization, bookkeeping) is the optimizer's **overhead**. Reported at every ``--every`` calls
(cumulative and for the last window, to show whether the cost per call stays flat), with
``at_1k`` / ``at_10k`` picked out: calls per second of wall clock and overhead seconds per call.

A search with budget 1,000 makes the same first 1,000 calls as one with budget 10,000 (same seed,
same initial design of 200), so one run of ``--budget 10000`` gives both figures. The machine's load
average is recorded before and after each run: on a shared machine the figures are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pmo import METHODS  # noqa: E402  (method name -> optimize's method and settings, as PMO runs them)


def timed(objective):
    """A copy of ``objective`` that records ``(wall time, calls so far, objective seconds so far)`` after each
    batch it scores, in its ``marks`` list."""
    from molvae.objectives import Objective

    class TimedObjective(Objective):
        def evaluate(self, smiles):
            t = time.perf_counter()
            out = super().evaluate(smiles)
            end = time.perf_counter()
            self.seconds += end - t
            self.calls += len(smiles)
            self.marks.append((end, self.calls, self.seconds))
            return out

    out = TimedObjective(terms=objective.terms, guards=objective.guards, spec=objective.spec)
    out.marks, out.calls, out.seconds = [], 0, 0.0
    return out


def checkpoints(marks, t0: float, every: int, budget: int) -> list[dict]:
    """Cumulative and windowed figures at every ``every`` calls (the first mark at or past each multiple)."""
    rows, prev = [], (t0, 0, 0.0)
    targets = list(range(every, budget + 1, every)) or [budget]
    i = 0
    for target in targets:
        while i < len(marks) and marks[i][1] < target:
            i += 1
        if i == len(marks):
            break
        t, calls, obj_s = marks[i]
        wall, win_wall = t - t0, t - prev[0]
        win_calls, win_obj = calls - prev[1], obj_s - prev[2]
        rows.append({"calls": calls, "wall_s": round(wall, 2), "objective_s": round(obj_s, 2),
                     "calls_per_s": round(calls / wall, 2), "overhead_s_per_call": round((wall - obj_s) / calls, 4),
                     "window_calls": win_calls,
                     "window_overhead_s_per_call": round((win_wall - win_obj) / max(win_calls, 1), 4)})
        prev = (t, calls, obj_s)
    return rows


def run(model, method: str, budget: int, seed: int, every: int) -> dict:
    from molvae.objectives import parse_objective
    from molvae.optimize import optimize

    objective = timed(parse_objective("qed"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    name, settings = METHODS[method]
    res = optimize(model, objective, method=name, budget=budget, seed=seed, settings=dict(settings))
    if res.stop_signal:  # stopped by Ctrl-C/SIGTERM: a partial run is no timing
        raise SystemExit(128 + res.stop_signal)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    rows = checkpoints(objective.marks, t0, every, budget)

    def at(n):
        hit = [r for r in rows if r["calls"] >= n]
        return {k: hit[0][k] for k in ("calls", "calls_per_s", "overhead_s_per_call")} if hit else None

    return {"method": method, "budget": budget, "seed": seed, "n_calls": res.n_calls, "stop_reason": res.stop_reason,
            "wall_s": round(wall, 2), "objective_s": round(res.objective_s, 2),
            "calls_per_s": round(res.n_calls / wall, 2),
            "overhead_s_per_call": round((wall - res.objective_s) / max(res.n_calls, 1), 4),
            "at_1k": at(1000), "at_10k": at(10000), "best_score": res.best_score,
            "top10_mean": float(res.top["score"].head(10).mean()) if len(res.top) else None,
            "settings": res.settings, "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after], "checkpoints": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moses-small", help="model file, run folder or shipped name [moses-small]")
    ap.add_argument("--budget", type=int, default=10000, help="oracle calls per search [10000]")
    ap.add_argument("--methods", nargs="+", default=["bo", "gradient"], choices=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1000, help="report every this many calls [1000]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import torch

    from molvae import MolVAE
    from molvae.checkpoint import versions

    torch.set_num_threads(args.threads)
    model = MolVAE.load(args.model)
    runs = []
    for method in args.methods:
        runs.append(run(model, method, args.budget, args.seed, args.every))
        print(json.dumps({k: runs[-1][k] for k in ("method", "n_calls", "wall_s", "overhead_s_per_call")}),
              file=sys.stderr)
    doc = {"benchmark": "bench_optimize", "objective": "qed", "model": args.model,
           "latent_dim": model.config.latent_dim, "threads": args.threads, "cpu_count": os.cpu_count(),
           "cpu": platform.processor() or platform.machine(), "versions": versions(),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "runs": runs}
    text = json.dumps(doc, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
