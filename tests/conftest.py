"""Shared fixtures: tiny real data and a tiny real model trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from molvae import ModelConfig, TrainConfig, train
from molvae.cli import main

DATA = Path(__file__).parent / "data"

TINY_MODEL = ModelConfig(embedding_dim=16, hidden_dim=16, decoder_hidden_dim=32, latent_dim=4)


def cli(*args):
    """Run the molvae CLI in-process; fail on a traceback or an uncaught exception."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"uncaught {type(res.exception).__name__}: {res.exception}\n{res.output}")
    return res


def one_error(res, *needles: str) -> str:
    """The single ``Error:`` line of a failed command (exit code 1), holding every needle."""
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tiny_train_config(**changes) -> TrainConfig:
    """Training settings for tests: a few quick epochs, no progress bar."""
    base = dict(epochs=3, batch_size=32, seed=0, kl_warmup_epochs=2, recon_eval_size=50,
                show_progress=False, device="cpu")
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Keep the preprocessing cache of test runs out of the user's ~/.cache/molvae."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MOLVAE_CACHE_DIR", str(tmp_path_factory.mktemp("molvae_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def small_csv() -> Path:
    """200 drug-like SMILES from the shipped MOSES sample (column ``smiles``)."""
    return DATA / "small.csv"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_csv):
    """A tiny model (hidden 16, latent 4) trained for 3 epochs on ``small.csv``; returns the TrainResult."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return train(small_csv, out, model_config=TINY_MODEL, train_config=tiny_train_config(),
                 runs_dir=out.parent)


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    """The trained tiny :class:`molvae.MolVAE` (on the CPU)."""
    return tiny_run.model


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
