"""What a run trains on: the cleaned molecules, their split and the standardized property targets.

Data preparation happens here, before the :class:`~molvae.training.trainer.Trainer` exists: a file goes
through the preprocessing cache (:mod:`molvae.cache`), a table through :func:`molvae.data.prepare`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import data as data_mod
from ..config import TrainConfig
from ..distributed import DistContext
from ..errors import InvalidInputError

__all__ = ["TrainingData", "load_training_data"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The prepared molecules and how the run uses them.

    ``prop_array`` holds the property targets standardized on the training split (``None`` without a
    property head), ``property_stats`` the mean and standard deviation that undo it.
    """

    prepared: data_mod.PreparedData
    data_path: str | None
    source_hash: str | None
    train_idx: np.ndarray
    val_idx: np.ndarray
    prop_array: np.ndarray | None = None
    property_stats: dict[str, Any] | None = None
    smiles_column: str | None = None
    property_columns: tuple[str, ...] = ()


def _read(data, tc: TrainConfig, smiles_column, property_columns, n_jobs: int, use_cache: bool,
          dist: DistContext, show_bar: bool) -> tuple[data_mod.PreparedData, str | None, str | None]:
    """``(prepared, data_path, source_hash)`` of ``data``: a file, a table or already prepared data."""
    if isinstance(data, data_mod.PreparedData):
        return data, None, data.source_hash
    if isinstance(data, pd.DataFrame):
        table = data
        if "input" not in table.columns:
            col = data_mod.find_smiles_column(list(table.columns), smiles_column, source="table")
            table = pd.DataFrame({"row": np.arange(1, len(table) + 1), "input": table[col].astype(str),
                                  **{c: table[c] for c in property_columns if c in table.columns}})
        prepared = data_mod.prepare(table, largest_fragment=tc.largest_fragment, max_len=tc.max_selfies_tokens,
                                    property_columns=property_columns, n_jobs=n_jobs, show_progress=show_bar)
        prepared.source_hash = None
        return prepared, None, None
    data_path = str(Path(data).resolve())
    # Files go through the preprocessing cache: a second run on the same file starts in seconds.
    from ..cache import prepare_file

    if dist.enabled and not dist.is_main and use_cache:
        dist.barrier()  # rank 0 preprocesses and fills the cache; the others then load it
    prepared = prepare_file(data, smiles_column=smiles_column, largest_fragment=tc.largest_fragment,
                            max_len=tc.max_selfies_tokens, property_columns=property_columns, n_jobs=n_jobs,
                            show_progress=show_bar and dist.is_main, use_cache=use_cache)
    if dist.enabled and dist.is_main and use_cache:
        dist.barrier()
    return prepared, data_path, prepared.source_hash


def _check_kept(prepared: data_mod.PreparedData, label: str) -> None:
    """Refuse data of which nothing survived cleaning; warn when one molecule is left."""
    if len(prepared) == 0:
        rej = prepared.rejected
        first = f"row {rej['row'].iloc[0]}: {rej['reason'].iloc[0]}" if len(rej) else "none"
        raise InvalidInputError(
            f"{label}: no molecule survived cleaning: "
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
            "training loss", label, len(prepared), prepared.n_input,
            prepared.n_duplicates, len(prepared.rejected) - prepared.n_duplicates)


def _split(n: int, tc: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    train_idx, val_idx = data_mod.split_indices(n, tc.val_fraction, tc.seed)
    if len(val_idx) > len(train_idx) and n >= 2:
        log.warning("val_fraction %g leaves %d of %d molecules to train on (%d validate); use a smaller "
                    "--val-fraction", tc.val_fraction, len(train_idx), n, len(val_idx))
    if tc.val_fraction > 0 and len(val_idx) == 0:
        log.warning("only %d molecules: the validation split (val_fraction %g) is empty, so there is no "
                    "validation loss and model.pt is chosen by the training loss; use more molecules or a larger "
                    "--val-fraction", n, tc.val_fraction)
    elif 0 < len(val_idx) < 20:
        log.warning("only %d validation molecules: the validation loss that picks model.pt is noisy",
                    len(val_idx))
    return train_idx, val_idx


def _standardized_properties(prepared: data_mod.PreparedData, train_idx: np.ndarray
                             ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Property targets scaled to unit variance on the training split, so the head's loss has one scale."""
    if prepared.properties is None or not len(prepared.properties.columns):
        return None, None
    prop_array = prepared.properties.to_numpy(dtype=np.float32)
    mean = np.nanmean(prop_array[train_idx], axis=0)
    std = np.nanstd(prop_array[train_idx], axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return (prop_array - mean) / std, {"mean": mean.tolist(), "std": std.tolist()}


def load_training_data(data, tc: TrainConfig, *, smiles_column: str | None, property_columns: tuple[str, ...],
                       n_jobs: int, use_cache: bool, dist: DistContext, show_bar: bool) -> TrainingData:
    """Read and clean ``data``, split it and standardize its property targets.

    Raises:
        InvalidInputError: no molecule survives cleaning.
    """
    prepared, data_path, source_hash = _read(data, tc, smiles_column, property_columns, n_jobs, use_cache, dist,
                                             show_bar)
    _check_kept(prepared, data if data_path else "the training table")
    train_idx, val_idx = _split(len(prepared), tc)
    prop_array, property_stats = _standardized_properties(prepared, train_idx)
    return TrainingData(prepared, data_path, source_hash, train_idx, val_idx, prop_array, property_stats,
                        smiles_column, tuple(property_columns))
