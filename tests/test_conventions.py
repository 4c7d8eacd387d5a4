"""Messages and conventions (issue 17, cases 9-13) and the next cases a demanding user tries."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from molvae import TrainConfig, train
from molvae.cli import main
from molvae.workers import available_cpus, resolve_jobs

from conftest import TINY_MODEL, tiny_train_config

ROOT = Path(__file__).parents[1]
TINY = ["--epochs", "1", "--batch-size", "32", "--embedding-dim", "8", "--hidden-dim", "8",
        "--decoder-hidden-dim", "8", "--latent-dim", "2", "--device", "cpu", "--n-jobs", "1", "--threads", "1"]


def cli(*args, input=None, env=None):
    res = CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)
    assert "Traceback" not in res.output, res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"uncaught {type(res.exception).__name__}: {res.exception}\n{res.output}")
    return res


def one_error(res, *needles: str, code: int = 1) -> str:
    assert res.exit_code == code, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def qed_run(tmp_path_factory, small_csv):
    """A tiny model with a QED property head."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("qed") / "run"
    return train(small_csv, out, model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1),
                 property_columns=("qed",), runs_dir=out.parent)


# ----------------------------------------------------------------------------- 9. messages, SMILES, stdin

def test_a_smiles_that_does_not_parse_is_not_called_a_missing_file(tiny_run, tmp_path):
    res = cli("encode", "c1ccnc1", "--model", tiny_run.run_dir, "--out", tmp_path / "z.npy")
    err = one_error(res, "c1ccnc1", "not a SMILES RDKit can parse", "kekulized")
    assert not (tmp_path / "z.npy").exists()
    # a missing file is still called one
    one_error(cli("encode", tmp_path / "missing.csv", "--model", tiny_run.run_dir, "--out", tmp_path / "z.npy"),
              "missing.csv: no such file")
    assert "no such file" not in err


def test_predict_takes_a_smiles_like_the_latent_commands(qed_run):
    res = cli("predict", "CCO", "--model", qed_run.run_dir)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(pd.io.common.StringIO(res.stdout))
    assert table["input"].tolist() == ["CCO"] and table["qed"].notna().all()


@pytest.mark.parametrize("command", ["encode", "score", "reconstruct", "predict"])
def test_dash_reads_molecules_from_stdin(command, tiny_run, qed_run, tmp_path):
    model = qed_run.run_dir if command == "predict" else tiny_run.run_dir
    out = tmp_path / ("z.csv" if command == "encode" else "o.csv")
    res = cli(command, "-", "--model", model, "--out", out, input="CCO\nc1ccccc1\nnot_a_smiles\n")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out, keep_default_na=False)
    assert table["row"].tolist() == [1, 2, 3]
    assert table["input"].tolist() == ["CCO", "c1ccccc1", "not_a_smiles"]
    assert table["reason"].iloc[2] != "" and table["reason"].iloc[0] == ""


def test_train_and_evaluate_read_stdin(tmp_path, small_csv):
    smiles = pd.read_csv(small_csv)["smiles"].tolist()
    torch.set_num_threads(1)
    res = cli("train", "-", "--out", tmp_path / "r", *TINY, "--no-progress", input="\n".join(smiles) + "\n")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["metadata"]["n_molecules"] == 200
    res = cli("evaluate", "-", "--no-fcd", "-j", "1", "--json", tmp_path / "m.json", input="CCO\nCCO\nC1CC1\nxx\n")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["valid"] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- 10. cache, gzip, inf

def test_evaluate_goes_on_when_the_cache_folder_cannot_be_written(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a cache folder under a file cannot be created, even by root
    gen = tmp_path / "g.csv"
    gen.write_text("smiles\nCCO\nc1ccccc1\nCC(=O)O\n")
    res = cli("evaluate", gen, "--test", gen, "--no-fcd", "-j", "1", env={"MOLVAE_CACHE_DIR": str(blocker / "cache")})
    assert res.exit_code == 0, res.output
    assert "could not write the metrics cache" in res.output and "SNN/Test" in res.output


def test_a_corrupt_gzip_names_the_file(tmp_path, tiny_run):
    data = gzip.compress(b"smiles\n" + b"CCO\n" * 5000)
    bad = tmp_path / "c.csv.gz"
    bad.write_bytes(data[:30] + bytes([data[30] ^ 0xFF]) + data[31:])
    for args in (("train", bad, "--out", tmp_path / "r", *TINY), ("evaluate", bad, "--no-fcd", "-j", "1"),
                 ("score", bad, "--model", tiny_run.run_dir)):
        err = one_error(cli(*args), str(bad), "corrupt gzip data")
        assert "unexpected" not in err


def test_an_objective_returning_inf_is_not_called_nan(tmp_path, monkeypatch):
    (tmp_path / "inf_scores.py").write_text("def score(smiles):\n    return [float('inf') for _ in smiles]\n"
                                           "def low(smiles):\n    return [float('-inf') for _ in smiles]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from molvae.objectives import parse_objective

    scores, reasons = parse_objective("inf_scores:score").evaluate(["CCO"])
    assert np.isnan(scores[0]) and reasons[0] == "objective returned +inf"
    _, reasons = parse_objective("inf_scores:low").evaluate(["CCO"])
    assert reasons[0] == "objective returned -inf"


# ----------------------------------------------------------------------------- 11. one progress rule

def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, small_csv, tiny_run):
    assert TrainConfig().show_progress is None
    torch.set_num_threads(1)
    res = cli("train", small_csv, "--out", tmp_path / "r", *TINY)  # no --progress/--no-progress
    assert res.exit_code == 0 and "epoch 1/1" not in res.output and "it/s" not in res.output, res.output
    res = cli("generate", "--model", tiny_run.run_dir, "--n", "5001", "--out", tmp_path / "g.smi", "--seed", "0")
    assert res.exit_code == 0 and "mol/s" not in res.output and "generate:" not in res.output, res.output
    for name in ("train", "generate", "evaluate", "optimize"):
        opt = next(p for p in main.commands[name].params if p.name == "progress")
        assert opt.default is None and "when stderr is a terminal" in opt.help, name


# ----------------------------------------------------------------------------- 12. help drift

def _commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_option_has_help():
    missing = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert missing == []


def test_quick_start_epochs_agree_with_the_readme():
    readme = (ROOT / "README.md").read_text()
    help_text = cli("--help").output
    ours = re.findall(r"molvae train data/moses_sample.csv --epochs (\d+)", help_text)
    theirs = re.findall(r"molvae train data/moses_sample.csv --epochs (\d+)", readme)
    assert ours and theirs and set(ours) == set(theirs)
    assert f"default {TrainConfig.epochs}" in help_text


@pytest.mark.parametrize("command", ["train", "generate", "evaluate"])
def test_readme_option_tables_are_complete(command):
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"### `molvae {command}")
    section = readme[start:readme.index("\n### ", start + 5)]
    missing = []
    for p in main.commands[command].params:
        if isinstance(p, click.Option):
            longs = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
            if not any(re.search(re.escape(o) + r"(?![\w-])", section) for o in longs):
                missing.append(longs[0])
    assert missing == []


def _readme_train_rows() -> list[tuple[list[str], list[str], str]]:
    """``(options, defaults, meaning)`` of each row of the README's `molvae train` table."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### `molvae train")
    section = readme[start:readme.index("\n### ", start + 5)]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `--"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            options = re.findall(r"`(--[\w-]+)", cells[0])
            defaults = [d.strip() for d in cells[1].split(",")] if cells[1] else []
            rows.append((options, defaults, cells[2] if len(cells) > 2 else ""))
    return rows


def _same_default(readme: str, shown: str) -> bool:
    try:
        return float(readme) == float(shown)
    except ValueError:
        a, b = readme.lower().strip("`"), shown.lower()
        return a.startswith(b) or b.startswith(a)


def test_readme_train_table_shows_the_configs_defaults():
    """The defaults in the README table are the config dataclasses' (the CLI's help takes them from there too)."""
    import dataclasses

    from molvae.cli.train import _MAP
    from molvae.config import ModelConfig, shown_default

    fields = {table: {f.name: f for f in dataclasses.fields(cls)}
              for table, cls in (("train", TrainConfig), ("model", ModelConfig))}
    compared = 0
    for options, defaults, _ in _readme_train_rows():
        keys = [o[2:].replace("-", "_") for o in options]
        if not keys or not all(k in _MAP for k in keys) or len(defaults) != len(keys):
            continue  # rows of other options, or one default for several options ("see ModelConfig")
        for option, key, readme_default in zip(options, keys, defaults):
            table, name = _MAP[key]
            shown = shown_default(fields[table][name])
            assert shown is not None and _same_default(readme_default, shown), (option, readme_default, shown)
            compared += 1
    assert compared >= 20


def test_readme_says_which_options_a_resumed_run_may_change():
    from molvae.cli.train import _MAP
    from molvae.train import RESUME_CHANGEABLE

    row = next(meaning for options, _, meaning in _readme_train_rows() if options == ["--resume"])
    listed = set(re.findall(r"`(--[\w-]+)`", row))
    changeable = {f"--{key.replace('_', '-')}" for key, (table, name) in _MAP.items() if name in RESUME_CHANGEABLE}
    assert listed == changeable


def test_evaluate_has_threads_and_jobs_are_capped(tmp_path):
    assert any(p.name == "threads" for p in main.commands["evaluate"].params)
    gen = tmp_path / "g.csv"
    gen.write_text("smiles\n" + "CCO\n" * 3000)
    res = cli("evaluate", gen, "--no-fcd", "-j", "500", "--threads", "1", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["settings"]["n_jobs"] == available_cpus()
    assert f"500 worker processes asked for, {available_cpus()} CPU cores available" in res.output
    assert resolve_jobs(500) == available_cpus() and resolve_jobs(0) == available_cpus()


# ----------------------------------------------------------------------------- 13. busy machines

def test_importing_molvae_first_makes_openmp_wait_passively():
    code = ("import os, molvae, torch; print(os.environ.get('OMP_WAIT_POLICY'), molvae.OMP_POLICY_SET_BY_MOLVAE)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "True"], out.stderr
    # a user's own choice is kept
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, timeout=120)
    assert out.stdout.split() == ["ACTIVE", "False"], out.stderr


# ----------------------------------------------------------------------------- the next cases

def test_out_equal_to_the_input_file_is_refused(tmp_path, tiny_run, small_csv):
    data = tmp_path / "in.csv"
    data.write_bytes(small_csv.read_bytes())
    for command in ("score", "reconstruct"):
        res = cli(command, data, "--model", tiny_run.run_dir, "--out", data)
        assert res.exit_code == 2 and "is the input file" in res.output, res.output
    assert data.read_bytes() == small_csv.read_bytes()


def test_a_symlinked_run_folder_trains_and_becomes_latest(tmp_path, small_csv, monkeypatch):
    torch.set_num_threads(1)
    elsewhere = tmp_path / "disk2" / "run"
    elsewhere.mkdir(parents=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mine").symlink_to(elsewhere, target_is_directory=True)
    res = cli("train", small_csv, "--out", runs / "mine", "--runs-dir", runs, *TINY, "--no-progress")
    assert res.exit_code == 0, res.output
    assert (elsewhere / "model.pt").is_file()
    assert (runs / "LATEST").read_text().strip() == "mine"
    res = cli("train", small_csv, "--out", runs / "mine", *TINY)  # still one run, not clobbered
    one_error(res, "already holds a run")


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, small_csv, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):  # as on some network mounts
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    torch.set_num_threads(1)
    res = cli("train", small_csv, "--out", tmp_path / "r", *TINY, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "cannot lock the run folder" in res.output and (tmp_path / "r" / "model.pt").is_file()


def test_a_model_file_of_a_newer_format_is_refused_in_one_line(tmp_path, tiny_run):
    from molvae.checkpoint import load_checkpoint

    data = load_checkpoint(tiny_run.run_dir / "model.pt")
    data["format_version"] = 99
    torch.save(data, tmp_path / "new.pt")
    one_error(cli("generate", "--model", tmp_path / "new.pt", "--n", "2"), "format 99 is newer", "upgrade molvae")


def test_an_unwritable_output_is_one_line_naming_it(tmp_path, tiny_run):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = cli("score", "CCO", "--model", tiny_run.run_dir, "--out", blocker / "s.csv")
    one_error(res, str(blocker), "cannot write")


def test_a_model_from_a_newer_molvae_with_new_settings_says_upgrade(tmp_path, tiny_run):
    from molvae.checkpoint import load_checkpoint

    data = load_checkpoint(tiny_run.run_dir / "model.pt")
    data["model_config"]["attention_heads"] = 4  # a setting this molvae does not know
    data["versions"]["molvae"] = "9.0.0"
    torch.save(data, tmp_path / "future.pt")
    one_error(cli("generate", "--model", tmp_path / "future.pt", "--n", "2"), "attention_heads",
              "written by molvae 9.0.0", "upgrade molvae")


def test_a_url_is_refused_in_one_line(tiny_run):
    one_error(cli("score", "https://example.org/mols.csv", "--model", tiny_run.run_dir), "local files only")


def test_generate_out_equal_to_novel_vs_is_refused(tmp_path, tiny_run, small_csv):
    data = tmp_path / "train.csv"
    data.write_bytes(small_csv.read_bytes())
    res = cli("generate", "--model", tiny_run.run_dir, "--n", "3", "--novel-vs", data, "--out", data)
    assert res.exit_code == 2 and "is the input file" in res.output, res.output
    assert data.read_bytes() == small_csv.read_bytes()


def test_resume_of_a_run_another_process_writes_is_refused(tmp_path, tiny_run):
    import shutil

    from molvae.train import RunLock

    run = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, run)
    lock = RunLock(run).acquire()
    try:
        one_error(cli("train", "--resume", run, "--epochs", "4"), "another molvae process")
    finally:
        lock.release()
