"""Shared helpers of the optimization benchmark scripts (``optimize_qed.py``, ``optimize_plogp.py``,
``constrained_plogp.py``): reading ZINC250k, its seeded train/test split, training a model under a
time budget when none is given, and writing results.

ZINC250k as distributed for JT-VAE (``zinc250k.txt.gz``) is sometimes a gzipped tar holding one
``zinc.txt``; both that and a plain (gzipped) one-SMILES-per-line file are read.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ZINC = "../shared/zinc250k/zinc250k.txt.gz"
SPLIT_SEED = 0
TEST_FRACTION = 0.1


def read_zinc(path: str | Path) -> list[str]:
    """All SMILES of a ZINC250k file (plain, gzipped, or a gzipped tar of one text file), in file order."""
    from molvae.data import read_molecules
    from molvae.errors import InvalidInputError

    if not Path(path).exists():
        raise SystemExit(f"{path}: no such file; pass the ZINC250k file as the first argument")
    try:
        return read_molecules(path)["input"].tolist()
    except InvalidInputError as exc:
        raise SystemExit(str(exc)) from None


def zinc_split(path: str | Path, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
               ) -> tuple[list[str], list[str]]:
    """Seeded random train/test split of ZINC250k: ``(train, test)`` SMILES lists (90/10 by default)."""
    smiles = read_zinc(path)
    perm = np.random.default_rng(seed).permutation(len(smiles))
    n_test = int(round(test_fraction * len(smiles)))
    test = [smiles[i] for i in sorted(perm[:n_test])]
    train = [smiles[i] for i in sorted(perm[n_test:])]
    return train, test


def write_smiles(smiles: list[str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("smiles\n" + "".join(f"{s}\n" for s in smiles), encoding="utf-8")
    return path


def training_subset(zinc: str | Path, out_dir: str | Path, n_molecules: int, seed: int = 0) -> Path:
    """Write a seeded subset (``n_molecules``, 0 = all) of the ZINC250k train split as CSV; returns its path."""
    train, _ = zinc_split(zinc)
    if n_molecules and n_molecules < len(train):
        idx = np.random.default_rng(seed).choice(len(train), size=n_molecules, replace=False)
        train = [train[i] for i in sorted(idx)]
    return write_smiles(train, Path(out_dir) / f"zinc_train_{n_molecules or 'all'}_seed{seed}.csv")


def train_command(data: Path, run_dir: Path, minutes: float, seed: int, properties: tuple[str, ...]) -> list[str]:
    """The ``molvae train`` command the scripts use for a quick ZINC model (see README, Optimization)."""
    # Small and quick: on a shared 2-core CPU a run sees well under one pass of 50,000 molecules.
    cmd = [sys.executable, "-m", "molvae", "train", str(data), "--out", str(run_dir), "--seed", str(seed),
           "--epochs", "50", "--max-time", f"{minutes:g}", "--val-fraction", "0.02", "--batch-size", "64",
           "--kl-weight", "0.5", "--kl-warmup", "0.25", "--embedding-dim", "48", "--hidden-dim", "96",
           "--decoder-hidden-dim", "192", "--latent-dim", "32", "--no-progress"]
    for p in properties:
        cmd += ["--property", p]
    return cmd


def get_model(args: Any, properties: tuple[str, ...] = ("qed", "plogp")) -> str:
    """``args.model`` (default: the shipped ``zinc250k``); with ``--model train``, a quick model trained on
    ZINC250k for ``args.train_minutes`` minutes (reused when its run folder already holds one)."""
    if args.model != "train":
        return args.model
    run = Path(args.work_dir) / f"zinc-model-{args.train_minutes:g}min-seed{args.seed}"
    if (run / "model.pt").is_file():
        print(f"reusing {run / 'model.pt'}", file=sys.stderr)
        return str(run / "model.pt")
    data = training_subset(args.zinc, args.work_dir, args.train_molecules, seed=args.seed)
    cmd = train_command(data, run, args.train_minutes, args.seed, properties)
    print(" ".join(cmd), file=sys.stderr)
    if subprocess.call(cmd) != 0:
        raise SystemExit("training failed")
    return str(run / "model.pt")


def add_common_arguments(ap) -> None:
    ap.add_argument("zinc", nargs="?", default=DEFAULT_ZINC, help=f"ZINC250k SMILES file [{DEFAULT_ZINC}]")
    ap.add_argument("--model", default="zinc250k",
                    help="a molvae model (file, run folder or shipped name), or 'train' to train a quick one "
                         "[zinc250k: the shipped ZINC250k model with a QED + pLogP head]")
    ap.add_argument("--train-minutes", type=float, default=25.0,
                    help="with --model train: minutes of training on ZINC250k [25]")
    ap.add_argument("--train-molecules", type=int, default=50000,
                    help="with --model train: size of the seeded ZINC250k training subset (0 = all) [50000]")
    ap.add_argument("--work-dir", default="runs/optimization", help="where data subsets and models go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="JSON results file")


def describe_model(model, spec: str | None = None) -> dict[str, Any]:
    """What a results JSON says about the model: the name or path the user gave (``spec``: a shipped name
    stays a name, so the JSON does not carry this machine's install path) and the weights' SHA-256."""
    from molvae.data import file_hash

    meta = model.metadata or {}
    hist = model.history or []
    return {
        "model": spec if spec is not None else (str(model.path) if model.path else None),
        "sha256": file_hash(model.path) if model.path else None,
        "latent_dim": model.config.latent_dim,
        "parameters": model.net.n_parameters(),
        "property_head": list(model.config.property_names),
        "epochs": len(hist),
        "train_time_s": meta.get("train_time_s"),
        "n_train": meta.get("n_train") or meta.get("n_molecules"),
        "val_recon_acc": hist[-1].get("val_recon_acc") if hist else None,
    }


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    payload = {**payload, "python": platform.python_version(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(payload, indent=2, default=float)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


def add_settings_argument(ap) -> None:
    ap.add_argument("--settings", type=json.loads, default=None, metavar="JSON",
                    help="method settings, e.g. '{\"tr_length\": 0.4}' or '{\"step_size\": 0.05, \"trust_radius\": 2}' "
                         "(fields of molvae.optimize.BOSettings / GradientSettings)")


def settings_tag(settings: dict[str, Any] | None) -> str:
    """A file-name part for non-default settings, so that runs with other settings keep their own logs."""
    if not settings:
        return ""
    return "_" + "_".join(f"{k}{v}" for k, v in sorted(settings.items())).replace("/", "-").replace(" ", "")


def add_search_arguments(ap, *, method: str, budget: int) -> None:
    ap.add_argument("--method", default=method, choices=["bo", "gradient", "both"], help=f"[{method}]")
    ap.add_argument("--budget", type=int, default=budget, help=f"oracle calls per search [{budget}]")
    ap.add_argument("--design", default="known", choices=["known", "sample"],
                    help="known: the train split's molecules with their scores (computed once, cached in "
                         "--work-dir) seed the search free of charge, and none of them is counted as found; "
                         "sample: --init-molecules random training molecules, scored with oracle calls [known]")
    ap.add_argument("--init-molecules", type=int, default=2000,
                    help="--design sample: training molecules encoded for the initial design [2000]")
    ap.add_argument("--n-jobs", type=int, default=0, help="processes for computing known scores (0 = all) [0]")
    ap.add_argument("--patience", type=int,
                    help="stop after this many batches (bo) / rounds (gradient) without a new scored molecule "
                         "[the method's default: 20 / 5]")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    ap.add_argument("--progress", action="store_true", help="progress bar per search")
    add_settings_argument(ap)


def init_molecules(args: Any) -> list[str]:
    """A seeded sample of ZINC250k training-split molecules for the initial design."""
    train, _ = zinc_split(args.zinc)
    idx = np.random.default_rng(args.seed + 1).choice(len(train), size=min(args.init_molecules, len(train)),
                                                      replace=False)
    return [train[i] for i in sorted(idx)]


def known_scores(args: Any, objective: str) -> tuple[list[str], np.ndarray]:
    """The train split's canonical SMILES and their ``objective`` values (an RDKit property:
    qed, plogp, ...), computed once and cached as ``<work-dir>/zinc_train_<objective>.csv``."""
    import pandas as pd

    from molvae import chem

    cache = Path(args.work_dir) / f"zinc_train_{objective}.csv"
    if cache.is_file():
        table = pd.read_csv(cache, keep_default_na=False)
        return table["smiles"].tolist(), pd.to_numeric(table[objective], errors="coerce").to_numpy()
    train, _ = zinc_split(args.zinc)
    t0 = time.perf_counter()
    canon = [chem.canonicalize(s) or "" for s in train]
    values = np.asarray(chem.compute_properties(canon, [objective], n_jobs=args.n_jobs)[objective], dtype=float)
    print(f"{objective} of {len(canon)} training molecules in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"smiles": canon, objective: values}).to_csv(cache, index=False)
    return canon, values


def zinc_canonical(args: Any) -> set[str]:
    """Canonical SMILES of all of ZINC250k (train and test), for novelty; cached as
    ``<work-dir>/zinc_canonical.txt``."""
    from molvae import chem

    cache = Path(args.work_dir) / "zinc_canonical.txt"
    if cache.is_file():
        return set(cache.read_text(encoding="utf-8").split())
    canon = sorted({c for c in (chem.canonicalize(s) for s in read_zinc(args.zinc)) if c})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(f"{c}\n" for c in canon), encoding="utf-8")
    return set(canon)


def methods(args: Any) -> list[str]:
    return ["bo", "gradient"] if args.method == "both" else [args.method]


def run_top3(objectives: tuple[str, ...], default_budget: int, published: dict[str, list[float]], description: str,
             argv: list[str] | None = None) -> int:
    """The unconstrained benchmark: maximize an objective (≤ 38 heavy atoms), report the top 3 found."""
    import argparse

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    add_search_arguments(ap, method="bo", budget=default_budget)
    ap.add_argument("--objective", default=objectives[0], choices=list(objectives), help=f"[{objectives[0]}]")
    args = ap.parse_args(argv)
    import torch
    from rdkit import Chem

    from molvae import MolVAE
    from molvae.objectives import Guards, parse_objective
    from molvae.optimize import optimize

    torch.set_num_threads(args.threads)
    model_spec = get_model(args)
    model = MolVAE.load(model_spec, device=args.device)
    guards = Guards(max_heavy_atoms=38)
    if args.design == "known":
        init, init_scores = known_scores(args, args.objective)
        obj = parse_objective(args.objective, guards)
        ok = [i for i, s in enumerate(init) if s and np.isfinite(init_scores[i]) and obj.reject_reason(s) is None]
        init, init_scores = [init[i] for i in ok], init_scores[ok]
        best_known = round(float(np.max(init_scores)), 4)
        design = (f"known: {len(init)} train-split molecules (<= 38 heavy atoms) with their scores; "
                  f"the search starts from the best of them, free of charge")
    else:
        init, init_scores, best_known = init_molecules(args), None, None
        design = f"sample: {len(init)} random train-split molecules, encoded and scored with oracle calls"
    zinc = zinc_canonical(args)
    results = []
    for method in methods(args):
        log_path = Path(args.work_dir) / (f"{args.objective}_{method}_{args.design}_b{args.budget}_seed{args.seed}"
                                          f"{settings_tag(args.settings)}_log.csv")
        res = optimize(model, args.objective, method=method, budget=args.budget, seed=args.seed, init_smiles=init,
                       init_scores=init_scores, guards=guards, log_path=log_path, progress=args.progress, top_k=3,
                       settings={**(args.settings or {}), "patience": args.patience})
        if res.stop_signal:  # stopped by Ctrl-C/SIGTERM: the log is kept, a partial run is no result
            raise SystemExit(128 + res.stop_signal)
        top = res.top.head(3)
        log = res.log
        init_best = log[log["method"].str.endswith("-init") & log["oracle_call"]]["score"].max()
        results.append({"method": method, "budget": args.budget, "n_calls": res.n_calls,
                        "elapsed_s": round(res.elapsed_s, 1), "stop_reason": res.stop_reason,
                        "top3_scores": [round(float(v), 4) for v in top["score"]],
                        "top3_smiles": list(top["smiles"]),
                        "top3_steps": [int(s) for s in top["step"]],  # 0 = scored in the initial design
                        "top3_in_zinc250k": [s in zinc for s in top["smiles"]],
                        "top3_heavy_atoms": [int(Chem.MolFromSmiles(s).GetNumHeavyAtoms()) for s in top["smiles"]],
                        "best_in_initial_design": None if init_best != init_best else round(float(init_best), 4),
                        "known_in_design": int((log["status"] == "known").sum()),
                        "log": str(log_path)})
    nan = float("nan")
    rows = [[f"molvae {r['method']}", *(r["top3_scores"] + [nan] * 3)[:3], r["n_calls"],
             sum(not z for z in r["top3_in_zinc250k"])] for r in results]
    rows += [[name, *vals, "-", "-"] for name, vals in published.items()]
    print_table(["method", "1st", "2nd", "3rd", "oracle calls", "of the 3 not in ZINC250k"], rows)
    print(f"design: {design}" + (f"; best known score {best_known:.4f}" if best_known is not None else ""))
    for r in results:
        for s, v, step, inz in zip(r["top3_smiles"], r["top3_scores"], r["top3_steps"], r["top3_in_zinc250k"]):
            where = "initial design (encoded training molecule)" if step == 0 else f"search step {step}"
            print(f"  {r['method']}: {v:.4f}  {s}  [{where}{'; in ZINC250k' if inz else '; not in ZINC250k'}]")
    write_json(args.out, {"task": f"{args.objective} top-3 (<= 38 heavy atoms)", "objective": args.objective,
                          "seed": args.seed, "settings": args.settings, "model": describe_model(model, model_spec),
                          "design": design,
                          "init_molecules": len(init), "best_known_score": best_known,
                          "results": results, "published": published})
    return 0
