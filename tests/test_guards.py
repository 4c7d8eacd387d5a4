"""Crashes, hangs and config checks (issue 17, cases 6-8): size guards before RDKit, worker pools that
fail loudly, too few molecules for a split, every config field checked in the dataclasses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from molvae import ModelConfig, TrainConfig, chem, train
from molvae.config import ConfigError
from molvae.data import prepare

from conftest import TINY_MODEL, cli, one_error, tiny_train_config

ROOT = Path(__file__).parents[1]
TINY = ["--epochs", "1", "--batch-size", "32", "--embedding-dim", "8", "--hidden-dim", "8",
        "--decoder-hidden-dim", "8", "--latent-dim", "2", "--device", "cpu", "--no-progress", "--threads", "1"]



def run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


# ----------------------------------------------------------------------------- 6. huge SMILES, dead workers

def test_a_50000_character_smiles_is_a_rejected_row_not_a_segfault(tmp_path):
    data = tmp_path / "l.csv"
    data.write_text("smiles\nCCO\n" + "C" * 50000 + "\n")
    # A subprocess: before the guard, RDKit crashed the whole interpreter (exit 139).
    proc = subprocess.run([sys.executable, "-m", "molvae", "score", str(data), "--model", "moses-small",
                           "--threads", "1", "--out", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    assert table["encoded"].tolist() == [True, False]
    assert "50,000 characters" in table["reason"].iloc[1]
    assert "1 of 2 rows could not be encoded" in proc.stderr and "Traceback" not in proc.stderr


def test_size_guards_give_reasons_in_every_path(tmp_path):
    huge = "C" * (chem.MAX_SMILES_LENGTH + 1)
    assert chem.to_mol(huge) is None and chem.canonicalize(huge) is None
    assert "characters" in chem.process_smiles(huge)
    assert "characters" in chem.parse_error(huge)
    # Atom count: a string under the length limit can still hold too many atoms
    many = "[CH2]" * 0 + "C" * (chem.MAX_ATOMS + 1)
    assert chem.to_mol(many) is None and "atoms" in chem.process_smiles(many)
    table = pd.DataFrame({"row": [1, 2, 3], "input": ["CCO", huge, many]})
    prep = prepare(table, n_jobs=1)
    assert prep.rejected["row"].tolist() == [2, 3]
    assert "characters" in prep.rejected["reason"].iloc[0] and "atoms" in prep.rejected["reason"].iloc[1]
    import math

    assert math.isnan(chem.qed(huge)) and math.isnan(chem.qed(many))


def test_training_on_more_than_5000_rows_with_a_huge_smiles_finishes(tmp_path, small_csv):
    # > 5,000 rows: cleaning runs in worker processes, where the crash used to hang training forever
    rows = pd.read_csv(small_csv)["smiles"].tolist() * 26
    rows.insert(3000, "C" * 25000)
    data = tmp_path / "big.csv"
    data.write_text("smiles\n" + "\n".join(rows) + "\n")
    torch.set_num_threads(1)
    result = train(data, tmp_path / "run", model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1),
                   n_jobs=2, use_cache=False)
    rej = pd.read_csv(tmp_path / "run" / "rejected.csv")
    huge = rej[rej["row"] == 3001]
    assert len(huge) == 1 and "25,000 characters" in huge["reason"].iloc[0]
    assert len(result.prepared) == 200


def test_a_dying_worker_fails_loudly_instead_of_hanging():
    proc = run_python("""
        import os, signal
        import molvae.data as data
        real = data._process_compact_chunk

        def dies_on_second_chunk(args):
            if args[0] == 5000:
                os.kill(os.getpid(), signal.SIGKILL)   # as a segfault in RDKit would
            return real(args)

        data._process_compact_chunk = dies_on_second_chunk
        try:
            data.process_compact(["CCO"] * 12000, n_jobs=2)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """, timeout=120)
    assert "WorkerCrashed" in proc.stdout and "worker process died while cleaning molecules" in proc.stdout, \
        proc.stdout + proc.stderr


def test_a_dying_metrics_worker_fails_loudly():
    proc = run_python("""
        import os, signal
        from molvae.metrics.molecules import Workers

        def die(chunk):
            os.kill(os.getpid(), signal.SIGKILL)

        with Workers(2) as w:
            try:
                w.map(die, list(range(5000)), desc="descriptors")
            except Exception as exc:
                print(type(exc).__name__, exc)
    """, timeout=120)
    assert "WorkerCrashed" in proc.stdout and "computing descriptors" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- 7. too few molecules

def test_one_distinct_molecule_is_warned_about(tmp_path):
    data = tmp_path / "same.csv"
    data.write_text("smiles\n" + "CCO\n" * 1000)
    torch.set_num_threads(1)
    res = cli("train", data, "--out", tmp_path / "r", *TINY)
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if "only 1 distinct molecule" in line)
    assert "999 duplicates" in warning and "needs at least 2" in warning and "training loss" in warning


def test_an_empty_validation_split_is_warned_about(tmp_path, caplog):
    data = tmp_path / "four.csv"
    data.write_text("smiles\nCCO\nCCN\nc1ccccc1\nCC(=O)O\n")
    torch.set_num_threads(1)
    import logging

    logger = logging.getLogger("molvae")  # the CLI stops propagation to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="molvae"):
            train(data, tmp_path / "r", model_config=TINY_MODEL, train_config=tiny_train_config(epochs=1))
    finally:
        logger.removeHandler(caplog.handler)
    assert any("validation split" in r.getMessage() and "is empty" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 8. config checked in one place

BAD_TRAIN = [
    ("grad_clip", -1, "must be a number > 0"),
    ("kl_weight", float("nan"), "finite"),
    ("kl_weight", float("inf"), "finite"),
    ("batch_size", True, "must be a positive integer, got True (bool)"),
    ("max_time_minutes", -5, "must be a number > 0"),
    ("learning_rate", "0.001", "got '0.001' (str)"),
    ("seed", -1, "must be an integer >= 0"),
    ("epochs", 2.5, "must be a positive integer, got 2.5"),
    ("free_bits", -0.1, ">= 0"),
    ("kl_cycle_ratio", 0, "> 0"),
    ("property_weight", float("nan"), "finite"),
    ("num_threads", 0, "must be a positive integer, got 0"),
    ("amp", "yes", "true or false"),
]


@pytest.mark.parametrize("key, value, needle", BAD_TRAIN)
def test_train_config_refuses_bad_values_naming_the_key(tmp_path, small_csv, key, value, needle):
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{key} ") as info:
        TrainConfig(**{key: value})
    assert needle in str(info.value) and info.value.key == key
    # a config file gives the same message, one line, naming the file
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {key: value}}))
    if isinstance(value, float) and value != value:
        cfg.write_text(f'{{"train": {{"{key}": NaN}}}}')
    res = cli("train", small_csv, "--out", tmp_path / "r", "--config", cfg)
    one_error(res, str(cfg), f"TrainConfig.{key} ", needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option, value, key", [
    ("--grad-clip", "-1", "grad_clip"), ("--kl-weight", "nan", "kl_weight"), ("--kl-weight", "Infinity", "kl_weight"),
    ("--max-time", "-5", "max_time_minutes"), ("--seed", "-2", "seed"), ("--free-bits", "-1", "free_bits"),
])
def test_cli_options_are_checked_by_the_same_rules(tmp_path, small_csv, option, value, key):
    res = cli("train", small_csv, "--out", tmp_path / "r", option, value)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for {option}" in res.output and f"TrainConfig.{key} " in res.output
    assert not (tmp_path / "r").exists()


def test_model_config_checks_types(tmp_path):
    with pytest.raises(ConfigError, match=r"ModelConfig\.bidirectional must be true or false"):
        ModelConfig(bidirectional="no")
    with pytest.raises(ConfigError, match=r"ModelConfig\.dropout"):
        ModelConfig(dropout=float("nan"))
    with pytest.raises(ConfigError, match=r"ModelConfig\.latent_dim"):
        ModelConfig.from_dict({"latent_dim": "64"})


def test_resume_changes_are_checked_too(tiny_run):
    from molvae.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"TrainConfig\.max_time_minutes"):
        train(resume=tiny_run.run_dir, resume_changes={"max_time_minutes": -5})
