"""Latent-space optimization on the tiny trained model: budget, improvement, constraint, seeds, CLI,
property head (RDKit properties at data-load time, ``molvae predict``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from molvae import MolVAE, chem
from molvae.cli import main
from molvae.data import prepare, read_molecules
from molvae.errors import InvalidInputError
from molvae.objectives import Guards, parse_objective
from molvae.optimize import Oracle, optimize
from molvae.optimize.oracle import read_log

pytest.importorskip("botorch")

# Small settings so that each search takes seconds on two CPU cores.
GRAD = {"n_starts": 6, "steps": 6, "n_init": 6, "patience": 2}
BO = {"batch_size": 4, "n_init": 6, "num_restarts": 2, "raw_samples": 64, "patience": 3}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: one thread avoids oversubscription on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def start_smiles(tiny_model, small_csv):
    """A training molecule the tiny model can encode."""
    for s in pd.read_csv(small_csv)["smiles"]:
        c = chem.canonicalize(s)
        if c and not isinstance(tiny_model.tokenize(c), str) and 12 <= _heavy(c) <= 20:
            return c
    raise AssertionError("no encodable molecule in small.csv")


def _heavy(smiles: str) -> int:
    return int(chem.heavy_atoms(smiles))


def _check_log(res, budget):
    log = res.log
    assert res.n_calls <= budget
    assert int(log["oracle_call"].sum()) == res.n_calls
    assert log["smiles"].is_unique  # each molecule logged (and charged) once
    assert set(log.columns) >= {"step", "smiles", "score", "method"}


# ----------------------------------------------------------------------------- oracle

def test_oracle_budget_cache_and_guards():
    oracle = Oracle(parse_objective("qed"), budget=3, method="t")
    y = oracle(["CCO", "CCO", "", "C" * 40, "CCN"])
    assert oracle.n_calls == 2 and np.isnan(y[2]) and np.isnan(y[3]) and y[0] == y[1]
    oracle(["CCO", "CCC", "CCCl", "CCBr"])  # one call left: CCC scored, the rest not
    assert oracle.n_calls == 3 and oracle.exhausted
    assert "CCCl" not in oracle.cache
    statuses = dict(zip(oracle.log()["smiles"], oracle.log()["status"]))
    assert statuses["C" * 40].startswith("guard:")
    with pytest.raises(InvalidInputError):
        Oracle(parse_objective("qed"), budget=0)


def test_the_log_names_oracle_calls_and_reads_older_logs(tmp_path):
    """``oracle_call`` says what the old ``charged`` meant (a chemist read it as "ionic"); old logs still read."""
    from molvae.optimize.oracle import read_log

    path = tmp_path / "log.csv"
    oracle = Oracle(parse_objective("qed"), budget=2, method="t", log_path=path)
    oracle(["CCO", "CCO", "C" * 40, "CCN"])
    oracle.close()
    log = read_log(path)
    assert "charged" not in log.columns and log["oracle_call"].dtype == bool
    calls = dict(zip(log["smiles"], log["oracle_call"]))
    assert calls == {"CCO": True, "CCN": True, "C" * 40: False} and log["oracle_call"].sum() == oracle.n_calls
    old = tmp_path / "old.csv"
    old.write_text("step,smiles,score,method,similarity,charged,status\n0,CCO,0.4,bo,,True,ok\n0,CCC,,bo,,False,guard:x\n")
    log = read_log(old)
    assert log["oracle_call"].tolist() == [True, False] and "charged" not in log.columns


def test_oracle_similarity_floor():
    oracle = Oracle(parse_objective("qed"), budget=10, start="c1ccccc1O", min_similarity=0.4)
    y = oracle(["c1ccccc1O", "c1ccccc1OC", "CCCCCC"])
    assert np.isfinite(y[0]) and np.isnan(y[2])
    assert oracle.n_calls == sum(np.isfinite(y))
    assert (oracle.scored(exclude_start=False)["similarity"] >= 0.4).all()


def test_oracle_known_molecules_are_free_and_not_results():
    oracle = Oracle(parse_objective("qed"), budget=2, method="t")
    y = oracle.add_known(["CCO", "c1ccccc1O", "C" * 40, ""], [0.9, 0.5, 0.99, 0.1])
    assert oracle.n_calls == 0 and y[0] == 0.9 and y[1] == 0.5
    assert np.isnan(y[2]) and np.isnan(y[3])            # over the 38-atom guard: recorded as the search sees it
    again = oracle(["CCO", "CCN"])                      # a known molecule decoded again costs nothing
    assert again[0] == 0.9 and oracle.n_calls == 1
    assert oracle.scored()["smiles"].tolist() == ["CCN"]
    assert set(oracle.scored(include_known=True)["smiles"]) == {"CCO", "c1ccccc1O", "CCN"}
    assert oracle.best_smiles == "CCN"                  # best *found*, not best given
    log = oracle.log()
    assert not log[log["status"] == "known"]["oracle_call"].any()
    with pytest.raises(InvalidInputError, match="2 known molecules but 1 scores"):
        oracle.add_known(["CC", "CCC"], [1.0])


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("method,settings", [("gradient", GRAD), ("bo", BO), ("bo", {**BO, "acquisition": "qei"})])
def test_optimizer_improves_within_budget(tiny_model, small_csv, method, settings):
    # The tiny model decodes little but carbon chains, so the simple objective it can improve is logP
    # (without the heavy-atom guard): the search must beat the encoded training molecules it starts from.
    budget = 24
    init = pd.read_csv(small_csv)["smiles"].tolist()
    res = optimize(tiny_model, "logp", method=method, budget=budget, seed=0, init_smiles=init,
                   guards=Guards(max_heavy_atoms=None), settings=settings)
    _check_log(res, budget)
    log = res.log[res.log["oracle_call"]]
    init_scores = log[log["method"].str.endswith("-init")]["score"]
    search_scores = log[~log["method"].str.endswith("-init")]["score"]
    assert len(init_scores) == settings["n_init"] and len(search_scores) >= 1
    assert search_scores.max() > init_scores.max()
    assert res.best_score == pytest.approx(log["score"].max())


@pytest.mark.parametrize("method,settings", [("gradient", {**GRAD, "n_init": 10}), ("bo", {**BO, "n_init": 10})])
def test_known_scores_start_the_search_for_free(tiny_model, small_csv, method, settings):
    """Labelled molecules (init_scores) seed the search without oracle calls and are never results."""
    smiles = [c for c in (chem.canonicalize(s) for s in pd.read_csv(small_csv)["smiles"]) if c][:80]
    scores = np.asarray(chem.compute_properties(smiles, ["logp"])["logp"])
    budget = 12
    res = optimize(tiny_model, "logp", method=method, budget=budget, seed=0, init_smiles=smiles,
                   init_scores=scores, guards=Guards(max_heavy_atoms=None), settings=settings)
    _check_log(res, budget)
    log = res.log
    known = log[log["status"] == "known"]
    assert 0 < len(known) <= 10 and not known["oracle_call"].any()
    # The design holds the best labelled molecule, with its given score.
    best = int(np.nanargmax(scores))
    assert smiles[best] in set(known["smiles"])
    assert float(known.set_index("smiles").loc[smiles[best], "score"]) == pytest.approx(scores[best])
    # Every oracle call went to the search; no known molecule is reported as found.
    assert res.n_calls >= 1 and not set(res.top["smiles"]) & set(known["smiles"])
    assert (log[log["oracle_call"]]["method"] == method).all()


def test_bo_local_gp_points_are_the_nearest_to_the_centre():
    from molvae.optimize.bo import _local_subset

    X = np.array([[0.0, 0.0], [0.9, 0.9], [0.1, 0.0], [0.5, 0.5], [0.0, 0.2], [1.0, 1.0]])
    assert _local_subset(X, 0, 3).tolist() == [0, 2, 4]          # the centre and its two nearest
    assert _local_subset(X, 5, 2).tolist() == [1, 5]
    assert _local_subset(X, 0, 10).tolist() == list(range(6))   # fewer points than the limit: all


def test_bo_small_local_gp_and_seeded(tiny_model, small_csv):
    """A GP on a handful of nearest points still searches, spends the budget and repeats itself by seed."""
    init = pd.read_csv(small_csv)["smiles"].tolist()
    settings = {**BO, "max_gp_points": 5, "fit_steps": 10, "refit_steps": 2, "n_candidates": 64}
    runs = [optimize(tiny_model, "logp", method="bo", budget=16, seed=1, init_smiles=init,
                     guards=Guards(max_heavy_atoms=None), settings=settings) for _ in range(2)]
    _check_log(runs[0], 16)
    assert (runs[0].log["method"] == "bo").any()
    pd.testing.assert_frame_equal(runs[0].log, runs[1].log)
    assert runs[0].settings["max_gp_points"] == 5 and 0 < runs[0].objective_s < runs[0].elapsed_s
    with pytest.raises(InvalidInputError, match="n_candidates must be >= batch_size"):
        optimize(tiny_model, "qed", budget=5, settings={"batch_size": 8, "n_candidates": 4})


def test_known_scores_bad_arguments(tiny_model):
    with pytest.raises(InvalidInputError, match="needs init_smiles"):
        optimize(tiny_model, "qed", budget=5, init_scores=[0.5])
    with pytest.raises(InvalidInputError, match="2 initial molecules but 1 initial scores"):
        optimize(tiny_model, "qed", budget=5, init_smiles=["CCO", "CCN"], init_scores=[0.5])
    with pytest.raises(InvalidInputError, match="none of the initial scores"):
        optimize(tiny_model, "qed", budget=5, init_smiles=["CCO", "CCN"], init_scores=[float("nan")] * 2)


def test_budget_smaller_than_the_design(tiny_model, small_csv):
    init = pd.read_csv(small_csv)["smiles"].tolist()
    for method, settings in [("bo", {**BO, "n_init": 8}), ("gradient", {**GRAD, "n_init": 8})]:
        res = optimize(tiny_model, "qed", method=method, budget=3, seed=0, init_smiles=init, settings=settings)
        _check_log(res, 3)
        assert res.n_calls == 3


@pytest.mark.parametrize("method,settings", [("gradient", GRAD), ("bo", BO)])
def test_constrained_never_below_floor(tiny_model, start_smiles, method, settings):
    floor = 0.4
    res = optimize(tiny_model, "logp", method=method, budget=12, seed=0, start=start_smiles,
                   min_similarity=floor, settings=settings)
    _check_log(res, 12)
    assert res.start_smiles == start_smiles and math.isfinite(res.start_score)
    assert (res.top["similarity"] >= floor).all()
    assert start_smiles not in set(res.top["smiles"])
    scored = res.log[np.isfinite(res.log["score"].astype(float))]
    assert (scored["similarity"] >= floor).all()
    assert res.improvement is not None and res.improvement >= 0


@pytest.mark.parametrize("method, settings, unit", [("gradient", {**GRAD, "patience": 2}, "rounds"),
                                                    ("bo", {**BO, "patience": 2}, "batches")])
def test_search_ends_when_nothing_above_the_floor_can_be_scored(tiny_model, start_smiles, method, settings, unit):
    """At a floor no decoded molecule reaches, the free (under-the-floor) molecules must not keep it going."""
    res = optimize(tiny_model, "plogp", method=method, budget=50, seed=0, start=start_smiles,
                   min_similarity=0.999, settings=settings)
    _check_log(res, 50)
    assert res.stop_reason.startswith(f"no new scored molecule in 2 {unit}")
    log = res.log
    under = log[log["status"].astype(str).str.contains("similarity")]
    assert len(under) > 0 and not under["oracle_call"].any()   # decoded, logged, never charged
    assert res.n_calls < 50


def test_gradient_max_rounds_bounds_the_search(tiny_model, start_smiles):
    res = optimize(tiny_model, "plogp", method="gradient", budget=500, seed=0, start=start_smiles,
                   min_similarity=0.0, settings={**GRAD, "max_rounds": 2, "patience": 50})
    _check_log(res, 500)
    assert res.stop_reason == "2 rounds (max_rounds)" and res.n_calls < 500
    assert res.log["step"].max() <= 2 * GRAD["steps"]


@pytest.mark.parametrize("method,settings", [("gradient", GRAD), ("bo", BO)])
def test_seed_reproduces(tiny_model, method, settings):
    a = optimize(tiny_model, "qed", method=method, budget=10, seed=3, settings=settings)
    b = optimize(tiny_model, "qed", method=method, budget=10, seed=3, settings=settings)
    pd.testing.assert_frame_equal(a.log, b.log)


def test_head_gradient_and_init(tiny_model, small_csv):
    # An untrained head named after the objective is used as the differentiable score.
    model = _model_with_head(tiny_model, ("qed",))
    init = pd.read_csv(small_csv)["smiles"].tolist()[:50]
    res = optimize(model, "qed", method="gradient", budget=8, seed=0, init_smiles=init,
                   settings={"n_starts": 4, "steps": 4})
    _check_log(res, 8)
    assert not res.log["method"].str.endswith("-init").any()  # no surrogate design needed


def test_bad_arguments(tiny_model):
    with pytest.raises(InvalidInputError, match="unknown method"):
        optimize(tiny_model, "qed", method="annealing", budget=5)
    with pytest.raises(InvalidInputError, match="needs a start"):
        optimize(tiny_model, "qed", budget=5, min_similarity=0.4)
    with pytest.raises(InvalidInputError, match="not a valid SMILES"):
        optimize(tiny_model, "qed", budget=5, start="C1CC")
    with pytest.raises(InvalidInputError, match="unknown BOSettings key"):
        optimize(tiny_model, "qed", budget=5, settings={"steps": 3})


# ----------------------------------------------------------------------------- property head

def _model_with_head(base: MolVAE, names: tuple[str, ...]) -> MolVAE:
    model = MolVAE.new(base.config.replace(property_names=names), base.vocab, seed=0)
    state = {**model.net.state_dict(), **base.net.state_dict()}
    model.net.load_state_dict(state)
    model.metadata = {"property_stats": {"mean": [0.5] * len(names), "std": [0.2] * len(names)}}
    model.net.eval()
    return model


def test_properties_computed_at_load_time(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("smiles,activity\nCC(=O)Oc1ccccc1C(=O)O,1.5\nCCO,\nnot_a_smiles,2\n")
    prep = prepare(read_molecules(f), property_columns=("qed", "activity"))
    assert list(prep.properties.columns) == ["qed", "activity"]
    assert prep.properties["qed"].tolist() == pytest.approx([chem.qed("CC(=O)Oc1ccccc1C(=O)O"), chem.qed("CCO")])
    assert prep.properties["activity"].iloc[0] == 1.5 and math.isnan(prep.properties["activity"].iloc[1])
    with pytest.raises(InvalidInputError, match="no property column 'potency'.*RDKit properties"):
        prepare(read_molecules(f), property_columns=("potency",))


def test_predict_cli(tiny_model, tmp_path):
    model = _model_with_head(tiny_model, ("qed", "logp"))
    path = model.save(tmp_path / "head.pt")
    good = next(s for s in ["CCO", "CCN", "CCC", "CC(C)O", "c1ccccc1"] if not isinstance(model.tokenize(s), str))
    inp = tmp_path / "in.smi"
    inp.write_text(f"{good}\nnot_a_smiles\n{good}\n")
    runner = CliRunner()
    r = runner.invoke(main, ["predict", str(inp), "--model", str(path), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(out.columns) == ["row", "input", "smiles", "qed", "logp", "reason"]
    assert list(out["row"]) == [1, 2, 3] and out["reason"].iloc[1] != "" and out["reason"].iloc[0] == ""
    assert out["qed"].iloc[0] == out["qed"].iloc[2]
    # de-standardized: the prediction equals head(mu) * std + mean
    z, _ = model.encode([good])
    raw = model.net.property_head(torch.as_tensor(z)).detach().numpy()[0]
    assert float(out["qed"].iloc[0]) == pytest.approx(raw[0] * 0.2 + 0.5, rel=1e-4)
    no_head = runner.invoke(main, ["predict", str(inp), "--model", str(tiny_model.path)])
    assert no_head.exit_code == 1 and "no property head" in no_head.output


# ----------------------------------------------------------------------------- CLI

def test_optimize_cli(tiny_model, tmp_path):
    runner = CliRunner()
    log = tmp_path / "log.csv"
    summary = tmp_path / "s.json"
    r = runner.invoke(main, ["optimize", "--model", str(tiny_model.path), "--objective", "qed", "--method", "bo",
                             "--budget", "8", "--n-init", "4", "--batch-size", "4", "--seed", "1", "--out", str(log),
                             "--json", str(summary), "--top", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "rank,smiles,score" in r.output
    table = pd.read_csv(log)
    assert table["oracle_call"].sum() <= 8 and list(table.columns)[:4] == ["step", "smiles", "score", "method"]
    data = json.loads(summary.read_text())
    assert data["n_calls"] <= 8 and data["method"] == "bo" and len(data["top"]) <= 3
    # Weighted retraining from the command line: recorded in the settings; the model file is untouched.
    before = tiny_model.path.read_bytes()
    r = runner.invoke(main, ["optimize", "--model", str(tiny_model.path), "--objective", "qed", "--method", "gradient",
                             "--budget", "12", "--n-init", "4", "--n-starts", "4", "--steps", "3",
                             "--retrain-every", "4", "--json", str(summary), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(summary.read_text())["settings"]["retrain_every"] == 4
    assert tiny_model.path.read_bytes() == before
    r = runner.invoke(main, ["optimize", "--model", str(tiny_model.path), "--objective", "qed", "--retrain-every", "0",
                             "--no-progress"])
    assert r.exit_code == 2 and "--retrain-every" in r.output


def test_optimize_cli_known_scores(tiny_model, small_csv, tmp_path):
    smiles = [c for c in (chem.canonicalize(s) for s in pd.read_csv(small_csv)["smiles"]) if c][:40]
    init = tmp_path / "labelled.csv"
    pd.DataFrame({"smiles": smiles, "activity": np.linspace(0.0, 1.0, len(smiles))}).to_csv(init, index=False)
    log = tmp_path / "log.csv"
    runner = CliRunner()
    base = ["optimize", "--model", str(tiny_model.path), "--objective", "qed", "--budget", "6", "--method", "bo",
            "--batch-size", "3", "--n-init", "8", "--no-progress", "--init", str(init)]
    r = runner.invoke(main, base + ["--init-scores", "activity", "--out", str(log)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(log)
    known = table[table["status"] == "known"]
    assert len(known) == 8 and smiles[-1] in set(known["smiles"])   # the best-labelled molecule is in the design
    assert table["oracle_call"].sum() <= 6
    r = runner.invoke(main, base + ["--init-scores", "pIC50"])
    assert r.exit_code == 2 and "no column 'pIC50'" in r.output and "activity" in r.output
    # Rows that cannot be used are reported with their row numbers, not dropped silently; a molecule
    # without a number is still an initial molecule, and the run goes on.
    pd.DataFrame({"smiles": smiles[:10] + ["C1CC", "CC(C)(C)(C)C", "CCO"],
                  "activity": list(np.linspace(0.0, 1.0, 10)) + [0.5, 0.5, "n/a"]}).to_csv(init, index=False)
    r = runner.invoke(main, base + ["--init-scores", "activity"])
    assert r.exit_code == 0, r.output
    assert "2 of 13 rows of --init" in r.stderr and "row 11: RDKit could not parse the SMILES" in r.stderr, r.stderr
    assert "row 12: RDKit could not parse the SMILES (impossible valence" in r.stderr
    assert "1 of 11 molecules of --init" in r.stderr and "could not be given a known score" in r.stderr
    assert "row 13: no number in 'activity' ('n/a')" in r.stderr
    # Molecules RDKit reads but the model cannot encode (an element it never saw, a wildcard atom) are
    # reported too, with the reason, not dropped without a word.
    pd.DataFrame({"smiles": smiles[:5] + ["[SeH]c1ccccc1", "C[Si](C)(C)C", "*CC"],
                  "activity": np.linspace(0.0, 1.0, 8)}).to_csv(init, index=False)
    r = runner.invoke(main, base + ["--init-scores", "activity"])
    assert r.exit_code == 0, r.output
    assert "3 of 8 rows of --init" in r.stderr and "row 6: tokens not in the model's vocabulary: [SeH1]" in r.stderr
    assert "row 7: tokens not in the model's vocabulary: [Si]" in r.stderr and "row 8: SELFIES could not" in r.stderr
    init.write_text("smiles,activity\nC1CC,1\nnot_a_smiles,2\n")
    r = runner.invoke(main, base + ["--init-scores", "activity"])
    assert r.exit_code == 2 and "none of its 2 rows holds a molecule the model can encode" in r.output
    r = runner.invoke(main, ["optimize", "--model", str(tiny_model.path), "--objective", "qed",
                             "--init-scores", "activity", "--no-progress"])
    assert r.exit_code == 2 and "--init-scores needs --init" in r.output


def test_optimize_cli_errors(tiny_model):
    runner = CliRunner()
    base = ["optimize", "--model", str(tiny_model.path), "--budget", "5", "--no-progress"]
    r = runner.invoke(main, base + ["--objective", "nonsense"])
    assert r.exit_code == 2 and "unknown objective 'nonsense'" in r.output
    r = runner.invoke(main, base + ["--objective", "qed", "--min-similarity", "0.4"])
    assert r.exit_code == 2 and "--start" in r.output
    r = runner.invoke(main, base + ["--objective", "qed", "--method", "bo", "--steps", "3"])
    assert r.exit_code == 2 and "other --method" in r.output
    r = runner.invoke(main, base + ["--objective", "qed", "--start", "C1CC"])
    assert r.exit_code == 1 and "not a valid SMILES" in r.output


def test_method_settings_are_read_like_every_other_config():
    """settings_from_dict is the configs' from_dict (one reader), with None meaning the default."""
    from molvae.errors import InvalidInputError
    from molvae.optimize.base import BOSettings, GradientSettings, settings_from_dict

    bo = settings_from_dict(BOSettings, {"batch_size": 5, "patience": None})
    assert bo == BOSettings(batch_size=5)
    assert BOSettings.from_dict(bo.to_dict()) == bo
    assert GradientSettings.from_dict(GradientSettings().to_dict()) == GradientSettings()
    with pytest.raises(InvalidInputError, match="unknown BOSettings key"):
        settings_from_dict(BOSettings, {"bogus": 1})


# ----------------------------------------------------------------------------- weighted retraining

def test_rank_weights_favour_the_best():
    from molvae.optimize.retrain import rank_weights

    w = rank_weights(100, 0.01)
    assert w.sum() == pytest.approx(1.0) and (np.diff(w) < 0).all()
    # Tripp et al.: w ∝ 1/(kN + rank), so the best (rank 0) over the worst (rank 99) is (1 + 99) / 1.
    assert w[0] / w[-1] == pytest.approx(100.0)


def test_retraining_makes_the_best_molecules_likelier(tiny_model, small_csv):
    """A retraining fine-tunes the model towards the molecules drawn by rank: the best one's
    reconstruction loss falls, the worst one's moves far less."""
    import copy

    from molvae.model import sequences_to_tensor
    from molvae.optimize.base import GradientSettings
    from molvae.optimize.retrain import Retrainer

    model = copy.deepcopy(tiny_model)
    smiles = [c for c in (chem.canonicalize(s) for s in pd.read_csv(small_csv)["smiles"][:40]) if c]
    smiles = [s for s in smiles if not isinstance(model.tokenize(s), str)]

    def recon(s):
        tokens, lengths = sequences_to_tensor([model.tokenize(s)], model.vocab.eos_id, model.vocab.pad_id)
        with torch.no_grad():
            return float(model.net(tokens, lengths, sample=False).recon[0])

    best, worst = recon(smiles[0]), recon(smiles[-1])
    rt = Retrainer(model, GradientSettings(retrain_every=1, retrain_steps=30, retrain_batch=16, retrain_lr=3e-3,
                                           retrain_k=0.01), seed=0)
    for s in smiles:
        rt._tokens(s)
    rt.fit(smiles)
    assert not model.net.training
    assert recon(smiles[0]) < 0.8 * best
    # What the surrogate learns from afterwards: the scored molecules as the retrained model encodes them.
    oracle = Oracle(parse_objective("logp", Guards(max_heavy_atoms=None)), 10)
    y = oracle(smiles[:10])
    z, y_enc = rt.encoded_scored(oracle)
    np.testing.assert_array_equal(z, model.encode(smiles[:10])[0])
    np.testing.assert_array_equal(y_enc, y)
    assert best - recon(smiles[0]) > abs(worst - recon(smiles[-1]))


def test_retraining_keeps_the_property_head_scoring_the_moved_latent_space(tiny_model, small_csv):
    """Ascending the property head with retraining: the head is trained along on the oracle's scores,
    so its prediction for the molecules it was retrained on comes closer to their scores; afterwards
    it is frozen again (the search differentiates in z only)."""
    from molvae.optimize.base import GradientSettings
    from molvae.optimize.head import HeadScorer
    from molvae.optimize.retrain import Retrainer

    model = _model_with_head(tiny_model, ("qed",))
    smiles = [c for c in (chem.canonicalize(s) for s in pd.read_csv(small_csv)["smiles"][:60]) if c]
    smiles = [s for s in smiles if not isinstance(model.tokenize(s), str)]
    y = np.array([chem.qed(s) for s in smiles])
    order = np.argsort(-y, kind="stable")
    smiles, y = [smiles[i] for i in order], y[order]
    scorer = HeadScorer(model, np.array([1.0]))

    def head_error():
        z = torch.as_tensor(model.encode(smiles)[0])
        with torch.no_grad():
            return float(((scorer(z).squeeze(-1).numpy() - y) ** 2).mean())

    before = head_error()
    rt = Retrainer(model, GradientSettings(retrain_every=1, retrain_steps=60, retrain_batch=16, retrain_lr=3e-3,
                                           retrain_k=10.0), seed=0, head=scorer)
    for s in smiles:
        rt._tokens(s)
    rt.fit(smiles, y)
    assert head_error() < 0.5 * before
    assert not any(q.requires_grad for q in model.net.property_head.parameters())
    # Through the search: a gradient run on the head with retraining stays seeded and in budget.
    opts = {**GRAD, "retrain_every": 6, "retrain_steps": 3, "retrain_batch": 8}
    a = optimize(model, "qed", method="gradient", budget=18, seed=2, init_smiles=smiles, settings=opts)
    _check_log(a, 18)
    b = optimize(model, "qed", method="gradient", budget=18, seed=2, init_smiles=smiles, settings=opts)
    pd.testing.assert_frame_equal(a.log, b.log)


@pytest.mark.parametrize("method,settings", [("gradient", GRAD), ("bo", BO)])
def test_search_with_retraining(tiny_model, small_csv, method, settings, caplog):
    """Retraining every few calls: it happens, the budget holds, the run is seeded, and the caller's
    model is untouched."""
    import logging

    # The CLI tests may have stopped molvae's loggers propagating: listen on this one directly.
    logger = logging.getLogger("molvae.optimize.retrain")
    caplog.set_level(logging.INFO, logger=logger.name)
    logger.addHandler(caplog.handler)
    before = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    init = pd.read_csv(small_csv)["smiles"].tolist()
    opts = {**settings, "retrain_every": 6, "retrain_steps": 3, "retrain_batch": 8}
    a = optimize(tiny_model, "logp", method=method, budget=24, seed=1, init_smiles=init,
                 guards=Guards(max_heavy_atoms=None), settings=opts)
    _check_log(a, 24)
    assert a.settings["retrain_every"] == 6
    logger.removeHandler(caplog.handler)
    assert "retraining 1 on" in caplog.text
    for k, v in tiny_model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    b = optimize(tiny_model, "logp", method=method, budget=24, seed=1, init_smiles=init,
                 guards=Guards(max_heavy_atoms=None), settings=opts)
    pd.testing.assert_frame_equal(a.log, b.log)


def test_retrain_settings_checked():
    from molvae.optimize.base import BOSettings, GradientSettings

    with pytest.raises(InvalidInputError, match="retrain_every must be >= 0"):
        GradientSettings(retrain_every=-1)
    with pytest.raises(InvalidInputError, match="retrain_steps must be >= 1"):
        BOSettings(retrain_steps=0)
    assert BOSettings.from_dict({"retrain_every": 500}).retrain_every == 500


def test_a_resumed_search_spends_only_the_budget_left(small_csv, tmp_path):
    """``resume``: the logged molecules are never scored again, their calls count against the budget, the new
    log holds the old rows first and continues their steps; the best found so far stays a result. (The shipped
    small model: the tiny one decodes too few distinct molecules to fill a budget.)"""
    model = MolVAE.load("moses-small")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    run = {"method": "bo", "settings": BO}
    a = optimize(model, "qed", budget=12, seed=0, log_path=first, **run)
    logged = read_log(first)
    assert a.n_calls == int(logged["oracle_call"].sum()) == 12
    b = optimize(model, "qed", budget=20, seed=1, log_path=second, resume=first, **run)
    log = read_log(second)
    assert b.n_calls == int(log["oracle_call"].sum()) == 20
    assert log["smiles"].is_unique                                  # nothing scored twice
    pd.testing.assert_frame_equal(log.head(len(logged)), logged)    # the old rows first, as they were
    assert log["step"].iloc[len(logged):].min() > logged["step"].max()
    assert b.best_score >= a.best_score
    # A log whose budget is already spent: nothing new is scored.
    c = optimize(model, "qed", budget=12, seed=2, resume=first, **run)
    assert c.n_calls == 12 and c.stop_reason == "budget spent" and len(c.log) == len(logged)
    with pytest.raises(InvalidInputError, match="not an optimization log"):
        optimize(model, "qed", budget=5, resume=small_csv, **run)


def test_two_searches_never_write_one_log(tiny_model, tmp_path):
    from molvae.checkpoint import FileLock

    log = tmp_path / "log.csv"
    held = FileLock(Path(f"{log}.lock"), what=(log, "the log"), busy="held").acquire()
    try:
        with pytest.raises(InvalidInputError, match=r"another molvae optimize \(pid \d+\) is writing this log"):
            optimize(tiny_model, "qed", method="gradient", budget=5, log_path=log)
    finally:
        held.release()
    optimize(tiny_model, "qed", method="gradient", budget=5, log_path=log, settings={"n_init": 4, "n_starts": 2})
    assert log.is_file() and not Path(f"{log}.lock").exists()


def test_optimize_cli_resume(small_csv, tmp_path):
    log = tmp_path / "log.csv"
    base = ["optimize", "--model", "moses-small", "--objective", "qed", "--method", "bo", "--batch-size", "4",
            "--n-init", "6", "--no-progress"]
    r = CliRunner().invoke(main, base + ["--budget", "10", "--out", str(log)])
    assert r.exit_code == 0, r.output
    assert int(read_log(log)["oracle_call"].sum()) == 10
    r = CliRunner().invoke(main, base + ["--budget", "18", "--resume", str(log)])
    assert r.exit_code == 0, r.output
    after = read_log(log)                                          # --out defaults to the resumed log
    assert int(after["oracle_call"].sum()) == 18 and after["smiles"].is_unique
    r = CliRunner().invoke(main, base + ["--budget", "18", "--resume", str(small_csv), "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 1 and "not an optimization log" in r.output and "Traceback" not in r.output
