"""MOSES metrics: hand-computed values on tiny sets, edge cases, the fast paths against plain ones, cache, CLI."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from molvae.cli import main
from molvae.metrics import (cosine_similarity, evaluate, fraction_passes_filters, fraction_unique, fraction_valid,
                            fragment_similarity, internal_diversity, novelty, scaffold_similarity, snn,
                            wasserstein_1d)
from molvae.metrics import filters as filters_mod
from molvae.metrics import similarity
from molvae.metrics.molecules import Workers, canonical_chunk

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"
IBUPROFEN = "CC(C)Cc1ccc(C(C)C(=O)O)cc1"

# Molecules of ZINC250k that fail one MOSES SMARTS filter each (name of the first match).
FILTER_HITS = {
    "Cc1cc(Cl)ccc1OCC(=O)N/N=C/c1ccccn1": "MCF10",
    "CS(=O)(=O)[C@H]1O[C@H]1c1ccc(Cl)cc1Cl": "MCF5",
    "CCOc1cccc(NC(=O)CCc2ccc(N)cc2)c1": "anil_no_alk",
    "COCCNC(=O)/C(C#N)=C/c1cccc(O)c1": "MCF1",
    "COc1c(C)cnc(CNC(=O)Nc2ccc(N(C)C)cc2)c1C": "anil_di_alk_A",
}

FAST = dict(use_cache=False, compute_fcd=False, n_jobs=1, device="cpu")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never touch the user's cache from the tests."""
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_smiles(data_dir) -> list[str]:
    return pd.read_csv(data_dir / "small.csv")["smiles"].tolist()


def morgan_tanimoto(a: str, b: str) -> float:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fa, fb = (generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in (a, b))
    return DataStructs.TanimotoSimilarity(fa, fb)


# ----------------------------------------------------------------------------- hand-computed values

def test_validity_counts_empty_and_unparsable_strings():
    ev = evaluate(["CCO", "", "not a molecule", "C1CC"], **FAST)
    assert ev["valid"] == pytest.approx(0.25)
    g = ev.counts["generated"]
    assert (g["n_total"], g["n_valid"], g["n_invalid"], g["n_unique"]) == (4, 1, 3, 1)
    assert fraction_valid(["CCO", "c1ccccc1"]) == 1.0


def test_uniqueness_two_identical_molecules_is_one_half():
    assert fraction_unique(["CCO", "CCO"]) == 0.5
    assert fraction_unique(["CCO", "OCC"]) == 0.5  # same molecule written twice
    assert fraction_unique(["CCO", "CCN"]) == 1.0


def test_unique_at_k_uses_the_first_k_valid_molecules():
    ev = evaluate(["xx", "CCO", "OCC", "CCN", "CCC"], k=(2, 3, 10), **FAST)
    assert ev["unique@2"] == 0.5          # CCO, CCO (the invalid string does not count)
    assert ev["unique@3"] == pytest.approx(2 / 3)
    assert ev["unique@10"] == 0.75        # fewer than 10 valid: all 4 of them, as MOSES
    assert ev.counts["unique@10"] == {"n": 4, "n_unique": 3, "complete": False}
    assert any("unique@10" in note for note in ev.notes)


def test_novelty_canonicalizes_both_sides():
    # OCC is the training molecule CCO written differently: not novel.
    assert novelty(["OCC", "c1ccccc1", "C1=CC=CC=C1"], train=["CCO"]) == 0.5
    assert novelty(["CCO"], train=["OCC"]) == 0.0
    ev = evaluate(["OCC", "c1ccccc1", "xx"], train=["CCO", "CCO", "bad"], **FAST)
    assert ev["Novelty"] == 0.5
    assert ev.counts["novelty"] == {"n_unique": 2, "n_novel": 1}
    assert ev.counts["train"] == {"n_total": 3, "n_valid": 2, "n_unique": 1}


def test_internal_diversity_hand_computed():
    assert internal_diversity([ASPIRIN, ASPIRIN]) == pytest.approx(0.0, abs=1e-7)
    assert internal_diversity([ASPIRIN, ASPIRIN], p=2) == pytest.approx(0.0, abs=1e-7)
    t = morgan_tanimoto(ASPIRIN, CAFFEINE)
    # Over the 2x2 matrix with self-pairs: IntDiv1 = 1 - (2 + 2t)/4, IntDiv2 = 1 - sqrt((1 + t^2)/2).
    assert internal_diversity([ASPIRIN, CAFFEINE]) == pytest.approx((1 - t) / 2, abs=1e-6)
    assert internal_diversity([ASPIRIN, CAFFEINE], p=2) == pytest.approx(1 - math.sqrt((1 + t * t) / 2), abs=1e-6)
    # Duplicates count: [A, A, B] -> rows A: (2 + t)/3, B: (2t + 1)/3.
    mean = (2 * (2 + t) / 3 + (2 * t + 1) / 3) / 3
    assert internal_diversity([ASPIRIN, ASPIRIN, CAFFEINE]) == pytest.approx(1 - mean, abs=1e-6)


def test_snn_hand_computed(small_smiles):
    assert snn(small_smiles[:40], small_smiles[:40]) == pytest.approx(1.0)
    expected = max(morgan_tanimoto(ASPIRIN, CAFFEINE), morgan_tanimoto(ASPIRIN, IBUPROFEN))
    assert snn([ASPIRIN], [CAFFEINE, IBUPROFEN]) == pytest.approx(expected, abs=1e-6)
    assert snn([ASPIRIN, "bad"], [CAFFEINE, IBUPROFEN]) == pytest.approx(expected, abs=1e-6)  # valid ones only


def test_fragment_and_scaffold_similarity(small_smiles):
    assert fragment_similarity(small_smiles[:30], small_smiles[:30]) == pytest.approx(1.0)
    assert scaffold_similarity(small_smiles[:30], small_smiles[:30]) == pytest.approx(1.0)
    # Benzene's scaffold has one ring: MOSES drops scaffolds with fewer than 2 rings.
    assert scaffold_similarity(["c1ccccc1", "Cc1ccccc1"], ["c1ccccc1"]) is None
    scaffold = "c1ccc(Cc2ccccc2)cc1"
    assert scaffold_similarity(["Cc1ccc(Cc2ccccc2)cc1"], [scaffold]) == pytest.approx(1.0)
    # Hand-computed: count vectors of BRICS pieces, cosine of the two.
    def pieces(smiles):
        return Counter(Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(Chem.MolFromSmiles(smiles))).split("."))

    ref = pieces(ASPIRIN) + pieces(IBUPROFEN) + pieces(IBUPROFEN)
    gen = pieces(ASPIRIN) + pieces(ASPIRIN)
    keys = set(ref) | set(gen)
    a, b = np.array([ref[k] for k in keys]), np.array([gen[k] for k in keys])
    expected = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert 0 < expected < 1
    assert fragment_similarity([ASPIRIN, ASPIRIN], [ASPIRIN, IBUPROFEN, IBUPROFEN]) == pytest.approx(expected)


def test_cosine_and_wasserstein_helpers():
    assert cosine_similarity({"a": 1, "b": 1}, {"a": 2}) == pytest.approx(1 / math.sqrt(2))
    assert cosine_similarity({}, {"a": 1}) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=50), rng.normal(1, 2, size=70)
    uw, vw = rng.integers(1, 4, size=50), rng.integers(1, 4, size=70)
    assert wasserstein_1d(u, v) == pytest.approx(scipy_stats.wasserstein_distance(u, v))
    assert wasserstein_1d(u, v, uw, vw) == pytest.approx(scipy_stats.wasserstein_distance(u, v, uw, vw))
    assert wasserstein_1d(np.r_[u, np.nan], v) == pytest.approx(scipy_stats.wasserstein_distance(u, v))
    assert wasserstein_1d([], v) is None


# ----------------------------------------------------------------------------- filters

def _moses_passes(mol) -> bool:
    """MOSES ``mol_passes_filters`` written out plainly: every pattern tried."""
    fs = filters_mod.load_filters()
    ring_info = mol.GetRingInfo()
    if ring_info.NumRings() and any(len(r) >= 8 for r in ring_info.AtomRings()):
        return False
    if any(a.GetFormalCharge() for a in mol.GetAtoms()):
        return False
    if any(a.GetSymbol() not in filters_mod.ALLOWED_ATOMS for a in mol.GetAtoms()):
        return False
    h_mol = Chem.AddHs(mol)
    patterns = [Chem.MolFromSmarts(s) for _, s in filters_mod._read_patterns()]
    assert len(patterns) == 502 and len(fs) <= 502
    return not any(h_mol.HasSubstructMatch(p) for p in patterns)


def test_filters_match_the_plain_moses_procedure(small_smiles):
    molecules = list(FILTER_HITS) + small_smiles[:60] + ["C[N+](C)(C)C", "C1CCCCCCC1", "CP(C)C", "ICc1ccccc1"]
    for s in molecules:
        mol = Chem.MolFromSmiles(s)
        assert filters_mod.passes_filters(mol) == _moses_passes(mol), s
    for s, name in FILTER_HITS.items():
        assert name in filters_mod.filter_failure(Chem.MolFromSmiles(s))
    assert filters_mod.filter_failure(Chem.MolFromSmiles("C[N+](C)(C)C")) == "charged atom"
    assert filters_mod.filter_failure(Chem.MolFromSmiles("C1CCCCCCC1")) == "ring of 8 or more atoms"
    assert "P" in filters_mod.filter_failure(Chem.MolFromSmiles("CP(C)C"))
    assert fraction_passes_filters([ASPIRIN, "C[N+](C)(C)C", "bad"]) == 0.5


# ----------------------------------------------------------------------------- fast paths = plain paths

@pytest.mark.parametrize("bf16", [False, True])
def test_tanimoto_kernels_match_brute_force(monkeypatch, bf16):
    monkeypatch.setattr(similarity, "_cpu_has_native_bf16", lambda: bf16)
    rng = np.random.default_rng(1)
    q = (rng.random((70, 1024)) < rng.uniform(0.01, 0.08, (70, 1))).astype(np.uint8)
    r = (rng.random((300, 1024)) < rng.uniform(0.01, 0.08, (300, 1))).astype(np.uint8)
    q[0] = 0
    r[3] = 0
    r[10] = q[5]
    qc, rc = q.sum(1), r.sum(1)

    def brute(a, ac, b, bc):
        inter = a.astype(float) @ b.T.astype(float)
        union = ac[:, None] + bc[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    best = similarity.max_tanimoto(np.packbits(q, axis=1), qc, np.packbits(r, axis=1), rc,
                                   query_block=16, reference_block=32)
    np.testing.assert_allclose(best, brute(q, qc, r, rc).max(1), atol=1e-6)
    assert best[0] == 1.0 and best[5] == pytest.approx(1.0)  # two empty fingerprints: T = 1, as MOSES
    w = rng.integers(1, 4, len(q))
    means = similarity.power_mean_tanimoto(np.packbits(q, axis=1), qc, w, (1, 2), block=16)
    t = brute(q, qc, q, qc)
    np.testing.assert_allclose(means[1], (t * w).sum(1) / w.sum(), atol=1e-6)
    np.testing.assert_allclose(means[2], np.sqrt((t ** 2 * w).sum(1) / w.sum()), atol=1e-6)
    if bf16:  # the same through worker processes (each takes every other block)
        with Workers(2) as workers:
            in_workers = similarity.max_tanimoto(np.packbits(q, axis=1), qc, np.packbits(r, axis=1), rc,
                                                 query_block=16, reference_block=32, workers=workers)
            means_w = similarity.power_mean_tanimoto(np.packbits(q, axis=1), qc, w, (1, 2), block=16,
                                                     workers=workers)
        np.testing.assert_array_equal(in_workers, best)
        np.testing.assert_allclose(means_w[2], means[2], atol=1e-9)


def test_workers_keep_order(small_smiles):
    items = (small_smiles * 13)[:2500]
    with Workers(2) as workers:
        parallel = [c for part in workers.map(canonical_chunk, items, desc="t") for c in part]
    assert parallel == canonical_chunk(items)


# ----------------------------------------------------------------------------- FCD

def test_chemnet_fast_path_matches_fcd_package(small_smiles):
    fcd = pytest.importorskip("fcd")
    from fcd.utils import get_one_hot

    from molvae.metrics.chemnet import ChemNet, one_hot

    smiles = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in small_smiles[:12]] + ["C", "BrCCCl", "C" * 80]
    for s in smiles[-3:]:
        np.testing.assert_array_equal(one_hot([s])[0].T.numpy(), (get_one_hot(s, 350) / 35).astype(np.float32))
    ours = ChemNet("cpu").activations(smiles, batch_size=10)
    theirs = fcd.get_predictions(fcd.load_ref_model(), smiles, batch_size=16, n_jobs=0, device="cpu")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_frechet_distance_matches_fcd_package():
    fcd = pytest.importorskip("fcd")
    from molvae.metrics.chemnet import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    b = rng.normal(0.3, 1.2, size=(300, 24))
    sa, sb = (a.mean(0), np.cov(a.T)), (b.mean(0), np.cov(b.T))
    expected = fcd.calculate_frechet_distance(mu1=sa[0], sigma1=sa[1], mu2=sb[0], sigma2=sb[1])
    assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(None, sb) is None


def test_missing_fcd_package_gives_a_note_not_an_error(monkeypatch, small_smiles):
    from molvae.metrics import chemnet

    monkeypatch.setattr(chemnet, "fcd_available", lambda: False)
    ev = evaluate(small_smiles[:10], test=small_smiles[:20], use_cache=False, n_jobs=1)
    assert ev["FCD/Test"] is None and ev["SNN/Test"] is not None
    assert any("pip install 'molvae[metrics]'" in note for note in ev.notes)


def test_fcd_of_a_set_with_itself_is_zero(small_smiles):
    pytest.importorskip("fcd")
    from molvae.metrics import fcd

    value = fcd(small_smiles[:30], small_smiles[:30])
    assert value == pytest.approx(0.0, abs=1e-3)
    assert fcd(small_smiles[:30], small_smiles[100:130]) > 1.0
    assert fcd(["CCO"], small_smiles[:30]) is None  # fewer than 2 molecules


# ----------------------------------------------------------------------------- edge cases

def test_empty_input_gives_nulls_and_counts(small_smiles):
    ev = evaluate([], train=small_smiles[:20], test=small_smiles[:20], test_scaffolds=small_smiles[20:40],
                  use_cache=False, n_jobs=1)
    assert ev["valid"] is None
    for name, value in ev.metrics.items():
        assert value is None, name
    assert ev.counts["generated"]["n_total"] == 0
    assert ev.counts["unique@1000"] == {"n": 0, "n_unique": 0, "complete": False}


def test_all_invalid_input_gives_zero_validity_and_nulls(small_smiles):
    ev = evaluate(["xx", "", "C1CC", "(("], train=small_smiles[:20], test=small_smiles[:20],
                  test_scaffolds=small_smiles[20:40], use_cache=False, n_jobs=1)
    assert ev["valid"] == 0.0
    assert {k: v for k, v in ev.metrics.items() if k != "valid" and v is not None} == {}
    assert ev.counts["generated"]["n_invalid"] == 4
    json.dumps(ev.to_dict())  # serializable, no NaN


def test_all_invalid_reference_gives_nulls():
    ev = evaluate([ASPIRIN, CAFFEINE], test=["xx", "yy"], **FAST)
    assert ev["SNN/Test"] is None and ev["Frag/Test"] is None and ev["logP"] is None
    assert ev.counts["test"]["n_valid"] == 0
    assert ev["IntDiv"] is not None


def test_single_molecule():
    ev = evaluate([ASPIRIN], test=[ASPIRIN, CAFFEINE], use_cache=False, n_jobs=1)
    assert ev["IntDiv"] == pytest.approx(0.0, abs=1e-7)
    assert ev["SNN/Test"] == pytest.approx(1.0)
    if "FCD/Test" in ev.metrics:
        assert ev["FCD/Test"] is None  # needs 2 molecules


# ----------------------------------------------------------------------------- full suite, cache, CLI

def test_full_suite_and_cache_hit_give_identical_numbers(tmp_path, small_smiles):
    gen = small_smiles[:50] + small_smiles[:5] + ["bad"]
    kwargs = dict(train=small_smiles[25:], test=small_smiles[:120], test_scaffolds=small_smiles[120:],
                  n_jobs=1, cache_dir=tmp_path / "c", k=(10, 100))
    first = evaluate(gen, **kwargs)
    assert first.cache == {"test": "computed", "test_scaffolds": "computed", "train": "computed"}
    second = evaluate(gen, **kwargs)
    assert second.cache == {"test": "hit", "test_scaffolds": "hit", "train": "hit"}
    assert second.metrics == first.metrics
    assert second.counts == first.counts
    m = first.metrics
    assert m["valid"] == pytest.approx(55 / 56)
    assert m["unique@100"] == pytest.approx(50 / 55)
    assert m["SNN/Test"] == pytest.approx(1.0)  # every generated molecule is in the test set
    assert m["Novelty"] == pytest.approx(0.5)  # molecules 25..49 are in train
    assert 0 < m["IntDiv"] < 1 and 0 < m["IntDiv2"] < 1
    assert m["Filters"] is not None and 0 <= m["Filters"] <= 1
    for name in ("logP", "SA", "QED", "weight"):
        assert m[name] is not None and m[name] >= 0
    if "FCD/Test" in m and m["FCD/Test"] is not None:
        assert m["FCD/Test"] > 0
    # The duplicated 5 molecules weigh twice, as MOSES counts duplicates.
    assert first.counts["generated"]["n_unique"] == 50 and first.counts["generated"]["n_valid"] == 55


def test_model_figures(tiny_model, small_smiles):
    ev = evaluate(small_smiles[:20], test=small_smiles, model=tiny_model, heldout_size=40, **FAST)
    assert 0.0 <= ev["Reconstruction"] <= 1.0
    assert ev["KL"] >= 0.0
    assert 0 <= ev["ActiveUnits"] <= tiny_model.config.latent_dim
    assert ev.counts["model"]["n_sampled"] == 40


def test_cli_evaluate_end_to_end(tmp_path, small_smiles):
    (tmp_path / "gen.smi").write_text("\n".join(small_smiles[:40] + ["not_a_smiles"]) + "\n")
    pd.DataFrame({"SMILES": small_smiles[60:]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"smiles": small_smiles[:100]}).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"smiles": small_smiles[100:]}).to_csv(tmp_path / "test_sf.csv", index=False)
    out = tmp_path / "metrics.json"
    args = ["evaluate", str(tmp_path / "gen.smi"), "--train", str(tmp_path / "train.csv"),
            "--test", str(tmp_path / "test.csv"), "--test-scaffolds", str(tmp_path / "test_sf.csv"),
            "--k", "10,1000", "--n-jobs", "1", "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "SNN/TestSF" in result.output
    data = json.loads(out.read_text())
    assert data["metrics"]["valid"] == pytest.approx(40 / 41)
    assert data["metrics"]["unique@10"] == 1.0
    assert data["counts"]["generated"]["n_total"] == 41
    assert data["counts"]["test"]["n_valid"] == 100
    assert set(data["timings"]) >= {"generated_canonicalize", "total"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert json.loads(out.read_text())["metrics"] == data["metrics"]


def test_cli_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing.csv")])
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "missing.csv" in lines[0]
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "smiles" in result.output.lower()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "x.csv"), "--k", "ten"])
    assert result.exit_code == 2


@pytest.mark.gpu
def test_cuda_gives_the_cpu_figures(small_smiles):
    gen, ref = small_smiles[:60], small_smiles[60:]
    on_cpu = evaluate(gen, test=ref, use_cache=False, n_jobs=1, device="cpu")
    on_gpu = evaluate(gen, test=ref, use_cache=False, n_jobs=1, device="cuda")
    for name, value in on_cpu.metrics.items():
        if value is not None:
            assert on_gpu[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_torch_threads_restored(small_smiles):
    before = torch.get_num_threads()
    evaluate(small_smiles[:5], n_jobs=1, use_cache=False, compute_fcd=False)
    assert torch.get_num_threads() == before
