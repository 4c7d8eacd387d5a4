"""Weighted retraining (Tripp, Daxberger & Hernández-Lobato 2020, "Sample-efficient optimization in
the latent space of deep generative models via weighted retraining"; LOL-BO, Maus et al. 2022).

A VAE trained on ZINC puts the molecules an optimizer is after in a sliver of its latent space,
and its prior rarely decodes to them. Every ``retrain_every`` oracle calls, the search fine-tunes
the VAE (encoder and decoder, the training ELBO at the model's own β) on the molecules scored so
far, drawn with weights ``1 / (k·N + rank)`` (rank 0 = the best of the N): the decoder learns to
write what scores well, the prior moves towards it, and the latent points of the best molecules
are re-encoded afterwards. When the search ascends the model's property head, the head is trained
along (its prediction of the objective against the oracle's scores), so that it still scores the
moved latent space. The model is the search's own copy (:func:`molvae.optimize.optimize` never
changes the caller's model).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..config import TrainConfig
from ..model import sequences_to_tensor
from ..diagnostics import autocast, kl_term, use_mixed_precision
from .head import finite_rows
from .oracle import Oracle

__all__ = ["Retrainer", "rank_weights"]

log = logging.getLogger(__name__)


def rank_weights(n: int, k: float) -> np.ndarray:
    """Tripp et al.'s rank weights of ``n`` molecules sorted best first, normalized to sum 1."""
    w = 1.0 / (k * n + np.arange(n, dtype=float))
    return w / w.sum()


class Retrainer:
    """Fine-tunes ``model`` in place on the oracle's best molecules when a retraining is due.

    ``settings`` carries ``retrain_every`` (oracle calls between retrainings; ``None`` or 0: never),
    ``retrain_steps`` (Adam steps per retraining), ``retrain_batch`` (molecules per step),
    ``retrain_lr`` and ``retrain_k`` (the weights' ``k``). The Adam state carries over between
    retrainings; the draws come from a generator seeded by ``seed``. With ``head`` (the
    :class:`~molvae.optimize.head.HeadScorer` a gradient search ascends), each step also fits the
    head's prediction of the objective to the drawn molecules' scores (squared error in the head's
    standardized units, weighted by the model's ``property_weight``).
    """

    def __init__(self, model, settings, seed: int, head=None):
        self.model = model
        self.head = head
        self.s = settings
        self.every = int(settings.retrain_every or 0)
        self.next_at = self.every
        self.rng = np.random.default_rng(seed + 7919)
        self.tc = model.train_config or TrainConfig()
        self.optimizer = None
        self.n_done = 0
        self._ids: dict[str, list[int] | None] = {}

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self, oracle: Oracle) -> bool:
        return self.enabled and not oracle.exhausted and oracle.n_calls >= self.next_at

    def maybe_retrain(self, oracle: Oracle) -> bool:
        """Retrain if ``retrain_every`` calls went by since the last time; True when it did."""
        if not self.due(oracle):
            return False
        self.next_at = oracle.n_calls + self.every
        scored = oracle.scored(include_known=True)
        ok = [self._tokens(s) is not None for s in scored["smiles"]]
        smiles = scored["smiles"][ok].tolist()
        if len(smiles) < 2:
            return False
        self.fit(smiles, scored["score"][ok].to_numpy(dtype=float))
        return True

    def _tokens(self, smiles: str) -> list[int] | None:
        if smiles not in self._ids:
            ids = self.model.tokenize(smiles)
            self._ids[smiles] = None if isinstance(ids, str) else ids
        return self._ids[smiles]

    def encoded_scored(self, oracle: Oracle) -> tuple[np.ndarray, np.ndarray]:
        """Every scored molecule (known ones and a start molecule included) encoded by the model as it
        is now, and the scores: ``(z (m, d), y (m,))`` in the order they were scored; what a search's
        surrogate learns from after a retraining moved the latent space. Token ids are cached across
        retrainings (tokenizing costs more than encoding)."""
        scored = oracle.log()
        scored = scored[np.isfinite(scored["score"].astype(float))]
        ids = [self._tokens(s) for s in scored["smiles"]]
        ids = ["not encodable" if t is None else t for t in ids]
        z, _ = self.model.posterior_of_ids(ids)
        ok = finite_rows(z)
        return z[ok], scored["score"].to_numpy(dtype=float)[ok]

    def fit(self, smiles_best_first: list[str], scores: np.ndarray | None = None) -> float:
        """``retrain_steps`` steps on draws from ``smiles_best_first`` by rank weight; the mean loss.
        ``scores`` (aligned with the molecules) are the head's targets when there is a head."""
        s, model, net = self.s, self.model, self.model.net
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(net.parameters(), lr=s.retrain_lr)
        p = rank_weights(len(smiles_best_first), s.retrain_k)
        vocab = model.vocab
        beta = self.tc.kl_weight
        amp = use_mixed_precision(self.tc, model.device)   # as the model was trained: bf16 on a fast CPU
        head = self.head if scores is not None else None
        if head is not None:
            # np.array copies: a pandas column's array may be read-only, which torch warns about.
            targets = torch.as_tensor(np.array(scores, dtype=float), dtype=torch.float32, device=model.device)
            unit = float((head.scale ** 2).sum()) or 1.0     # the head's standardized units
            for q in head.head.parameters():
                q.requires_grad_(True)
        net.train()
        total = 0.0
        try:
            for _ in range(s.retrain_steps):
                pick = self.rng.choice(len(smiles_best_first), size=s.retrain_batch, p=p)
                seqs = [self._ids[smiles_best_first[i]] for i in pick]
                tokens, lengths = sequences_to_tensor(seqs, vocab.eos_id, vocab.pad_id)
                with autocast(model.device, amp):
                    out = net(tokens.to(model.device), lengths.to(model.device), sample=True)
                loss = out.recon.mean() + beta * kl_term(out, self.tc)
                if head is not None and out.properties is not None:
                    pred = out.properties.float() @ head.scale + head.offset
                    y = targets[torch.as_tensor(pick, device=model.device)]
                    loss = loss + self.tc.property_weight * ((pred - y) ** 2).mean() / unit
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), self.tc.grad_clip)
                if torch.isfinite(loss):
                    self.optimizer.step()
                total += float(loss.detach())
        finally:
            net.eval()
            if head is not None:
                for q in head.head.parameters():     # the search differentiates in z only
                    q.requires_grad_(False)
        self.n_done += 1
        mean = total / max(1, s.retrain_steps)
        log.info("retraining %d on %d molecules: mean loss %.3f", self.n_done, len(smiles_best_first), mean)
        return mean
