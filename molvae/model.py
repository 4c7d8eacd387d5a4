"""The SELFIES GRU variational autoencoder as a pure ``nn.Module`` (no file I/O here).

Encoder: token embedding -> GRU (optionally bidirectional, stacked) -> final hidden
state -> (μ, log σ²). Decoder: a GRU whose initial hidden state is a linear map of
z and whose input at every step is the previous token's embedding concatenated
with z (Bowman et al. 2016; Gómez-Bombarelli et al. 2018).

Two interchangeable implementations of the same function (same weights, same
loss up to float rounding; ``tests/test_scale.py`` checks it):

* ``"padded"`` (the default): one fused GRU call over the padded batch. Batches
  are length-bucketed (:func:`molvae.data.bucket_batches`), so padding is a few
  percent, and the padded GRU is much faster than a packed one on the CPU (the
  packed kernel re-slices the batch at every step) and at least as fast with cuDNN.
  Padding cannot leak into the result: the GRUs are causal, the encoder reads its
  state at each molecule's last real token, its backward direction runs over each
  sequence reversed in place, and logits are computed only at real positions.
* ``"packed"``: ``pack_padded_sequence``, the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .config import ModelConfig
from .vocab import Vocabulary

__all__ = ["VAE", "VAEOutput", "kl_divergence"]


@dataclass
class VAEOutput:
    """What one forward pass returns; per-molecule terms have shape ``(B,)``."""

    recon: torch.Tensor        # (B,) summed token cross-entropy per molecule, nats
    kl: torch.Tensor           # (B,) KL(q(z|x) || N(0, I)) per molecule, nats
    kl_per_dim: torch.Tensor   # (latent_dim,) KL of each latent dimension, mean over the batch
    mu: torch.Tensor           # (B, latent_dim)
    logvar: torch.Tensor       # (B, latent_dim)
    z: torch.Tensor            # (B, latent_dim)
    n_tokens: int              # target tokens in the batch (eos included)
    n_correct: torch.Tensor    # () teacher-forced argmax hits, for token accuracy
    properties: torch.Tensor | None = None  # (B, P) property head predictions


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) || N(0, 1)), shape of ``mu``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class VAE(nn.Module):
    """SELFIES sequence VAE.

    Args:
        config: layer sizes.
        vocab_size: number of tokens including the four specials.
        pad_id, bos_id, eos_id, unk_id: special token ids (see :class:`Vocabulary`).
    """

    #: :meth:`generate` shrinks its batch in multiples of this many rows
    ROW_BUCKET = 64

    def __init__(self, config: ModelConfig, vocab_size: int, *, pad_id: int = Vocabulary.pad_id,
                 bos_id: int = Vocabulary.bos_id, eos_id: int = Vocabulary.eos_id,
                 unk_id: int = Vocabulary.unk_id):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        c = config
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=pad_id)
        self.encoder_rnn = nn.GRU(
            c.embedding_dim, c.hidden_dim, num_layers=c.encoder_layers, batch_first=True,
            bidirectional=c.bidirectional, dropout=c.dropout if c.encoder_layers > 1 else 0.0)
        enc_out = c.hidden_dim * (2 if c.bidirectional else 1)
        self.to_mu = nn.Linear(enc_out, c.latent_dim)
        self.to_logvar = nn.Linear(enc_out, c.latent_dim)
        self.latent_to_hidden = nn.Linear(c.latent_dim, c.decoder_hidden_dim * c.decoder_layers)
        self.decoder_rnn = nn.GRU(
            c.embedding_dim + c.latent_dim, c.decoder_hidden_dim, num_layers=c.decoder_layers,
            batch_first=True, dropout=c.dropout if c.decoder_layers > 1 else 0.0)
        self.output = nn.Linear(c.decoder_hidden_dim, vocab_size)
        self.property_head: nn.Module | None = None
        if c.property_names:
            self.property_head = nn.Sequential(
                nn.Linear(c.latent_dim, c.property_hidden_dim), nn.ReLU(),
                nn.Linear(c.property_hidden_dim, c.property_hidden_dim), nn.ReLU(),
                nn.Linear(c.property_hidden_dim, len(c.property_names)))
        # Tokens the decoder may emit: everything but <pad>, <bos>, <unk>.
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[[pad_id, bos_id, unk_id]] = True
        self.register_buffer("forbidden", mask, persistent=False)
        # How sequences run through the GRUs (not part of the weights): "padded" or "packed".
        self.rnn_impl = "padded"

    def _padded_ok(self) -> bool:
        """The padded path supports everything but a stacked bidirectional encoder."""
        if self.rnn_impl == "packed":
            return False
        return not (self.config.bidirectional and self.config.encoder_layers > 1)

    @staticmethod
    def real_positions(lengths: torch.Tensor, width: int, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices ``row * width + t`` of the real positions of a padded batch (row-major) and their rows.

        Built on the CPU from CPU ``lengths`` and copied without blocking, so no
        device->host synchronization is needed in the training step.
        """
        lengths_cpu = lengths.cpu()
        mask = torch.arange(width).unsqueeze(0) < lengths_cpu.unsqueeze(1)
        flat = mask.view(-1).nonzero().squeeze(1)
        rows = torch.div(flat, width, rounding_mode="floor")
        if device.type != "cpu":
            flat = flat.pin_memory().to(device, non_blocking=True)
            rows = rows.pin_memory().to(device, non_blocking=True)
        return flat, rows

    # ------------------------------------------------------------------ encoder
    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of padded ``tokens (B, L)`` with ``lengths (B,)``: ``(μ, log σ²)``, each ``(B, latent_dim)``."""
        emb = self.embedding(tokens)
        if self._padded_ok():
            h = self._encode_padded(emb, lengths)
            return self.to_mu(h), self.to_logvar(h)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.encoder_rnn(packed)  # h: (layers * directions, B, H), in input order
        if self.config.bidirectional:
            h = torch.cat([h[-2], h[-1]], dim=-1)
        else:
            h = h[-1]
        return self.to_mu(h), self.to_logvar(h)

    def _encode_padded(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final encoder state of each molecule, ``(B, H·directions)``, from one padded GRU call per direction."""
        rnn = self.encoder_rnn
        B, L = emb.shape[:2]
        last = (lengths.to(emb.device, non_blocking=True) - 1).clamp(min=0)
        rows = torch.arange(B, device=emb.device)
        if not self.config.bidirectional:
            out, _ = rnn(emb)
            return out[rows, last]
        # One layer, two directions. The forward direction reads its state at the last real
        # token; the backward one runs over each sequence reversed in place (padding stays at
        # the end), so it too starts at the last real token and ends at the first.
        # Private API, on purpose: torch._VF.gru is the kernel nn.GRU itself calls, and it is the only
        # way to run ONE direction of a bidirectional nn.GRU with its own weights. The public ways cost
        # more: calling the module twice (right- and left-padded input) doubles the encoder's work; a
        # one-direction template GRU sharing these parameters needs its own construction (random init
        # must not touch the training's random stream) and stays in sync only while no conversion
        # replaces the parameter objects; two one-direction GRU modules would change the state_dict
        # layout of every saved model. The weights are read by their public names.
        # tests/test_scale.py checks this path against the packed GRU and a naive one.
        names = ("weight_ih_l0", "weight_hh_l0") + (("bias_ih_l0", "bias_hh_l0") if rnn.bias else ())
        w_f = [getattr(rnn, name) for name in names]
        w_b = [getattr(rnn, f"{name}_reverse") for name in names]
        h0 = emb.new_zeros(1, B, rnn.hidden_size)
        out_f, _ = torch._VF.gru(emb, h0, w_f, rnn.bias, 1, 0.0, self.training, False, True)
        pos = torch.arange(L, device=emb.device).unsqueeze(0)
        rev = torch.where(pos <= last.unsqueeze(1), last.unsqueeze(1) - pos, pos)
        emb_r = emb.gather(1, rev.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))
        out_b, _ = torch._VF.gru(emb_r, h0, w_b, rnn.bias, 1, 0.0, self.training, False, True)
        return torch.cat([out_f[rows, last], out_b[rows, last]], dim=-1)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """z = μ + σ·ε with ε ~ N(0, I)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    # ------------------------------------------------------------------ decoder
    def initial_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder GRU state from z: ``(decoder_layers, B, decoder_hidden_dim)``."""
        c = self.config
        h = self.latent_to_hidden(z).view(z.shape[0], c.decoder_layers, c.decoder_hidden_dim)
        return h.transpose(0, 1).contiguous()

    def decoder_logits(self, z: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                       word_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits on the real (packed) positions only.

        Returns:
            ``(logits, targets)``: ``(N, vocab)`` and ``(N,)`` over the N = Σ lengths
            target tokens: molecule by molecule (``"padded"``) or time-major (``"packed"``).
        """
        B = tokens.shape[0]
        inputs = torch.cat([torch.full((B, 1), self.bos_id, dtype=tokens.dtype, device=tokens.device),
                            tokens[:, :-1]], dim=1)
        if word_dropout > 0 and self.training:
            # Replacing inputs by <unk> forces the decoder to rely on z (Bowman et al. 2016).
            drop = torch.rand(inputs.shape, device=inputs.device) < word_dropout
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop, self.unk_id)
        emb = self.embedding(inputs)
        x = torch.cat([emb, z.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)
        if self.rnn_impl != "packed":
            # Row-major order here (the packed path is time-major); callers only sum per molecule.
            out, _ = self.decoder_rnn(x, self.initial_hidden(z).to(x.dtype))
            flat, _ = self.real_positions(lengths, tokens.shape[1], tokens.device)
            hidden = out.reshape(-1, out.shape[-1]).index_select(0, flat)
            return self.output(hidden), tokens.reshape(-1).index_select(0, flat)
        lengths_cpu = lengths.cpu()
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.decoder_rnn(packed, self.initial_hidden(z))
        targets = pack_padded_sequence(tokens, lengths_cpu, batch_first=True, enforce_sorted=False).data
        return self.output(out.data), targets

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, *, sample: bool = True,
                word_dropout: float = 0.0, generator: torch.Generator | None = None) -> VAEOutput:
        """Encode, sample z (or take μ when ``sample=False``), decode with teacher forcing."""
        mu, logvar = self.encode(tokens, lengths)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        logits, targets = self.decoder_logits(z, tokens, lengths, word_dropout)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        # Map each position back to its molecule to get per-molecule sums.
        B, L = tokens.shape
        if self.rnn_impl != "packed":
            _, owner = self.real_positions(lengths, L, tokens.device)
        else:
            owner = torch.arange(B, device=tokens.device).unsqueeze(1).expand(B, L)
            owner = pack_padded_sequence(owner, lengths.cpu(), batch_first=True, enforce_sorted=False).data
        recon = torch.zeros(B, device=tokens.device, dtype=ce.dtype).index_add_(0, owner, ce)
        kl_el = kl_divergence(mu.float(), logvar.float())
        props = self.property_head(mu) if self.property_head is not None else None
        with torch.no_grad():
            n_correct = (logits.argmax(-1) == targets).sum()
        return VAEOutput(recon=recon, kl=kl_el.sum(-1), kl_per_dim=kl_el.mean(0), mu=mu, logvar=logvar, z=z,
                         n_tokens=int(lengths.sum()), n_correct=n_correct, properties=props)

    # ------------------------------------------------------------------ generation
    def _step_weights(self, z: torch.Tensor) -> list[tuple[torch.Tensor | None, ...]]:
        """Per decoder layer, what one GRU step needs, with everything that does not change between
        steps computed once: for the first layer, the input projection of every token (a ``(vocab, 3H)``
        table: the input is a token's embedding, so its product with ``W_ih`` is a row lookup) and of z."""
        rnn, E = self.decoder_rnn, self.config.embedding_dim
        out = []
        for layer in range(self.config.decoder_layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            if layer == 0:
                table = torch.addmm(b_ih, self.embedding.weight, w_ih[:, :E].t())
                from_z = z @ w_ih[:, E:].t()
                out.append((table, from_z, None, None, w_hh.t(), b_hh))
            else:
                out.append((None, None, w_ih.t(), b_ih, w_hh.t(), b_hh))
        return out

    @staticmethod
    def _gru_cell(gi: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        """One GRU step given the input projection ``gi`` (PyTorch's gate order r, z, n)."""
        gh = torch.addmm(b_hh, h, w_hh_t)
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        u = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + u * (h - n)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, max_len: int, *, temperature: float = 1.0, greedy: bool = False,
                 top_p: float = 1.0, generator: torch.Generator | None = None,
                 atom_tokens: torch.Tensor | None = None) -> list[list[int]]:
        """Decode latent vectors ``z (B, latent_dim)`` autoregressively.

        ``atom_tokens`` (a ``(vocab,)`` bool mask) forbids ``<eos>`` until one of those
        tokens was emitted: a SELFIES string of only branch/ring tokens decodes to an
        empty molecule, so this keeps every sample a real molecule.

        The GRU runs one step at a time from its weights (the same function as ``decoder_rnn``,
        checked in the tests): token and z input projections are computed once, and rows that
        emitted ``<eos>`` leave the batch in whole buckets of :attr:`ROW_BUCKET` rows, so the cost follows
        the molecules' real lengths rather than ``max_len`` while the matrix products see few distinct
        shapes (oneDNN keeps a kernel and its buffers per shape: bf16 sampling with a shape per step
        grew the process by ~400 MB over 20,000 molecules). Sampling draws one uniform number per row and step (inverse CDF), so
        a row's tokens do not depend on when other rows finish. ``top_p < 1`` samples from the smallest set of
        tokens whose probabilities sum to at least ``top_p`` (nucleus sampling, Holtzman et al. 2020).

        Returns:
            One list of token ids per row, without ``<eos>``, at most ``max_len`` long.
        """
        B = z.shape[0]
        device = z.device
        layers = self._step_weights(z)
        h = list(self.initial_hidden(z).unbind(0))
        from_z = layers[0][1]
        token = torch.full((B,), self.bos_id, dtype=torch.long, device=device)
        out = torch.full((B, max_len), self.pad_id, dtype=torch.long, device=device)
        rows = torch.arange(B, device=device)          # original row of each active row
        has_atom = torch.zeros(B, dtype=torch.bool, device=device) if atom_tokens is not None else None
        atoms = atom_tokens.to(device) if atom_tokens is not None else None
        forbidden = self.forbidden
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_len):
            u = None if greedy else torch.rand(B, generator=generator, device=device)
            x = layers[0][0].index_select(0, token) + from_z
            for i, (_, _, w_ih_t, b_ih, w_hh_t, b_hh) in enumerate(layers):
                gi = x if i == 0 else torch.addmm(b_ih, h[i - 1], w_ih_t)
                h[i] = self._gru_cell(gi, h[i], w_hh_t, b_hh)
            logits = self._step_logits(h[-1], forbidden, has_atom, t < max_len - 1)
            if greedy:
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    probs = nucleus(probs, top_p)
                cdf = probs.cumsum(-1)
                draw = u.index_select(0, rows).unsqueeze(1) * cdf[:, -1:]
                token = torch.searchsorted(cdf, draw).squeeze(1).clamp_(max=logits.shape[1] - 1)
            out[rows, t] = token
            if has_atom is not None:
                has_atom |= atoms[token]
            done |= token == self.eos_id
            n_alive = int((~done).sum())
            if n_alive == 0:
                break
            size = min(len(rows), -(-n_alive // self.ROW_BUCKET) * self.ROW_BUCKET)
            if size < len(rows):
                # finished rows first leave in whole buckets; those kept as padding write after their
                # <eos>, which the result cuts off
                keep = torch.argsort(done.to(torch.int8), stable=True)[:size]
                rows, token, from_z, done = rows[keep], token[keep], from_z[keep], done[keep]
                h = [x.index_select(0, keep) for x in h]
                if has_atom is not None:
                    has_atom = has_atom[keep]
        return self._cut(out)

    def _step_logits(self, h_last: torch.Tensor, forbidden: torch.Tensor, has_atom: torch.Tensor | None,
                     eos_gated: bool) -> torch.Tensor:
        """The next token's logits (float32), with forbidden tokens and an early ``<eos>`` masked out."""
        logits = self.output(h_last).float().masked_fill(forbidden, -math.inf)
        if has_atom is not None and eos_gated:
            logits[:, self.eos_id] = logits[:, self.eos_id].masked_fill(~has_atom, -math.inf)
        return logits

    def _cut(self, out: torch.Tensor) -> list[list[int]]:
        """Rows of token ids up to (without) the first ``<eos>``, padding dropped."""
        result = []
        for row in out.cpu().tolist():
            try:
                row = row[: row.index(self.eos_id)]
            except ValueError:
                pass
            result.append([i for i in row if i != self.pad_id])
        return result

    @torch.no_grad()
    def beam_search(self, z: torch.Tensor, max_len: int, *, width: int = 4,
                    atom_tokens: torch.Tensor | None = None) -> list[list[int]]:
        """The highest-scoring sequence of a beam search of ``width`` beams per latent vector.

        A beam's score is its summed token log-probability log p(x|z) (``<eos>`` included); a finished
        beam keeps its score and competes with the open ones until the end, so the result is the most
        likely sequence the search found (``width=1`` is greedy decoding). ``atom_tokens`` gates
        ``<eos>`` as in :meth:`generate`.

        Returns:
            One list of token ids per row of ``z``, without ``<eos>``, at most ``max_len`` long.
        """
        B, K, V = z.shape[0], width, self.vocab_size
        device = z.device
        zk = z.repeat_interleave(K, 0)                                 # (B*K, latent): beams of a latent together
        layers = self._step_weights(zk)
        h = list(self.initial_hidden(zk).unbind(0))
        from_z = layers[0][1]
        score = torch.full((B, K), -math.inf, device=device)
        score[:, 0] = 0.0                                              # one open beam at the start
        token = torch.full((B * K,), self.bos_id, dtype=torch.long, device=device)
        seqs = torch.full((B * K, max_len), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(B * K, dtype=torch.bool, device=device)
        has_atom = torch.zeros(B * K, dtype=torch.bool, device=device) if atom_tokens is not None else None
        atoms = atom_tokens.to(device) if atom_tokens is not None else None
        offset = (torch.arange(B, device=device) * K).unsqueeze(1)
        for t in range(max_len):
            x = layers[0][0].index_select(0, token) + from_z
            for i, (_, _, w_ih_t, b_ih, w_hh_t, b_hh) in enumerate(layers):
                gi = x if i == 0 else torch.addmm(b_ih, h[i - 1], w_ih_t)
                h[i] = self._gru_cell(gi, h[i], w_hh_t, b_hh)
            logp = torch.log_softmax(self._step_logits(h[-1], self.forbidden, has_atom, t < max_len - 1), -1)
            # a finished beam has one continuation, <pad>, at no cost
            logp[done] = -math.inf
            logp[done, self.pad_id] = 0.0
            cand = (score.view(-1, 1) + logp).view(B, K * V)
            score, flat = cand.topk(K, dim=1)
            parent = (offset + torch.div(flat, V, rounding_mode="floor")).view(-1)
            token = (flat % V).view(-1)
            seqs = seqs.index_select(0, parent)
            seqs[:, t] = token
            h = [x.index_select(0, parent) for x in h]
            done = done.index_select(0, parent) | (token == self.eos_id)
            if has_atom is not None:
                has_atom = has_atom.index_select(0, parent) | atoms[token]
            if bool(done.all()):
                break
        best = offset.squeeze(1) + score.argmax(1)
        return self._cut(seqs.index_select(0, best))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs (B, V)`` with every token outside each row's nucleus zeroed: the most likely tokens whose
    probabilities, summed in decreasing order, first reach ``top_p`` (the most likely token always stays).
    Not renormalized: inverse-CDF sampling scales by the row's total."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p                            # mass of the more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def sequences_to_tensor(seqs: Sequence[Sequence[int]], eos_id: int, pad_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id sequences and append ``<eos>``: ``(tokens (B, L), lengths (B,))``."""
    lengths = torch.tensor([len(s) + 1 for s in seqs], dtype=torch.long)
    width = int(lengths.max()) if len(seqs) else 1
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        out[i, len(s)] = eos_id
    return out, lengths
