"""Fréchet ChemNet Distance through the ``fcd`` package's ChemNet weights.

The network comes from ``fcd`` (``load_ref_model``); the input encoding follows ``fcd_torch``, the FCD
implementation MOSES calls: canonical SMILES, one-hot over ChemNet's 35 symbols
(two-letter symbols ``Cl``, ``Br``, ``Si``), an end symbol, padded to 350 positions
(longer strings cut at 349), divided by 35.

Speed without changing the activations: ChemNet is two strided convolutions without
bias, a backward LSTM (128 units) and a forward LSTM (512 units) over 88 steps. Past
the end of a SMILES the convolutions output exact zeros, so the backward LSTM first
reads a run of zero inputs that is the same for every molecule. Its states along
that run are computed once; each batch then starts the backward LSTM from the state
after its own zero run and reads only the steps that hold the molecules (typically 10
to 20 instead of 88), and the forward LSTM gets the shared outputs of the zero run
for the rest. Activations agree with ``fcd.get_predictions`` to float32 rounding.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import MolvaeError

__all__ = ["fcd_available", "FCD_MISSING", "ChemNet", "activations_chunk", "activation_statistics",
           "frechet_distance"]

log = logging.getLogger(__name__)

FCD_MISSING = ("the fcd package is not installed, so FCD is skipped; "
               "install it with: pip install 'molvae[metrics]'")

_SYMBOLS = ["C", "N", "O", "H", "F", "Cl", "P", "B", "Br", "S", "I", "Si", "#", "(", ")", "+", "-", "1",
            "2", "3", "4", "5", "6", "7", "8", "=", "[", "]", "@", "c", "n", "o", "s", "X", "."]
_INDEX = {s: i for i, s in enumerate(_SYMBOLS)}
_UNKNOWN = _INDEX["X"]
_END = _INDEX["."]
_SECOND_LETTERS = frozenset("ril")
PAD_LENGTH = 350


def fcd_available() -> bool:
    """Whether the ``fcd`` package (and its ChemNet weights) can be imported."""
    try:
        import fcd  # noqa: F401
    except Exception:
        return False
    return True


def symbol_indices(smiles: str) -> list[int]:
    """ChemNet symbol ids of ``smiles`` plus the end symbol (``fcd_torch.get_one_hot``)."""
    s = smiles + "."
    out: list[int] = []
    src = 0
    while True:
        if s[src + 1] in _SECOND_LETTERS:
            symbol = s[src:src + 2]
            src += 2
        else:
            symbol = s[src]
            src += 1
        out.append(_INDEX.get(symbol, _UNKNOWN))
        if s[src] == "." or len(out) == PAD_LENGTH - 1:
            out.append(_END)
            return out


def one_hot(smiles: Sequence[str]) -> torch.Tensor:
    """ChemNet input ``(batch, 35, 350)`` float32."""
    x = torch.zeros(len(smiles), PAD_LENGTH, len(_SYMBOLS))
    rows, cols, vals = [], [], []
    for i, s in enumerate(smiles):
        ids = symbol_indices(s)
        rows.extend([i] * len(ids))
        cols.extend(range(len(ids)))
        vals.extend(ids)
    if rows:
        x[torch.tensor(rows), torch.tensor(cols), torch.tensor(vals)] = 1.0 / len(_SYMBOLS)
    return x.transpose(1, 2)


@functools.lru_cache(maxsize=1)
def _load_reference_model():
    try:
        import fcd
    except ImportError as exc:
        raise MolvaeError(FCD_MISSING) from exc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fcd.load_ref_model()


class ChemNet:
    """ChemNet's penultimate-layer activations (512 per molecule) for canonical SMILES."""

    def __init__(self, device: torch.device | str = "cpu"):
        model = _load_reference_model()
        self.device = torch.device(device)
        layers = list(model)
        lstms = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.LSTM)]
        if len(lstms) != 2 or type(layers[lstms[0] - 1]).__name__ != "Reverse":
            raise MolvaeError("unexpected ChemNet layout in the installed fcd package; expected "
                              "convolutions, a reversed LSTM and an LSTM (fcd 1.2)")
        # Copies: moving the shared, cached model to a GPU would move it for every user.
        self.conv = copy.deepcopy(torch.nn.Sequential(*layers[:lstms[0] - 2])).to(self.device).eval()
        self._lstm1_cpu = copy.deepcopy(layers[lstms[0]]).eval()
        self.lstm1 = copy.deepcopy(layers[lstms[0]]).to(self.device).eval()
        self.lstm2 = copy.deepcopy(layers[lstms[1]]).to(self.device).eval()
        self.steps: int | None = None
        self._zero_states: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def _zero_run(self, steps: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States (h, c) after k = 0..steps zero inputs and the output at each step."""
        if self._zero_states is None or self.steps != steps:
            self._zero_states = tuple(t.to(self.device) for t in _zero_run_cpu(self._lstm1_cpu, steps, width))
            self.steps = steps
        return self._zero_states

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x.to(self.device)).transpose(1, 2)  # (B, T, channels)
        batch, steps, width = z.shape
        hs, cs, outs = self._zero_run(steps, width)
        nonzero = (z != 0).any(dim=2)
        used = int(nonzero.any(dim=0).nonzero().max()) + 1 if bool(nonzero.any()) else 1
        start = steps - used  # zero steps the backward LSTM reads before the molecules
        h0 = hs[start].expand(1, batch, -1).contiguous()
        c0 = cs[start].expand(1, batch, -1).contiguous()
        y1, _ = self.lstm1(z[:, :used].flip(1), (h0, c0))
        tail = outs[:start].flip(0).unsqueeze(0).expand(batch, -1, -1)
        u = torch.cat([y1.flip(1), tail], dim=1)
        _, (h_last, _) = self.lstm2(u)
        return h_last[0]

    def activations(self, smiles: Sequence[str], batch_size: int = 512, progress=None, workers=None) -> np.ndarray:
        """``(n, 512)`` float32 activations of canonical ``smiles``.

        Molecules are batched by length so each batch reads few real steps. On the CPU
        every process uses one torch thread for this (an LSTM is 88 small steps; threads
        that wait for each other at every step lose, badly so on a busy machine), and with
        ``workers`` (a :class:`~molvae.metrics.molecules.Workers` pool) the batches are
        spread over the worker processes instead.
        """
        n = len(smiles)
        out = np.zeros((n, self.lstm2.hidden_size), dtype=np.float32)
        if n == 0:
            return out
        order = np.argsort([len(s) for s in smiles], kind="stable")
        batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        if workers is not None and workers.n_jobs > 1 and self.device.type == "cpu" and len(batches) > 1:
            results = workers.map(activations_chunk, [[smiles[i] for i in idx] for idx in batches],
                                  chunk_size=1, desc="ChemNet", min_parallel=2, count=len, progress=progress)
            for idx, (act,) in zip(batches, results):
                out[idx] = act
            return out
        # On the CPU one thread per process: 88 steps of small products cost more in thread
        # synchronization than they gain (4x slower with 2 threads on a loaded 2-core machine).
        with _single_thread() if self.device.type == "cpu" else contextlib.nullcontext():
            for idx in batches:
                out[idx] = self._forward(one_hot([smiles[i] for i in idx])).float().cpu().numpy()
                if progress:
                    progress(len(idx))
        return out


_ZERO_RUNS: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


@torch.no_grad()
def _zero_run_cpu(lstm: torch.nn.LSTM, steps: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward LSTM's states after k = 0..steps zero inputs, and its output at each step (CPU).

    One step at a time on one thread with the native kernel: oneDNN builds a new
    primitive per call, and threads synchronizing 88 times lose on a busy machine.
    """
    import warnings

    key = (steps, width)
    if key in _ZERO_RUNS:
        return _ZERO_RUNS[key]
    hidden = lstm.hidden_size
    h = torch.zeros(1, 1, hidden)
    c = torch.zeros(1, 1, hidden)
    zero = torch.zeros(1, 1, width)
    hs, cs, outs = [h], [c], []
    with _single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 when the oneDNN flags are switched
        with torch.backends.mkldnn.flags(enabled=False):
            for _ in range(steps):
                out, (h, c) = lstm(zero, (h, c))
                hs.append(h)
                cs.append(c)
                outs.append(out[0, 0])
    _ZERO_RUNS[key] = (torch.stack(hs), torch.stack(cs), torch.stack(outs))
    return _ZERO_RUNS[key]


_WORKER_NET: ChemNet | None = None


def activations_chunk(batches: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """ChemNet activations of each batch of SMILES, in a worker process (one torch thread there:
    :func:`molvae.workers.start_worker`)."""
    global _WORKER_NET
    if _WORKER_NET is None:
        _WORKER_NET = ChemNet("cpu")
    return [_WORKER_NET._forward(one_hot(list(batch))).float().numpy() for batch in batches]


def activation_statistics(activations: np.ndarray, weights: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and covariance of activations, rows repeated ``weights`` times; ``None`` for < 2 molecules."""
    n = len(activations) if weights is None else int(np.sum(weights))
    if n < 2:
        return None
    act = activations.astype(np.float64)
    if weights is None:
        return act.mean(axis=0), np.cov(act.T)
    w = np.asarray(weights, dtype=np.int64)
    mu = (act * w[:, None]).sum(axis=0) / n
    sigma = np.cov(act.T, fweights=w)
    return mu, sigma


class _single_thread:
    """Run torch on one thread inside the block (a 512 × 512 eigendecomposition is fastest that way,
    and multi-threaded LAPACK on a busy machine can be a hundred times slower)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray] | None,
                     stats_b: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """Fréchet distance ``|mu1 − mu2|² + tr(S1 + S2 − 2 (S1 S2)^½)`` of two Gaussians; ``None`` when either is missing.

    ``tr (S1 S2)^½`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which
    are those of the symmetric ``S1^½ S2 S1^½``: two symmetric eigendecompositions instead
    of ``scipy.linalg.sqrtm`` of a non-symmetric product (the ``fcd`` package's way, many
    times slower for 512 × 512, and unstable for singular covariances). Both give the same
    number to float64 rounding (see the tests).
    """
    if stats_a is None or stats_b is None:
        return None
    mu1, s1 = (np.asarray(x, dtype=np.float64) for x in stats_a)
    mu2, s2 = (np.asarray(x, dtype=np.float64) for x in stats_b)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise MolvaeError(f"FCD statistics of different sizes: {mu1.shape} and {mu2.shape}")
    with _single_thread():
        root = _sqrt_psd(torch.from_numpy(s1))
        middle = root @ torch.from_numpy(s2) @ root
        eig = torch.linalg.eigvalsh((middle + middle.T) / 2)
        tr_covmean = float(eig.clamp(min=0).sqrt().sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return value if math.isfinite(value) else None
