"""Priors to sample the latent space from: N(0, I) and a Gaussian mixture fitted after training.

A VAE's decoder only learned the regions of latent space its training molecules' posteriors
covered (the *aggregate posterior* q(z) = E_x q(z|x)). Where q(z) and N(0, I) disagree, z ~ N(0, I)
lands in holes and decodes to strange molecules. Ex-post density estimation (Ghosh et al. 2020,
"From variational to deterministic autoencoders"; the second stage of Dai & Wipf 2019) fits a
density model to latent codes of the training set after training and samples that instead. Here
the density model is a full-covariance Gaussian mixture, fitted with scikit-learn's
``GaussianMixture`` to one posterior draw z = μ + σ·ε per training molecule.

A prior is stored in the model file as plain tensors (weights-only loadable) under ``priors``;
``default_prior`` names the one ``molvae generate`` uses when ``--prior`` is not given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, InvalidInputError

__all__ = ["NORMAL", "GaussianMixturePrior", "prior_from_dict", "PRIOR_KINDS"]

#: Name of the standard normal prior every model has.
NORMAL = "normal"
#: Names a stored prior can have.
PRIOR_KINDS = ("gmm",)


class GaussianMixturePrior:
    """A full-covariance Gaussian mixture over the latent space.

    Args:
        weights: ``(K,)`` mixing weights (summing to 1).
        means: ``(K, D)`` component means.
        scale_tril: ``(K, D, D)`` lower Cholesky factors of the component covariances.
        info: how it was fitted (sizes, seed, log-likelihood), stored with it.
    """

    kind = "gmm"

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor,
                 info: dict[str, Any] | None = None):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.scale_tril = torch.as_tensor(scale_tril, dtype=torch.float64)
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def describe(self) -> str:
        return f"{self.n_components}-component Gaussian mixture fitted to the training set's latent codes"

    @classmethod
    def fit(cls, z: np.ndarray, *, n_components: int = 32, seed: int = 0, max_iter: int = 200,
            reg_covar: float = 1e-4, info: dict[str, Any] | None = None) -> GaussianMixturePrior:
        """Fit to latent vectors ``z (n, D)`` with scikit-learn's EM (k-means initialization, seeded)."""
        try:
            from sklearn.mixture import GaussianMixture
        except ImportError as exc:  # pragma: no cover - scikit-learn comes with the prior/metrics extras
            raise InvalidInputError(
                "fitting a latent prior needs scikit-learn: pip install 'molvae[prior]'") from exc
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or not np.isfinite(z).all():
            raise InvalidInputError(f"latent codes must be a finite (n, D) array, got shape {z.shape}")
        if n_components < 1:
            raise InvalidInputError(f"n_components must be >= 1, got {n_components}")
        if len(z) < 2 * n_components:
            raise InvalidInputError(
                f"{len(z)} latent codes are too few for {n_components} mixture components (need >= {2 * n_components})")
        gm = GaussianMixture(n_components=n_components, covariance_type="full", random_state=seed,
                             max_iter=max_iter, reg_covar=reg_covar)
        # As many BLAS threads as torch uses: OpenBLAS' default (all cores) spin-waits on a busy
        # machine and made a 5,000-point fit 5x slower with one other process running.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=torch.get_num_threads()):
            gm.fit(z)
        chol = np.linalg.cholesky(gm.covariances_)
        record = {"n_fit": int(len(z)), "seed": int(seed), "converged": bool(gm.converged_),
                  "n_iter": int(gm.n_iter_), "mean_log_likelihood": float(gm.score(z)), **(info or {})}
        return cls(torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_), torch.from_numpy(chol), record)

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
        """``n`` latent vectors ``(n, D)`` float32, reproducible for a seeded CPU ``generator``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        z = self.means[comp] + torch.einsum("nij,nj->ni", self.scale_tril[comp], eps)
        return z.to(device=device, dtype=torch.float32)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of ``z (n, D)`` under the mixture, ``(n,)``."""
        z = torch.as_tensor(z, dtype=torch.float64)
        mix = torch.distributions.Categorical(probs=self.weights)
        comp = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return torch.distributions.MixtureSameFamily(mix, comp).log_prob(z)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": self.weights.clone(), "means": self.means.clone(),
                "scale_tril": self.scale_tril.clone(), "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], latent_dim: int, where: str = "model file") -> GaussianMixturePrior:
        """Rebuild from :meth:`to_dict` output, checking every shape and value."""
        try:
            w, m, L = data["weights"], data["means"], data["scale_tril"]
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: stored gmm prior lacks weights, means or scale_tril") from exc
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (w, m, L)):
            raise CheckpointError(f"{where}: stored gmm prior is not made of floating-point tensors")
        k = w.shape[0] if w.ndim == 1 else -1
        if k < 1 or tuple(m.shape) != (k, latent_dim) or tuple(L.shape) != (k, latent_dim, latent_dim):
            raise CheckpointError(
                f"{where}: stored gmm prior has shapes {tuple(w.shape)}, {tuple(m.shape)}, {tuple(L.shape)}; "
                f"expected (K,), (K, {latent_dim}), (K, {latent_dim}, {latent_dim})")
        if not all(torch.isfinite(t).all() for t in (w, m, L)):
            raise CheckpointError(f"{where}: stored gmm prior holds NaN or infinite values")
        diag = torch.diagonal(L, dim1=-2, dim2=-1)
        if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-4) or (diag <= 0).any():
            raise CheckpointError(f"{where}: stored gmm prior has invalid weights or covariance factors")
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        return cls(w / w.sum(), m, torch.tril(L), info)


def prior_from_dict(data: Any, latent_dim: int, where: str = "model file") -> GaussianMixturePrior:
    """A stored prior of any known kind."""
    if not isinstance(data, dict) or data.get("kind") not in PRIOR_KINDS:
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{where}: unknown stored prior {kind!r}; this molvae reads {list(PRIOR_KINDS)}")
    return GaussianMixturePrior.from_dict(data, latent_dim, where)
