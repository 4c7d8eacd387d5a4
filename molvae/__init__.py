"""molvae: a SELFIES GRU variational autoencoder for molecular generative design."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ModelConfig, TrainConfig  # noqa: E402
from .core import MolVAE  # noqa: E402
from .errors import CheckpointError, InvalidInputError, MolvaeError, VocabularyError  # noqa: E402
from .train import train  # noqa: E402
from .vocab import Vocabulary  # noqa: E402

__all__ = [
    "__version__",
    "MolVAE",
    "ModelConfig",
    "TrainConfig",
    "Vocabulary",
    "train",
    "MolvaeError",
    "InvalidInputError",
    "VocabularyError",
    "CheckpointError",
]
