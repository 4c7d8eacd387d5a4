"""Everything a trained VAE is for besides sampling the prior.

- :func:`reconstruct` — encode + decode; exact-match flag and Tanimoto to the input.
- :func:`interpolate` — molecules along a linear or spherical path between two latents.
- :func:`neighbors` — molecules decoded around a lead molecule's latent vector.
- :func:`score` — per-molecule negative ELBO, an outlier score.
- :func:`sample_molecules` — the prior's samples, optionally only unique and/or novel ones, batch by batch.
- :func:`add_properties`, :func:`save_latents`, :func:`load_latents` — table and file helpers.

Every function takes a :class:`~molvae.core.MolVAE` and keeps the order of its inputs:
molecules the model cannot read get a row with a ``reason`` instead of disappearing.
Encoding and decoding themselves are :meth:`MolVAE.encode` and :meth:`MolVAE.decode`.

**What a high score means.** ``score`` is −ELBO = E_q[−log p(x|z)] + KL(q(z|x) ‖ p(z)) in
nats: an upper bound on −log p(x) under the model. A molecule the model finds hard to
reconstruct, or whose posterior sits far from the prior, scores high, i.e. it is *unlike the
training data* (long aliphatic chains, peptides, macrocycles for a drug-like training set). It
says nothing about whether the molecule is good, only whether it is typical. The sum grows
with the number of SELFIES tokens; ``score_per_token`` divides that out when molecules of
very different size are compared.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import chem
from .config import Decoding
from .core import MolVAE, torch_generator
from .errors import InvalidInputError
from .model import sequences_to_tensor
from .prior import GaussianMixturePrior

__all__ = [
    "PROPERTY_COLUMNS",
    "add_properties",
    "posterior",
    "reconstruct",
    "reconstruction_accuracy",
    "perturbation_quality",
    "fit_prior",
    "compare_priors",
    "interpolate",
    "slerp",
    "neighbors",
    "score",
    "sample_molecules",
    "reference_set",
    "UNIQUE_DRAWS_FACTOR",
    "save_latents",
    "load_latents",
    "latent_columns",
]

#: Property columns ``--properties`` adds (names of :data:`molvae.chem.PROPERTY_FUNCTIONS`).
PROPERTY_COLUMNS = ("qed", "logp", "sa", "mw", "heavy_atoms")


# ----------------------------------------------------------------------------- helpers

def add_properties(table: pd.DataFrame, smiles_column: str = "smiles",
                   names: Sequence[str] = PROPERTY_COLUMNS) -> pd.DataFrame:
    """``table`` with one column per property of ``smiles_column`` (NaN where it does not parse)."""
    if smiles_column not in table.columns:
        raise InvalidInputError(f"no column {smiles_column!r} to compute properties from; "
                                f"columns are {list(table.columns)}")
    props = chem.compute_properties([s if isinstance(s, str) else None for s in table[smiles_column]], names)
    out = table.copy()
    for name, values in props.items():
        out[name] = values
    return out


def _tokenize_all(model: MolVAE, smiles: Sequence[str]) -> tuple[list, list[str], list[str | None]]:
    """Token ids (or a reason string), canonical SMILES ('' for rejects) and reasons, in input order."""
    ids, read = model.read_many(smiles)
    reasons = [e if isinstance(e, str) else None for e in ids]
    canon = [c or "" for c in read]
    return ids, canon, reasons


def _batches(ok: list[int], ids: list, batch_size: int):
    """Indices of encodable molecules in length-sorted batches (less padding)."""
    order = sorted(ok, key=lambda i: len(ids[i]))
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]


def posterior(model: MolVAE, smiles: Sequence[str], *, batch_size: int = 512
              ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Posterior parameters of each molecule: ``(mu, logvar, reasons)`` (:meth:`MolVAE.posterior`).

    ``mu`` and ``logvar`` are ``(n, latent_dim)`` float32 with NaN rows where the model
    cannot read the molecule; ``reasons`` says why (``None`` for encoded rows).
    """
    return model.posterior(list(smiles), batch_size=batch_size)


def _posterior_from_ids(model: MolVAE, ids: list, reasons: list[str | None], batch_size: int):
    mu, logvar = model.posterior_of_ids(ids, batch_size)
    return mu, logvar, reasons


def _base_table(smiles: Sequence[str], canon: list[str], reasons: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame({"input": list(smiles), "smiles": canon,
                         "encoded": [r is None for r in reasons]})


# ----------------------------------------------------------------------------- reconstruct

@torch.no_grad()
def reconstruct(model: MolVAE, smiles: Sequence[str], *, n_decodes: int = 1, sample: bool | None = None,
                seed: int | None = 0, batch_size: int = 512) -> pd.DataFrame:
    """Encode and decode each molecule and compare the result with the input.

    With ``n_decodes=1`` (default) the posterior mean μ is decoded greedily: the
    deterministic reconstruction that training reports. With ``n_decodes=K > 1``, K latent
    vectors are drawn from q(z|x) (unless ``sample=False``) and each is decoded greedily;
    the most frequent decode is the reconstruction and ``exact_fraction`` is the share of
    the K decodes that give the input back (Gómez-Bombarelli et al. 2018 style).

    Returns:
        One row per input: ``input``, ``smiles`` (canonical input), ``encoded``,
        ``reconstructed``, ``exact`` (canonical match), ``tanimoto`` (Morgan-2 to the input),
        ``exact_fraction``, ``n_distinct`` and ``reason`` (why a row could not be encoded).
        :func:`reconstruction_accuracy` gives the overall figure.
    """
    if n_decodes < 1:
        raise InvalidInputError(f"n_decodes must be >= 1, got {n_decodes}")
    smiles = list(smiles)
    ids, canon, reasons = _tokenize_all(model, smiles)
    mu, logvar, _ = _posterior_from_ids(model, ids, reasons, batch_size)
    ok = np.array([r is None for r in reasons], dtype=bool)
    use_sample = (n_decodes > 1) if sample is None else bool(sample)
    rng = np.random.default_rng(seed)
    decodes: list[list[str]] = [[] for _ in smiles]
    if ok.any():
        m, lv = mu[ok], logvar[ok]
        for _ in range(n_decodes):
            z = m + np.exp(0.5 * lv) * rng.standard_normal(m.shape).astype(np.float32) if use_sample else m
            out = model.decode(z, greedy=True, batch_size=batch_size)["smiles"].tolist()
            for i, s in zip(np.flatnonzero(ok), out):
                decodes[i].append(s)
    rows = []
    for i, ds in enumerate(decodes):
        if not ds:
            rows.append(("", False, math.nan, math.nan, 0))
            continue
        counts = Counter(ds)
        best = max(counts.items(), key=lambda kv: kv[1])[0]  # ties -> first decoded (dict order)
        rows.append((best, bool(best) and best == canon[i], chem.tanimoto(canon[i], best) if best else 0.0,
                     counts[canon[i]] / len(ds), len(counts)))
    table = _base_table(smiles, canon, reasons)
    table["reconstructed"] = [r[0] for r in rows]
    table["exact"] = [r[1] for r in rows]
    table["tanimoto"] = [r[2] for r in rows]
    table["exact_fraction"] = [r[3] for r in rows]
    table["n_distinct"] = [r[4] for r in rows]
    table["reason"] = [r or "" for r in reasons]
    return table


def reconstruction_accuracy(table: pd.DataFrame) -> dict[str, float | int]:
    """Summary of a :func:`reconstruct` table over the molecules that could be encoded.

    Returns:
        ``accuracy`` (share of exact reconstructions), ``mean_exact_fraction``,
        ``mean_tanimoto``, ``n_encoded``, ``n_exact`` and ``n_rejected``; figures are NaN when
        nothing was encoded.
    """
    enc = table[table["encoded"]]
    n = len(enc)
    return {
        "accuracy": float(enc["exact"].mean()) if n else math.nan,
        "mean_exact_fraction": float(enc["exact_fraction"].mean()) if n else math.nan,
        "mean_tanimoto": float(enc["tanimoto"].mean()) if n else math.nan,
        "n_encoded": n,
        "n_exact": int(enc["exact"].sum()),
        "n_rejected": int(len(table) - n),
    }


@torch.no_grad()
def perturbation_quality(model: MolVAE, smiles: Sequence[str], *, scales: Sequence[float] = (0.5, 1.0, 2.0),
                         seed: int | None = 0, batch_size: int = 512) -> dict[str, object]:
    """How smooth the latent space is around real molecules.

    For each molecule that can be encoded, ``z = μ + s·σ·ε`` (one ε per molecule, the same ε for
    every scale ``s``) is decoded greedily. A smooth latent space gives back the input or a close
    analogue at ``s ≤ 1`` (the posterior's own width, which training sampled) and still a drug-like
    molecule at ``s = 2``; a rough one turns small steps into unrelated or strange molecules.

    Returns:
        ``n_encoded``, ``n_rejected`` and per scale (keyed ``"0.5"``, ``"1"``, ...):
        ``median_tanimoto`` (Morgan-2 to the input), ``mean_tanimoto``, ``exact`` (share decoding
        to the input), ``passes_filters`` (share of decodes passing the MOSES filters; invalid or
        empty decodes count as failing) and ``valid``.
    """
    from .metrics.filters import load_filters, passes_filters

    smiles = list(smiles)
    ids, canon, reasons = _tokenize_all(model, smiles)
    mu, logvar, _ = _posterior_from_ids(model, ids, reasons, batch_size)
    ok = np.array([r is None for r in reasons], dtype=bool)
    out: dict[str, object] = {"n_encoded": int(ok.sum()), "n_rejected": int((~ok).sum())}
    if not ok.any():
        return out
    m, sd = mu[ok], np.exp(0.5 * logvar[ok])
    eps = np.random.default_rng(seed).standard_normal(m.shape).astype(np.float32)
    inputs = [c for c, good in zip(canon, ok) if good]
    filters = load_filters()
    for s in scales:
        decoded = model.decode(m + float(s) * sd * eps, greedy=True, batch_size=batch_size)["smiles"].tolist()
        sims = np.array([chem.tanimoto(a, b) if b else 0.0 for a, b in zip(inputs, decoded)], dtype=float)
        mols = [chem.to_mol(b) if b else None for b in decoded]
        out[f"{s:g}"] = {
            "median_tanimoto": float(np.median(sims)),
            "mean_tanimoto": float(sims.mean()),
            "exact": float(np.mean([a == b for a, b in zip(inputs, decoded)])),
            "passes_filters": float(np.mean([passes_filters(x, filters) for x in mols])),
            "valid": float(np.mean([bool(b) for b in decoded])),
        }
    return out


# ----------------------------------------------------------------------------- learned prior

def fit_prior(model: MolVAE, smiles: Sequence[str], *, n_components: int = 32, n_fit: int = 50_000,
              seed: int = 0, name: str = "gmm", batch_size: int = 512) -> GaussianMixturePrior:
    """Fit a Gaussian mixture to the aggregate posterior of ``smiles`` and store it in ``model.priors[name]``.

    A seeded subset of at most ``n_fit`` molecules (use the training set: the prior should cover
    what the decoder learned) is encoded; one draw z = μ + σ·ε per molecule is a sample of the
    aggregate posterior q(z), and the mixture is fitted to those draws (see :mod:`molvae.prior`).
    The model's :attr:`~MolVAE.default_prior` is left as it is; save the model to keep the prior.

    Raises:
        InvalidInputError: too few molecules could be encoded for ``n_components``.
    """
    smiles = list(smiles)
    rng = np.random.default_rng(seed)
    if len(smiles) > n_fit:
        smiles = [smiles[i] for i in sorted(rng.choice(len(smiles), size=n_fit, replace=False).tolist())]
    mu, logvar, reasons = posterior(model, smiles, batch_size=batch_size)
    ok = np.array([r is None for r in reasons], dtype=bool)
    m, lv = mu[ok], logvar[ok]
    z = m + np.exp(0.5 * lv) * rng.standard_normal(m.shape).astype(np.float32)
    prior = GaussianMixturePrior.fit(z, n_components=n_components, seed=seed,
                                     info={"n_molecules": len(smiles), "n_rejected": int((~ok).sum()),
                                           "fitted_to": "one draw mu + sigma*eps per molecule"})
    model.priors[name] = prior
    return prior


def compare_priors(model: MolVAE, reference: Sequence[str], *, n: int = 2000, seed: int = 0,
                   priors: Sequence[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Sample ``n`` molecules from each prior and measure them against ``reference`` molecules.

    Returns, per prior name: ``FCD`` (Fréchet ChemNet Distance to ``reference``; needs the
    ``fcd`` package), ``Filters`` (share passing the MOSES filters) and ``unique``. Use held-out
    molecules of the training distribution as ``reference``. At n = 2,000 the figures are
    comparable between priors of one model, not with the 30,000-sample MOSES protocol.
    """
    from .metrics.chemnet import frechet_distance
    from .metrics.suite import describe

    ref = describe(list(reference), with_fcd=True)
    out: dict[str, dict[str, float | None]] = {}
    for name in priors or model.available_priors():
        smiles = model.sample(n, seed=seed, prior=name)["smiles"].tolist()
        gen = describe(smiles, with_fcd=True, filters=True)
        out[name] = {"FCD": frechet_distance(gen.fcd, ref.fcd),
                     "Filters": float(gen.weights[gen.filters].sum() / gen.n_valid) if gen.n_valid else None,
                     "unique": len(set(s for s in smiles if s)) / n if n else None}
    return out


# ----------------------------------------------------------------------------- interpolate

def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation between vectors ``a`` and ``b`` (White 2016) at ``t`` in [0, 1].

    Returns ``(len(t), dim)``; falls back to a straight line when ``a`` and ``b`` are
    (anti)parallel or one is zero. ``t=0`` gives ``a`` and ``t=1`` gives ``b``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0))
    omega = math.acos(cos)
    if math.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)


def _encode_one(model: MolVAE, smiles: str, what: str) -> tuple[np.ndarray, str]:
    ids, canon, reasons = _tokenize_all(model, [smiles])
    if reasons[0] is not None:
        raise InvalidInputError(f"{what} {smiles!r} cannot be encoded by this model: {reasons[0]}")
    mu, _, _ = _posterior_from_ids(model, ids, reasons, 1)
    return mu[0], canon[0]


@torch.no_grad()
def interpolate(model: MolVAE, smiles_a: str, smiles_b: str, *, steps: int = 10, spherical: bool = False,
                dedupe: bool = True) -> pd.DataFrame:
    """Molecules decoded (greedily) at ``steps`` evenly spaced points from μ(A) to μ(B).

    The first point is μ(A) and the last μ(B), so the path starts at A and ends at B
    whenever the model reconstructs them. ``spherical`` follows a great circle
    (:func:`slerp`), which keeps the norm typical of the prior in high dimensions.

    Returns:
        ``step`` (0-based point index), ``position`` (t in [0, 1]), ``smiles``, ``valid``,
        ``tanimoto_a``, ``tanimoto_b`` and ``n_points`` (how many consecutive points
        decoded to the molecule). With ``dedupe`` each molecule appears once, at the first
        position where it was decoded.
    """
    if steps < 2:
        raise InvalidInputError(f"steps must be >= 2 (the two end points included), got {steps}")
    za, ca = _encode_one(model, smiles_a, "molecule A")
    zb, cb = _encode_one(model, smiles_b, "molecule B")
    t = np.linspace(0.0, 1.0, steps)
    z = slerp(za, zb, t) if spherical else (1 - t)[:, None] * za[None] + t[:, None] * zb[None]
    decoded = model.decode(z.astype(np.float32), greedy=True)["smiles"].tolist()
    rows = []
    for k, (pos, s) in enumerate(zip(t, decoded)):
        if dedupe and rows and rows[-1]["smiles"] == s:
            rows[-1]["n_points"] += 1
            continue
        rows.append({"step": k, "position": round(float(pos), 6), "smiles": s, "valid": bool(s), "n_points": 1})
    if dedupe:
        seen: set[str] = set()
        unique = []
        for r in rows:
            if r["smiles"] in seen:
                # the path came back to an earlier molecule: count it there
                next(u for u in unique if u["smiles"] == r["smiles"])["n_points"] += r["n_points"]
                continue
            seen.add(r["smiles"])
            unique.append(r)
        rows = unique
    table = pd.DataFrame(rows, columns=["step", "position", "smiles", "valid", "n_points"])
    table["tanimoto_a"] = [chem.tanimoto(ca, s) if s else math.nan for s in table["smiles"]]
    table["tanimoto_b"] = [chem.tanimoto(cb, s) if s else math.nan for s in table["smiles"]]
    return table[["step", "position", "smiles", "valid", "tanimoto_a", "tanimoto_b", "n_points"]]


# ----------------------------------------------------------------------------- neighbors

@torch.no_grad()
def neighbors(model: MolVAE, smiles: str, *, n: int = 50, radius: float = 0.5, seed: int | None = 0,
              max_draws: int | None = None, include_lead: bool = False, properties: bool = True,
              batch_size: int = 500) -> pd.DataFrame:
    """Distinct molecules decoded around a lead: z = μ(lead) + radius·ε, ε ~ N(0, I).

    ``radius`` is the noise scale per latent dimension, in units of the prior's standard
    deviation (the typical distance from μ is ``radius·√latent_dim``; ``distance`` reports
    the actual one). Latent points are drawn in batches until ``n`` distinct valid
    molecules are found or ``max_draws`` (default ``20·n``) points were decoded.

    Returns:
        Up to ``n`` rows sorted by ``tanimoto`` to the lead (high first): ``smiles``,
        ``tanimoto``, ``distance`` (latent distance of the closest point that gave the
        molecule), ``count`` (points that decoded to it) and, with ``properties``, QED, logP,
        SA, MW and heavy atoms.
    """
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    if not radius > 0:
        raise InvalidInputError(f"radius must be > 0, got {radius}")
    mu, lead = _encode_one(model, smiles, "lead")
    max_draws = max_draws or 20 * n
    rng = np.random.default_rng(seed)
    found: dict[str, dict] = {}
    draws = 0
    while draws < max_draws and len(found) < n:
        m = min(batch_size, max_draws - draws)
        eps = rng.standard_normal((m, mu.shape[0])).astype(np.float32)
        z = mu[None] + radius * eps
        decoded = model.decode(z, greedy=True, batch_size=batch_size)["smiles"].tolist()
        dist = np.linalg.norm(z - mu[None], axis=1)
        draws += m
        for s, d in zip(decoded, dist):
            if not s or (s == lead and not include_lead):
                continue
            entry = found.get(s)
            if entry is None:
                found[s] = {"smiles": s, "distance": float(d), "count": 1}
            else:
                entry["count"] += 1
                entry["distance"] = min(entry["distance"], float(d))
    rows = list(found.values())
    for r in rows:
        r["tanimoto"] = chem.tanimoto(lead, r["smiles"])
    table = pd.DataFrame(rows, columns=["smiles", "distance", "count", "tanimoto"])
    table = table.sort_values(["tanimoto", "distance"], ascending=[False, True], kind="stable").head(n)
    table = table[["smiles", "tanimoto", "distance", "count"]].reset_index(drop=True)
    if properties:
        table = add_properties(table)
    return table


# ----------------------------------------------------------------------------- score

@torch.no_grad()
def score(model: MolVAE, smiles: Sequence[str], *, n_samples: int = 8, seed: int | None = 0,
          batch_size: int = 256) -> pd.DataFrame:
    """Per-molecule negative ELBO (nats), averaged over ``n_samples`` posterior samples.

    ``score = recon + kl`` where ``recon`` is the summed token cross-entropy of the
    teacher-forced decoder given z ~ q(z|x) and ``kl`` is KL(q(z|x) ‖ N(0, I)): an upper
    bound on −log p(x). **High means unlike the training data**; see the module docstring.
    Molecules the model cannot read at all (a token outside its vocabulary, too long,
    unparsable) get NaN and a ``reason``: they are even further from the training data.

    Returns:
        ``input``, ``smiles`` (canonical), ``encoded``, ``score``, ``recon``, ``kl``,
        ``n_tokens`` (SELFIES tokens + end token), ``score_per_token`` and ``reason``.
    """
    if n_samples < 1:
        raise InvalidInputError(f"n_samples must be >= 1, got {n_samples}")
    smiles = list(smiles)
    ids, canon, reasons = _tokenize_all(model, smiles)
    n = len(smiles)
    recon = np.full(n, np.nan)
    kl = np.full(n, np.nan)
    n_tokens = np.zeros(n, dtype=np.int64)
    ok = [i for i, r in enumerate(reasons) if r is None]
    device = model.device
    gen = torch_generator(seed, device)
    model.net.eval()
    for idx in _batches(ok, ids, batch_size):
        tokens, lengths = sequences_to_tensor([ids[i] for i in idx], model.vocab.eos_id, model.vocab.pad_id)
        tokens = tokens.to(device)
        r_sum = torch.zeros(len(idx), dtype=torch.float64)
        k_sum = torch.zeros(len(idx), dtype=torch.float64)
        for _ in range(n_samples):
            out = model.net(tokens, lengths, sample=True, generator=gen)
            r_sum += out.recon.double().cpu()
            k_sum += out.kl.double().cpu()
        recon[idx] = (r_sum / n_samples).numpy()
        kl[idx] = (k_sum / n_samples).numpy()
        n_tokens[idx] = lengths.numpy()
    table = _base_table(smiles, canon, reasons)
    table["score"] = recon + kl
    table["recon"] = recon
    table["kl"] = kl
    table["n_tokens"] = n_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        table["score_per_token"] = np.where(n_tokens > 0, (recon + kl) / np.maximum(n_tokens, 1), np.nan)
    table["reason"] = [r or "" for r in reasons]
    return table


# ----------------------------------------------------------------------------- latent files

LATENT_SUFFIXES = (".npy", ".csv", ".parquet")


# ----------------------------------------------------------------------------- sampling with filters

#: With ``unique`` or ``exclude``, :func:`sample_molecules` stops after this many draws per molecule asked for.
UNIQUE_DRAWS_FACTOR = 50


def reference_set(path: str | os.PathLike, *, keep_largest_fragment: bool = True) -> set[str]:
    """Canonical SMILES of the molecules in a file (for ``exclude`` of :func:`sample_molecules`), each read as
    training reads it: with ``keep_largest_fragment`` (training's default) a salt ``CC(=O)[O-].[Na+]`` is
    ``CC(=O)[O-]``, the molecule a model trained on it writes."""
    from .data import read_molecules

    return {c for c in (chem.canonicalize(s, keep_largest_fragment=keep_largest_fragment)
                        for s in read_molecules(path)["input"]) if c}


def sample_molecules(model: MolVAE, n: int, *, decoding: Decoding | None = None, temperature: float | None = None,
                     greedy: bool = False, seed: int | None = None, batch_size: int = 1000, prior: str | None = None,
                     n_jobs: int = 1, unique: bool = False, exclude: set[str] | None = None,
                     redrawn: dict[str, int] | None = None
                     ) -> Iterator[tuple[list[tuple[str, str, bool]], int]]:
    """Sample ``model``'s prior batch by batch until ``n`` molecules are kept.

    Without filters every draw is kept (invalid ones included, as :meth:`MolVAE.iter_samples`
    gives them). With ``unique`` or ``exclude`` (canonical SMILES, e.g. :func:`reference_set` of the
    training set) only valid, distinct molecules absent from ``exclude`` are kept, drawing at most
    :data:`UNIQUE_DRAWS_FACTOR` × ``n`` molecules; fewer than ``n`` come back when that is not enough.
    The draws of a seeded run restart their seed at ``seed + draws so far`` for each round.
    ``decoding`` (:class:`~molvae.config.Decoding`, with the ``temperature``/``greedy`` short forms) says how z
    becomes a molecule; ``redrawn``, a dict, is filled with the samples redrawn for breaking its rules, by reason.

    Yields:
        ``(rows, draws)``: the kept ``(smiles, selfies, valid)`` rows of one batch (never more
        than ``n`` in all) and the number of molecules drawn so far. Stopping the iteration
        between batches is safe: every yielded batch is complete.
    """
    filtering = unique or exclude is not None
    max_draws = UNIQUE_DRAWS_FACTOR * n if filtering else n
    seen: set[str] = set()
    kept = draws = 0
    while kept < n and draws < max_draws:
        want = min(batch_size, max_draws - draws) if filtering else n - kept
        for chunk in model.iter_samples(want, decoding=decoding, temperature=temperature, greedy=greedy,
                                        seed=None if seed is None else seed + draws, batch_size=batch_size,
                                        prior=prior, n_jobs=n_jobs):
            draws += len(chunk)
            if redrawn is not None:
                for reason, k in chunk.attrs.get("redrawn", {}).items():
                    redrawn[reason] = redrawn.get(reason, 0) + k
            rows = []
            for smi, sel, valid in chunk.itertuples(index=False):
                if filtering:
                    if not valid or smi in seen or (exclude is not None and smi in exclude):
                        continue
                    seen.add(smi)
                rows.append((smi, sel, valid))
                if kept + len(rows) >= n:
                    break
            kept += len(rows)
            yield rows, draws
            if kept >= n:
                break


def latent_columns(dim: int) -> list[str]:
    """Column names of latent vectors in a table: ``z0 .. z{dim-1}``."""
    return [f"z{i}" for i in range(dim)]


def _require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        try:
            import fastparquet  # noqa: F401
        except ImportError as exc:
            raise InvalidInputError("parquet files need pyarrow: pip install pyarrow "
                                    "(or write .npy or .csv instead)") from exc


def save_latents(path: str | os.PathLike, z: np.ndarray, table: pd.DataFrame | None = None) -> Path:
    """Write latent vectors ``z (n, dim)``: ``.npy`` (the matrix alone, NaN rows kept) or
    ``.csv``/``.parquet`` (``table``'s columns, e.g. ``row, input, reason``, then ``z0..``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise InvalidInputError(f"latent file {path} must end in {', '.join(LATENT_SUFFIXES)}")
    from .checkpoint import atomic_path

    z = np.asarray(z, dtype=np.float32)
    if suffix == ".parquet":
        _require_parquet()
    with atomic_path(path) as tmp:  # never a truncated file, never an old one half replaced
        if suffix == ".npy":
            np.save(tmp, z)
            return path
        frame = pd.DataFrame(z, columns=latent_columns(z.shape[1]))
        if table is not None:
            frame = pd.concat([table.reset_index(drop=True), frame], axis=1)
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def load_latents(path: str | os.PathLike) -> np.ndarray:
    """Read latent vectors written by :func:`save_latents` (or any ``.npy`` 2-D float array,
    or a CSV/parquet table with columns ``z0, z1, ...``): ``(n, dim)`` float32, NaN rows kept."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such latent file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidInputError(f"{path}: not a readable .npy array ({exc})") from exc
    elif suffix in (".csv", ".parquet"):
        if suffix == ".parquet":
            _require_parquet()
            frame = pd.read_parquet(path)
        else:
            try:
                frame = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"{path}: not a readable CSV table ({exc})") from exc
        cols = [c for c in frame.columns if isinstance(c, str) and c[:1] == "z" and c[1:].isdigit()]
        cols.sort(key=lambda c: int(c[1:]))
        if not cols:
            raise InvalidInputError(f"{path}: no latent columns z0, z1, ...; columns are {list(frame.columns)[:8]}")
        z = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy()
    else:
        raise InvalidInputError(f"latent file {path} must end in {', '.join(LATENT_SUFFIXES)}")
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.number):
        raise InvalidInputError(f"{path}: expected a 2-D numeric array (n, latent_dim), got shape {z.shape}")
    return z.astype(np.float32)
