"""The MOSES medicinal-chemistry filters (the "Filters" metric).

A molecule passes, as in MOSES ``mol_passes_filters`` (molsets 0.3.1), when it has

- no ring (SSSR) of 8 or more atoms,
- no atom with a formal charge,
- only the atoms C, N, S, O, F, Cl, Br, H,
- no match, on the molecule with explicit hydrogens, of any of the 22 MCF and 480
  PAINS SMARTS shipped in ``molvae/resources/filters`` (see the README there),
- a non-isomeric SMILES that RDKit reads back.

Speed without changing the answer: matching 502 SMARTS against a molecule with
explicit hydrogens is the most expensive per-molecule step of the MOSES suite. Each
pattern's query atoms that demand one element (``[#7;!H0]``, ``c``, ``[H]``, ...) give
a lower bound on how many atoms of that element (aromatic, aliphatic or either) a
molecule needs to match it; a molecule with fewer such atoms cannot match, so the
pattern is skipped. The bound only ever skips patterns that cannot match, so the
result is the same as trying every pattern.
"""

from __future__ import annotations

import csv
import functools
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import numpy as np
from rdkit import Chem

from ..chem import largest_ring

__all__ = ["FilterSet", "load_filters", "passes_filters", "filter_failure", "ALLOWED_ATOMS"]

ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})

_ANY, _AROMATIC, _ALIPHATIC = 0, 1, 2


@dataclass(frozen=True)
class FilterSet:
    """Compiled SMARTS patterns with their element requirements.

    Attributes:
        names: pattern names (``MCF1`` ..., ``<regId=...>`` for PAINS).
        patterns: RDKit query molecules, same order.
        keys: columns of ``requirements`` (atom, bond and bonded-pair kinds; see :func:`_requirements`).
        requirements: ``(n_patterns, n_keys)`` minimum atom and bond counts a molecule needs to match each pattern.
    """

    names: tuple[str, ...]
    patterns: tuple[Chem.Mol, ...]
    keys: tuple[tuple[int, int, int, int], ...]
    requirements: np.ndarray

    def __len__(self) -> int:
        return len(self.patterns)


def _read_patterns() -> list[tuple[str, str]]:
    base = resources.files("molvae") / "resources" / "filters"
    out: list[tuple[str, str]] = []
    with (base / "mcf.csv").open("r", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append((row["names"].strip(), row["smarts"].strip()))
    with (base / "wehi_pains.csv").open("r", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row:
                out.append((row[1].strip(), row[0].strip()))
    return out


_BOND_CODES = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3, Chem.BondType.AROMATIC: 12}
_ALLOWED_NUMBERS = frozenset({1, 6, 7, 8, 9, 16, 17, 35})


def _positive_primitives(description: str) -> list[tuple[str, int]]:
    """``(name, value)`` of the primitives of a query that must hold: those reachable from
    the root through AND nodes only and written ``... = val``.

    ``!= val`` primitives, OR nodes, recursive SMARTS and anything unknown are skipped,
    which only makes the derived bound weaker, never wrong.
    """
    lines = description.rstrip("\n").split("\n")
    nodes = [(len(line) - len(line.lstrip(" ")), line.strip()) for line in lines if line.strip()]
    found: list[tuple[str, int]] = []

    def walk(i: int) -> None:
        indent, text = nodes[i]
        if text in ("AtomAnd", "BondAnd"):
            j = i + 1
            while j < len(nodes) and nodes[j][0] > indent:
                if nodes[j][0] == indent + 2:
                    walk(j)
                j += 1
            return
        parts = text.split()
        if len(parts) == 4 and parts[2:] == ["=", "val"] and parts[1].lstrip("-").isdigit():
            found.append((parts[0], int(parts[1])))

    if nodes:
        walk(0)
    return found


def _requirements(pattern: Chem.Mol) -> Counter | None:
    """Minimum counts of atom, bond and bonded-pair kinds a molecule needs to match ``pattern``.

    Keys are 4-tuples: ``(0, atomic number, kind, 0)`` for atoms (kind 0 = any element form,
    1 = aromatic, 2 = aliphatic), ``(1, order, 0, 0)`` for bonds of one order (1, 2, 3, or
    12 = aromatic) and ``(2, lower atomic number, higher atomic number, order or 0)`` for
    bonds between two given elements. A substructure match maps query atoms and bonds to
    distinct molecule atoms and bonds, so each count is a true lower bound. ``None`` means
    the pattern cannot match any molecule that reaches the SMARTS stage (it demands a
    charged atom or an element outside :data:`ALLOWED_ATOMS`, and such molecules have
    already failed).
    """
    need: Counter = Counter()
    element_of: dict[int, int] = {}
    for atom in pattern.GetAtoms():
        keys: set[tuple[int, int, int, int]] = set()
        for name, value in _positive_primitives(atom.DescribeQuery()):
            if name == "AtomAtomicNum":
                keys.add((0, value, _ANY, 0))
            elif name == "AtomType":
                keys.add((0, value % 1000, _AROMATIC if value >= 1000 else _ALIPHATIC, 0))
            elif name == "AtomFormalCharge" and value != 0:
                return None
        elements = {k[1] for k in keys}
        if len(elements) != 1:
            continue  # no single element (or a contradiction): no bound from this atom
        element = next(iter(elements))
        if element not in _ALLOWED_NUMBERS:
            return None
        element_of[atom.GetIdx()] = element
        need[(0, element, _ANY, 0)] += 1
        for key in keys:
            if key[2] != _ANY:
                need[key] += 1
    for bond in pattern.GetBonds():
        orders = {value for name, value in _positive_primitives(bond.DescribeQuery()) if name == "BondOrder"}
        order = next(iter(orders)) if len(orders) == 1 else 0
        if order:
            need[(1, order, 0, 0)] += 1
        a, b = element_of.get(bond.GetBeginAtomIdx()), element_of.get(bond.GetEndAtomIdx())
        if a is not None and b is not None:
            lo, hi = min(a, b), max(a, b)
            need[(2, lo, hi, 0)] += 1
            if order:
                need[(2, lo, hi, order)] += 1
    return need


@functools.lru_cache(maxsize=1)
def load_filters() -> FilterSet:
    """The 502 MOSES filter patterns, compiled once per process."""
    names, patterns, needs = [], [], []
    for name, smarts in _read_patterns():
        query = Chem.MolFromSmarts(smarts)
        if query is None:  # pragma: no cover - the shipped data all parse
            raise ValueError(f"filter {name}: RDKit cannot parse SMARTS {smarts!r}")
        need = _requirements(query)
        if need is None:
            continue
        names.append(name)
        patterns.append(query)
        needs.append(need)
    keys = tuple(sorted({k for need in needs for k in need}))
    matrix = np.array([[need.get(k, 0) for k in keys] for need in needs], dtype=np.int32).reshape(len(needs), len(keys))
    return FilterSet(tuple(names), tuple(patterns), keys, matrix)


def _atom_counts(mol: Chem.Mol, keys: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    """Counts of each key of :func:`_requirements` in ``mol`` with all hydrogens made explicit."""
    counts: Counter = Counter()
    n_h = 0
    for atom in mol.GetAtoms():
        element = atom.GetAtomicNum()
        counts[(0, element, _ANY, 0)] += 1
        counts[(0, element, _AROMATIC if atom.GetIsAromatic() else _ALIPHATIC, 0)] += 1
        hs = atom.GetTotalNumHs()
        if hs:
            n_h += hs
            counts[(2, 1, element, 0)] += hs  # every added hydrogen hangs on a single bond
            counts[(2, 1, element, 1)] += hs
    counts[(0, 1, _ANY, 0)] += n_h
    counts[(0, 1, _ALIPHATIC, 0)] += n_h
    counts[(1, 1, 0, 0)] += n_h
    for bond in mol.GetBonds():
        order = _BOND_CODES.get(bond.GetBondType(), 0)
        a, b = bond.GetBeginAtom().GetAtomicNum(), bond.GetEndAtom().GetAtomicNum()
        lo, hi = (a, b) if a <= b else (b, a)
        counts[(1, order, 0, 0)] += 1
        counts[(2, lo, hi, 0)] += 1
        counts[(2, lo, hi, order)] += 1
    return np.array([counts.get(k, 0) for k in keys], dtype=np.int32)


def filter_failure(mol: Chem.Mol | None, filters: FilterSet | None = None) -> str | None:
    """Why ``mol`` fails the MOSES filters, or ``None`` when it passes."""
    if mol is None:
        return "invalid molecule"
    if largest_ring(mol) >= 8:
        return "ring of 8 or more atoms"
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        return "charged atom"
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetSymbol() not in ALLOWED_ATOMS})
    if bad:
        return f"atom outside C, N, S, O, F, Cl, Br, H: {', '.join(bad)}"
    filters = filters or load_filters()
    counts = _atom_counts(mol, filters.keys)
    candidates = np.flatnonzero((filters.requirements <= counts).all(axis=1))
    if len(candidates):
        h_mol = Chem.AddHs(mol)
        for i in candidates:
            if h_mol.HasSubstructMatch(filters.patterns[i]):
                return f"matches {filters.names[i]}"
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    if not smiles or Chem.MolFromSmiles(smiles) is None:
        return "SMILES does not round-trip"
    return None


def passes_filters(mol: Chem.Mol | None, filters: FilterSet | None = None) -> bool:
    """``True`` when ``mol`` passes the MOSES medicinal-chemistry filters."""
    return filter_failure(mol, filters) is None
