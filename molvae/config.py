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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import InvalidInputError

__all__ = ["ModelConfig", "TrainConfig", "Decoding", "DECODE_METHODS", "decode_settings", "load_config_file", "KL_SCHEDULES", "LR_SCHEDULES", "ConfigError",
           "progress_wanted", "setting", "cli_settings", "resume_changeable", "shown_default", "field_kind"]

T = TypeVar("T")

KL_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")
LR_SCHEDULES = ("constant", "cosine")
KEEP_CHOICES = ("best", "last")
DECODE_METHODS = ("sample", "greedy", "beam", "clean")


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


# ----------------------------------------------------------------------------- field metadata
#
# Every field of the two configs carries its help text, its command-line option (if any) and the
# check of its value in ``dataclasses.field(metadata=...)``: the one place the API, config files,
# ``molvae train``'s options (molvae/cli/train.py builds them from here) and the README table
# (tests/test_conventions.py compares) take them from.


def setting(default: Any = dataclasses.MISSING, help: str = "", *, cli: str | None = None, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False,
            choices: tuple[str, ...] | None = None, shown: str | None = None, on_resume: bool = False,
            default_factory: Any = None, short: str | None = None) -> Any:
    """A config field with its metadata.

    Args:
        default: the default value.
        help: what the setting does (one sentence, no trailing default).
        cli: the ``molvae train`` option: ``"lr"`` for ``--lr``, ``"amp/no-amp"`` for an on/off pair;
            ``None``: config file and Python API only.
        low, high, low_open, high_open: the allowed range of a number (open: ``>``/``<`` instead of ``>=``/``<=``).
        choices: the allowed strings.
        shown: the default as the help shows it, when ``default`` alone would not say it (e.g. ``None``).
        on_resume: a resumed run may change it (how long and how it runs, not what it learns).
        short: a one-letter form of the option (``"t"`` for ``-t``).
    """
    meta = {"help": help, "cli": cli, "range": (low, high, low_open, high_open), "choices": choices, "shown": shown,
            "on_resume": on_resume, "short": short}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_kind(f: dataclasses.Field) -> tuple[str, bool]:
    """``(kind, optional)`` of a config field from its annotation: kind is int, float, bool, str or other."""
    text = str(f.type).replace(" ", "")
    parts = text.split("|")
    optional = "None" in parts
    kind = next((p for p in parts if p != "None"), "")
    return (kind if kind in ("int", "float", "bool", "str") else "other"), optional


def shown_default(f: dataclasses.Field) -> str | None:
    """The default of ``f`` as help texts and the README show it (``None``: no default worth showing)."""
    if f.metadata.get("shown") is not None:
        return f.metadata["shown"]
    value = f.default
    if value is None or value is dataclasses.MISSING:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


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


def _check_value(cls: str, f: dataclasses.Field, value: Any) -> Any:
    """``value`` checked against ``f``'s kind, range and choices (floats normalized to ``float``).

    Raises:
        ConfigError: one line naming the class, the key, what was expected and what was given.
    """
    kind, optional = field_kind(f)
    low, high, low_open, high_open = f.metadata["range"]
    where, name = f"{cls}.{f.name}", f.name
    if value is None:
        if optional:
            return None
        expected = _describe(kind, low, high, low_open, high_open) if kind in ("int", "float") else f"a {kind}"
        raise ConfigError(f"{where} must be {expected}, got None", name)
    got = f"{value!r} ({type(value).__name__})" if isinstance(value, (str, bool)) else repr(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {got}", name)
        return value
    if kind == "str":
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}", name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {got}", name)
        return value
    expected = _describe(kind, low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            (kind == "int" and not isinstance(value, numbers.Integral)):
        raise ConfigError(f"{where} must be {expected}, got {got}", name)
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where} must be {expected} (finite), got {value!r}", name)
    if (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high)):
        raise ConfigError(f"{where} must be {expected}, got {value!r}", name)
    return int(value) if kind == "int" else float(value)


def _check_fields(obj: Any) -> None:
    """Check every int, float, bool and str field of ``obj`` (choices first, as the messages always did)."""
    fields = sorted(dataclasses.fields(obj), key=lambda f: f.metadata.get("choices") is None)
    for f in fields:
        if "range" in f.metadata and field_kind(f)[0] != "other":
            object.__setattr__(obj, f.name, _check_value(type(obj).__name__, f, getattr(obj, f.name)))


class _ConfigMixin:
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[arg-type]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    #: Old key -> current field name; old model files and config files keep loading.
    _RENAMED: dict[str, str] = {}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        data = _renamed(cls, data)
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


def _renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with keys renamed since older versions (``TrainConfig.max_len`` -> ``max_selfies_tokens``)."""
    renamed = getattr(cls, "_RENAMED", {})
    if not any(k in data for k in renamed):
        return data
    out = {}
    for k, v in data.items():
        new = renamed.get(k, k)
        if new != k and new in data:
            raise InvalidInputError(f"{cls.__name__}: give {new} only ({k} is its old name)")
        out[new] = v
    return out


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

    embedding_dim: int = setting(64, "Token embedding size", cli="embedding-dim", low=1)
    hidden_dim: int = setting(256, "Encoder GRU size (per direction)", cli="hidden-dim", low=1)
    encoder_layers: int = setting(1, "Encoder GRU layers", cli="encoder-layers", low=1)
    bidirectional: bool = setting(True, "Encoder direction", cli="bidirectional/unidirectional",
                                  shown="bidirectional")
    decoder_hidden_dim: int = setting(384, "Decoder GRU size", cli="decoder-hidden-dim", low=1)
    decoder_layers: int = setting(1, "Decoder GRU layers", cli="decoder-layers", low=1)
    latent_dim: int = setting(64, "Latent dimensions", cli="latent-dim", low=1)
    dropout: float = setting(0.0, "Dropout between stacked GRU layers", cli="dropout", low=0.0, high=1.0,
                             high_open=True)
    property_names: tuple[str, ...] = setting((), "Targets of the optional property head (molvae train --property)")
    property_hidden_dim: int = setting(64, "Hidden size of the property head", cli="property-hidden-dim", low=1)
    max_len: int = setting(128, "Longest decoded sequence in tokens, <eos> included (set from the data at "
                           "training; not TrainConfig.max_selfies_tokens)", low=1)

    def __post_init__(self) -> None:
        _check_fields(self)
        names = self.property_names
        if isinstance(names, list):
            object.__setattr__(self, "property_names", names := tuple(names))
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"ModelConfig.property_names must be a list of names, got {names!r}", "property_names")


@dataclass(frozen=True)
class TrainConfig(_ConfigMixin):
    """Everything about one training run except the model's sizes."""

    _RENAMED = {"max_len": "max_selfies_tokens"}  # before 0.x: max_len, confused with ModelConfig.max_len

    epochs: int = setting(30, "Epochs", cli="epochs", low=1, on_resume=True)
    # 256 keeps CPU matrix products efficient
    batch_size: int = setting(256, "Molecules per step (per process under torchrun)", cli="batch-size", low=1)
    learning_rate: float = setting(1e-3, "Adam learning rate", cli="lr", low=0.0, low_open=True)
    lr_schedule: str = setting("constant", "Learning rate over the run: constant, or cosine down to --lr-final-ratio "
                               "× --lr by the last epoch or --max-time", cli="lr-schedule", choices=LR_SCHEDULES)
    lr_final_ratio: float = setting(0.1, "cosine: final learning rate relative to --lr", cli="lr-final-ratio",
                                    low=0.0, high=1.0)
    # numpy's seeded generators take non-negative seeds only
    seed: int = setting(0, "Random seed", cli="seed", low=0, high=2**63 - 1)
    val_fraction: float = setting(0.1, "Validation share", cli="val-fraction", low=0.0, high=1.0, high_open=True)
    max_selfies_tokens: int | None = setting(None, "Reject molecules with more SELFIES tokens", cli="max-len", low=1,
                                             shown="no limit")
    largest_fragment: bool = setting(True, "Keep only the largest fragment of salts and mixtures; --all-fragments "
                                     "rejects them", cli="largest-fragment/all-fragments")
    kl_schedule: str = setting("linear", "β annealing: constant, linear, sigmoid or cyclical", cli="kl-schedule",
                               choices=KL_SCHEDULES)
    kl_weight: float = setting(1.0, "β_max", cli="kl-weight", low=0.0)
    kl_warmup_epochs: float = setting(10.0, "Epochs to reach β_max (linear, sigmoid), or cycle length (cyclical)",
                                      cli="kl-warmup", low=0.0)
    kl_cycle_ratio: float = setting(0.5, "cyclical: fraction of each cycle spent increasing β (Fu et al. 2019)",
                                    low=0.0, high=1.0, low_open=True)
    free_bits: float = setting(0.0, "Per-dimension KL floor in nats", cli="free-bits", low=0.0)
    word_dropout: float = setting(0.0, "Decoder input dropout rate (input tokens replaced by <unk>)",
                                  cli="word-dropout", low=0.0, high=1.0, high_open=True)
    # a negative clip norm flips every gradient's sign
    grad_clip: float = setting(5.0, "Gradient norm clip (> 0)", cli="grad-clip", low=0.0, low_open=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", cli="device", on_resume=True)
    amp: bool = setting(True, "Mixed precision on CUDA (bf16, or fp16 with a gradient scaler)", cli="amp/no-amp",
                        on_resume=True)
    cpu_amp: bool | None = setting(None, "bf16 autocast on the CPU", cli="cpu-amp/no-cpu-amp",
                                   shown="auto: on with AMX (amx_bf16), or on an AMD CPU with AVX-512 BF16 "
                                         "(avx512_bf16); off on Intel AVX-512 BF16 without AMX", on_resume=True)
    compile: bool = setting(False, "torch.compile the model", cli="compile")
    early_stopping: int | None = setting(None, "Stop after N epochs without improvement of the validation loss",
                                         cli="early-stopping", low=1, shown="off", on_resume=True)
    keep: str = setting("best", "Which epoch model.pt holds: best (lowest validation loss at the target β) or last",
                        cli="keep", choices=KEEP_CHOICES)
    checkpoint_every: int = setting(0, "Also checkpoint every N steps (0 = at the end of each epoch only)",
                                    cli="checkpoint-every", low=0, on_resume=True)
    recon_eval_size: int = setting(500, "Validation molecules decoded for reconstruction accuracy", low=0,
                                   on_resume=True)
    property_weight: float = setting(1.0, "Weight of the property head's loss (mean squared error of the "
                                    "standardized targets) against the per-molecule reconstruction loss",
                                    cli="property-weight", low=0.0)
    num_threads: int | None = setting(None, "CPU threads for torch", cli="threads", low=1, shown="torch's default",
                                      on_resume=True)
    max_time_minutes: float | None = setting(None, "Stop after this many minutes of training (validates and saves "
                                             "first)", cli="max-time", low=0.0, low_open=True, shown="no limit",
                                             on_resume=True)
    max_bad_steps: int = setting(20, "Stop after this many consecutive non-finite steps", cli="max-bad-steps", low=1,
                                 on_resume=True)
    show_progress: bool | None = setting(None, "Progress bar on stderr (None: only when stderr is a terminal)",
                                         on_resume=True)
    extra: dict = setting(help="Free-form notes recorded with the run", default_factory=dict)

    def __post_init__(self) -> None:
        _check_fields(self)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"TrainConfig.extra must be a table, got {self.extra!r}", "extra")


def _toml_module():
    """``tomllib`` (Python 3.11+) or, on 3.10, ``tomli`` (the same parser, a dependency there).

    Raises:
        InvalidInputError: neither is installed (says which to install, not that the file is bad).
    """
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise InvalidInputError("reading TOML needs Python 3.11+ or the tomli package (pip install tomli); "
                                    "or give the settings as JSON") from exc
    return tomllib


def read_json_or_toml(path: str | Path, what: str) -> Any:
    """Parse a ``.toml`` file with tomllib (tomli on Python 3.10), anything else as JSON.

    Raises:
        InvalidInputError: the text does not parse; the message names ``what`` and the file.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    toml = _toml_module() if path.suffix.lower() == ".toml" else None
    try:
        return toml.loads(text) if toml is not None else json.loads(text)
    except Exception as exc:
        raise InvalidInputError(f"{what} {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``.json`` or ``.toml`` file with optional ``model`` and ``train`` tables.

    Top-level keys that are not tables are taken as train settings if TrainConfig
    has them, else as model settings. Old names (``max_len`` for ``max_selfies_tokens``)
    still load, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"config file {path} does not exist")
    data = read_json_or_toml(path, "config file")
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path} must hold a table/object, got {type(data).__name__}")
    model = dict(data.pop("model", {}) or {})
    train = dict(data.pop("train", {}) or {})
    renamed = TrainConfig._RENAMED
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} | set(renamed)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for k, v in data.items():
        if k in train_keys:  # before model keys: a top-level max_len always meant the training limit
            train[k] = v
        elif k in model_keys:
            model[k] = v
        else:
            raise InvalidInputError(f"config file {path}: unknown key {k!r}")
    for old, new in renamed.items():
        if old in train:
            # FutureWarning, not DeprecationWarning: it is meant for the file's author, who sees it by default.
            warnings.warn(f"config file {path}: {old!r} is now called {new!r} (the old name still works for now)",
                          FutureWarning, stacklevel=2)
    return {"model": model, "train": train}


def resume_changeable() -> tuple[str, ...]:
    """:class:`TrainConfig` fields a resumed run may change: its length and how it runs, not what it learns."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("on_resume"))


def cli_settings() -> list[tuple[str, dataclasses.Field]]:
    """``(table, field)`` of every setting with a ``molvae train`` option, model settings after train settings."""
    return [(table, f) for table, cls in (("train", TrainConfig), ("model", ModelConfig))
            for f in dataclasses.fields(cls) if f.metadata.get("cli")]


@dataclass(frozen=True)
class Decoding(_ConfigMixin):
    """How a latent vector becomes a molecule when a model samples: the token rule and what is redrawn.

    The token rule (``method``): ``sample`` draws each token from the decoder's softmax at ``temperature``
    (restricted to the ``top_p`` nucleus below 1); ``greedy`` takes the most likely token; ``beam`` keeps
    ``beam_width`` sequences and returns the most likely one; ``clean`` samples as ``sample`` does and
    redraws every molecule whose SELFIES holds atom tokens SELFIES had to ignore. A sample that breaks
    a rule below is redrawn from a fresh latent vector (:data:`molvae.core.MAX_REDRAWS` rounds at most).
    """

    method: str = setting("sample", "Token rule: sample, greedy, beam, or clean (sample, and redraw molecules whose "
                          "SELFIES had atoms ignored)", cli="decode", choices=DECODE_METHODS)
    # 0.7: the lowest FCD/Test among the strategies that keep MOSES's diversity (benchmarks/bench_decoding.py)
    temperature: float = setting(0.7, "Softmax temperature of sample and clean", cli="temperature", low=0.0,
                                 low_open=True, short="t")
    top_p: float = setting(1.0, "Nucleus of sample and clean: the most likely tokens holding this much probability",
                           cli="top-p", low=0.0, high=1.0, low_open=True)
    beam_width: int = setting(4, "Beams per latent vector of beam", cli="beam-width", low=1)
    allow_radicals: bool = setting(False, "Keep molecules with unpaired electrons (else redrawn)",
                                   cli="allow-radicals")
    max_ring_size: int = setting(8, "Redraw molecules with a ring of more atoms (0: no limit)", cli="max-ring-size",
                                 low=0)

    def __post_init__(self) -> None:
        _check_fields(self)

    def describe(self) -> str:
        """One line: the token rule with its parameters, then what is redrawn."""
        if self.method in ("sample", "clean"):
            rule = f"{self.method}, T = {self.temperature:g}" + (f", top-p {self.top_p:g}" if self.top_p < 1 else "")
        elif self.method == "beam":
            rule = f"beam search, width {self.beam_width}"
        else:
            rule = "greedy"
        redrawn = [*(["radicals"] if not self.allow_radicals else []),
                   *([f"rings over {self.max_ring_size} atoms"] if self.max_ring_size else [])]
        return rule + (f"; redraws {' and '.join(redrawn)}" if redrawn else "")


def decode_settings() -> list[dataclasses.Field]:
    """The fields of :class:`Decoding`, each with its command-line option (``molvae generate`` builds them)."""
    return list(dataclasses.fields(Decoding))
