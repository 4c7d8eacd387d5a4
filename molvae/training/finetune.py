"""Fine-tuning: a run that starts from a trained model's weights instead of a random network.

The base (a shipped name, a run folder or a model file) gives the network, its sizes and what it learns
with (β, free bits, word dropout, fragment rule); the new data gives the molecules. Tokens the data needs
and the base lacks are added (:meth:`molvae.core.MolVAE.with_tokens`), so a series' stereocentres,
charges and new elements survive into what the model writes. The defaults suit a few hundred molecules
(:data:`FINETUNE_DEFAULTS`); every one of them can be overridden.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import chem
from ..config import TrainConfig
from ..core import MolVAE, find_model
from ..data import file_hash
from ..errors import InvalidInputError
from .inputs import TrainingData

__all__ = ["BaseModel", "load_base", "finetune_config", "start_from_base", "FINETUNE_DEFAULTS", "INHERITED",
           "refit_prior", "head_targets", "restandardize"]

log = logging.getLogger(__name__)

#: Settings of a fine-tuning run where the base's own would be wrong for a few hundred molecules: small
#: batches (enough steps per epoch), β at its target from the first step (a warm-up from 0 would first undo
#: the latent space the base learnt), a fixed length and the last epoch kept. Measured on a 500-molecule
#: benzimidazole series of the MOSES test set (benchmarks/bench_finetune.py): the validation −ELBO is lowest
#: after 3-9 epochs, while the samples' share with the core, FCD and SNN to held-out molecules of the series
#: keep improving through 120 epochs (core share 0.42 -> 0.76, FCD 10.8 -> 6.3, SNN 0.36 -> 0.48 at lr 6e-4),
#: so early stopping on it would stop far too soon; longer or faster runs trade uniqueness and novelty for
#: core share (lr 1e-3: core 0.81, unique 0.90, novel 0.86).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "learning_rate": 6e-4,
    "batch_size": 32,
    "epochs": 120,
    "early_stopping": None,
    "keep": "last",
    "kl_schedule": "constant",
    "lr_schedule": "constant",
    "val_fraction": 0.1,
}

#: Settings taken from the base: what its latent space was trained with.
INHERITED = ("kl_weight", "free_bits", "word_dropout", "largest_fragment", "property_weight", "grad_clip")


@dataclass
class BaseModel:
    """The model a run starts from, and how the user named it."""

    model: MolVAE
    name: str
    path: Path
    sha256: str

    def record(self, added: list[str], prior: dict[str, Any] | None) -> dict[str, Any]:
        """What the run's files store about the base."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "added_tokens": list(added),
                "n_base_tokens": len(self.model.vocab), "prior": prior}


def load_base(spec: str | os.PathLike | MolVAE | BaseModel) -> BaseModel:
    """The base model of ``spec``: a shipped name, a run folder, a model file, or a loaded model.

    Raises:
        CheckpointError: nothing by that name.
    """
    if isinstance(spec, BaseModel):
        return spec
    if isinstance(spec, MolVAE):
        if spec.path is None:
            raise InvalidInputError("a base model must come from a file (save it first): its SHA-256 is recorded")
        path = Path(spec.path)
        return BaseModel(spec, path.stem, path, file_hash(path))
    path, _ = find_model(spec)
    return BaseModel(MolVAE.load(path), str(spec), path, file_hash(path))


def finetune_config(base: MolVAE | BaseModel, **overrides: Any) -> TrainConfig:
    """The settings of a fine-tuning run: :class:`TrainConfig` defaults, then the base's :data:`INHERITED`
    settings, then :data:`FINETUNE_DEFAULTS`, then ``overrides`` (any TrainConfig field)."""
    model = base.model if isinstance(base, BaseModel) else base
    settings: dict[str, Any] = {}
    if model.train_config is not None:
        stored = model.train_config.to_dict()
        settings.update({k: stored[k] for k in INHERITED})
    settings.update(FINETUNE_DEFAULTS)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(settings)


def head_targets(base: BaseModel, property_columns: tuple[str, ...]) -> tuple[str, ...]:
    """The property columns a fine-tuned head learns: the columns asked for, else the base's targets when
    RDKit computes them all (``qed``, ``plogp``: the new molecules get them for free), else no head."""
    if property_columns:
        return tuple(property_columns)
    names = tuple(base.model.config.property_names)
    if names and all(n in chem.PROPERTY_FUNCTIONS for n in names):
        return names
    if names:
        log.warning("the base model's property head (%s) is dropped: give its targets with --property to keep it",
                    ", ".join(names))
    return ()


def start_from_base(base: BaseModel, td: TrainingData, tc: TrainConfig) -> tuple[MolVAE, dict[str, Any]]:
    """The network a fine-tuning run starts from and the record of its base.

    The data's tokens the base lacks are added (said on the log), ``td.prepared`` is re-expressed in the
    extended vocabulary, and a head kept from the base keeps the base's target scaling (it starts right).
    """
    model = base.model
    longest = int(td.prepared.tokens.lengths.max())
    cap = (tc.max_selfies_tokens if tc.max_selfies_tokens else longest) + 1
    targets = tuple(td.property_columns)
    extended, added = model.with_tokens(td.prepared.vocab.tokens, property_names=targets,
                                        max_len=max(cap, longest + 1), seed=tc.seed)
    if added:
        log.warning("added %d token(s) the base model %s lacks: %s", len(added), base.name, " ".join(added))
    td.prepared = td.prepared.with_vocabulary(extended.vocab)
    stats = (model.metadata or {}).get("property_stats")
    if targets and targets == tuple(model.config.property_names) and stats:
        restandardize(td, stats)
    prior = None
    if model.priors and model.default_prior in model.priors:
        prior = {"name": model.default_prior, "n_components": model.priors[model.default_prior].n_components}
    return extended, base.record(added, prior)


def restandardize(td: TrainingData, stats: dict[str, Any]) -> None:
    """Scale ``td``'s property targets with stored ``stats`` (a kept head's, or a resumed run's)."""
    raw = td.prepared.properties.to_numpy(dtype=np.float32)
    mean, std = np.asarray(stats["mean"], dtype=np.float32), np.asarray(stats["std"], dtype=np.float32)
    td.prop_array = (raw - mean) / std
    td.property_stats = {"mean": mean.tolist(), "std": std.tolist()}


def refit_prior(model: MolVAE, smiles: list[str], prior: dict[str, Any] | None, seed: int) -> str | None:
    """Fit the base's kind of prior to the fine-tuned model's latent codes of ``smiles`` and make it the
    default, as the base's was; ``None`` when the base had none. Fewer components than the base's on a
    small set: one per 50 molecules (a full-covariance component needs that many points)."""
    if not prior:
        return None
    from ..sample import fit_prior

    k = max(1, min(int(prior["n_components"]), len(smiles) // 50))
    fitted = fit_prior(model, smiles, n_components=k, seed=seed, name=prior["name"])
    model.default_prior = prior["name"]
    log.info("refitted the prior %r: %s", prior["name"], fitted.describe())
    return prior["name"]
