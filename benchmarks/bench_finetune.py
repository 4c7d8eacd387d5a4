#!/usr/bin/env python
r"""Fine-tuning a shipped model on a chemist's series, against the alternatives, in one run. Prints JSON.

    python benchmarks/bench_finetune.py --test ../shared/moses/test.csv.gz \
        --zinc ../shared/zinc250k/zinc250k.txt.gz --threads 1 --out benchmarks/results/bench_finetune.json
    python benchmarks/bench_finetune.py --table benchmarks/results/bench_finetune.json   # the docs' tables

A *series* is every molecule of ``--test`` (the MOSES test set) that holds one core (a SMARTS): ``--n-finetune``
of them (seeded) to train on, ``--n-heldout`` others held out. For each core and seed, 1,000 molecules each from:

* ``shipped``: the base model as shipped (its default prior);
* ``scratch``: a model trained from a random network on the series alone (molvae's default sizes and
  settings, the fine-tuning batch size and epochs, no early stopping);
* ``finetuned``: ``molvae train SERIES --from BASE`` with the fine-tuning defaults;
* ``finetuned_greedy``, ``finetuned_T0.5``: the same model decoded greedily, and sampled at temperature 0.5
  (the trade of diversity for the core);

and ``floor``: the fine-tune set itself measured against the held-out molecules. Figures per sample set:
share with the core, FCD and SNN to the held-out molecules, unique, novel (against the fine-tune set),
valid, MOSES Filters pass rate, and the wall time of training. FCD on a thousand molecules is noisy: the
spread over seeds is reported beside every mean.

``--sweep`` measures, instead, the fine-tuning settings of :data:`SWEEP` and the refitted prior's number of
components against the defaults (sampled as ``generate`` does).

``--zinc`` adds a small series with stereocentres from ZINC250k (molecules with a tetrahedral centre that
share ``--zinc-core``): what the fine-tuned model writes of their stereo tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORES = {
    "benzimidazole": "c1nc2ccccc2n1",
    "indole": "c1cc2ccccc2n1",
    "quinoline": "c1ccc2ncccc2c1",
}


_HITS: dict[str, list[str]] = {}


def build_series(test: list[str], smarts: str, n_finetune: int, n_heldout: int, seed: int
                 ) -> tuple[list[str], list[str]]:
    from rdkit import Chem

    if smarts not in _HITS:
        core = Chem.MolFromSmarts(smarts)
        _HITS[smarts] = [s for s in test if (m := Chem.MolFromSmiles(s)) is not None and m.HasSubstructMatch(core)]
    hits = _HITS[smarts]
    order = np.random.default_rng(seed).permutation(len(hits))
    hits = [hits[i] for i in order]
    if len(hits) < n_finetune + 20:
        raise SystemExit(f"core {smarts}: only {len(hits)} molecules of the test set hold it")
    return hits[:n_finetune], hits[n_finetune:n_finetune + n_heldout]


def figures(smiles: list[str], smarts: str, finetune: list[str], heldout: list[str]) -> dict[str, Any]:
    from rdkit import Chem

    from molvae import metrics

    core = Chem.MolFromSmarts(smarts)
    valid = [s for s in smiles if s and Chem.MolFromSmiles(s) is not None]
    with_core = sum(Chem.MolFromSmiles(s).HasSubstructMatch(core) for s in valid)
    return {
        "n": len(smiles),
        "valid": len(valid) / len(smiles) if smiles else None,
        "core_share": with_core / len(valid) if valid else None,
        "unique": metrics.fraction_unique(valid, k=len(valid)) if valid else None,
        "novel": metrics.novelty(valid, finetune) if valid else None,
        "FCD": metrics.fcd(valid, heldout),
        "SNN": metrics.snn(valid, heldout),
        "Filters": metrics.fraction_passes_filters(valid),
    }


def train_variant(series_file: Path, out: Path, seed: int, base: str | None, epochs: int | None,
                  settings: dict[str, Any] | None = None) -> tuple[Any, float]:
    from molvae import TrainConfig, finetune_config, train

    t0 = time.perf_counter()
    if base is not None:
        overrides = {"seed": seed, "show_progress": False, **(settings or {})}
        if epochs is not None:
            overrides.update(epochs=epochs, early_stopping=None)
        res = train(series_file, out, base=base, train_config=finetune_config(_base(base), **overrides),
                    use_cache=False)
    else:
        defaults = finetune_config(_base("moses"))
        tc = TrainConfig(seed=seed, batch_size=defaults.batch_size, epochs=epochs or defaults.epochs,
                         show_progress=False)
        res = train(series_file, out, train_config=tc, use_cache=False)
    return res.model, time.perf_counter() - t0


_BASES: dict[str, Any] = {}


def _base(name: str):
    from molvae import MolVAE

    if name not in _BASES:
        _BASES[name] = MolVAE.load(name)
    return _BASES[name]


def _open_series(task: dict[str, Any]) -> tuple:
    """A worker's start on one series: its threads, and the fine-tune set written where training reads it."""
    import torch

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    folder = Path(task["folder"])
    series_file = folder / f"{task['name']}_{task['seed']}.csv"
    pd.DataFrame({"smiles": task["finetune"]}).to_csv(series_file, index=False)
    return (task["name"], task["smarts"], task["seed"], task["n_samples"], task["finetune"], task["heldout"],
            folder, series_file)


def run_pair(task: dict[str, Any]) -> dict[str, Any]:
    """One core and seed: every variant's figures (a worker of ``--jobs``)."""
    name, smarts, seed, n_samples, finetune, heldout, folder, series_file = _open_series(task)
    samples: dict[str, tuple[list[str], float | None]] = {}
    samples["shipped"] = (_base(task["base"]).sample(n_samples, seed=seed)["smiles"].tolist(), None)
    model, wall = train_variant(series_file, folder / f"{name}_{seed}_scratch", seed, None, task["scratch_epochs"])
    samples["scratch"] = (model.sample(n_samples, seed=seed)["smiles"].tolist(), wall)
    model, wall = train_variant(series_file, folder / f"{name}_{seed}_ft", seed, task["base"], None)
    samples["finetuned"] = (model.sample(n_samples, seed=seed)["smiles"].tolist(), wall)
    for key, kwargs in DECODINGS.items():
        samples[key] = (model.sample(n_samples, seed=seed, **kwargs)["smiles"].tolist(), wall)
    rows: dict[str, dict] = {"finetuned_epochs": {"epochs": len(model.history)}}
    for key, (smiles, wall) in samples.items():
        rows[key] = {**figures(smiles, smarts, finetune, heldout), "train_wall_s": wall}
    rows["floor"] = {**figures(finetune, smarts, finetune, heldout), "novel": None}
    print(json.dumps({"core": name, "seed": seed, **rows}), file=sys.stderr, flush=True)
    return rows


#: ``--sweep``: fine-tuning settings tried against the defaults (TrainConfig fields)
SWEEP: dict[str, dict[str, Any]] = {
    "defaults": {},
    "lr 3e-4": {"learning_rate": 3e-4},
    "lr 1e-3": {"learning_rate": 1e-3},
    "60 epochs": {"epochs": 60},
    "200 epochs": {"epochs": 200},
    "best validation epoch kept": {"keep": "best"},
}
#: ``--sweep``: mixture components of the refitted prior, tried on the default fine-tuned model
SWEEP_COMPONENTS = (1, 32, 100)


def run_setting(task: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning setting of ``--sweep`` on one series: figures of the model's default sampling (and,
    for the defaults, of priors refitted with other numbers of components)."""
    from molvae.sample import fit_prior

    name, smarts, seed, n, finetune, heldout, folder, series_file = _open_series(task)
    label = task["setting"]
    model, wall = train_variant(series_file, folder / f"{name}_{seed}_sweep{list(SWEEP).index(label)}", seed,
                                task["base"], None, SWEEP[label])
    rows = {label: {**figures(model.sample(n, seed=seed)["smiles"].tolist(), smarts, finetune, heldout),
                    "train_wall_s": wall, "epochs_trained": len(model.history)}}
    if not SWEEP[label]:
        for k in (k for k in SWEEP_COMPONENTS if len(finetune) >= 2 * k):  # fitted to the whole fine-tune set
            fit_prior(model, finetune, n_components=k, seed=seed, name=f"gmm{k}")
            smiles = model.sample(n, seed=seed, prior=f"gmm{k}")["smiles"].tolist()
            rows[f"prior with {k} components"] = figures(smiles, smarts, finetune, heldout)
    print(json.dumps({"core": name, "seed": seed, **rows}), file=sys.stderr, flush=True)
    return rows


def _task(task: dict[str, Any]) -> dict[str, Any]:
    kind = task["kind"]
    return stereo_series(task) if kind == "stereo" else run_setting(task) if kind == "sweep" else run_pair(task)


def summarize(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"mean": float(np.mean(values)) if values else None,
                    "min": float(np.min(values)) if values else None,
                    "max": float(np.max(values)) if values else None}
    return out


def stereo_series(task: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune on a few dozen ZINC250k molecules with stereocentres sharing a core: which stereo tokens are
    added, and how many samples carry a stereocentre."""
    from rdkit import Chem

    import torch

    from molvae.data import read_molecules

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    smarts, n, folder = task["smarts"], task["n"], Path(task["folder"])
    core = Chem.MolFromSmarts(smarts)
    table = read_molecules(task["zinc"])
    hits = []
    for s in table["input"]:
        m = Chem.MolFromSmiles(s)
        if m is not None and "@" in s and m.HasSubstructMatch(core):
            hits.append(Chem.MolToSmiles(m))
        if len(hits) >= n:
            break
    series_file = folder / "zinc_stereo.csv"
    pd.DataFrame({"smiles": hits}).to_csv(series_file, index=False)
    base = _base(task["base"])
    unknown = sorted({t for s in hits for t in base.vocab.unknown(_tokens(s))})
    model, wall = train_variant(series_file, folder / "zinc_stereo_ft", 0, task["base"], None)
    smiles = model.sample(task["n_samples"], seed=0)["smiles"].tolist()
    valid = [s for s in smiles if s]
    return {"core": smarts, "n_molecules": len(hits), "tokens_base_lacks": unknown,
            "tokens_added": model.metadata.get("base", {}).get("added_tokens"),
            "train_wall_s": wall, "samples_valid": len(valid) / len(smiles),
            "samples_with_stereocentre": sum("@" in s for s in valid) / len(valid) if valid else None,
            "samples_with_core": sum(Chem.MolFromSmiles(s).HasSubstructMatch(core) for s in valid) / len(valid),
            "series_with_stereocentre": 1.0, "examples": valid[:5]}


def _tokens(smiles: str) -> list[str]:
    from molvae import chem

    res = chem.process_smiles(smiles)
    return [] if isinstance(res, str) else list(res.tokens)


DECODINGS: dict[str, dict[str, Any]] = {"finetuned_greedy": {"greedy": True}, "finetuned_T0.5": {"temperature": 0.5}}
COLUMNS = ("shipped", "scratch", "finetuned", *DECODINGS, "floor")
FIGURES = ("core_share", "FCD", "SNN", "unique", "novel", "valid", "Filters", "train_wall_s")


def markdown(record: dict[str, Any]) -> str:
    """One table per core: mean (min-max over seeds) of every figure and variant."""
    out = []
    for name, core in record["cores"].items():
        out.append(f"**{name}** (`{core['smarts']}`, {core['n_finetune']} to fine-tune on, {core['n_heldout']} held "
                   f"out, seeds {', '.join(map(str, record['seeds']))})\n")
        out.append("| figure | " + " | ".join(COLUMNS) + " |")
        out.append("|---" * (len(COLUMNS) + 1) + "|")
        for fig in FIGURES:
            cells = []
            for col in COLUMNS:
                v = core["summary"].get(col, {}).get(fig, {})
                if not v or v.get("mean") is None:
                    cells.append("–")
                elif fig == "train_wall_s":
                    cells.append(f"{v['mean']:.0f} s")
                else:
                    cells.append(f"{v['mean']:.3f} ({v['min']:.3f}–{v['max']:.3f})")
            out.append(f"| {fig} | " + " | ".join(cells) + " |")
        out.append("")
    for name, rows in record.get("sweep", {}).items():
        figs = ("core_share", "FCD", "SNN", "unique", "novel", "Filters", "train_wall_s")
        out.append(f"**{name}**, fine-tuning settings (mean, min–max over seeds {', '.join(map(str, record['seeds']))})\n")
        out.append("| setting | " + " | ".join(figs) + " |")
        out.append("|---" * (len(figs) + 1) + "|")
        for label, summary in rows.items():
            cells = [("–" if summary.get(f, {}).get("mean") is None else
                      f"{summary[f]['mean']:.0f} s" if f == "train_wall_s" else
                      f"{summary[f]['mean']:.3f} ({summary[f]['min']:.3f}–{summary[f]['max']:.3f})") for f in figs]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    st = record.get("stereo_series")
    if st:
        out.append(f"**stereo series** ({st['n_molecules']} ZINC250k molecules with a stereocentre and `{st['core']}`): "
                   f"tokens added {' '.join(st['tokens_added'] or [])}; of {record['n_samples']} samples "
                   f"{st['samples_valid']:.3f} valid, {st['samples_with_stereocentre']:.3f} with a stereocentre, "
                   f"{st['samples_with_core']:.3f} with the core; fine-tuned in {st['train_wall_s']:.0f} s\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", metavar="JSON", help="print the markdown tables of a finished run's JSON and stop")
    ap.add_argument("--test", help="MOSES test set (csv or csv.gz with a SMILES column)")
    ap.add_argument("--base", default="moses")
    ap.add_argument("--cores", nargs="+", default=list(CORES), help=f"names of {sorted(CORES)} or NAME=SMARTS")
    ap.add_argument("--n-finetune", type=int, default=500)
    ap.add_argument("--n-heldout", type=int, default=1000)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scratch-epochs", type=int, default=None, help="default: the fine-tuning epochs")
    ap.add_argument("--zinc", help="ZINC250k (zinc250k.txt.gz) for the stereo series")
    ap.add_argument("--zinc-core", default="c1ccccc1C(=O)N", help="SMARTS the stereo series shares")
    ap.add_argument("--zinc-n", type=int, default=48)
    ap.add_argument("--sweep", action="store_true",
                    help="instead: the fine-tuning settings of SWEEP and priors of SWEEP_COMPONENTS against the defaults")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job")
    ap.add_argument("--jobs", type=int, default=1, help="core-and-seed pairs run side by side (one per CPU core)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if not args.test:
        ap.error("--test is required")

    import torch

    from molvae import __version__
    from molvae.data import read_molecules
    from molvae.workers import ordered_map

    if args.threads:
        torch.set_num_threads(args.threads)
    test = read_molecules(args.test)["input"].tolist()
    record: dict[str, Any] = {
        "benchmark": "bench_finetune", "command": " ".join(sys.argv), "molvae": __version__, "base": args.base,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "jobs": args.jobs, "load_before": os.getloadavg()},
        "n_samples": args.n_samples, "seeds": args.seeds, "cores": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        common = {"base": args.base, "n_samples": args.n_samples, "threads": args.threads, "folder": tmp}
        tasks, cores = [], {}
        for spec in args.cores:
            name, smarts = spec.split("=", 1) if "=" in spec else (spec, CORES[spec])
            cores[name] = smarts
            for seed in args.seeds:
                finetune, heldout = build_series(test, smarts, args.n_finetune, args.n_heldout, seed)
                tasks.append({**common, "kind": "pair", "name": name, "smarts": smarts, "seed": seed,
                              "finetune": finetune, "heldout": heldout, "scratch_epochs": args.scratch_epochs})
        if args.sweep:
            tasks = [{**t, "kind": "sweep", "setting": label} for t in tasks for label in SWEEP]
        elif args.zinc:
            tasks.append({**common, "kind": "stereo", "zinc": args.zinc, "smarts": args.zinc_core, "n": args.zinc_n})
        results = list(ordered_map(_task, tasks, args.jobs, what="fine-tuning a series"))
    if args.sweep:
        record["sweep"] = {name: {} for name in cores}
        for task, rows in zip(tasks, results):
            for key, row in rows.items():
                record["sweep"][task["name"]].setdefault(key, []).append(row)
        record["sweep"] = {name: {k: summarize(v) for k, v in rows.items()} for name, rows in record["sweep"].items()}
        cores = {}
    for name, smarts in cores.items():
        per_seed: dict[str, list[dict]] = {}
        for task, rows in zip(tasks, results):
            if task["kind"] == "pair" and task["name"] == name:
                for key, row in rows.items():
                    per_seed.setdefault(key, []).append(row)
        record["cores"][name] = {"smarts": smarts, "n_finetune": args.n_finetune, "n_heldout": args.n_heldout,
                                 "per_seed": per_seed, "summary": {k: summarize(v) for k, v in per_seed.items()}}
    if args.zinc and not args.sweep:
        record["stereo_series"] = results[-1]
    record["wall_s"] = time.perf_counter() - t0
    record["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(record, indent=2)
    if args.out:
        tmp_out = Path(args.out).with_suffix(".tmp")
        tmp_out.write_text(text + "\n")
        tmp_out.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
