"""``molvae plot latent|curves|grid`` and ``molvae report``."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd

from . import main
from .common import device_option, load_model, positive_int, read_input, smiles_column_option, threads_option


@main.group("plot")
def plot_group() -> None:
    """Pictures: latent-space maps, training curves, molecule grids (matplotlib: pip install 'molvae[plots]')."""


@plot_group.command("latent")
@click.argument("model_spec", metavar="RUN_OR_MODEL")
@click.argument("input_", metavar="INPUT")
@click.option("--color-by", default="qed", show_default=True,
              help="A property (qed, logp, sa, mw, heavy_atoms, plogp), a numeric column of INPUT, or 'none'.")
@click.option("--method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="2-D projection of the latent means (umap needs umap-learn).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="latent_map.png", show_default=True,
              help="Image file (.png, .svg or .pdf).")
@click.option("--coords", type=click.Path(dir_okay=False), help="Also write smiles, x, y, colour to this CSV.")
@click.option("--max-molecules", type=int, default=20000, show_default=True, callback=positive_int,
              help="Plot a seeded random subset of this size at most.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the subsample and of UMAP.")
@smiles_column_option
@device_option
@threads_option
def plot_latent_cmd(model_spec, input_, color_by, method, out, coords, max_molecules, seed, smiles_column, device):
    """A 2-D map of the latent space (PCA of μ by default) of the molecules in INPUT, coloured by a property."""
    from ..chem import PROPERTY_FUNCTIONS
    from ..errors import InvalidInputError
    from ..plots import latent_map

    table = read_input(input_, smiles_column)
    if len(table) > max_molecules:
        idx = np.sort(np.random.default_rng(seed).choice(len(table), size=max_molecules, replace=False))
        table = table.iloc[idx].reset_index(drop=True)
    colour: object = color_by
    if color_by.lower() == "none":
        colour = None
    elif color_by not in PROPERTY_FUNCTIONS:
        if color_by not in table.columns:
            raise InvalidInputError(f"--color-by {color_by!r} is neither a property ({', '.join(PROPERTY_FUNCTIONS)}) "
                                    f"nor a column of {input_} ({', '.join(map(str, table.columns))})")
        colour = pd.to_numeric(table[color_by], errors="coerce").to_numpy(dtype=float)
    model = load_model(model_spec, device)
    placed = latent_map(model, table["input"].tolist(), out, color_by=colour, method=method, seed=seed)
    if isinstance(colour, np.ndarray):
        placed = placed.rename(columns={"color": color_by})
    elif isinstance(colour, str):
        placed = placed.rename(columns={"color": colour})
    if coords:
        from ..checkpoint import atomic_output

        with atomic_output(coords, newline="") as f:
            placed.to_csv(f, index=False)
    click.echo(f"placed {len(placed)} of {len(table)} molecules; wrote {out}", err=True)


@plot_group.command("curves")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Image file [RUN_DIR/training_curves.png].")
def plot_curves_cmd(run_dir, out):
    """Training curves of a run (reconstruction, KL, β, validation −ELBO, active units, accuracy)."""
    from ..plots import training_curves

    path = training_curves(run_dir, out or Path(run_dir) / "training_curves.png", title=f"Training curves: {run_dir}")
    click.echo(str(path))


@plot_group.command("grid")
@click.argument("input_", metavar="INPUT")
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="Image file (.png or .svg).")
@click.option("--legend", help="Caption: a column of INPUT or a property (qed, logp, sa, mw, heavy_atoms, plogp).")
@click.option("--n", "-n", "n", type=int, default=50, show_default=True, callback=positive_int,
              help="Draw the first N molecules.")
@click.option("--per-row", type=int, default=5, show_default=True, callback=positive_int, help="Molecules per row of the grid.")
@smiles_column_option
def plot_grid_cmd(input_, out, legend, n, per_row, smiles_column):
    """Draw the molecules of INPUT (a file of SMILES, e.g. the output of generate) as a grid."""
    from .. import chem
    from ..errors import InvalidInputError
    from ..plots import molecule_grid

    table = read_input(input_, smiles_column).head(n)
    legends = None
    if legend:
        if legend in table.columns:
            legends = [str(v) for v in table[legend]]
        elif legend in chem.PROPERTY_FUNCTIONS:
            legends = [f"{legend} {v:.2f}" for v in chem.compute_properties(table["input"].tolist(), [legend])[legend]]
        else:
            raise InvalidInputError(f"--legend {legend!r} is neither a column of {input_} nor a property")
    molecule_grid(table["input"].tolist(), legends, out, mols_per_row=per_row, max_mols=n)
    click.echo(str(out))


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="HTML file [RUN_DIR/report.html].")
@click.option("--n-samples", type=int, default=1000, show_default=True, callback=positive_int,
              help="Molecules sampled for the grid, quick metrics and histograms.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the samples in the report.")
@click.option("--reference", type=click.Path(dir_okay=False, exists=True),
              help="Training molecules to compare with [the data file recorded in the run].")
@device_option
@threads_option
def report_cmd(run_dir, out, n_samples, seed, reference, device):
    """One self-contained HTML page about a run: configuration, curves, samples, metrics, histograms.

    Uses RUN_DIR/metrics.json (from `molvae evaluate --json`) when present and shows any
    optimization results (CSV files with smiles and score columns) found in the folder.
    """
    from ..report import build_report

    model = load_model(run_dir, device)
    path = build_report(run_dir, out, n_samples=n_samples, seed=seed, reference=reference, model=model)
    click.echo(str(path))
