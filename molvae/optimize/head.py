"""Differentiable scores of latent vectors: the model's property head, or a surrogate fitted on the fly.

The property head (``ModelConfig.property_names``, trained jointly from μ) predicts
standardized targets; :func:`predict_properties` and :class:`HeadScorer` undo the
standardization with the ``property_stats`` stored in the model file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import chem
from ..errors import InvalidInputError

__all__ = ["property_stats", "predict_properties", "HeadScorer", "MLPSurrogate"]


def _require_head(model) -> None:
    if model.net.property_head is None or not model.config.property_names:
        raise InvalidInputError(
            "the model has no property head; train one with `molvae train DATA --property qed` "
            "(an RDKit property: qed, logp, sa, plogp, mw, heavy_atoms) or --property <CSV column>")


def property_stats(model) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` that de-standardize the head's outputs (zeros and ones when not stored)."""
    _require_head(model)
    n = len(model.config.property_names)
    stats = (model.metadata or {}).get("property_stats") or {}
    mean = np.asarray(stats.get("mean", [0.0] * n), dtype=float)
    std = np.asarray(stats.get("std", [1.0] * n), dtype=float)
    if mean.shape != (n,) or std.shape != (n,):
        raise InvalidInputError(f"model's property_stats do not match its {n} properties")
    return mean, std


@torch.no_grad()
def predict_properties(model, smiles: Sequence[str], batch_size: int = 512) -> pd.DataFrame:
    """The head's predictions for each input, rows aligned with ``smiles``.

    Returns:
        A table with ``smiles`` (canonical, '' when rejected), one column per property
        (NaN when rejected) and ``reason`` ('' when predicted).

    Raises:
        InvalidInputError: the model has no property head.
    """
    _require_head(model)
    mean, std = property_stats(model)
    z, reasons = model.encode(list(smiles), batch_size=batch_size)
    names = list(model.config.property_names)
    pred = np.full((len(smiles), len(names)), np.nan)
    ok = np.flatnonzero(np.isfinite(z).all(axis=1))
    head = model.net.property_head
    for s in range(0, len(ok), batch_size):
        idx = ok[s:s + batch_size]
        out = head(torch.as_tensor(z[idx], device=model.device)).float().cpu().numpy()
        pred[idx] = out * std + mean
    canon = [chem.canonicalize(s) or "" if r is None else "" for s, r in zip(smiles, reasons)]
    table = {"smiles": canon}
    for j, name in enumerate(names):
        table[name] = pred[:, j]
    table["reason"] = [r or "" for r in reasons]
    return pd.DataFrame(table)


class HeadScorer:
    """``f(z) = Σ_i w_i · (head(z)_i · std_i + mean_i)``: the objective as the head predicts it."""

    def __init__(self, model, weights: np.ndarray):
        mean, std = property_stats(model)
        self.head = model.net.property_head
        self.device = model.device
        self.scale = torch.as_tensor(np.asarray(weights) * std, dtype=torch.float32, device=self.device)
        self.offset = float(np.dot(weights, mean))
        for p in self.head.parameters():
            p.requires_grad_(False)

    def fit(self, z: np.ndarray, y: np.ndarray) -> None:
        """The head is fixed; nothing to fit."""

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z) @ self.scale + self.offset


class MLPSurrogate:
    """A small MLP regressor ``z -> score`` refitted on every observed pair (used without a matching head).

    Targets are standardized; NaN scores (invalid/rejected) are set to the worst score seen.
    """

    def __init__(self, latent_dim: int, device: torch.device, hidden: int = 64, seed: int = 0,
                 epochs: int = 150, weight_decay: float = 1e-4):
        self.latent_dim, self.device, self.hidden = latent_dim, device, hidden
        self.seed, self.epochs, self.weight_decay = seed, epochs, weight_decay
        self.net: nn.Module | None = None
        self.mu, self.sd = 0.0, 1.0
        self.n_fits = 0

    def fit(self, z: np.ndarray, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=float)
        finite = np.isfinite(y)
        if not finite.any():
            return
        y = np.where(finite, y, y[finite].min())
        self.mu, self.sd = float(y.mean()), float(y.std()) or 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.n_fits)
            if self.net is None:
                net = nn.Sequential(nn.Linear(self.latent_dim, self.hidden), nn.SiLU(),
                                    nn.Linear(self.hidden, self.hidden), nn.SiLU(), nn.Linear(self.hidden, 1))
                net.to(self.device)
                epochs = self.epochs
            else:
                # Warm start: the data only grew a little since the last fit.
                net, epochs = self.net, max(1, self.epochs // 3)
                for p in net.parameters():
                    p.requires_grad_(True)
            zt = torch.as_tensor(z, dtype=torch.float32, device=self.device)
            yt = torch.as_tensor((y - self.mu) / self.sd, dtype=torch.float32, device=self.device)
            opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=self.weight_decay)
            for _ in range(epochs):
                opt.zero_grad()
                loss = ((net(zt).squeeze(-1) - yt) ** 2).mean()
                loss.backward()
                opt.step()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.n_fits += 1

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return z.sum(-1) * 0.0
        return self.net(z).squeeze(-1) * self.sd + self.mu


def finite_rows(z: np.ndarray) -> np.ndarray:
    """Indices of rows of ``z`` without NaN."""
    return np.flatnonzero(np.isfinite(z).all(axis=1)) if len(z) else np.zeros(0, dtype=int)
