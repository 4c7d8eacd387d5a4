"""The run folder: what it holds, its lock, claiming and clearing it, LATEST, history and curves.

A run folder holds ``model.pt``, ``checkpoint.pt``, ``config.json``, ``history.csv``,
``rejected.csv`` and, when matplotlib is installed, ``training_curves.png``. While a process
writes it, ``.molvae.lock`` holds that process's ``flock``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ..checkpoint import FileLock, atomic_write
from ..core import LATEST_POINTER
from ..errors import RunFolderError

__all__ = ["RUN_FILES", "LOCK_FILE", "RunLock", "run_contents", "claim_run_dir", "clear_old_run", "point_latest",
           "remove_stale_temp_files", "write_history", "plot_curves"]

log = logging.getLogger(__name__)


#: Files a run folder holds; ``--overwrite`` removes these (and only these) of the old run.
RUN_FILES = ("model.pt", "checkpoint.pt", "config.json", "history.csv", "rejected.csv", "training_curves.png",
             "report.html", "metrics.json")
LOCK_FILE = ".molvae.lock"


class RunLock(FileLock):
    """An exclusive lock on a run folder (``flock`` on ``.molvae.lock``), so two processes never write
    one run. The kernel releases it when the process dies, so a killed run leaves no stale lock."""

    def __init__(self, run: Path) -> None:
        self.run = run
        super().__init__(run / LOCK_FILE, what=(run, "the run folder"),
                         busy=f"{run}: another molvae process{{holder}} is writing this run folder; wait for it "
                              "to finish or train into another --out", error=RunFolderError)


def run_contents(run: Path) -> list[str]:
    """Names in ``run`` other than the lock and temp files of interrupted atomic writes."""
    try:
        return sorted(p.name for p in run.iterdir() if p.name != LOCK_FILE and not
                      (p.name.startswith(".") and p.name.endswith(".tmp")))
    except OSError:
        return []


def claim_run_dir(out_dir: str | os.PathLike | None, runs_dir: str | os.PathLike,
                   overwrite: bool) -> tuple[Path, RunLock, bool]:
    """Create (or take, with ``overwrite``) the run folder and lock it: ``(run, lock, created)``.

    Raises:
        RunFolderError: the folder already holds a run (and no ``overwrite``), is a file, or
            another process holds its lock.
    """
    if out_dir is not None:
        run = Path(out_dir)
        if run.exists() and not run.is_dir():
            raise RunFolderError(f"{run}: exists and is not a folder; expected a run folder for --out")
        created = not run.exists()
        run.mkdir(parents=True, exist_ok=True)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        k = 0
        while True:  # mkdir without exist_ok: two runs started in the same second get two folders
            run = Path(runs_dir) / (stamp if k == 0 else f"{stamp}-{k}")
            try:
                run.mkdir()
                break
            except FileExistsError:
                k += 1
        created = True
    lock = RunLock(run).acquire()
    existing = run_contents(run)
    if existing and not overwrite:
        lock.release()
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise RunFolderError(
            f"{run}: already holds a run ({shown}); pass --overwrite to replace it, --resume {run} to continue "
            "it, or choose another --out")
    return run, lock, created


def clear_old_run(run: Path) -> None:
    """``--overwrite``: remove the old run's files just before the new run writes its first one, so the
    folder never mixes two runs (an old model.pt beside a new config.json)."""
    removed = []
    for name in RUN_FILES:
        if (run / name).is_file() or (run / name).is_symlink():
            (run / name).unlink()
            removed.append(name)
    remove_stale_temp_files(run)
    if removed:
        log.info("%s: removed the previous run's %s", run, ", ".join(removed))
    left = run_contents(run)
    if left:
        log.warning("%s: left untouched files that are not part of a molvae run: %s", run, ", ".join(left[:5]))


def point_latest(run: Path, runs_dir: str | os.PathLike) -> None:
    """Point ``runs_dir/LATEST`` at ``run`` (when it lies in ``runs_dir``); called once ``run`` holds a model."""
    runs = Path(runs_dir)
    try:
        # A run folder that is a symlink inside runs_dir counts as one of its runs too.
        if run.absolute().parent == runs.absolute() or run.resolve().parent == runs.resolve():
            atomic_write(runs / LATEST_POINTER, lambda f: f.write(run.name.encode() + b"\n"))
    except OSError:
        log.warning("could not update %s", runs / LATEST_POINTER)


def remove_stale_temp_files(run: Path) -> None:
    """Delete temp files of atomic writes that a killed process left in ``run``."""
    for name in RUN_FILES:
        for tmp in run.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                log.info("removed %s, left by an interrupted write", tmp)
            except OSError:
                pass


def write_history(run: Path, history: list[dict[str, Any]]) -> None:
    if history:
        text = pd.DataFrame(history).to_csv(index=False)
        atomic_write(run / "history.csv", lambda f: f.write(text.encode()))


def plot_curves(run: Path, history: list[dict[str, Any]]) -> None:
    """Write ``training_curves.png`` when matplotlib (the ``plots`` extra) is installed; never fails the run."""
    if not history:
        return
    try:
        from ..plots import have_matplotlib, training_curves

        if have_matplotlib():
            training_curves(history, run / "training_curves.png", title=f"Training curves: {run.name}")
    except Exception as exc:  # a plot must never cost a trained model
        log.warning("could not draw the training curves (%s)", exc)
