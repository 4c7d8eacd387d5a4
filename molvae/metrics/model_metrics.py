"""What a trained model does with held-out molecules: reconstruction, KL, active units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["model_metrics"]


@torch.no_grad()
def model_metrics(model, smiles: Sequence[str], *, n: int = 1000, seed: int = 0, batch_size: int = 256
                  ) -> dict[str, Any]:
    """Held-out reconstruction accuracy, mean KL and active units of ``model``.

    A seeded sample of ``n`` molecules of ``smiles`` (e.g. the test set) is cleaned the way
    the model was trained (canonical, largest fragment, its vocabulary and maximum length);
    molecules it cannot represent are counted and left out.

    - ``reconstruction``: fraction whose greedy decode of μ gives back the same canonical SMILES;
    - ``kl``: mean KL(q(z|x) || N(0, I)) in nats per molecule;
    - ``active_units``: latent dimensions with Var_x[μ] > 0.01 (Burda et al. 2016).

    Returns:
        The three figures (``None`` when no molecule could be encoded) and the counts
        ``n_sampled``, ``n_encoded``, ``n_rejected``, ``n_reconstructed``, ``latent_dim``.
    """
    from ..data import prepare
    from ..model import kl_divergence
    from ..diagnostics import active_units, greedy_reconstruction_rate, latent_means

    smiles = list(smiles)
    rng = np.random.default_rng(seed)
    take = min(n, len(smiles))
    picked = sorted(rng.choice(len(smiles), size=take, replace=False).tolist()) if take else []
    table = pd.DataFrame({"row": np.arange(1, take + 1), "input": [smiles[i] for i in picked]})
    largest = bool(model.train_config.largest_fragment) if model.train_config is not None else True
    prepared = prepare(table, largest_fragment=largest, max_len=model.config.max_len - 1, vocab=model.vocab)
    out: dict[str, Any] = {"reconstruction": None, "kl": None, "active_units": None,
                           "n_sampled": take, "n_encoded": len(prepared), "n_rejected": len(prepared.rejected),
                           "n_reconstructed": 0, "latent_dim": int(model.config.latent_dim)}
    if len(prepared) == 0:
        return out
    net = model.net
    was_training = net.training
    net.eval()
    try:
        indices = np.arange(len(prepared))
        mu = latent_means(net, prepared.tokens, indices, model.vocab, batch_size, model.device)
        kl_total = 0.0
        for s in range(0, len(indices), batch_size):
            batch = prepared.tokens.batch(indices[s:s + batch_size], model.vocab.eos_id, model.vocab.pad_id)
            m, logvar = net.encode(batch.tokens.to(model.device), batch.lengths)
            kl_total += float(kl_divergence(m.float(), logvar.float()).sum())
        accuracy = greedy_reconstruction_rate(model, prepared.smiles, prepared.tokens, indices, batch_size)
    finally:
        net.train(was_training)
    out["reconstruction"] = None if math.isnan(accuracy) else float(accuracy)
    out["n_reconstructed"] = int(round(accuracy * len(indices))) if out["reconstruction"] is not None else 0
    out["kl"] = kl_total / len(indices)
    out["active_units"] = int(active_units(mu))
    return out
