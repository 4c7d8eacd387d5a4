"""The Trainer's resumable state: checkpoints written before the Trainer existed still resume (on any CPU),
TrainState is the checkpoint's training_state, and a resumed run keeps what it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from molvae import train
from molvae.checkpoint import load_checkpoint

from conftest import DATA, TINY_MODEL, tiny_train_config

# checkpoint.pt of a run stopped after the last step of epoch 1 (before its validation), written by molvae at
# commit ca745dc, before the training loop became a Trainer: tiny model, small.csv, the settings below.
OLD_RUN = DATA / "resume_before_trainer"
OLD_SETTINGS = dict(epochs=2, batch_size=16, checkpoint_every=4, word_dropout=0.1, seed=3)
# every key a training_state has held since resumable checkpoints (the live runs' checkpoints have these)
STATE_KEYS = ["optimizer", "scaler", "epoch", "batch", "global_step", "best_val", "bad_epochs", "rng", "data_path",
              "data_hash", "smiles_column", "property_columns", "consecutive_bad", "epoch_sums"]


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns=["epoch_time_s", "elapsed_s"])


def test_train_state_is_the_checkpoints_training_state():
    from molvae.train import TrainState

    stored = load_checkpoint(OLD_RUN / "checkpoint.pt")["training_state"]
    assert list(stored) == STATE_KEYS
    state = TrainState.from_dict(stored)
    assert (state.epoch, state.batch, state.global_step) == (0, 12, 12)
    assert state.epoch_sums is not None and state.epoch_sums.n == 180
    again = state.to_dict()
    assert list(again) == STATE_KEYS
    for key in STATE_KEYS:
        if key == "epoch_sums":
            for k, v in stored[key].items():
                assert torch.equal(v, again[key][k]) if torch.is_tensor(v) else v == again[key][k], k
        elif key == "rng":
            assert torch.equal(stored[key]["torch"], again[key]["torch"])
            assert stored[key]["python"] == again[key]["python"] and stored[key]["numpy"] == again[key]["numpy"]
        elif key != "optimizer":
            assert again[key] == stored[key], key
    assert TrainState(epoch=1, batch=0, epoch_sums=state.epoch_sums).to_dict()["epoch_sums"] is None


@pytest.mark.slow
def test_a_checkpoint_written_before_the_trainer_resumes(tmp_path, small_csv):
    """The old checkpoint was written on another CPU, whose kernels round differently in the last bits, so the
    weights are compared to a tolerance: resuming with a wrong RNG state, optimizer state or batch position moves
    some weight by at least 7e-3 here, the other CPU's rounding by about 3e-5. Counts are compared exactly."""
    torch.set_num_threads(1)
    cfg = tiny_train_config(**OLD_SETTINGS)
    full = train(small_csv, tmp_path / "full", model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old)
    # the data is passed again: the checkpoint names the file where it was when the checkpoint was written
    resumed = train(small_csv, resume=old, runs_dir=tmp_path)
    expected, got = full.model.net.state_dict(), resumed.model.net.state_dict()
    assert list(got) == list(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-3, msg=lambda m, k=k: f"{k}: {m}")
    steps = [load_checkpoint(run / "checkpoint.pt")["training_state"]["global_step"] for run in (tmp_path / "full", old)]
    assert steps[0] == steps[1]
    want, have = _history(full.run_dir), _history(old)
    assert list(have.columns) == list(want.columns) and len(have) == len(want)
    exact = [c for c in want.columns if not pd.api.types.is_float_dtype(want[c])]
    pd.testing.assert_frame_equal(have[exact], want[exact], check_exact=True)
    pd.testing.assert_frame_equal(have.drop(columns=exact), want.drop(columns=exact), check_exact=False, rtol=1e-3)


def test_resume_keeps_the_time_the_run_was_created(tmp_path, small_csv):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    train(small_csv, run, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1), runs_dir=tmp_path)
    created = json.loads((run / "config.json").read_text())["metadata"]["created"]
    stamp = "2001-02-03T04:05:06+00:00"  # as if the run had started long ago
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["metadata"]["created"] == created
    ckpt["metadata"]["created"] = stamp
    torch.save(ckpt, run / "checkpoint.pt")
    train(resume=run, resume_changes={"epochs": 2}, runs_dir=tmp_path)
    assert json.loads((run / "config.json").read_text())["metadata"]["created"] == stamp
    for name in ("checkpoint.pt", "model.pt"):
        assert load_checkpoint(run / name)["metadata"]["created"] == stamp, name
