"""Untrusted model files: pickled code is refused without running it; corrupt, truncated, foreign,
newer-format and inconsistent files are refused with a message that says which and why."""

from __future__ import annotations

import os
import random
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from molvae import MolVAE, train
from molvae.checkpoint import FORMAT_VERSION, load_checkpoint
from molvae.cli import main
from molvae.errors import CheckpointError


class _CreatesFile:
    """Unpickling this object calls ``open(target, 'w')``: it creates a file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsShell:
    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))



@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """A preprocessing cache of this test's own: no state shared with other runs or the user's cache."""
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(tmp_path / "molvae-cache"))

def _payload(model: MolVAE) -> dict:
    return load_checkpoint(model.path) if model.path else model.payload()


@pytest.fixture
def model_file(tiny_model, tmp_path) -> Path:
    return tiny_model.save(tmp_path / "good.pt")


def _cli_generate(model: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["generate", "--n", "3", "--model", str(model), "--out", str(tmp_path / "g.csv")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [l for l in res.output.splitlines() if l.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


@pytest.mark.parametrize("how", ["torch.save (zip)", "raw pickle", "os.system"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, how, model_file):
    target = tmp_path / "created_by_unpickling"
    evil = tmp_path / "evil.pt"
    if how == "raw pickle":
        evil.write_bytes(pickle.dumps({"format": "molvae-model", "x": _CreatesFile(target)}, protocol=2))
    elif how == "os.system":
        torch.save({"format": "molvae-model", "x": _RunsShell(target)}, evil)
    else:
        # A real model file with one poisoned entry: everything else is legitimate.
        data = load_checkpoint(model_file)
        data["metadata"] = {"note": _CreatesFile(target)}
        torch.save(data, evil)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused: the file contains pickled Python objects"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused"):
        MolVAE.load(evil)
    line = _cli_generate(evil, tmp_path)
    assert str(evil) in line and "refused" in line
    assert not target.exists()
    assert not (tmp_path / "g.csv").exists()


def test_newer_pickle_protocol_is_refused_too(tmp_path):
    """torch's safe unpickler stops at the first opcode it does not allow, before any global is looked up."""
    target = tmp_path / "created_by_unpickling"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _CreatesFile(target)}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(CheckpointError, match="not loaded"):
        MolVAE.load(evil)
    assert not target.exists()


def test_truncated_file(tmp_path, model_file):
    raw = model_file.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 20):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt model file") as info:
            MolVAE.load(bad)
        assert str(bad) in str(info.value)
    assert "truncated or corrupt" in _cli_generate(bad, tmp_path)


def test_random_bytes_and_empty_file(tmp_path):
    # Seeded junk of several lengths. Seeds 45 and 47 (8 bytes) once made torch's legacy unpickler
    # raise struct.error and IndexError, which escaped as tracebacks; every seed must give the
    # same clear error.
    junk = tmp_path / "junk.pt"
    for seed in range(300):
        rng = random.Random(seed)
        junk.write_bytes(rng.randbytes(rng.choice([1, 2, 8, 64, 512, 4096])))
        with pytest.raises(CheckpointError, match="corrupt model file"):
            MolVAE.load(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="model file is empty"):
        MolVAE.load(empty)


def test_corrupt_bytes_inside_the_archive(tmp_path, model_file):
    raw = bytearray(model_file.read_bytes())
    # Flip bytes in the middle of the pickled structure/tensor data.
    for i in range(200, 260):
        raw[i] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt|refused|not a molvae"):
        MolVAE.load(bad)


def test_newer_format_version(tmp_path, model_file):
    data = load_checkpoint(model_file)
    data["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(data, newer)
    with pytest.raises(CheckpointError, match=rf"format {FORMAT_VERSION + 1} is newer than this molvae reads"):
        MolVAE.load(newer)
    assert "upgrade molvae" in _cli_generate(newer, tmp_path)


def test_foreign_and_incomplete_files(tmp_path, model_file):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a molvae model file"):
        MolVAE.load(foreign)
    data = load_checkpoint(model_file)
    del data["vocab"]
    incomplete = tmp_path / "novocab.pt"
    torch.save(data, incomplete)
    with pytest.raises(CheckpointError, match="lacks 'vocab'"):
        MolVAE.load(incomplete)
    data = load_checkpoint(model_file)
    del data["format_version"]
    torch.save(data, incomplete)
    with pytest.raises(CheckpointError, match="no format version"):
        MolVAE.load(incomplete)


def _modified(model_file: Path, tmp_path: Path, name: str, change) -> Path:
    data = load_checkpoint(model_file)
    change(data)
    out = tmp_path / name
    torch.save(data, out)
    return out


@pytest.mark.parametrize("name, change, needle", [
    ("shape", lambda d: d["state_dict"].__setitem__("to_mu.weight", torch.zeros(3, 3)),
     r"weight to_mu.weight has shape \(3, 3\), expected"),
    ("vocab_longer", lambda d: d["vocab"].append("[Xx]"), r"weight embedding.weight has shape"),
    ("vocab_shorter", lambda d: d["vocab"].pop(), r"has shape"),
    ("latent_dim", lambda d: d["model_config"].__setitem__("latent_dim", 7), r"has shape"),
    # refused by comparing shapes on the meta device, without allocating the 10^5-wide network
    ("huge_config", lambda d: d["model_config"].__setitem__("hidden_dim", 10**5), r"has shape"),
    ("absurd_config", lambda d: d["model_config"].__setitem__("hidden_dim", 10**9),
     r"has shape|does not describe a valid network"),
    ("missing_weight", lambda d: d["state_dict"].pop("output.bias"), r"missing \['output.bias'\]"),
    ("extra_weight", lambda d: d["state_dict"].__setitem__("backdoor", torch.zeros(1)), r"unexpected \['backdoor'\]"),
    ("nan_weight", lambda d: d["state_dict"]["output.bias"].__setitem__(0, float("nan")), r"NaN or infinite"),
    ("int_weight", lambda d: d["state_dict"].__setitem__("output.bias", d["state_dict"]["output.bias"].long()),
     r"expected a floating-point tensor"),
    ("vocab_not_strings", lambda d: d.__setitem__("vocab", [1, 2, 3]), r"invalid stored config or vocabulary"),
    ("vocab_no_specials", lambda d: d.__setitem__("vocab", d["vocab"][4:]), r"invalid stored config or vocabulary"),
    ("config_unknown_key", lambda d: d["model_config"].__setitem__("exec", "rm -rf /"), r"unknown ModelConfig key"),
    ("config_bad_value", lambda d: d["model_config"].__setitem__("latent_dim", -1), r"must be a positive integer"),
    ("state_not_dict", lambda d: d.__setitem__("state_dict", [1, 2]), r"state_dict is not a mapping"),
])
def test_inconsistent_model_is_refused(tmp_path, model_file, name, change, needle):
    bad = _modified(model_file, tmp_path, f"{name}.pt", change)
    with pytest.raises(CheckpointError, match=needle) as info:
        MolVAE.load(bad)
    assert str(bad) in str(info.value)


def test_cli_names_the_inconsistent_file(tmp_path, model_file):
    bad = _modified(model_file, tmp_path, "shape.pt",
                    lambda d: d["state_dict"].__setitem__("to_mu.weight", torch.zeros(3, 3)))
    line = _cli_generate(bad, tmp_path)
    assert str(bad) in line and "to_mu.weight" in line


def test_model_file_is_written_atomically_with_normal_permissions(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_resume_refuses_a_corrupt_or_foreign_checkpoint(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    ckpt = run / "checkpoint.pt"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(resume=run)
    # a plain model file (no training state) cannot be resumed
    shutil.copy(run / "model.pt", ckpt)
    with pytest.raises(CheckpointError, match="no training state"):
        train(resume=run)
    # a checkpoint whose optimizer state does not fit the model
    data = load_checkpoint(tiny_run.run_dir / "checkpoint.pt")
    data["training_state"]["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(data, ckpt)
    with pytest.raises(CheckpointError, match="training state is incomplete or does not match"):
        train(resume=run)
    res = CliRunner().invoke(main, ["train", "--resume", str(run), "--no-progress"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(ckpt) in res.output
