"""The shipped optimization model ``zinc250k`` (``molvae/models/zinc250k.pt``): a ZINC250k VAE with a
QED + pLogP property head, what ``molvae optimize --model zinc250k`` and the optimization scripts use."""

from __future__ import annotations

import importlib.util
import re
import shlex
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

    The shipped model measured R² 0.710 here (0.770 on 2,000 test-split molecules); issue #15 asks 0.8, which
    this model does not reach: with β = 1 its μ holds about 25 nats, and an MLP refitted on frozen μ of 40,000
    training molecules does no better (0.75). The floor guards what it does, not the goal.
    """
    from molvae.optimize.head import predict_properties

    smiles = pd.read_csv(TEST_MOLECULES)["smiles"].tolist()
    assert len(smiles) == 200
    pred = predict_properties(model, smiles)
    assert (pred["reason"] == "").all(), pred.loc[pred["reason"] != "", "reason"].tolist()
    true = np.array([chem.qed(chem.to_mol(s)) for s in smiles])
    resid = ((pred["qed"].to_numpy() - true) ** 2).sum()
    r2 = 1 - resid / ((true - true.mean()) ** 2).sum()
    assert r2 >= 0.68, r2


def test_bo_on_qed_beats_its_initial_design(model):
    """100 oracle calls of BO: the best molecule it proposed after the initial design scores above every
    molecule of that design."""
    from molvae.optimize import optimize

    res = optimize(model, "qed", method="bo", budget=100, seed=0)
    log = res.log[res.log["charged"].astype(bool)]
    assert len(log) == 100
    init = log[log["method"] == "bo-init"]
    searched = log[log["method"] != "bo-init"]
    assert len(init) >= 10 and len(searched) >= 10
    assert searched["score"].max() > init["score"].max(), (searched["score"].max(), init["score"].max())


def test_samples_are_valid_zinc_like_molecules(model):
    table = model.sample(100, seed=0)
    assert table["valid"].all()
    mols = [chem.to_mol(s) for s in table["smiles"]]
    assert np.mean([m.GetNumHeavyAtoms() <= 38 for m in mols]) >= 0.95
    assert np.mean([chem.qed(m) for m in mols]) >= 0.5  # ZINC250k's mean QED is 0.73


# ---------------------------------------------------------------------------- the model card
def _card_section() -> str:
    text = CARD.read_text(encoding="utf-8")
    match = re.search(rf"^## {NAME}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"the model card has no '## {NAME}' section"
    return match.group(1)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_card_command_is_what_the_shipped_model_records(monkeypatch):
    from molvae.cli.train import _MAP, train_cmd
    from molvae.train import RESUME_CHANGEABLE

    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", _card_section(), flags=re.S)
    commands = [b for b in blocks if "scripts/train_zinc.py" in b]
    assert commands, "the card has no code block with the scripts/train_zinc.py command"
    argv = shlex.split(commands[0].replace("\\\n", " "))
    assert argv[:2] == ["python", "scripts/train_zinc.py"]
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    ours, theirs = _script("train_moses").split_argv(argv[2:])
    assert "--seed" in ours
    params = train_cmd.make_context("train", ["data.csv", *theirs]).params
    data = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    stored = {"model": data["model_config"], "train": data["train_config"]}
    assert stored["train"]["seed"] == int(ours[ours.index("--seed") + 1])
    checked = 0
    for key, value in params.items():
        if value is None or key not in _MAP:
            continue
        table, field = _MAP[key]
        if field in RESUME_CHANGEABLE:  # how it ran (threads, time limit), which a --resume may change
            continue
        want = tuple(value) if isinstance(value, (list, tuple)) else value
        got = tuple(stored[table][field]) if isinstance(stored[table][field], list) else stored[table][field]
        assert got == want, (key, value, stored[table][field])
        checked += 1
    assert checked >= 5
    section = _card_section()
    for needle in ("ZINC250k", "Seed", "CPU", "wall time", "molvae 0.", f"{data['metadata']['n_input']:,}"):
        assert needle in section, needle


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
