"""The learned latent prior: fitting, storage in the model file, sampling, the CLI, hostile files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from molvae import MolVAE
from molvae.checkpoint import load_checkpoint, save_checkpoint
from molvae.cli import main
from molvae.errors import CheckpointError, InvalidInputError
from molvae.prior import GaussianMixturePrior
from molvae.sample import fit_prior, perturbation_quality


@pytest.fixture(scope="module")
def small_smiles(small_csv) -> list[str]:
    return pd.read_csv(small_csv)["smiles"].tolist()


@pytest.fixture(scope="module")
def fitted(tiny_run, small_smiles, tmp_path_factory) -> Path:
    """The tiny model with a 3-component mixture prior fitted to its training molecules, saved."""
    model = MolVAE.load((tiny_run.run_dir / "model.pt"))
    fit_prior(model, small_smiles, n_components=3, seed=0)
    path = tmp_path_factory.mktemp("prior") / "with_prior.pt"
    model.save(path)
    return path


def test_mixture_matches_data_it_was_fitted_to():
    # Two well-separated clusters in 3-D: the fitted mixture must find both, with their weights.
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.5, size=(600, 3))
    b = rng.normal([-5, 0, 0], 1.0, size=(300, 3))
    prior = GaussianMixturePrior.fit(np.vstack([a, b]), n_components=2, seed=0)
    order = torch.argsort(prior.means[:, 0])
    assert torch.allclose(prior.weights[order], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), atol=0.02)
    assert torch.allclose(prior.means[order, 0], torch.tensor([-5.0, 5.0], dtype=torch.float64), atol=0.2)
    z = prior.sample(20000, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and z.shape == (20000, 3)
    assert abs(float((z[:, 0] > 0).float().mean()) - 2 / 3) < 0.02
    # The density is higher at a cluster centre than between the clusters.
    lp = prior.log_prob(torch.tensor([[5.0, 0, 0], [0.0, 0, 0]]))
    assert lp[0] > lp[1] + 10


def test_fit_refuses_bad_input():
    with pytest.raises(InvalidInputError, match="too few"):
        GaussianMixturePrior.fit(np.zeros((5, 2)), n_components=4)
    with pytest.raises(InvalidInputError, match="finite"):
        GaussianMixturePrior.fit(np.full((50, 2), np.nan), n_components=2)


def test_prior_round_trips_through_the_model_file(fitted):
    data = torch.load(fitted, weights_only=True)  # plain tensors: a stranger's file cannot run code
    assert data["priors"]["gmm"]["kind"] == "gmm"
    model = MolVAE.load(fitted)
    assert model.available_priors() == ["normal", "gmm"]
    assert model.default_prior == "normal"
    prior = model.priors["gmm"]
    assert prior.n_components == 3 and prior.dim == model.config.latent_dim
    assert prior.info["n_fit"] > 100
    a = model.sample(50, seed=3, prior="gmm")["smiles"].tolist()
    b = MolVAE.load(fitted).sample(50, seed=3, prior="gmm")["smiles"].tolist()
    assert a == b
    assert a != model.sample(50, seed=3, prior="normal")["smiles"].tolist()


def test_normal_prior_samples_unchanged_by_a_stored_prior(tiny_model, fitted):
    # A model with a fitted (non-default) prior samples N(0, I) exactly as before.
    before = tiny_model.sample(40, seed=11)["smiles"].tolist()
    assert MolVAE.load(fitted).sample(40, seed=11)["smiles"].tolist() == before


def test_unknown_prior_is_refused(fitted):
    with pytest.raises(InvalidInputError, match="unknown prior 'vamp'"):
        MolVAE.load(fitted).sample(5, prior="vamp")


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: p["priors"]["gmm"].update(means=p["priors"]["gmm"]["means"][:, :2]), "shapes"),
    (lambda p: p["priors"]["gmm"]["scale_tril"].fill_(float("nan")), "NaN"),
    (lambda p: p["priors"]["gmm"].update(weights=p["priors"]["gmm"]["weights"] * 3), "invalid weights"),
    (lambda p: p["priors"]["gmm"].update(kind="flow"), "unknown stored prior"),
    (lambda p: p.update(default_prior="missing"), "default prior 'missing'"),
])
def test_corrupt_prior_is_refused(fitted, tmp_path, corrupt, message):
    payload = load_checkpoint(fitted)
    corrupt(payload)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {k: v for k, v in payload.items() if k not in ("format", "format_version", "versions")})
    with pytest.raises(CheckpointError, match=message):
        MolVAE.load(bad)


def test_cli_prior_fits_compares_and_sets_the_default(tiny_run, small_csv, tmp_path):
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(main, ["prior", str(small_csv), "--model", str((tiny_run.run_dir / "model.pt")), "--out", str(out),
                                    "--components", "2", "--compare", str(small_csv), "--n-compare", "150"])
    assert res.exit_code == 0, res.output
    model = MolVAE.load(out)
    figures = model.priors["gmm"].info["comparison"]["figures"]
    assert set(figures) == {"normal", "gmm"}
    assert all(math.isfinite(v["FCD"]) for v in figures.values())
    # The default is the one with the lower FCD, and generate says which it uses.
    assert model.default_prior == min(figures, key=lambda k: figures[k]["FCD"])
    gen = CliRunner().invoke(main, ["generate", "--n", "5", "--seed", "0", "--model", str(out)])
    assert gen.exit_code == 0, gen.output
    assert f"prior: {model.default_prior}" in gen.output
    forced = CliRunner().invoke(main, ["prior", str(small_csv), "--model", str((tiny_run.run_dir / "model.pt")), "--out",
                                       str(out), "--components", "2", "--default", "gmm"])
    assert forced.exit_code == 0, forced.output
    assert MolVAE.load(out).default_prior == "gmm"


def test_cli_prior_refuses_bad_options(tiny_run, small_csv, tmp_path):
    for args, text in ((["--name", "normal"], "built-in"), (["--default", "vamp"], "must be"),
                       (["--components", "0"], "positive")):
        res = CliRunner().invoke(main, ["prior", str(small_csv), "--model", str((tiny_run.run_dir / "model.pt")), "--out",
                                        str(tmp_path / "x.pt"), *args])
        assert res.exit_code == 2 and text in res.output, res.output
        assert "Traceback" not in res.output
    gen = CliRunner().invoke(main, ["generate", "--n", "3", "--model", str((tiny_run.run_dir / "model.pt")), "--prior", "gmm"])
    assert gen.exit_code == 1 and "unknown prior 'gmm'" in gen.output


def test_perturbation_quality_decodes_near_the_input(tiny_model, small_smiles):
    res = perturbation_quality(tiny_model, small_smiles[:30] + ["not a smiles("], scales=(0.0, 1.0, 50.0), seed=0)
    assert res["n_encoded"] == 30 and res["n_rejected"] == 1
    for s in ("0", "1", "50"):
        assert 0.0 <= res[s]["median_tanimoto"] <= 1.0 and 0.0 <= res[s]["passes_filters"] <= 1.0
    # At s = 0 the decode is the greedy reconstruction of μ: never further from the input than a far jump.
    assert res["0"]["mean_tanimoto"] >= res["50"]["mean_tanimoto"]
    assert res["0"]["exact"] >= res["50"]["exact"]


def test_latent_quality_script_reports_the_smoothness_figure(tiny_run, small_csv, tmp_path):
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("latent_quality", root / "scripts" / "latent_quality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "lq.json"
    report = script.main(["--model", str(tiny_run.run_dir / "model.pt"), "--held-out", str(small_csv), "--n", "40",
                          "--n-decodes", "2", "--score-samples", "2", "--scales", "0.5,2", "--out", str(out)])
    smooth = report["smoothness"]
    assert smooth["n_encoded"] == 40 and set(smooth) == {"n_encoded", "n_rejected", "0.5", "2"}
    assert set(smooth["0.5"]) == {"median_tanimoto", "mean_tanimoto", "exact", "passes_filters", "valid"}
    assert out.is_file()


def test_models_listing_names_the_default_prior(fitted, tmp_path, monkeypatch):
    import shutil

    import molvae.core

    folder = tmp_path / "models"
    folder.mkdir()
    model = MolVAE.load(fitted)
    model.default_prior = "gmm"
    model.save(folder / "withprior.pt")
    shutil.copy(fitted, folder / "plain.pt")
    monkeypatch.setattr(molvae.core, "SHIPPED_MODELS_DIR", folder)
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    blocks = {b.split()[0]: b for b in res.stdout.split("\n\n")}
    assert "prior       gmm (generate's default); also normal" in blocks["withprior"]
    assert "prior       normal (generate's default); also gmm" in blocks["plain"]
