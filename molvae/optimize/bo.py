"""Batch Bayesian optimization on latent vectors with BoTorch, in a TuRBO trust region.

A GP (``SingleTaskGP``: RBF kernel with dimension-scaled lengthscale prior, standardized
outcomes) is fitted on latent vectors scaled to the unit cube. Each iteration proposes a
batch inside a box around the best point found (Eriksson et al. 2019: the box's side
grows after consecutive successes, halves after consecutive failures, and is reset when
it collapses), decodes the batch greedily and scores new molecules with the oracle.
Repeats cost nothing and still teach the GP; invalid, guarded and infeasible molecules
get the worst score seen, so the search learns to avoid them.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch

from ..errors import InvalidInputError
from .base import BOSettings, decode_smiles, encode_smiles
from .design import KnownSet, known_design, score_design
from .oracle import Oracle

__all__ = ["run_bo"]

log = logging.getLogger(__name__)


def _import_botorch():
    try:
        import botorch  # noqa: F401
        import gpytorch  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            "method 'bo' needs BoTorch and GPyTorch: pip install 'molvae[optimize]' "
            "(or use --method gradient)") from None


class _TrustRegion:
    def __init__(self, s: BOSettings, dim: int):
        self.s = s
        self.length = s.tr_length
        self.fail_tol = s.failure_tolerance or math.ceil(max(4, dim) / s.batch_size)
        self.successes = self.failures = 0
        self.restarts = 0

    def update(self, improved: bool) -> None:
        if improved:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        if self.successes >= self.s.success_tolerance:
            self.length, self.successes = min(2.0 * self.length, self.s.tr_length_max), 0
        elif self.failures >= self.fail_tol:
            self.length, self.failures = self.length / 2.0, 0
        if self.length < self.s.tr_length_min:
            self.length = self.s.tr_length
            self.restarts += 1


def _fill(y: np.ndarray) -> np.ndarray:
    """NaN (unscored) -> the worst finite score, so the GP sees them as bad."""
    finite = np.isfinite(y)
    worst = y[finite].min() - 0.1 * (np.ptp(y[finite]) if finite.sum() > 1 else 1.0) if finite.any() else 0.0
    return np.where(finite, y, worst)


def _training_subset(y: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the best half and the most recent half of the points when there are more than ``limit``."""
    if len(y) <= limit:
        return np.arange(len(y))
    best = np.argsort(-y, kind="stable")[: limit // 2]
    recent = np.arange(len(y) - (limit - len(best)), len(y))
    return np.unique(np.concatenate([best, recent]))


def _propose(X: torch.Tensor, Y: torch.Tensor, tr: _TrustRegion, s: BOSettings, seed: int) -> torch.Tensor:
    """Next batch of points in the unit cube, ``(batch_size, d)``."""
    from botorch.acquisition import qLogExpectedImprovement, qUpperConfidenceBound
    from botorch.fit import fit_gpytorch_mll
    from botorch.generation import MaxPosteriorSampling
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    dim = X.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp = SingleTaskGP(X, Y)
        mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
        try:
            fit_gpytorch_mll(mll)
        except Exception as exc:  # a failed fit still leaves a usable (prior-initialized) GP
            log.debug("GP fit failed (%s); using initial hyperparameters", exc)
    kernel = gp.covar_module
    while not hasattr(kernel, "lengthscale") and hasattr(kernel, "base_kernel"):
        kernel = kernel.base_kernel
    ls = kernel.lengthscale.detach().reshape(-1) if hasattr(kernel, "lengthscale") else torch.ones(dim)
    if ls.numel() != dim:
        ls = ls.expand(dim)
    weights = ls / ls.mean()
    weights = weights / weights.prod().pow(1.0 / dim)
    center = X[Y.argmax()]
    lb = (center - weights * tr.length / 2).clamp(0.0, 1.0)
    ub = (center + weights * tr.length / 2).clamp(0.0, 1.0)
    gen = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if s.acquisition == "ts":
            n_cand = min(5000, max(2000, 200 * dim))
            sobol = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
            pert = lb + (ub - lb) * sobol.draw(n_cand).to(X)
            # TuRBO: perturb only a few coordinates of the centre in high dimensions.
            prob = min(20.0 / dim, 1.0)
            mask = torch.rand(n_cand, dim, generator=gen, dtype=X.dtype) <= prob
            mask[mask.sum(1) == 0, torch.randint(0, dim, (int((mask.sum(1) == 0).sum()),), generator=gen)] = True
            cand = torch.where(mask, pert, center.expand(n_cand, dim))
            with torch.no_grad():
                return MaxPosteriorSampling(model=gp, replacement=False)(cand, num_samples=s.batch_size)
        if s.acquisition == "qei":
            acq = qLogExpectedImprovement(gp, best_f=Y.max())
        else:
            acq = qUpperConfidenceBound(gp, beta=s.ucb_beta)
        cand, _ = optimize_acqf(acq, bounds=torch.stack([lb, ub]), q=s.batch_size, num_restarts=s.num_restarts,
                                raw_samples=s.raw_samples, options={"batch_limit": 16, "maxiter": 100})
    return cand.detach()


def run_bo(model, oracle: Oracle, objective, settings: BOSettings, *, rng: np.random.Generator, seed: int,
           start: str | None = None, init_smiles: list[str] | None = None, known: KnownSet | None = None) -> str:
    """Spend ``oracle``'s budget on batch BO in a trust region; returns why it stopped.

    With ``known`` (molecules with known scores) and no start molecule, the initial design
    is ``n_init`` of them (default 200: the best half and a random half), free of charge.
    """
    _import_botorch()
    s = settings
    dim = model.config.latent_dim
    start_z = encode_smiles(model, [start])[0] if start else None
    Z = None
    if known is not None and len(known) and start_z is None:
        Z, y = known_design(model, oracle, known, s.n_init or min(200, s.max_gp_points), rng)
        if len(Z) < 2:
            Z = None
    if Z is None:
        n_init = s.n_init or int(min(200, max(2 * s.batch_size, oracle.budget // 5)))
        n_init = max(2, min(n_init, oracle.remaining))
        Z, y = score_design(model, oracle, n_init, rng, init_smiles=init_smiles, start_z=start_z,
                            noise=s.init_noise, method="bo-init")
    if start_z is not None:
        Z = np.concatenate([start_z[None], Z])
        y = np.concatenate([[oracle.cache[start].score if start in oracle.cache else np.nan], y])
    # Unit-cube scaling from the initial design's range, widened so the search can leave it.
    lo, hi = Z.min(0), Z.max(0)
    span = np.maximum(hi - lo, 0.5)
    lo, hi = lo - 0.25 * span, hi + 0.25 * span
    if start_z is not None:
        lo, hi = np.minimum(lo, start_z - 2 * s.init_noise), np.maximum(hi, start_z + 2 * s.init_noise)
    scale = hi - lo

    def to_unit(z: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((z - lo) / scale, dtype=torch.double).clamp(0.0, 1.0)

    tr = _TrustRegion(s, dim)
    stale, it = 0, 0
    while not oracle.exhausted and stale < s.patience:
        it += 1
        yf = _fill(y)
        idx = _training_subset(yf, s.max_gp_points)
        X = to_unit(Z[idx])
        Y = torch.as_tensor(yf[idx], dtype=torch.double).unsqueeze(-1)
        best_before = np.nanmax(y) if np.isfinite(y).any() else -math.inf
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 100003 + it)
            cand = _propose(X, Y, tr, s, seed * 100003 + it)
        z_new = (lo + cand.cpu().numpy() * scale).astype(np.float32)
        calls, seen = oracle.n_calls, len(oracle.cache)
        smiles = decode_smiles(model, z_new)
        y_new = oracle(smiles, step=it)
        Z = np.concatenate([Z, z_new])
        y = np.concatenate([y, y_new])
        improved = bool(np.isfinite(y_new).any() and np.nanmax(y_new) > best_before + 1e-3 * abs(best_before))
        nothing_new = oracle.n_calls == calls and len(oracle.cache) == seen
        if nothing_new:
            # The whole box decodes to molecules already seen: it is too small, not a failure.
            tr.length = min(2.0 * tr.length, s.tr_length_max)
        else:
            tr.update(improved)
        # Only a newly charged molecule makes a batch fruitful: guarded or under-the-floor molecules are
        # free, and a search stuck among them (e.g. long chains over the heavy-atom limit) would never end.
        stale = stale + 1 if oracle.n_calls == calls else 0
    if oracle.exhausted:
        return "budget spent"
    return f"no new scored molecule in {s.patience} batches"
