"""Training: β-annealed ELBO, checkpoints, resume, device selection and mixed precision.

Loss per molecule = token cross-entropy (reconstruction, nats) + β·KL(q(z|x) || N(0, I)),
averaged over the batch. β follows a schedule (constant, linear, sigmoid or cyclical,
Fu et al. 2019); free bits put a floor under each latent dimension's KL (Kingma et
al. 2016) and word dropout weakens the decoder's teacher forcing (Bowman et al. 2016),
both against posterior collapse.

A run folder holds ``model.pt`` (the best model by the validation loss at the target β,
reconstruction + β_max·KL: the true negative ELBO when β_max = 1; see :func:`selection_loss`),
``checkpoint.pt`` (everything needed to resume), ``config.json``, ``history.csv``,
``rejected.csv`` and, when matplotlib is installed, ``training_curves.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import data as data_mod
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint, versions
from .config import ModelConfig, TrainConfig, progress_wanted
from .core import LATEST_POINTER, MolVAE, cpu_has_fast_bf16, resolve_device
from .distributed import DistContext, init_from_env
from .errors import CheckpointError, InvalidInputError, MolvaeError, RunFolderError
from .model import VAE

__all__ = ["train", "TrainResult", "kl_weight_at", "selection_loss", "best_epoch", "evaluate_loss", "reconstruction_accuracy",
           "active_units", "TrainingInterrupted", "TrainingDiverged"]

log = logging.getLogger(__name__)


class TrainingInterrupted(MolvaeError):
    """Raised after Ctrl-C/SIGTERM once a resumable checkpoint has been written."""


class TrainingDiverged(MolvaeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


def kl_weight_at(config: TrainConfig, epoch_progress: float) -> float:
    """β after ``epoch_progress`` epochs (fractional) under ``config``'s schedule."""
    beta, warm = config.kl_weight, config.kl_warmup_epochs
    kind = config.kl_schedule
    if kind == "constant" or warm <= 0:
        return beta
    if kind == "linear":
        return beta * min(1.0, epoch_progress / warm)
    if kind == "sigmoid":
        # centred at half the warm-up, ~0.7% of β_max at 0 and ~99.3% at the end
        return beta / (1.0 + math.exp(-10.0 * (epoch_progress / warm - 0.5)))
    if kind == "cyclical":
        pos = (epoch_progress % warm) / warm
        ratio = max(config.kl_cycle_ratio, 1e-8)
        return beta * min(1.0, pos / ratio)
    raise InvalidInputError(f"unknown KL schedule {kind!r}")


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """Adam's learning rate at ``progress`` (0 → 1) through the run under ``config``'s schedule.

    ``cosine`` falls from ``learning_rate`` to ``lr_final_ratio · learning_rate`` along half a cosine
    (Loshchilov & Hutter 2017, without restarts): for a fixed budget it ends lower than a constant rate
    and usually at a lower loss.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    p = min(max(progress, 0.0), 1.0)
    low = config.learning_rate * config.lr_final_ratio
    return low + 0.5 * (config.learning_rate - low) * (1.0 + math.cos(math.pi * p))


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


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: MolVAE
    history: list[dict[str, Any]]
    prepared: data_mod.PreparedData | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _autocast(device: torch.device, enabled: bool):
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
        return cpu_has_fast_bf16() if config.cpu_amp is None else bool(config.cpu_amp)
    return False


def kl_term(out, config: TrainConfig) -> torch.Tensor:
    """KL part of the loss: mean over the batch, with the free-bits floor per dimension."""
    if config.free_bits > 0:
        return torch.clamp(out.kl_per_dim, min=config.free_bits).sum()
    return out.kl.mean()


def property_loss(pred: torch.Tensor | None, target: torch.Tensor | None) -> torch.Tensor | None:
    """Mean squared error of the property head over labelled entries only (NaN = unlabelled)."""
    if pred is None or target is None:
        return None
    mask = torch.isfinite(target)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return ((pred.float() - torch.nan_to_num(target)) ** 2)[mask].mean()


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
        with _autocast(device, amp):
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
def reconstruction_accuracy(model: MolVAE, smiles: list[str], tokens: data_mod.TokenData,
                            indices: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of molecules at ``indices`` whose greedy decode of μ gives back the same canonical SMILES."""
    if len(indices) == 0:
        return math.nan
    mu = latent_means(model.net, tokens, indices, model.vocab, batch_size, model.device)
    decoded = model.decode(mu, greedy=True, batch_size=batch_size)
    hits = sum(1 for i, s in zip(indices, decoded["smiles"]) if s == smiles[i])
    return hits / len(indices)


#: Files a run folder holds; ``--overwrite`` removes these (and only these) of the old run.
RUN_FILES = ("model.pt", "checkpoint.pt", "config.json", "history.csv", "rejected.csv", "training_curves.png",
             "report.html", "metrics.json")
LOCK_FILE = ".molvae.lock"


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``.molvae.lock``), so two processes never write
    one run. The kernel releases it when the process dies, so a killed run leaves no stale lock."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.path = run / LOCK_FILE
        self._fh = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; best effort
            return self
        while True:
            fh = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                raise RunFolderError(
                    f"{self.run}: another molvae process{f' (pid {holder})' if holder else ''} is writing this run "
                    "folder; wait for it to finish or train into another --out") from None
            except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
                fh.close()
                log.warning("%s: cannot lock the run folder on this file system (%s); make sure no other "
                            "molvae process writes it", self.run, exc.strerror or exc)
                return self
            try:  # the holder before us may have unlinked the file we opened: lock the one on disk
                same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        self._fh.close()
        self._fh = None


def _run_contents(run: Path) -> list[str]:
    """Names in ``run`` other than the lock and temp files of interrupted atomic writes."""
    try:
        return sorted(p.name for p in run.iterdir() if p.name != LOCK_FILE and not
                      (p.name.startswith(".") and p.name.endswith(".tmp")))
    except OSError:
        return []


def _claim_run_dir(out_dir: str | os.PathLike | None, runs_dir: str | os.PathLike,
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
    existing = _run_contents(run)
    if existing and not overwrite:
        lock.release()
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise RunFolderError(
            f"{run}: already holds a run ({shown}); pass --overwrite to replace it, --resume {run} to continue "
            "it, or choose another --out")
    return run, lock, created


def _clear_old_run(run: Path) -> None:
    """``--overwrite``: remove the old run's files just before the new run writes its first one, so the
    folder never mixes two runs (an old model.pt beside a new config.json)."""
    removed = []
    for name in RUN_FILES:
        if (run / name).is_file() or (run / name).is_symlink():
            (run / name).unlink()
            removed.append(name)
    _remove_stale_temp_files(run)
    if removed:
        log.info("%s: removed the previous run's %s", run, ", ".join(removed))
    left = _run_contents(run)
    if left:
        log.warning("%s: left untouched files that are not part of a molvae run: %s", run, ", ".join(left[:5]))


def _point_latest(run: Path, runs_dir: str | os.PathLike) -> None:
    """Point ``runs_dir/LATEST`` at ``run`` (when it lies in ``runs_dir``); called once ``run`` holds a model."""
    runs = Path(runs_dir)
    try:
        # A run folder that is a symlink inside runs_dir counts as one of its runs too.
        if run.absolute().parent == runs.absolute() or run.resolve().parent == runs.resolve():
            atomic_write(runs / LATEST_POINTER, lambda f: f.write(run.name.encode() + b"\n"))
    except OSError:
        log.warning("could not update %s", runs / LATEST_POINTER)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    state["python"] = [py[0], list(py[1]), py[2]]
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _all_finite(net: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


def _remove_stale_temp_files(run: Path) -> None:
    """Delete temp files of atomic writes that a killed process left in ``run``."""
    for name in RUN_FILES:
        for tmp in run.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                log.info("removed %s, left by an interrupted write", tmp)
            except OSError:
                pass


def _write_history(run: Path, history: list[dict[str, Any]]) -> None:
    if history:
        text = pd.DataFrame(history).to_csv(index=False)
        atomic_write(run / "history.csv", lambda f: f.write(text.encode()))


#: TrainConfig fields a resumed run may change: its length and how it runs, not what it learns.
RESUME_CHANGEABLE = ("epochs", "max_time_minutes", "early_stopping", "checkpoint_every", "num_threads", "device",
                     "amp", "cpu_amp", "show_progress", "max_bad_steps", "recon_eval_size")


def train(data: str | os.PathLike | pd.DataFrame | data_mod.PreparedData | None = None,
          out_dir: str | os.PathLike | None = None, *,
          model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          smiles_column: str | None = None, property_columns: tuple[str, ...] = (),
          runs_dir: str | os.PathLike = "runs", resume: str | os.PathLike | None = None,
          n_jobs: int = 1, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          use_cache: bool = True, resume_changes: dict[str, Any] | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train a SELFIES VAE and write a run folder.

    Args:
        data: a molecule file (any format :func:`molvae.data.read_molecules` reads), a
            table with an ``input`` column, or already :class:`PreparedData`.
        out_dir: run folder; default ``runs_dir/<timestamp>``, with ``runs_dir/LATEST`` updated.
        model_config, train_config: settings (defaults when ``None``).
        smiles_column: the SMILES column of a CSV when it is not found automatically.
        property_columns: CSV columns the property head learns (NaN/missing rows are masked).
        resume: a run folder with ``checkpoint.pt`` to continue; ``data`` may then be omitted.
            The run continues with its stored settings; ``model_config``/``train_config`` are not used.
        resume_changes: on resume, :class:`TrainConfig` fields to change for the rest of the run,
            limited to :data:`RESUME_CHANGEABLE` (how long and how it runs, not what it learns):
            e.g. ``{"max_time_minutes": 90, "epochs": 10}`` to extend a run that hit its limit.
        n_jobs: processes for preprocessing (0 = all cores).
        on_epoch: called with each epoch's history row.
        overwrite: replace the run in an ``out_dir`` that already holds one (its files are removed just
            before the new run writes its first file). Without it such a folder is refused: a run
            folder is created fresh, replaced on request, or continued with ``resume``.
        use_cache: reuse/store the preprocessed file in the cache (:mod:`molvae.cache`).

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) this runs DistributedDataParallel
    (see :mod:`molvae.distributed`): each rank trains on its own slice of every epoch's
    batches, rank 0 writes the run folder.

    The run folder is locked while training (``.molvae.lock``): a second process writing it fails
    at once. ``runs_dir/LATEST`` moves to a new run only once it holds a ``model.pt``.

    Raises:
        InvalidInputError: no molecule survives cleaning, or bad settings.
        RunFolderError: ``out_dir`` already holds a run (without ``overwrite``), or another process
            is writing it.
        TrainingInterrupted: Ctrl-C/SIGTERM (a checkpoint was written first).
        TrainingDiverged: ``max_bad_steps`` consecutive non-finite steps.
    """
    if resume is not None and overwrite:
        raise InvalidInputError("--resume continues a run and --overwrite replaces one; give only one of them")
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    lock: RunLock | None = None
    claimed: tuple[Path, bool] | None = None
    dist = None
    try:
        if resume is not None:
            # Under torchrun rank 0 alone writes (and locks) the folder.
            if Path(resume).is_dir() and os.environ.get("RANK", "0") == "0":
                lock = RunLock(Path(resume)).acquire()
            data, run, state, model_config, train_config, smiles_column, property_columns = _resume_state(
                resume, data, smiles_column, property_columns, resume_changes)
        else:
            run, state = None, None
        tc = train_config
        if data is None:
            raise InvalidInputError("no training data given")
        _seed_everything(tc.seed)
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        dist = init_from_env(tc.device)
        if run is None and dist.is_main:
            run, lock, created = _claim_run_dir(out_dir, runs_dir, overwrite)
            claimed = (run, created)
        return _train(data, out_dir, run, state, model_config, tc, smiles_column, property_columns, runs_dir,
                      n_jobs, on_epoch, use_cache, dist, overwrite=overwrite)
    except BaseException:
        if claimed is not None and claimed[1] and not _run_contents(claimed[0]):
            # The folder this call created got nothing (bad data, an early error): leave no trace.
            lock.release()
            lock = None
            try:
                claimed[0].rmdir()
            except OSError:
                pass
        raise
    finally:
        if lock is not None:
            lock.release()
        if dist is not None:
            dist.close()


def _resume_state(resume, data, smiles_column, property_columns, resume_changes):
    """Load a run's checkpoint and stored settings for ``train(resume=...)``."""
    run = Path(resume)
    ckpt_path = run / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise CheckpointError(f"{run}: no checkpoint.pt to resume from")
    state = load_checkpoint(ckpt_path)
    if not isinstance(state.get("training_state"), dict):
        raise CheckpointError(f"{ckpt_path}: has no training state to resume from")
    # Validates config, vocabulary and every weight's shape and finiteness before use.
    MolVAE.from_payload(state, ckpt_path)
    try:
        model_config = ModelConfig.from_dict(dict(state["model_config"]))
        train_config = TrainConfig.from_dict(dict(state["train_config"]))
    except Exception as exc:
        raise CheckpointError(f"{ckpt_path}: invalid stored configuration ({exc})") from None
    if resume_changes:
        bad = sorted(set(resume_changes) - set(RESUME_CHANGEABLE))
        if bad:
            raise InvalidInputError(
                f"cannot change {', '.join(bad)} when resuming (the run keeps what it learns with); "
                f"changeable: {', '.join(RESUME_CHANGEABLE)}")
        train_config = train_config.replace(**resume_changes)
        state["train_config"] = train_config.to_dict()
    ts = state["training_state"]
    _remove_stale_temp_files(run)
    if data is None:
        data = ts.get("data_path")
        if not data or not Path(data).exists():
            raise InvalidInputError(f"{run}: the training data {data!r} is gone; pass it again to resume")
    smiles_column = ts.get("smiles_column", smiles_column)
    property_columns = tuple(ts.get("property_columns") or property_columns)
    return data, run, state, model_config, train_config, smiles_column, property_columns


def _train(data, out_dir, run, state, model_config: ModelConfig, tc: TrainConfig, smiles_column,
           property_columns, runs_dir, n_jobs, on_epoch, use_cache: bool, dist: DistContext,
           overwrite: bool = False) -> TrainResult:
    ckpt_path = run / "checkpoint.pt" if run is not None and state is not None else None
    show_bar = progress_wanted(tc.show_progress)

    # ---------------------------------------------------------------- data
    data_path = None
    source_hash = None
    if isinstance(data, data_mod.PreparedData):
        prepared = data
        source_hash = prepared.source_hash
    else:
        if isinstance(data, pd.DataFrame):
            table = data
            if "input" not in table.columns:
                col = data_mod.find_smiles_column(list(table.columns), smiles_column, source="table")
                table = pd.DataFrame({"row": np.arange(1, len(table) + 1), "input": table[col].astype(str),
                                      **{c: table[c] for c in property_columns if c in table.columns}})
        else:
            table = None
            data_path = str(Path(data).resolve())
            # Files go through the preprocessing cache: a second run on the same file starts in seconds.
            from .cache import prepare_file

            if dist.enabled and not dist.is_main and use_cache:
                dist.barrier()  # rank 0 preprocesses and fills the cache; the others then load it
            prepared = prepare_file(data, smiles_column=smiles_column, largest_fragment=tc.largest_fragment,
                                    max_len=tc.max_len, property_columns=property_columns, n_jobs=n_jobs,
                                    show_progress=show_bar and dist.is_main, use_cache=use_cache)
            if dist.enabled and dist.is_main and use_cache:
                dist.barrier()
            source_hash = prepared.source_hash
        if table is not None:
            prepared = data_mod.prepare(table, largest_fragment=tc.largest_fragment, max_len=tc.max_len,
                                        property_columns=property_columns, n_jobs=n_jobs,
                                        show_progress=show_bar)
            prepared.source_hash = source_hash
    if len(prepared) == 0:
        rej = prepared.rejected
        first = f"row {rej['row'].iloc[0]}: {rej['reason'].iloc[0]}" if len(rej) else "none"
        raise InvalidInputError(
            f"{data if data_path else 'the training table'}: no molecule survived cleaning: "
            f"{prepared.n_input} rows read, {len(rej)} rejected (first: {first}); expected SMILES of molecules")
    log.info("%d molecules read, %d kept, %d rejected (%d duplicates)", prepared.n_input, len(prepared),
             len(prepared.rejected), prepared.n_duplicates)
    if len(prepared) < 2:
        # One molecule cannot be split into training and validation: the run trains on it alone, every
        # validation figure is NaN and model.pt is chosen by the training loss. Said loudly, not refused
        # (a corpus whose every other row is a salt still trains).
        log.warning(
            "%s: only %d distinct molecule remains after cleaning (%d rows read, %d duplicates, %d other rejects); "
            "a validation split needs at least 2, so there is no validation loss and model.pt is chosen by the "
            "training loss", data if data_path else "the training table", len(prepared), prepared.n_input,
            prepared.n_duplicates, len(prepared.rejected) - prepared.n_duplicates)

    if state is not None:
        vocab_saved = state["vocab"]
        if list(vocab_saved) != prepared.vocab.to_list() or state["training_state"].get("data_hash") != source_hash:
            raise CheckpointError(f"{run}: the training data changed since the checkpoint; cannot resume")
    vocab = prepared.vocab
    longest = int(prepared.tokens.lengths.max())
    if state is None:
        cap = (tc.max_len if tc.max_len else longest) + 1
        model_config = model_config.replace(max_len=max(cap, longest + 1),
                                            property_names=tuple(property_columns) or model_config.property_names)
    train_idx, val_idx = data_mod.split_indices(len(prepared), tc.val_fraction, tc.seed)
    if tc.val_fraction > 0 and len(val_idx) == 0:
        log.warning("only %d molecules: the validation split (val_fraction %g) is empty, so there is no "
                    "validation loss and model.pt is chosen by the training loss; use more molecules or a larger "
                    "--val-fraction", len(prepared), tc.val_fraction)
    elif 0 < len(val_idx) < 20:
        log.warning("only %d validation molecules: the validation loss that picks model.pt is noisy",
                    len(val_idx))
    prop_array = None
    if prepared.properties is not None and len(prepared.properties.columns):
        prop_array = prepared.properties.to_numpy(dtype=np.float32)
        # Standardize targets so the head's loss is on the scale of unit variance.
        mean = np.nanmean(prop_array[train_idx], axis=0)
        std = np.nanstd(prop_array[train_idx], axis=0)
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        prop_array = (prop_array - mean) / std
        property_stats = {"mean": mean.tolist(), "std": std.tolist()}
    else:
        property_stats = None

    # ---------------------------------------------------------------- run folder
    if state is None:
        run = dist.broadcast_object(run if dist.is_main else None)  # claimed (and locked) by train()
        if dist.is_main and overwrite:
            _clear_old_run(run)
    if dist.is_main and not (state is not None and (run / "rejected.csv").exists()):
        # Atomic like every file of the run: a kill mid-write must not leave a truncated list
        # that a resume would then keep.
        rejected_text = prepared.rejected.to_csv(index=False)
        atomic_write(run / "rejected.csv", lambda f: f.write(rejected_text.encode("utf-8")))

    device = resolve_device(tc.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    model = MolVAE.new(model_config, vocab, seed=tc.seed)
    net = model.net.to(device)
    use_amp = use_mixed_precision(tc, device)
    train_net = net  # what the training step calls: DDP and/or torch.compile wrap the same module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        train_net = torch.compile(train_net)
    optimizer = torch.optim.Adam(net.parameters(), lr=tc.learning_rate)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported()) \
        if device.type == "cuda" else None

    history: list[dict[str, Any]] = []
    start_epoch, start_batch, global_step = 0, 0, 0
    best_val, bad_epochs = math.inf, 0
    resumed_sums: dict[str, Any] | None = None
    resumed_bad = 0
    if state is not None:
        ts = state["training_state"]
        try:
            net.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(ts["optimizer"])
            if scaler is not None and ts.get("scaler"):
                scaler.load_state_dict(ts["scaler"])
            start_epoch, start_batch, global_step = int(ts["epoch"]), int(ts["batch"]), int(ts["global_step"])
            best_val, bad_epochs = float(ts["best_val"]), int(ts["bad_epochs"])
            history = list(state.get("history") or [])
            resumed_sums = ts.get("epoch_sums") if start_batch else None
            resumed_bad = int(ts.get("consecutive_bad") or 0)
            _set_rng_state(ts["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(
                f"{ckpt_path}: training state is incomplete or does not match the model "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"
            ) from None
        log.info("resuming %s at epoch %d, batch %d", run, start_epoch + 1, start_batch)

    metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_path": data_path,
        "data_hash": source_hash,
        "n_input": prepared.n_input,
        "n_molecules": len(prepared),
        "n_rejected": int(len(prepared.rejected)),
        "n_duplicates": prepared.n_duplicates,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "device": str(device),
        "property_stats": property_stats,
        "n_parameters": net.n_parameters(),
    }
    config_record = {"model": model_config.to_dict(), "train": tc.to_dict(), "data": data_path,
                     "smiles_column": smiles_column, "property_columns": list(property_columns),
                     "versions": versions(), "metadata": metadata}
    text = json.dumps(config_record, indent=2)
    if dist.is_main:
        atomic_write(run / "config.json", lambda f: f.write(text.encode()))
    if dist.enabled:
        # Different noise on every rank (the weights start equal: DDP broadcasts rank 0's).
        torch.manual_seed((tc.seed + 1_000_003 * global_step + 7919 * dist.rank) % (2**63))
        metadata["world_size"] = dist.world_size
    seen_log = _open_seen_log(dist.rank)

    def training_state(epoch: int, batch: int) -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "batch": batch, "global_step": global_step,
            "best_val": best_val, "bad_epochs": bad_epochs,
            "rng": _rng_state(), "data_path": data_path, "data_hash": source_hash,
            "smiles_column": smiles_column, "property_columns": list(property_columns),
            "consecutive_bad": consecutive_bad,
            # Running sums of the unfinished epoch, so a resumed epoch reports the same training loss.
            "epoch_sums": None if batch == 0 else {
                "recon": recon_acc_t.detach().cpu().clone(), "kl": kl_acc_t.detach().cpu().clone(),
                "loss": loss_acc_t.detach().cpu().clone(), "n": n_acc, "prop": sums["prop"],
                "skipped": sums["skipped"], "beta": beta},
        }

    def save_resumable(epoch: int, batch: int) -> None:
        if not dist.is_main:
            return
        if not _all_finite(net):
            # Never replace the last good checkpoint with broken weights.
            log.warning("weights hold NaN or infinite values: checkpoint not written, %s keeps the last good one",
                        run / "checkpoint.pt")
            return
        model.train_config, model.history, model.metadata = tc, history, metadata
        save_checkpoint(run / "checkpoint.pt", {**model.payload(), "training_state": training_state(epoch, batch)})

    # Ctrl-C and SIGTERM finish the current step, write a checkpoint and stop.
    stop = {"flag": False}

    def _handler(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        log.warning("interrupt received: saving a checkpoint after this step")

    old_handlers = {}
    if _in_main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, _handler)

    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    elapsed_before = float(history[-1]["elapsed_s"]) if history else 0.0
    consecutive_bad = resumed_bad
    pointed = False
    stopped_early = False
    time_up = False
    net.train()
    try:
        for epoch in range(start_epoch, tc.epochs):
            epoch_rng = np.random.default_rng([tc.seed, epoch])
            batches = data_mod.bucket_batches(prepared.tokens.lengths, train_idx, tc.batch_size, shuffle=True,
                                              rng=epoch_rng)
            if dist.enabled:
                batches = _shard_batches(batches, dist.rank, dist.world_size)
            first = start_batch if epoch == start_epoch else 0
            t_epoch = time.perf_counter()
            sums = {"recon": 0.0, "kl": 0.0, "loss": 0.0, "n": 0, "prop": 0.0, "skipped": 0}
            recon_acc_t = torch.zeros((), device=device)
            kl_acc_t = torch.zeros((), device=device)
            loss_acc_t = torch.zeros((), device=device)
            n_acc = 0
            bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       disable=not (show_bar and dist.is_main), leave=False, dynamic_ncols=True)
            beta = kl_weight_at(tc, epoch + first / len(batches))
            if first and resumed_sums is not None:
                recon_acc_t = resumed_sums["recon"].to(device)
                kl_acc_t = resumed_sums["kl"].to(device)
                loss_acc_t = resumed_sums["loss"].to(device)
                n_acc = int(resumed_sums["n"])
                sums["prop"], sums["skipped"] = float(resumed_sums["prop"]), int(resumed_sums["skipped"])
                beta = float(resumed_sums["beta"])
            for bi in range(first, len(batches)):
                idx = batches[bi]
                if seen_log is not None:
                    seen_log.write(" ".join(map(str, idx.tolist())) + "\n")
                b = prepared.tokens.batch(idx, vocab.eos_id, vocab.pad_id)
                if prop_array is not None:
                    b.properties = torch.from_numpy(prop_array[idx])
                if device.type == "cuda":
                    b = b.pin_memory()
                b = b.to(device, non_blocking=True)
                beta = kl_weight_at(tc, epoch + bi / len(batches))
                if tc.lr_schedule != "constant":
                    # Progress through the run: by epochs, or by the clock when --max-time ends it sooner.
                    progress = (epoch + bi / len(batches)) / tc.epochs
                    if tc.max_time_minutes:
                        progress = max(progress, (elapsed_before + time.perf_counter() - t_start)
                                       / (60 * tc.max_time_minutes))
                    if dist.enabled:  # every rank must use the same rate
                        progress = dist.all_reduce_sum([progress])[0] / dist.world_size
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate_at(tc, progress)
                with _autocast(device, use_amp):
                    out = train_net(b.tokens, b.lengths, sample=True, word_dropout=tc.word_dropout)
                recon = out.recon.mean()
                kl = kl_term(out, tc)
                loss = recon + beta * kl
                ploss = property_loss(out.properties, b.properties)
                if ploss is not None:
                    loss = loss + tc.property_weight * ploss
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
                if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                    consecutive_bad += 1
                    sums["skipped"] += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                                global_step, consecutive_bad)
                    if scaler is not None and scaler.is_enabled():
                        scaler.update()
                    if consecutive_bad >= tc.max_bad_steps:
                        raise TrainingDiverged(
                            f"{consecutive_bad} consecutive steps with a non-finite loss or gradient; "
                            f"stopped at epoch {epoch + 1}, the last good checkpoint is kept in {run}")
                else:
                    consecutive_bad = 0
                    if scaler is not None and scaler.is_enabled():
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    # Accumulate on the device; read back only for the progress bar and epoch end.
                    n = len(idx)
                    recon_acc_t += out.recon.detach().sum()
                    kl_acc_t += out.kl.detach().sum()
                    loss_acc_t += loss.detach() * n
                    n_acc += n
                    if ploss is not None:
                        sums["prop"] += float(ploss.detach()) * n
                global_step += 1
                bar.update(1)
                if show_bar and bi % 20 == 0 and n_acc:
                    bar.set_postfix(recon=f"{float(recon_acc_t) / n_acc:.2f}",
                                    kl=f"{float(kl_acc_t) / n_acc:.2f}", beta=f"{beta:.3f}")
                if tc.checkpoint_every and global_step % tc.checkpoint_every == 0:
                    save_resumable(epoch, bi + 1)
                over = bool(tc.max_time_minutes) and \
                    elapsed_before + time.perf_counter() - t_start > 60 * tc.max_time_minutes
                if dist.enabled:  # every rank must stop at the same step
                    over, stop["flag"] = (v > 0 for v in dist.all_reduce_sum([float(over), float(stop["flag"])]))
                if over:
                    time_up = bi + 1 < len(batches)
                    stop_at = bi + 1
                    log.info("time limit of %.1f minutes reached at epoch %d, step %d", tc.max_time_minutes,
                             epoch + 1, global_step)
                    break
                if stop["flag"]:
                    save_resumable(epoch, bi + 1)
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {global_step}; checkpoint saved, "
                        f"continue with: molvae train --resume {run}")
            bar.close()
            # An epoch whose every step was skipped has no training loss (NaN, not 0).
            if dist.enabled:  # sums over ranks: the epoch's loss over all molecules seen
                r_, k_, l_, n_, p_, s_ = dist.all_reduce_sum(
                    [float(recon_acc_t), float(kl_acc_t), float(loss_acc_t), n_acc, sums["prop"], sums["skipped"]])
                recon_acc_t, kl_acc_t, loss_acc_t = (torch.tensor(v) for v in (r_, k_, l_))
                n_acc, sums["prop"], sums["skipped"] = int(n_), p_, int(s_)
            n_tr = n_acc if n_acc else math.nan
            train_recon, train_kl = float(recon_acc_t) / n_tr, float(kl_acc_t) / n_tr
            train_loss = float(loss_acc_t) / n_tr
            # ---- validation (fp32: comparable across precisions; each rank a slice of it)
            val = _evaluate_distributed(net, prepared.tokens, val_idx, vocab, max(tc.batch_size, 256), device,
                                        tc.seed, dist)
            eval_idx = val_idx if len(val_idx) else train_idx
            sub = eval_idx[: tc.recon_eval_size]
            if dist.is_main:
                mu = latent_means(net, prepared.tokens, eval_idx[:5000], vocab, 512, device)
                recon_acc = reconstruction_accuracy(model, prepared.smiles, prepared.tokens, sub) \
                    if len(sub) else math.nan
            else:  # rank 0 alone decodes for reconstruction accuracy and active units
                mu, recon_acc = np.zeros((0, net.config.latent_dim), dtype=np.float32), math.nan
            net.train()
            row = {
                "epoch": epoch + 1, "step": global_step, "beta": beta,
                "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
                "val_recon": val["recon"], "val_kl": val["kl"], "val_nelbo": val["nelbo"],
                "val_loss": selection_loss(val["recon"], val["kl"], tc.kl_weight),
                "val_token_acc": val["token_acc"], "val_recon_acc": recon_acc,
                "active_units": active_units(mu), "skipped_steps": sums["skipped"],
                "epoch_time_s": time.perf_counter() - t_epoch,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            }
            if prop_array is not None:
                row["train_property_mse"] = sums["prop"] / n_tr
            history.append(row)
            log.info("epoch %d: recon %.3f kl %.3f beta %.3f | val nelbo %.3f recon_acc %.3f AU %d",
                     epoch + 1, train_recon, train_kl, beta, val["nelbo"], recon_acc, row["active_units"])
            if on_epoch and dist.is_main:
                on_epoch(row)
            # The validation loss at the target β (see selection_loss): one scale for every epoch,
            # also during warm-up, and the true -ELBO when β_max = 1.
            score = row["val_loss"] if math.isfinite(row["val_loss"]) else train_loss
            if score < best_val and _all_finite(net):
                best_val, bad_epochs = score, 0
                model.train_config, model.history, model.metadata = tc, history, metadata
                if dist.is_main:
                    model.save(run / "model.pt")
                    if not pointed:  # LATEST names runs that hold a model, only
                        _point_latest(run, runs_dir)
                        pointed = True
            else:
                bad_epochs += 1
            if dist.is_main:
                _write_history(run, history)
            if time_up:
                save_resumable(epoch, stop_at)
                stopped_early = True
                break
            save_resumable(epoch + 1, 0)
            if stop["flag"]:  # Ctrl-C during validation: the epoch-end checkpoint is already written
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch + 1}, step {global_step}; checkpoint saved, "
                    f"continue with: molvae train --resume {run}")
            if tc.max_time_minutes and elapsed_before + time.perf_counter() - t_start > 60 * tc.max_time_minutes:
                stopped_early = True
                break
            if tc.early_stopping and bad_epochs >= tc.early_stopping:
                log.info("early stopping: no validation improvement in %d epochs", bad_epochs)
                stopped_early = True
                break
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)

    if seen_log is not None:
        seen_log.close()
    metadata["train_time_s"] = history[-1]["elapsed_s"] if history else 0.0
    if dist.is_main:
        best = MolVAE.from_payload(load_checkpoint(run / "model.pt"), run / "model.pt")
        # Record the full history in the best model as well, so the file alone tells the story.
        best.history, best.metadata = history, {**best.metadata, **metadata}
        best.save(run / "model.pt")
        if not pointed:
            _point_latest(run, runs_dir)
        _write_history(run, history)
        _plot_curves(run, history)
    dist.barrier()
    if not dist.is_main:
        best = MolVAE.from_payload(load_checkpoint(run / "model.pt"), run / "model.pt")
    return TrainResult(run_dir=run, model=best.to(device), history=history, prepared=prepared,
                       stopped_early=stopped_early)


def _shard_batches(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's batches: ``rank, rank + world_size, ...``, the same number on every rank."""
    if not batches:
        return []
    n = max(1, len(batches) // world_size)
    picked = batches[rank::world_size][:n]
    return picked if len(picked) == n else [batches[rank % len(batches)]]


def _evaluate_distributed(net: VAE, tokens: data_mod.TokenData, indices: np.ndarray, vocab, batch_size: int,
                          device: torch.device, seed: int, dist: DistContext) -> dict[str, float]:
    """:func:`evaluate_loss` with each rank taking a slice of ``indices``, combined over ranks."""
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


def _open_seen_log(rank: int):
    """Test hook: with ``MOLVAE_DEBUG_SEEN_DIR`` set, each rank logs the molecule indices of its batches."""
    folder = os.environ.get("MOLVAE_DEBUG_SEEN_DIR")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"seen.rank{rank}.txt", "a", encoding="utf-8")


def _plot_curves(run: Path, history: list[dict[str, Any]]) -> None:
    """Write ``training_curves.png`` when matplotlib (the ``plots`` extra) is installed; never fails the run."""
    if not history:
        return
    try:
        from .plots import have_matplotlib, training_curves

        if have_matplotlib():
            training_curves(history, run / "training_curves.png", title=f"Training curves: {run.name}")
    except Exception as exc:  # a plot must never cost a trained model
        log.warning("could not draw the training curves (%s)", exc)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
