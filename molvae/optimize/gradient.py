"""Gradient ascent in latent space (Gómez-Bombarelli et al. 2018; LIMO, Eckmann et al. 2022).

The differentiable score is the model's property head when the objective is a weighted
sum of properties the head predicts (``qed``, ``plogp``, ...), else a small MLP fitted on
the molecules scored so far and refitted every round. The true objective is only ever
computed by the oracle on decoded molecules.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .base import GradientSettings, decode_smiles, encode_smiles
from .design import KnownSet, initial_design, known_design, score_design
from .head import HeadScorer, MLPSurrogate, finite_rows
from .oracle import Oracle
from .retrain import Retrainer

__all__ = ["run_gradient"]

log = logging.getLogger(__name__)


def _scorer(model, objective, settings: GradientSettings, seed: int):
    weights = objective.head_weights(model.config.property_names) if settings.use_head else None
    if weights is not None and model.net.property_head is not None:
        log.info("gradient: ascending the model's property head (%s)", ", ".join(model.config.property_names))
        return HeadScorer(model, weights), True
    log.info("gradient: no property head matches the objective; fitting an MLP surrogate on scored molecules")
    return MLPSurrogate(model.config.latent_dim, model.device, seed=seed), False


def _ascend(scorer, z0: torch.Tensor, settings: GradientSettings):
    """Yield the points of ``settings.steps`` ascent steps from ``z0 (n, d)``, one ``(n, d)`` tensor per step."""
    z = z0.clone()
    for _ in range(settings.steps):
        z.requires_grad_(True)
        f = scorer(z).sum()
        (grad,) = torch.autograd.grad(f, z)
        with torch.no_grad():
            norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z = z + settings.step_size * (grad / norm - settings.prior_weight * z)
            delta = z - z0
            dist = delta.norm(dim=1, keepdim=True)
            z = torch.where(dist > settings.trust_radius, z0 + delta * (settings.trust_radius / dist), z)
        yield z.detach()


def run_gradient(model, oracle: Oracle, objective, settings: GradientSettings, *, rng: np.random.Generator,
                 seed: int, start: str | None = None, init_smiles: list[str] | None = None,
                 known: KnownSet | None = None) -> str:
    """Spend ``oracle``'s budget on gradient-ascent paths; returns why it stopped.

    With ``known`` (molecules with known scores) and no start molecule, paths start from
    the best known molecules and fresh starts are drawn from the best ``10·n_starts`` of
    them; without a property head the surrogate is first fitted on known molecules, free.
    """
    dim = model.config.latent_dim
    device = model.device
    scorer, on_head = _scorer(model, objective, settings, seed)
    start_z = encode_smiles(model, [start])[0] if start else None
    data_z: list[np.ndarray] = []
    data_y: list[np.ndarray] = []
    step = 0

    retrainer = Retrainer(model, settings, seed, head=scorer if on_head else None)
    pool = None   # fresh start points: encoded best known molecules
    if known is not None and len(known) and start_z is None:
        n_pool = settings.n_init or max(10 * settings.n_starts, 0 if on_head else 200)
        pool_z, pool_y = known_design(model, oracle, known, n_pool, rng, top_fraction=1.0 if on_head else 0.5)
        if len(pool_z):
            pool = pool_z
            if not on_head:
                data_z.append(pool_z)
                data_y.append(pool_y)
    if not on_head and pool is None:
        # The surrogate needs data: score an initial design first.
        n_init = settings.n_init or max(settings.n_starts, min(200, oracle.budget // 5))
        n_init = min(n_init, oracle.remaining if settings.n_init else max(1, oracle.remaining // 2))
        z, y = score_design(model, oracle, n_init, rng, init_smiles=init_smiles, start_z=start_z,
                            noise=settings.restart_noise, method="gradient-init")
        data_z.append(z)
        data_y.append(y)

    stale = 0
    rnd = 0
    while not oracle.exhausted and stale < settings.patience and (settings.max_rounds is None
                                                                  or rnd < settings.max_rounds):
        if retrainer.maybe_retrain(oracle):
            # The latent space moved: what the surrogate learns from is re-encoded.
            if start_z is not None:
                start_z = encode_smiles(model, [start])[0]
            if pool is not None:
                pool = _encoded_known(model, oracle, len(pool), pool)
            if not on_head:
                z, y = retrainer.encoded_scored(oracle)
                data_z, data_y = [z], [y]
        if not on_head:
            data_z, data_y = [np.concatenate(data_z)], [np.concatenate(data_y)]
            keep = _fit_subset(data_y[0], settings.max_fit_points)
            scorer.fit(data_z[0][keep], data_y[0][keep])
        starts = _round_starts(model, oracle, scorer, settings, rng, rnd, start_z, init_smiles, on_head,
                               widen=1.0 + stale, pool=pool)
        z0 = torch.as_tensor(starts, dtype=torch.float32, device=device)
        calls_before = oracle.n_calls
        for z in _ascend(scorer, z0, settings):
            step += 1
            smiles = decode_smiles(model, z)
            y = oracle(smiles, step=step)
            if not on_head:
                data_z.append(z.cpu().numpy())
                data_y.append(y)
            if oracle.exhausted:
                break
        rnd += 1
        # A round counts as fruitful only if it charged a new molecule: molecules under a similarity
        # floor or stopped by a guard are free, and at a high floor every round can find new ones of
        # those, which would never end the search.
        stale = stale + 1 if oracle.n_calls == calls_before else 0
    if oracle.exhausted:
        return "budget spent"
    if stale < settings.patience:
        return f"{rnd} rounds (max_rounds)"
    return f"no new scored molecule in {settings.patience} rounds"


def _encoded_known(model, oracle: Oracle, n: int, old: np.ndarray) -> np.ndarray:
    """The best ``n`` known molecules, encoded again (``old`` when none can be)."""
    log_ = oracle.log()
    known = log_[(log_["status"] == "known") & np.isfinite(log_["score"].astype(float))]
    best = known.sort_values("score", ascending=False, kind="stable").head(n)
    z = encode_smiles(model, list(best["smiles"]))
    z = z[finite_rows(z)]
    return z if len(z) else old


def _fit_subset(y: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the best quarter and the most recent rest of ``limit`` points (all when there are fewer)."""
    if len(y) <= limit:
        return np.arange(len(y))
    filled = np.where(np.isfinite(y), y, -np.inf)
    best = np.argsort(-filled, kind="stable")[: limit // 4]
    recent = np.arange(len(y) - (limit - len(best)), len(y))
    return np.unique(np.concatenate([best, recent]))


def _round_starts(model, oracle: Oracle, scorer, settings: GradientSettings, rng: np.random.Generator, rnd: int,
                  start_z: np.ndarray | None, init_smiles: list[str] | None, on_head: bool,
                  widen: float = 1.0, pool: np.ndarray | None = None) -> np.ndarray:
    """Start points of one round: round 0 from the start molecule / best init molecules / the prior;
    later rounds half from the best molecules found (jittered), half fresh. ``widen`` scales the
    jitter up after rounds that found nothing new. ``pool`` (encoded best known molecules, best
    first) replaces the initial design: round 0 takes its best, fresh starts are drawn from it."""
    n, dim = settings.n_starts, model.config.latent_dim
    noise = settings.restart_noise * widen
    if start_z is not None:
        # Constrained mode: stay around the start, wider as rounds go by.
        z = np.repeat(start_z[None], n, axis=0)
        scale = noise * (1 + 0.5 * rnd)
        z[1 if rnd == 0 else 0:] += rng.standard_normal((n - (1 if rnd == 0 else 0), dim)) * scale
        best = _best_latents(model, oracle, n // 2)
        if rnd > 0 and len(best):
            k = len(best)
            z[:k] = best + rng.standard_normal(best.shape) * noise
        return z.astype(np.float32)
    if pool is not None:
        if rnd == 0:
            return pool[:n].astype(np.float32)
        best = _best_latents(model, oracle, n // 2)
        pick = rng.choice(len(pool), size=n - len(best), replace=len(pool) < n - len(best))
        fresh = pool[pick] + rng.standard_normal((len(pick), dim)).astype(np.float32) * noise
        if len(best):
            best = best + rng.standard_normal(best.shape).astype(np.float32) * noise
            return np.concatenate([best, fresh]).astype(np.float32)
        return fresh.astype(np.float32)
    if rnd == 0:
        pool = initial_design(model, 4 * n if on_head else n, rng, init_smiles=init_smiles)
        if on_head and len(pool) > n:
            with torch.no_grad():
                pred = scorer(torch.as_tensor(pool, device=model.device)).cpu().numpy()
            pool = pool[np.argsort(-pred)[:n]]
        return pool[:n].astype(np.float32)
    best = _best_latents(model, oracle, n // 2)
    fresh = initial_design(model, n - len(best), rng, init_smiles=init_smiles)
    if len(best):
        best = best + rng.standard_normal(best.shape).astype(np.float32) * noise
        return np.concatenate([best, fresh]).astype(np.float32)
    return fresh.astype(np.float32)


def _best_latents(model, oracle: Oracle, k: int) -> np.ndarray:
    top = oracle.scored().head(k)
    if top.empty:
        return np.zeros((0, model.config.latent_dim), dtype=np.float32)
    z = encode_smiles(model, list(top["smiles"]))
    return z[finite_rows(z)]
