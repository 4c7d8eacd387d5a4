"""``molvae train``."""

from __future__ import annotations

import os

import click

from ..config import KL_SCHEDULES, LR_SCHEDULES, ConfigError, ModelConfig, TrainConfig, load_config_file
from ..errors import InvalidInputError
from . import main

# CLI option name -> (config table, field)
_MAP = {
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "learning_rate"),
    "lr_schedule": ("train", "lr_schedule"), "lr_final_ratio": ("train", "lr_final_ratio"),
    "seed": ("train", "seed"), "val_fraction": ("train", "val_fraction"), "max_len": ("train", "max_len"),
    "largest_fragment": ("train", "largest_fragment"), "kl_schedule": ("train", "kl_schedule"),
    "kl_weight": ("train", "kl_weight"), "kl_warmup": ("train", "kl_warmup_epochs"),
    "free_bits": ("train", "free_bits"), "word_dropout": ("train", "word_dropout"),
    "grad_clip": ("train", "grad_clip"), "device": ("train", "device"), "amp": ("train", "amp"),
    "cpu_amp": ("train", "cpu_amp"), "compile": ("train", "compile"),
    "early_stopping": ("train", "early_stopping"), "checkpoint_every": ("train", "checkpoint_every"),
    "max_bad_steps": ("train", "max_bad_steps"),
    "threads": ("train", "num_threads"), "max_time": ("train", "max_time_minutes"),
    "embedding_dim": ("model", "embedding_dim"), "hidden_dim": ("model", "hidden_dim"),
    "encoder_layers": ("model", "encoder_layers"), "bidirectional": ("model", "bidirectional"),
    "decoder_hidden_dim": ("model", "decoder_hidden_dim"), "decoder_layers": ("model", "decoder_layers"),
    "latent_dim": ("model", "latent_dim"), "dropout": ("model", "dropout"),
}


def _config_error(exc: ConfigError, opts: dict, config_file: str | None):
    """The config dataclasses check every value (one place for the API, config files and the CLI);
    here the error is pinned on the option or the config file the value came from."""
    table = "model" if str(exc).startswith("ModelConfig.") else "train"
    for name, (t, field) in _MAP.items():
        if (t, field) == (table, exc.key) and opts.get(name) is not None:
            raise click.BadParameter(str(exc), param_hint=f"--{name.replace('_', '-')}") from None
    if config_file:
        raise InvalidInputError(f"config file {config_file}: {exc}") from None
    raise exc


@main.command("train")
@click.argument("data", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run folder (default: runs/<timestamp>).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON or TOML file with [model] and [train] settings; command-line options win.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this folder from checkpoint.pt.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in an --out folder that already holds one (refused without it).")
@click.option("--smiles-column", help="Name of the SMILES column (default: 'smiles' in any case, or the only column).")
@click.option("--property", "properties", multiple=True,
              help="CSV column for the property head (repeatable); missing values are masked.")
@click.option("--epochs", type=int, help=f"Epochs [{TrainConfig.epochs}].")
@click.option("--batch-size", type=int, help=f"Molecules per step [{TrainConfig.batch_size}].")
@click.option("--lr", type=float, help=f"Adam learning rate [{TrainConfig.learning_rate}].")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES),
              help=f"Learning rate over the run: constant, or cosine down to --lr-final-ratio × --lr by the last "
                   f"epoch or --max-time [{TrainConfig.lr_schedule}].")
@click.option("--lr-final-ratio", type=float,
              help=f"cosine: final learning rate relative to --lr [{TrainConfig.lr_final_ratio}].")
@click.option("--seed", type=int, help=f"Random seed [{TrainConfig.seed}].")
@click.option("--val-fraction", type=float, help=f"Validation share [{TrainConfig.val_fraction}].")
@click.option("--max-len", type=int, help="Reject molecules with more SELFIES tokens.")
@click.option("--largest-fragment/--all-fragments", default=None,
              help="Keep only the largest fragment of salts and mixtures [on]; --all-fragments rejects them.")
@click.option("--kl-schedule", type=click.Choice(KL_SCHEDULES), help=f"β annealing [{TrainConfig.kl_schedule}].")
@click.option("--kl-weight", type=float, help=f"β_max [{TrainConfig.kl_weight}].")
@click.option("--kl-warmup", type=float, help=f"Epochs to reach β_max, or cycle length [{TrainConfig.kl_warmup_epochs}].")
@click.option("--free-bits", type=float, help="Per-dimension KL floor in nats [0].")
@click.option("--word-dropout", type=float, help="Decoder input dropout rate [0].")
@click.option("--grad-clip", type=float, help=f"Gradient norm clip [{TrainConfig.grad_clip}].")
@click.option("--early-stopping", type=int, help="Stop after N epochs without improvement.")
@click.option("--checkpoint-every", type=int, help="Also checkpoint every N steps.")
@click.option("--max-bad-steps", type=int,
              help=f"Stop after this many consecutive non-finite steps [{TrainConfig.max_bad_steps}].")
@click.option("--embedding-dim", type=int, help=f"[{ModelConfig.embedding_dim}]")
@click.option("--hidden-dim", type=int, help=f"Encoder GRU size [{ModelConfig.hidden_dim}].")
@click.option("--encoder-layers", type=int, help=f"[{ModelConfig.encoder_layers}]")
@click.option("--bidirectional/--unidirectional", default=None, help="Encoder direction [bidirectional].")
@click.option("--decoder-hidden-dim", type=int, help=f"[{ModelConfig.decoder_hidden_dim}]")
@click.option("--decoder-layers", type=int, help=f"[{ModelConfig.decoder_layers}]")
@click.option("--latent-dim", type=int, help=f"[{ModelConfig.latent_dim}]")
@click.option("--dropout", type=float, help="Dropout between stacked GRU layers [0].")
@click.option("--device", help="auto | cpu | cuda | cuda:N [auto].")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA [on].")
@click.option("--cpu-amp/--no-cpu-amp", default=None,
              help="bf16 autocast on the CPU [on with AMX, or AMD with AVX-512 BF16].")
@click.option("--compile", "compile", is_flag=True, default=None, help="torch.compile the model [off].")
@click.option("--cache/--no-cache", "use_cache", default=True, show_default=True,
              help="Reuse preprocessed data from the cache ($MOLVAE_CACHE_DIR, default ~/.cache/molvae).")
@click.option("--max-time", type=float,
              help="Stop after this many minutes of training (validates and saves first).")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option("--n-jobs", type=int, default=0, show_default=True, help="Processes for preprocessing (0 = all cores).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where default run folders and the LATEST pointer go.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when stderr is a terminal].")
def train_cmd(data, out, config_file, resume, overwrite, smiles_column, properties, n_jobs, runs_dir, progress,
              use_cache, **opts):
    """Clean DATA (csv, csv.gz, smi, txt or sdf of SMILES; `-` for stdin), build the vocabulary and train a VAE.

    Writes a run folder with model.pt (best validation loss at the target β), checkpoint.pt, config.json,
    history.csv and rejected.csv (every row not used, with its reason). An --out folder that already holds
    a run is refused: --overwrite replaces it, --resume continues it.
    """
    from ..train import best_epoch, train

    if data is None and resume is None:
        raise click.UsageError("give a DATA file of SMILES (or --resume RUN_DIR)")
    if resume is not None and overwrite:
        raise click.UsageError("--resume continues a run and --overwrite replaces one; give only one of them")
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
    try:
        model_config = ModelConfig.from_dict(settings["model"])
        train_config = TrainConfig.from_dict(settings["train"])
        result = train(data, out, model_config=model_config, train_config=train_config, smiles_column=smiles_column,
                       property_columns=tuple(properties), runs_dir=runs_dir, resume=resume, n_jobs=n_jobs,
                       use_cache=use_cache, resume_changes=changes, overwrite=overwrite)
    except ConfigError as exc:
        _config_error(exc, opts, config_file)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    prep = result.prepared
    last = result.history[-1] if result.history else {}
    best = best_epoch(result.history, result.model.train_config.kl_weight
                      if result.model.train_config is not None else None) or {}
    click.echo(f"molecules: {prep.n_input} read, {len(prep)} used, {len(prep.rejected)} rejected "
               f"({prep.n_duplicates} duplicates) -> {result.run_dir / 'rejected.csv'}", err=True)
    if best:
        click.echo(f"best epoch {best['epoch']}: val -ELBO {best['val_nelbo']:.2f} nats, "
                   f"reconstruction accuracy {best['val_recon_acc']:.3f}, active units {best['active_units']}; "
                   f"{len(result.history)} epochs in {last.get('elapsed_s', 0):.0f} s", err=True)
    click.echo(f"model: {result.run_dir / 'model.pt'}", err=True)
    click.echo(str(result.run_dir))
