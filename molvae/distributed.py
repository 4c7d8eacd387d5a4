"""Distributed data parallel training under ``torchrun``.

``torchrun --nproc_per_node=N -m molvae train data.csv ...`` starts N processes with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment; :func:`init_from_env`
turns that into a process group (NCCL on GPUs, gloo on CPUs) and a :class:`DistContext`
that the training loop asks who it is. Without those variables everything is a no-op
single process, so the same code path serves both.

How the work is split: every rank builds the same length-bucketed batch list for the
epoch (same seed) and takes a disjoint slice of it (batches ``rank, rank + N, ...``),
all ranks taking the same number of steps. ``batch_size`` is per process, so one
optimizer step sees ``N × batch_size`` molecules; DistributedDataParallel averages the
gradients, so in expectation a step equals a single-process step on that larger batch.
Rank 0 alone writes the run folder (logs, checkpoints, model); the others wait at
barriers. Metrics are summed over ranks before they are reported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

__all__ = ["DistContext", "init_from_env", "env_world_size"]

log = logging.getLogger(__name__)


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """Who this process is in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False   # whether :meth:`close` should destroy the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (pickled; for small things only)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_sum(self, values: list[float], device: torch.device | None = None) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        dev = device if (device is not None and self.backend == "nccl") else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_from_env(device: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    Uses NCCL when the run is on CUDA (``device`` auto/cuda and a GPU is present), gloo
    otherwise. Each rank then uses GPU ``LOCAL_RANK``. An already initialized default
    group (e.g. set up by the caller) is reused and left open.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           backend=dist.get_backend(), owns_group=False)
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    log.info("distributed: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend, owns_group=True)
