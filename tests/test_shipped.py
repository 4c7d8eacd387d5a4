"""The model that ships with molvae (``molvae/models/moses-small.pt``), its card and ``molvae models``."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import selfies as sf
import torch
from click.testing import CliRunner

import molvae.core
from molvae import MolVAE, Vocabulary, chem
from molvae.checkpoint import FORMAT_NAME
from molvae.cli import main
from molvae.cli.models import describe_model
from molvae.core import DEFAULT_SHIPPED, SHIPPED_MODELS_DIR, find_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_MODELS_DIR / f"{DEFAULT_SHIPPED}.pt"
CARD = SHIPPED_MODELS_DIR / "README.md"

needs_shipped = pytest.mark.skipif(
    not SHIPPED.is_file(),
    reason=f"{SHIPPED} not there yet: it is added when the MOSES training run (scripts/train_moses.py) finishes")
needs_card = pytest.mark.skipif(not CARD.is_file(), reason=f"model card {CARD} not written yet")


@pytest.fixture(scope="module")
def shipped() -> MolVAE:
    torch.set_num_threads(2)
    return MolVAE.load(DEFAULT_SHIPPED)


@pytest.fixture(scope="module")
def samples(shipped):
    return shipped.sample(200, seed=0)


# ---------------------------------------------------------------------------- the shipped file
@needs_shipped
def test_shipped_file_loads_weights_only_and_is_small():
    data = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert data["format"] == FORMAT_NAME
    assert isinstance(data["state_dict"], dict) and data["state_dict"]
    assert all(isinstance(t, torch.Tensor) for t in data["state_dict"].values())
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024


@needs_shipped
def test_shipped_model_is_found_by_name_and_by_default(tmp_path, monkeypatch):
    assert find_model(DEFAULT_SHIPPED)[0] == SHIPPED
    monkeypatch.chdir(tmp_path)  # no ./runs here
    path, how = find_model(None)
    assert path == SHIPPED and "shipped" in how


@needs_shipped
def test_shipped_samples_are_valid_and_unique(samples):
    assert len(samples) == 200
    assert samples["valid"].all(), samples.loc[~samples["valid"], "selfies"].head().tolist()
    assert all(chem.to_mol(s) is not None for s in samples["smiles"])
    assert samples["smiles"].nunique() >= 0.95 * 200


@needs_shipped
def test_shipped_samples_look_like_the_training_set(shipped):
    """A cheap proxy of sample quality, so a regression of the default model fails CI.

    500 samples from the default prior (seed 0) against the shipped MOSES sample (data/). The default
    model measured Filters 0.800, mean SA 3.08 (training molecules 2.43) and 0.948 without a ring over
    8 atoms; the floors below are those figures less about three binomial standard deviations (bf16
    sampling differs slightly between CPUs). They are short of issue #14's goal (Filters 0.9, SA within
    0.5, 0.98): the model does not reach it yet (see its card). ``moses-small`` fails all three.
    """
    import numpy as np
    import pandas as pd

    from molvae.metrics.filters import passes_filters

    table = shipped.sample(500, seed=0)
    mols = [chem.to_mol(s) for s in table["smiles"]]
    assert all(m is not None for m in mols)
    filters = np.mean([passes_filters(m) for m in mols])
    sa = np.mean([chem.synthetic_accessibility(m) for m in mols])
    reference = pd.read_csv(ROOT / "data" / "moses_sample.csv").iloc[:1000, 0]
    sa_train = np.mean([chem.synthetic_accessibility(chem.to_mol(s)) for s in reference])
    no_macrocycle = np.mean([chem.largest_ring(m) <= 8 for m in mols])
    assert filters >= 0.75, filters
    assert abs(sa - sa_train) <= 0.85, (sa, sa_train)
    assert no_macrocycle >= 0.92, no_macrocycle


@needs_shipped
def test_recorded_vocabulary_decodes_the_samples(samples):
    data = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    vocab = Vocabulary.from_list(data["vocab"])
    for smiles, selfies in zip(samples["smiles"], samples["selfies"]):
        tokens = list(sf.split_selfies(selfies))
        assert vocab.unknown(tokens) == [], selfies
        ids = vocab.encode(tokens)
        assert vocab.decode_selfies(ids) == selfies
        assert chem.selfies_to_canonical(vocab.decode_selfies(ids)) == smiles


@needs_shipped
def test_generate_without_model_uses_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["generate", "--n", "30", "--seed", "1", "--out", "gen.csv"])
    assert result.exit_code == 0, result.output
    assert f"shipped model '{DEFAULT_SHIPPED}'" in result.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "gen.csv")
    assert len(table) == 30 and table["valid"].all()


@needs_shipped
def test_models_command_lists_the_shipped_model():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    infos = json.loads(result.stdout)
    (info,) = [i for i in infos if i["name"] == DEFAULT_SHIPPED]
    data = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert info["n_parameters"] == sum(t.numel() for t in data["state_dict"].values())
    assert info["size_bytes"] == SHIPPED.stat().st_size
    assert info["epochs"] == len(data["history"]) and info["epochs"] >= 1


# ---------------------------------------------------------------------------- the model card
#: Each shipped model, the script that made it (its card's command) and words its card must hold.
CARDS = {
    DEFAULT_SHIPPED: ("train_moses", ("MOSES", "MIT licence")),
    "moses-small": ("train_moses", ("MOSES", "MIT licence")),
    "zinc250k": ("train_zinc", ("ZINC250k", "MIT licence")),
}
each_card = pytest.mark.parametrize("name", sorted(CARDS))


def _card_section(name: str = DEFAULT_SHIPPED) -> str:
    """The part of the model card under ``## name`` (up to the next ``## `` heading)."""
    text = CARD.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"the model card has no '## {name}' section"
    return match.group(1)


def _card_command(name: str) -> list[str]:
    """The card's command that made ``name``: its first code block that runs the model's training script."""
    script = CARDS[name][0]
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", _card_section(name), flags=re.S)
    commands = [b for b in blocks if f"scripts/{script}.py" in b]
    assert commands, f"the card of {name} has no code block with the scripts/{script}.py command"
    argv = shlex.split(commands[0].replace("\\\n", " "))
    assert argv[:2] == ["python", f"scripts/{script}.py"]
    return argv


def _script_module(script: str):
    spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))  # the scripts import their siblings (optim_common, train_moses)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def _card_args(name: str):
    """``(args, params)``: the card command's script options (parsed by the script's own parser; exits on an
    unknown one) and its `molvae train` options (parsed by the CLI; click.UsageError on a bad one)."""
    from molvae.cli.train import train_cmd

    script = _script_module(CARDS[name][0])
    ours, theirs = script.split_argv(_card_command(name)[2:])
    return script.build_parser().parse_args(ours), train_cmd.make_context("train", ["data.csv", *theirs]).params


@needs_card
@each_card
def test_card_command_parses(name):
    args, params = _card_args(name)
    assert params["epochs"] is not None
    assert any(name.split("-")[0] in str(v) for v in vars(args).values()), vars(args)  # the model's data file


@needs_card
@each_card
def test_card_command_matches_the_shipped_model(name):
    """Every setting in the card's command is what the shipped model file records."""
    from molvae.cli.train import _MAP

    path = SHIPPED_MODELS_DIR / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not there yet")
    args, params = _card_args(name)
    data = torch.load(path, map_location="cpu", weights_only=True)
    stored = {"model": data["model_config"], "train": data["train_config"]}
    assert stored["train"]["seed"] == args.seed
    n_input = data["metadata"]["n_input"]
    if getattr(args, "n_molecules", 0):  # a seeded subset; 0 = the whole file
        assert n_input == args.n_molecules
    assert f"{n_input:,}" in _card_section(name), "the card does not say how many molecules were read"
    checked = 0
    for key, value in params.items():
        if value is None or key not in _MAP:
            continue
        table, field = _MAP[key]
        got = stored[table][field]
        assert (tuple(got) if isinstance(got, list) else got) == (tuple(value) if isinstance(value, list) else value), \
            (key, value, got)
        checked += 1
    assert checked >= 5


@needs_card
@each_card
def test_card_names_data_licence_seed_hardware_and_version(name):
    text = _card_section(name)
    for needle in (*CARDS[name][1], "Seed", "CPU", "wall time", "molvae 0."):
        assert needle in text, needle


@needs_card
@needs_shipped
def test_card_metrics_are_the_benchmark_output():
    """The card's figures are those the benchmark wrote beside the model (when it has been run)."""
    path = SHIPPED.with_name(f"{DEFAULT_SHIPPED}.metrics.json")
    if not path.is_file():
        pytest.skip(f"{path.name} not there yet: benchmarks/moses_benchmark.py has not been run on the shipped model")
    record = json.loads(path.read_text(encoding="utf-8"))
    text = _card_section()
    assert record["n_samples"] == 30000
    for name in ("valid", "unique@10k", "FCD/Test", "SNN/Test", "IntDiv", "Filters", "Novelty"):
        value = record["row"][name]
        assert value is not None, name
        assert f"{value:.3f}" in text, (name, value)


# ---------------------------------------------------------------------------- listing, any model
def test_models_command_lists_a_model_in_the_models_folder(tmp_path, monkeypatch, tiny_run):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_run.run_dir / "model.pt", folder / "tiny.pt")
    (folder / "tiny.metrics.json").write_text(json.dumps({"n_samples": 10, "row": {"valid": 1.0, "FCD/Test": 9.5}}))
    monkeypatch.setattr(molvae.core, "SHIPPED_MODELS_DIR", folder)
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.stdout and "FCD/Test 9.500" in result.stdout
    info = describe_model("tiny", folder / "tiny.pt")
    assert info["n_parameters"] == tiny_run.model.net.n_parameters()
    assert info["epochs"] == len(tiny_run.history)
    assert info["training_data"] == "small.csv" and info["n_molecules"] == len(tiny_run.prepared)
    # and --model NAME selects it
    assert find_model("tiny")[0] == folder / "tiny.pt"


def test_models_command_with_nothing_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(molvae.core, "SHIPPED_MODELS_DIR", tmp_path / "none")
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    assert "no shipped models" in result.stderr


def test_unknown_model_name_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["generate", "--n", "3", "--model", "no-such-model"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no-such-model: no such model file") and "Traceback" not in result.output
