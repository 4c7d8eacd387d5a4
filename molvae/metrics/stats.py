"""Summaries of a set of molecules, and their on-disk cache for reference sets.

A :class:`SetStatistics` is everything the MOSES metrics need from one side of a
comparison: counts, the unique valid canonical molecules with their multiplicities,
Morgan fingerprints, BRICS fragment and scaffold counts, property values, filter
results and ChemNet mean/covariance. Duplicates are described once and weighted, which
gives the same figures as describing every copy (MOSES keeps duplicates in every
metric but uniqueness and novelty).

Reference sets (test, scaffold test, train) are summarized once and cached under
``$MOLVAE_CACHE_DIR`` (default ``~/.cache/molvae``) in ``metrics/``, keyed by the SHA-256
of the file (or of the SMILES list), the SMILES column, the RDKit and ``fcd`` versions
and the settings, so a second evaluation against the same file reads a few files
instead of recomputing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._version import versions
from ..cache import default_cache_dir
from ..data import file_hash, read_molecules
from ..errors import InvalidInputError
from .molecules import (FP_BITS, FP_RADIUS, MIN_SCAFFOLD_RINGS, PROPERTY_NAMES, Workers, canonical_chunk,
                        canonical_hash_chunk, describe_chunk, smiles_hash)

__all__ = [
    "SetStatistics", "TrainStatistics", "SmilesSource", "describe_set", "describe_train",
    "cache_dir", "reference_statistics", "train_statistics", "STATS_VERSION",
]

log = logging.getLogger(__name__)

#: Bump when the cached content or a definition changes.
STATS_VERSION = 1


@dataclass
class SetStatistics:
    """One set of molecules, described for the metrics (rows are unique valid canonical molecules)."""

    n_total: int
    n_valid: int
    weights: np.ndarray            # (n_unique,) int64 copies of each molecule among the valid ones
    fps: np.ndarray                # (n_unique, FP_BITS/8) uint8 packed Morgan bits
    popcount: np.ndarray           # (n_unique,) int32
    fragments: dict[str, int]      # BRICS fragment -> count over all valid molecules
    scaffolds: dict[str, int]      # scaffold -> count over all valid molecules
    properties: np.ndarray         # (n_unique, len(PROPERTY_NAMES)) float64, NaN where RDKit failed
    filters: np.ndarray | None = None            # (n_unique,) bool, generated sets only
    fcd: tuple[np.ndarray, np.ndarray] | None = None   # ChemNet (mu, sigma); None if < 2 or no fcd
    canonical: list[str] | None = None           # unique canonical SMILES (generated sets)
    valid_order: np.ndarray | None = None        # (n_valid,) row of each valid input, input order
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_unique(self) -> int:
        return int(len(self.weights))

    @property
    def n_with_scaffold(self) -> int:
        return int(sum(self.scaffolds.values()))


@dataclass
class TrainStatistics:
    """A training set reduced to what novelty needs: hashes of its unique canonical SMILES."""

    n_total: int
    n_valid: int
    hashes: np.ndarray  # (n_unique,) uint64, sorted

    @property
    def n_unique(self) -> int:
        return int(len(self.hashes))

    def contains(self, smiles: Sequence[str]) -> np.ndarray:
        """Whether each canonical SMILES is in the set (64-bit hashes; collisions are negligible)."""
        if not len(smiles) or not len(self.hashes):
            return np.zeros(len(smiles), dtype=bool)
        h = np.array([smiles_hash(s) for s in smiles], dtype=np.uint64)
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return self.hashes[pos] == h


# ----------------------------------------------------------------------------- sources

@dataclass
class SmilesSource:
    """A set of SMILES given as a file or a list; read lazily, hashed cheaply for the cache."""

    source: str | os.PathLike | Sequence[str]
    smiles_column: str | Sequence[str] | None = None
    label: str = "molecules"
    _smiles: list[str] | None = None
    _digest: str | None = None

    @property
    def is_file(self) -> bool:
        return isinstance(self.source, (str, os.PathLike))

    def smiles(self) -> list[str]:
        if self._smiles is None:
            if self.is_file:
                self._smiles = read_molecules(self.source, self.smiles_column)["input"].astype(str).tolist()
            else:
                if isinstance(self.source, (bytes, bytearray)):
                    raise InvalidInputError(f"{self.label}: expected SMILES strings, got bytes")
                self._smiles = ["" if s is None else str(s) for s in self.source]
        return self._smiles

    def _column_key(self) -> str:
        col = self.smiles_column
        return col or "" if col is None or isinstance(col, str) else "|".join(col)

    def digest(self) -> str:
        """SHA-256 of the file bytes (plus the column asked for) or of the SMILES list."""
        if self._digest is None:
            if self.is_file:
                path = Path(self.source)
                if not path.is_file():
                    raise InvalidInputError(f"{path}: no such file ({self.label})")
                self._digest = hashlib.sha256(
                    f"{file_hash(path)}|{self._column_key()}".encode()).hexdigest()
            else:
                h = hashlib.sha256()
                for s in self.smiles():
                    h.update(s.encode("utf-8"))
                    h.update(b"\n")
                self._digest = h.hexdigest()
        return self._digest

    def describe(self) -> str:
        return str(self.source) if self.is_file else f"{len(self.smiles())} SMILES given in memory"


# ----------------------------------------------------------------------------- computing

def _weighted_counts(lists: list, weights: np.ndarray, nested: bool) -> dict[str, int]:
    counts: Counter = Counter()
    for items, w in zip(lists, weights.tolist()):
        if nested:
            for item in items:
                counts[item] += w
        elif items is not None:
            counts[items] += w
    return dict(counts)


def describe_set(smiles: Sequence[str], workers: Workers, *, label: str = "set", with_filters: bool = False,
                 chemnet=None, keep_canonical: bool = False) -> SetStatistics:
    """Describe a set of SMILES (see :class:`SetStatistics`).

    Args:
        smiles: input strings; empty or unparsable ones count as invalid.
        workers: the process pool.
        label: name used in progress bars.
        with_filters: also run the MOSES filters (generated sets).
        chemnet: a :class:`~molvae.metrics.chemnet.ChemNet` to compute FCD statistics, or ``None``.
        keep_canonical: keep the unique canonical SMILES and the input order of valid rows.
    """
    from .chemnet import activation_statistics

    timings: dict[str, float] = {}
    t = time.perf_counter()
    canon = [c for part in workers.map(canonical_chunk, smiles, desc=f"{label}: canonicalize") for c in part]
    index: dict[str, int] = {}
    order = np.empty(len(canon), dtype=np.int64)
    n_valid = 0
    for c in canon:
        if c is None:
            continue
        order[n_valid] = index.setdefault(c, len(index))
        n_valid += 1
    order = order[:n_valid]
    unique = list(index)
    weights = np.bincount(order, minlength=len(unique)).astype(np.int64)
    timings["canonicalize"] = time.perf_counter() - t

    t = time.perf_counter()
    parts = workers.map(describe_chunk, unique, extra=with_filters, desc=f"{label}: descriptors")
    n_bytes = FP_BITS // 8
    fps = np.concatenate([p["fps"] for p in parts]) if parts else np.zeros((0, n_bytes), np.uint8)
    popcount = np.concatenate([p["popcount"] for p in parts]) if parts else np.zeros(0, np.int32)
    props = (np.concatenate([p["properties"] for p in parts]) if parts
             else np.zeros((0, len(PROPERTY_NAMES))))
    filters = None
    if with_filters:
        filters = np.concatenate([p["filters"] for p in parts]) if parts else np.zeros(0, bool)
    fragments = _weighted_counts([f for p in parts for f in p["fragments"]], weights, nested=True)
    scaffolds = _weighted_counts([s for p in parts for s in p["scaffolds"]], weights, nested=False)
    timings["descriptors"] = time.perf_counter() - t

    fcd_stats = None
    if chemnet is not None:
        t = time.perf_counter()
        with tqdm(total=len(unique), desc=f"{label}: ChemNet", unit="mol", disable=not workers.progress,
                  leave=False, file=sys.stderr) as bar:
            act = chemnet.activations(unique, progress=bar.update, workers=workers)
        fcd_stats = activation_statistics(act, weights)
        timings["chemnet"] = time.perf_counter() - t

    return SetStatistics(
        n_total=len(smiles), n_valid=n_valid, weights=weights, fps=fps, popcount=popcount,
        fragments=fragments, scaffolds=scaffolds, properties=props, filters=filters, fcd=fcd_stats,
        canonical=unique if keep_canonical else None, valid_order=order if keep_canonical else None,
        timings=timings)


def describe_train(smiles: Sequence[str], workers: Workers, label: str = "train") -> TrainStatistics:
    """Hash the unique canonical SMILES of a training set."""
    parts = workers.map(canonical_hash_chunk, smiles, desc=f"{label}: canonicalize")
    if parts:
        hashes = np.concatenate([h for h, _ in parts])
        valid = np.concatenate([v for _, v in parts])
    else:
        hashes, valid = np.zeros(0, np.uint64), np.zeros(0, bool)
    return TrainStatistics(n_total=len(smiles), n_valid=int(valid.sum()), hashes=np.unique(hashes[valid]))


# ----------------------------------------------------------------------------- cache

# One cache folder for preprocessing and metrics: the resolver is cache's, under the name metrics exports.
cache_dir = default_cache_dir


def _versions_in_key() -> str:
    """The libraries whose versions change reference statistics, as they appear in a cache key."""
    found = versions("rdkit", "fcd")
    return f"rdkit={found['rdkit']}|fcd={found['fcd'] or 'none'}"


def _key(kind: str, source: SmilesSource) -> str:
    settings = (f"v{STATS_VERSION}|{kind}|morgan{FP_RADIUS}-{FP_BITS}|minrings{MIN_SCAFFOLD_RINGS}|"
                f"{_versions_in_key()}|{source.digest()}")
    return f"{kind}-{hashlib.sha256(settings.encode()).hexdigest()[:32]}"


def _join(strings: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _split(array: np.ndarray) -> list[str]:
    text = array.tobytes().decode("utf-8")
    return text.split("\n") if text else []


def _save(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # a read-only or unusable cache folder costs speed, never the evaluation
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the metrics cache %s (%s); continuing without it", path, exc)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # corrupt or truncated: recompute
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def _set_to_arrays(stats: SetStatistics) -> dict[str, np.ndarray]:
    frag_keys = list(stats.fragments)
    scaf_keys = list(stats.scaffolds)
    return {
        "n_total": np.array(stats.n_total), "n_valid": np.array(stats.n_valid), "weights": stats.weights,
        "fps": stats.fps, "popcount": stats.popcount, "properties": stats.properties,
        "fragment_keys": _join(frag_keys), "fragment_counts": np.array([stats.fragments[k] for k in frag_keys],
                                                                      dtype=np.int64),
        "scaffold_keys": _join(scaf_keys), "scaffold_counts": np.array([stats.scaffolds[k] for k in scaf_keys],
                                                                      dtype=np.int64),
    }


def _set_from_arrays(a: dict[str, np.ndarray]) -> SetStatistics:
    return SetStatistics(
        n_total=int(a["n_total"]), n_valid=int(a["n_valid"]), weights=a["weights"], fps=a["fps"],
        popcount=a["popcount"], properties=a["properties"],
        fragments=dict(zip(_split(a["fragment_keys"]), a["fragment_counts"].tolist())),
        scaffolds=dict(zip(_split(a["scaffold_keys"]), a["scaffold_counts"].tolist())))


def reference_statistics(source: SmilesSource, workers: Workers, *, chemnet=None, use_cache: bool = True,
                         directory: str | os.PathLike | None = None) -> tuple[SetStatistics, bool]:
    """Statistics of a reference (test) set, from the cache when possible.

    Args:
        chemnet: compute (or load) FCD statistics when given.

    Returns:
        ``(statistics, from_cache)``; ``from_cache`` is true when nothing had to be computed.
    """
    key = _key("set", source) if use_cache else None
    folder = cache_dir(directory) / "metrics"
    stats = fcd_stats = None
    if key:
        cached = _load(folder / f"{key}.npz")
        if cached is not None:
            stats = _set_from_arrays(cached)
        if chemnet is not None:
            cached_fcd = _load(folder / f"{key}-fcd.npz")
            if cached_fcd is not None:
                fcd_stats = (cached_fcd["mu"], cached_fcd["sigma"]) if cached_fcd["mu"].size else None
    need_fcd = chemnet is not None and (key is None or not (folder / f"{key}-fcd.npz").is_file())
    if stats is not None and not need_fcd:
        stats.fcd = fcd_stats
        return stats, True
    smiles = source.smiles()
    if stats is None:
        stats = describe_set(smiles, workers, label=source.label, chemnet=chemnet if need_fcd else None,
                             keep_canonical=need_fcd)
        if key:
            _save(folder / f"{key}.npz", **_set_to_arrays(stats))
    else:  # descriptors cached, FCD statistics not yet (fcd was missing earlier)
        from .chemnet import activation_statistics

        canon = [c for part in workers.map(canonical_chunk, smiles, desc=f"{source.label}: canonicalize")
                 for c in part]
        index: dict[str, int] = {}
        for c in canon:
            if c is not None:
                index.setdefault(c, len(index))
        act = chemnet.activations(list(index), workers=workers)
        stats.fcd = activation_statistics(act, stats.weights)
    if need_fcd:
        fcd_stats = stats.fcd
        if key:
            mu, sigma = fcd_stats if fcd_stats is not None else (np.zeros(0), np.zeros((0, 0)))
            _save(folder / f"{key}-fcd.npz", mu=mu, sigma=sigma)
    stats.fcd = fcd_stats
    stats.canonical = None
    stats.valid_order = None
    return stats, False


def train_statistics(source: SmilesSource, workers: Workers, *, use_cache: bool = True,
                     directory: str | os.PathLike | None = None) -> tuple[TrainStatistics, bool]:
    """Hashed unique canonical SMILES of a training set, from the cache when possible."""
    key = _key("train", source) if use_cache else None
    path = cache_dir(directory) / "metrics" / f"{key}.npz" if key else None
    if path is not None:
        cached = _load(path)
        if cached is not None:
            return TrainStatistics(int(cached["n_total"]), int(cached["n_valid"]), cached["hashes"]), True
    stats = describe_train(source.smiles(), workers, label=source.label)
    if path is not None:
        _save(path, n_total=np.array(stats.n_total), n_valid=np.array(stats.n_valid), hashes=stats.hashes)
    return stats, False
