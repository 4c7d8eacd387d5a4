"""Config dataclasses are the one source of option names, defaults, checks and help (issue 16): the CLI is
built from them, and the defects found on the way stay fixed."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import warnings

import click
import pytest

from molvae.cli import main
from molvae.config import ConfigError, ModelConfig, TrainConfig, load_config_file, read_json_or_toml
from molvae.errors import InvalidInputError

from conftest import cli


def _train_options() -> dict[str, click.Option]:
    return {p.name: p for p in main.commands["train"].params if isinstance(p, click.Option)}


# ----------------------------------------------------------------------------- TOML on Python 3.10

def test_toml_config_files_are_read_with_tomli_where_tomllib_is_missing(tmp_path, monkeypatch):
    pytest.importorskip("tomli")
    path = tmp_path / "c.toml"
    path.write_text('epochs = 3\n[model]\nlatent_dim = 8\n[train]\nkl_schedule = "sigmoid"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails as on Python 3.10
    with pytest.raises(ImportError):
        importlib.import_module("tomllib")
    assert load_config_file(path) == {"model": {"latent_dim": 8}, "train": {"epochs": 3, "kl_schedule": "sigmoid"}}


def test_without_any_toml_parser_the_message_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("epochs = 3\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(InvalidInputError, match="tomli") as info:
        read_json_or_toml(path, "config file")
    assert "not valid" not in str(info.value)  # the file is fine; the parser is missing


def test_a_bad_config_file_keeps_the_parsers_error_as_the_cause(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInputError) as info:
        read_json_or_toml(path, "config file")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)  # MOLVAE_DEBUG=1 shows where it failed


# ----------------------------------------------------------------------------- two max_len

def test_the_training_length_limit_is_not_called_like_the_models_max_len(tmp_path):
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert "max_len" not in train_fields and "max_selfies_tokens" in train_fields
    assert TrainConfig(max_selfies_tokens=40).to_dict()["max_selfies_tokens"] == 40
    # model files and settings stored before the rename still load
    assert TrainConfig.from_dict({"max_len": 40}).max_selfies_tokens == 40
    with pytest.raises(InvalidInputError, match="max_selfies_tokens only"):
        TrainConfig.from_dict({"max_len": 40, "max_selfies_tokens": 50})
    # an old config file loads with a warning, a top-level max_len included (it always meant the training limit)
    for text in ("[train]\nmax_len = 40\n", "max_len = 40\n"):
        path = tmp_path / "old.toml"
        path.write_text(text)
        with pytest.warns(FutureWarning, match="max_selfies_tokens"):
            settings = load_config_file(path)
        assert TrainConfig.from_dict(settings["train"]).max_selfies_tokens == 40 and settings["model"] == {}
    # the CLI option keeps its name
    assert _train_options()["max_len"].opts == ["--max-len"]


# ----------------------------------------------------------------------------- options from the dataclasses

def test_every_train_option_comes_from_a_config_field():
    from molvae.cli.train import _MAP
    from molvae.config import cli_settings, shown_default

    options = _train_options()
    unset = main.commands["train"].make_context("train", ["data.csv"]).params
    fields = cli_settings()
    assert len(_MAP) == len(fields) >= 30
    for table, f in fields:
        name = f.metadata["cli"].split("/")[0].replace("-", "_")
        assert _MAP[name] == (table, f.name)
        option = options[name]
        assert unset[name] is None  # an unset option leaves the config file's or the dataclass's value
        assert option.help.startswith(f.metadata["help"])
        shown = shown_default(f)
        if shown is not None:
            assert option.help.endswith(f"[{shown}]."), (option.help, shown)
    # settings without an option are there on purpose (set otherwise, or config-file/API only)
    no_option = sorted(f.name for cls in (TrainConfig, ModelConfig) for f in dataclasses.fields(cls)
                       if not f.metadata.get("cli"))
    assert no_option == ["extra", "kl_cycle_ratio", "max_len", "property_names", "recon_eval_size", "show_progress"]


def test_every_config_field_has_help():
    for cls in (TrainConfig, ModelConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("field,bad", [("grad_clip", 0.0), ("max_bad_steps", 0), ("kl_warmup_epochs", -1.0),
                                       ("checkpoint_every", -1), ("epochs", 0), ("lr_final_ratio", 1.5)])
def test_the_api_refuses_what_the_cli_refuses(field, bad, tmp_path):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: bad})
    assert info.value.key == field
    option = next(name for name, (t, f) in __import__("molvae.cli.train", fromlist=["_MAP"])._MAP.items()
                  if (t, f) == ("train", field))
    flag = "--" + option.replace("_", "-")
    res = cli("train", tmp_path / "x.csv", flag, str(bad))
    assert res.exit_code == 2 and flag in res.output and f"TrainConfig.{field}" in res.output, res.output


def test_the_cpu_amp_help_says_what_the_cpu_check_uses():
    text = _train_options()["cpu_amp"].help
    # molvae.core.cpu_has_fast_bf16: AMX tiles, or an AMD CPU with AVX-512 BF16; not Intel AVX-512 BF16 alone
    assert "AMX" in text and "amx_bf16" in text and "AMD" in text and "avx512_bf16" in text
    assert "without AMX" in text


# ----------------------------------------------------------------------------- dead code stays gone

def test_no_dead_training_helpers():
    from molvae.distributed import DistContext
    from molvae.train import TrainResult

    assert not hasattr(DistContext, "any")
    assert "extra" not in {f.name for f in dataclasses.fields(TrainResult)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(extra={"note": "kept: free-form notes recorded with the run"})


def test_the_cli_a_config_file_and_the_api_give_one_training_config(tmp_path, small_csv):
    """The same settings given as options, as a TOML file and to TrainConfig/ModelConfig end in the same run config."""
    import torch

    pytest.importorskip("tomli" if sys.version_info < (3, 11) else "tomllib")
    torch.set_num_threads(1)
    settings = {"train": {"epochs": 1, "batch_size": 64, "learning_rate": 0.002, "kl_warmup_epochs": 0.5,
                          "max_selfies_tokens": 60, "grad_clip": 2.5, "seed": 4, "num_threads": 1, "device": "cpu",
                          "largest_fragment": False, "checkpoint_every": 3},
                "model": {"embedding_dim": 8, "hidden_dim": 8, "decoder_hidden_dim": 8, "latent_dim": 2,
                          "bidirectional": False}}
    options = ["--epochs", "1", "--batch-size", "64", "--lr", "0.002", "--kl-warmup", "0.5", "--max-len", "60",
               "--grad-clip", "2.5", "--seed", "4", "--threads", "1", "--device", "cpu", "--all-fragments",
               "--checkpoint-every", "3", "--embedding-dim", "8", "--hidden-dim", "8", "--decoder-hidden-dim", "8",
               "--latent-dim", "2", "--unidirectional"]
    toml = tmp_path / "c.toml"
    toml.write_text("".join(f"[{table}]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in values.items()) for table, values in settings.items()))
    runs = {}
    for how, args in (("cli", options), ("file", ["--config", toml])):
        res = cli("train", small_csv, "--out", tmp_path / how, "--no-progress", "--n-jobs", "1", *args)
        assert res.exit_code == 0, res.output
        runs[how] = json.loads((tmp_path / how / "config.json").read_text())
    api_train = TrainConfig(**settings["train"], show_progress=False).to_dict()
    for how, record in runs.items():
        assert record["train"] == api_train, how
        # max_len is set from the data at training (the longest molecule kept, <eos> included)
        api_model = ModelConfig(**settings["model"]).replace(max_len=record["model"]["max_len"]).to_dict()
        assert record["model"] == api_model, how
        assert record["model"]["max_len"] <= 61
