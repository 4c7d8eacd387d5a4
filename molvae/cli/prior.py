"""``molvae prior``: fit a latent prior to a model's training data and choose the default by measurement."""

from __future__ import annotations

import json

import click

from . import main
from .common import device_option, load_model, model_option, positive_int, threads_option


@main.command("prior")
@click.argument("data", type=click.Path(dir_okay=False, exists=True))
@model_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (the input model plus the fitted prior); may equal the input file.")
@click.option("--components", type=int, default=32, show_default=True, callback=positive_int,
              help="Gaussian mixture components.")
@click.option("--n-fit", type=int, default=50_000, show_default=True, callback=positive_int,
              help="Molecules of DATA (seeded subset) whose latent codes the mixture is fitted to.")
@click.option("--name", default="gmm", show_default=True, help="Name of the fitted prior.")
@click.option("--compare", "compare_file", type=click.Path(dir_okay=False, exists=True),
              help="Held-out molecules to measure each prior against (FCD of --n-compare samples); "
                   "the better prior becomes the default. Without it the default is left as it is.")
@click.option("--n-compare", type=int, default=2000, show_default=True, callback=positive_int,
              help="Samples per prior (and reference molecules) for --compare.")
@click.option("--default", "default", type=str, default=None,
              help="Make this prior the default regardless of --compare ('normal' or the fitted name).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subsets, posterior draws, "
              "mixture initialization and comparison samples.")
@click.option("--smiles-column", default=None, help="SMILES column of DATA / --compare when not found automatically.")
@device_option
@threads_option
def prior_cmd(data, model_spec, out, components, n_fit, name, compare_file, n_compare, default, seed, smiles_column,
              device):
    """Fit a Gaussian mixture to the latent codes of DATA (the model's training molecules) and store
    it in the model file as prior NAME (ex-post density estimation, Ghosh et al. 2020).

    With --compare, samples from N(0, I) and from the mixture are measured against held-out molecules
    (FCD/Test) and the better one becomes what `molvae generate` uses by default.
    """
    import numpy as np

    from ..data import read_molecules
    from ..errors import InvalidInputError
    from ..prior import NORMAL
    from ..sample import compare_priors, fit_prior

    if name == NORMAL:
        raise click.BadParameter(f"{NORMAL!r} is the built-in N(0, I) prior; choose another name", param_hint="--name")
    if default is not None and default not in (NORMAL, name):
        raise click.BadParameter(f"must be {NORMAL!r} or {name!r}, got {default!r}", param_hint="--default")
    model = load_model(model_spec, device)
    smiles = read_molecules(data, smiles_column=smiles_column)["input"].tolist()
    prior = fit_prior(model, smiles, n_components=components, n_fit=n_fit, seed=seed, name=name)
    click.echo(f"fitted {prior.describe()} on {prior.info['n_fit']} molecules "
               f"(mean log-likelihood {prior.info['mean_log_likelihood']:.2f}, {prior.info['n_iter']} EM steps)",
               err=True)
    chosen = default
    if compare_file:
        ref = read_molecules(compare_file, smiles_column=smiles_column)["input"].tolist()
        rng = np.random.default_rng(seed)
        if len(ref) > n_compare:
            ref = [ref[i] for i in sorted(rng.choice(len(ref), size=n_compare, replace=False).tolist())]
        figures = compare_priors(model, ref, n=n_compare, seed=seed, priors=[NORMAL, name])
        prior.info["comparison"] = {"reference": str(compare_file), "n": n_compare, "seed": seed, "figures": figures}
        for k, v in figures.items():
            fcd = "n/a" if v["FCD"] is None else f"{v['FCD']:.3f}"
            click.echo(f"  {k}: FCD {fcd}, Filters {v['Filters']:.3f}, unique {v['unique']:.3f}", err=True)
        if chosen is None:
            scores = {k: v["FCD"] for k, v in figures.items() if v["FCD"] is not None}
            if not scores:
                raise InvalidInputError("could not compute FCD for the comparison (is the fcd package installed?)")
            chosen = min(scores, key=scores.get)
    if chosen is not None:
        model.default_prior = chosen
    model.save(out)
    click.echo(f"default prior: {model.default_prior}; wrote {out}", err=True)
    click.echo(json.dumps({"prior": name, "default_prior": model.default_prior, "info": prior.info}, default=str))
