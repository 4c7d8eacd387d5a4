"""`molvae report`: one self-contained HTML page, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

import pandas as pd
import pytest
from click.testing import CliRunner

from molvae import plots
from molvae.cli import main
from molvae.report import build_report, find_optimization_results, quick_metrics


@pytest.fixture(scope="module")
def report_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with a metrics.json and an optimization log, and its report."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "metrics.json").write_text(json.dumps({
        "validity": 0.991, "uniqueness@1000": 0.998, "novelty": 0.93, "IntDiv": 0.856,
        "counts": {"n_total": 1000, "n_valid": 991}}))
    pd.DataFrame({"step": [1, 2, 3, 4], "smiles": ["CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "c1ccccc1", "CCO"],
                  "score": [0.61, 0.59, 0.44, 0.41], "method": "bo"}).to_csv(run / "optimize_qed.csv", index=False)
    out = build_report(run, n_samples=120, seed=0, model=tiny_run.model)
    return run, out


def test_report_is_self_contained_with_metrics_and_images(report_run):
    run, out = report_run
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<table class="kv" id="metrics">' in page
    metrics = re.search(r'<table class="kv" id="metrics">(.*?)</table>', page, re.S).group(1)
    assert "uniqueness@1000" in metrics and "0.998" in metrics and "counts.n_valid" in metrics
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    alts = {a for a, _ in images}
    assert {"sampled molecules", "top molecules of optimize_qed.csv"} <= alts
    if plots.have_matplotlib():
        assert {"training curves", "property histograms"} <= alts
    assert all(len(b) > 2000 for _, b in images)
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    for needle in ("Training curves", "Sampled molecules", "Optimization results", "Configuration and versions",
                   "torch", "rdkit", "selfies", "latent_dim", "kl_schedule", 'id="history"'):
        assert needle in page, needle


def test_report_quick_metrics_without_metrics_json(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "r.html"), "--n-samples", "60"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    metrics = re.search(r'<table class="kv" id="metrics">(.*?)</table>', page, re.S).group(1)
    for key in ("validity", "uniqueness", "novelty", "internal_diversity", "mean_qed"):
        assert f"<th>{key}</th>" in metrics, key
    assert "Optimization results" not in page
    assert not (run / "report.html").exists()


def test_report_reads_evaluate_json(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "metrics.json").write_text(json.dumps({
        "metrics": {"valid": 0.97, "unique@1000": 1.0, "FCD/Test": 2.5, "Novelty": None},
        "counts": {"generated": {"n_total": 100, "n_valid": 97}}, "notes": ["FCD skipped for a test"],
        "timings": {"total_s": 3.0}}))
    out = build_report(run, n_samples=30, model=tiny_run.model)
    page = out.read_text(encoding="utf-8")
    metrics = re.search(r'<table class="kv" id="metrics">(.*?)</table>', page, re.S).group(1)
    assert "<th>FCD/Test</th><td>2.5</td>" in metrics and "<th>valid</th><td>0.97</td>" in metrics
    assert "timings" not in metrics and "generated.n_valid" in page and "FCD skipped for a test" in page


def test_quick_metrics_denominators():
    gen = pd.DataFrame({"smiles": ["CCO", "CCO", "c1ccccc1", ""], "valid": [True, True, True, False]})
    m = quick_metrics(gen, ["CCO"])
    assert m["validity"] == 0.75 and m["uniqueness"] == pytest.approx(2 / 3) and m["novelty"] == 0.5
    assert m["n_unique"] == 2 and m["n_novel"] == 1


def test_quick_metrics_are_the_metrics_suites_figures():
    """The report's quick figures are molvae.metrics' definitions, not a second implementation."""
    from molvae import metrics

    smiles = ["CCO", "OCC", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "not a smiles", "C1CC1"]
    m = quick_metrics(pd.DataFrame({"smiles": smiles}), ["CCO", "C1CC1"])
    assert m["validity"] == metrics.fraction_valid(smiles) == pytest.approx(6 / 7)
    assert m["uniqueness"] == metrics.fraction_unique(smiles) == pytest.approx(5 / 6)  # CCO and OCC: one molecule
    assert m["novelty"] == metrics.novelty(smiles, ["CCO", "C1CC1"]) == pytest.approx(3 / 5)
    assert m["internal_diversity"] == pytest.approx(metrics.internal_diversity(smiles))  # MOSES IntDiv
    empty = quick_metrics(pd.DataFrame({"smiles": []}), None)
    assert empty["n_samples"] == 0 and empty["n_valid"] == 0 and "internal_diversity" not in empty


def test_find_optimization_results(report_run):
    run, _ = report_run
    assert [p.name for p in find_optimization_results(run)] == ["optimize_qed.csv"]


def test_report_errors(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "model.pt" in res.output and "Traceback" not in res.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None,
                    reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(report_run, tmp_path):
    _, out = report_run
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        # Without the networking flags Chromium stalls on an offline machine.
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2400",
               "--hide-scrollbars", f"--screenshot={shot}", out.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, len(data)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 2400)
        colours = rgb.getcolors(maxcolors=1 << 24)
        assert len(colours) > 200  # text, plots, molecules: far from a blank page
        # the page's dark header band is drawn at the top
        r, g, b = rgb.getpixel((10, 10))
        assert r < 80 and b > 60


def test_a_missing_plotting_library_keeps_its_import_error_as_the_cause(monkeypatch):
    """MOLVAE_DEBUG=1 promises the traceback: the ImportError behind the one-line message stays its cause."""
    import sys

    import numpy as np

    from molvae.errors import InvalidInputError

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(plots.PlotsUnavailable) as info:
        plots.training_curves([{"epoch": 1, "train_loss": 1.0}], "unused.png")
    assert isinstance(info.value.__cause__, ImportError)
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(InvalidInputError, match="umap-learn") as info:
        plots.latent_projection(np.zeros((5, 3), dtype=np.float32), method="umap")
    assert isinstance(info.value.__cause__, ImportError)
