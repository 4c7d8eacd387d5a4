"""The one worker pool: processes that keep the input order and fail loudly when one dies.

``multiprocessing.Pool`` replaces a worker that dies (a segfault in a native library, the
out-of-memory killer) and waits forever for the task it held; ``concurrent.futures``
marks the pool broken instead, which is turned here into :class:`WorkerCrashed`, a
one-line error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import WorkerCrashed

__all__ = ["available_cpus", "resolve_jobs", "start_worker", "stop_on_signals", "process_pool", "pool_in", "ordered_map", "crashed"]

log = logging.getLogger(__name__)
_warned: set[int] = set()


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_jobs(n_jobs: int | None) -> int:
    """``None`` or ``<= 0``: every available core; more than that is capped at it (with a warning),
    since extra processes on the same cores only cost memory and switching."""
    cpus = available_cpus()
    if n_jobs is None or n_jobs <= 0:
        return cpus
    if n_jobs > cpus:
        if n_jobs not in _warned:
            _warned.add(n_jobs)
            log.warning("%d worker processes asked for, %d CPU cores available: using %d", n_jobs, cpus, cpus)
        return cpus
    return int(n_jobs)


def start_worker(parent: int | None = None) -> None:
    """What every worker process does first.

    * SIGINT and SIGTERM are the parent's: a scheduler (``timeout``, SLURM, systemd) signals the whole
      process group, and the parent stops between batches, writes what it has and shuts the pool down;
      a worker that died of the signal would turn that into a crash with nothing written.
    * It dies with its parent (Linux ``PR_SET_PDEATHSIG``): a parent killed with SIGKILL or by the
      out-of-memory killer leaves no workers behind.
    * One torch thread: the parallelism is the pool's.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc symbol: the worker lives as before
            pass
    if parent is not None and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    import torch

    torch.set_num_threads(1)


_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[int], None]) -> Iterator[None]:
    """Inside the block the first SIGINT or SIGTERM calls ``on_stop(signum)`` (the loop then ends at its next
    safe point, its output whole) and a second one raises KeyboardInterrupt at once. Outside the main
    thread (where Python delivers no signals) it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        on_stop(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def process_pool(n_jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
                 ) -> ProcessPoolExecutor:
    """A pool of ``n_jobs`` processes (fork where there is fork, so workers share what is imported), each
    started with :func:`start_worker` and then ``initializer(*initargs)``."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")
    return pool_in(ctx, n_jobs, initializer, initargs)


def pool_in(ctx: Any, n_jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
            ) -> ProcessPoolExecutor:
    """:func:`process_pool` with a given multiprocessing context (``spawn`` where the parent already ran
    OpenMP threads: a forked child of such a process can hang in them)."""
    failures = ctx.SimpleQueue()
    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_start,
                               initargs=(os.getpid(), failures, initializer, initargs))
    pool.molvae_failures = failures  # what a worker that could not start said (read by crashed())
    return pool


def _start(parent: int, failures: Any, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    try:
        start_worker(parent)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # the pool only learns that the worker is gone: tell it why
        failures.put(f"{type(exc).__name__}: {exc}")
        raise


def crashed(what: str, pool: ProcessPoolExecutor | None = None) -> WorkerCrashed:
    """The error for a pool whose worker died while doing ``what``: the worker's own exception where it
    raised one while starting (an ImportError of a package changed under a running job), else the usual
    causes of a process that dies without a word."""
    # The pool ends the survivors of a broken pool with SIGTERM, which workers leave to their parent
    # (start_worker): end them with SIGKILL, or shutting the pool down waits for them forever.
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()
    failures = getattr(pool, "molvae_failures", None)
    if failures is not None and not failures.empty():
        return WorkerCrashed(f"a worker process failed while {what}: {failures.get()}; nothing was written")
    return WorkerCrashed(
        f"a worker process died while {what} (a crash in RDKit on an extreme input, or the out-of-memory "
        "killer); nothing was written. Look for unusually large molecules in the input, or retry with fewer "
        "--n-jobs")


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], n_jobs: int, *, what: str) -> Iterator[Any]:
    """``fn`` over ``items`` in ``n_jobs`` processes (in this process for one job), results in input order.

    Raises:
        WorkerCrashed: a worker process died; the error says while doing ``what``.
    """
    n = min(resolve_jobs(n_jobs), len(items))
    if n <= 1:
        yield from map(fn, items)
        return
    with process_pool(n) as pool:
        try:
            yield from pool.map(fn, items)
        except BrokenProcessPool as exc:
            raise crashed(what, pool) from exc
