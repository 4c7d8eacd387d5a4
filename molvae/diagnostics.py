"""What a VAE's latent space and losses look like on a set of molecules (layer 2).

Used by the training loop (per-epoch validation figures), by :mod:`molvae.metrics` (held-out
model figures), by the report and by ``molvae models``; it imports nothing above the model.

- :func:`autocast`, :func:`use_mixed_precision`, :func:`kl_term`: the precision and KL term of a training
  step, shared by the training loop and a search's weighted retraining;
- :func:`evaluate_loss`: mean reconstruction, KL and -ELBO (nats/molecule), token accuracy;
- :func:`latent_means`, :func:`active_units`: the posterior means and how many dimensions vary;
- :func:`greedy_reconstruction_rate`: share of molecules the greedy decode of μ gives back exactly
  (not to be confused with :func:`molvae.sample.reconstruction_accuracy`, which summarizes a
  :func:`molvae.sample.reconstruct` table);
- :func:`selection_loss`, :func:`best_epoch`: which epoch ``model.pt`` holds.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import data as data_mod
from .model import VAE

if TYPE_CHECKING:  # only for annotations: core is on this layer
    from .config import TrainConfig
    from .core import MolVAE

__all__ = ["autocast", "use_mixed_precision", "kl_term", "evaluate_loss", "latent_means", "active_units", "greedy_reconstruction_rate",
           "selection_loss", "best_epoch"]


def autocast(device: torch.device, enabled: bool):
    """bf16 (or fp16 where bf16 is missing) autocast on CUDA; bf16 autocast on the CPU."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if enabled and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_mixed_precision(config: TrainConfig, device: torch.device) -> bool:
    """Mixed precision in the training step: ``amp`` on CUDA; ``cpu_amp`` (auto: bf16 hardware) on the CPU."""
    if device.type == "cuda":
        return bool(config.amp)
    if device.type == "cpu":
        from .core import cpu_has_fast_bf16   # core is on this layer; imported when needed

        return cpu_has_fast_bf16() if config.cpu_amp is None else bool(config.cpu_amp)
    return False


def kl_term(out, config: TrainConfig) -> torch.Tensor:
    """KL part of the loss: mean over the batch, with the free-bits floor per dimension."""
    if config.free_bits > 0:
        return torch.clamp(out.kl_per_dim, min=config.free_bits).sum()
    return out.kl.mean()


@torch.no_grad()
def evaluate_loss(net: VAE, tokens: data_mod.TokenData, indices: np.ndarray, vocab, batch_size: int,
                  device: torch.device, seed: int = 0, amp: bool = False) -> dict[str, float]:
    """Mean reconstruction, KL and negative ELBO (nats/molecule) and token accuracy over ``indices``.

    One posterior sample per molecule from a generator seeded with ``seed``.
    """
    if len(indices) == 0:
        return {"recon": math.nan, "kl": math.nan, "nelbo": math.nan, "token_acc": math.nan}
    was_training = net.training
    net.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    recon = kl = 0.0
    correct = total = 0
    for idx in data_mod.bucket_batches(tokens.lengths, indices, batch_size, shuffle=False):
        b = tokens.batch(idx, vocab.eos_id, vocab.pad_id).to(device)
        with autocast(device, amp):
            out = net(b.tokens, b.lengths, sample=True, generator=gen)
        recon += float(out.recon.sum())
        kl += float(out.kl.sum())
        correct += int(out.n_correct)
        total += out.n_tokens
    net.train(was_training)
    n = len(indices)
    return {"recon": recon / n, "kl": kl / n, "nelbo": (recon + kl) / n, "token_acc": correct / max(total, 1)}


@torch.no_grad()
def latent_means(net: VAE, tokens: data_mod.TokenData, indices: np.ndarray, vocab, batch_size: int,
                 device: torch.device) -> np.ndarray:
    """μ of each molecule at ``indices`` in that order, ``(n, latent_dim)``."""
    out = np.zeros((len(indices), net.config.latent_dim), dtype=np.float32)
    was_training = net.training
    net.eval()
    for s in range(0, len(indices), batch_size):
        idx = indices[s:s + batch_size]
        b = tokens.batch(idx, vocab.eos_id, vocab.pad_id).to(device)
        mu, _ = net.encode(b.tokens, b.lengths)
        out[s:s + len(idx)] = mu.float().cpu().numpy()
    net.train(was_training)
    return out


def active_units(mu: np.ndarray, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across molecules (Burda et al. 2016): Var_x[μ_d] > threshold."""
    if len(mu) < 2:
        return 0
    return int((mu.var(axis=0) > threshold).sum())


@torch.no_grad()
def greedy_reconstruction_rate(model: MolVAE, smiles: list[str], tokens: data_mod.TokenData,
                               indices: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of molecules at ``indices`` whose greedy decode of μ gives back the same canonical SMILES.

    ``smiles[i]`` is the canonical SMILES of molecule ``i`` of ``tokens``; NaN for no indices.
    """
    if len(indices) == 0:
        return math.nan
    mu = latent_means(model.net, tokens, indices, model.vocab, batch_size, model.device)
    decoded = model.decode(mu, greedy=True, batch_size=batch_size)
    hits = sum(1 for i, s in zip(indices, decoded["smiles"]) if s == smiles[i])
    return hits / len(indices)


def selection_loss(recon: float, kl: float, kl_weight: float) -> float:
    """The validation figure ``model.pt`` is chosen by: reconstruction + β_max·KL (nats/molecule).

    It is the loss the run optimizes once β has reached its target, so it compares every epoch
    on one scale. With β_max = 1 it is the negative ELBO; with β_max < 1 the true ELBO would
    always prefer the early, low-KL epochs (the KL keeps growing while reconstruction improves)
    and keep a model that reconstructs nothing.
    """
    value = float(recon) + float(kl_weight) * float(kl)
    return value if math.isfinite(value) else math.nan


def best_epoch(history: list[dict[str, Any]], kl_weight: float | None = None) -> dict[str, Any] | None:
    """The history row of the epoch ``model.pt`` holds: lowest ``val_loss`` (or -ELBO in older runs)."""
    def key(row: dict[str, Any]) -> float:
        value = row.get("val_loss")
        if value is None and kl_weight is not None:
            value = selection_loss(row.get("val_recon", math.nan), row.get("val_kl", math.nan), kl_weight)
        if value is None:
            value = row.get("val_nelbo", math.nan)
        value = float(value)
        return value if math.isfinite(value) else math.inf

    rows = [r for r in history if math.isfinite(key(r))]
    return min(rows, key=key) if rows else None
