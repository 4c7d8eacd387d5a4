#!/usr/bin/env python
r"""One run of the PMO benchmark (Gao et al. 2022, "Sample efficiency matters", ``mol_opt``) with molvae.

    python benchmarks/pmo.py --oracle celecoxib_rediscovery --budget 10000 --seed 0 --method bo \
        --model zinc250k --threads 1 --out benchmarks/results/pmo

writes ``DIR/<oracle>_<method>_seed<S>.json``: every oracle call's score in call order, AUC top-1/10/100
as ``mol_opt`` computes it, the top-1/10/100 mean at the budget, the 100 best molecules, wall and
oracle time, settings, versions and the command. ``benchmarks/pmo_summary.py DIR`` tables a folder of
them.

``--method`` is ``bo`` or ``gradient``, or either with weighted retraining (``bo-wr``, ``gradient-wr``:
the search fine-tunes its copy of the model on its best molecules every 250 calls, :data:`RETRAIN`).

The search goes through the public interface: :func:`molvae.optimize.optimize` with the task as an
objective plugin, ``benchmarks/pmo_oracles.py:<oracle>`` (GuacaMol's scoring functions, see there).
Oracle calls are counted as in ``mol_opt``: every distinct valid molecule scored is one call
(molvae's oracle never charges a repeat or an invalid decode), so the guards are off (no heavy-atom
limit, radicals allowed): in PMO each molecule a method proposes costs a call.

AUC top-k (:func:`top_auc`) is ``mol_opt``'s ``top_auc`` (``main/optimizer.py``): the top-k mean over
the calls so far, taken every ``freq`` = 100 calls, summed by the trapezoid rule from 0 at call 0 (the
first segment averages with 0), a last segment to the final call, and, when the run stopped before
the budget, the last value held to the budget; divided by the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORACLES = Path(__file__).resolve().with_name("pmo_oracles.py")

FREQ = 100

# Weighted retraining (molvae.optimize.retrain) as the ``-wr`` methods run it: every 250 calls, 100 Adam
# steps on 32 molecules drawn by rank weight. Chosen on albuterol_similarity and celecoxib_rediscovery at
# 3,000 calls (the README's PMO section gives the comparison); ``--settings`` overrides any of it.
RETRAIN = {"retrain_every": 250, "retrain_steps": 100, "retrain_batch": 32}
METHODS = {"bo": ("bo", {}), "gradient": ("gradient", {}), "bo-wr": ("bo", RETRAIN),
           "gradient-wr": ("gradient", RETRAIN)}


def top_auc(scores: Sequence[float], top_n: int, budget: int, freq: int = FREQ, finish: bool = True) -> float | None:
    """Area under the top-``top_n``-mean curve of ``scores`` (one per oracle call, in call order),
    normalized by ``budget``, exactly as ``mol_opt``'s ``top_auc``; ``None`` for no calls.

    ``finish``: the run is over, so a run that stopped early holds its last value up to ``budget``.
    """
    scores = [float(s) for s in scores]
    n = len(scores)
    if n == 0:
        return None
    total, prev, called = 0.0, 0.0, 0
    for idx in range(freq, min(n, budget), freq):
        now = _top_mean(scores[:idx], top_n)
        total += freq * (now + prev) / 2
        prev, called = now, idx
    now = _top_mean(scores, top_n)
    total += (n - called) * (now + prev) / 2
    if finish and n < budget:
        total += (budget - n) * now
    return total / budget


def _top_mean(scores: list[float], k: int) -> float:
    best = sorted(scores, reverse=True)[:k]
    return sum(best) / len(best)


def call_scores(log) -> tuple[list[str], list[float], int]:
    """SMILES and scores of the oracle-scored molecules of an optimization log (this version's or an older
    one), in call order; a non-finite score counts as 0 (``mol_opt`` scores what it cannot score 0). Also
    their number."""
    from molvae.optimize.oracle import standard_log

    log = standard_log(log)
    called = log[log["oracle_call"]]
    smiles = called["smiles"].astype(str).tolist()
    raw = called["score"].astype(float).tolist()
    scores = [v if math.isfinite(v) else 0.0 for v in raw]
    return smiles, scores, sum(1 for v in raw if not math.isfinite(v))


def summarize(smiles: list[str], scores: list[float], budget: int) -> dict:
    """AUC top-1/10/100 and top-1/10/100 means at the end of a run, and its 100 best molecules."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    out = {f"auc_top{k}": top_auc(scores, k, budget) for k in (1, 10, 100)}
    for k in (1, 10, 100):
        best = [scores[i] for i in order[:k]]
        out[f"top{k}"] = sum(best) / len(best) if best else None
    out["top100_molecules"] = [{"smiles": smiles[i], "score": round(scores[i], 6), "call": i + 1} for i in order[:100]]
    return out


def run(args) -> dict:
    import torch

    from molvae import MolVAE
    from molvae.checkpoint import versions
    from molvae.core import find_model
    from molvae.data import file_hash
    from molvae.objectives import Guards, parse_objective
    from molvae.optimize import optimize

    sys.path.insert(0, str(ORACLES.parent))
    import pmo_oracles

    if args.oracle not in pmo_oracles.TASKS:
        why = pmo_oracles.OFFLINE_MISSING.get(args.oracle)
        raise SystemExit(f"--oracle {args.oracle}: " + (f"cannot run offline ({why})" if why else
                                                         f"unknown; expected one of {list(pmo_oracles.TASKS)}"))
    pmo_oracles.oracle(args.oracle)  # import GuacaMol now: a missing install is one line, before the model loads
    torch.set_num_threads(args.threads)
    model = MolVAE.load(args.model)
    model_sha256 = file_hash(find_model(args.model)[0])  # which weights: a shipped name may be retrained
    objective = parse_objective(f"{ORACLES}:{args.oracle}", Guards(max_heavy_atoms=None, allow_radicals=True))
    init = None
    if args.init:  # a seeded random n_init of these start the search, scored (they cost calls, as in mol_opt)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from optim_common import read_zinc  # one SMILES per line, plain, gzipped or ZINC250k's gzipped tar

        init = read_zinc(args.init)
    t0 = time.perf_counter()
    method, settings = METHODS[args.method]
    res = optimize(model, objective, method=method, budget=args.budget, seed=args.seed, init_smiles=init,
                   settings={**settings, **(args.settings or {})}, top_k=100)
    if res.stop_signal:  # stopped by Ctrl-C/SIGTERM: a partial run is no result
        raise SystemExit(128 + res.stop_signal)
    wall = time.perf_counter() - t0
    smiles, scores, nonfinite = call_scores(res.log)
    import guacamol

    return {
        "benchmark": "pmo", "oracle": args.oracle, "method": args.method, "seed": args.seed, "budget": args.budget,
        "model": args.model, "model_sha256": model_sha256, "latent_dim": model.config.latent_dim,
        "init": args.init, "n_calls": len(scores),
        "stop_reason": res.stop_reason, **summarize(smiles, scores, args.budget),
        "wall_s": round(wall, 2), "objective_s": round(res.objective_s, 2),
        "overhead_s_per_call": round((wall - res.objective_s) / max(len(scores), 1), 4),
        "nonfinite_scores": nonfinite, "freq": FREQ, "settings": res.settings,
        "guards": "off (no heavy-atom limit, radicals allowed)", "threads": args.threads,
        "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "versions": {**versions(), "guacamol": getattr(guacamol, "__version__", "0.5.5")},
        "command": " ".join(["python", "benchmarks/pmo.py", *sys.argv[1:]]),
        "scores": [round(v, 6) for v in scores],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", required=True, help="PMO task name, e.g. qed, celecoxib_rediscovery, median1")
    ap.add_argument("--budget", type=int, default=10000, help="oracle calls [10000]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=list(METHODS), default="bo",
                    help="bo, gradient, or either with weighted retraining (bo-wr, gradient-wr) [bo]")
    ap.add_argument("--model", default="zinc250k",
                    help="model file, run folder or shipped name [zinc250k: the shipped ZINC250k model]")
    ap.add_argument("--init", help="SMILES file (one per line; gzipped, or a gzipped tar as ZINC250k comes) the "
                    "initial design is a seeded random choice of, scored (its calls count), e.g. "
                    "../shared/zinc250k/zinc250k.txt.gz as mol_opt's "
                    "methods start from ZINC; default: samples of the model's prior")
    ap.add_argument("--settings", type=json.loads, default=None, metavar="JSON", help="method settings as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    ap.add_argument("--out", default="benchmarks/results/pmo", help="folder of the run's JSON [benchmarks/results/pmo]")
    args = ap.parse_args(argv)
    if args.budget < 1:
        raise SystemExit(f"--budget must be positive, got {args.budget}")
    result = run(args)
    out = Path(args.out) / f"{args.oracle}_{args.method}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: result[k] for k in ("oracle", "method", "seed", "n_calls", "auc_top10", "top1", "top10",
                                             "wall_s", "overhead_s_per_call")}))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
