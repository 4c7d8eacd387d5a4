"""The one door to RDKit and selfies.

Per-molecule helpers return ``None`` on failure instead of raising (datamol's
``to_mol`` convention); batch code turns the ``None`` into a rejected row with a
reason. RDKit's logging is silenced only inside :func:`quiet_rdkit`, which
restores it on exit; nothing here changes global state at import.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import selfies as sf
from rdkit import Chem, DataStructs
from rdkit.Chem import Descriptors, QED, rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.rdBase import BlockLogs

__all__ = [
    "quiet_rdkit",
    "MAX_SMILES_LENGTH",
    "MAX_ATOMS",
    "size_problem",
    "atoms_problem",
    "to_mol",
    "canonicalize",
    "largest_fragment",
    "to_selfies",
    "to_smiles",
    "split_selfies",
    "ProcessedMolecule",
    "process_smiles",
    "selfies_to_canonical",
    "DecodedMolecule",
    "decode_selfies",
    "ignored_atom_tokens",
    "stereo_free",
    "neutralized",
    "STEREO_MARKS",
    "qed",
    "logp",
    "sa_score",
    "penalized_logp",
    "molecular_weight",
    "heavy_atoms",
    "largest_ring_size",
    "ring_sizes",
    "largest_ring",
    "synthetic_accessibility",
    "PROPERTY_FUNCTIONS",
    "compute_properties",
    "morgan_fingerprint",
    "morgan_fingerprints",
    "fingerprint_matrix",
    "tanimoto",
]


@contextlib.contextmanager
def quiet_rdkit() -> Iterator[None]:
    """Silence RDKit's warnings and errors inside the block, then restore them."""
    blocker = BlockLogs()
    try:
        yield
    finally:
        del blocker


# RDKit's SMILES writer recurses once per atom of a chain and overflows the C stack (a segfault,
# no exception) at about 20,000 atoms; a worker process dies with it. Inputs are refused well
# below that, before RDKit sees them: no drug-like or natural-product SMILES comes near either limit.
MAX_SMILES_LENGTH = 5000
MAX_ATOMS = 2000


def size_problem(smiles: str) -> str | None:
    """Why ``smiles`` is too long to hand to RDKit safely, or ``None``."""
    if len(smiles) > MAX_SMILES_LENGTH:
        return (f"SMILES of {len(smiles):,} characters, longer than the {MAX_SMILES_LENGTH:,} molvae reads "
                "(RDKit can crash on molecules that large)")
    return None


def atoms_problem(mol: Chem.Mol) -> str | None:
    """Why ``mol`` has too many atoms to write or score safely, or ``None``."""
    n = mol.GetNumAtoms()
    if n > MAX_ATOMS:
        return f"molecule of {n:,} atoms, more than the {MAX_ATOMS:,} molvae reads (RDKit can crash on molecules that large)"
    return None


def to_mol(smiles: str | None) -> Chem.Mol | None:
    """Parse a SMILES string; ``None`` when it is empty, too large (:func:`size_problem`,
    :func:`atoms_problem`) or RDKit rejects it."""
    if not isinstance(smiles, str):
        return None
    smiles = smiles.strip()
    if not smiles or size_problem(smiles):
        return None
    with quiet_rdkit():
        try:
            mol = Chem.MolFromSmiles(smiles)
        except Exception:  # RDKit raises on a few malformed inputs instead of returning None
            return None
    if mol is not None and atoms_problem(mol):
        return None
    return mol


def parse_error(smiles: str) -> str:
    """Why RDKit rejects ``smiles`` (or molvae refuses it for its size), in a few words (only called on failure)."""
    smiles = smiles.strip()
    too_big = size_problem(smiles)
    if too_big:
        return too_big
    with quiet_rdkit():
        try:
            mol = Chem.MolFromSmiles(smiles, sanitize=False)
        except Exception:
            mol = None
        if mol is None:
            return "syntax error: unmatched ring bond or branch, unknown element or bad bracket atom"
        if atoms_problem(mol):
            return atoms_problem(mol)
        try:
            Chem.SanitizeMol(mol)
        except Chem.KekulizeException:
            return "aromatic ring cannot be kekulized; write the ring in Kekulé form or add the missing [nH]"
        except Chem.AtomValenceException as exc:
            detail = " ".join(str(exc).split())
            return f"impossible valence: {detail}"
        except Exception as exc:
            return " ".join(str(exc).split())[:120] or type(exc).__name__
    return "unknown RDKit error"


_fragment_chooser = None


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    """Keep the largest organic fragment (drops counter-ions, salts and solvents)."""
    global _fragment_chooser
    if len(Chem.GetMolFrags(mol)) <= 1:
        return mol
    if _fragment_chooser is None:
        _fragment_chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    with quiet_rdkit():
        return _fragment_chooser.choose(mol)


def canonicalize(smiles: str | None, *, keep_largest_fragment: bool = False,
                 isomeric: bool = True) -> str | None:
    """Canonical SMILES of ``smiles``, or ``None`` when it does not parse."""
    mol = to_mol(smiles)
    if mol is None:
        return None
    if keep_largest_fragment:
        mol = largest_fragment(mol)
    with quiet_rdkit():
        try:
            out = Chem.MolToSmiles(mol, isomericSmiles=isomeric)
        except Exception:
            return None
    return out or None


def to_selfies(smiles: str | None) -> str | None:
    """SELFIES of a SMILES string, or ``None`` when selfies cannot encode it."""
    if not smiles:
        return None
    try:
        return sf.encoder(smiles, strict=True)
    except Exception:  # selfies.EncoderError and the occasional parser error
        return None


def to_smiles(selfies: str | None) -> str | None:
    """SMILES decoded from a SELFIES string, or ``None`` on failure or empty output."""
    if selfies is None:
        return None
    try:
        out = sf.decoder(selfies)
    except Exception:
        return None
    return out or None


def split_selfies(selfies: str) -> list[str]:
    """Tokens of a SELFIES string (``[C][=O]`` -> ``['[C]', '[=O]']``)."""
    return list(sf.split_selfies(selfies))


@dataclass(frozen=True)
class ProcessedMolecule:
    """One input molecule after cleaning: canonical SMILES, SELFIES and tokens."""

    smiles: str
    selfies: str
    tokens: tuple[str, ...]


def process_smiles(smiles: str | None, *, keep_largest_fragment: bool = True
                   ) -> ProcessedMolecule | str:
    """Clean one SMILES for training.

    Returns:
        A :class:`ProcessedMolecule`, or a string giving the reason it was rejected.
    """
    if not isinstance(smiles, str) or not smiles.strip():
        return "empty SMILES"
    too_big = size_problem(smiles.strip())
    if too_big:
        return too_big
    with quiet_rdkit():
        try:
            mol = Chem.MolFromSmiles(smiles.strip())
        except Exception:  # RDKit raises on a few malformed inputs instead of returning None
            mol = None
    if mol is None:
        return f"RDKit could not parse the SMILES ({parse_error(smiles)})"
    if mol.GetNumAtoms() == 0:
        return "molecule has no atoms"
    if atoms_problem(mol):
        return atoms_problem(mol)
    if keep_largest_fragment:
        mol = largest_fragment(mol)
    elif len(Chem.GetMolFrags(mol)) > 1:
        return "several fragments (use --largest-fragment to keep the largest)"
    with quiet_rdkit():
        try:
            canonical = Chem.MolToSmiles(mol)
        except Exception:
            canonical = ""
    if not canonical:
        return "RDKit could not write canonical SMILES"
    selfies = to_selfies(canonical)
    if selfies is None:
        return "SELFIES could not encode the molecule (valence outside SELFIES constraints)"
    tokens = tuple(split_selfies(selfies))
    if not tokens:
        return "SELFIES encoding is empty"
    return ProcessedMolecule(canonical, selfies, tokens)


#: Characters that mark stereochemistry in a SELFIES token or SMILES (tetrahedral ``@``, double-bond ``/`` ``\\``).
STEREO_MARKS = ("@", "/", "\\")


def stereo_free(smiles: str | None) -> str | None:
    """Canonical SMILES of ``smiles`` with every stereocentre and stereo bond left unspecified
    (RDKit's ``RemoveStereochemistry``), or ``None`` when it does not parse."""
    mol = to_mol(smiles)
    if mol is None:
        return None
    Chem.RemoveStereochemistry(mol)
    with quiet_rdkit():
        try:
            return Chem.MolToSmiles(mol) or None
        except Exception:
            return None


_uncharger = None


def neutralized(smiles: str | None) -> str | None:
    """Canonical SMILES of ``smiles`` with charges neutralized where a neutral form exists (RDKit's
    standardizer, ``rdMolStandardize.Uncharger``: ``C[NH3+]`` -> ``CN``, ``CC(=O)[O-]`` -> ``CC(=O)O``;
    a nitro group or a quaternary ammonium keeps its charges), or ``None`` when it does not parse."""
    global _uncharger
    mol = to_mol(smiles)
    if mol is None:
        return None
    if _uncharger is None:
        _uncharger = rdMolStandardize.Uncharger()
    with quiet_rdkit():
        try:
            return Chem.MolToSmiles(_uncharger.uncharge(mol)) or None
        except Exception:
            return None


@functools.lru_cache(maxsize=1 << 16)
def selfies_to_canonical(selfies: str | None) -> str | None:
    """Decode SELFIES and return RDKit-canonical SMILES (``None`` if it fails). Memoized (the last
    65,536 strings): a latent search decodes the same molecules many times over."""
    smiles = to_smiles(selfies)
    return canonicalize(smiles) if smiles else None


class DecodedMolecule(NamedTuple):
    """What a decoded SELFIES string is: canonical SMILES ('' when it gives no molecule), whether an atom
    is left with unpaired electrons, and the atom count of its largest ring (0 when acyclic)."""

    smiles: str
    radical: bool
    largest_ring: int


@functools.lru_cache(maxsize=1 << 16)
def decode_selfies(selfies: str | None) -> DecodedMolecule:
    """Decode SELFIES to a :class:`DecodedMolecule` with one RDKit parse. Memoized like
    :func:`selfies_to_canonical`, whose SMILES it gives."""
    smiles = to_smiles(selfies)
    mol = to_mol(smiles) if smiles else None
    if mol is None:
        return DecodedMolecule("", False, 0)
    with quiet_rdkit():
        try:
            smiles = Chem.MolToSmiles(mol)  # as canonicalize() writes it
        except Exception:
            return DecodedMolecule("", False, 0)
    if not smiles:
        return DecodedMolecule("", False, 0)
    radical = any(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    return DecodedMolecule(smiles, radical, largest_ring(mol))


@functools.lru_cache(maxsize=1 << 16)
def ignored_atom_tokens(selfies: str) -> int:
    """How many atom tokens of ``selfies`` place no atom in the molecule it decodes to.

    SELFIES decodes every string, and does so by ignoring what would break a valence rule: an atom
    written after a saturated one, a branch on a full atom and everything in it. A decoder that
    wrote such tokens meant a molecule it did not get. Branch and ring tokens and the index tokens
    after them are not counted (selfies' attribution does not follow them).
    """
    try:
        _, attribution = sf.decoder(selfies, attribute=True)
    except Exception:
        return 0
    placed = {a.index for m in attribution for a in (m.attribution or [])}
    ignored = skip = 0
    for i, token in enumerate(split_selfies(selfies)):
        if skip:
            skip -= 1
            continue
        if "Branch" in token or "Ring" in token:
            skip = int(token[-2]) if token[-2].isdigit() else 1
            continue
        if token != "[nop]" and i not in placed:
            ignored += 1
    return ignored


# ----------------------------------------------------------------------------- properties

def _mol(x: str | Chem.Mol | None) -> Chem.Mol | None:
    return x if isinstance(x, Chem.Mol) else to_mol(x)


def _guard(fn):
    """Make a property of a molecule return NaN for an unparsable input."""

    @functools.wraps(fn)
    def wrapper(x: str | Chem.Mol | None) -> float:
        mol = _mol(x)
        if mol is None:
            return math.nan
        with quiet_rdkit():
            try:
                return float(fn(mol))
            except Exception:
                return math.nan

    return wrapper


@functools.lru_cache(maxsize=1)
def _sascorer():
    # RDKit ships Ertl & Schuffenhauer's SA score in Contrib, not as a module.
    import os
    import sys

    from rdkit import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # type: ignore

    return sascorer


def synthetic_accessibility(mol: Chem.Mol) -> float:
    """SA score of an RDKit molecule (raises where RDKit fails; :func:`sa_score` is the NaN-safe one)."""
    return _sascorer().calculateScore(mol)


def ring_sizes(mol: Chem.Mol) -> list[int]:
    """Atom count of each ring of the smallest set of smallest rings."""
    return [len(r) for r in mol.GetRingInfo().AtomRings()]


def largest_ring(mol: Chem.Mol) -> int:
    """Size of the largest ring of an RDKit molecule (0 for an acyclic one)."""
    return max(ring_sizes(mol), default=0)


@_guard
def qed(mol: Chem.Mol) -> float:
    """Quantitative estimate of drug-likeness (Bickerton et al. 2012), 0..1."""
    return QED.qed(mol)


@_guard
def logp(mol: Chem.Mol) -> float:
    """Crippen logP (Wildman & Crippen 1999)."""
    return Descriptors.MolLogP(mol)


@_guard
def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009), 1 (easy) .. 10 (hard)."""
    return synthetic_accessibility(mol)


@_guard
def molecular_weight(mol: Chem.Mol) -> float:
    """Average molecular weight in g/mol."""
    return Descriptors.MolWt(mol)


@_guard
def heavy_atoms(mol: Chem.Mol) -> float:
    """Number of heavy (non-hydrogen) atoms."""
    return mol.GetNumHeavyAtoms()


@_guard
def largest_ring_size(mol: Chem.Mol) -> float:
    """Size of the largest ring (0 for an acyclic molecule)."""
    return largest_ring(mol)


@_guard
def penalized_logp(mol: Chem.Mol) -> float:
    """Unnormalized penalized logP: logP − SA − max(largest ring − 6, 0).

    This is the form used by GCPN, JT-VAE's constrained benchmark tables as
    reported since You et al. 2018, MolDQN and most later work (no z-scoring by
    ZINC250k statistics).
    """
    return Descriptors.MolLogP(mol) - synthetic_accessibility(mol) - max(largest_ring(mol) - 6, 0)


PROPERTY_FUNCTIONS = {
    "qed": qed,
    "logp": logp,
    "sa": sa_score,
    "mw": molecular_weight,
    "heavy_atoms": heavy_atoms,
    "plogp": penalized_logp,
}


def _properties_chunk(args: tuple[list, list[str]]) -> np.ndarray:
    """Worker: ``(len(smiles), len(names))`` property values of one chunk (NaN where it does not parse)."""
    smiles, names = args
    out = np.full((len(smiles), len(names)), math.nan)
    for i, s in enumerate(smiles):
        m = to_mol(s)
        if m is not None:
            for j, n in enumerate(names):
                out[i, j] = PROPERTY_FUNCTIONS[n](m)
    return out


def compute_properties(smiles: Sequence[str | None], names: Iterable[str] = ("qed", "logp", "sa", "mw", "heavy_atoms"),
                       n_jobs: int = 1, chunk_size: int = 2000) -> dict[str, np.ndarray]:
    """Compute named properties for each SMILES (NaN where it does not parse), in input order.

    Args:
        smiles: SMILES strings (``None`` allowed).
        names: keys of :data:`PROPERTY_FUNCTIONS`.
        n_jobs: processes (0 or ``None`` = all cores); QED and SA cost about a millisecond per
            molecule, so a million molecules need the cores. Molecules are parsed chunk by chunk,
            so memory does not grow with the number of molecules.
        chunk_size: molecules per task.
    """
    names = list(names)
    unknown = [n for n in names if n not in PROPERTY_FUNCTIONS]
    if unknown:
        from .errors import InvalidInputError

        raise InvalidInputError(f"unknown property {unknown[0]!r}; expected one of {sorted(PROPERTY_FUNCTIONS)}")
    smiles = list(smiles)
    pieces = [(smiles[i:i + chunk_size], names) for i in range(0, len(smiles), chunk_size)]
    from .workers import ordered_map

    parts = list(ordered_map(_properties_chunk, pieces, n_jobs or 0, what="computing molecular properties"))
    values = np.concatenate(parts) if parts else np.zeros((0, len(names)))
    return {n: values[:, j].astype(float) for j, n in enumerate(names)}


# ----------------------------------------------------------------------------- fingerprints

@functools.lru_cache(maxsize=8)
def _morgan_generator(radius: int, n_bits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


def morgan_fingerprint(x: str | Chem.Mol | None, radius: int = 2, n_bits: int = 1024):
    """Morgan (ECFP-like) bit vector, or ``None`` when the molecule does not parse."""
    mol = _mol(x)
    if mol is None:
        return None
    return _morgan_generator(radius, n_bits).GetFingerprint(mol)


def morgan_fingerprints(xs: Sequence[str | Chem.Mol | None], radius: int = 2, n_bits: int = 1024) -> list:
    """Morgan bit vectors for many molecules (``None`` entries for unparsable ones)."""
    return [morgan_fingerprint(x, radius, n_bits) for x in xs]


def fingerprint_matrix(xs: Sequence[str | Chem.Mol | None], radius: int = 2, n_bits: int = 1024) -> np.ndarray:
    """Dense ``(n, n_bits)`` uint8 matrix of Morgan bits; unparsable rows are all zero."""
    gen = _morgan_generator(radius, n_bits)
    out = np.zeros((len(xs), n_bits), dtype=np.uint8)
    for i, x in enumerate(xs):
        mol = _mol(x)
        if mol is not None:
            out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def tanimoto(a: str | Chem.Mol, b: str | Chem.Mol, radius: int = 2, n_bits: int = 2048) -> float:
    """Tanimoto similarity of Morgan fingerprints; NaN when either does not parse."""
    fa, fb = morgan_fingerprint(a, radius, n_bits), morgan_fingerprint(b, radius, n_bits)
    if fa is None or fb is None:
        return math.nan
    return DataStructs.TanimotoSimilarity(fa, fb)
