"""Batch Bayesian optimization on latent vectors with BoTorch, in a TuRBO trust region.

Built for thousands of oracle calls at a bounded cost per batch, after TuRBO (Eriksson et
al. 2019) and LOL-BO (Maus et al. 2022):

- a *local* GP (``SingleTaskGP``: RBF kernel with dimension-scaled lengthscale prior,
  standardized outcomes) fitted on the ``max_gp_points`` points nearest the trust region's
  centre (the best point found), so one fit costs the same at call 100 and call 10,000;
- hyperparameters warm-started from the previous batch's fit: ``fit_steps`` L-BFGS steps
  the first time, ``refit_steps`` after;
- Thompson sampling (the default ``ts``) over a candidate set in a box around the best
  point whose side grows after consecutive successes, halves after consecutive failures and
  is reset when it collapses: each of the batch's ``batch_size`` GP sample paths (BoTorch's
  pathwise/Matheron samples: linear in the number of candidates) picks its best candidate;
  ``qei`` / ``qucb`` optimize a joint acquisition instead (slower);
- candidates are decoded in one batch, and when they decode to molecules seen before, the
  paths' next-best candidates are decoded too (up to ``4·batch_size`` per batch), so a batch
  brings ``batch_size`` new molecules to the oracle while there are any nearby.

Repeats cost no oracle call and still teach the GP; invalid, guarded and infeasible
molecules get the worst score seen, so the search learns to avoid them.
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
from .retrain import Retrainer

__all__ = ["run_bo"]

log = logging.getLogger(__name__)

# Decoded candidates per batch, at most, in units of batch_size: bounds the time a batch spends
# looking for new molecules when the trust region decodes mostly to molecules already seen.
_DECODE_ROUNDS = 4


def _import_botorch():
    try:
        import botorch  # noqa: F401
        import gpytorch  # noqa: F401
    except ImportError as exc:
        raise InvalidInputError(
            "method 'bo' needs BoTorch and GPyTorch: pip install 'molvae[optimize]' "
            "(or use --method gradient)") from exc


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


def _local_subset(X: np.ndarray, center: int, limit: int) -> np.ndarray:
    """Indices of the ``limit`` points of ``X (n, d)`` nearest ``X[center]`` (all when there are fewer)."""
    if len(X) <= limit:
        return np.arange(len(X))
    dist = ((X - X[center]) ** 2).sum(1)
    idx = np.argpartition(dist, limit - 1)[:limit]
    return np.sort(idx)


class _LocalGP:
    """Fits a GP on each batch's local data, warm-starting the hyperparameters from the last fit."""

    def __init__(self, s: BOSettings):
        self.s = s
        self.params: dict[str, torch.Tensor] | None = None

    def fit(self, X: torch.Tensor, Y: torch.Tensor):
        from botorch.models import SingleTaskGP
        from botorch.optim.fit import fit_gpytorch_mll_scipy
        from gpytorch.mlls import ExactMarginalLogLikelihood

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gp = SingleTaskGP(X, Y)
            warm = self.params is not None
            if warm:
                with torch.no_grad():
                    for name, p in gp.named_parameters():
                        if name in self.params and self.params[name].shape == p.shape:
                            p.copy_(self.params[name])
            mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
            mll.train()
            try:
                fit_gpytorch_mll_scipy(mll, options={"maxiter": self.s.refit_steps if warm else self.s.fit_steps})
            except Exception as exc:  # a failed fit still leaves a usable GP
                log.debug("GP fit failed (%s)", exc)
            mll.eval()
            params = {n: p.detach().clone() for n, p in gp.named_parameters()}
            if not all(torch.isfinite(p).all() for p in params.values()):
                # A diverged fit: start again from the prior's initial hyperparameters next time.
                gp, params = SingleTaskGP(X, Y), None
                gp.eval()
        self.params = params
        return gp


def _box(gp, center: torch.Tensor, length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TuRBO's trust region: a box of side ``length`` around ``center``, stretched along long lengthscales."""
    dim = center.shape[0]
    kernel = gp.covar_module
    while not hasattr(kernel, "lengthscale") and hasattr(kernel, "base_kernel"):
        kernel = kernel.base_kernel
    ls = kernel.lengthscale.detach().reshape(-1) if hasattr(kernel, "lengthscale") else torch.ones(dim)
    if ls.numel() != dim:
        ls = ls.expand(dim)
    weights = ls / ls.mean()
    weights = weights / weights.prod().pow(1.0 / dim)
    lb = (center - weights * length / 2).clamp(0.0, 1.0)
    ub = (center + weights * length / 2).clamp(0.0, 1.0)
    return lb, ub


def _thompson_order(gp, center: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor, s: BOSettings,
                    seed: int) -> torch.Tensor:
    """Candidates in the box, in the order Thompson sampling picks them: ``(m, d)``.

    ``batch_size`` GP sample paths each rank the candidates; the order takes every path's best,
    then every path's second best, and so on, without repeats.
    """
    from botorch.sampling.pathwise import draw_matheron_paths

    dim = center.shape[0]
    n_cand = s.n_candidates or min(5000, max(2000, 200 * dim))
    gen = torch.Generator().manual_seed(seed)
    sobol = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    pert = lb + (ub - lb) * sobol.draw(n_cand).to(center)
    # TuRBO: perturb only a few coordinates of the centre in high dimensions.
    prob = min(20.0 / dim, 1.0)
    mask = torch.rand(n_cand, dim, generator=gen, dtype=center.dtype) <= prob
    empty = mask.sum(1) == 0
    mask[empty, torch.randint(0, dim, (int(empty.sum()),), generator=gen)] = True
    cand = torch.where(mask, pert, center.expand(n_cand, dim))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        paths = draw_matheron_paths(gp, torch.Size([s.batch_size]))
        values = paths(cand)                                  # (batch_size, n_cand)
    ranks = values.argsort(dim=1, descending=True).T.reshape(-1).numpy()
    _, first = np.unique(ranks, return_index=True)
    return cand[torch.as_tensor(ranks[np.sort(first)])]


def _optimize_acquisition(gp, Y: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor, s: BOSettings) -> torch.Tensor:
    from botorch.acquisition import qLogExpectedImprovement, qUpperConfidenceBound
    from botorch.optim import optimize_acqf

    acq = qLogExpectedImprovement(gp, best_f=Y.max()) if s.acquisition == "qei" else \
        qUpperConfidenceBound(gp, beta=s.ucb_beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cand, _ = optimize_acqf(acq, bounds=torch.stack([lb, ub]), q=s.batch_size, num_restarts=s.num_restarts,
                                raw_samples=s.raw_samples, options={"batch_limit": 16, "maxiter": 100})
    return cand.detach()


def _decode_new(model, oracle: Oracle, cand: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[str], int]:
    """Decode ``cand (m, d)`` in chunks of ``batch_size`` until ``batch_size`` molecules not seen before
    (by the oracle or in this batch) turned up, or ``_DECODE_ROUNDS`` chunks were decoded:
    ``(decoded points, their SMILES, how many distinct new molecules)``. The points stop at the one
    that brought the ``batch_size``-th new molecule, so a batch never holds more new molecules than that."""
    smiles: list[str] = []
    new: set[str] = set()
    n = 0
    while n < len(cand) and len(new) < batch_size and n < _DECODE_ROUNDS * batch_size:
        chunk = decode_smiles(model, cand[n:n + batch_size])
        for m in chunk:
            n += 1
            smiles.append(m)
            if m and m not in new and not oracle.seen(m):
                new.add(m)
                if len(new) == batch_size:
                    break
    return cand[:n], smiles, len(new)


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
        Z, y = known_design(model, oracle, known, s.n_init or 200, rng)
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
    U = np.clip((Z - lo) / scale, 0.0, 1.0)       # the points in the unit cube, as the GP sees them

    tr = _TrustRegion(s, dim)
    gp_fit = _LocalGP(s)
    retrainer = Retrainer(model, s, seed)
    stale, it = 0, 0
    while not oracle.exhausted and stale < s.patience:
        it += 1
        if retrainer.maybe_retrain(oracle):
            # The latent space moved: the GP's data are the scored molecules, encoded again.
            Z, y = retrainer.encoded_scored(oracle)
            U = np.clip((Z - lo) / scale, 0.0, 1.0)
        yf = _fill(y)
        center = int(np.argmax(yf))
        idx = _local_subset(U, center, s.max_gp_points)
        X = torch.as_tensor(U[idx], dtype=torch.double)
        Y = torch.as_tensor(yf[idx], dtype=torch.double).unsqueeze(-1)
        best_before = np.nanmax(y) if np.isfinite(y).any() else -math.inf
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 100003 + it)
            gp = gp_fit.fit(X, Y)
            lb, ub = _box(gp, torch.as_tensor(U[center], dtype=torch.double), tr.length)
            if s.acquisition == "ts":
                cand = _thompson_order(gp, torch.as_tensor(U[center], dtype=torch.double), lb, ub, s,
                                       seed * 100003 + it)
            else:
                cand = _optimize_acquisition(gp, Y, lb, ub, s)
        z_cand = (lo + cand.cpu().numpy() * scale).astype(np.float32)
        calls = oracle.n_calls
        z_new, smiles, n_new = _decode_new(model, oracle, z_cand, s.batch_size)
        y_new = oracle(smiles, step=it)
        U = np.concatenate([U, np.clip((z_new - lo) / scale, 0.0, 1.0)])
        y = np.concatenate([y, y_new])
        improved = bool(np.isfinite(y_new).any() and np.nanmax(y_new) > best_before + 1e-3 * abs(best_before))
        if n_new < max(1, s.batch_size // 2):
            # The box decodes mostly to molecules already seen: it is smaller than the decoder's
            # resolution, and shrinking it further would only waste decodes. Widen it instead.
            tr.length = min(2.0 * tr.length, s.tr_length_max)
            tr.successes = tr.failures = 0
        else:
            tr.update(improved)
        # Only a newly charged molecule makes a batch fruitful: guarded or under-the-floor molecules are
        # free, and a search stuck among them (e.g. long chains over the heavy-atom limit) would never end.
        stale = stale + 1 if oracle.n_calls == calls else 0
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bo batch %d: %d decoded, %d new, %d new calls (%d in all), box side %.4f, best %s", it,
                      len(smiles), n_new, oracle.n_calls - calls, oracle.n_calls, tr.length, oracle.best_score)
    if oracle.exhausted:
        return "budget spent"
    return f"no new scored molecule in {s.patience} batches"
