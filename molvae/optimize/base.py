"""Settings, results and latent-space helpers shared by the optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import _ConfigMixin
from ..errors import InvalidInputError

__all__ = ["GradientSettings", "BOSettings", "RetrainSettings", "OptimizationResult", "decode_smiles", "encode_smiles",
           "prior_latents", "settings_from_dict"]


@dataclass(frozen=True)
class RetrainSettings(_ConfigMixin):
    """Weighted retraining during a search (Tripp et al. 2020; see :mod:`molvae.optimize.retrain`),
    shared by both methods: every ``retrain_every`` oracle calls (``None``: never), ``retrain_steps``
    Adam steps (learning rate ``retrain_lr``) of the training ELBO on ``retrain_batch`` scored
    molecules drawn with weights ``1 / (retrain_k·N + rank)``."""

    retrain_every: int | None = None
    retrain_steps: int = 100
    retrain_batch: int = 32
    retrain_lr: float = 1e-3
    retrain_k: float = 1e-3

    def __post_init__(self) -> None:
        if self.retrain_every is not None and self.retrain_every < 0:
            raise InvalidInputError(f"retrain_every must be >= 0 oracle calls, got {self.retrain_every}")
        for name in ("retrain_steps", "retrain_batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.retrain_lr > 0 or not self.retrain_k > 0:
            raise InvalidInputError(f"retrain_lr and retrain_k must be > 0, got {self.retrain_lr}, {self.retrain_k}")


@dataclass(frozen=True)
class GradientSettings(RetrainSettings):
    """Gradient ascent in latent space (on the property head, else on a fitted MLP surrogate).

    Each round runs ``n_starts`` paths for ``steps`` steps of length ``step_size`` (latent
    units) along the normalized gradient of ``f(z) − prior_weight·‖z‖²/2``, keeping each
    path within ``trust_radius`` of its start; every step's point is decoded (greedy) and
    new molecules go to the oracle. Later rounds restart from the best molecules found,
    jittered by ``restart_noise``, and from fresh start points. The search ends when the
    budget is spent, after ``patience`` rounds without a new scored molecule, or after
    ``max_rounds`` rounds (a bound on the time when few decoded molecules can be scored,
    e.g. at a high similarity floor). Without a head, the surrogate is refitted each round on
    at most ``max_fit_points`` points (the best quarter and the most recent), so a round costs
    the same at call 10,000 as at call 1,000.
    """

    n_starts: int = 16
    steps: int = 40
    step_size: float = 0.15
    prior_weight: float = 0.05
    trust_radius: float = 4.0
    restart_noise: float = 0.3
    n_init: int | None = None        # surrogate mode: molecules scored before the first fit (default budget/5, ≤ 200)
    patience: int = 5                 # rounds without a new charged (scored) molecule before giving up
    max_rounds: int | None = None     # stop after this many rounds even with budget left (bounds the time)
    use_head: bool = True             # use a property head matching the objective when there is one
    max_fit_points: int = 4000        # surrogate mode: fitted on the best quarter and the most recent rest of these


@dataclass(frozen=True)
class BOSettings(RetrainSettings):
    """Batch Bayesian optimization with a local GP on latent vectors inside a TuRBO trust region.

    The GP (BoTorch ``SingleTaskGP``) models the objective on latent vectors scaled to the
    unit cube by the initial design's range, fitted on the ``max_gp_points`` points nearest
    the best one (``fit_steps`` L-BFGS steps the first time, then ``refit_steps`` from the
    previous batch's hyperparameters). Each iteration proposes ``batch_size`` new molecules by
    ``acquisition`` (``ts`` = Thompson sampling over ``n_candidates`` points, the default;
    ``qei`` = q-log expected improvement; ``qucb`` = q-upper confidence bound with
    ``ucb_beta``) inside a box around the best point whose side ``tr_length`` grows after
    ``success_tolerance`` improving batches and halves after ``failure_tolerance`` failing
    ones (Eriksson et al. 2019).
    """

    batch_size: int = 20
    acquisition: str = "ts"
    n_init: int | None = None        # initial design size (default budget/5, between 2·batch and 200)
    ucb_beta: float = 2.0
    tr_length: float = 0.8
    tr_length_min: float = 0.5 ** 7
    tr_length_max: float = 1.6
    success_tolerance: int = 3
    failure_tolerance: int | None = None   # default ceil(max(4, latent_dim) / batch_size)
    max_gp_points: int = 300          # the GP is fitted on the points nearest the trust region's centre
    fit_steps: int = 200              # L-BFGS steps of the first GP fit
    refit_steps: int = 20             # L-BFGS steps of later fits, warm-started from the last hyperparameters
    n_candidates: int | None = None   # ts: candidates per batch (default min(5000, max(2000, 200·latent_dim)))
    num_restarts: int = 4             # qei/qucb: restarts of the acquisition optimizer
    raw_samples: int = 256            # qei/qucb: raw samples of the acquisition optimizer
    init_noise: float = 0.5           # constrained mode: spread of the initial design around the start
    patience: int = 20                # batches without a new charged (scored) molecule before giving up

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.acquisition not in ("qei", "qucb", "ts"):
            raise InvalidInputError(f"acquisition must be qei, qucb or ts, got {self.acquisition!r}")
        for name in ("batch_size", "max_gp_points", "fit_steps", "refit_steps"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_gp_points < 2:
            raise InvalidInputError(f"max_gp_points must be >= 2, got {self.max_gp_points}")
        if self.n_candidates is not None and self.n_candidates < self.batch_size:
            raise InvalidInputError(f"n_candidates must be >= batch_size ({self.batch_size}), got {self.n_candidates}")


def settings_from_dict(cls: type[GradientSettings] | type[BOSettings], options: dict[str, Any] | None):
    """``cls.from_dict`` (the configs' one reader: unknown keys are an error) of ``options`` without
    its ``None`` values, which stand for "the default" (options a command line did not set)."""
    return cls.from_dict({k: v for k, v in (options or {}).items() if v is not None})


@dataclass
class OptimizationResult:
    """What :func:`molvae.optimize.optimize` returns.

    Attributes:
        top: the best distinct molecules found (``smiles, score, step, similarity``), best first;
            in constrained mode only molecules at or above the similarity floor, start excluded.
        log: every molecule seen (``step, smiles, score, method, similarity, oracle_call, status``).
        n_calls: oracle calls spent (distinct molecules scored), never more than ``budget``.
        start_smiles, start_score: the start molecule and its score (constrained mode).
        improvement: best score − start score (constrained mode; 0 when nothing better was found).
        elapsed_s, objective_s: wall time of the search, and the part of it spent inside the
            objective; the difference is the optimizer's overhead.
    """

    method: str
    objective: str
    budget: int
    n_calls: int
    seed: int | None
    top: pd.DataFrame
    log: pd.DataFrame
    elapsed_s: float
    start_smiles: str | None = None
    start_score: float | None = None
    min_similarity: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""
    objective_s: float = 0.0
    stop_signal: int = 0          # the signal (SIGINT, SIGTERM) that ended the search early, else 0

    @property
    def best_smiles(self) -> str | None:
        return None if self.top.empty else str(self.top["smiles"].iloc[0])

    @property
    def best_score(self) -> float:
        return math.nan if self.top.empty else float(self.top["score"].iloc[0])

    @property
    def improvement(self) -> float | None:
        if self.start_score is None or not math.isfinite(self.start_score):
            return None
        if self.top.empty:
            return 0.0
        return max(0.0, self.best_score - self.start_score)

    @property
    def success(self) -> bool | None:
        """Constrained mode: a molecule other than the start, above the floor, that scores higher."""
        imp = self.improvement
        return None if imp is None else imp > 0

    def summary(self) -> dict[str, Any]:
        top = self.top.head(10)
        out = {"method": self.method, "objective": self.objective, "budget": self.budget, "n_calls": self.n_calls,
               "seed": self.seed, "elapsed_s": round(self.elapsed_s, 2),
               "objective_s": round(self.objective_s, 2), "best_smiles": self.best_smiles,
               "best_score": self.best_score, "stop_reason": self.stop_reason,
               "top": [{"smiles": s, "score": float(v)} for s, v in zip(top["smiles"], top["score"])],
               "settings": self.settings}
        if self.start_smiles is not None:
            best_sim = float(self.top["similarity"].iloc[0]) if not self.top.empty else None
            out.update({"start_smiles": self.start_smiles, "start_score": self.start_score,
                        "min_similarity": self.min_similarity, "improvement": self.improvement,
                        "similarity": best_sim, "success": self.success})
        return out


# ----------------------------------------------------------------------------- latent helpers

def decode_smiles(model, z: np.ndarray | torch.Tensor) -> list[str]:
    """Greedy decode of latent rows to canonical SMILES ('' where no molecule)."""
    if isinstance(z, torch.Tensor):
        z = z.detach().float().cpu().numpy()
    if len(z) == 0:
        return []
    return list(model.decode(np.asarray(z, dtype=np.float32), greedy=True)["smiles"])


def encode_smiles(model, smiles: list[str]) -> np.ndarray:
    """Latent means (NaN rows where a molecule cannot be encoded)."""
    if not smiles:
        return np.zeros((0, model.config.latent_dim), dtype=np.float32)
    z, _ = model.encode(list(smiles))
    return z


def prior_latents(n: int, dim: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``n`` draws of z ~ N(0, scale² I)."""
    return (rng.standard_normal((n, dim)) * scale).astype(np.float32)
