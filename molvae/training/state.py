"""The resumable state of a run in one place: :class:`TrainState` is ``checkpoint.pt``'s ``training_state``.

``TrainState.to_dict()`` gives the plain dict stored in the checkpoint (only tensors, numbers, strings,
lists and dicts, so ``torch.load(weights_only=True)`` reads it) and ``TrainState.from_dict`` reads it
back; the keys are those every molvae version since resumable checkpoints has written, so a checkpoint of
an older run resumes. With the network's ``state_dict`` and the history (stored beside it in the same
file) it is everything a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["EpochSums", "TrainState", "capture_rng", "restore_rng"]


@dataclass
class EpochSums:
    """Running sums of the unfinished epoch, so that a resumed epoch reports the same training loss.

    The three loss sums stay on the training device (read back only for the progress bar and at the
    end of the epoch); ``beta`` is the β of the last step.
    """

    recon: torch.Tensor
    kl: torch.Tensor
    loss: torch.Tensor
    n: int = 0
    prop: float = 0.0
    skipped: int = 0
    beta: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device, beta: float = 0.0) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device), torch.zeros((), device=device),
                   beta=beta)

    def to_dict(self) -> dict[str, Any]:
        return {"recon": self.recon.detach().cpu().clone(), "kl": self.kl.detach().cpu().clone(),
                "loss": self.loss.detach().cpu().clone(), "n": self.n, "prop": self.prop,
                "skipped": self.skipped, "beta": self.beta}

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device) -> EpochSums:
        return cls(data["recon"].to(device), data["kl"].to(device), data["loss"].to(device), n=int(data["n"]),
                   prop=float(data["prop"]), skipped=int(data["skipped"]), beta=float(data["beta"]))


@dataclass
class TrainState:
    """Where a run is and what it has decided so far.

    ``epoch``/``batch`` is the position a resumed run starts at (``batch`` steps of epoch ``epoch``
    already taken); ``best_val``/``bad_epochs`` drive model selection and early stopping;
    ``consecutive_bad`` counts non-finite steps in a row; ``data_*``, ``smiles_column`` and
    ``property_columns`` say what the run trains on. ``optimizer``, ``scaler`` and ``rng`` are the
    state dicts of Adam, the gradient scaler and the random generators when the state was taken.
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    consecutive_bad: int = 0
    epoch_sums: EpochSums | None = None
    data_path: str | None = None
    data_hash: str | None = None
    smiles_column: str | None = None
    property_columns: tuple[str, ...] = ()
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``training_state`` (key order as written since the first resumable format)."""
        return {
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
            "best_val": self.best_val, "bad_epochs": self.bad_epochs,
            "rng": self.rng, "data_path": self.data_path, "data_hash": self.data_hash,
            "smiles_column": self.smiles_column, "property_columns": list(self.property_columns),
            "consecutive_bad": self.consecutive_bad,
            "epoch_sums": None if self.batch == 0 or self.epoch_sums is None else self.epoch_sums.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device | None = None) -> TrainState:
        """Read a checkpoint's ``training_state``.

        Raises:
            KeyError, TypeError, ValueError: a required entry is missing or malformed (the caller names the file).
        """
        batch = int(data["batch"])
        sums = data.get("epoch_sums") if batch else None
        return cls(
            epoch=int(data["epoch"]), batch=batch, global_step=int(data["global_step"]),
            best_val=float(data["best_val"]), bad_epochs=int(data["bad_epochs"]),
            consecutive_bad=int(data.get("consecutive_bad") or 0),
            epoch_sums=EpochSums.from_dict(sums, device or torch.device("cpu")) if sums is not None else None,
            data_path=data.get("data_path"), data_hash=data.get("data_hash"),
            smiles_column=data.get("smiles_column"), property_columns=tuple(data.get("property_columns") or ()),
            optimizer=data["optimizer"], scaler=data.get("scaler"), rng=data["rng"],
        )


def capture_rng() -> dict[str, Any]:
    """The state of torch's (CPU and CUDA), Python's and numpy's global generators, as plain data."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    state["python"] = [py[0], list(py[1]), py[2]]
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global generators to a :func:`capture_rng` state."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
