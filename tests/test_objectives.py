"""Objectives: built-ins against RDKit, weighted sums, guards, plugins and their error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, Crippen, rdFingerprintGenerator

from molvae import chem
from molvae.errors import InvalidInputError
from molvae.objectives import Guards, parse_objective

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1c(=O)c2c(ncn2C)n(C)c1=O"


def _tanimoto(a: str, b: str) -> float:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fa = gen.GetFingerprint(Chem.MolFromSmiles(a))
    fb = gen.GetFingerprint(Chem.MolFromSmiles(b))
    return DataStructs.TanimotoSimilarity(fa, fb)


def test_builtins_match_rdkit():
    mol = Chem.MolFromSmiles(ASPIRIN)
    assert parse_objective("qed")([ASPIRIN])[0] == pytest.approx(QED.qed(mol))
    assert parse_objective("qed")([ASPIRIN])[0] == pytest.approx(0.5501, abs=1e-4)  # published QED of aspirin
    assert parse_objective("logp")([ASPIRIN])[0] == pytest.approx(Crippen.MolLogP(mol))
    sa = chem.synthetic_accessibility(mol)
    assert parse_objective("sa")([ASPIRIN])[0] == pytest.approx(sa)
    # aspirin's largest ring is 6: no ring penalty
    assert parse_objective("plogp")([ASPIRIN])[0] == pytest.approx(Crippen.MolLogP(mol) - sa)
    assert parse_objective("plogp")([ASPIRIN])[0] == pytest.approx(chem.penalized_logp(ASPIRIN))


def test_plogp_ring_penalty_and_zinc_normalization():
    ring8 = "C1CCCCCCC1"
    mol = Chem.MolFromSmiles(ring8)
    sa = chem.synthetic_accessibility(mol)
    logp = Crippen.MolLogP(mol)
    assert parse_objective("plogp")([ring8])[0] == pytest.approx(logp - sa - 2)
    expected = ((logp - 2.4570953396190123) / 1.434324401111988 + (-sa + 3.0525811293166134) / 0.8335207024513095
                + (-2 + 0.0485696876403053) / 0.2860212110245455)
    assert parse_objective("plogp_zinc")([ring8])[0] == pytest.approx(expected)


def test_similarity_and_weighted_sum():
    sim = parse_objective(f"similarity:{ASPIRIN}")
    assert sim([ASPIRIN])[0] == pytest.approx(1.0)
    assert sim([CAFFEINE])[0] == pytest.approx(_tanimoto(ASPIRIN, CAFFEINE))
    combo = parse_objective("qed+0.5*similarity:CCO")
    expected = QED.qed(Chem.MolFromSmiles(CAFFEINE)) + 0.5 * _tanimoto("CCO", CAFFEINE)
    assert combo([CAFFEINE])[0] == pytest.approx(expected)
    assert [t.weight for t in combo.terms] == [1.0, 0.5]
    neg = parse_objective("plogp - 0.1 * sa")
    assert [(t.name, t.weight) for t in neg.terms] == [("plogp", 1.0), ("sa", -0.1)]
    assert parse_objective("-sa")([ASPIRIN])[0] == pytest.approx(-chem.sa_score(ASPIRIN))


def test_similarity_smiles_with_plus_and_minus():
    # charges and explicit bonds in the lead SMILES are not operators
    obj = parse_objective("similarity:C[NH3+]+2*qed")
    assert [t.name for t in obj.terms] == ["similarity:C[NH3+]", "qed"]
    obj = parse_objective("similarity(CC-C=C)-logp")
    assert [(t.name, t.weight) for t in obj.terms] == [("similarity:C=CCC", 1.0), ("logp", -1.0)]


def test_guards_and_invalid():
    obj = parse_objective("plogp")  # default guard: at most 38 heavy atoms
    chain = "C" * 40
    scores, reasons = obj.evaluate([chain, "not a smiles", ASPIRIN])
    assert math.isnan(scores[0]) and "40 heavy atoms" in reasons[0]
    assert math.isnan(scores[1]) and reasons[1] == "invalid SMILES"
    assert np.isfinite(scores[2]) and reasons[2] is None
    assert np.isfinite(parse_objective("plogp", Guards(max_heavy_atoms=None))([chain])[0])
    assert "ring" in parse_objective("qed", Guards(min_ring_size=5)).evaluate(["C1CC1C"])[1][0]
    assert "ring" in parse_objective("qed", Guards(max_ring_size=7)).evaluate(["C1CCCCCCC1"])[1][0]
    assert "SA" in parse_objective("qed", Guards(max_sa=1.5)).evaluate([CAFFEINE])[1][0]


def test_radicals_are_not_scored_by_default():
    # A decoder's [CH] in a ring: one unpaired electron, which QED does not see.
    radical = "Cn1ncc(NCC2[CH]CCc3ccccc32)c(Cl)c1=O"
    closed = "Cn1ncc(NCC2CCCc3ccccc32)c(Cl)c1=O"
    scores, reasons = parse_objective("qed").evaluate([radical, closed])
    assert math.isnan(scores[0]) and reasons[0] == "guard: 1 unpaired electron (radical)"
    assert scores[1] == pytest.approx(chem.qed(chem.to_mol(closed)))
    allowed = parse_objective("qed", Guards(allow_radicals=True))([radical])[0]
    assert allowed == pytest.approx(chem.qed(chem.to_mol(radical)))
    assert "no radicals" in Guards().describe() and "no radicals" not in Guards(allow_radicals=True).describe()


def test_unknown_objective_message():
    with pytest.raises(InvalidInputError, match="unknown objective 'foo'.*qed"):
        parse_objective("foo")
    with pytest.raises(InvalidInputError, match="not a valid SMILES"):
        parse_objective("similarity:C1CC")
    with pytest.raises(InvalidInputError, match="empty"):
        parse_objective("  ")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "my_scores.py").write_text(
        "def n_atoms(smiles):\n"
        "    from rdkit import Chem\n"
        "    return [Chem.MolFromSmiles(s).GetNumAtoms() for s in smiles]\n"
        "def short(smiles):\n    return [1.0]\n"
        "def words(smiles):\n    return ['a' for _ in smiles]\n"
        "def boom(smiles):\n    raise RuntimeError('kaput')\n"
        "def nones(smiles):\n    return [None for _ in smiles]\n"
        "THRESHOLD = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_loading(plugin_dir):
    obj = parse_objective("my_scores:n_atoms")
    assert list(obj([ASPIRIN, "CCO"])) == [13.0, 3.0]
    by_path = parse_objective(f"{plugin_dir / 'my_scores.py'}:n_atoms")
    assert list(by_path(["CCO"])) == [3.0]
    mixed = parse_objective("qed+0.01*my_scores:n_atoms")
    assert mixed(["CCO"])[0] == pytest.approx(QED.qed(Chem.MolFromSmiles("CCO")) + 0.03)
    scores, reasons = parse_objective("my_scores:nones").evaluate(["CCO"])
    assert math.isnan(scores[0]) and reasons[0] == "objective returned NaN"


def test_plugin_errors(plugin_dir):
    with pytest.raises(InvalidInputError, match="cannot import module 'no_such_module_xyz'"):
        parse_objective("no_such_module_xyz:f")
    with pytest.raises(InvalidInputError, match="has no function 'missing'.*n_atoms"):
        parse_objective("my_scores:missing")
    with pytest.raises(InvalidInputError, match="'THRESHOLD' is a int, not a function"):
        parse_objective("my_scores:THRESHOLD")
    with pytest.raises(InvalidInputError, match="no such file"):
        parse_objective(f"{plugin_dir / 'nope.py'}:f")
    with pytest.raises(InvalidInputError, match="returned 1 values for 2 molecules"):
        parse_objective("my_scores:short")(["CCO", "CCN"])
    with pytest.raises(InvalidInputError, match="sequence of numbers"):
        parse_objective("my_scores:words")(["CCO"])
    with pytest.raises(InvalidInputError, match="raised RuntimeError: kaput"):
        parse_objective("my_scores:boom")(["CCO"])


def test_objective_file(tmp_path):
    f = tmp_path / "combo.json"
    f.write_text(json.dumps({"terms": [{"name": "qed"}, {"name": "similarity", "smiles": "CCO", "weight": 0.5}]}))
    obj = parse_objective(str(f))
    assert obj([CAFFEINE])[0] == pytest.approx(parse_objective("qed+0.5*similarity:CCO")([CAFFEINE])[0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"terms": [{"name": "similarity"}]}))
    with pytest.raises(InvalidInputError, match="needs 'smiles'"):
        parse_objective(str(bad))


def test_head_weights():
    assert list(parse_objective("plogp-0.5*qed").head_weights(["qed", "plogp"])) == [-0.5, 1.0]
    assert parse_objective("qed+similarity:CCO").head_weights(["qed"]) is None
    assert parse_objective("qed").head_weights([]) is None


def test_builtin_objectives_are_chems_property_functions():
    from molvae import chem
    from molvae.objectives import BUILTIN_OBJECTIVES

    for name in ("qed", "logp", "plogp", "sa"):
        assert BUILTIN_OBJECTIVES[name] is chem.PROPERTY_FUNCTIONS[name], name


def test_ring_size_and_sa_score_are_computed_in_chem_only():
    from pathlib import Path

    from rdkit import Chem

    from molvae import chem
    from molvae.metrics.filters import filter_failure

    package = Path(chem.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "chem.py" and path.parent == package:
            continue
        text = path.read_text()
        assert "_sascorer" not in text and "AtomRings()" not in text, path
    assert [chem.largest_ring(Chem.MolFromSmiles(s)) for s in ("CCO", "c1ccccc1", "C1CCCCCCC1")] == [0, 6, 8]
    assert chem.largest_ring_size("C1CCCCCCC1") == 8.0
    assert filter_failure(Chem.MolFromSmiles("C1CCCCCCC1")) == "ring of 8 or more atoms"
    aspirin = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    assert chem.sa_score(aspirin) == chem.synthetic_accessibility(aspirin)


@pytest.mark.parametrize("spec", ["qed+1e400*logp", "qed-1e999*sa"])
def test_a_weight_that_overflows_is_refused_before_any_call(spec):
    with pytest.raises(InvalidInputError, match="expected a finite number"):
        parse_objective(spec)


def test_an_objective_file_with_an_infinite_weight_is_refused(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"terms": [{"name": "qed", "weight": 1e400}]}')
    with pytest.raises(InvalidInputError, match="expected a finite number"):
        parse_objective(str(path))


def test_signed_weights_any_case_names_and_suggestions():
    assert [(t.name, t.weight) for t in parse_objective("qed+-0.5*sa").terms] == [("qed", 1.0), ("sa", -0.5)]
    assert [(t.name, t.weight) for t in parse_objective("QED-LogP").terms] == [("qed", 1.0), ("logp", -1.0)]
    assert parse_objective("Similarity:CCO").terms[0].name == "similarity:CCO"
    with pytest.raises(InvalidInputError, match="did you mean similarity:CCO"):
        parse_objective("simlarity:CCO")
    with pytest.raises(InvalidInputError, match="did you mean 'qed'"):
        parse_objective("qde")
