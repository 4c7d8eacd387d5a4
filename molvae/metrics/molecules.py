"""Per-molecule work of the metric suite, in worker processes.

Everything here runs on plain lists of SMILES and returns plain arrays, so that
chunks travel cheaply between processes. The definitions follow MOSES
(molsets 0.3.1, ``moses/metrics/utils.py``):

- canonical SMILES: ``Chem.MolToSmiles(mol)`` (isomeric) of ``Chem.MolFromSmiles(s)``;
  an empty string or one RDKit rejects is invalid;
- fingerprint: Morgan radius 2, 1024 bits (RDKit's Morgan generator, identical bits to
  the ``GetMorganFingerprintAsBitVect`` MOSES calls);
- fragments: the SMILES pieces of ``FragmentOnBRICSBonds`` (dummy atoms included);
- scaffold: canonical SMILES of the Bemis–Murcko scaffold, dropped when empty or with
  fewer than 2 rings (MOSES ``compute_scaffolds(min_rings=2)``);
- properties: Crippen logP, SA score (RDKit Contrib ``sascorer``), QED, molecular weight.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rdkit import Chem
from rdkit.Chem import QED
from rdkit.Chem.Scaffolds import MurckoScaffold

from .. import chem
from ..workers import crashed, process_pool, resolve_jobs
from .filters import load_filters, passes_filters

__all__ = [
    "FP_RADIUS", "FP_BITS", "MIN_SCAFFOLD_RINGS", "PROPERTY_NAMES",
    "canonical_chunk", "canonical_hash_chunk", "describe_chunk", "smiles_hash",
    "fragments_of", "scaffold_of", "Workers", "resolve_n_jobs",
]

FP_RADIUS = 2
FP_BITS = 1024
MIN_SCAFFOLD_RINGS = 2
#: MOSES names of the property distances, in the column order of ``describe_chunk``'s ``properties``.
PROPERTY_NAMES = ("logP", "SA", "QED", "weight")


def _parse(smiles: str) -> Chem.Mol | None:
    if not isinstance(smiles, str) or not smiles or chem.size_problem(smiles):
        return None  # too large counts as invalid: RDKit can crash on it (see chem.MAX_SMILES_LENGTH)
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception:  # a few malformed inputs raise instead of returning None
        return None
    return None if mol is not None and chem.atoms_problem(mol) else mol


def _canonical(smiles: str) -> str | None:
    mol = _parse(smiles.strip() if isinstance(smiles, str) else smiles)
    if mol is None:
        return None
    try:
        out = Chem.MolToSmiles(mol)
    except Exception:
        return None
    return out or None


def canonical_chunk(smiles: Sequence[str]) -> list[str | None]:
    """Canonical SMILES of each input (``None`` where invalid)."""
    with chem.quiet_rdkit():
        return [_canonical(s) for s in smiles]


def smiles_hash(smiles: str) -> int:
    """64-bit hash of a SMILES string (stable across processes and runs)."""
    return int.from_bytes(hashlib.blake2b(smiles.encode("utf-8"), digest_size=8).digest(), "little")


def canonical_hash_chunk(smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes uint64, valid bool)`` of the canonical SMILES of each input.

    Used for large reference sets (the training set) where only membership matters.
    """
    canon = canonical_chunk(smiles)
    valid = np.array([c is not None for c in canon], dtype=bool)
    hashes = np.array([smiles_hash(c) if c is not None else 0 for c in canon], dtype=np.uint64)
    return hashes, valid


def fragments_of(mol: Chem.Mol) -> list[str]:
    """SMILES of the BRICS fragments of ``mol`` (MOSES ``fragmenter``)."""
    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def scaffold_of(mol: Chem.Mol) -> str | None:
    """Bemis–Murcko scaffold SMILES, or ``None`` when empty or with fewer than 2 rings."""
    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    except Exception:
        return None
    n_rings = scaffold.GetRingInfo().NumRings()
    smiles = Chem.MolToSmiles(scaffold)
    if not smiles or n_rings < MIN_SCAFFOLD_RINGS:
        return None
    return smiles


def _properties(mol: Chem.Mol) -> tuple[float, float, float, float]:
    """logP, SA, QED, weight; NaN for any that RDKit fails on."""
    try:
        props = QED.properties(mol)  # computes MolLogP and MolWt once for QED and for us
        qed = QED.qed(mol, qedProperties=props)
        logp, weight = props.ALOGP, props.MW
    except Exception:
        qed = logp = weight = math.nan
    try:
        sa = chem.synthetic_accessibility(mol)
    except Exception:
        sa = math.nan
    return float(logp), float(sa), float(qed), float(weight)


def describe_chunk(args: tuple[Sequence[str], bool]) -> dict[str, Any]:
    """Fingerprints, fragments, scaffolds, properties (and filter results) of canonical SMILES.

    Args:
        args: ``(smiles, with_filters)``; every SMILES must be valid (canonical output of
            :func:`canonical_chunk`).

    Returns:
        ``fps (n, FP_BITS/8) uint8`` packed bits, ``popcount (n,) int32``, ``fragments``
        (list of lists), ``scaffolds`` (list, ``None`` for none), ``properties (n, 4)``
        float64 in :data:`PROPERTY_NAMES` order, ``filters (n,) bool`` or ``None``.
    """
    smiles, with_filters = args
    generator = chem._morgan_generator(FP_RADIUS, FP_BITS)
    filters = load_filters() if with_filters else None
    n = len(smiles)
    fps = np.zeros((n, FP_BITS // 8), dtype=np.uint8)
    props = np.full((n, len(PROPERTY_NAMES)), np.nan)
    passes = np.zeros(n, dtype=bool) if with_filters else None
    fragments: list[list[str]] = []
    scaffolds: list[str | None] = []
    with chem.quiet_rdkit():
        for i, s in enumerate(smiles):
            mol = _parse(s)
            if mol is None:  # cannot happen for canonical input; keep the row empty
                fragments.append([])
                scaffolds.append(None)
                continue
            fps[i] = np.packbits(generator.GetFingerprintAsNumPy(mol))
            try:
                fragments.append(fragments_of(mol))
            except Exception:
                fragments.append([])
            scaffolds.append(scaffold_of(mol))
            props[i] = _properties(mol)
            if passes is not None:
                passes[i] = passes_filters(mol, filters)
    popcount = np.unpackbits(fps, axis=1).sum(axis=1, dtype=np.int32) if n else np.zeros(0, dtype=np.int32)
    return {"fps": fps, "popcount": popcount, "fragments": fragments, "scaffolds": scaffolds,
            "properties": props, "filters": passes}


# ----------------------------------------------------------------------------- workers

#: ``None`` or ``<= 0`` -> every core this process may use; more than that is capped at it.
resolve_n_jobs = resolve_jobs  # the one core count (affinity-aware), under the name metrics uses


class Workers:
    """A process pool (or none, for one job) that maps a function over chunks of a list.

    Use as a context manager; :meth:`map` keeps the input order and shows a progress bar
    on stderr when ``progress`` is set.
    """

    def __init__(self, n_jobs: int | None = 1, progress: bool = False):
        self.n_jobs = resolve_n_jobs(n_jobs)
        self.progress = progress
        self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def start(self) -> Workers:
        """Start the worker processes now (they fork from the current state of this process)."""
        if self.n_jobs > 1:
            self._get_pool()
        return self

    def _get_pool(self):
        if self._pool is None:
            # Fork shares the compiled filter patterns and imported RDKit with the workers.
            load_filters()
            self._pool = process_pool(self.n_jobs)
        return self._pool

    def map(self, func: Callable[[Any], Any], items: Sequence[Any], *, desc: str, chunk_size: int | None = None,
            extra: Any = None, min_parallel: int = 2000, count: Callable[[Any], int] | None = None,
            progress: Callable[[int], Any] | None = None) -> list[Any]:
        """``func`` over chunks of ``items``; returns one result per chunk, in order.

        ``func`` receives ``chunk`` (or ``(chunk, extra)`` when ``extra`` is not ``None``).
        ``count(item)`` is how much progress an item is worth (1 by default); ``progress``,
        when given, is called with it instead of drawing a bar here.
        """
        from tqdm.auto import tqdm

        items = list(items)
        parallel = self.n_jobs > 1 and len(items) >= min_parallel
        if chunk_size is None:
            chunk_size = max(64, min(2000, math.ceil(len(items) / (self.n_jobs * 8)))) if parallel else 2000
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        args = chunks if extra is None else [(c, extra) for c in chunks]
        weight = (lambda chunk: sum(count(x) for x in chunk)) if count else len
        total = sum(weight(c) for c in chunks)
        out: list[Any] = []
        with tqdm(total=total, desc=desc, unit="mol", disable=not self.progress or progress is not None,
                  leave=False, file=sys.stderr) as bar:
            from concurrent.futures.process import BrokenProcessPool

            results = self._get_pool().map(func, args) if parallel else map(func, args)
            try:
                for chunk, res in zip(chunks, results):
                    out.append(res)
                    (progress or bar.update)(weight(chunk))
            except BrokenProcessPool as exc:
                pool, self._pool = self._pool, None
                raise crashed(f"computing {desc}", pool) from exc
        return out
