"""Scoring functions for latent-space optimization: built-ins, weighted sums and plugins.

An objective maps a list of SMILES to one float each (higher is better; NaN marks a
molecule that cannot be scored). It is written as a string:

* built-ins: ``qed``, ``logp`` (Crippen), ``sa`` (synthetic accessibility, 1 easy .. 10
  hard; maximizing it favours *hard* molecules, so use ``-sa`` or ``qed-0.2*sa``),
  ``plogp`` and ``plogp_zinc`` (see below), ``similarity:<SMILES>`` (Tanimoto of Morgan
  radius-2, 2048-bit fingerprints to a lead; ``similarity(<SMILES>)`` is the same, with
  the SMILES delimited, for SMILES that contain ``+`` or ``-``);
* weighted sums of those: ``qed+0.5*similarity:CCO``, ``plogp-0.1*sa``;
* plugins: ``my_module:my_function`` or ``path/to/file.py:my_function``, a callable
  taking a list of SMILES and returning one number per molecule (NaN or None = invalid);
* a ``.json`` or ``.toml`` file with ``terms = [{name = "qed", weight = 1.0},
  {name = "similarity", smiles = "CCO", weight = 0.5}]``.

Penalized logP. ``plogp`` is the *unnormalized* form used by GCPN, MolDQN and most work
since 2018: ``logP − SA − max(largest ring − 6, 0)`` (Crippen logP, RDKit Contrib SA
score, ring sizes from RDKit's SSSR). ``plogp_zinc`` is the form of JT-VAE's BO
experiment (Kusner et al. 2017): each of the three terms z-scored with ZINC250k
statistics before summing. The two are on different scales; papers often compare them
anyway.

Guards (:class:`Guards`) reject degenerate molecules before the objective sees them:
at most 38 heavy atoms by default (the GCPN/JT-VAE convention: without it a long
carbon chain reaches pLogP 16+), optionally a maximum SA score and ring-size limits.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import Descriptors

from . import chem
from .config import read_json_or_toml
from .errors import InvalidInputError

__all__ = ["Objective", "Term", "Guards", "parse_objective", "load_plugin", "BUILTIN_OBJECTIVES",
           "plogp_zinc"]

# ZINC250k statistics of JT-VAE's normalized penalized logP (Kusner et al. 2017 / Jin et al. 2018).
_ZINC_LOGP = (2.4570953396190123, 1.434324401111988)
_ZINC_NEG_SA = (-3.0525811293166134, 0.8335207024513095)
_ZINC_NEG_CYCLE = (-0.0485696876403053, 0.2860212110245455)


def plogp_zinc(mol: Chem.Mol) -> float:
    """JT-VAE's normalized penalized logP: the sum of z-scored logP, −SA and −ring penalty."""
    logp = Descriptors.MolLogP(mol)
    neg_sa = -chem.synthetic_accessibility(mol)
    neg_cycle = -max(chem.largest_ring(mol) - 6, 0)
    return ((logp - _ZINC_LOGP[0]) / _ZINC_LOGP[1] + (neg_sa - _ZINC_NEG_SA[0]) / _ZINC_NEG_SA[1]
            + (neg_cycle - _ZINC_NEG_CYCLE[0]) / _ZINC_NEG_CYCLE[1])


#: Per-molecule built-in objectives: name -> function of an RDKit molecule. The molecular properties
#: are chem's own (:data:`molvae.chem.PROPERTY_FUNCTIONS`: NaN where RDKit fails), so an objective and
#: a property column of the same name are one computation.
BUILTIN_OBJECTIVES: dict[str, Callable[[Chem.Mol], float]] = {
    "qed": chem.PROPERTY_FUNCTIONS["qed"],
    "logp": chem.PROPERTY_FUNCTIONS["logp"],
    "plogp": chem.PROPERTY_FUNCTIONS["plogp"],
    "plogp_zinc": plogp_zinc,
    "sa": chem.PROPERTY_FUNCTIONS["sa"],
}


@dataclass(frozen=True)
class Guards:
    """Limits a molecule must meet to be scored at all (``None`` = no limit).

    Attributes:
        max_heavy_atoms: at most this many heavy atoms (38 in GCPN/JT-VAE).
        max_sa: SA score at most this (1 easy .. 10 hard).
        max_ring_size: no ring larger than this.
        min_ring_size: no ring smaller than this (e.g. 5 forbids cyclopropanes and -butanes).
        allow_radicals: score molecules with unpaired electrons (off by default: a decoder can
            write ``[CH]`` in a ring, and QED or logP do not see that it is not a molecule one can make).
    """

    max_heavy_atoms: int | None = 38
    max_sa: float | None = None
    max_ring_size: int | None = None
    min_ring_size: int | None = None
    allow_radicals: bool = False

    def check(self, mol: Chem.Mol) -> str | None:
        """``None`` when ``mol`` passes, else the reason it does not."""
        if not self.allow_radicals:
            radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
            if radicals:
                return f"{radicals} unpaired electron{'s' if radicals > 1 else ''} (radical)"
        if self.max_heavy_atoms is not None and mol.GetNumHeavyAtoms() > self.max_heavy_atoms:
            return f"{mol.GetNumHeavyAtoms()} heavy atoms > {self.max_heavy_atoms}"
        rings = chem.ring_sizes(mol)
        if self.max_ring_size is not None and rings and max(rings) > self.max_ring_size:
            return f"{max(rings)}-membered ring > {self.max_ring_size}"
        if self.min_ring_size is not None and rings and min(rings) < self.min_ring_size:
            return f"{min(rings)}-membered ring < {self.min_ring_size}"
        if self.max_sa is not None:
            sa = chem.synthetic_accessibility(mol)
            if sa > self.max_sa:
                return f"SA {sa:.2f} > {self.max_sa}"
        return None

    def describe(self) -> str:
        parts = [f"heavy atoms <= {self.max_heavy_atoms}" if self.max_heavy_atoms is not None else "",
                 f"SA <= {self.max_sa}" if self.max_sa is not None else "",
                 f"rings <= {self.max_ring_size}" if self.max_ring_size is not None else "",
                 f"rings >= {self.min_ring_size}" if self.min_ring_size is not None else "",
                 "" if self.allow_radicals else "no radicals"]
        return ", ".join(p for p in parts if p) or "none"


@dataclass
class Term:
    """One weighted part of an objective.

    Exactly one of ``mol_fn`` (called per RDKit molecule) and ``batch_fn`` (called with a
    list of SMILES, a plugin) is set.
    """

    name: str
    weight: float = 1.0
    mol_fn: Callable[[Chem.Mol], float] | None = None
    batch_fn: Callable[[list[str]], Sequence[float]] | None = None

    def label(self) -> str:
        w = "" if self.weight == 1.0 else ("-" if self.weight == -1.0 else f"{self.weight:g}*")
        return f"{w}{self.name}"


@dataclass
class Objective:
    """A weighted sum of terms, with guards; ``objective(smiles)`` returns scores (NaN = invalid).

    Attributes:
        terms: the weighted parts.
        guards: limits checked before scoring.
        spec: the text it was parsed from.
    """

    terms: list[Term]
    guards: Guards = field(default_factory=Guards)
    spec: str = ""

    @property
    def name(self) -> str:
        return self.spec or "+".join(t.label() for t in self.terms).replace("+-", "-")

    def __call__(self, smiles: Sequence[str]) -> np.ndarray:
        return self.evaluate(smiles)[0]

    def reject_reason(self, smiles: str) -> str | None:
        """Why ``smiles`` would not be scored (invalid or failing a guard), else ``None``. Cheap."""
        with chem.quiet_rdkit():
            mol = chem.to_mol(smiles)
            if mol is None or mol.GetNumAtoms() == 0:
                return "invalid SMILES"
            reason = self.guards.check(mol)
        return f"guard: {reason}" if reason else None

    def evaluate(self, smiles: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Scores and, for each NaN score, the reason (``None`` where scored).

        Raises:
            InvalidInputError: a plugin returned the wrong number or type of values.
        """
        smiles = list(smiles)
        scores = np.full(len(smiles), np.nan)
        reasons: list[str | None] = [None] * len(smiles)
        mols: list[Chem.Mol | None] = [None] * len(smiles)
        with chem.quiet_rdkit():
            for i, s in enumerate(smiles):
                mol = chem.to_mol(s)
                if mol is None or mol.GetNumAtoms() == 0:
                    reasons[i] = "invalid SMILES"
                    continue
                reason = self.guards.check(mol)
                if reason:
                    reasons[i] = f"guard: {reason}"
                    continue
                mols[i] = mol
        ok = [i for i, m in enumerate(mols) if m is not None]
        if not ok:
            return scores, reasons
        total = np.zeros(len(ok))
        for term in self.terms:
            if term.mol_fn is not None:
                vals = np.array([_safe(term.mol_fn, mols[i]) for i in ok], dtype=float)
            else:
                vals = _call_plugin(term, [smiles[i] for i in ok])
            total += term.weight * vals
        for j, i in enumerate(ok):
            scores[i] = total[j]
            if not math.isfinite(total[j]):
                scores[i] = np.nan
                # Say which value it was: an objective returning inf has a bug of its own kind
                reasons[i] = f"objective returned {_nonfinite_name(total[j])}"
        return scores, reasons

    def head_weights(self, property_names: Sequence[str]) -> np.ndarray | None:
        """Weights over a property head's outputs when every term is one of them, else ``None``."""
        names = list(property_names)
        if not names or not self.terms:
            return None
        w = np.zeros(len(names))
        for t in self.terms:
            if t.mol_fn is None or t.name not in names:
                return None
            w[names.index(t.name)] += t.weight
        return w


def _safe(fn: Callable[[Chem.Mol], float], mol: Chem.Mol) -> float:
    with chem.quiet_rdkit():
        try:
            return float(fn(mol))
        except Exception:
            return math.nan


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+inf" if value > 0 else "-inf"


def _call_plugin(term: Term, smiles: list[str]) -> np.ndarray:
    try:
        out = term.batch_fn(list(smiles))  # type: ignore[misc]
    except Exception as exc:
        raise InvalidInputError(f"objective plugin {term.name} raised {type(exc).__name__}: {exc}") from exc
    try:
        vals = [math.nan if v is None else float(v) for v in out]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"objective plugin {term.name} must return a sequence of numbers (NaN or None for invalid), "
            f"got {type(out).__name__}") from exc
    if len(vals) != len(smiles):
        raise InvalidInputError(
            f"objective plugin {term.name} returned {len(vals)} values for {len(smiles)} molecules; "
            "expected one per molecule")
    return np.asarray(vals, dtype=float)


# ----------------------------------------------------------------------------- plugins

def load_plugin(spec: str) -> Callable[[list[str]], Sequence[float]]:
    """Import ``module:function`` or ``path/to/file.py:function`` and return the callable.

    Raises:
        InvalidInputError: the module cannot be imported, lacks the function, or it is not callable.
    """
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise InvalidInputError(f"objective plugin {spec!r}: expected module:function or file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InvalidInputError(f"objective plugin {spec!r}: no such file {path}")
        mod_id = f"molvae_objective_plugin_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_id, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            raise InvalidInputError(
                f"objective plugin {spec!r}: importing {path} failed ({type(exc).__name__}: {exc})") from exc
    else:
        if "" not in sys.path and "." not in sys.path:
            # Like `python -m`, let plugins live in the working folder.
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInputError(
                f"objective plugin {spec!r}: cannot import module {module_name!r} ({exc}); "
                "is it installed or in the current folder / on PYTHONPATH?") from exc
        except Exception as exc:
            raise InvalidInputError(
                f"objective plugin {spec!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, func_name, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InvalidInputError(
            f"objective plugin {spec!r}: module {module_name!r} has no function {func_name!r}"
            + (f"; it defines {public[:10]}" if public else ""))
    if not callable(fn):
        raise InvalidInputError(f"objective plugin {spec!r}: {func_name!r} is a {type(fn).__name__}, not a function")
    return fn


# ----------------------------------------------------------------------------- parsing

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PLUGIN = r"[A-Za-z_./\\][\w./\\-]*:[A-Za-z_]\w*"
_TERM_START = re.compile(
    rf"\s*(?:{_NUMBER}\s*\*\s*)?(?:(?i:similarity)[:(]|(?i:{'|'.join(sorted(BUILTIN_OBJECTIVES, key=len, reverse=True))})"
    rf"(?![\w:])|{_PLUGIN}\s*(?:$|[+-]))")

_PATH_PLUGIN = re.compile(r"[^+*\s()]*?\.py:[A-Za-z_]\w*(?=\s*(?:$|[+-]))")
_BUILTIN_THEN_OPERATOR = re.compile(rf"(?i:{'|'.join(BUILTIN_OBJECTIVES)})\s*[+-]")


def _similarity_term(lead: str, weight: float) -> Term:
    lead = lead.strip()
    mol = chem.to_mol(lead)
    if mol is None or mol.GetNumAtoms() == 0:
        raise InvalidInputError(f"similarity: the lead {lead!r} is not a valid SMILES")
    ref = chem.morgan_fingerprint(mol, 2, 2048)

    def sim(m: Chem.Mol) -> float:
        return DataStructs.TanimotoSimilarity(ref, chem.morgan_fingerprint(m, 2, 2048))

    return Term(name=f"similarity:{chem.canonicalize(lead) or lead}", weight=weight, mol_fn=sim)


def _atom_term(name: str, weight: float) -> Term:
    """A built-in objective (its name in any case), or a plugin ``module:function`` (its case kept)."""
    name = name.strip()
    if name.lower() in BUILTIN_OBJECTIVES:
        return Term(name=name.lower(), weight=weight, mol_fn=BUILTIN_OBJECTIVES[name.lower()])
    if ":" in name:
        prefix = name.split(":", 1)[0]
        if _close_to_similarity(prefix):
            raise InvalidInputError(f"unknown objective {name!r}; did you mean similarity:{name.split(':', 1)[1]}?")
        return Term(name=name, weight=weight, batch_fn=load_plugin(name))
    import difflib

    near = difflib.get_close_matches(name.lower(), [*BUILTIN_OBJECTIVES, "similarity"], n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise InvalidInputError(
        f"unknown objective {name!r}; {hint}expected one of {sorted(BUILTIN_OBJECTIVES)}, similarity:<SMILES>, "
        "a weighted sum such as qed+0.5*similarity:CCO, or a plugin module:function")


def _close_to_similarity(prefix: str) -> bool:
    """Whether ``prefix`` of ``prefix:...`` is a misspelt ``similarity`` rather than a plugin's module."""
    import difflib

    if prefix.lower() == "similarity" or prefix.endswith(".py") or "/" in prefix or "." in prefix:
        return prefix.lower() == "similarity"
    try:
        if importlib.util.find_spec(prefix) is not None:
            return False
    except (ImportError, ValueError):
        pass
    return bool(difflib.get_close_matches(prefix.lower(), ["similarity"], n=1, cutoff=0.75))


def _split_terms(spec: str) -> list[tuple[float, str]]:
    """``'qed-0.5*sa'`` -> ``[(1.0, 'qed'), (-0.5, 'sa')]``; SMILES after ``similarity:`` may hold + and -."""
    out: list[tuple[float, str]] = []
    pos, n = 0, len(spec)
    while pos < n:
        sign = 1.0
        while pos < n and spec[pos] in "+- \t":
            if spec[pos] == "-":
                sign = -sign
            pos += 1
        if pos >= n:
            raise InvalidInputError(f"objective {spec!r} ends with an operator; expected a term after it")
        m = re.match(rf"\s*({_NUMBER})\s*\*\s*", spec[pos:])
        weight = sign
        if m:
            weight *= float(m.group(1))
            pos += m.end()
        if spec.startswith("similarity(", pos):
            depth, end = 0, pos + len("similarity")
            for end in range(pos + len("similarity"), n):
                depth += {"(": 1, ")": -1}.get(spec[end], 0)
                if depth == 0:
                    break
            if depth != 0:
                raise InvalidInputError(f"objective {spec!r}: unbalanced parentheses in similarity(...)")
            out.append((weight, "similarity:" + spec[pos + len("similarity("):end]))
            pos = end + 1
            continue
        # A plugin given by file path may hold '-' in its folder names: take it whole.
        m = _PATH_PLUGIN.match(spec, pos)
        if m and not _BUILTIN_THEN_OPERATOR.match(spec, pos):
            out.append((weight, m.group(0)))
            pos = m.end()
            continue
        # A term runs to the next + or - (outside [...]) that starts another term.
        depth, end = 0, pos
        while end < n:
            c = spec[end]
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif c in "+-" and depth == 0 and end > pos and _TERM_START.match(spec, _after_signs(spec, end)):
                break
            end += 1
        atom = spec[pos:end].strip()
        if not atom:
            raise InvalidInputError(f"objective {spec!r}: empty term at position {pos}")
        out.append((weight, atom))
        pos = end
    return out


def _after_signs(spec: str, pos: int) -> int:
    """The position after the run of signs and blanks at ``pos`` (``qed+-0.5*sa``: the ``0`` after ``+-``)."""
    while pos < len(spec) and spec[pos] in "+- \t":
        pos += 1
    return pos


def _finite_weight(weight: float, term: str, where: str) -> float:
    if not math.isfinite(weight):
        raise InvalidInputError(f"{where}: the weight of {term!r} is {weight!r}; expected a finite number")
    return weight


def _from_file(path: Path, guards: Guards) -> Objective:
    data = read_json_or_toml(path, "objective file")
    terms_data = data.get("terms") if isinstance(data, dict) else None
    if not isinstance(terms_data, list) or not terms_data:
        raise InvalidInputError(f"objective file {path}: expected a non-empty list 'terms' of {{name, weight}} tables")
    terms = []
    for i, t in enumerate(terms_data):
        if not isinstance(t, dict) or "name" not in t:
            raise InvalidInputError(f"objective file {path}: term {i + 1} needs a 'name'")
        unknown = sorted(set(t) - {"name", "weight", "smiles"})
        if unknown:
            raise InvalidInputError(f"objective file {path}: term {i + 1} has unknown key(s) {unknown}")
        try:
            weight = float(t.get("weight", 1.0))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"objective file {path}: term {i + 1} has weight {t.get('weight')!r}; "
                                    "expected a number") from exc
        _finite_weight(weight, str(t["name"]), f"objective file {path}")
        if str(t["name"]).lower() == "similarity":
            if "smiles" not in t:
                raise InvalidInputError(f"objective file {path}: similarity term {i + 1} needs 'smiles'")
            terms.append(_similarity_term(str(t["smiles"]), weight))
        else:
            terms.append(_atom_term(str(t["name"]), weight))
    return Objective(terms=terms, guards=guards, spec=path.name)


def parse_objective(spec: str | Objective, guards: Guards | None = None) -> Objective:
    """Build an :class:`Objective` from its text (see the module docstring for the syntax).

    Raises:
        InvalidInputError: an unknown name, a bad lead SMILES, a plugin that cannot be loaded,
            or malformed text; the message says what is accepted.
    """
    guards = guards if guards is not None else Guards()
    if isinstance(spec, Objective):
        return Objective(terms=spec.terms, guards=guards, spec=spec.spec)
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError("objective is empty; expected e.g. qed, plogp or qed+0.5*similarity:CCO")
    spec = spec.strip()
    if spec.lower().endswith((".json", ".toml")):
        path = Path(spec)
        if not path.is_file():
            raise InvalidInputError(f"objective file {path} does not exist")
        return _from_file(path, guards)
    terms = []
    for weight, atom in _split_terms(spec):
        _finite_weight(weight, atom, f"objective {spec!r}")
        if atom.lower().startswith("similarity:"):
            terms.append(_similarity_term(atom[len("similarity:"):], weight))
        else:
            terms.append(_atom_term(atom, weight))
    return Objective(terms=terms, guards=guards, spec=spec)
