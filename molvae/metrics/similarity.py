"""Tanimoto similarity of many fingerprints at once, as matrix products.

For bit vectors ``x, y``: ``T(x, y) = |x ∧ y| / (|x| + |y| − |x ∧ y|)`` and the
intersection counts of two sets of fingerprints are one matrix product of their 0/1
matrices. The products run in torch on the CPU or a GPU, in a reduced precision only
where it is exact: 0/1 inputs with float32 accumulation give integer counts, and
bfloat16 holds every integer up to 256 (float16 up to 2048), so bfloat16 is used on a
CPU with native bfloat16 arithmetic when no intersection can exceed 256 bits, float16
on a GPU, float32 otherwise. As in MOSES, ``T = 1`` for two empty fingerprints.

SNN needs, for every query molecule, only the largest similarity to the reference set.
References are sorted by bit count ``b``; within a group of equal ``b``, ``T`` grows with
the intersection, so the group's best match is ``max ∧`` — one reduction of the product
instead of a division per pair. ``T(x, y) ≤ min(|x|, |y|) / max(|x|, |y|)`` also lets a
block of references be skipped when it cannot beat any current best; both shortcuts give
exactly the number a full pass would.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["unpack_bits", "matmul_dtype", "max_tanimoto", "power_mean_tanimoto"]


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """``(n, bytes)`` packed fingerprints -> ``(n, 8 * bytes)`` uint8 0/1 matrix."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1)


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def matmul_dtype(device: torch.device, max_intersection: int) -> torch.dtype:
    """The fastest dtype whose products of 0/1 matrices are exact for counts up to ``max_intersection``."""
    if device.type == "cuda":
        return torch.float16 if max_intersection <= 2048 else torch.float32
    if device.type == "cpu" and max_intersection <= 256 and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _to_tensor(packed: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(unpack_bits(packed)).to(device=device, dtype=dtype)


def _upper_bound(counts: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Largest Tanimoto a fingerprint with ``counts`` bits can reach with one of ``lo..hi`` bits."""
    nearest = counts.clamp(lo, hi)
    small = torch.minimum(counts, nearest).float()
    large = torch.maximum(counts, nearest).float()
    return torch.where(large > 0, small / large.clamp(min=1), torch.ones_like(small))


def max_tanimoto(query: np.ndarray, query_counts: np.ndarray, reference: np.ndarray, reference_counts: np.ndarray,
                 *, device: torch.device | str = "cpu", query_block: int = 4096, reference_block: int = 8192,
                 progress=None, workers=None) -> np.ndarray:
    """For each query fingerprint, the largest Tanimoto similarity to any reference fingerprint.

    Args:
        query, reference: packed fingerprints ``(n, bytes)`` uint8.
        query_counts, reference_counts: their bit counts ``(n,)``.
        progress: optional callable taking the number of reference rows just done.
        workers: a :class:`~molvae.metrics.molecules.Workers` pool: on the CPU, each worker
            process (one torch thread) takes every n-th block of references and the bests
            are combined; threads that synchronize at every small product lose on a busy machine.

    Returns:
        ``(n_query,)`` float64; empty when there is no query; zeros when there is no reference.
    """
    device = torch.device(device)
    n_q, n_r = len(query), len(reference)
    if n_q == 0 or n_r == 0:
        if progress:
            progress(n_r)
        return np.zeros(n_q)
    q_counts = np.asarray(query_counts, dtype=np.int64)
    r_counts = np.asarray(reference_counts, dtype=np.int64)
    dtype = matmul_dtype(device, int(min(q_counts.max(), r_counts.max())))
    q_order = np.argsort(q_counts, kind="stable")
    r_order = np.argsort(r_counts, kind="stable")
    r_sorted = r_counts[r_order]
    chunks = [(s, min(s + reference_block, n_r)) for s in range(0, n_r, reference_block)]
    # Closest bit counts first: good matches early make the bound skip more later.
    median = float(np.median(q_counts))
    chunks.sort(key=lambda c: max(r_sorted[c[0]] - median, median - r_sorted[c[1] - 1], 0.0))
    query_part = (query[q_order], q_counts[q_order])

    def part(selected):
        return [(reference[r_order[s:e]], r_sorted[s:e]) for s, e in selected]

    if workers is not None and workers.n_jobs > 1 and device.type == "cpu" and len(chunks) > 1:
        stripes = [chunks[i::workers.n_jobs] for i in range(workers.n_jobs)]
        tasks = [(query_part, part(stripe), dtype, query_block) for stripe in stripes if stripe]
        results = workers.map(_max_tanimoto_task, tasks, chunk_size=1, desc="SNN", min_parallel=2,
                              count=lambda task: sum(len(c) for _, c in task[1]), progress=progress)
        best_sorted = np.max(np.stack([r[0] for r in results]), axis=0)
    else:
        best_sorted = _max_sorted(query_part, part(chunks), dtype, device, query_block, progress)
    best = np.zeros(n_q)
    best[q_order] = best_sorted
    return best


def _max_tanimoto_task(tasks: list) -> list[np.ndarray]:
    """Worker side of :func:`max_tanimoto`: one stripe of reference blocks (one thread in a worker)."""
    return [_max_sorted(query, chunks, dtype, torch.device("cpu"), block) for query, chunks, dtype, block in tasks]


@torch.no_grad()
def _max_sorted(query: tuple[np.ndarray, np.ndarray], chunks: list[tuple[np.ndarray, np.ndarray]],
                dtype: torch.dtype, device: torch.device, query_block: int, progress=None) -> np.ndarray:
    """Best similarity of each query (sorted by bit count) over reference chunks (each sorted by bit count)."""
    q_packed, q_counts = query
    n_q = len(q_packed)
    q_bits = _to_tensor(q_packed, device, dtype)
    q_cnt = torch.from_numpy(np.asarray(q_counts)).to(device)
    q_blocks = [(s, min(s + query_block, n_q)) for s in range(0, n_q, query_block)]
    best = torch.zeros(n_q, dtype=torch.float32, device=device)
    for r_packed, r_counts in chunks:
        lo, hi = int(r_counts[0]), int(r_counts[-1])
        todo = [(qs, qe) for qs, qe in q_blocks
                if bool((_upper_bound(q_cnt[qs:qe], lo, hi) > best[qs:qe]).any())]
        if todo:
            r_bits = _to_tensor(r_packed, device, dtype)
            values, starts = np.unique(r_counts, return_index=True)
            ends = np.append(starts[1:], len(r_counts))
            for qs, qe in todo:
                a = q_cnt[qs:qe]
                cur = best[qs:qe]
                product = q_bits[qs:qe] @ r_bits.T  # (block, chunk) intersection counts
                for b, gs, ge in zip(values.tolist(), starts.tolist(), ends.tolist()):
                    if not bool((_upper_bound(a, b, b) > cur).any()):
                        continue
                    inter = product[:, gs:ge].amax(dim=1).float()
                    union = (a + b).float() - inter
                    sim = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
                    cur = torch.maximum(cur, sim)
                best[qs:qe] = cur
        if progress:
            progress(len(r_counts))
    return best.double().cpu().numpy()


def power_mean_tanimoto(fps: np.ndarray, counts: np.ndarray, weights: np.ndarray | None = None,
                        powers: Sequence[int] = (1, 2), *, device: torch.device | str = "cpu",
                        block: int = 2048, progress=None, workers=None) -> dict[int, np.ndarray]:
    """Per-molecule power means of its Tanimoto similarities to every molecule of the set.

    Row ``i`` of the result for power ``p`` is ``(Σ_j w_j T_ij^p / Σ_j w_j)^(1/p)`` over all
    ``j`` including ``i`` itself, where ``w`` counts how often each (unique) fingerprint
    occurs in the full set — the inner aggregate of MOSES IntDiv. With ``workers`` on the
    CPU, blocks of rows run in the worker processes.

    Returns:
        ``{p: (n,) float64}``.
    """
    device = torch.device(device)
    n = len(fps)
    if n == 0:
        return {p: np.zeros(0) for p in powers}
    counts = np.asarray(counts, dtype=np.int64)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    dtype = matmul_dtype(device, int(counts.max()))
    rows = [(s, min(s + block, n)) for s in range(0, n, block)]
    shared = (fps, counts, w, tuple(powers), dtype)
    if workers is not None and workers.n_jobs > 1 and device.type == "cpu" and len(rows) > 1:
        tasks = [(shared, stripe) for stripe in (rows[i::workers.n_jobs] for i in range(workers.n_jobs)) if stripe]
        results = workers.map(_power_sums_task, tasks, chunk_size=1, desc="IntDiv", min_parallel=2,
                              count=lambda task: sum(e - s for s, e in task[1]), progress=progress)
        sums = {p: np.sum([r[0][p] for r in results], axis=0) for p in powers}
    else:
        sums = _power_sums(shared, rows, device, progress)
    total = float(w.sum())
    return {p: np.power(np.clip(sums[p] / total, 0, None), 1.0 / p) for p in powers}


def _power_sums_task(tasks: list) -> list[dict[int, np.ndarray]]:
    """Worker side of :func:`power_mean_tanimoto`: a stripe of row blocks (one thread in a worker)."""
    return [_power_sums(shared, rows, torch.device("cpu")) for shared, rows in tasks]


@torch.no_grad()
def _power_sums(shared: tuple, rows: list[tuple[int, int]], device: torch.device, progress=None
                ) -> dict[int, np.ndarray]:
    """``Σ_j w_j T_ij^p`` for the rows ``i`` in the blocks ``rows`` (zeros elsewhere)."""
    fps, counts, w, powers, dtype = shared
    n = len(fps)
    bits = _to_tensor(fps, device, dtype)
    cnt = torch.from_numpy(counts).to(device).float()
    w_t = torch.from_numpy(w).to(device=device, dtype=torch.float32)
    sums = {p: torch.zeros(n, dtype=torch.float64, device=device) for p in powers}
    width = 8192
    for s, e in rows:
        for cs in range(0, n, width):
            ce = min(cs + width, n)
            inter = (bits[s:e] @ bits[cs:ce].T).float()
            union = cnt[s:e, None] + cnt[None, cs:ce] - inter
            sim = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
            power = sim
            for p in range(1, max(powers) + 1):
                if p > 1:
                    power = power * sim
                if p in sums:
                    sums[p][s:e] += (power @ w_t[cs:ce]).double()
        if progress:
            progress(e - s)
    return {p: v.cpu().numpy() for p, v in sums.items()}
