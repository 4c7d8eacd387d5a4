"""``molvae train``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import click

from ..config import ConfigError, ModelConfig, TrainConfig, cli_settings, load_config_file
from ..errors import InvalidInputError
from . import main
from .common import setting_option


#: CLI parameter name -> (config table, field), built from the config fields' metadata.
_MAP: dict[str, tuple[str, str]] = {}
_DECORATORS = []
for _table, _field in cli_settings():
    _name, _decorator = setting_option(_field)
    _MAP[_name] = (_table, _field.name)
    _DECORATORS.append(_decorator)


def _config_options(func: Callable) -> Callable:
    """Add one option per config setting that has one (``TrainConfig`` then ``ModelConfig`` field order)."""
    for decorator in reversed(_DECORATORS):
        func = decorator(func)
    return func


def _config_error(exc: ConfigError, opts: dict, config_file: str | None):
    """The config dataclasses check every value (one place for the API, config files and the CLI);
    here the error is pinned on the option or the config file the value came from."""
    table = "model" if str(exc).startswith("ModelConfig.") else "train"
    for name, (t, field) in _MAP.items():
        if (t, field) == (table, exc.key) and opts.get(name) is not None:
            raise click.BadParameter(str(exc), param_hint=f"--{name.replace('_', '-')}") from exc
    if config_file:
        raise InvalidInputError(f"config file {config_file}: {exc}") from exc
    raise exc


@main.command("train")
@click.argument("data", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run folder (default: runs/<timestamp>).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON or TOML file with [model] and [train] settings; command-line options win.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this folder from checkpoint.pt.")
@click.option("--from", "base_spec", metavar="MODEL",
              help="Fine-tune: start from this model (shipped name, run folder or model file) with its sizes; "
                   "tokens DATA needs are added; defaults for a few hundred molecules (lr 6e-4, batch 32, 120 "
                   "epochs, the last kept, β constant at the base's), each overridable.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in an --out folder that already holds one (refused without it).")
@click.option("--smiles-column", help="Name of the SMILES column (default: 'smiles' in any case, or the only column).")
@click.option("--property", "properties", multiple=True,
              help="CSV column for the property head (repeatable); missing values are masked.")
@click.option("--cache/--no-cache", "use_cache", default=True, show_default=True,
              help="Reuse preprocessed data from the cache ($MOLVAE_CACHE_DIR, default ~/.cache/molvae).")
@click.option("--n-jobs", type=int, default=0, show_default=True, help="Processes for preprocessing (0 = all cores).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where default run folders and the LATEST pointer go.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when stderr is a terminal].")
@_config_options
def train_cmd(data, out, config_file, resume, base_spec, overwrite, smiles_column, properties, n_jobs, runs_dir,
              progress, use_cache, **opts):
    """Clean DATA (csv, csv.gz, smi, txt or sdf of SMILES; `-` for stdin), build the vocabulary and train a VAE.

    Writes a run folder with model.pt (best validation loss at the target β), checkpoint.pt, config.json,
    history.csv and rejected.csv (every row not used, with its reason). An --out folder that already holds
    a run is refused: --overwrite replaces it, --resume continues it. --from MODEL fine-tunes MODEL on DATA.
    """
    from ..diagnostics import best_epoch
    from ..train import train

    if data is None and resume is None:
        raise click.UsageError("give a DATA file of SMILES (or --resume RUN_DIR)")
    if resume is not None and overwrite:
        raise click.UsageError("--resume continues a run and --overwrite replaces one; give only one of them")
    if base_spec is not None and resume is not None:
        raise click.UsageError("--resume continues a run (a fine-tuned one keeps its base); drop --from")
    if base_spec is not None and data is None:
        raise click.UsageError("--from fine-tunes a model on DATA: give a DATA file of SMILES")
    if data == "-":  # molecules piped in: read once here (no file to hash for the cache, none to resume from)
        from ..data import read_molecules

        data = read_molecules("-", smiles_column)
    settings = load_config_file(config_file) if config_file else {"model": {}, "train": {}}
    for key, value in opts.items():
        if value is not None:
            table, field = _MAP[key]
            settings[table][field] = value
    settings["train"]["show_progress"] = progress
    changes = None
    if resume is not None:
        # A resumed run keeps its stored settings; options given now may only change how long and how it runs.
        given = {_MAP[k]: (k, v) for k, v in opts.items() if v is not None}
        if config_file or properties or any(table == "model" for table, _ in given):
            raise click.UsageError("--resume continues a run with its stored model and data settings; "
                                   "drop --config, --property and model-size options")
        from ..train import RESUME_CHANGEABLE

        bad = [f"--{k.replace('_', '-')}" for (_, field), (k, _) in given.items() if field not in RESUME_CHANGEABLE]
        if bad:
            can = [f"--{k.replace('_', '-')}" for k, (_, field) in _MAP.items() if field in RESUME_CHANGEABLE]
            raise click.UsageError(f"{', '.join(bad)} cannot change when resuming (the run keeps what it learns "
                                   f"with); these can: {', '.join(can)}")
        changes = {field: v for (_, field), (_, v) in given.items()}
        changes["show_progress"] = progress
    base = None
    if base_spec is not None:
        model_keys = [f"--{k.replace('_', '-')}" for k, v in opts.items() if v is not None and _MAP[k][0] == "model"]
        if model_keys or settings["model"]:
            given = ", ".join(model_keys) or "the [model] table of --config"
            raise click.UsageError(f"--from keeps the base model's sizes; drop {given}")
        from ..training.finetune import load_base

        base = load_base(base_spec)
        click.echo(f"fine-tuning {base_spec} ({base.path})", err=True)
    try:
        model_config = ModelConfig.from_dict(settings["model"])
        if base is not None:
            from ..training.finetune import finetune_config

            train_config = finetune_config(base, **settings["train"])
        else:
            train_config = TrainConfig.from_dict(settings["train"])
        result = train(data, out, model_config=model_config, train_config=train_config, smiles_column=smiles_column,
                       property_columns=tuple(properties), runs_dir=runs_dir, resume=resume, n_jobs=n_jobs,
                       use_cache=use_cache, resume_changes=changes, overwrite=overwrite, base=base)
    except ConfigError as exc:
        _config_error(exc, opts, config_file)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    prep = result.prepared
    last = result.history[-1] if result.history else {}
    tc = result.model.train_config
    kept = "best"
    if tc is not None and tc.keep == "last" and result.history:
        best, kept = result.history[-1], "last"
    else:
        best = best_epoch(result.history, tc.kl_weight if tc is not None else None) or {}
    click.echo(f"molecules: {prep.n_input} read, {len(prep)} used, {len(prep.rejected)} rejected "
               f"({prep.n_duplicates} duplicates) -> {result.run_dir / 'rejected.csv'}", err=True)
    if best:
        click.echo(f"{kept} epoch {best['epoch']}: val -ELBO {best['val_nelbo']:.2f} nats, "
                   f"reconstruction accuracy {best['val_recon_acc']:.3f}, active units {best['active_units']}; "
                   f"{len(result.history)} epochs in {last.get('elapsed_s', 0):.0f} s", err=True)
    click.echo(f"model: {result.run_dir / 'model.pt'}", err=True)
    click.echo(str(result.run_dir))
