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

:func:`train` is the one entry point; the parts live in :mod:`molvae.training`:
``inputs`` (data preparation and split), ``run_folder`` (lock, claim, LATEST, history),
``schedules`` (β, learning rate, loss terms), ``state`` (:class:`TrainState`, the resumable state)
and ``trainer`` (:class:`Trainer`: epochs, steps, validation, checkpoints). The figures measured
on the way are :mod:`molvae.diagnostics`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import data as data_mod
from ._version import versions
from .checkpoint import atomic_write, load_checkpoint
from .config import ModelConfig, TrainConfig, progress_wanted, resume_changeable
from .core import MolVAE, resolve_device
from .diagnostics import (active_units, best_epoch, evaluate_loss, greedy_reconstruction_rate,
                          latent_means, selection_loss)
from .distributed import DistContext, init_from_env
from .errors import CheckpointError, InvalidInputError
from .training.finetune import (BaseModel, finetune_config, head_targets, load_base, refit_prior, restandardize,
                                start_from_base)
from .training.inputs import TrainingData, load_training_data
from .training.run_folder import RUN_FILES, RunLock, claim_run_dir, clear_old_run, remove_stale_temp_files, \
    run_contents
from .training.schedules import kl_term, kl_weight_at, learning_rate_at, property_loss, use_mixed_precision
from .training.state import TrainState
from .training.trainer import Trainer, TrainingDiverged, TrainingInterrupted
from .vocab import Vocabulary

__all__ = ["train", "TrainResult", "Trainer", "TrainState", "kl_weight_at", "learning_rate_at", "selection_loss",
           "best_epoch", "evaluate_loss", "greedy_reconstruction_rate", "latent_means", "active_units",
           "TrainingInterrupted", "TrainingDiverged", "RunLock", "RUN_FILES", "RESUME_CHANGEABLE",
           "use_mixed_precision", "kl_term", "property_loss"]

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: MolVAE
    history: list[dict[str, Any]]
    prepared: data_mod.PreparedData | None = None
    stopped_early: bool = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


#: TrainConfig fields a resumed run may change: its length and how it runs, not what it learns
#: (marked ``on_resume`` in :mod:`molvae.config`).
RESUME_CHANGEABLE = resume_changeable()


def train(data: str | os.PathLike | pd.DataFrame | data_mod.PreparedData | None = None,
          out_dir: str | os.PathLike | None = None, *,
          model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          smiles_column: str | None = None, property_columns: tuple[str, ...] = (),
          runs_dir: str | os.PathLike = "runs", resume: str | os.PathLike | None = None,
          n_jobs: int = 1, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          use_cache: bool = True, resume_changes: dict[str, Any] | None = None,
          overwrite: bool = False, base: str | os.PathLike | MolVAE | None = None) -> TrainResult:
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
        base: fine-tune: start from this model (a shipped name, run folder, model file or a loaded
            :class:`MolVAE` read from a file) instead of a random network. Its sizes are used
            (``model_config`` is not), tokens ``data`` needs and it lacks are added, and
            ``train_config=None`` means :func:`molvae.training.finetune.finetune_config` (settings for a
            few hundred molecules). Without ``property_columns`` a head whose targets RDKit computes is
            kept and fine-tuned. A fitted prior of the base is refitted to the new molecules. The model
            files and ``config.json`` record the base (name, SHA-256, tokens added).

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
    if resume is not None and base is not None:
        raise InvalidInputError("--resume continues a run (a fine-tuned one keeps its base); drop --from")
    if base is not None:
        base = load_base(base)
        train_config = train_config or finetune_config(base)
        property_columns = head_targets(base, tuple(property_columns))
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
        resolve_device(tc.device)  # a device that cannot be used fails now, not after preprocessing
        _seed_everything(tc.seed)
        if tc.num_threads:
            from .workers import available_cpus

            if tc.num_threads > available_cpus():
                log.warning("num_threads %d: %d core(s) available; using %d", tc.num_threads, available_cpus(),
                            available_cpus())
            torch.set_num_threads(min(tc.num_threads, available_cpus()))
        dist = init_from_env(tc.device)
        if run is None and dist.is_main:
            run, lock, created = claim_run_dir(out_dir, runs_dir, overwrite)
            claimed = (run, created)
        return _train(data, run, state, model_config, tc, smiles_column=smiles_column,
                      property_columns=property_columns, runs_dir=runs_dir, n_jobs=n_jobs, on_epoch=on_epoch,
                      use_cache=use_cache, dist=dist, overwrite=overwrite, base=base)
    except BaseException:
        if claimed is not None and claimed[1] and not run_contents(claimed[0]):
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
        raise CheckpointError(f"{ckpt_path}: invalid stored configuration ({exc})") from exc
    if resume_changes:
        bad = sorted(set(resume_changes) - set(RESUME_CHANGEABLE))
        if bad:
            raise InvalidInputError(
                f"cannot change {', '.join(bad)} when resuming (the run keeps what it learns with); "
                f"changeable: {', '.join(RESUME_CHANGEABLE)}")
        train_config = train_config.replace(**resume_changes)
        state["train_config"] = train_config.to_dict()
    ts = state["training_state"]
    remove_stale_temp_files(run)
    if data is None:
        data = ts.get("data_path")
        if not data or not Path(data).exists():
            raise InvalidInputError(f"{run}: the training data {data!r} is gone; pass it again to resume")
    smiles_column = ts.get("smiles_column", smiles_column)
    property_columns = tuple(ts.get("property_columns") or property_columns)
    return data, run, state, model_config, train_config, smiles_column, property_columns


def _resume_in_base_vocabulary(td: TrainingData, state: dict[str, Any], run: Path) -> None:
    """A resumed fine-tuning run: the data in the checkpoint's (extended) vocabulary, the property targets
    scaled as when the run started."""
    try:
        td.prepared = td.prepared.with_vocabulary(Vocabulary.from_list(state["vocab"]))
    except InvalidInputError as exc:
        raise CheckpointError(f"{run}: the training data changed since the checkpoint; cannot resume ({exc})") \
            from exc
    stats = (state.get("metadata") or {}).get("property_stats")
    if stats and td.prop_array is not None:
        restandardize(td, stats)


def _prepare_run_folder(run: Path | None, state: dict[str, Any] | None, td: TrainingData, dist: DistContext,
                        overwrite: bool) -> Path:
    """The run folder on every rank; on rank 0 the old run cleared (``overwrite``) and ``rejected.csv`` written."""
    if state is None:
        run = dist.broadcast_object(run if dist.is_main else None)  # claimed (and locked) by train()
        if dist.is_main and overwrite:
            clear_old_run(run)
    if dist.is_main and not (state is not None and (run / "rejected.csv").exists()):
        # Atomic like every file of the run: a kill mid-write must not leave a truncated list
        # that a resume would then keep.
        rejected_text = td.prepared.rejected.to_csv(index=False)
        atomic_write(run / "rejected.csv", lambda f: f.write(rejected_text.encode("utf-8")))
    return run


def _run_metadata(td: TrainingData, device: torch.device, net, state: dict[str, Any] | None,
                  base_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts about the run stored in its model files; a resumed run keeps the time it was first created."""
    created = (state.get("metadata") or {}).get("created") if state is not None else None
    prepared = td.prepared
    return {
        **({"base": base_record} if base_record else {}),
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_path": td.data_path,
        "data_hash": td.source_hash,
        "n_input": prepared.n_input,
        "n_molecules": len(prepared),
        "n_rejected": int(len(prepared.rejected)),
        "n_duplicates": prepared.n_duplicates,
        "n_train": int(len(td.train_idx)),
        "n_val": int(len(td.val_idx)),
        "device": str(device),
        "property_stats": td.property_stats,
        "n_parameters": net.n_parameters(),
    }


def _write_config_record(run: Path, model_config: ModelConfig, tc: TrainConfig, td: TrainingData,
                         metadata: dict[str, Any]) -> None:
    record = {"model": model_config.to_dict(), "train": tc.to_dict(), "data": td.data_path,
              "smiles_column": td.smiles_column, "property_columns": list(td.property_columns),
              "versions": versions(), "metadata": metadata}
    text = json.dumps(record, indent=2)
    atomic_write(run / "config.json", lambda f: f.write(text.encode()))


def _train(data, run: Path | None, state: dict[str, Any] | None, model_config: ModelConfig, tc: TrainConfig, *,
           smiles_column, property_columns, runs_dir, n_jobs: int, on_epoch, use_cache: bool, dist: DistContext,
           overwrite: bool = False, base: BaseModel | None = None) -> TrainResult:
    """Prepare the data and the run folder, build (or restore) the :class:`Trainer` and run it."""
    show_bar = progress_wanted(tc.show_progress)
    td = load_training_data(data, tc, smiles_column=smiles_column, property_columns=tuple(property_columns),
                            n_jobs=n_jobs, use_cache=use_cache, dist=dist, show_bar=show_bar)
    base_record = (state.get("metadata") or {}).get("base") if state is not None else None
    if state is not None:
        if base_record:  # a fine-tuning run trains in its base's extended vocabulary
            _resume_in_base_vocabulary(td, state, run)
        if list(state["vocab"]) != td.prepared.vocab.to_list() or \
                state["training_state"].get("data_hash") != td.source_hash:
            raise CheckpointError(f"{run}: the training data changed since the checkpoint; cannot resume")
        model = MolVAE.new(model_config, td.prepared.vocab, seed=tc.seed)
    elif base is not None:
        model, base_record = start_from_base(base, td, tc)
        model_config = model.config
    else:
        longest = int(td.prepared.tokens.lengths.max())
        cap = (tc.max_selfies_tokens if tc.max_selfies_tokens else longest) + 1
        model_config = model_config.replace(max_len=max(cap, longest + 1),
                                            property_names=tuple(property_columns) or model_config.property_names)
        model = MolVAE.new(model_config, td.prepared.vocab, seed=tc.seed)
    run = _prepare_run_folder(run, state, td, dist, overwrite)
    device = resolve_device(tc.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    metadata = _run_metadata(td, device, model.net, state, base_record)
    trainer = Trainer(model, tc, td, run, dist, device, runs_dir=runs_dir, metadata=metadata, on_epoch=on_epoch,
                      show_bar=show_bar)
    if state is not None:
        trainer.restore(state, run / "checkpoint.pt")
    if dist.is_main:
        _write_config_record(run, model_config, tc, td, metadata)
    if dist.enabled:
        # Different noise on every rank (the weights start equal: DDP broadcasts rank 0's).
        torch.manual_seed((tc.seed + 1_000_003 * trainer.state.global_step + 7919 * dist.rank) % (2**63))
        metadata["world_size"] = dist.world_size
    stopped_early = trainer.fit()
    best = trainer.finish()
    if base_record and base_record.get("prior") and dist.is_main:
        train_smiles = [td.prepared.smiles[i] for i in td.train_idx]
        refit_prior(best, train_smiles, base_record["prior"], tc.seed)
        best.save(run / "model.pt")
    return TrainResult(run_dir=run, model=best, history=trainer.history, prepared=td.prepared,
                       stopped_early=stopped_early)
