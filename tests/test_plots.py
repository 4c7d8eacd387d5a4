"""Molecule grids, training curves, latent maps, property histograms: files exist and are real images."""

from __future__ import annotations

import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from molvae import plots
from molvae.cli import main
from molvae.errors import InvalidInputError

SMILES = ["CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "not a smiles", "O=C(O)c1ccccc1", "c1ccc2[nH]ccc2c1"]

needs_mpl = pytest.mark.skipif(not plots.have_matplotlib(), reason="matplotlib (the plots extra) is not installed")


def assert_png(path: Path, min_bytes: int = 3000, min_size: tuple[int, int] = (200, 150)) -> tuple[int, int]:
    """A valid PNG file of non-trivial size: signature, IHDR dimensions, IEND, and not tiny."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_size[0] and height >= min_size[1], (width, height)
    assert len(data) >= min_bytes, f"{path}: only {len(data)} bytes"
    try:  # when Pillow is there, also check the picture is not one flat colour
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 8, f"{path} is nearly blank"
    except ImportError:
        pass
    return width, height


def assert_svg(path: Path, min_bytes: int = 2000) -> None:
    text = Path(path).read_text(encoding="utf-8")
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag.endswith("svg")
    assert len(text) >= min_bytes and text.count("<path") > 5


# ----------------------------------------------------------------------------- grid (RDKit only)

def test_molecule_grid_png_and_svg(tmp_path):
    png = plots.molecule_grid(SMILES, [f"m{i}" for i in range(5)], tmp_path / "g.png", mols_per_row=2)
    w, h = assert_png(tmp_path / "g.png")
    assert png == (tmp_path / "g.png").read_bytes()
    assert (w, h) == (2 * 260, 2 * 220)  # 4 valid molecules, 2 per row; the invalid one is skipped
    svg = plots.molecule_grid(SMILES, None, tmp_path / "g.svg")
    assert_svg(tmp_path / "g.svg")
    assert isinstance(svg, str) and "m0" not in svg


def test_molecule_grid_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="no valid molecule"):
        plots.molecule_grid(["xx", ""], None)
    with pytest.raises(InvalidInputError, match="legends"):
        plots.molecule_grid(SMILES, ["a"])
    with pytest.raises(InvalidInputError, match=".png or .svg"):
        plots.molecule_grid(SMILES, None, tmp_path / "g.jpg")


# ----------------------------------------------------------------------------- matplotlib figures

@needs_mpl
def test_training_curves_written_by_train(tiny_run, tmp_path):
    # `train` draws them at the end of a run when matplotlib is installed.
    assert_png(tiny_run.run_dir / "training_curves.png", min_bytes=20000, min_size=(800, 400))
    out = plots.training_curves(tiny_run.run_dir, tmp_path / "c.svg")
    assert_svg(out)
    with pytest.raises(InvalidInputError, match="empty"):
        plots.training_curves([], tmp_path / "x.png")


@needs_mpl
def test_latent_map_pca(tiny_model, tmp_path, small_csv):
    smiles = pd.read_csv(small_csv)["smiles"].tolist()[:80] + ["[U]"]
    placed = plots.latent_map(tiny_model, smiles, tmp_path / "map.png", color_by="logp")
    assert len(placed) == 80 and list(placed.columns) == ["smiles", "x", "y", "color"]
    assert placed["x"].abs().sum() > 0
    assert_png(tmp_path / "map.png", min_bytes=10000)
    with pytest.raises(InvalidInputError, match="umap"):
        try:
            import umap  # noqa: F401
            raise InvalidInputError("umap installed; skip the message check")
        except ImportError:
            plots.latent_map(tiny_model, smiles, tmp_path / "u.png", method="umap")


@needs_mpl
def test_property_histograms(tmp_path, small_csv):
    smiles = pd.read_csv(small_csv)["smiles"].tolist()
    out = plots.property_histograms(smiles[:100], smiles[100:], tmp_path / "h")
    assert out == tmp_path / "h" / "property_histograms.png"
    assert_png(out, min_bytes=20000, min_size=(800, 500))


def test_clear_message_without_matplotlib(monkeypatch, tmp_path, tiny_run):
    # Simulate a missing optional extra: `import matplotlib...` raises ImportError.
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert not plots.have_matplotlib()
    with pytest.raises(plots.PlotsUnavailable, match=r"pip install 'molvae\[plots\]'"):
        plots.training_curves(tiny_run.run_dir, tmp_path / "c.png")
    res = CliRunner().invoke(main, ["plot", "curves", str(tiny_run.run_dir), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 1 and "molvae[plots]" in res.output and "Traceback" not in res.output
    # Grids need only RDKit.
    plots.molecule_grid(SMILES, None, tmp_path / "g.png")
    assert_png(tmp_path / "g.png")


# ----------------------------------------------------------------------------- CLI

@needs_mpl
def test_cli_plot_latent_curves_grid(tmp_path, tiny_run, small_csv):
    run = str(tiny_run.run_dir)
    inp = tmp_path / "in.csv"
    df = pd.read_csv(small_csv).head(60)
    df["activity"] = range(len(df))
    df.to_csv(inp, index=False)
    runner = CliRunner()
    res = runner.invoke(main, ["plot", "latent", run, str(inp), "--color-by", "activity",
                               "--out", str(tmp_path / "m.png"), "--coords", str(tmp_path / "xy.csv")])
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "m.png")
    assert list(pd.read_csv(tmp_path / "xy.csv").columns) == ["smiles", "x", "y", "activity"]
    res = runner.invoke(main, ["plot", "latent", run, str(inp), "--color-by", "nonsense"])
    assert res.exit_code == 1 and "neither a property" in res.output
    res = runner.invoke(main, ["plot", "curves", run, "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "c.png", min_bytes=20000)
    res = runner.invoke(main, ["plot", "grid", str(inp), "--out", str(tmp_path / "g.svg"), "--legend", "qed",
                               "--n", "12"])
    assert res.exit_code == 0, res.output
    assert_svg(tmp_path / "g.svg")


def test_cli_generate_grid_and_properties(tmp_path, tiny_run):
    res = CliRunner().invoke(main, ["generate", "--n", "12", "--seed", "0", "-m", str(tiny_run.run_dir),
                                    "--out", str(tmp_path / "g.csv"), "--properties",
                                    "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "g.csv", keep_default_na=False)
    assert list(df.columns) == ["smiles", "selfies", "valid", "qed", "logp", "sa", "mw", "heavy_atoms"]
    assert len(df) == 12 and (df["heavy_atoms"] >= 1).all()
    assert_png(tmp_path / "g.png")
    res = CliRunner().invoke(main, ["generate", "--n", "2", "-m", str(tiny_run.run_dir), "--properties"])
    assert res.exit_code == 2 and "--out FILE.csv" in res.output


def test_cli_optimize_grid(tmp_path, tiny_run):
    res = CliRunner().invoke(main, ["optimize", "--model", str(tiny_run.run_dir), "--objective", "qed", "--method",
                                    "bo", "--budget", "8", "--n-init", "4", "--batch-size", "4", "--seed", "1",
                                    "--top", "4", "--no-progress", "--grid", str(tmp_path / "top.svg")])
    assert res.exit_code == 0, res.output
    assert_svg(tmp_path / "top.svg", min_bytes=500)
    res = CliRunner().invoke(main, ["optimize", "--model", str(tiny_run.run_dir), "--objective", "qed",
                                    "--budget", "4", "--grid", str(tmp_path / "top.gif")])
    assert res.exit_code == 2 and ".png or .svg" in res.output


@needs_mpl
def test_cli_evaluate_plots(tmp_path, small_csv):
    smiles = pd.read_csv(small_csv)["smiles"].tolist()
    gen = tmp_path / "gen.csv"
    pd.DataFrame({"smiles": smiles[:40] + ["not_a_smiles"]}).to_csv(gen, index=False)
    res = CliRunner().invoke(main, ["evaluate", str(gen), "--train", str(small_csv), "--no-fcd", "--no-cache",
                                    "--n-jobs", "1", "--k", "10", "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "plots" / "property_histograms.png", min_bytes=20000, min_size=(800, 500))
    assert_png(tmp_path / "plots" / "generated_grid.png")
