"""The shipped optimization model ``zinc250k`` (``molvae/models/zinc250k.pt``): a ZINC250k VAE with a
QED + pLogP property head, what ``molvae optimize --model zinc250k`` and the optimization scripts use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from molvae import MolVAE, chem
from molvae.checkpoint import FORMAT_NAME
from molvae.core import SHIPPED_MODELS_DIR, find_model

ROOT = Path(__file__).resolve().parents[1]
NAME = "zinc250k"
SHIPPED = SHIPPED_MODELS_DIR / f"{NAME}.pt"
CARD = SHIPPED_MODELS_DIR / "README.md"
#: 200 molecules of the seeded ZINC250k test split (scripts/optim_common.zinc_split, then a seed-0 choice):
#: the model never saw them in training.
TEST_MOLECULES = ROOT / "tests" / "data" / "zinc250k_test200.csv"

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"{SHIPPED} not there yet (scripts/train_zinc.py)")


@pytest.fixture(scope="module")
def model() -> MolVAE:
    torch.set_num_threads(2)
    return MolVAE.load(NAME)


def test_file_loads_weights_only_and_is_found_by_name():
    data = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert data["format"] == FORMAT_NAME
    assert all(isinstance(t, torch.Tensor) for t in data["state_dict"].values())
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024
    assert find_model(NAME)[0] == SHIPPED
    assert list(data["model_config"]["property_names"]) == ["qed", "plogp"]


def test_property_head_predicts_qed_of_held_out_molecules(model):
    """The head's QED against RDKit's on 200 test-split molecules.

    Issue #15 asks R² ≥ 0.8; the shipped model measures 0.846 here (0.870 on 2,000 test-split molecules).
    """
    from molvae.optimize.head import predict_properties

    smiles = pd.read_csv(TEST_MOLECULES)["smiles"].tolist()
    assert len(smiles) == 200
    pred = predict_properties(model, smiles)
    assert (pred["reason"] == "").all(), pred.loc[pred["reason"] != "", "reason"].tolist()
    true = np.array([chem.qed(chem.to_mol(s)) for s in smiles])
    resid = ((pred["qed"].to_numpy() - true) ** 2).sum()
    r2 = 1 - resid / ((true - true.mean()) ** 2).sum()
    assert r2 >= 0.8, r2


def test_bo_on_qed_learns_to_propose_better_molecules_than_its_initial_design(model):
    """300 oracle calls of BO from the prior, seeds 0-2: the last 100 molecules BO proposed score higher on
    average than the prior samples of its initial design, by at least 0.03 QED in every seed.

    Early proposals are no test: over the first 100 calls the searched molecules beat the design by 0.023 on
    average over seeds 0-9 (per seed -0.086 to 0.132), a coin, and so is the best single molecule (the design's
    best is the maximum of 30 draws). Once the GP has seen 200 molecules it has learnt: measured on a 2-core AMD
    EPYC with AVX-512, the last 100 proposals beat the design by 0.141 / 0.101 / 0.089 (seeds 0-2; seeds 3 and 4:
    0.100, 0.052). Proposals drawn from the prior instead would differ by 0 on average.
    """
    from molvae.optimize import optimize

    gains = []
    for seed in range(3):
        res = optimize(model, "qed", method="bo", budget=300, seed=seed)
        log = res.log[res.log["oracle_call"].astype(bool)]
        assert len(log) == 300
        init = log[log["method"] == "bo-init"]["score"].fillna(0.0)
        searched = log[log["method"] != "bo-init"]["score"].fillna(0.0)
        assert len(init) >= 10 and len(searched) >= 200
        gains.append(searched.iloc[-100:].mean() - init.mean())
    assert min(gains) >= 0.03, gains


def test_samples_are_valid_zinc_like_molecules(model):
    table = model.sample(100, seed=0)
    assert table["valid"].all()
    mols = [chem.to_mol(s) for s in table["smiles"]]
    assert np.mean([m.GetNumHeavyAtoms() <= 38 for m in mols]) >= 0.95
    assert np.mean([chem.qed(m) for m in mols]) >= 0.5  # ZINC250k's mean QED is 0.73


# the model card: tests/test_shipped.py checks every shipped model's card (command, data, seed, versions)


def test_models_command_names_the_property_head():
    import json

    from click.testing import CliRunner

    from molvae.cli import main

    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    heads = {i["name"]: i["property_head"] for i in json.loads(result.stdout)}
    assert heads[NAME] == ["qed", "plogp"] and heads["moses"] == []
    text = CliRunner().invoke(main, ["models"]).stdout
    block = text[text.index(f"{NAME}  ("):]
    assert "head        qed, plogp" in block


def test_optimize_and_predict_default_to_it_without_a_run(tmp_path, monkeypatch):
    """Without --model and without ./runs, optimization and property prediction use the model with a head;
    the other commands keep the MOSES model."""
    from click.testing import CliRunner

    from molvae.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.smi").write_text("CCO\nc1ccccc1O\n")
    runner = CliRunner()
    r = runner.invoke(main, ["predict", "in.smi"])
    assert r.exit_code == 0, r.output
    assert f"shipped model '{NAME}'" in r.stderr and "qed,plogp" in r.stdout
    r = runner.invoke(main, ["optimize", "--objective", "qed", "--method", "gradient", "--budget", "4",
                             "--n-starts", "2", "--steps", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"shipped model '{NAME}'" in r.stderr
    assert find_model(None)[1] == "shipped model 'moses'"
