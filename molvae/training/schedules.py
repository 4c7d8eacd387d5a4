"""What a training step uses besides the network: β and learning-rate schedules, the loss terms, precision."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..diagnostics import kl_term, use_mixed_precision  # the loss terms a search's retraining shares (layer 2)
from ..errors import InvalidInputError

__all__ = ["kl_weight_at", "learning_rate_at", "kl_term", "property_loss", "use_mixed_precision"]


def kl_weight_at(config: TrainConfig, epoch_progress: float) -> float:
    """β after ``epoch_progress`` epochs (fractional) under ``config``'s schedule."""
    beta, warm = config.kl_weight, config.kl_warmup_epochs
    kind = config.kl_schedule
    if kind == "constant" or warm <= 0:
        return beta
    if kind == "linear":
        return beta * min(1.0, epoch_progress / warm)
    if kind == "sigmoid":
        # centred at half the warm-up, ~0.7% of β_max at 0 and ~99.3% at the end
        return beta / (1.0 + math.exp(-10.0 * (epoch_progress / warm - 0.5)))
    if kind == "cyclical":
        pos = (epoch_progress % warm) / warm
        ratio = max(config.kl_cycle_ratio, 1e-8)
        return beta * min(1.0, pos / ratio)
    raise InvalidInputError(f"unknown KL schedule {kind!r}")


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """Adam's learning rate at ``progress`` (0 → 1) through the run under ``config``'s schedule.

    ``cosine`` falls from ``learning_rate`` to ``lr_final_ratio · learning_rate`` along half a cosine
    (Loshchilov & Hutter 2017, without restarts): for a fixed budget it ends lower than a constant rate
    and usually at a lower loss.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    p = min(max(progress, 0.0), 1.0)
    low = config.learning_rate * config.lr_final_ratio
    return low + 0.5 * (config.learning_rate - low) * (1.0 + math.cos(math.pi * p))


def property_loss(pred: torch.Tensor | None, target: torch.Tensor | None) -> torch.Tensor | None:
    """Mean squared error of the property head over labelled entries only (NaN = unlabelled)."""
    if pred is None or target is None:
        return None
    mask = torch.isfinite(target)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return ((pred.float() - torch.nan_to_num(target)) ** 2)[mask].mean()
