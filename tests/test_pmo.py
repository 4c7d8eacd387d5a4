"""The PMO harness (benchmarks/pmo.py, pmo_oracles.py, pmo_summary.py): mol_opt's AUC top-k against
hand-computed values, the GuacaMol oracles as objective plugins, one tiny run end to end, the table."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from rdkit.Chem import QED

from molvae import chem
from molvae.data import file_hash
from molvae.objectives import parse_objective

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pmo = _load("pmo")
pmo_summary = _load("pmo_summary")


# ----------------------------------------------------------------------------- AUC, as mol_opt computes it

def test_top_auc_stopped_early_holds_the_last_value():
    # 250 calls of a 300-call budget, top-1. Checkpoints at 100 and 200 calls (range(100, 250, 100)):
    #   100: top-1 0.5 -> 100 * (0.5 + 0) / 2 = 25      (the first segment averages with 0)
    #   200: top-1 1.0 -> 100 * (1.0 + 0.5) / 2 = 75
    #   end (250): top-1 1.0 -> 50 * (1.0 + 1.0) / 2 = 50
    #   held to the budget: 50 * 1.0 = 50             -> (25 + 75 + 50 + 50) / 300
    scores = [0.5] * 100 + [1.0] * 100 + [0.0] * 50
    assert pmo.top_auc(scores, 1, 300) == pytest.approx(200 / 300)
    assert pmo.top_auc(scores, 1, 300, finish=False) == pytest.approx(150 / 300)


def test_top_auc_full_budget_top10():
    # Scores i/1000 for calls i = 0..299; the top-10 mean of the first n calls is (n - 5.5)/1000.
    #   100: 0.0945 -> 100 * 0.0945 / 2          = 4.725
    #   200: 0.1945 -> 100 * (0.1945 + 0.0945)/2 = 14.45
    #   end (300, no checkpoint at the budget itself): 0.2945 -> 100 * (0.2945 + 0.1945)/2 = 24.45
    scores = [i / 1000 for i in range(300)]
    assert pmo.top_auc(scores, 10, 300) == pytest.approx((4.725 + 14.45 + 24.45) / 300)
    # Fewer than k scores: the mean of those there are.
    assert pmo.top_auc([0.2, 0.4], 10, 2) == pytest.approx(2 * (0.3 + 0) / 2 / 2)
    assert pmo.top_auc([], 10, 100) is None


def test_summarize_and_call_scores():
    import pandas as pd

    log = pd.DataFrame({"smiles": ["A", "B", "C", "D", "E"], "score": [0.1, float("nan"), 0.9, 0.3, float("nan")],
                        "charged": [True, False, True, True, True]})
    smiles, scores, nonfinite = pmo.call_scores(log)
    assert smiles == ["A", "C", "D", "E"] and scores == [0.1, 0.9, 0.3, 0.0] and nonfinite == 1
    out = pmo.summarize(smiles, scores, budget=4)
    assert out["top1"] == 0.9 and out["top10"] == pytest.approx(1.3 / 4) and out["top100"] == out["top10"]
    assert out["auc_top1"] == pytest.approx(pmo.top_auc(scores, 1, 4))
    assert [m["smiles"] for m in out["top100_molecules"]] == ["C", "D", "A", "E"]
    assert out["top100_molecules"][0]["call"] == 2


# ----------------------------------------------------------------------------- oracles (GuacaMol)

def _oracles():
    pytest.importorskip("guacamol")
    return _load("pmo_oracles")


def test_pmo_oracles_are_objective_plugins():
    oracles = _oracles()
    assert len(oracles.PMO_TASKS) == 23 and set(oracles.TASKS) | set(oracles.OFFLINE_MISSING) == set(oracles.PMO_TASKS)
    celecoxib = "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1"
    obj = parse_objective(f"{BENCH / 'pmo_oracles.py'}:celecoxib_rediscovery")
    scores, reasons = obj.evaluate([celecoxib, "CCO"])
    assert scores[0] == pytest.approx(1.0) and 0.0 <= scores[1] < 0.2 and reasons == [None, None]
    aspirin = "CC(=O)Oc1ccccc1C(=O)O"
    assert oracles.qed([aspirin])[0] == pytest.approx(QED.qed(chem.to_mol(aspirin)))
    # The isomer task: a C7H8N2O2 isomer scores 1, ethanol almost 0.
    iso = oracles.isomers_c7h8n2o2(["Nc1ccc(N)c(C(=O)O)c1", "CCO"])
    assert iso[0] == pytest.approx(1.0) and iso[1] < 0.01
    for task in oracles.TASKS:
        value = oracles.oracle(task)([aspirin])[0]
        assert math.isfinite(value) and 0.0 <= value <= 1.0, task
    with pytest.raises(KeyError, match="cannot run offline"):
        oracles.oracle("drd2")


def test_pmo_run_end_to_end(tiny_model, tmp_path):
    _oracles()
    out = tmp_path / "pmo"
    settings = json.dumps({"batch_size": 4, "n_init": 6, "patience": 3})
    pmo.main(["--oracle", "qed", "--budget", "14", "--seed", "0", "--method", "bo", "--model", str(tiny_model.path),
              "--settings", settings, "--out", str(out)])
    data = json.loads((out / "qed_bo_seed0.json").read_text())
    assert data["oracle"] == "qed" and data["method"] == "bo" and data["budget"] == 14
    assert 1 <= data["n_calls"] == len(data["scores"]) <= 14
    assert data["auc_top10"] == pytest.approx(pmo.top_auc(data["scores"], 10, 14), abs=1e-6)
    assert data["top1"] == pytest.approx(max(data["scores"]), abs=1e-6)
    assert data["settings"]["batch_size"] == 4 and "guacamol" in data["versions"]
    assert data["model_sha256"] == file_hash(tiny_model.path)
    # The scores are the oracle's: QED of the logged molecules.
    best = data["top100_molecules"][0]
    assert best["score"] == pytest.approx(QED.qed(chem.to_mol(best["smiles"])), abs=1e-6)
    table = pmo_summary.table(pmo_summary.load(out))
    assert "| qed | " in table and "(n=1, budget 14" in table and "0.936" in table   # SELFIES-VAE-BO's qed
    # --init: the initial design is a seeded choice of a SMILES file's molecules (gzipped here), scored as such
    import gzip
    pool = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)c1ccccc1", "CC(C)Cc1ccc(C)cc1",
            "c1ccncc1", "CCOC(=O)C", "NC(=O)c1cccnc1", "CC1=CC(=O)CC1"]
    with gzip.open(tmp_path / "pool.txt.gz", "wt") as f:
        f.write("smiles\n" + "\n".join(pool) + "\n")
    pmo.main(["--oracle", "qed", "--budget", "14", "--seed", "1", "--method", "bo", "--model", str(tiny_model.path),
              "--settings", settings, "--init", str(tmp_path / "pool.txt.gz"), "--out", str(out)])
    data = json.loads((out / "qed_bo_seed1.json").read_text())
    assert data["init"].endswith("pool.txt.gz")
    first = {m["smiles"] for m in data["top100_molecules"] if m["call"] <= 6}
    assert first and first <= {chem.canonicalize(s) for s in pool}, first
    # gradient-wr: gradient ascent with pmo.py's weighted retraining, its own file and column
    pmo.main(["--oracle", "qed", "--budget", "14", "--seed", "0", "--method", "gradient-wr", "--model",
              str(tiny_model.path), "--settings", json.dumps({"n_init": 6, "n_starts": 4, "steps": 3,
                                                              "retrain_every": 6, "retrain_steps": 2}),
              "--out", str(out)])
    data = json.loads((out / "qed_gradient-wr_seed0.json").read_text())
    assert data["method"] == "gradient-wr" and data["settings"]["retrain_every"] == 6
    assert data["settings"]["retrain_batch"] == pmo.RETRAIN["retrain_batch"] and data["settings"]["steps"] == 3
    assert "molvae gradient-wr" in pmo_summary.table(pmo_summary.load(out))
    with pytest.raises(SystemExit, match="cannot run offline"):
        pmo.main(["--oracle", "jnk3", "--budget", "5", "--model", str(tiny_model.path), "--out", str(out)])


def test_summary_table_means_over_seeds(tmp_path, capsys):
    for seed, auc in [(0, 0.70), (1, 0.72)]:
        (tmp_path / f"median1_bo_seed{seed}.json").write_text(json.dumps(
            {"benchmark": "pmo", "oracle": "median1", "method": "bo", "seed": seed, "budget": 10000,
             "n_calls": 10000, "auc_top10": auc}))
    (tmp_path / "qed_gradient_seed0.json").write_text(json.dumps(
        {"benchmark": "pmo", "oracle": "qed", "method": "gradient", "seed": 0, "budget": 10000, "n_calls": 9000,
         "auc_top10": 0.9}))
    text = pmo_summary.table(pmo_summary.load(tmp_path))
    lines = text.splitlines()
    assert lines[0].startswith("| task | molvae bo | molvae gradient | REINVENT")
    median = next(line for line in lines if line.startswith("| median1 |"))
    assert "0.710 ± 0.014 (n=2)" in median and "| — |" in median and "0.357" in median
    assert "0.900 (n=1, 1 stopped early)" in next(line for line in lines if line.startswith("| qed |"))
    assert any(line.startswith("| sum over 0 tasks |") for line in lines)   # no task has both methods
    # ... so each method's own sum, beside the published sums on its tasks
    assert "- molvae bo over the 1 tasks it ran: 0.710 (same tasks: REINVENT 0.357, Graph GA 0.295," in text
    assert "- molvae gradient over the 1 tasks it ran: 0.900 (same tasks: REINVENT 0.941," in text
    # runs of two model files (a shipped name retrained) are not averaged silently
    (tmp_path / "qed_bo_seed0.json").write_text(json.dumps(
        {"benchmark": "pmo", "oracle": "qed", "method": "bo", "seed": 0, "budget": 10000, "n_calls": 10000,
         "auc_top10": 0.94, "model": "zinc250k", "model_sha256": "ab" * 32}))
    text = pmo_summary.table(pmo_summary.load(tmp_path))
    assert "more than one model file" in text and f"zinc250k sha256 {'ab' * 6}: 1 runs" in text
    assert "not recorded: 3 runs" in text
    # --also: another folder's runs as their own columns
    other = tmp_path / "other"
    other.mkdir()
    (other / "qed_bo_seed0.json").write_text(json.dumps(
        {"benchmark": "pmo", "oracle": "qed", "method": "bo", "seed": 0, "budget": 10000, "n_calls": 10000,
         "auc_top10": 0.5}))
    pmo_summary.main([str(tmp_path), "--also", f"{other}=old model"])
    out = capsys.readouterr().out
    assert "| molvae bo (old model) |" in out.splitlines()[0]
    assert "| 0.500 (n=1) |" in next(line for line in out.splitlines() if line.startswith("| qed |"))
    with pytest.raises(SystemExit, match="FOLDER=LABEL"):
        pmo_summary.main([str(tmp_path), "--also", str(other)])


def test_campaign_plan_covers_every_offline_task_and_skips_finished_runs(tmp_path, capsys):
    campaign = _load("pmo_campaign")
    oracles = _oracles()
    runs = campaign.plan(["bo"], 3)
    assert runs[:5] == [(t, "bo", 0) for t in campaign.THREE_SEEDS]
    assert {s for _, _, s in runs[:15]} == {0, 1, 2}   # the five main tasks' three seeds come first
    assert {t for t, _, s in runs if s == 0} == set(oracles.TASKS)
    assert sorted(t for t, _, s in runs if s > 0) == sorted(campaign.THREE_SEEDS * 2)
    assert len(runs) == len(set(runs)) == len(oracles.TASKS) + 10
    assert campaign.plan(["bo"], 3, "main") == runs[:15]
    assert campaign.plan(["gradient"], 1, "rest") == [(t, "gradient", 0) for t, _, s in runs[15:]]
    (tmp_path / "qed_bo_seed0.json").write_text("{}")
    assert campaign.main(["--dry-run", "--out", str(tmp_path), "--budget", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(runs) - 1
    assert lines[0].startswith("python benchmarks/pmo.py --oracle celecoxib_rediscovery --method bo --seed 0 --budget 50")
    assert campaign.main(["--dry-run", "--out", str(tmp_path), "--init", "zinc.txt.gz", "--tasks", "main"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 14 and all(line.endswith("--init zinc.txt.gz") for line in lines)
