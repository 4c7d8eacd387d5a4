"""Training under torchrun: each rank's share of the batches and of validation, combined over ranks.

See :mod:`molvae.distributed` for how the ranks are set up; here is what the training loop does with them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .. import data as data_mod
from ..diagnostics import evaluate_loss
from ..distributed import DistContext
from ..model import VAE

__all__ = ["shard_batches", "evaluate_distributed", "open_seen_log"]


def shard_batches(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's batches: ``rank, rank + world_size, ...``, the same number on every rank."""
    if not batches:
        return []
    n = max(1, len(batches) // world_size)
    picked = batches[rank::world_size][:n]
    return picked if len(picked) == n else [batches[rank % len(batches)]]


def evaluate_distributed(net: VAE, tokens: data_mod.TokenData, indices: np.ndarray, vocab, batch_size: int,
                         device: torch.device, seed: int, dist: DistContext) -> dict[str, float]:
    """:func:`~molvae.diagnostics.evaluate_loss` with each rank taking a slice of ``indices``, combined over ranks."""
    if not dist.enabled:
        return evaluate_loss(net, tokens, indices, vocab, batch_size, device, seed=seed)
    part = indices[dist.rank::dist.world_size]
    res = evaluate_loss(net, tokens, part, vocab, batch_size, device, seed=seed + dist.rank) if len(part) else None
    n = float(len(part))
    n_tok = float((tokens.lengths[part] + 1).sum()) if len(part) else 0.0
    r, k, c, n, n_tok = dist.all_reduce_sum(
        [res["recon"] * n if res else 0.0, res["kl"] * n if res else 0.0,
         res["token_acc"] * n_tok if res else 0.0, n, n_tok])
    if n == 0:
        return {"recon": math.nan, "kl": math.nan, "nelbo": math.nan, "token_acc": math.nan}
    return {"recon": r / n, "kl": k / n, "nelbo": (r + k) / n, "token_acc": c / max(n_tok, 1.0)}


def open_seen_log(rank: int):
    """Test hook: with ``MOLVAE_DEBUG_SEEN_DIR`` set, each rank logs the molecule indices of its batches."""
    folder = os.environ.get("MOLVAE_DEBUG_SEEN_DIR")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"seen.rank{rank}.txt", "a", encoding="utf-8")
