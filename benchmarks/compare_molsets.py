"""Compare ``molvae evaluate`` with the original MOSES implementation (``molsets`` 0.3.1), same run.

Takes N generated molecules (a seeded sample of the MOSES test set, drawn exactly as
``benchmarks/bench_metrics.py`` does, or ``--generated FILE``) and the test, scaffold-test
and training sets (whole, or seeded subsets of ``--ref-size`` molecules each so it runs
quickly), then computes the MOSES table on exactly the same lists twice:

(a) molsets: ``compute_intermediate_statistics`` for test and test-scaffolds first (timed
    separately: that is how molsets is meant to be used, with precomputed statistics),
    then ``get_all_metrics(gen, test=..., test_scaffolds=..., ptest=..., ptest_scaffolds=...,
    train=...)`` on the CPU;
(b) ``molvae.metrics.evaluate`` with a fresh, empty reference cache (cold), then again
    with the cache filled (warm).

It prints one JSON object: for every MOSES figure the molsets value, the molvae value and
their absolute difference (figures differing by more than ``--tolerance`` are listed under
``disagreements``); the times of both and their ratios; versions; load average. molsets needs
an environment of its own (it is old), e.g.::

    python -m venv --system-site-packages /tmp/molsets-venv
    /tmp/molsets-venv/bin/pip install --no-deps molsets-0.3.1-py3-none-any.whl fcd_torch-1.0.7-py3-none-any.whl
    taskset -c 1 /tmp/molsets-venv/bin/python benchmarks/compare_molsets.py --test ../shared/moses/test.csv.gz \\
        --test-scaffolds ../shared/moses/test_scaffolds.csv.gz --train ../shared/moses/train.csv.gz \\
        --n 1000 --ref-size 20000 --n-jobs 1 --seed 0 --out benchmarks/results/compare_molsets_n1000_ref20k.json

molsets 0.3.1 is run unmodified; only compatibility shims that change no number are set
before it is imported (see :func:`_import_molsets`). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: molsets key -> molvae key (the same MOSES names; listed so a renaming shows up here).
NAME_MAP = {
    "valid": "valid", "unique@1000": "unique@1000", "unique@10000": "unique@10000",
    "FCD/Test": "FCD/Test", "SNN/Test": "SNN/Test", "Frag/Test": "Frag/Test", "Scaf/Test": "Scaf/Test",
    "FCD/TestSF": "FCD/TestSF", "SNN/TestSF": "SNN/TestSF", "Frag/TestSF": "Frag/TestSF",
    "Scaf/TestSF": "Scaf/TestSF", "IntDiv": "IntDiv", "IntDiv2": "IntDiv2", "Filters": "Filters",
    "logP": "logP", "SA": "SA", "QED": "QED", "weight": "weight", "Novelty": "Novelty",
}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_molsets():
    """Import ``moses.metrics`` (molsets 0.3.1) under current numpy/pandas/rdkit.

    None of these shims changes a number; the installed molsets files are left untouched.
    """
    import numpy
    import pandas

    # molsets' SA_Score/sascorer.py does ``from rdkit.six import iteritems``; rdkit.six (a
    # Python-2 compatibility module) is gone from current RDKit. iteritems(d) is iter(d.items()).
    if "rdkit.six" not in sys.modules:
        try:
            import rdkit.six  # noqa: F401
        except ImportError:
            six = types.ModuleType("rdkit.six")
            six.iteritems = lambda d, **kw: iter(d.items(**kw))
            sys.modules["rdkit.six"] = six
    # moses/metrics/utils.py builds its filter list with ``_mcf.append(_pains, sort=True)``;
    # DataFrame.append was removed in pandas 2.0. It was a thin wrapper of pd.concat, which
    # gives the same frame (same rows, same order), hence the same SMARTS list.
    if not hasattr(pandas.DataFrame, "append"):
        def _append(self, other, ignore_index=False, verify_integrity=False, sort=False):
            return pandas.concat([self, other], ignore_index=ignore_index, verify_integrity=verify_integrity,
                                 sort=sort)
        pandas.DataFrame.append = _append
    # moses/metrics/utils.py ``fingerprints`` uses np.NaN (removed in numpy 2.0) for rows of
    # invalid molecules; fcd_torch uses np.row_stack (an alias of np.vstack). Same objects.
    if not hasattr(numpy, "NaN"):
        numpy.NaN = numpy.nan
    if not hasattr(numpy, "row_stack"):
        numpy.row_stack = numpy.vstack
    # ``import moses.metrics`` runs moses/__init__.py (dataset, utils: torch, matplotlib), which
    # imports fine; the baseline models (moses.vae, moses.organ, ...) are not imported.
    import moses
    import moses.metrics
    import moses.utils

    return moses, moses.metrics, moses.utils


def _subset(smiles: list[str], size: int, seed: int) -> list[str]:
    if not size or size >= len(smiles):
        return smiles
    idx = np.sort(np.random.default_rng(seed).choice(len(smiles), size=size, replace=False))
    return [smiles[i] for i in idx]


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", required=True)
    parser.add_argument("--test-scaffolds", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--generated", help="evaluate this file instead of a sample of the test set")
    parser.add_argument("--n", type=int, default=1000, help="molecules sampled from the test set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-size", type=int, default=0,
                        help="seeded subsets of M molecules of test, test-scaffolds and train (0: whole files)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="report figures differing by more")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from molvae import __version__
    from molvae.data import read_molecules
    from molvae.metrics import evaluate

    moses, moses_metrics, moses_utils = _import_molsets()

    test_full = read_molecules(args.test)["input"].astype(str).tolist()
    if args.generated:
        generated = read_molecules(args.generated)["input"].astype(str).tolist()
        source = args.generated
    else:
        rng = np.random.default_rng(args.seed)
        idx = rng.choice(len(test_full), size=min(args.n, len(test_full)), replace=False)
        generated = [test_full[i] for i in idx]
        source = f"{len(generated)} molecules sampled from {args.test} with seed {args.seed}"
    # Reference subsets: their own seeds (seed+1, +2, +3), indices sorted (file order kept).
    test = _subset(test_full, args.ref_size, args.seed + 1)
    test_sf = _subset(read_molecules(args.test_scaffolds)["input"].astype(str).tolist(), args.ref_size,
                      args.seed + 2)
    train = _subset(read_molecules(args.train)["input"].astype(str).tolist(), args.ref_size, args.seed + 3)

    report: dict = {
        "benchmark": "molvae evaluate vs molsets 0.3.1 get_all_metrics, same lists, same run",
        "generated": source, "n": len(generated), "seed": args.seed, "n_jobs": args.n_jobs, "device": "cpu",
        "reference": {"ref_size": args.ref_size or "whole files", "n_test": len(test),
                      "n_test_scaffolds": len(test_sf), "n_train": len(train),
                      "subset_seeds": {"test": args.seed + 1, "test_scaffolds": args.seed + 2,
                                       "train": args.seed + 3} if args.ref_size else None},
        "machine": {"platform": platform.platform(), "cpus_visible": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "load_average_at_start": _load()},
    }

    # ------------------------------------------------------------------ (a) molsets
    # molsets leaves torch's thread count alone; give it the same n_jobs threads molvae uses.
    torch.set_num_threads(args.n_jobs)
    # Silence RDKit (molsets' get_all_metrics does this itself, compute_intermediate_statistics
    # does not, and current RDKit logs a deprecation line per Morgan fingerprint).
    moses_utils.disable_rdkit_log()
    t0 = time.perf_counter()
    ptest = moses_metrics.compute_intermediate_statistics(test, n_jobs=args.n_jobs, device="cpu")
    t_test = time.perf_counter() - t0
    ptest_sf = moses_metrics.compute_intermediate_statistics(test_sf, n_jobs=args.n_jobs, device="cpu")
    t_stats = time.perf_counter() - t0
    t1 = time.perf_counter()
    ms = moses_metrics.get_all_metrics(generated, k=[1000, 10000], n_jobs=args.n_jobs, device="cpu",
                                       test=test, test_scaffolds=test_sf, ptest=ptest,
                                       ptest_scaffolds=ptest_sf, train=train)
    t_metrics = time.perf_counter() - t1
    moses_utils.disable_rdkit_log()  # get_all_metrics re-enabled it

    # ------------------------------------------------------------------ (b) molvae
    cache = Path(tempfile.mkdtemp(prefix="molvae-compare-cache-"))
    kwargs = dict(train=train, test=test, test_scaffolds=test_sf, k=(1000, 10000), n_jobs=args.n_jobs,
                  device="cpu", cache_dir=cache, progress=False)
    try:
        t2 = time.perf_counter()
        cold = evaluate(generated, **kwargs)
        t_cold = time.perf_counter() - t2
        t3 = time.perf_counter()
        warm = evaluate(generated, **kwargs)
        t_warm = time.perf_counter() - t3
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    # ------------------------------------------------------------------ compare
    table, disagreements = {}, []
    for m_name, v_name in NAME_MAP.items():
        a, b = _num(ms.get(m_name)), _num(warm.metrics.get(v_name))
        diff = abs(a - b) if a is not None and b is not None else None
        table[m_name] = {"molsets": a, "molvae": b, "abs_diff": diff}
        if diff is None and (a is not None or b is not None):
            disagreements.append(f"{m_name}: one side is n/a")
        elif diff is not None and diff > args.tolerance:
            disagreements.append(f"{m_name}: |{a:.6g} - {b:.6g}| = {diff:.3g}")
    extra = sorted(set(ms) - set(NAME_MAP)) + sorted(set(warm.metrics) - set(NAME_MAP.values()))
    report["metrics"] = table
    report["tolerance"] = args.tolerance
    report["disagreements"] = disagreements
    if extra:
        report["unmapped_metrics"] = extra
    if cold.metrics != warm.metrics:
        report["warning"] = "molvae cold and warm figures differ"
    molsets_total = t_stats + t_metrics
    report["times_s"] = {
        "molsets": {"stats_test": round(t_test, 2), "stats_test_scaffolds": round(t_stats - t_test, 2),
                    "stats_total": round(t_stats, 2), "metrics": round(t_metrics, 2),
                    "total": round(molsets_total, 2)},
        "molvae": {"cold": round(t_cold, 2), "warm": round(t_warm, 2),
                   "cold_stages": cold.timings, "warm_stages": warm.timings, "cache_cold": cold.cache,
                   "cache_warm": warm.cache},
        "ratios": {"molsets_total / molvae_cold": round(molsets_total / t_cold, 2),
                   "molsets_metrics / molvae_warm": round(t_metrics / t_warm, 2)},
    }
    report["molvae_counts"] = warm.to_dict()["counts"]
    report["molvae_notes"] = warm.notes
    report["versions"] = {
        "molvae": __version__, "molsets": getattr(moses, "__version__", _version("molsets")),
        "fcd_torch": _version("fcd_torch") or _version("fcd-torch"), "fcd": _version("fcd"),
        "rdkit": _version("rdkit"), "numpy": np.__version__, "pandas": _version("pandas"),
        "scipy": _version("scipy"), "torch": torch.__version__, "python": platform.python_version(),
    }
    report["machine"]["load_average_at_end"] = _load()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
