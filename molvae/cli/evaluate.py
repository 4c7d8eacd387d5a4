"""``molvae evaluate``: the MOSES metric table of generated molecules."""

from __future__ import annotations

import click

from . import main
from .common import device_option, non_negative_int, positive_int


def _parse_k(ctx, param, value: str) -> list[int]:
    try:
        ks = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers like 1000,10000, got {value!r}")
    if not ks or any(k < 1 for k in ks):
        raise click.BadParameter(f"expected comma-separated positive integers like 1000,10000, got {value!r}")
    return ks


@main.command("evaluate")
@click.argument("generated", type=click.Path(dir_okay=False))
@click.option("--train", type=click.Path(dir_okay=False), help="Training set, for Novelty.")
@click.option("--test", type=click.Path(dir_okay=False),
              help="Test set: FCD/SNN/Frag/Scaf /Test, property distances, held-out molecules for --model.")
@click.option("--test-scaffolds", type=click.Path(dir_okay=False), help="Scaffold test set: the /TestSF figures.")
@click.option("--k", "k", default="1000,10000", show_default=True, callback=_parse_k,
              help="Sizes for unique@k, comma-separated.")
@click.option("--n-jobs", "-j", type=int, default=0, show_default=True, callback=non_negative_int,
              help="Worker processes (0 = all cores; more than the cores available are capped).")
@click.option("--threads", type=int, callback=positive_int,
              help="CPU threads for torch (ChemNet, Tanimoto products) [the number of worker processes].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write every figure, the counts behind it, notes and timings as JSON.")
@device_option
@click.option("--model", "-m", "model_spec", default=None, metavar="PATH|NAME",
              help="Also measure this model on held-out test molecules: reconstruction, KL, active units.")
@click.option("--heldout-size", type=int, default=1000, show_default=True, callback=positive_int,
              help="Test molecules sampled for the --model figures.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out sample.")
@click.option("--smiles-column", "smiles_columns", multiple=True, metavar="NAME",
              help="SMILES column of CSV inputs, repeatable: each file uses the first of these names it has; "
                   "a file with none of them has its column found by name (with a warning).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Reference-statistics cache [default: $MOLVAE_CACHE_DIR or ~/.cache/molvae].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached reference statistics.")
@click.option("--no-fcd", is_flag=True, help="Skip FCD (the slowest figure; needs the fcd package).")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [when stderr is a terminal].")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write property histograms (logP, QED, SA, MW) of GENERATED vs --train (else --test) and a "
                   "grid of generated molecules into this folder (needs matplotlib).")
def evaluate_cmd(generated, train, test, test_scaffolds, k, n_jobs, threads, json_out, device, model_spec,
                 heldout_size, seed, smiles_columns, cache_dir, no_cache, no_fcd, progress, plots_dir):
    """MOSES metrics of the molecules in GENERATED (csv/smi/sdf, e.g. from `molvae generate`; `-` for stdin).

    \b
    Figures (MOSES definitions, Polykovskiy et al. 2020):
      valid, unique@k, Novelty (vs --train), IntDiv, IntDiv2, Filters,
      FCD/SNN/Frag/Scaf vs --test (/Test) and --test-scaffolds (/TestSF),
      Wasserstein-1 of logP, SA, QED, weight vs --test,
      with --model: held-out Reconstruction, KL, ActiveUnits.
    Reference statistics are cached, so the second run against the same files is fast.

    \b
    Example:
      molvae evaluate generated.csv --train train.csv.gz --test test.csv.gz \\
          --test-scaffolds test_scaffolds.csv.gz --json metrics.json
    """
    from ..metrics import evaluate
    from .common import load_model

    if plots_dir:
        from ..plots import PlotsUnavailable, have_matplotlib

        if not have_matplotlib():  # say so before minutes of metrics, not after
            raise PlotsUnavailable("--plots needs matplotlib, an optional extra: pip install 'molvae[plots]'")
    from ..config import progress_wanted
    from .common import refuse_same_file

    refuse_same_file(json_out, generated, train, test, test_scaffolds, option="--json")
    smiles_column = tuple(smiles_columns) or None
    if generated == "-":
        from ..data import read_molecules

        generated = read_molecules("-", smiles_column)["input"].tolist()
    model = load_model(model_spec, device) if model_spec else None
    show = progress_wanted(progress)
    result = evaluate(generated, train=train, test=test, test_scaffolds=test_scaffolds, k=k, n_jobs=n_jobs,
                      device=device, model=model, heldout_size=heldout_size, seed=seed, cache_dir=cache_dir,
                      use_cache=not no_cache, compute_fcd=not no_fcd, progress=show, smiles_column=smiles_column,
                      threads=threads)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.format_table())
    if json_out:
        path = result.to_json(json_out)
        click.echo(f"wrote {path}", err=True)
    if plots_dir:
        _write_plots(plots_dir, generated, train or test, "training" if train else "test", smiles_column)


def _write_plots(out_dir: str, generated: str | list[str], reference: str | None, label: str,
                 smiles_column: tuple[str, ...] | None) -> None:
    """``--plots DIR``: property histograms of generated vs reference molecules and a molecule grid."""
    from pathlib import Path

    from .. import chem
    from ..data import read_molecules
    from ..plots import molecule_grid, property_histograms

    gen = generated if isinstance(generated, list) else read_molecules(generated, smiles_column)["input"].tolist()
    ref = read_molecules(reference, smiles_column)["input"].tolist() if reference else []
    path = property_histograms(gen, ref, out_dir, labels=("generated", label if reference else "no reference"))
    click.echo(f"wrote {path}", err=True)
    shown = [s for s in dict.fromkeys(gen) if chem.to_mol(s) is not None][:30]
    if shown:
        grid = molecule_grid(shown, [f"QED {chem.qed(s):.2f}" for s in shown], Path(out_dir) / "generated_grid.png",
                             mols_per_row=6)
        click.echo(f"wrote {Path(out_dir) / 'generated_grid.png'} ({len(grid) // 1024} KB)", err=True)
