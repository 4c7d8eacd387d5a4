"""The MOSES table in one call: :func:`evaluate`.

Every figure follows the definitions of the MOSES benchmark (Polykovskiy et al. 2020,
``molsets`` 0.3.1), so the numbers can be set beside published baselines; where MOSES
would crash or divide by zero (empty or all-invalid input) the figure is ``None`` and
the counts behind it say why. See :mod:`molvae.metrics` for the definitions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import versions
from ..errors import InvalidInputError
from .molecules import PROPERTY_NAMES, Workers, resolve_n_jobs
from .similarity import max_tanimoto, power_mean_tanimoto
from .stats import (SetStatistics, SmilesSource, TrainStatistics, describe_set, describe_train,
                    reference_statistics, train_statistics)

__all__ = [
    "Evaluation", "evaluate", "METRIC_NAMES", "cosine_similarity", "wasserstein_1d",
    "fraction_valid", "fraction_unique", "novelty", "internal_diversity", "snn",
    "fragment_similarity", "scaffold_similarity", "fcd", "fraction_passes_filters", "describe",
]

log = logging.getLogger(__name__)

#: The figures of the MOSES table, in the order they are printed.
METRIC_NAMES = (
    "valid", "unique@1000", "unique@10000", "Novelty", "IntDiv", "IntDiv2", "Filters",
    "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test",
    "FCD/TestSF", "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF",
    "logP", "SA", "QED", "weight",
)
MODEL_METRIC_NAMES = ("Reconstruction", "KL", "ActiveUnits")


# ----------------------------------------------------------------------------- small pieces

def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def cosine_similarity(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Cosine of two count vectors given as ``{key: count}`` (absent keys are 0); ``None`` if either is empty."""
    if not a or not b:
        return None
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    dot = float(sum(v * large.get(k, 0) for k, v in small.items()))
    norm_a = math.sqrt(float(sum(v * v for v in a.values())))
    norm_b = math.sqrt(float(sum(v * v for v in b.values())))
    if norm_a == 0 or norm_b == 0:
        return None
    return dot / (norm_a * norm_b)


def wasserstein_1d(u: np.ndarray, v: np.ndarray, u_weights: np.ndarray | None = None,
                   v_weights: np.ndarray | None = None) -> float | None:
    """Wasserstein-1 distance of two weighted samples (``scipy.stats.wasserstein_distance``); NaNs dropped.

    ``None`` when either side has no finite value.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    uw = np.ones_like(u) if u_weights is None else np.asarray(u_weights, dtype=np.float64)
    vw = np.ones_like(v) if v_weights is None else np.asarray(v_weights, dtype=np.float64)
    keep_u, keep_v = np.isfinite(u), np.isfinite(v)
    u, uw, v, vw = u[keep_u], uw[keep_u], v[keep_v], vw[keep_v]
    if not len(u) or not len(v) or uw.sum() <= 0 or vw.sum() <= 0:
        return None
    u_sorter, v_sorter = np.argsort(u), np.argsort(v)
    values = np.concatenate([u, v])
    values.sort(kind="mergesort")
    deltas = np.diff(values)
    u_cum = np.concatenate([[0.0], np.cumsum(uw[u_sorter])])
    v_cum = np.concatenate([[0.0], np.cumsum(vw[v_sorter])])
    u_cdf = u_cum[u[u_sorter].searchsorted(values[:-1], "right")] / u_cum[-1]
    v_cdf = v_cum[v[v_sorter].searchsorted(values[:-1], "right")] / v_cum[-1]
    return float(np.sum(np.abs(u_cdf - v_cdf) * deltas))


def _unique_at(gen: SetStatistics, k: int) -> tuple[float | None, int, int]:
    """MOSES ``fraction_unique(gen, k)`` on the valid molecules: ``(value, n considered, n unique)``."""
    order = gen.valid_order
    first = order[:k] if order is not None else np.zeros(0, dtype=np.int64)
    n_unique = int(len(np.unique(first)))
    return _ratio(n_unique, len(first)), int(len(first)), n_unique


def _snn(gen: SetStatistics, ref: SetStatistics, device: torch.device, progress=None, workers=None) -> float | None:
    if gen.n_valid == 0 or ref.n_unique == 0:
        return None
    best = max_tanimoto(gen.fps, gen.popcount, ref.fps, ref.popcount, device=device, progress=progress,
                        workers=workers)
    return float(np.dot(best, gen.weights) / gen.n_valid)


def _intdiv(gen: SetStatistics, device: torch.device, progress=None, workers=None
            ) -> tuple[float | None, float | None]:
    if gen.n_valid == 0:
        return None, None
    means = power_mean_tanimoto(gen.fps, gen.popcount, gen.weights, (1, 2), device=device, progress=progress,
                                workers=workers)
    return (1.0 - float(np.dot(means[1], gen.weights) / gen.n_valid),
            1.0 - float(np.dot(means[2], gen.weights) / gen.n_valid))


def _property_distance(gen: SetStatistics, ref: SetStatistics, column: int) -> tuple[float | None, int, int]:
    u, v = gen.properties[:, column], ref.properties[:, column]
    n_gen = int(gen.weights[np.isfinite(u)].sum()) if len(u) else 0
    n_ref = int(ref.weights[np.isfinite(v)].sum()) if len(v) else 0
    return wasserstein_1d(v, u, ref.weights, gen.weights), n_gen, n_ref


def _novelty(gen: SetStatistics, train: TrainStatistics) -> tuple[float | None, int]:
    canonical = gen.canonical or []
    seen = train.contains(canonical)
    n_novel = int((~seen).sum())
    return _ratio(n_novel, len(canonical)), n_novel


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ----------------------------------------------------------------------------- result

@dataclass
class Evaluation:
    """Figures, the counts behind them, notes and per-stage timings of one evaluation."""

    metrics: dict[str, float | int | None]
    counts: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float | int | None:
        return self.metrics[name]

    def to_dict(self) -> dict[str, Any]:
        return _clean({"metrics": self.metrics, "counts": self.counts, "notes": self.notes,
                       "timings": self.timings, "cache": self.cache, "settings": self.settings})

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        from ..checkpoint import atomic_output

        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        with atomic_output(path) as f:
            f.write(text)
        return path

    def format_table(self) -> str:
        """A readable table: metric, value, and what it was computed on."""
        rows = [(name, self.metrics[name], self._basis(name)) for name in self.metrics]
        width = max([len(r[0]) for r in rows] + [6])
        lines = [f"{'metric':<{width}}  {'value':>9}  basis", f"{'-' * width}  {'-' * 9}  {'-' * 5}"]
        for name, value, basis in rows:
            if value is None:
                text = "n/a"
            elif isinstance(value, int) and not isinstance(value, bool):
                text = str(value)
            else:
                text = f"{value:.4f}"
            lines.append(f"{name:<{width}}  {text:>9}  {basis}")
        return "\n".join(lines)

    def _basis(self, name: str) -> str:
        c = self.counts
        g = c.get("generated", {})
        if name == "valid":
            return f"{g.get('n_valid', 0)} of {g.get('n_total', 0)} parse"
        if name.startswith("unique@"):
            u = c.get(name, {})
            extra = "" if u.get("complete", True) else f" (fewer than {name.split('@')[1]} valid)"
            return f"{u.get('n_unique', 0)} unique of the first {u.get('n', 0)} valid{extra}"
        if name == "Novelty":
            n = c.get("novelty", {})
            return f"{n.get('n_novel', 0)} of {n.get('n_unique', 0)} unique valid not in train"
        if name == "Filters":
            return f"{g.get('n_passes_filters', 0)} of {g.get('n_valid', 0)} valid pass MCF/PAINS/charge/ring rules"
        if name in ("IntDiv", "IntDiv2"):
            return f"{g.get('n_valid', 0)} valid ({g.get('n_unique', 0)} unique)"
        if "/" in name:
            ref = "test" if name.endswith("/Test") else "test_scaffolds"
            r = c.get(ref, {})
            return f"{g.get('n_valid', 0)} valid vs {r.get('n_valid', 0)} valid {ref.replace('_', ' ')}"
        if name in PROPERTY_NAMES:
            p = c.get("properties", {}).get(name, {})
            return f"Wasserstein-1, {p.get('n_generated', 0)} valid vs {p.get('n_test', 0)} test"
        if name in MODEL_METRIC_NAMES:
            m = c.get("model", {})
            if name == "Reconstruction":
                return f"{m.get('n_reconstructed', 0)} of {m.get('n_encoded', 0)} held-out, greedy decode of mu"
            if name == "KL":
                return f"nats/molecule over {m.get('n_encoded', 0)} held-out"
            return f"of {m.get('latent_dim', 0)} dims with Var[mu] > 0.01"
        return ""


# ----------------------------------------------------------------------------- evaluate

def _parse_k(k: int | Sequence[int]) -> list[int]:
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any((not isinstance(x, (int, np.integer))) or x < 1 for x in ks):
        raise InvalidInputError(f"k must be one or more positive integers, got {k!r}")
    return [int(x) for x in ks]


def evaluate(generated: str | os.PathLike | Sequence[str], *,
             train: str | os.PathLike | Sequence[str] | None = None,
             test: str | os.PathLike | Sequence[str] | None = None,
             test_scaffolds: str | os.PathLike | Sequence[str] | None = None,
             k: int | Sequence[int] = (1000, 10000), n_jobs: int | None = None, device: str | torch.device = "auto",
             model=None, heldout_size: int = 1000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
             use_cache: bool = True, compute_fcd: bool = True, progress: bool = False,
             smiles_column: str | Sequence[str] | None = None, threads: int | None = None) -> Evaluation:
    """Compute the MOSES metrics of generated molecules.

    Args:
        generated: a molecule file (any format :func:`molvae.data.read_molecules` reads) or SMILES.
        train: training set, for novelty.
        test: test set, for FCD/SNN/Frag/Scaf ``/Test``, the property distances and the
            held-out molecules of ``model``.
        test_scaffolds: scaffold test set, for the ``/TestSF`` figures.
        k: sizes for ``unique@k``.
        n_jobs: worker processes and torch threads (``None`` or ``0``: all cores).
        device: where ChemNet and the Tanimoto products run (``auto``: CUDA if available).
        model: a :class:`~molvae.MolVAE`; adds held-out reconstruction, KL and active units.
        heldout_size: test molecules sampled (with ``seed``) for the model figures.
        cache_dir: reference-statistics cache (default ``$MOLVAE_CACHE_DIR`` or ``~/.cache/molvae``).
        use_cache: read and write the cache.
        compute_fcd: compute FCD (needs the ``fcd`` package; skipped with a note when missing).
        progress: progress bars on stderr.
        smiles_column: SMILES column of CSV inputs when not found automatically; a list gives candidates
            (each file uses the first it has, a file with none of them is read by detection).
        threads: torch threads for the matrix products (default: ``n_jobs``).

    Returns:
        An :class:`Evaluation`; ``metrics`` uses the MOSES names (``valid``, ``unique@1000``,
        ``FCD/Test``, ...).

    Raises:
        InvalidInputError: unreadable input files or bad options.
    """
    from ..core import resolve_device

    ks = _parse_k(k)
    if heldout_size < 1:
        raise InvalidInputError(f"heldout_size must be >= 1, got {heldout_size}")
    run = _Run(dev=resolve_device(device), progress=progress)
    jobs = resolve_n_jobs(n_jobs)
    start = time.perf_counter()
    sources = {
        "generated": SmilesSource(generated, smiles_column, "generated"),
        "train": SmilesSource(train, smiles_column, "train") if train is not None else None,
        "test": SmilesSource(test, smiles_column, "test") if test is not None else None,
        "test_scaffolds": (SmilesSource(test_scaffolds, smiles_column, "test_scaffolds")
                           if test_scaffolds is not None else None),
    }
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or jobs)
    try:
        if compute_fcd:
            run.load_chemnet()  # before the fork, so the workers share the loaded weights
        run.workers = Workers(jobs, progress).start()
        gen, refs, train_stats = _statistics(run, sources, use_cache, cache_dir)
        _set_figures(run, gen, ks, train_stats)
        _reference_figures(run, gen, refs)
        if model is not None:
            with run.timed("model"):
                _model_figures(run, model, sources["test"], heldout_size, seed)
    finally:
        if run.workers is not None:
            run.workers.close()
        torch.set_num_threads(threads_before)

    metrics = run.metrics
    ordered = {name: metrics[name] for name in (*METRIC_NAMES, *MODEL_METRIC_NAMES) if name in metrics}
    ordered.update({name: v for name, v in metrics.items() if name not in ordered})
    run.timings["total"] = round(time.perf_counter() - start, 4)
    settings = {
        **{name: src.describe() if src is not None else None for name, src in sources.items()},
        "k": ks, "n_jobs": jobs, "device": str(run.dev), "fingerprint": "Morgan r=2, 1024 bits",
        "heldout_size": heldout_size if model is not None else None, "seed": seed,
        "versions": versions("molvae", "rdkit", "torch", "numpy", "python", "fcd"), "platform": platform.platform(),
    }
    return Evaluation(ordered, run.counts, run.notes, run.timings, run.cache, settings)


@dataclass
class _Run:
    """What one :func:`evaluate` call gathers: figures, counts, notes, timings, cache use."""

    dev: torch.device
    progress: bool
    workers: Workers | None = None
    chemnet: Any = None
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t, 4)

    def load_chemnet(self) -> None:
        from .chemnet import FCD_MISSING, ChemNet, fcd_available

        if fcd_available():
            with self.timed("chemnet_load"):
                self.chemnet = ChemNet(self.dev)
        else:
            self.notes.append(FCD_MISSING)
            log.warning(FCD_MISSING)


def _statistics(run: _Run, sources: dict, use_cache: bool, cache_dir) -> tuple:
    """Statistics of the generated set, the test sets (cached) and the training set (cached)."""
    with run.timed("read"):
        gen_smiles = sources["generated"].smiles()
    gen = describe_set(gen_smiles, run.workers, label="generated", with_filters=True,
                       chemnet=run.chemnet, keep_canonical=True)
    for stage, seconds in gen.timings.items():
        run.timings[f"generated_{stage}"] = round(seconds, 4)
    refs: dict[str, SetStatistics] = {}
    for name in ("test", "test_scaffolds"):
        if sources[name] is None:
            continue
        with run.timed(f"reference_{name}"):
            refs[name], hit = reference_statistics(sources[name], run.workers, chemnet=run.chemnet,
                                                   use_cache=use_cache, directory=cache_dir)
            run.cache[name] = "off" if not use_cache else ("hit" if hit else "computed")
    train_stats = None
    if sources["train"] is not None:
        with run.timed("reference_train"):
            train_stats, hit = train_statistics(sources["train"], run.workers, use_cache=use_cache,
                                                directory=cache_dir)
            run.cache["train"] = "off" if not use_cache else ("hit" if hit else "computed")
    return gen, refs, train_stats


def _set_figures(run: _Run, gen: SetStatistics, ks: list[int], train_stats: TrainStatistics | None) -> None:
    """Figures of the generated set alone (and against the training set): valid, unique@k, Novelty, IntDiv, Filters."""
    metrics, counts, notes = run.metrics, run.counts, run.notes
    counts["generated"] = {
        "n_total": gen.n_total, "n_valid": gen.n_valid, "n_invalid": gen.n_total - gen.n_valid,
        "n_unique": gen.n_unique,
        "n_passes_filters": int(gen.weights[gen.filters].sum()) if gen.filters is not None and gen.n_unique else 0,
        "n_fragments": len(gen.fragments), "n_scaffolds": len(gen.scaffolds),
        "n_with_scaffold": gen.n_with_scaffold,
    }
    metrics["valid"] = _ratio(gen.n_valid, gen.n_total)
    if gen.n_total == 0:
        notes.append("the generated set is empty")
    elif gen.n_valid == 0:
        notes.append("no generated molecule is valid: every other figure is n/a")
    for kk in ks:
        value, n, n_unique = _unique_at(gen, kk)
        metrics[f"unique@{kk}"] = value
        counts[f"unique@{kk}"] = {"n": n, "n_unique": n_unique, "complete": n >= kk}
        if 0 < n < kk:
            notes.append(f"unique@{kk}: only {n} valid molecules, computed on those (as MOSES does)")
    if train_stats is not None:
        value, n_novel = _novelty(gen, train_stats)
        metrics["Novelty"] = value
        counts["novelty"] = {"n_unique": gen.n_unique, "n_novel": n_novel}
        counts["train"] = {"n_total": train_stats.n_total, "n_valid": train_stats.n_valid,
                           "n_unique": train_stats.n_unique}
    with run.timed("intdiv"), _stage_bar(run.progress, "IntDiv", gen.n_unique) as bar:
        metrics["IntDiv"], metrics["IntDiv2"] = _intdiv(gen, run.dev, progress=bar.update, workers=run.workers)
    metrics["Filters"] = (_ratio(counts["generated"]["n_passes_filters"], gen.n_valid))


def _reference_figures(run: _Run, gen: SetStatistics, refs: dict[str, SetStatistics]) -> None:
    """FCD, SNN, Frag and Scaf against each test set; the property distances against the test set."""
    from .chemnet import frechet_distance

    metrics = run.metrics
    for name, suffix in (("test", "Test"), ("test_scaffolds", "TestSF")):
        ref = refs.get(name)
        if ref is None:
            continue
        run.counts[name] = {"n_total": ref.n_total, "n_valid": ref.n_valid, "n_unique": ref.n_unique,
                            "n_fragments": len(ref.fragments), "n_scaffolds": len(ref.scaffolds)}
        if ref.n_valid == 0:
            run.notes.append(f"no valid molecule in the {name.replace('_', ' ')} set")
        with run.timed(f"fcd_{name}"):
            if run.chemnet is not None:
                metrics[f"FCD/{suffix}"] = frechet_distance(gen.fcd, ref.fcd)
                if gen.fcd is None and gen.n_valid:
                    run.notes.append("FCD needs at least 2 valid generated molecules")
            else:
                metrics[f"FCD/{suffix}"] = None
        with run.timed(f"snn_{name}"), _stage_bar(run.progress, f"SNN/{suffix}", ref.n_unique) as bar:
            metrics[f"SNN/{suffix}"] = _snn(gen, ref, run.dev, progress=bar.update, workers=run.workers)
        with run.timed(f"frag_scaf_{name}"):
            metrics[f"Frag/{suffix}"] = cosine_similarity(ref.fragments, gen.fragments)
            metrics[f"Scaf/{suffix}"] = cosine_similarity(ref.scaffolds, gen.scaffolds)
    if "test" in refs:
        with run.timed("properties"):
            run.counts["properties"] = {}
            for column, prop in enumerate(PROPERTY_NAMES):
                value, n_gen, n_ref = _property_distance(gen, refs["test"], column)
                metrics[prop] = value
                run.counts["properties"][prop] = {"n_generated": n_gen, "n_test": n_ref}


def _model_figures(run: _Run, model, test: SmilesSource | None, heldout_size: int, seed: int) -> None:
    """Held-out reconstruction, KL and active units of ``model`` on ``heldout_size`` test molecules."""
    if test is None:
        run.notes.append("model figures need held-out molecules: pass a test set")
        return
    from .model_metrics import model_metrics

    res = model_metrics(model, test.smiles(), n=heldout_size, seed=seed)
    run.metrics["Reconstruction"] = res.pop("reconstruction")
    run.metrics["KL"] = res.pop("kl")
    run.metrics["ActiveUnits"] = res.pop("active_units")
    run.counts["model"] = res


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _stage_bar(progress: bool, desc: str, total: int):
    if not progress:
        return _NullBar()
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="mol", leave=False, file=sys.stderr)


# ----------------------------------------------------------------------------- single metrics

def describe(smiles: Sequence[str], *, filters: bool = False, with_fcd: bool = False, n_jobs: int = 1,
             device: str | torch.device = "cpu") -> SetStatistics:
    """:class:`SetStatistics` of a list of SMILES (no cache), for the single-metric functions."""
    chemnet = None
    if with_fcd:
        from .chemnet import ChemNet

        chemnet = ChemNet(device)
    with Workers(n_jobs) as workers:
        return describe_set(list(smiles), workers, with_filters=filters, chemnet=chemnet, keep_canonical=True)


def fraction_valid(smiles: Sequence[str]) -> float | None:
    """Fraction of strings RDKit parses (empty strings are invalid); ``None`` for no input."""
    gen = describe(smiles)
    return _ratio(gen.n_valid, gen.n_total)


def fraction_unique(smiles: Sequence[str], k: int | None = None) -> float | None:
    """unique@k: distinct canonical SMILES among the first ``k`` valid ones (all valid ones if ``k`` is None)."""
    gen = describe(smiles)
    return _unique_at(gen, k if k is not None else max(gen.n_valid, 1))[0]


def novelty(smiles: Sequence[str], train: Sequence[str]) -> float | None:
    """Fraction of unique valid canonical molecules absent from the canonicalized ``train``."""
    with Workers(1) as workers:
        train_stats = describe_train(list(train), workers)
    return _novelty(describe(smiles), train_stats)[0]


def internal_diversity(smiles: Sequence[str], p: int = 1, device: str | torch.device = "cpu") -> float | None:
    """IntDiv_p = 1 − mean_i (mean_j T_ij^p)^(1/p) over all valid molecules (pairs with itself included)."""
    gen = describe(smiles)
    if gen.n_valid == 0:
        return None
    means = power_mean_tanimoto(gen.fps, gen.popcount, gen.weights, (p,), device=torch.device(device))
    return 1.0 - float(np.dot(means[p], gen.weights) / gen.n_valid)


def snn(smiles: Sequence[str], reference: Sequence[str], device: str | torch.device = "cpu") -> float | None:
    """Mean over valid molecules of the largest Tanimoto similarity to ``reference``."""
    return _snn(describe(smiles), describe(reference), torch.device(device))


def fragment_similarity(smiles: Sequence[str], reference: Sequence[str]) -> float | None:
    """Cosine similarity of BRICS fragment counts (Frag)."""
    return cosine_similarity(describe(reference).fragments, describe(smiles).fragments)


def scaffold_similarity(smiles: Sequence[str], reference: Sequence[str]) -> float | None:
    """Cosine similarity of Bemis–Murcko scaffold counts (Scaf; scaffolds with < 2 rings dropped)."""
    return cosine_similarity(describe(reference).scaffolds, describe(smiles).scaffolds)


def fcd(smiles: Sequence[str], reference: Sequence[str], device: str | torch.device = "cpu") -> float | None:
    """Fréchet ChemNet Distance between the valid molecules of two sets (needs ``fcd``)."""
    from .chemnet import frechet_distance

    return frechet_distance(describe(smiles, with_fcd=True, device=device).fcd,
                            describe(reference, with_fcd=True, device=device).fcd)


def fraction_passes_filters(smiles: Sequence[str]) -> float | None:
    """Fraction of valid molecules passing the MOSES filters."""
    gen = describe(smiles, filters=True)
    if gen.n_valid == 0:
        return None
    return float(gen.weights[gen.filters].sum() / gen.n_valid)
