"""Crash safety: SIGKILL and resume give the same run bit for bit; Ctrl-C saves and exits cleanly;
non-finite steps are skipped, counted and eventually stop the run with its last good checkpoint kept."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from molvae import train
from molvae.checkpoint import load_checkpoint
from molvae.model import VAE
from molvae.train import TrainingDiverged

from conftest import TINY_MODEL, tiny_train_config

# A tiny model trained by the CLI: 180 training molecules in batches of 16 = 12 steps per epoch.
TRAIN_ARGS = ["--epochs", "2", "--batch-size", "16", "--embedding-dim", "16", "--hidden-dim", "16",
              "--decoder-hidden-dim", "32", "--latent-dim", "4", "--kl-warmup", "2", "--word-dropout", "0.1",
              "--device", "cpu", "--threads", "1", "--seed", "7", "--checkpoint-every", "5",
              "--no-progress", "--n-jobs", "1"]
TIME_COLUMNS = ["epoch_time_s", "elapsed_s"]



@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """A preprocessing cache of this test's own: no state shared with other runs or the user's cache."""
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(tmp_path / "molvae-cache"))

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MOLVAE_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "molvae", *args]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns=TIME_COLUMNS)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name}: weight {k} differs"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training ended (rc {proc.returncode}) before {path.name} appeared:\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, small_csv):
    full = tmp_path / "full"
    res = subprocess.run(_cli("train", str(small_csv), "--out", str(full), *TRAIN_ARGS), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", str(small_csv), "--out", str(killed), *TRAIN_ARGS), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(killed / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(killed / "checkpoint.pt")["training_state"]
    # Killed before the end: the resume has work left to do.
    assert (state["epoch"], state["batch"]) < (2, 0)

    res = subprocess.run(_cli("train", "--resume", str(killed), "--no-progress"), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    _assert_same_weights(full / "checkpoint.pt", killed / "checkpoint.pt")
    _assert_same_weights(full / "model.pt", killed / "model.pt")
    pd.testing.assert_frame_equal(_history(full), _history(killed), check_exact=True)
    assert len(_history(killed)) == 2
    # No temporary files of interrupted atomic writes are left behind.
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_resume_from_every_checkpoint_position(tmp_path, small_csv, monkeypatch):
    """In-process: the run folder as it was after each kind of checkpoint (early and late in an epoch, at the
    last step before validation, at an epoch's end, mid-way through the last epoch) resumes to the full run."""
    import shutil

    from molvae.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = tiny_train_config(epochs=2, batch_size=16, checkpoint_every=4, word_dropout=0.1, seed=3)
    full_dir = tmp_path / "full"
    # 180 training molecules in batches of 16: 12 steps per epoch, checkpoints every 4 steps and at each end
    wanted = {(0, 4), (0, 8), (0, 12), (1, 0), (1, 8)}
    snapshots: dict[tuple[int, int], Path] = {}
    save = Trainer.save

    def save_and_copy_the_folder(self, epoch, batch):
        save(self, epoch, batch)
        if self.run == full_dir and (epoch, batch) in wanted:  # the folder as a kill right now would leave it
            snapshots[epoch, batch] = Path(shutil.copytree(
                full_dir, tmp_path / f"at-{epoch}-{batch}", ignore=shutil.ignore_patterns(".molvae.lock")))

    monkeypatch.setattr(Trainer, "save", save_and_copy_the_folder)
    full = train(small_csv, full_dir, model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    assert set(snapshots) == wanted
    for (epoch, batch), part in sorted(snapshots.items()):
        state = load_checkpoint(part / "checkpoint.pt")["training_state"]
        assert (state["epoch"], state["batch"]) == (epoch, batch)
        assert (state["epoch_sums"] is None) == (batch == 0)
        resumed = train(resume=part, runs_dir=tmp_path)
        for k, v in full.model.net.state_dict().items():
            assert torch.equal(v, resumed.model.net.state_dict()[k]), (epoch, batch, k)
        _assert_same_weights(full_dir / "checkpoint.pt", part / "checkpoint.pt")
        _assert_same_weights(full_dir / "model.pt", part / "model.pt")
        pd.testing.assert_frame_equal(_history(full_dir), _history(part), check_exact=True)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, small_csv):
    run = tmp_path / "run"
    args = list(TRAIN_ARGS)
    args[args.index("--epochs") + 1] = "200"  # long enough to be interrupted
    proc = subprocess.Popen(_cli("train", str(small_csv), "--out", str(run), *args), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (1, 130), err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("Error")]
    assert len(lines) == 1 and "interrupted" in lines[0] and f"--resume {run}" in lines[0], err
    state = load_checkpoint(run / "checkpoint.pt")["training_state"]
    assert state["global_step"] >= 5 and state["epoch"] < 200
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- numerical faults

def _inject(monkeypatch, poison_calls: set[int], corrupt_at: int | None = None):
    """Wrap the real VAE.forward: on the training calls in ``poison_calls`` the loss becomes NaN
    (a NaN enters the graph, so the gradient is NaN too); at ``corrupt_at`` a weight is set to NaN."""
    real = VAE.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if corrupt_at is not None and calls["n"] == corrupt_at:
                with torch.no_grad():
                    self.decoder_rnn.weight_hh_l0[0, 0] = math.nan
        out = real(self, *args, **kwargs)
        if self.training and calls["n"] in poison_calls:
            out.recon = out.recon * torch.tensor(math.nan)
        return out

    monkeypatch.setattr(VAE, "forward", forward)
    return calls


def test_non_finite_steps_are_skipped_and_counted(tmp_path, small_csv, monkeypatch):
    torch.set_num_threads(1)  # 2 threads spin on a busy machine; the result does not depend on it
    _inject(monkeypatch, poison_calls={3, 5, 6, 15})
    cfg = tiny_train_config(epochs=2, batch_size=16, max_bad_steps=3)
    result = train(small_csv, tmp_path / "run", model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert hist["skipped_steps"].tolist() == [3, 1]  # 12 steps per epoch
    assert hist["step"].tolist() == [12, 24]
    assert all(torch.isfinite(p).all() for p in result.model.net.parameters())
    assert hist["train_loss"].map(math.isfinite).all()


def test_consecutive_non_finite_steps_stop_and_keep_last_good_checkpoint(tmp_path, small_csv, monkeypatch):
    torch.set_num_threads(1)  # 2 threads spin on a busy machine; the result does not depend on it
    run = tmp_path / "run"
    # 12 steps per epoch, checkpoints every 5 steps: the weight is poisoned on step 17 (epoch 2).
    _inject(monkeypatch, poison_calls=set(), corrupt_at=17)
    cfg = tiny_train_config(epochs=3, batch_size=16, max_bad_steps=4, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match=r"4 consecutive steps.*last good checkpoint") as info:
        train(small_csv, run, model_config=TINY_MODEL, train_config=cfg, runs_dir=tmp_path)
    assert str(run) in str(info.value)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    ts = ckpt["training_state"]
    assert (ts["epoch"], ts["batch"], ts["global_step"]) == (1, 3, 15)  # last checkpoint before the fault
    # model.pt (best so far) is intact and loadable
    from molvae import MolVAE

    MolVAE.load(run / "model.pt")


def test_cli_reports_divergence_in_one_line(tmp_path, small_csv, monkeypatch):
    from click.testing import CliRunner

    from molvae.cli import main

    _inject(monkeypatch, poison_calls=set(range(1, 1000)))
    res = CliRunner().invoke(main, ["train", str(small_csv), "--out", str(tmp_path / "run"), *TRAIN_ARGS,
                                    "--max-bad-steps", "3"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert "3 consecutive steps with a non-finite loss or gradient" in res.output


# ----------------------------------------------------------------------------- large outputs

def _complete_rows(path: Path) -> tuple[list[list[str]], bool]:
    """The rows of complete lines of a generated CSV, and whether the file ends with a complete line."""
    import csv

    raw = path.read_bytes()
    complete, _, tail = raw.rpartition(b"\n")
    rows = list(csv.reader(complete.decode("utf-8").splitlines()))
    return rows, tail == b""


def _assert_rows_valid(rows: list[list[str]]) -> None:
    assert rows[0] == ["smiles", "selfies", "valid"]
    for row in rows[1:]:
        assert len(row) == 3 and row[2] in ("True", "False") and row[1].startswith("["), row


def _partial_output(out: Path) -> Path | None:
    """The file generate is writing: a temporary file beside ``out`` that replaces it at the end."""
    found = sorted(out.parent.glob(f".{out.stem}.*.tmp{out.suffix}"))
    return found[0] if found else (out if out.exists() else None)


def _start_generation(model: Path, out: Path, *extra: str, session: bool = False) -> subprocess.Popen:
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(_cli("generate", "--n", "1000000", "--model", str(model), "--out", str(out),
                                 "--batch-size", "200", "--seed", "0", "--device", "cpu", "--no-progress", *extra),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=session)
    t0 = time.monotonic()
    while not (_partial_output(out) and _partial_output(out).stat().st_size > 20_000):
        if proc.poll() is not None:
            raise AssertionError(f"generate ended early (rc {proc.returncode}): {proc.communicate()[1]}")
        assert time.monotonic() - t0 < 240, "no output within 240 s"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_ctrl_c_during_generation_leaves_only_complete_rows(tmp_path, tiny_run):
    out = tmp_path / "big.csv"
    proc = _start_generation(tiny_run.run_dir / "model.pt", out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("Error")]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    rows, ends_clean = _complete_rows(out)
    assert ends_clean, "half-written row at the end of the file after a clean exit"
    _assert_rows_valid(rows)
    assert f"holds {len(rows) - 1} complete molecules" in lines[0]
    assert 0 < len(rows) - 1 < 1_000_000


@pytest.mark.slow
def test_sigkill_during_generation_leaves_valid_complete_lines(tmp_path, tiny_run):
    out = tmp_path / "big.csv"
    proc = _start_generation(tiny_run.run_dir / "model.pt", out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # --out itself is never half-written: the rows so far are complete lines in the temporary file
    assert not out.exists()
    partial = _partial_output(out)
    rows, _ = _complete_rows(partial)
    _assert_rows_valid(rows)
    assert len(rows) > 1


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of the group ``pgid`` has exited within ``timeout`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_sigterm_to_the_process_group_keeps_the_complete_rows(tmp_path, tiny_run):
    """``timeout``, SLURM and systemd signal the whole process group, workers included: the workers leave the
    signal to the parent, which writes the complete rows and exits 143."""
    out = tmp_path / "big.csv"
    proc = _start_generation(tiny_run.run_dir / "model.pt", out, "--n-jobs", "2", session=True)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "died" not in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "complete molecules" in lines[0], err
    rows, ends_clean = _complete_rows(out)
    assert ends_clean and len(rows) > 1
    _assert_rows_valid(rows)
    assert _group_gone(proc.pid, 30), "worker processes outlived generate"


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(tmp_path, tiny_run):
    out = tmp_path / "big.csv"
    proc = _start_generation(tiny_run.run_dir / "model.pt", out, "--n-jobs", "2", session=True)
    proc.send_signal(signal.SIGKILL)  # the parent alone, as the out-of-memory killer does
    proc.wait(timeout=60)
    try:
        assert _group_gone(proc.pid, 30), "worker processes outlived their killed parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_optimization_keeps_its_log_and_summary(tmp_path, tiny_run, sig, code):
    """Every oracle call (for a real oracle a docking run or an assay) is kept when a scheduler stops the
    search: the log and the JSON are complete and agree, and the exit code says which signal it was."""
    log, summary = tmp_path / "log.csv", tmp_path / "s.json"
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(_cli("optimize", "--model", str(tiny_run.run_dir / "model.pt"), "--objective", "qed",
                                 "--method", "gradient", "--budget", "100000", "--seed", "0", "--out", str(log),
                                 "--json", str(summary), "--no-progress", "--device", "cpu"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    while not ((part := _partial_output(log)) and part.stat().st_size > 3_000):
        if proc.poll() is not None:
            raise AssertionError(f"optimize ended early (rc {proc.returncode}): {proc.communicate()[1]}")
        assert time.monotonic() - t0 < 240, "no log rows within 240 s"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and f"stopped by {name} after" in errors[0] and "hold everything scored" in errors[0], err
    from molvae.optimize.oracle import read_log

    table = read_log(log)
    record = json.loads(summary.read_text())
    assert record["stop_reason"] == f"stopped by {name}"
    assert record["n_calls"] == int(table["oracle_call"].sum()) > 0
    assert not list(tmp_path.glob(".log.*"))  # the temporary log became log.csv


@pytest.mark.slow
def test_a_killed_optimization_resumes_from_the_log_it_left(tmp_path, tiny_run):
    """SIGKILL (the out-of-memory killer) leaves the log in its temporary file, complete to the last batch:
    ``--resume LOG`` finds it, scores none of its molecules again, and LOG then holds the old rows and the new."""
    log = tmp_path / "log.csv"
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    args = ("optimize", "--model", str(tiny_run.run_dir / "model.pt"), "--objective", "qed", "--method", "gradient",
            "--seed", "0", "--no-progress", "--device", "cpu")
    proc = subprocess.Popen(_cli(*args, "--budget", "100000", "--out", str(log)), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ((part := _partial_output(log)) and part.stat().st_size > 3_000):
        assert proc.poll() is None and time.monotonic() - t0 < 240, "no log rows"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not log.exists()
    from molvae.optimize.oracle import read_log

    left = read_log(_partial_output(log))
    calls = int(left["oracle_call"].sum())
    res = subprocess.run(_cli(*args, "--budget", str(calls + 5), "--resume", str(log)), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "the search writing it was killed; resuming from the log it left" in res.stderr
    table = read_log(log)
    assert table["smiles"].is_unique and calls <= int(table["oracle_call"].sum()) <= calls + 5
    assert table.head(len(left))["smiles"].tolist() == left["smiles"].tolist()
    assert not list(tmp_path.glob(".log.*"))


@pytest.mark.slow
def test_generation_memory_stays_flat_as_n_grows(tmp_path, tiny_run):
    """Loose check of benchmarks/bench_generate_memory.py: peak RSS at 20k molecules is within
    a few tens of MB of 2k (a non-streaming writer would hold ~10x more rows in memory)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "bench_generate_memory.py"
    spec = importlib.util.spec_from_file_location("bench_generate_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = tiny_run.run_dir / "model.pt"
    small = bench.measure(model, 2_000, tmp_path / "a.csv", threads=1, batch_size=500)
    large = bench.measure(model, 20_000, tmp_path / "b.csv", threads=1, batch_size=500)
    for r in (small, large):
        assert r["rows"] == r["rows_expected"] and r["malformed_rows"] == 0 and r["ends_with_newline"]
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 40, (small, large)


@pytest.mark.slow
def test_resume_extends_a_finished_run_and_refuses_other_changes(tmp_path, small_csv):
    """A run that ended at its epoch (or time) limit continues for the epochs given on resume, and the
    result equals a run that had the longer limit from the start; options that change what it learns are refused."""
    one = tmp_path / "one"
    res = subprocess.run(_cli("train", str(small_csv), "--out", str(one), *_with(TRAIN_ARGS, epochs="1")),
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(_history(one)) == 1
    res = subprocess.run(_cli("train", "--resume", str(one), "--epochs", "2", "--no-progress"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    two = tmp_path / "two"
    res = subprocess.run(_cli("train", str(small_csv), "--out", str(two), *TRAIN_ARGS), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(_history(one), _history(two), check_exact=True)
    assert load_checkpoint(one / "checkpoint.pt")["train_config"]["epochs"] == 2
    res = subprocess.run(_cli("train", "--resume", str(one), "--kl-weight", "0.5", "--epochs", "3"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--kl-weight cannot change when resuming" in res.stderr
    assert "Traceback" not in res.stderr and len(_history(one)) == 2


def _with(args: list[str], **values: str) -> list[str]:
    """``args`` with the values of some ``--name value`` options replaced."""
    out = list(args)
    for name, value in values.items():
        out[out.index(f"--{name.replace('_', '-')}") + 1] = value
    return out
