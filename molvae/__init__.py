"""molvae: a SELFIES GRU variational autoencoder for molecular generative design."""

from __future__ import annotations

import os as _os
import sys as _sys

# OpenMP threads that wait at a barrier spin for a while before they sleep (libgomp's default,
# GOMP_SPINCOUNT 300,000). When another process keeps a core busy, a spinning thread takes the
# CPU from the thread it waits for: an epoch of 200 molecules took 46 s with torch's 2 threads
# against 1 s with one thread, and 2 s with passive waiting (benchmarks/bench_busy_machine.py).
# The OpenMP runtime reads this once, when torch loads it, so it is set here, before molvae
# imports torch, and only when the user has not chosen a policy. It changes no result, only how
# idle threads wait. Importing torch before molvae keeps OpenMP's default.
OMP_POLICY_SET_BY_MOLVAE = "torch" not in _sys.modules and "OMP_WAIT_POLICY" not in _os.environ
if OMP_POLICY_SET_BY_MOLVAE:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ._version import __version__  # noqa: E402
from .config import Decoding, ModelConfig, TrainConfig  # noqa: E402
from .core import MolVAE  # noqa: E402
from .errors import CheckpointError, InvalidInputError, MolvaeError, VocabularyError  # noqa: E402
from .train import train  # noqa: E402
from .training.finetune import finetune_config  # noqa: E402
from .vocab import Vocabulary  # noqa: E402

__all__ = [
    "__version__",
    "MolVAE",
    "ModelConfig",
    "TrainConfig",
    "Decoding",
    "Vocabulary",
    "train",
    "finetune_config",
    "MolvaeError",
    "InvalidInputError",
    "VocabularyError",
    "CheckpointError",
]
