"""Initial designs: where a search starts in latent space.

In order of preference: around the start molecule (constrained mode), encoded molecules
the user gave (``init_smiles``, e.g. the training set), or prior samples z ~ N(0, I).
When the user also gave those molecules' scores (``init_scores``: labelled data), the
design is drawn from them for free (:func:`known_design`): the best ones, so the search
starts where the data is best, and a random rest, so the surrogate sees the spread.
"""

from __future__ import annotations

import numpy as np

from .base import decode_smiles, encode_smiles, prior_latents
from .head import finite_rows
from .oracle import Oracle

__all__ = ["initial_design", "score_design", "known_design", "KnownSet"]


class KnownSet:
    """Molecules with known scores (canonical SMILES, finite scores), best first."""

    def __init__(self, smiles: list[str], scores: np.ndarray):
        scores = np.asarray(scores, dtype=float)
        keep = np.flatnonzero(np.isfinite(scores))
        order = keep[np.argsort(-scores[keep], kind="stable")]
        self.smiles = [smiles[i] for i in order]
        self.scores = scores[order]

    def __len__(self) -> int:
        return len(self.smiles)

    def choose(self, n: int, rng: np.random.Generator, top_fraction: float = 0.5) -> list[int]:
        """Indices of ``n`` molecules: the best ``top_fraction·n`` and a seeded random rest."""
        n = min(n, len(self))
        n_top = min(n, int(round(top_fraction * n)))
        rest = np.arange(n_top, len(self))
        extra = rng.choice(rest, size=n - n_top, replace=False) if n > n_top else np.zeros(0, dtype=int)
        return list(range(n_top)) + sorted(int(i) for i in extra)


def known_design(model, oracle: Oracle, known: KnownSet, n: int, rng: np.random.Generator,
                 top_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """An initial design of ``n`` known molecules, encoded, recorded with the oracle uncharged:
    ``(z (m, d), scores (m,))`` best first (molecules the model cannot encode are dropped)."""
    idx = known.choose(n, rng, top_fraction)
    smiles = [known.smiles[i] for i in idx]
    z = encode_smiles(model, smiles)
    ok = finite_rows(z)
    smiles = [smiles[i] for i in ok]
    y = oracle.add_known(smiles, known.scores[[idx[i] for i in ok]])
    return z[ok].astype(np.float32), y


def initial_design(model, n: int, rng: np.random.Generator, *, init_smiles: list[str] | None = None,
                   start_z: np.ndarray | None = None, noise: float = 0.5) -> np.ndarray:
    """``(n, latent_dim)`` start points (fewer only if ``n`` is 0)."""
    dim = model.config.latent_dim
    if n <= 0:
        return np.zeros((0, dim), dtype=np.float32)
    if start_z is not None:
        z = np.repeat(np.asarray(start_z, dtype=np.float32)[None], n, axis=0)
        z[1:] += (rng.standard_normal((n - 1, dim)) * noise).astype(np.float32)
        return z
    if init_smiles:
        z = _encode_sample(model, init_smiles, n, rng)[0]
        if len(z) < n:
            z = np.concatenate([z, prior_latents(n - len(z), dim, rng)])
        return z.astype(np.float32)
    return prior_latents(n, dim, rng)


def _encode_sample(model, init_smiles: list[str], n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[str]]:
    idx = rng.choice(len(init_smiles), size=min(n, len(init_smiles)), replace=False)
    chosen = [init_smiles[i] for i in sorted(idx)]
    z = encode_smiles(model, chosen)
    ok = finite_rows(z)
    return z[ok], [chosen[i] for i in ok]


def score_design(model, oracle: Oracle, n: int, rng: np.random.Generator, *, init_smiles: list[str] | None = None,
                 start_z: np.ndarray | None = None, noise: float = 0.5, method: str | None = None,
                 step: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Score an initial design of ``n`` points with the oracle: ``(z (m, d), scores (m,))``.

    Encoded ``init_smiles`` are scored as themselves (their latent mean stands for them, as in
    JT-VAE's BO); prior or start-centred points are decoded first.
    """
    dim = model.config.latent_dim
    if n <= 0:
        return np.zeros((0, dim), dtype=np.float32), np.zeros(0)
    if init_smiles and start_z is None:
        z, smiles = _encode_sample(model, init_smiles, n, rng)
        if len(z) < n:
            extra = prior_latents(n - len(z), dim, rng)
            z = np.concatenate([z, extra])
            smiles = smiles + decode_smiles(model, extra)
    else:
        z = initial_design(model, n, rng, start_z=start_z, noise=noise)
        smiles = decode_smiles(model, z)
    y = oracle(smiles, step=step, method=method)
    return z.astype(np.float32), y
