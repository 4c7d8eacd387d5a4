#!/usr/bin/env python
r"""Constrained penalized-logP optimization (JT-VAE, Jin et al. 2018, Table 3; GCPN, You et al. 2018, Table 3).

For each start molecule, find the molecule with the largest pLogP improvement whose
Tanimoto similarity (Morgan radius 2, 2048 bits) to the start is at least δ, for
δ ∈ {0.0, 0.2, 0.4, 0.6}. Start molecules: the 800 lowest-pLogP molecules of the ZINC250k
test split (seeded 90/10 split, see optim_common.py) that the model can encode; with
``--n-molecules N`` a seeded random subset of N of those 800 (documented in the JSON).

    python scripts/constrained_plogp.py ../shared/zinc250k/zinc250k.txt.gz --model runs/zinc/model.pt \
        --n-molecules 800 --budget 100 --method gradient --processes 2 --out results/constrained_plogp.json

Reported per δ: success rate (a molecule other than the start, at or above δ, with higher
pLogP), improvement mean ± std over the successful molecules (as GCPN reports it) and over
all molecules with failures counted as 0, and the similarity of the chosen molecules.
pLogP is the unnormalized form (``plogp``); molecules over 38 heavy atoms are not scored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optim_common as oc  # noqa: E402

# You et al. 2018 (GCPN), Table 3: improvement, similarity, success rate.
PUBLISHED = {
    "JT-VAE": {0.0: (1.91, 2.04, 0.28, 97.5), 0.2: (1.68, 1.85, 0.33, 97.1), 0.4: (0.84, 1.45, 0.51, 83.6),
               0.6: (0.21, 0.71, 0.69, 46.4)},
    "GCPN": {0.0: (4.20, 1.28, 0.32, 100.0), 0.2: (4.12, 1.19, 0.34, 100.0), 0.4: (2.49, 1.30, 0.47, 100.0),
             0.6: (0.79, 0.63, 0.68, 100.0)},
}


def lowest_plogp(model, zinc: str, work_dir: str, n_lowest: int = 800) -> tuple[list[str], list[float], int]:
    """The ``n_lowest`` lowest-pLogP test-split molecules the model can encode, lowest first."""
    import pandas as pd

    from molvae import chem

    cache = Path(work_dir) / "zinc_test_plogp.csv"
    if cache.is_file():
        table = pd.read_csv(cache, keep_default_na=False)
        canon, scores = table["smiles"].tolist(), pd.to_numeric(table["plogp"], errors="coerce").to_numpy()
    else:
        _, test = oc.zinc_split(zinc)
        canon = [chem.canonicalize(s) or "" for s in test]
        scores = chem.compute_properties(canon, ["plogp"])["plogp"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"smiles": canon, "plogp": scores}).to_csv(cache, index=False)
    order = np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable")
    chosen, values, skipped = [], [], 0
    for i in order:
        if len(chosen) >= n_lowest:
            break
        if not canon[i] or not np.isfinite(scores[i]):
            continue
        if isinstance(model.tokenize(canon[i]), str):
            skipped += 1
            continue
        chosen.append(canon[i])
        values.append(float(scores[i]))
    return chosen, values, skipped


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    ok = [r for r in rows if r["success"]]
    imp_ok = np.array([r["improvement"] for r in ok]) if ok else np.zeros(0)
    imp_all = np.array([r["improvement"] if r["success"] else 0.0 for r in rows]) if rows else np.zeros(0)
    sims = np.array([r["similarity"] for r in ok]) if ok else np.zeros(0)
    f = (lambda a, fn: round(float(fn(a)), 4) if len(a) else None)
    return {"n": n, "success_rate": round(100.0 * len(ok) / n, 1) if n else None,
            "improvement_mean": f(imp_ok, np.mean), "improvement_std": f(imp_ok, np.std),
            "improvement_mean_all": f(imp_all, np.mean), "improvement_std_all": f(imp_all, np.std),
            "similarity_mean": f(sims, np.mean), "similarity_std": f(sims, np.std),
            "oracle_calls_mean": round(float(np.mean([r["n_calls"] for r in rows])), 1) if rows else None}


_WORKER: dict = {}


def _init_worker(model_path, args, model=None) -> None:
    """Per process: one torch thread each, the model loaded once."""
    import torch

    from molvae import MolVAE

    torch.set_num_threads(args.threads)
    _WORKER.update(model=model if model is not None else MolVAE.load(model_path, device=args.device), args=args)


def _run_one(task: tuple[float, int, str]) -> dict:
    from molvae.objectives import Guards
    from molvae.optimize import optimize

    delta, k, smi = task
    args = _WORKER["args"]
    t0 = time.perf_counter()
    res = optimize(_WORKER["model"], "plogp", method=args.method, budget=args.budget, seed=args.seed + k, start=smi,
                   min_similarity=delta, guards=Guards(max_heavy_atoms=38), top_k=1, settings=args.settings)
    sim = float(res.top["similarity"].iloc[0]) if res.success else None
    return {"delta": delta, "index": k, "start": smi, "start_plogp": res.start_score, "best": res.best_smiles,
            "best_plogp": res.best_score if res.success else None, "similarity": sim,
            "improvement": res.improvement, "success": bool(res.success), "n_calls": res.n_calls,
            "elapsed_s": round(time.perf_counter() - t0, 2)}


def _collect(results, n_starts: int) -> list[dict]:
    rows = []
    for r in results:
        rows.append(r)
        after = r["best_plogp"] if r["success"] else r["start_plogp"]
        print(f"δ={r['delta']} {r['index'] + 1}/{n_starts}: {r['start_plogp']:.2f} -> {after:.2f} "
              f"({r['n_calls']} calls, {r['elapsed_s']:.1f} s)", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    oc.add_common_arguments(ap)
    ap.add_argument("--method", default="gradient", choices=["gradient", "bo"], help="[gradient]")
    ap.add_argument("--budget", type=int, default=100, help="oracle calls per start molecule and δ [100]")
    ap.add_argument("--n-molecules", type=int, default=800,
                    help="start molecules: a seeded subset of the 800 lowest-pLogP test molecules [800]")
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process [1]")
    oc.add_settings_argument(ap)
    ap.add_argument("--processes", type=int, default=1,
                    help="start molecules searched in parallel, one process each [1]")
    args = ap.parse_args(argv)
    import torch

    from molvae import MolVAE

    torch.set_num_threads(args.threads)
    model_spec = oc.get_model(args)
    model = MolVAE.load(model_spec, device=args.device)
    t0 = time.perf_counter()
    pool, pool_scores, skipped = lowest_plogp(model, args.zinc, args.work_dir)
    if args.n_molecules < len(pool):
        idx = sorted(np.random.default_rng(args.seed).choice(len(pool), size=args.n_molecules, replace=False))
    else:
        idx = list(range(len(pool)))
    starts = [pool[i] for i in idx]
    print(f"{len(starts)} start molecules (of the {len(pool)} lowest-pLogP test molecules the model encodes; "
          f"{skipped} lower ones skipped: tokens outside the model's vocabulary)", file=sys.stderr)
    tasks = [(delta, k, smi) for delta in args.deltas for k, smi in enumerate(starts)]
    if args.processes > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")   # fresh interpreters: forking after torch started its threads can hang
        with ctx.Pool(args.processes, initializer=_init_worker, initargs=(model.path, args)) as workers:
            rows = _collect(workers.imap(_run_one, tasks), len(starts))
    else:
        _init_worker(None, args, model)
        rows = _collect(map(_run_one, tasks), len(starts))
    per_delta = {str(d): summarize([r for r in rows if r["delta"] == d]) for d in args.deltas}
    details = rows

    def pm(mean, std):
        return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"

    table = []
    for delta in args.deltas:
        s = per_delta[str(delta)]
        table.append([f"{delta:.1f}", f"molvae {args.method}", pm(s["improvement_mean"], s["improvement_std"]),
                      pm(s["improvement_mean_all"], s["improvement_std_all"]),
                      pm(s["similarity_mean"], s["similarity_std"]),
                      "-" if s["success_rate"] is None else f"{s['success_rate']:.1f}%"])
        for name, ref in PUBLISHED.items():
            if delta in ref:
                imp, sd, sim, succ = ref[delta]
                table.append(["", name, f"{imp:.2f} ± {sd:.2f}", "", f"{sim:.2f}", f"{succ:.1f}%"])
    oc.print_table(["δ", "method", "improvement (successes)", "improvement (all)", "similarity", "success"], table)
    oc.write_json(args.out, {
        "task": "constrained plogp (unnormalized), improvement at Tanimoto >= delta",
        "model": oc.describe_model(model, model_spec), "method": args.method, "settings": args.settings,
        "budget_per_molecule": args.budget,
        "seed": args.seed, "start_set": f"seeded subset ({len(starts)}) of the {len(pool)} lowest-pLogP ZINC250k "
                                        f"test-split molecules the model encodes",
        "start_plogp_mean": round(float(np.mean([pool_scores[i] for i in idx])), 4) if idx else None,
        "results": per_delta, "published": {k: {str(d): v for d, v in r.items()} for k, r in PUBLISHED.items()},
        "processes": args.processes, "elapsed_s": round(time.perf_counter() - t0, 1), "molecules": details})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
