"""``molvae generate``."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from pathlib import Path

import click

from tqdm.auto import tqdm

from ..checkpoint import atomic_output
from ..chem import compute_properties
from ..config import progress_wanted
from ..core import REDRAW_REASONS
from ..errors import InvalidInputError
from ..sample import PROPERTY_COLUMNS, reference_set, sample_molecules
from . import main
from .common import (decoding_from, decoding_options, device_option, load_model, model_option, positive_int,
                     refuse_same_file, stop_on_interrupt, threads_option)


#: From this many molecules `generate` samples in worker processes by default (each takes ~2 s to start).
PARALLEL_FROM = 20_000


def _output_file(ctx, param, value):
    """--out must be .csv, .smi or .txt: checked before the model is loaded or any file is touched."""
    if value is not None and Path(value).suffix.lower() not in (".csv", ".smi", ".txt"):
        raise click.BadParameter(f"output {value} must end in .csv, .smi or .txt")
    return value


@main.command("generate")
@click.option("--n", "-n", "n", type=int, default=1000, show_default=True, callback=positive_int,
              help="Number of molecules.")
@model_option
@click.option("--out", "-o", type=click.Path(dir_okay=False), callback=_output_file,
              help="Write smiles,selfies,valid to .csv (or SMILES only to .smi); default: SMILES on stdout.")
@decoding_options
@click.option("--prior", default=None, metavar="NAME",
              help="Where z comes from: 'normal' (N(0, I)) or a prior fitted with `molvae prior` "
                   "(e.g. 'gmm'); default: the model's default prior, named on stderr.")
@click.option("--seed", type=int, default=None, help="Random seed (same seed, same molecules).")
@click.option("--batch-size", type=int, default=1000, show_default=True, callback=positive_int,
              help="Molecules decoded per step (memory and speed; the molecules depend on it with --seed).")
@click.option("--unique", is_flag=True, help="Sample until N distinct molecules (capped at 50×N draws).")
@click.option("--novel-vs", type=click.Path(dir_okay=False, exists=True),
              help="Keep only molecules absent from this file (e.g. the training set).")
@click.option("--properties", is_flag=True, help="Add QED, logP, SA, MW and heavy-atom columns (CSV output).")
@click.option("--grid", type=click.Path(dir_okay=False),
              help="Also draw the first 50 valid molecules, with their QED, as a grid image (.png or .svg).")
@click.option("--n-jobs", "-j", type=int, default=None,
              help="Sampling processes on the CPU, one torch thread each (0 = all cores) "
                   f"[all cores from N = {PARALLEL_FROM:,}, else 1]; the molecules do not depend on it.")
@device_option
@threads_option
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when stderr is a terminal].")
def generate_cmd(n, model_spec, out, prior, seed, batch_size, unique, novel_vs, properties, grid,
                 n_jobs, device, progress, **decode_opts):
    """Sample N molecules from the model's prior and decode them to canonical SMILES.

    The prior is N(0, I) unless the model carries a fitted one (`molvae prior`) chosen as its
    default; --prior picks one by name, and the one used is named on stderr.

    --decode says how a latent vector becomes a molecule (named on stderr with the prior): sample
    tokens (--temperature, --top-p), take the most likely (greedy), search --beam-width beams (beam),
    or sample and redraw molecules whose SELFIES had atoms ignored (clean). Whatever the rule, a
    molecule with unpaired electrons or a ring over --max-ring-size atoms is redrawn from a new latent
    vector unless --allow-radicals / --max-ring-size 0 say otherwise.

    Molecules are written in batches as they are made (memory stays flat for any N); Ctrl-C
    stops after the current batch, leaving only complete rows.
    """
    if properties and not (out and Path(out).suffix.lower() == ".csv"):
        raise click.BadParameter("property columns go into a CSV: use --out FILE.csv", param_hint="--properties")
    if grid and Path(grid).suffix.lower() not in (".png", ".svg"):
        raise click.BadParameter(f"grid file {grid} must end in .png or .svg", param_hint="--grid")
    if n_jobs is not None and n_jobs < 0:
        raise click.BadParameter(f"must be >= 0, got {n_jobs}", param_hint="--n-jobs")
    decoding = decoding_from(decode_opts)
    refuse_same_file(out, novel_vs)
    model = load_model(model_spec, device)
    cap = model.batch_cap()
    if min(batch_size, n) > cap:
        click.echo(f"--batch-size {batch_size} capped at {cap} on {model.device.type}: a batch is decoded in one piece, "
                   "so a larger one only costs memory and delays a stop (the molecules depend on the batch size)",
                   err=True)
        batch_size = cap
    prior_name = model.resolve_prior(prior)
    click.echo(f"prior: {prior_name} ({model.describe_prior(prior_name)}); decoding: {decoding.describe()}", err=True)
    exclude = reference_set(novel_vs, keep_largest_fragment=model.keeps_largest_fragment) if novel_vs else None
    redrawn: dict[str, int] = {}
    batches = sample_molecules(model, n, decoding=decoding, seed=seed, batch_size=batch_size, prior=prior_name,
                               n_jobs=n_jobs if n_jobs is not None else (0 if n >= PARALLEL_FROM else 1),
                               unique=unique, exclude=exclude, redrawn=redrawn)
    out_path = Path(out) if out else None
    written, draws, interrupted, grid_smiles = _write_batches(batches, n, out_path, properties, bool(grid), progress)
    _report_redraws(redrawn, draws)
    if interrupted:  # the signal's number: exit 130 after SIGINT, 143 after SIGTERM, as the shell reports them
        where = f"{out_path} holds" if out_path else "wrote"
        click.echo(f"Error: interrupted: {where} {written} complete molecules of the {n} asked for", err=True)
        sys.exit(128 + interrupted)
    if out_path:
        click.echo(f"wrote {written} molecules to {out_path}", err=True)
    if grid and grid_smiles:
        from ..chem import qed
        from ..plots import molecule_grid

        molecule_grid(grid_smiles[:50], [f"QED {qed(s):.2f}" for s in grid_smiles[:50]], grid)
        click.echo(f"wrote a grid of {min(len(grid_smiles), 50)} molecules to {grid}", err=True)
    if written < n:
        what = "unique" if exclude is None else "unique novel"
        raise InvalidInputError(f"only {written} {what} molecules after {draws} draws (asked for {n}); "
                                "try --decode sample with a higher --temperature, or a smaller --n")


#: Redrawing more than this share of the samples is worth a line on stderr: the rules cost time and shape the output.
REDRAW_NOTICE = 0.2


def _report_redraws(redrawn: dict[str, int], draws: int) -> None:
    """Say on stderr how many samples were redrawn and why, when it is a large share of the draws."""
    total = sum(redrawn.values())
    if not draws or total / draws <= REDRAW_NOTICE:
        return
    why = ", ".join(f"{k} {REDRAW_REASONS[r]}" for r, k in sorted(redrawn.items(), key=lambda kv: -kv[1]) if k)
    click.echo(f"redrew {total} samples for {draws} molecules ({why}); --allow-radicals and --max-ring-size 0 "
               "keep such samples", err=True)


def _format_rows(rows: list[tuple[str, str, bool]], as_csv: bool, properties: bool) -> str:
    """One batch as CSV rows (with property columns if asked) or as SMILES lines."""
    if not as_csv:
        return "".join(f"{s}\n" for s, _, _ in rows)
    if properties:
        props = compute_properties([s for s, _, _ in rows], PROPERTY_COLUMNS)
        rows = [row + tuple(f"{props[c][i]:.6g}" if props[c][i] == props[c][i] else "" for c in PROPERTY_COLUMNS)
                for i, row in enumerate(rows)]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _write_batches(batches, n: int, out_path: Path | None, properties: bool, grid: bool, progress: bool | None
                   ) -> tuple[int, int, bool, list[str]]:
    """Write what :func:`sample_molecules` yields to ``out_path`` (stdout if ``None``), batch by batch.

    Each batch is formatted first and written with one call, and Ctrl-C is acted on only between
    batches: the file holds complete rows at every moment a clean exit can happen. A temporary file
    replaces ``out_path`` when the loop ends (also after Ctrl-C, with the complete rows so far); an
    error leaves an existing file untouched.

    Returns:
        ``(written, draws, the number of the signal that stopped it or 0, first valid SMILES for the grid)``.
    """
    as_csv = out_path is not None and out_path.suffix.lower() == ".csv"
    grid_smiles: list[str] = []
    written = draws = 0
    bar = tqdm(total=n, desc="generate", unit="mol", disable=not progress_wanted(progress), file=sys.stderr)
    with contextlib.ExitStack() as stack:
        interrupt = stack.enter_context(stop_on_interrupt())
        stack.callback(bar.close)
        stack.callback(batches.close)
        handle = stack.enter_context(atomic_output(out_path, newline="")) if out_path else sys.stdout
        if as_csv:
            handle.write(",".join(("smiles", "selfies", "valid") + (PROPERTY_COLUMNS if properties else ())) + "\r\n")
        for rows, draws in batches:
            if grid and len(grid_smiles) < 50:
                grid_smiles.extend(s for s, _, v in rows[:50] if v)
            handle.write(_format_rows(rows, as_csv, properties))
            handle.flush()
            written += len(rows)
            bar.update(len(rows))
            if interrupt["stop"]:
                break
    return written, draws, int(interrupt["signal"]) if interrupt["stop"] else 0, grid_smiles
