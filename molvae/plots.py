"""Pictures: molecule grids, training curves, latent maps and property histograms.

Molecule grids need only RDKit (PNG through its Cairo drawer, or SVG). Everything else
draws with matplotlib, an optional extra (``pip install 'molvae[plots]'``); without it
those functions raise :class:`PlotsUnavailable` with that instruction. Figures are built
with ``matplotlib.figure.Figure`` directly, never ``pyplot``, so nothing here touches
global plotting state or needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import chem
from .errors import InvalidInputError, MolvaeError

__all__ = [
    "PlotsUnavailable",
    "have_matplotlib",
    "molecule_grid",
    "training_curves",
    "latent_projection",
    "latent_map",
    "property_histograms",
    "HISTOGRAM_PROPERTIES",
]

#: Properties drawn by :func:`property_histograms`, with axis labels.
HISTOGRAM_PROPERTIES = {"logp": "logP (Crippen)", "qed": "QED", "sa": "SA score", "mw": "Molecular weight (g/mol)"}

_LABELS = {"qed": "QED", "logp": "logP", "sa": "SA score", "mw": "MW", "heavy_atoms": "heavy atoms",
           "plogp": "penalized logP"}


class PlotsUnavailable(MolvaeError):
    """matplotlib (the ``plots`` extra) is not installed."""


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable(
            "plots need matplotlib, an optional extra: pip install 'molvae[plots]' (or pip install matplotlib)"
        ) from exc
    return Figure(**kwargs)


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise InvalidInputError(f"plot file {path} must end in .png, .svg or .pdf")
    from .checkpoint import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix.lstrip("."))
    return path


# ----------------------------------------------------------------------------- molecule grid

def molecule_grid(smiles: Sequence[str], legends: Sequence[str] | None = None,
                  path: str | os.PathLike | None = None, *, mols_per_row: int = 5,
                  sub_img_size: tuple[int, int] = (260, 220), max_mols: int = 50,
                  fmt: str | None = None) -> bytes | str:
    """Draw molecules in a grid with a legend under each (RDKit ``MolDraw2D``).

    Unparsable or empty SMILES are skipped with their legend; at most ``max_mols`` are drawn.

    Args:
        smiles: molecules to draw.
        legends: one caption per molecule (a score or a property), or ``None``.
        path: write the image here; the format follows the suffix (``.png`` or ``.svg``).
        fmt: ``"png"`` or ``"svg"`` when there is no ``path`` (default PNG).

    Returns:
        PNG bytes or SVG text.

    Raises:
        InvalidInputError: no drawable molecule, a legend count that does not match, or an
            unsupported file suffix.
    """
    from rdkit.Chem.Draw import rdMolDraw2D

    smiles = list(smiles)
    if legends is not None:
        legends = [str(x) for x in legends]
        if len(legends) != len(smiles):
            raise InvalidInputError(f"{len(legends)} legends for {len(smiles)} molecules")
    if path is not None:
        suffix = Path(path).suffix.lower().lstrip(".")
        if suffix not in ("png", "svg"):
            raise InvalidInputError(f"grid file {path} must end in .png or .svg")
        fmt = suffix
    fmt = (fmt or "png").lower()
    if fmt not in ("png", "svg"):
        raise InvalidInputError(f"grid format must be png or svg, got {fmt!r}")
    mols, captions = [], []
    for i, s in enumerate(smiles):
        m = chem.to_mol(s)
        if m is None or m.GetNumAtoms() == 0:
            continue
        mols.append(m)
        captions.append(legends[i] if legends is not None else "")
        if len(mols) >= max_mols:
            break
    if not mols:
        raise InvalidInputError("no valid molecule to draw in the grid")
    per_row = max(1, min(mols_per_row, len(mols)))
    n_rows = math.ceil(len(mols) / per_row)
    w, h = sub_img_size
    if fmt == "png":
        drawer = rdMolDraw2D.MolDraw2DCairo(per_row * w, n_rows * h, w, h)
    else:
        drawer = rdMolDraw2D.MolDraw2DSVG(per_row * w, n_rows * h, w, h)
    opts = drawer.drawOptions()
    opts.legendFontSize = 15
    opts.clearBackground = True
    # Each molecule fills its own panel, but small ones are not blown up past a normal bond length.
    opts.drawMolsSameScale = False
    opts.fixedBondLength = 28
    with chem.quiet_rdkit():
        from rdkit.Chem.Draw import rdDepictor

        for m in mols:
            rdDepictor.Compute2DCoords(m)
        drawer.DrawMolecules(mols, legends=captions)
    drawer.FinishDrawing()
    out = drawer.GetDrawingText()
    if path is not None:
        from .checkpoint import atomic_output

        with atomic_output(path, "w" if isinstance(out, str) else "wb") as f:
            f.write(out)
    return out


# ----------------------------------------------------------------------------- training curves

def _history_frame(history: Sequence[Mapping[str, Any]] | pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if isinstance(history, pd.DataFrame):
        return history
    if isinstance(history, (str, os.PathLike)):
        p = Path(history)
        if p.is_dir():
            p = p / "history.csv"
        if not p.is_file():
            raise InvalidInputError(f"{p}: no training history (history.csv)")
        return pd.read_csv(p)
    return pd.DataFrame(list(history))


def training_curves(history: Sequence[Mapping[str, Any]] | pd.DataFrame | str | os.PathLike,
                    path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Six panels per epoch: reconstruction, KL, β, validation −ELBO, active units and
    reconstruction accuracy (exact and token), from a run's history (rows of ``train``'s
    history, a DataFrame, ``history.csv`` or a run folder).

    Raises:
        PlotsUnavailable: matplotlib is missing.
        InvalidInputError: an empty history.
    """
    df = _history_frame(history)
    if df.empty or "epoch" not in df.columns:
        raise InvalidInputError("training history is empty; nothing to plot")
    fig = _figure(figsize=(13, 6.6))
    axes = fig.subplots(2, 3)
    x = df["epoch"].to_numpy()
    panels = [
        ("Reconstruction (nats/molecule)", [("train_recon", "train"), ("val_recon", "validation")]),
        ("KL(q(z|x) ‖ p(z)) (nats/molecule)", [("train_kl", "train"), ("val_kl", "validation")]),
        ("KL weight β", [("beta", "β at epoch end")]),
        ("Validation −ELBO (nats/molecule)", [("val_nelbo", "validation −ELBO")]),
        ("Active units", [("active_units", "Var[μ_d] > 0.01")]),
        ("Reconstruction accuracy", [("val_recon_acc", "exact (greedy μ)"), ("val_token_acc", "token (teacher-forced)")]),
    ]
    for ax, (name, series) in zip(axes.flat, panels):
        drawn = False
        for col, label in series:
            if col in df.columns and df[col].notna().any():
                ax.plot(x, df[col].to_numpy(dtype=float), marker="o", markersize=3, label=label)
                drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn and len(series) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
    if "val_nelbo" in df.columns and df["val_nelbo"].notna().any():
        best = int(df["val_nelbo"].astype(float).idxmin())
        axes.flat[3].axvline(x[best], color="grey", ls="--", lw=0.8)
        axes.flat[3].annotate(f"best epoch {int(x[best])}", (x[best], float(df["val_nelbo"].iloc[best])),
                              textcoords="offset points", xytext=(5, 8), fontsize=8)
    fig.suptitle(title or "Training curves", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- latent map

def latent_projection(z: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of latent vectors ``z (n, dim)`` and a description of the projection.

    ``pca`` (default, NumPy SVD) or ``umap`` (needs ``umap-learn``).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise InvalidInputError(f"need at least two latent vectors to project, got shape {z.shape}")
    method = method.lower()
    if method == "pca":
        centred = z - z.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        comps = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
        coords = centred @ comps.T
        var = s ** 2
        share = var[:2].sum() / var.sum() if var.sum() > 0 else 0.0
        return coords, f"PCA of μ ({100 * share:.0f}% of variance)"
    if method == "umap":
        try:
            import umap  # type: ignore
        except ImportError as exc:
            raise InvalidInputError("--method umap needs umap-learn: pip install umap-learn (or use pca)") from exc
        reducer = umap.UMAP(n_components=2, random_state=seed)
        return reducer.fit_transform(z), "UMAP of μ"
    raise InvalidInputError(f"unknown projection {method!r}; expected pca or umap")


def latent_map(model, smiles: Sequence[str], path: str | os.PathLike, *,
               color_by: str | Sequence[float] | None = "qed", method: str = "pca", seed: int = 0,
               title: str | None = None) -> pd.DataFrame:
    """A 2-D map of the latent means of ``smiles`` coloured by a property.

    Args:
        model: a :class:`~molvae.core.MolVAE`.
        smiles: molecules to place (those the model cannot encode are left out).
        path: image file (``.png``, ``.svg`` or ``.pdf``).
        color_by: a property name (``qed``, ``logp``, ``sa``, ``mw``, ``heavy_atoms``,
            ``plogp``), one value per molecule, or ``None`` for a single colour.
        method: ``pca`` or ``umap``.

    Returns:
        The placed molecules: ``smiles``, ``x``, ``y`` and the colour value (``color``).
    """
    from .sample import posterior

    smiles = list(smiles)
    values: np.ndarray | None = None
    label = None
    if isinstance(color_by, str):
        values = chem.compute_properties(smiles, [color_by])[color_by]
        label = _LABELS.get(color_by, color_by)
    elif color_by is not None:
        values = np.asarray(list(color_by), dtype=float)
        if len(values) != len(smiles):
            raise InvalidInputError(f"{len(values)} colour values for {len(smiles)} molecules")
        label = "value"
    mu, _, reasons = posterior(model, smiles)
    ok = np.array([r is None for r in reasons])
    if ok.sum() < 2:
        raise InvalidInputError(f"only {int(ok.sum())} of {len(smiles)} molecules could be encoded; need 2")
    coords, how = latent_projection(mu[ok], method, seed)
    fig = _figure(figsize=(7.5, 6.2))
    ax = fig.subplots()
    kept_vals = values[ok] if values is not None else None
    if kept_vals is not None and np.isfinite(kept_vals).any():
        order = np.argsort(np.nan_to_num(kept_vals, nan=-np.inf))  # high values drawn on top
        sc = ax.scatter(coords[order, 0], coords[order, 1], c=kept_vals[order], cmap="viridis", s=9, alpha=0.85,
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label=label)
    else:
        ax.scatter(coords[:, 0], coords[:, 1], s=9, alpha=0.7, linewidths=0)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(title or f"Latent space: {how}, {int(ok.sum())} molecules" + (f", coloured by {label}" if label else ""),
                 fontsize=10)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    _save(fig, path)
    return pd.DataFrame({"smiles": [s for s, k in zip(smiles, ok) if k], "x": coords[:, 0], "y": coords[:, 1],
                         "color": kept_vals if kept_vals is not None else np.nan})


# ----------------------------------------------------------------------------- property histograms

def property_histograms(generated_smiles: Sequence[str], reference_smiles: Sequence[str],
                        out_dir: str | os.PathLike, *, properties: Sequence[str] = tuple(HISTOGRAM_PROPERTIES),
                        labels: tuple[str, str] = ("generated", "training"), filename: str = "property_histograms.png",
                        max_molecules: int = 20000, seed: int = 0) -> Path:
    """Overlaid density histograms of properties (logP, QED, SA, MW by default) of generated
    vs reference molecules, one panel each, written to ``out_dir/filename``.

    Invalid SMILES are left out; each set is subsampled (seeded) to ``max_molecules``.
    The legend gives each set's mean and count.

    Returns:
        The image path.
    """
    fig = _figure(figsize=(11, 7.5))
    gen = _subsample([s for s in generated_smiles if isinstance(s, str) and s], max_molecules, seed)
    ref = _subsample([s for s in reference_smiles if isinstance(s, str) and s], max_molecules, seed)
    if not gen and not ref:
        raise InvalidInputError("no molecules to draw property histograms of")
    names = list(properties)
    pg = chem.compute_properties(gen, names)
    pr = chem.compute_properties(ref, names)
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, name in zip(axes, names):
        a = pg[name][np.isfinite(pg[name])]
        b = pr[name][np.isfinite(pr[name])]
        both = np.concatenate([a, b])
        if len(both) == 0:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            continue
        # The axis spans both sets' 0.1-99.9th percentiles; the rare values beyond are left out of the
        # bars (not piled into the edge bins) but counted in the legend.
        lo = min(np.percentile(v, 0.1) for v in (a, b) if len(v))
        hi = max(np.percentile(v, 99.9) for v in (a, b) if len(v))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, int(np.clip(np.sqrt(len(both)), 10, 40)) + 1)
        for values, label, color in ((b, labels[1], "#9aa0a6"), (a, labels[0], "#1f77b4")):
            if len(values):
                ax.hist(values[(values >= lo) & (values <= hi)], bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{label} (mean {values.mean():.2f}, n={len(values)})",
                        histtype="stepfilled", edgecolor=color)
        ax.set_xlabel(HISTOGRAM_PROPERTIES.get(name, _LABELS.get(name, name)))
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.25)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"Properties: {labels[0]} vs {labels[1]}", fontsize=12)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out / filename)


def _subsample(items: list[str], k: int, seed: int) -> list[str]:
    if len(items) <= k:
        return items
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=k, replace=False))
    return [items[i] for i in idx]
