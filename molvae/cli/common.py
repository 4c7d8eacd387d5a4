"""Options and helpers shared by several commands."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd

from ..checkpoint import atomic_output
from ..config import ConfigError, Decoding, decode_settings, field_kind, shown_default
from ..core import DEFAULT_SHIPPED, MolVAE, find_model
from ..errors import InvalidInputError


def model_option(f=None, *, shipped: str = DEFAULT_SHIPPED):
    """``--model``: a model file, a run folder or a shipped model name (``shipped``: the fallback
    without a run)."""
    def add(f):
        return click.option(
            "--model", "-m", "model_spec", default=None, metavar="PATH|NAME",
            help=f"Model file, run folder or shipped model name (default: latest run in ./runs, else the "
                 f"shipped model {shipped!r}).",
        )(f)
    return add(f) if f is not None else add


def setting_option(f: dataclasses.Field) -> tuple[str, Callable]:
    """``(parameter name, click decorator)`` of the option of config field ``f``, from its metadata: the
    option's name, help, default shown and choices are declared once, on the field."""
    cli = f.metadata["cli"]
    kind, _ = field_kind(f)
    default = shown_default(f)
    text = f.metadata["help"] + (f" [{default}]." if default is not None else ".")
    name = cli.split("/")[0].replace("-", "_")
    if "/" in cli:
        on, off = cli.split("/")
        return name, click.option(f"--{on}/--{off}", name, default=None, help=text)
    if kind == "bool":
        return name, click.option(f"--{cli}", name, is_flag=True, default=None, help=text)
    choices = f.metadata.get("choices")
    type_ = click.Choice(choices) if choices else {"int": int, "float": float}.get(kind, str)
    short = (f"-{f.metadata['short']}",) if f.metadata.get("short") else ()
    return name, click.option(f"--{cli}", *short, name, type=type_, help=text)


#: option parameter name -> Decoding field name
_DECODE_OPTIONS = {setting_option(f)[0]: f.name for f in decode_settings()}


def decoding_options(func: Callable) -> Callable:
    """The :class:`~molvae.config.Decoding` options (``--decode``, ``--temperature``, ...) and ``--greedy``,
    their short form; :func:`decoding_from` reads them back."""
    func = click.option("--greedy", is_flag=True, help="Short for --decode greedy.")(func)
    for f in reversed(decode_settings()):
        func = setting_option(f)[1](func)
    return func


def decoding_from(opts: dict[str, Any]) -> Decoding:
    """The :class:`~molvae.config.Decoding` of a command's options (popped from ``opts``); a bad value is
    a usage error on its option."""
    values = {field: opts.pop(name) for name, field in _DECODE_OPTIONS.items()}
    greedy = opts.pop("greedy", False)
    if greedy:
        if values["method"] not in (None, "greedy"):
            raise click.BadParameter(f"--greedy is --decode greedy; got --decode {values['method']} too",
                                     param_hint="--greedy")
        values["method"] = "greedy"
    try:
        return Decoding(**{k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        hint = next(f"--{n.replace('_', '-')}" for n, f in _DECODE_OPTIONS.items() if f == exc.key)
        text = str(exc)
        raise click.BadParameter("must " + text.split(" must ", 1)[1] if " must " in text else text,
                                 param_hint=hint) from exc


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")(f)


def _set_threads(ctx, param, value):
    value = positive_int(ctx, param, value)
    if value:
        import torch

        from ..workers import available_cpus

        cores = available_cpus()
        if value > cores:
            click.echo(f"--threads {value}: this machine has {cores} core(s) available; using {cores}", err=True)
            value = cores
        torch.set_num_threads(value)
    return value


def threads_option(f):
    """``--threads N``: torch's CPU threads for this command (set before any model work starts)."""
    return click.option("--threads", type=int, expose_value=False, callback=_set_threads,
                        help="CPU threads for torch [torch's default: all cores].")(f)


_NEUTRALIZE = "molvae.neutralize"


def _set_neutralize(ctx, param, value):
    ctx.meta[_NEUTRALIZE] = bool(value)
    return value


def neutralize_option(f):
    """``--neutralize``: the model reads a charged molecule whose charged tokens it lacks as its neutral form
    (applied by :func:`load_model`)."""
    return click.option("--neutralize", is_flag=True, expose_value=False, callback=_set_neutralize,
                        help="Read charged molecules whose charged tokens the model lacks as their neutral form "
                             "(RDKit's standardizer) [off].")(f)


def load_model(spec: str | None, device: str = "auto", announce: bool = True, default: str | None = None) -> MolVAE:
    """Find and load a model, saying on stderr which one is used; without ``spec`` and without a
    run, the shipped model ``default`` (``moses`` when None). A command with :func:`neutralize_option`
    gets a model that reads as it asks."""
    path, how = find_model(spec, default=default or DEFAULT_SHIPPED)
    model = MolVAE.load(path, device=device)
    ctx = click.get_current_context(silent=True)
    model.neutralize = bool(ctx is not None and ctx.meta.get(_NEUTRALIZE))
    if announce:
        click.echo(f"using {how} ({path})", err=True)
    return model


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[dict[str, Any]]:
    """Turn the first Ctrl-C/SIGTERM into ``flag["stop"] = True`` (and ``flag["signal"]`` its number) for a
    loop to check between batches, so output is never cut mid-row; a second one interrupts at once."""
    from ..workers import stop_on_signals

    flag: dict[str, Any] = {"stop": False, "signal": 0}

    def stop(signum: int) -> None:
        flag["stop"], flag["signal"] = True, signum

    with stop_on_signals(stop):
        yield flag


def positive_int(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def non_negative_int(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value


def positive_float(ctx, param, value):
    if value is not None and not 0 < value < float("inf"):
        raise click.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def fraction(ctx, param, value):
    if value is not None and not 0.0 <= value < 1.0:
        raise click.BadParameter(f"must be in [0, 1), got {value}")
    return value


def refuse_same_file(out: str | None, *inputs: str | None, option: str = "--out") -> None:
    """An output that is one of the inputs would replace the data the command reads: refuse it."""
    import os

    if not out or not os.path.exists(out):
        return
    for src in inputs:
        if src and src != "-" and os.path.exists(src) and os.path.samefile(out, src):
            raise click.BadParameter(f"{out} is the input file {src}; write the output to another file",
                                     param_hint=option)


def output_path(value: str | None) -> Path | None:
    return Path(value) if value else None


MOLECULE_FILE_SUFFIXES = {".csv", ".tsv", ".smi", ".smiles", ".txt", ".sdf", ".sd", ".mol", ".gz"}


def read_input(value: str, smiles_column: str | None = None) -> pd.DataFrame:
    """A molecule file (any format the data reader takes), ``-`` for standard input, or, if no such
    file exists, one SMILES: a table with ``row`` and ``input``.

    Raises:
        InvalidInputError: a missing file (the name has a molecule-file suffix), or text that is
            neither a file nor a SMILES RDKit parses (the message says both, with RDKit's reason).
    """
    from .. import chem
    from ..data import read_molecules

    if value == "-" or "://" in value or Path(value).exists():
        return read_molecules(value, smiles_column)
    if chem.to_mol(value) is not None:
        return pd.DataFrame({"row": [1], "input": [value]})
    if Path(value).suffix.lower() in MOLECULE_FILE_SUFFIXES:
        raise InvalidInputError(f"{value}: no such file")
    raise InvalidInputError(f"{value}: not a SMILES RDKit can parse ({chem.parse_error(value)}), nor an existing file")


def smiles_column_option(f):
    return click.option("--smiles-column", help="SMILES column of a CSV input (default: 'smiles' or the only column).")(f)


def with_read_errors(table: pd.DataFrame, reasons) -> list[str | None]:
    """``reasons`` with the reader's own reason where it could not read a record (an SD record RDKit rejects),
    so every command names the same cause that ``train`` does (not "empty SMILES")."""
    from ..data import READ_ERROR

    if READ_ERROR not in table.columns:
        return list(reasons)
    return [err if isinstance(err, str) and err else r for err, r in zip(table[READ_ERROR], reasons)]


def report_rejects(table: pd.DataFrame, reasons, rejected_out: str | None = None, *, what: str = "rows",
                   verb: str = "encoded") -> None:
    """Say on stderr which of ``what`` could not be ``verb`` (first few, with row numbers and reasons),
    optionally all of them as CSV."""
    bad = [(int(r), s, why) for r, s, why in zip(table["row"], table["input"], reasons) if why]
    if rejected_out:
        with atomic_output(rejected_out, newline="") as f:
            pd.DataFrame(bad, columns=["row", "input", "reason"]).to_csv(f, index=False)
    if not bad:
        return
    shown = "; ".join(f"row {r}: {why}" for r, _, why in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    if rejected_out:
        where = f", all listed in {rejected_out}"
    elif verb == "encoded":
        where = ", see the reason column"
    else:
        where = ""
    click.echo(f"{len(bad)} of {len(table)} {what} could not be {verb}{where}: {shown}{more}", err=True)
