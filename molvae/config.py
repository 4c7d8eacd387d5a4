"""Configuration as frozen dataclasses with defaults in one place.

Both configs are stored in every model file. ``from_dict`` rejects unknown keys so a
typo in a config file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import InvalidInputError

__all__ = ["ModelConfig", "TrainConfig", "load_config_file", "KL_SCHEDULES", "ConfigError", "progress_wanted"]

T = TypeVar("T")

KL_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")
LR_SCHEDULES = ("constant", "cosine")


class ConfigError(InvalidInputError):
    """A config field has the wrong type or is out of range; ``key`` names the field."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def progress_wanted(flag: bool | None) -> bool:
    """The one rule for progress bars: ``flag`` when given, else a bar only when stderr is a terminal
    (a log file or a pipe gets no carriage-return noise)."""
    if flag is not None:
        return bool(flag)
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# Field rules: (kind, low, high, low_open, high_open, optional). kind: int | float | bool | str.
# ``low_open`` means ``value > low`` instead of ``>=``; every float must also be finite.
_Rule = tuple


def _describe(kind: str, low, high, low_open: bool, high_open: bool) -> str:
    if kind == "int" and low == 1 and high is None and not low_open:
        return "a positive integer"
    what = "an integer" if kind == "int" else "a number"
    fmt = "d" if kind == "int" else "g"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:{fmt}}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:{fmt}}")
    return what + (" " + " and ".join(parts) if parts else "")


def _check_fields(obj: Any, rules: dict[str, _Rule]) -> None:
    """Check (and for floats normalize to ``float``) every field named in ``rules``.

    Raises:
        ConfigError: one line naming the class, the key, what was expected and what was given.
    """
    cls = type(obj).__name__
    for name, (kind, low, high, low_open, high_open, optional) in rules.items():
        value = getattr(obj, name)
        where = f"{cls}.{name}"
        if value is None:
            if optional:
                continue
            expected = _describe(kind, low, high, low_open, high_open) if kind in ("int", "float") else f"a {kind}"
            raise ConfigError(f"{where} must be {expected}, got None", name)
        got = f"{value!r} ({type(value).__name__})" if isinstance(value, (str, bool)) else repr(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {got}", name)
            continue
        if kind == "str":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} must be a non-empty string, got {got}", name)
            continue
        expected = _describe(kind, low, high, low_open, high_open)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                (kind == "int" and not isinstance(value, numbers.Integral)):
            raise ConfigError(f"{where} must be {expected}, got {got}", name)
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} must be {expected} (finite), got {value!r}", name)
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            raise ConfigError(f"{where} must be {expected}, got {value!r}", name)
        object.__setattr__(obj, name, int(value) if kind == "int" else float(value))


class _ConfigMixin:
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[arg-type]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidInputError(
                f"unknown {cls.__name__} key(s) {unknown}; expected some of {sorted(names)}")
        kwargs = {}
        for k, v in data.items():
            if isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelConfig(_ConfigMixin):
    """Sizes of the VAE.

    The defaults (≈1.1M parameters with a 40-token SELFIES vocabulary) train in a few
    minutes on two CPU cores on a few thousand molecules and are large enough for
    MOSES; the MOSES VAE's own architecture is ``hidden_dim=256, bidirectional=False,
    decoder_hidden_dim=512, decoder_layers=3, latent_dim=128``.

    Why these sizes (measured with ``benchmarks/bench_train.py``, single-core CPU time):
    the default's step costs ~1/4 of the MOSES architecture's per molecule (one
    384-wide decoder layer instead of three 512-wide ones), and with the padded GRU
    path, bf16 autocast and batch 256 (:class:`TrainConfig`) it trains at ~410
    molecules/s per core against ~150 for the MOSES architecture under the same
    implementation. The sizes were kept (not shrunk further) so that models trained
    before stay loadable with the same defaults and because the smaller candidates
    measured (encoder 128, decoder 256) gain under 1.5× speed.
    """

    embedding_dim: int = 64
    hidden_dim: int = 256            # encoder GRU hidden size (per direction)
    encoder_layers: int = 1
    bidirectional: bool = True
    decoder_hidden_dim: int = 384
    decoder_layers: int = 1
    latent_dim: int = 64
    dropout: float = 0.0             # between stacked GRU layers
    property_names: tuple[str, ...] = ()   # targets of the optional property head
    property_hidden_dim: int = 64
    max_len: int = 128               # longest decoded sequence in tokens (set from the data at training)

    def __post_init__(self) -> None:
        _check_fields(self, _MODEL_RULES)
        names = self.property_names
        if isinstance(names, list):
            object.__setattr__(self, "property_names", names := tuple(names))
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"ModelConfig.property_names must be a list of names, got {names!r}", "property_names")


@dataclass(frozen=True)
class TrainConfig(_ConfigMixin):
    """Everything about one training run except the model's sizes."""

    epochs: int = 30
    batch_size: int = 256            # per process under torchrun; 256 keeps CPU matrix products efficient
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"    # constant | cosine (to lr_final_ratio·lr over the run's epochs or --max-time)
    lr_final_ratio: float = 0.1      # cosine: the learning rate at the end of the run, relative to learning_rate
    seed: int = 0
    val_fraction: float = 0.1
    max_len: int | None = None       # SELFIES tokens; longer molecules are rejected
    largest_fragment: bool = True
    kl_schedule: str = "linear"      # constant | linear | sigmoid | cyclical
    kl_weight: float = 1.0           # β_max
    kl_warmup_epochs: float = 10.0   # linear/sigmoid: epochs to reach β_max; cyclical: epochs per cycle
    kl_cycle_ratio: float = 0.5      # cyclical: fraction of each cycle spent increasing β (Fu et al. 2019)
    free_bits: float = 0.0           # per-dimension KL floor in nats
    word_dropout: float = 0.0        # probability of replacing a decoder input token by <unk>
    grad_clip: float = 5.0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: bool = True                 # mixed precision on CUDA (bf16, or fp16 with a grad scaler)
    cpu_amp: bool | None = None      # bf16 autocast on the CPU (None = with AMX, or AMD with AVX-512 BF16)
    compile: bool = False            # torch.compile the training step's model
    early_stopping: int | None = None  # patience in epochs on validation ELBO
    checkpoint_every: int = 0        # steps between resumable checkpoints (0 = each epoch only)
    recon_eval_size: int = 500       # validation molecules decoded for reconstruction accuracy
    property_weight: float = 1.0     # weight of the property head's loss
    num_threads: int | None = None   # CPU threads for torch (None = torch's default)
    max_time_minutes: float | None = None  # stop (after validating and saving) once training took this long
    max_bad_steps: int = 20          # consecutive non-finite steps before the run stops
    show_progress: bool | None = None  # progress bar on stderr (None: only when stderr is a terminal)
    extra: dict = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self) -> None:
        if self.kl_schedule not in KL_SCHEDULES:
            raise ConfigError(f"TrainConfig.kl_schedule must be one of {KL_SCHEDULES}, got {self.kl_schedule!r}",
                              "kl_schedule")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}",
                              "lr_schedule")
        _check_fields(self, _TRAIN_RULES)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"TrainConfig.extra must be a table, got {self.extra!r}", "extra")


_INT = "int"
_FLOAT = "float"
# name: (kind, low, high, low_open, high_open, optional)
_MODEL_RULES: dict[str, _Rule] = {
    **{name: (_INT, 1, None, False, False, False)
       for name in ("embedding_dim", "hidden_dim", "encoder_layers", "decoder_hidden_dim", "decoder_layers",
                    "latent_dim", "property_hidden_dim", "max_len")},
    "bidirectional": ("bool", None, None, False, False, False),
    "dropout": (_FLOAT, 0.0, 1.0, False, True, False),
}
_TRAIN_RULES: dict[str, _Rule] = {
    "epochs": (_INT, 1, None, False, False, False),
    "batch_size": (_INT, 1, None, False, False, False),
    "learning_rate": (_FLOAT, 0.0, None, True, False, False),
    "lr_final_ratio": (_FLOAT, 0.0, 1.0, False, False, False),
    # numpy's seeded generators take non-negative seeds only
    "seed": (_INT, 0, 2**63 - 1, False, False, False),
    "val_fraction": (_FLOAT, 0.0, 1.0, False, True, False),
    "max_len": (_INT, 1, None, False, False, True),
    "largest_fragment": ("bool", None, None, False, False, False),
    "kl_weight": (_FLOAT, 0.0, None, False, False, False),
    "kl_warmup_epochs": (_FLOAT, 0.0, None, False, False, False),
    "kl_cycle_ratio": (_FLOAT, 0.0, 1.0, True, False, False),
    "free_bits": (_FLOAT, 0.0, None, False, False, False),
    "word_dropout": (_FLOAT, 0.0, 1.0, False, True, False),
    # a negative clip norm flips every gradient's sign
    "grad_clip": (_FLOAT, 0.0, None, True, False, False),
    "device": ("str", None, None, False, False, False),
    "amp": ("bool", None, None, False, False, False),
    "cpu_amp": ("bool", None, None, False, False, True),
    "compile": ("bool", None, None, False, False, False),
    "early_stopping": (_INT, 1, None, False, False, True),
    "checkpoint_every": (_INT, 0, None, False, False, False),
    "recon_eval_size": (_INT, 0, None, False, False, False),
    "property_weight": (_FLOAT, 0.0, None, False, False, False),
    "num_threads": (_INT, 1, None, False, False, True),
    "max_time_minutes": (_FLOAT, 0.0, None, True, False, True),
    "max_bad_steps": (_INT, 1, None, False, False, False),
    "show_progress": ("bool", None, None, False, False, True),
}


def read_json_or_toml(path: str | Path, what: str) -> Any:
    """Parse a ``.toml`` file with tomllib, anything else as JSON.

    Raises:
        InvalidInputError: the text does not parse; the message names ``what`` and the file.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as exc:
        raise InvalidInputError(f"{what} {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``.json`` or ``.toml`` file with optional ``model`` and ``train`` tables.

    Top-level keys that are not tables are taken as train settings if TrainConfig
    has them, else as model settings.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"config file {path} does not exist")
    data = read_json_or_toml(path, "config file")
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path} must hold a table/object, got {type(data).__name__}")
    model = dict(data.pop("model", {}) or {})
    train = dict(data.pop("train", {}) or {})
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for k, v in data.items():
        if k in train_keys:
            train[k] = v
        elif k in model_keys:
            model[k] = v
        else:
            raise InvalidInputError(f"config file {path}: unknown key {k!r}")
    return {"model": model, "train": train}
