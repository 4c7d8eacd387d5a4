"""``MolVAE``: a trained network together with its vocabulary and provenance.

This is the object users hold: ``MolVAE.load(path).sample(1000)``. It owns no
training logic (see :mod:`molvae.train`) and delegates the network to
:class:`molvae.model.VAE`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import chem
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Decoding, ModelConfig, TrainConfig
from .errors import CheckpointError, InvalidInputError
from .model import VAE, sequences_to_tensor
from .prior import NORMAL, GaussianMixturePrior, prior_from_dict
from .vocab import SPECIAL_TOKENS, Vocabulary, parent_token

__all__ = ["MolVAE", "resolve_device", "find_model", "resolve_decoding", "SHIPPED_MODELS_DIR", "LATEST_POINTER",
           "MAX_REDRAWS", "REDRAW_REASONS"]

log = logging.getLogger(__name__)

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"
LATEST_POINTER = "LATEST"
DEFAULT_SHIPPED = "moses"


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 autocast speeds training up on this CPU: AMX tiles (``amx_bf16``), or an AMD CPU
    with AVX-512 BF16 (Zen 4 and later).

    AVX-512 BF16 alone is not enough on Intel: on a 2-core Xeon with ``avx512_bf16`` but no AMX, an
    epoch of 2,850 ZINC molecules took 18 s with bf16 autocast and 13 s in fp32. On a 2-core AMD
    EPYC with ``avx512_bf16`` the default model trained 1.58x faster with it (419 against 265
    molecules per CPU-second, ``benchmarks/results/bench_train_cpu_amp_amd.json``) and sampled
    1.6x faster. Training (``cpu_amp``) and prior sampling (:meth:`MolVAE.iter_samples`) use it.
    """
    flags: list[str] = []
    vendor = ""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        return False
    return "amx_bf16" in flags or (vendor == "AuthenticAMD" and "avx512_bf16" in flags)


@functools.lru_cache(maxsize=1)
def _fast_bf16_here() -> bool:
    return cpu_has_fast_bf16()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Raises:
        InvalidInputError: an unknown device string, or CUDA asked for without a GPU.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device {device!r} is not supported; expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    return dev


def shipped_models() -> dict[str, Path]:
    """Models that ship inside the package, by name."""
    if not SHIPPED_MODELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED_MODELS_DIR.glob("*.pt"))}


def find_model(spec: str | os.PathLike | None = None, runs_dir: str | os.PathLike = "runs",
               default: str = DEFAULT_SHIPPED) -> tuple[Path, str]:
    """Locate a model file.

    ``spec`` may be a model file, a run folder (holding ``model.pt``), the name of a
    shipped model, or ``None``: then the latest run under ``runs_dir``, else the
    shipped model ``default`` (``moses``; ``zinc250k`` for optimization and property prediction).

    Returns:
        ``(path, how)`` where ``how`` says in words which model was chosen.

    Raises:
        CheckpointError: nothing found; the message says how to get a model.
    """
    if spec is not None:
        p = Path(spec)
        if p.is_dir():
            if (p / "model.pt").is_file():
                return p / "model.pt", f"run {p}"
            raise CheckpointError(f"{p}: folder has no model.pt; expected a run folder or a model file")
        if p.is_file():
            return p, f"model file {p}"
        shipped = shipped_models()
        if str(spec) in shipped:
            return shipped[str(spec)], f"shipped model {spec!r}"
        names = ", ".join(shipped) or "none"
        raise CheckpointError(f"{spec}: no such model file, run folder or shipped model (shipped: {names})")
    runs = Path(runs_dir)
    pointer = runs / LATEST_POINTER
    note = ""
    if pointer.is_file():
        run = runs / pointer.read_text(encoding="utf-8").strip()
        if (run / "model.pt").is_file():
            return run / "model.pt", f"latest run {run}"
        # never silently: say why the latest run was passed over
        note = f"; {pointer} names {run}, which holds no model.pt"
    shipped = shipped_models()
    if default in shipped:
        return shipped[default], f"shipped model {default!r}{note}"
    if shipped:
        name, path = next(iter(shipped.items()))
        return path, f"shipped model {name!r}{note}"
    raise CheckpointError(
        "no model found: no --model given, no runs/LATEST here and no shipped model; "
        "train one with `molvae train smiles.csv` or pass --model PATH")


class MolVAE:
    """A trained SELFIES VAE: network, vocabulary, configs and training record.

    Args:
        net: the network.
        vocab: its token vocabulary.
        train_config: how it was trained (``None`` for an untrained model).
        history: one dict per epoch.
        metadata: provenance (data hash, counts, wall time, ...).
    """

    def __init__(self, net: VAE, vocab: Vocabulary, *, train_config: TrainConfig | None = None,
                 history: list[dict[str, Any]] | None = None, metadata: dict[str, Any] | None = None,
                 path: Path | None = None, priors: dict[str, GaussianMixturePrior] | None = None,
                 default_prior: str = NORMAL):
        if len(vocab) != net.vocab_size:
            raise CheckpointError(f"vocabulary has {len(vocab)} tokens but the network expects {net.vocab_size}")
        self.net = net
        self.vocab = vocab
        self.train_config = train_config
        self.history = history or []
        self.metadata = metadata or {}
        self.path = path
        #: Fitted latent priors by name (see :mod:`molvae.prior`); N(0, I) is always available as "normal".
        self.priors: dict[str, GaussianMixturePrior] = dict(priors or {})
        if default_prior != NORMAL and default_prior not in self.priors:
            raise CheckpointError(f"default prior {default_prior!r} is not among the stored priors {sorted(self.priors)}")
        self.default_prior = default_prior
        #: Read a charged molecule whose charged tokens the model lacks as its neutral form (:meth:`read`).
        self.neutralize = False
        # SELFIES tokens that place an atom (everything but specials, branches and rings).
        self.atom_tokens = torch.tensor(
            [i >= len(SPECIAL_TOKENS) and not any(k in t for k in ("Branch", "Ring", "nop"))
             for i, t in enumerate(vocab.tokens)], dtype=torch.bool)

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def new(cls, config: ModelConfig, vocab: Vocabulary, seed: int | None = None) -> MolVAE:
        """An untrained model (weights initialized under ``seed`` when given)."""
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = VAE(config, len(vocab))
        else:
            net = VAE(config, len(vocab))
        return cls(net, vocab)

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> MolVAE:
        self.net.to(resolve_device(device))
        return self

    def payload(self) -> dict[str, Any]:
        """The model as plain data and tensors (what :meth:`save` writes)."""
        return {
            "model_config": self.config.to_dict(),
            "train_config": None if self.train_config is None else self.train_config.to_dict(),
            "vocab": self.vocab.to_list(),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "history": list(self.history),
            "metadata": dict(self.metadata),
            **({"priors": {k: p.to_dict() for k, p in self.priors.items()}, "default_prior": self.default_prior}
               if self.priors else {}),
        }

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the model to one file (atomically). ``extra`` entries are stored beside it."""
        path = Path(path)
        save_checkpoint(path, {**self.payload(), **extra})
        return path

    def with_tokens(self, tokens: Sequence[str], *, property_names: tuple[str, ...] | None = None,
                    max_len: int | None = None, seed: int = 0) -> tuple[MolVAE, list[str]]:
        """A copy of this model whose vocabulary also holds ``tokens``: ``(model, tokens added)``.

        New tokens go after the old ones (old ids keep their meaning). A new token's embedding and
        output row start from its :func:`~molvae.vocab.parent_token` (``[C@@H1]`` from ``[C]``), or from
        the mean of the old non-special rows, with its output bias lowered by ``ln K + 15`` for ``K``
        new tokens: every new logit is at least that far below some old logit, so before training the
        old tokens' logits are unchanged and their probabilities move by less than ``K·e^-(ln K + 15)``
        = 3e-7, while the new rows get gradients like any other (fine-tuning teaches them).

        ``property_names`` different from the model's give a freshly initialized property head (seeded
        by ``seed``); ``max_len`` changes the decoding limit (no weight depends on it). Priors are not
        copied: they describe the old latent space.
        """
        added = [t for t in dict.fromkeys(tokens) if t not in self.vocab and t not in SPECIAL_TOKENS]
        vocab = Vocabulary([*self.vocab.tokens, *added])
        config = self.config.replace(
            **({} if property_names is None else {"property_names": tuple(property_names)}),
            **({} if max_len is None else {"max_len": max(int(max_len), self.config.max_len)}))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = VAE(config, len(vocab))
        old = self.net.state_dict()
        new = net.state_dict()
        for k, v in old.items():
            if k.startswith("property_head.") and config.property_names != self.config.property_names:
                continue  # a new head for new targets
            if k in ("embedding.weight", "output.weight", "output.bias"):
                new[k][: len(self.vocab)] = v
            else:
                new[k] = v.clone()
        if added:
            regular = torch.arange(len(SPECIAL_TOKENS), len(self.vocab))
            offset = math.log(len(added)) + 15.0
            for j, token in enumerate(added, start=len(self.vocab)):
                parent = parent_token(token, self.vocab)
                rows = torch.tensor([self.vocab.index[parent]]) if parent else regular
                for k in ("embedding.weight", "output.weight"):
                    new[k][j] = old[k][rows].mean(0)
                new["output.bias"][j] = old["output.bias"][rows].mean() - offset
        net.load_state_dict(new)
        net.eval()
        model = MolVAE(net, vocab, train_config=self.train_config, history=[], metadata=dict(self.metadata),
                       path=None)
        model.neutralize = self.neutralize
        return model.to(self.device), added

    @classmethod
    def from_payload(cls, data: dict[str, Any], path: Path | None = None) -> MolVAE:
        """Rebuild a model from :func:`load_checkpoint` output, validating every shape."""
        where = str(path) if path else "model file"
        try:
            config = ModelConfig.from_dict(dict(data["model_config"]))
            vocab = Vocabulary.from_list(data["vocab"])
        except Exception as exc:
            from .checkpoint import newer_writer_note

            raise CheckpointError(f"{where}: invalid stored config or vocabulary ({exc}){newer_writer_note(data)}") \
                from exc
        train_config = None
        if data.get("train_config"):
            try:
                train_config = TrainConfig.from_dict(dict(data["train_config"]))
            except Exception as exc:
                from .checkpoint import newer_writer_note

                raise CheckpointError(f"{where}: invalid stored training config ({exc}){newer_writer_note(data)}") \
                    from exc
        # Shapes come from a network on the meta device (no memory), so a crafted config with
        # enormous sizes is refused by the shape check instead of allocating them.
        try:
            with torch.device("meta"):
                expected = VAE(config, len(vocab)).state_dict()
        except Exception as exc:
            raise CheckpointError(f"{where}: stored config does not describe a valid network ({exc})") from exc
        state = data["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: state_dict is not a mapping of tensors")
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{where}: weights do not match the stored config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for k, v in expected.items():
            t = state[k]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(v.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise CheckpointError(f"{where}: weight {k} has shape {got}, expected {tuple(v.shape)}")
            if v.is_floating_point() and not t.is_floating_point():
                raise CheckpointError(f"{where}: weight {k} has dtype {t.dtype}, expected a floating-point tensor")
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{where}: weight {k} holds NaN or infinite values")
        net = VAE(config, len(vocab))
        net.load_state_dict(state)
        net.eval()
        stored = data.get("priors") or {}
        if not isinstance(stored, dict):
            raise CheckpointError(f"{where}: stored priors are not a mapping")
        priors = {str(k): prior_from_dict(v, config.latent_dim, where) for k, v in stored.items()}
        default = data.get("default_prior") or NORMAL
        if default != NORMAL and default not in priors:
            raise CheckpointError(f"{where}: default prior {default!r} is not among the stored priors {sorted(priors)}")
        return cls(net, vocab, train_config=train_config, history=list(data.get("history") or []),
                   metadata=dict(data.get("metadata") or {}), path=path, priors=priors, default_prior=default)

    @classmethod
    def load(cls, spec: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> MolVAE:
        """Load a model file, run folder or shipped model by name (see :func:`find_model`)."""
        path, _ = find_model(spec)
        model = cls.from_payload(load_checkpoint(path), path)
        return model.to(device)

    # ------------------------------------------------------------------ tokens
    @property
    def keeps_largest_fragment(self) -> bool:
        """Whether the model reads a molecule as its largest fragment, as its training did (the default)."""
        return bool(self.train_config.largest_fragment if self.train_config else True)

    def read(self, smiles: str) -> tuple[list[int] | str, str | None, str]:
        """How the model reads one SMILES: ``(token ids or the reason it cannot, the canonical SMILES it
        read or None, how)``.

        ``how`` is ``""`` when the molecule was read as written, ``"stereo"`` when the model lacks a
        stereo token of it and read its stereo-free form instead (every token of that form known),
        ``"charge"`` when :attr:`neutralize` is on and the model read its neutral form, ``"stereo+charge"``
        when it needed both. A token with no such fallback (an element the model never saw) is a reason.
        """
        keep = self.keeps_largest_fragment
        res = chem.process_smiles(smiles, keep_largest_fragment=keep)
        if isinstance(res, str):
            return res, None, ""
        unknown = self.vocab.unknown(res.tokens)
        how = ""
        if unknown:
            res, how = self._fallback(res, unknown, keep)
            unknown = self.vocab.unknown(res.tokens)
        if unknown:
            return self._unknown_reason(unknown), None, ""
        if len(res.tokens) + 1 > self.config.max_len:
            return (f"{len(res.tokens)} SELFIES tokens, longer than the model's maximum {self.config.max_len - 1}",
                    None, "")
        return self.vocab.encode(res.tokens), res.smiles, how

    def _fallback(self, res: chem.ProcessedMolecule, unknown: list[str], keep: bool
                  ) -> tuple[chem.ProcessedMolecule, str]:
        """The stereo-free and/or (with :attr:`neutralize`) neutral form of ``res`` when that form has only
        known tokens; else ``res`` unchanged."""
        stereo = any(m in t for t in unknown for m in chem.STEREO_MARKS)
        charged = self.neutralize and any(("+" in t or "-" in t) for t in unknown)
        tries = []
        if stereo:
            tries.append(("stereo", chem.stereo_free))
        if charged:
            tries.append(("charge", chem.neutralized))
        if stereo and charged:
            tries.append(("stereo+charge", lambda smi: chem.neutralized(chem.stereo_free(smi))))
        for how, transform in tries:
            other = chem.process_smiles(transform(res.smiles), keep_largest_fragment=keep)
            if not isinstance(other, str) and not self.vocab.unknown(other.tokens):
                return other, how
        return res, ""

    def _unknown_reason(self, unknown: list[str]) -> str:
        hint = []
        if not self.neutralize and any(("+" in t or "-" in t) for t in unknown):
            hint.append("--neutralize reads charged molecules as their neutral form")
        hint.append("fine-tuning adds tokens: molvae train DATA --from MODEL")
        return f"tokens not in the model's vocabulary: {' '.join(unknown[:5])} ({'; '.join(hint)})"

    def tokenize(self, smiles: str) -> list[int] | str:
        """Token ids of one SMILES, or the reason it cannot be represented (see :meth:`read`)."""
        return self.read(smiles)[0]

    def read_many(self, smiles: Sequence[str | None]) -> tuple[list[list[int] | str], list[str | None]]:
        """:meth:`read` over many molecules, in input order: ``(token ids or reasons, canonical SMILES read)``.

        Says once (a warning on the ``molvae`` log, which the CLI prints on stderr) how many molecules
        were read as their stereo-free or neutral form.
        """
        ids, canon, hows = [], [], []
        for s in smiles:
            i, c, how = self.read(s) if isinstance(s, str) else ("empty SMILES", None, "")
            ids.append(i)
            canon.append(c)
            hows.append(how)
        n_stereo = sum("stereo" in h for h in hows)
        n_charge = sum("charge" in h for h in hows)
        if n_stereo:
            log.warning("%d of %d molecules read without their stereochemistry: the model has no tokens for it "
                        "(fine-tune with molvae train DATA --from MODEL to keep it)", n_stereo, len(hows))
        if n_charge:
            log.warning("%d of %d molecules read as their neutral form (--neutralize)", n_charge, len(hows))
        return ids, canon

    def ids_to_smiles(self, ids: Sequence[int]) -> tuple[str, str]:
        """``(canonical SMILES or '', SELFIES)`` of decoded token ids."""
        selfies = self.vocab.decode_selfies(ids)
        smiles = chem.selfies_to_canonical(selfies) if selfies else None
        return smiles or "", selfies

    # ------------------------------------------------------------------ latent space
    @torch.no_grad()
    def posterior_of_ids(self, ids: Sequence[Sequence[int] | str], batch_size: int = 512
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior parameters ``(mu, logvar)``, each ``(n, latent_dim)`` float32, of tokenized molecules.

        ``ids[i]`` is a molecule's token ids (from :meth:`tokenize`), or a reason string for a row
        that could not be tokenized, which gets NaN. Molecules run in length-sorted batches (less
        padding); the rows come back in input order. The one encoder path: :meth:`encode`,
        :meth:`posterior` and :mod:`molvae.sample` all go through it.
        """
        d = self.config.latent_dim
        mu = np.full((len(ids), d), np.nan, dtype=np.float32)
        logvar = np.full((len(ids), d), np.nan, dtype=np.float32)
        order = sorted((i for i, e in enumerate(ids) if not isinstance(e, str)), key=lambda i: len(ids[i]))
        self.net.eval()
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            tokens, lengths = sequences_to_tensor([ids[i] for i in idx], self.vocab.eos_id, self.vocab.pad_id)
            m, lv = self.net.encode(tokens.to(self.device), lengths)
            mu[idx] = m.float().cpu().numpy()
            logvar[idx] = lv.float().cpu().numpy()
        return mu, logvar

    def posterior(self, smiles: Sequence[str], *, batch_size: int = 512
                  ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """``(mu, logvar, reasons)`` of ``smiles``: NaN rows, and the reason, where a molecule cannot be encoded."""
        ids, _ = self.read_many(smiles)
        mu, logvar = self.posterior_of_ids(ids, batch_size)
        return mu, logvar, [e if isinstance(e, str) else None for e in ids]

    @torch.no_grad()
    def encode(self, smiles: Sequence[str], *, sample: bool = False, seed: int | None = None,
               batch_size: int = 512) -> tuple[np.ndarray, list[str | None]]:
        """Latent vectors of ``smiles``, rows aligned with the input: the posterior mean μ, or with
        ``sample`` a draw z ~ q(z|x) (seeded by ``seed``; ``None``: see :func:`torch_generator`).

        Returns:
            ``(latents, reasons)``: ``(n, latent_dim)`` float32 with NaN rows where a
            molecule could not be encoded, and the reason for each such row (``None`` if encoded).
        """
        mu, logvar, reasons = self.posterior(smiles, batch_size=batch_size)
        if not sample:
            return mu, reasons
        z = mu.copy()
        ok = [i for i, r in enumerate(reasons) if r is None]
        gen = torch_generator(seed, self.device)
        for s in range(0, len(ok), batch_size):  # noise drawn batch by batch in input order
            idx = ok[s:s + batch_size]
            m, lv = (torch.from_numpy(a[idx]).to(self.device) for a in (mu, logvar))
            z[idx] = self.net.reparameterize(m, lv, gen).float().cpu().numpy()
        return z, reasons

    @torch.no_grad()
    def decode(self, z: np.ndarray | torch.Tensor, *, temperature: float = 1.0, greedy: bool = True,
               seed: int | None = None, batch_size: int = 1000) -> pd.DataFrame:
        """Molecules decoded from latent vectors ``z (n, latent_dim)``, one row each.

        Returns:
            A table with ``smiles`` (canonical, '' if invalid), ``selfies`` and ``valid``.
        """
        z = torch.as_tensor(np.asarray(z, dtype=np.float32) if not isinstance(z, torch.Tensor) else z,
                            dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise InvalidInputError(
                f"latent vectors have shape {tuple(z.shape)}; expected (n, {self.config.latent_dim})")
        if not torch.isfinite(z).all():
            raise InvalidInputError("latent vectors contain NaN or infinite values")
        gen = torch_generator(seed, self.device)
        rows = []
        self.net.eval()
        for s in range(0, z.shape[0], batch_size):
            ids = self.net.generate(z[s:s + batch_size].to(self.device), self.config.max_len,
                                    temperature=temperature, greedy=greedy, generator=gen,
                                    atom_tokens=self.atom_tokens)
            rows.extend(self.ids_to_smiles(seq) for seq in ids)
        return pd.DataFrame({"smiles": [r[0] for r in rows], "selfies": [r[1] for r in rows],
                             "valid": [bool(r[0]) for r in rows]})

    def available_priors(self) -> list[str]:
        """Names of the priors :meth:`sample` can draw z from: ``"normal"`` and any fitted ones."""
        return [NORMAL, *sorted(self.priors)]

    def resolve_prior(self, prior: str | None = None) -> str:
        """The prior's name for ``prior`` (``None`` or ``"default"``: the model's default)."""
        name = self.default_prior if prior in (None, "default") else prior
        if name != NORMAL and name not in self.priors:
            raise InvalidInputError(f"unknown prior {prior!r}; this model has {self.available_priors()}")
        return name

    def describe_prior(self, prior: str | None = None) -> str:
        name = self.resolve_prior(prior)
        return "N(0, I)" if name == NORMAL else self.priors[name].describe()

    def _draw_z(self, m: int, prior: str, gen: torch.Generator | None, cpu_gen: torch.Generator | None
                ) -> torch.Tensor:
        if prior == NORMAL:
            return torch.randn(m, self.config.latent_dim, generator=gen, device=self.device)
        return self.priors[prior].sample(m, generator=cpu_gen, device=self.device)  # float64 mixture on the CPU

    def _decode_ids(self, z: torch.Tensor, decoding: Decoding, gen: torch.Generator | None) -> list[list[int]]:
        """Token ids of ``z`` under ``decoding``'s token rule (bf16 matrix products where the CPU runs them fast,
        the same rule as training's cpu_amp: 1.6x more molecules per second on an AMD Zen 4; the samples differ
        from fp32 ones only by rounding)."""
        fast = self.device.type == "cpu" and _fast_bf16_here()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            if decoding.method == "beam":
                return self.net.beam_search(z, self.config.max_len, width=decoding.beam_width,
                                            atom_tokens=self.atom_tokens)
            return self.net.generate(z, self.config.max_len, temperature=decoding.temperature,
                                     greedy=decoding.method == "greedy", top_p=decoding.top_p, generator=gen,
                                     atom_tokens=self.atom_tokens)

    @staticmethod
    def _redraw_reason(selfies: str, mol: chem.DecodedMolecule, decoding: Decoding) -> str | None:
        """Why a decoded sample breaks ``decoding``'s rules (a key of :data:`REDRAW_REASONS`), else ``None``."""
        if not mol.smiles:
            return None
        if mol.radical and not decoding.allow_radicals:
            return "radical"
        if decoding.max_ring_size and mol.largest_ring > decoding.max_ring_size:
            return "ring"
        if decoding.method == "clean" and chem.ignored_atom_tokens(selfies):
            return "ignored"
        return None

    def _sample_batch(self, m: int, prior: str, decoding: Decoding, seed: int) -> pd.DataFrame:
        """One batch of ``m`` samples, all randomness from ``seed``. A sample that breaks ``decoding``'s rules is
        redrawn from a new z, at most :data:`MAX_REDRAWS` rounds; one still breaking them is an invalid row.
        ``attrs["redrawn"]`` counts the redraws by reason."""
        gen = torch_generator(seed, self.device)
        cpu_gen = gen if self.device.type == "cpu" else torch_generator(seed, torch.device("cpu"))
        selfies: list[str] = [""] * m
        mols: list[chem.DecodedMolecule] = [chem.DecodedMolecule("", False, 0)] * m
        todo = list(range(m))
        redrawn = dict.fromkeys(REDRAW_REASONS, 0)
        for round_ in range(MAX_REDRAWS + 1):
            if not todo:
                break
            ids = self._decode_ids(self._draw_z(len(todo), prior, gen, cpu_gen), decoding, gen)
            failed = []
            for i, seq in zip(todo, ids):
                selfies[i] = self.vocab.decode_selfies(seq)
                mols[i] = chem.decode_selfies(selfies[i]) if selfies[i] else chem.DecodedMolecule("", False, 0)
                reason = self._redraw_reason(selfies[i], mols[i], decoding)
                if reason is not None:
                    failed.append(i)
                    if round_ < MAX_REDRAWS:
                        redrawn[reason] += 1
            todo = failed
        for i in todo:  # broke the rules MAX_REDRAWS + 1 times: no molecule
            mols[i] = chem.DecodedMolecule("", False, 0)
        table = pd.DataFrame({"smiles": [d.smiles for d in mols], "selfies": selfies,
                              "valid": [bool(d.smiles) for d in mols]})
        table.attrs["redrawn"] = redrawn
        return table

    def iter_samples(self, n: int, *, decoding: Decoding | None = None, temperature: float | None = None,
                     greedy: bool = False, seed: int | None = None, batch_size: int = 1000, prior: str | None = None,
                     n_jobs: int = 1) -> Iterator[pd.DataFrame]:
        """Sample a prior in batches: yields tables of ``smiles, selfies, valid`` totalling ``n`` rows.

        Args:
            decoding: how z becomes a molecule (:class:`~molvae.config.Decoding`; default: ``Decoding()``).
            temperature, greedy: short forms that change ``decoding``'s temperature, or make it greedy.
            prior: ``"normal"`` (z ~ N(0, I)), the name of a fitted prior (:attr:`priors`), or
                ``None`` for the model's :attr:`default_prior`.
            seed: batch k draws everything from a seed derived from ``(seed, k)``, so the
                molecules depend on ``seed`` and ``batch_size`` only, not on ``n_jobs``.
            n_jobs: worker processes on the CPU (``<= 0``: every available core). Each holds a
                copy of the model and runs one torch thread; batches come back in order. Worth it
                from a few tens of thousands of molecules (a worker takes ~2 s to start).
        """
        if n < 0:
            raise InvalidInputError(f"number of molecules must be >= 0, got {n}")
        decoding = resolve_decoding(decoding, temperature, greedy)
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        name = self.resolve_prior(prior)
        base = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        tasks = ((min(batch_size, n - s), name, decoding, _batch_seed(base, k))
                 for k, s in enumerate(range(0, n, batch_size)))
        jobs = 1
        if self.device.type == "cpu" and n > batch_size:
            from .workers import resolve_jobs

            jobs = min(resolve_jobs(n_jobs), -(-n // batch_size))
        self.net.eval()
        if jobs <= 1:
            for task in tasks:
                yield self._sample_batch(*task)
            return
        yield from _parallel_batches(self, tasks, jobs)

    #: the largest sampling batch on the CPU: ~3 s of decoding on one core, so a stop between batches comes
    #: promptly, and a larger batch decodes no faster
    CPU_BATCH_CAP = 5000

    def batch_cap(self) -> int:
        """The largest sampling batch worth running on this model's device: :attr:`CPU_BATCH_CAP` on the CPU;
        on a GPU, the rows whose decoding state (hidden states, gates, three copies of the logits, the
        tokens; twice, for the allocator) fills half of the free memory."""
        if self.device.type != "cuda":
            return self.CPU_BATCH_CAP
        c = self.config
        floats = c.decoder_layers * c.decoder_hidden_dim * 7 + 3 * len(self.vocab)
        per_row = 2 * (4 * floats + 8 * c.max_len)
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(self.CPU_BATCH_CAP, int(free // 2 // per_row))

    def sample(self, n: int, *, decoding: Decoding | None = None, temperature: float | None = None,
               greedy: bool = False, seed: int | None = None, batch_size: int = 1000, prior: str | None = None,
               n_jobs: int = 1) -> pd.DataFrame:
        """``n`` molecules decoded from z drawn from ``prior`` (default: the model's default prior) under
        ``decoding``: a table of ``smiles, selfies, valid`` (see :meth:`iter_samples`)."""
        parts = list(self.iter_samples(n, decoding=decoding, temperature=temperature, greedy=greedy, seed=seed,
                                       batch_size=batch_size, prior=prior, n_jobs=n_jobs))
        if not parts:
            return pd.DataFrame({"smiles": [], "selfies": [], "valid": []})
        return pd.concat(parts, ignore_index=True)

    def __repr__(self) -> str:
        c = self.config
        return (f"MolVAE(latent_dim={c.latent_dim}, vocab={len(self.vocab)}, "
                f"params={self.net.n_parameters():,}, path={str(self.path) if self.path else None})")


#: Rounds of redrawing a sample that breaks its :class:`~molvae.config.Decoding`'s rules (then it is an invalid row).
MAX_REDRAWS = 20

#: Why a sample is redrawn, by the key :meth:`MolVAE.iter_samples` tables count them under (``attrs["redrawn"]``).
REDRAW_REASONS = {"radical": "unpaired electrons", "ring": "a ring over the size limit",
                  "ignored": "atom tokens SELFIES ignored"}


def resolve_decoding(decoding: Decoding | None = None, temperature: float | None = None, greedy: bool = False
                     ) -> Decoding:
    """``decoding`` (default ``Decoding()``) with the short forms applied: ``temperature`` replaces its
    temperature, ``greedy`` makes it greedy."""
    out = decoding if decoding is not None else Decoding()
    if not isinstance(out, Decoding):
        raise InvalidInputError(f"decoding must be a molvae.Decoding, got {type(out).__name__}")
    if temperature is not None:
        if not temperature > 0:
            raise InvalidInputError(f"temperature must be > 0, got {temperature}")
        out = out.replace(temperature=float(temperature))
    if greedy:
        out = out.replace(method="greedy")
    return out


def _batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` of a run seeded with ``seed`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


_WORKER_MODEL: MolVAE | None = None


def _init_sampler(payload: dict[str, Any]) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = MolVAE.from_payload(payload)


def _sample_in_worker(task: tuple) -> pd.DataFrame:
    assert _WORKER_MODEL is not None
    return _WORKER_MODEL._sample_batch(*task)


def _parallel_batches(model: MolVAE, tasks: Iterator[tuple], jobs: int) -> Iterator[pd.DataFrame]:
    """Run sampling tasks in ``jobs`` spawned processes, at most ``2 × jobs`` ahead of the consumer, in order."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    from .workers import crashed, pool_in

    # spawn, not fork: a forked child of a process that already ran OpenMP threads can hang in them.
    pool = pool_in(mp.get_context("spawn"), jobs, _init_sampler, (model.payload(),))
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(_sample_in_worker, task))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise crashed("sampling molecules", pool) from exc
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def torch_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``; ``None`` for ``seed=None``.

    The one seeding rule of every stochastic entry point: ``seed=None`` means torch's global random
    state (``torch.manual_seed`` makes it repeatable), and only the draws a call makes consume it, so
    a greedy decode inside training leaves the training's random stream untouched.
    """
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
