"""``molvae encode``, ``decode``, ``reconstruct``, ``interpolate``, ``neighbors`` and ``score``.

Thin wrappers over :mod:`molvae.sample` and :meth:`molvae.MolVAE.encode`/``decode``.
Tables go to ``--out FILE.csv`` or, without it, as CSV to stdout; summaries go to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
import pandas as pd

from . import main
from ..checkpoint import atomic_output
from ..errors import InvalidInputError
from .common import (device_option, load_model, model_option, neutralize_option, positive_float, positive_int,
                     read_input, refuse_same_file, report_rejects, smiles_column_option, threads_option,
                     with_read_errors)

# ----------------------------------------------------------------------------- helpers of the latent commands


def write_table(df: pd.DataFrame, out: str | None, *, properties: bool = False, smiles_column: str = "smiles",
                what: str = "rows") -> None:
    """Write ``df`` as CSV to ``out`` (``.csv``/``.tsv``) or stdout, with property columns if asked."""
    from ..sample import add_properties

    if properties:
        df = add_properties(df, smiles_column)
    if out is None:
        df.to_csv(sys.stdout, index=False, float_format="%.6g")
        return
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        raise click.BadParameter(f"output {path} must end in .csv or .tsv", param_hint="--out")
    with atomic_output(path, newline="") as f:
        df.to_csv(f, index=False, sep="\t" if suffix == ".tsv" else ",", float_format="%.6g")
    click.echo(f"wrote {len(df)} {what} to {path}", err=True)


def write_grid(path: str | None, smiles, legends) -> None:
    """``--grid out.png|svg``: an RDKit molecule grid of ``smiles`` with ``legends``."""
    if not path:
        return
    from ..plots import molecule_grid

    molecule_grid(list(smiles), [str(x) for x in legends], path)
    click.echo(f"wrote molecule grid to {path}", err=True)


def fail_if_none_encoded(table: pd.DataFrame, reasons, source: str, out: str | None) -> None:
    """Exit 1 (after the table with every row's reason was written) when no row could be encoded:
    a job that produced nothing usable must not look like a success to a script or pipeline."""
    if len(table) and all(reasons):
        kept = f"; every row and its reason is in {out}" if out else ""
        raise InvalidInputError(f"{source}: none of the {len(table)} molecules could be encoded by this model "
                                f"(first reason: {next(iter(reasons))}){kept}")


def out_option(f):
    return click.option("--out", "-o", type=click.Path(dir_okay=False),
                        help="Write the table to this .csv/.tsv (default: CSV on stdout).")(f)


def properties_option(f):
    return click.option("--properties", is_flag=True,
                        help="Add QED, logP, SA, MW and heavy-atom columns.")(f)


def grid_option(f):
    return click.option("--grid", "grid", type=click.Path(dir_okay=False),
                        help="Also draw the molecules as a grid image (.png or .svg).")(f)


# ----------------------------------------------------------------------------- encode / decode

@main.command("encode")
@click.argument("input_", metavar="INPUT")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="latents.npy (matrix), .csv or .parquet (row, input, reason, z0..).")
@click.option("--sample", is_flag=True, help="A sample z ~ q(z|x) instead of the posterior mean μ.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--rejected", "rejected_out", type=click.Path(dir_okay=False),
              help="Also write the rows that could not be encoded (row, input, reason) to this CSV.")
@smiles_column_option
@click.option("--batch-size", type=int, default=512, show_default=True, callback=positive_int,
              help="Molecules encoded per step (memory and speed only).")
@neutralize_option
@model_option
@device_option
@threads_option
def encode_cmd(input_, out, sample, seed, rejected_out, smiles_column, batch_size, model_spec, device):
    """Latent vectors of the molecules in INPUT (a file, or one SMILES), rows aligned with the input.

    Molecules the model cannot read get a NaN row; they are reported on stderr.
    """
    from ..sample import save_latents

    refuse_same_file(out, input_)
    refuse_same_file(rejected_out, input_, option="--rejected")
    table = read_input(input_, smiles_column)
    model = load_model(model_spec, device)
    z, reasons = model.encode(table["input"].tolist(), sample=sample, seed=seed if sample else None,
                              batch_size=batch_size)
    reasons = with_read_errors(table, reasons)
    meta = pd.DataFrame({"row": table["row"], "input": table["input"], "reason": [r or "" for r in reasons]})
    save_latents(out, z, meta)
    n_ok = sum(r is None for r in reasons)
    click.echo(f"encoded {n_ok} of {len(table)} molecules ({z.shape[1]}-dimensional "
               f"{'samples' if sample else 'means'}) to {out}", err=True)
    report_rejects(table, reasons, rejected_out)
    fail_if_none_encoded(table, reasons, input_, out)


@main.command("decode")
@click.argument("latents", type=click.Path(dir_okay=False))
@out_option
@click.option("--sample/--greedy", "stochastic", default=False,
              help="Sample each token (with --temperature) instead of taking the most likely one [greedy].")
@click.option("--temperature", "-t", type=float, default=1.0, show_default=True, callback=positive_float,
              help="Softmax temperature of the decoder with --sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of --sample (same seed, same molecules).")
@properties_option
@grid_option
@click.option("--batch-size", type=int, default=1000, show_default=True, callback=positive_int,
              help="Latent rows decoded per step (memory and speed only).")
@model_option
@device_option
@threads_option
def decode_cmd(latents, out, stochastic, temperature, seed, properties, grid, batch_size, model_spec, device):
    """Molecules decoded from LATENTS (.npy, or .csv/.parquet with columns z0, z1, ...), one row each.

    NaN rows (molecules `encode` could not read) give an empty, invalid row, so rows stay aligned.
    """
    from ..sample import load_latents

    refuse_same_file(out, latents)
    z = load_latents(latents)
    model = load_model(model_spec, device)
    if z.shape[1] != model.config.latent_dim:
        raise InvalidInputError(f"{latents}: vectors have {z.shape[1]} dimensions; the model's latent space has "
                                f"{model.config.latent_dim}")
    finite = np.isfinite(z).all(axis=1)
    df = pd.DataFrame({"row": np.arange(1, len(z) + 1), "smiles": "", "selfies": "", "valid": False})
    if finite.any():
        dec = model.decode(z[finite], greedy=not stochastic, temperature=temperature, seed=seed,
                           batch_size=batch_size)
        df.loc[finite, "smiles"] = dec["smiles"].to_numpy()
        df.loc[finite, "selfies"] = dec["selfies"].to_numpy()
        df.loc[finite, "valid"] = dec["valid"].to_numpy()
    if (~finite).any():
        click.echo(f"{int((~finite).sum())} latent rows hold NaN or infinite values; their rows are left empty",
                   err=True)
    write_table(df, out, properties=properties, what="molecules")
    ok = df[df["valid"]]
    write_grid(grid, ok["smiles"], [f"row {r}" for r in ok["row"]])


# ----------------------------------------------------------------------------- reconstruct

@main.command("reconstruct")
@click.argument("input_", metavar="INPUT")
@click.option("--n-decodes", "-k", type=int, default=1, show_default=True, callback=positive_int,
              help="1: greedy decode of μ. K > 1: K samples z ~ q(z|x), each decoded greedily; the most "
                   "frequent decode counts and exact_fraction gives the share of exact ones.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the posterior samples of --n-decodes.")
@out_option
@properties_option
@smiles_column_option
@click.option("--batch-size", type=int, default=512, show_default=True, callback=positive_int,
              help="Molecules per step (memory and speed only).")
@neutralize_option
@model_option
@device_option
@threads_option
def reconstruct_cmd(input_, n_decodes, seed, out, properties, smiles_column, batch_size, model_spec, device):
    """Encode and decode the molecules of INPUT: exact-match flag, Tanimoto to the input, overall accuracy.

    The summary goes to stderr; the per-molecule table to --out or stdout.
    """
    from ..sample import reconstruct, reconstruction_accuracy

    refuse_same_file(out, input_)
    table = read_input(input_, smiles_column)
    model = load_model(model_spec, device)
    res = reconstruct(model, table["input"].tolist(), n_decodes=n_decodes, seed=seed, batch_size=batch_size)
    res["reason"] = [r or "" for r in with_read_errors(table, [r or None for r in res["reason"]])]
    res.insert(0, "row", table["row"].to_numpy())
    summary = reconstruction_accuracy(res)
    write_table(res, out, properties=properties, smiles_column="reconstructed", what="molecules")
    extra = (f"; mean exact share of {n_decodes} decodes {summary['mean_exact_fraction']:.3f}"
             if n_decodes > 1 else "")
    click.echo(f"reconstruction accuracy {summary['accuracy']:.3f} ({summary['n_exact']}/{summary['n_encoded']} "
               f"encoded molecules exact; {summary['n_rejected']} not encodable); mean Tanimoto to the input "
               f"{summary['mean_tanimoto']:.3f}{extra}", err=True)
    fail_if_none_encoded(table, [r or None for r in res["reason"]], input_, out)


# ----------------------------------------------------------------------------- interpolate / neighbors

@main.command("interpolate")
@click.argument("smiles_a")
@click.argument("smiles_b")
@click.option("--steps", type=int, default=10, show_default=True,
              help="Points on the path, both end points included (>= 2).")
@click.option("--spherical", is_flag=True, help="Spherical (slerp) instead of linear interpolation.")
@click.option("--keep-duplicates", is_flag=True, help="One row per point instead of one per distinct molecule.")
@out_option
@properties_option
@grid_option
@neutralize_option
@model_option
@device_option
@threads_option
def interpolate_cmd(smiles_a, smiles_b, steps, spherical, keep_duplicates, out, properties, grid, model_spec,
                    device):
    """Molecules on the latent path from SMILES_A to SMILES_B, each with its position t in [0, 1]."""
    from ..sample import interpolate

    if steps < 2:
        raise click.BadParameter(f"must be >= 2, got {steps}", param_hint="--steps")
    model = load_model(model_spec, device)
    df = interpolate(model, smiles_a, smiles_b, steps=steps, spherical=spherical, dedupe=not keep_duplicates)
    write_table(df, out, properties=properties, what="molecules")
    ok = df[df["valid"]]
    write_grid(grid, ok["smiles"], [f"t={p:.2f}" for p in ok["position"]])


@main.command("neighbors")
@click.argument("smiles")
@click.option("--n", "-n", "n", type=int, default=50, show_default=True, callback=positive_int,
              help="Distinct neighbours wanted.")
@click.option("--radius", "-r", type=float, default=0.5, show_default=True, callback=positive_float,
              help="Noise scale around μ per latent dimension, in prior standard deviations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the noise around μ.")
@click.option("--max-draws", type=int, default=None, callback=positive_int,
              help="Latent points to decode at most [20 × N].")
@out_option
@grid_option
@neutralize_option
@model_option
@device_option
@threads_option
def neighbors_cmd(smiles, n, radius, seed, max_draws, out, grid, model_spec, device):
    """Molecules decoded around the latent vector of SMILES, most similar first, with properties."""
    from ..sample import neighbors

    model = load_model(model_spec, device)
    df = neighbors(model, smiles, n=n, radius=radius, seed=seed, max_draws=max_draws)
    if len(df) < n:
        click.echo(f"found {len(df)} distinct neighbours (asked for {n}); try a larger --radius or --max-draws",
                   err=True)
    write_table(df, out, what="molecules")
    write_grid(grid, df["smiles"], [f"sim {t:.2f}" for t in df["tanimoto"]])


# ----------------------------------------------------------------------------- score

@main.command("score")
@click.argument("input_", metavar="INPUT")
@click.option("--n-samples", type=int, default=8, show_default=True, callback=positive_int,
              help="Posterior samples averaged per molecule.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the posterior samples (same seed, same scores).")
@out_option
@properties_option
@smiles_column_option
@click.option("--batch-size", type=int, default=256, show_default=True, callback=positive_int,
              help="Molecules per step (memory and speed only).")
@neutralize_option
@model_option
@device_option
@threads_option
def score_cmd(input_, n_samples, seed, out, properties, smiles_column, batch_size, model_spec, device):
    """Outlier score of each molecule: its negative ELBO (reconstruction + KL, nats).

    \b
    HIGH score = UNLIKE THE TRAINING DATA (hard to reconstruct and/or a posterior far
    from the prior); it does not say whether a molecule is good. The sum grows with size:
    score_per_token divides by the number of SELFIES tokens. Molecules the model cannot
    read at all get an empty score and a reason.
    """
    from ..sample import score

    refuse_same_file(out, input_)
    table = read_input(input_, smiles_column)
    model = load_model(model_spec, device)
    res = score(model, table["input"].tolist(), n_samples=n_samples, seed=seed, batch_size=batch_size)
    res["reason"] = [r or "" for r in with_read_errors(table, [r or None for r in res["reason"]])]
    res.insert(0, "row", table["row"].to_numpy())
    write_table(res, out, properties=properties, what="molecules")
    enc = res[res["encoded"]]
    if len(enc):
        click.echo(f"scored {len(enc)} of {len(res)} molecules: median −ELBO {enc['score'].median():.2f} nats "
                   f"(higher = less like the training data)", err=True)
    reasons = [r or None for r in res["reason"]]
    report_rejects(table, reasons)
    fail_if_none_encoded(table, reasons, input_, out)
