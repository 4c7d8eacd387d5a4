"""Nothing lost, nothing mixed up (issue 17, cases 1-5): run folders that cannot be clobbered, a lock
against two writers, runs/LATEST only at a run with a model, outputs written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from molvae import train
from molvae.core import find_model
from molvae.errors import RunFolderError
from molvae.train import RunLock

from conftest import TINY_MODEL, cli, one_error, tiny_train_config

TINY = ["--epochs", "1", "--batch-size", "32", "--embedding-dim", "8", "--hidden-dim", "8",
        "--decoder-hidden-dim", "8", "--latent-dim", "2", "--device", "cpu", "--no-progress", "--n-jobs", "1",
        "--threads", "1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class Stop(Exception):
    pass


def stop_in_first_epoch(row):
    raise Stop("simulated crash before the first model.pt")


# ----------------------------------------------------------------------------- 1. no silent overwrite

def test_training_into_an_existing_run_folder_is_refused(tmp_path, small_csv, data_dir):
    torch.set_num_threads(1)
    run = tmp_path / "R"
    assert cli("train", small_csv, "--out", run, *TINY).exit_code == 0
    before = snapshot(run)
    other = tmp_path / "other.csv"
    other.write_text("smiles\n" + "\n".join(["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl"] * 4) + "\n")
    res = cli("train", other, "--out", run, *TINY)
    one_error(res, str(run), "already holds a run", "--overwrite", "--resume")
    assert snapshot(run) == before  # every file of the first run untouched


def test_overwrite_replaces_the_run(tmp_path, small_csv):
    torch.set_num_threads(1)
    run = tmp_path / "R"
    assert cli("train", small_csv, "--out", run, *TINY).exit_code == 0
    first = json.loads((run / "config.json").read_text())["metadata"]["created"]
    (run / "notes.txt").write_text("mine")  # not molvae's: left alone
    res = cli("train", small_csv, "--out", run, *TINY, "--seed", "3", "--overwrite")
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["seed"] == 3 and cfg["metadata"]["created"] >= first
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / ".molvae.lock").exists()


def test_an_empty_out_folder_is_fine_and_a_file_is_refused(tmp_path, small_csv):
    torch.set_num_threads(1)
    (tmp_path / "empty").mkdir()
    assert cli("train", small_csv, "--out", tmp_path / "empty", *TINY).exit_code == 0
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        train(small_csv, tmp_path / "afile", model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1))
    assert (tmp_path / "afile").read_text() == "x"


# ----------------------------------------------------------------------------- 2. no mixed folder

def test_an_interrupted_overwrite_leaves_no_old_model_beside_new_files(tmp_path, small_csv):
    torch.set_num_threads(1)
    run = tmp_path / "R"
    train(small_csv, run, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1), runs_dir=tmp_path)
    with pytest.raises(Stop):
        train(small_csv, run, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=2, seed=5),
              runs_dir=tmp_path, on_epoch=stop_in_first_epoch, overwrite=True)
    assert not (run / "model.pt").exists() and not (run / "history.csv").exists()
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 5
    # so generate cannot pick up the old model without a word
    res = cli("generate", "--model", run, "--n", "2")
    one_error(res, "no model.pt")


def test_resume_and_overwrite_together_are_refused(tmp_path, small_csv):
    res = cli("train", small_csv, "--resume", tmp_path, "--overwrite")
    assert res.exit_code == 2 and "only one of them" in res.output


# ----------------------------------------------------------------------------- 3. a lock

def test_a_second_writer_of_a_run_folder_fails_with_one_line(tmp_path, small_csv):
    run = tmp_path / "R"
    run.mkdir()
    lock = RunLock(run).acquire()  # another `molvae train` holds the folder
    try:
        res = cli("train", small_csv, "--out", run, *TINY)
        one_error(res, str(run), "another molvae process", "is writing this run folder")
        with pytest.raises(RunFolderError, match="another molvae process") as info:
            train(small_csv, run, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1))
        assert isinstance(info.value.__cause__, BlockingIOError)  # kept for MOLVAE_DEBUG=1's traceback
    finally:
        lock.release()
    assert list(run.iterdir()) == []
    torch.set_num_threads(1)
    assert cli("train", small_csv, "--out", run, *TINY).exit_code == 0  # free again


# ----------------------------------------------------------------------------- 4. LATEST

def test_latest_moves_only_to_a_run_with_a_model(tmp_path, small_csv, monkeypatch):
    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    good = train(small_csv, None, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1), runs_dir=runs)
    assert (runs / "LATEST").read_text().strip() == good.run_dir.name
    with pytest.raises(Stop):
        train(small_csv, None, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1, seed=1),
              runs_dir=runs, on_epoch=stop_in_first_epoch)
    assert len([p for p in runs.iterdir() if p.is_dir()]) == 2
    assert (runs / "LATEST").read_text().strip() == good.run_dir.name
    monkeypatch.chdir(tmp_path)
    path, how = find_model(None)
    assert path.resolve() == (good.run_dir / "model.pt").resolve() and "latest run" in how


# ----------------------------------------------------------------------------- 5. outputs are atomic

def test_generate_with_a_bad_temperature_keeps_the_existing_output(tmp_path, tiny_run):
    keep = tmp_path / "keep.csv"
    keep.write_text("smiles\nCCO\n")
    for t in ("inf", "nan"):
        res = cli("generate", "--model", tiny_run.run_dir, "-t", t, "--out", keep, "--n", "3")
        assert res.exit_code == 2 and "--temperature" in res.output, res.output
        assert keep.read_text() == "smiles\nCCO\n"


def test_a_failing_command_never_truncates_its_output(tmp_path, tiny_run):
    keep = tmp_path / "keep.csv"
    keep.write_text("smiles\nCCO\n")
    # generate fails after the model is loaded (the --novel-vs file has no SMILES column)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = cli("generate", "--model", tiny_run.run_dir, "--out", keep, "--n", "3", "--novel-vs", bad)
    assert res.exit_code == 1
    assert keep.read_text() == "smiles\nCCO\n"
    # and a successful one replaces it whole, leaving no temporary file behind
    res = cli("generate", "--model", tiny_run.run_dir, "--out", keep, "--n", "3", "--seed", "0")
    assert res.exit_code == 0, res.output
    assert len(keep.read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "keep.csv"]


def test_passing_over_a_latest_run_without_a_model_is_said(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "broken").mkdir(parents=True)
    (runs / "LATEST").write_text("broken\n")
    monkeypatch.chdir(tmp_path)
    path, how = find_model(None)
    assert "shipped model" in how and "broken, which holds no model.pt" in how
