"""Latent-space property optimization: search a trained VAE's latent space for molecules that
score high on an objective.

Two methods: ``gradient`` (gradient ascent on the property head or a fitted surrogate,
decoding along the path) and ``bo`` (batch Bayesian optimization: Thompson sampling from a
local BoTorch GP in a TuRBO trust region). Both spend an oracle budget of distinct scored molecules, never
more, log every molecule seen, and support the constrained protocol of JT-VAE: improve
a start molecule while keeping Tanimoto similarity to it at or above a floor.

    >>> from molvae import MolVAE
    >>> from molvae.optimize import optimize
    >>> res = optimize(MolVAE.load("runs/zinc"), "qed", method="bo", budget=500, seed=0)
    >>> res.top.head(3)
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import chem
from ..errors import InvalidInputError
from ..objectives import Guards, Objective, parse_objective
from ..workers import stop_on_signals
from .base import BOSettings, GradientSettings, OptimizationResult, settings_from_dict
from .head import predict_properties
from .oracle import Oracle

__all__ = ["optimize", "OptimizationResult", "GradientSettings", "BOSettings", "Oracle", "METHODS",
           "predict_properties"]

log = logging.getLogger(__name__)

METHODS = ("bo", "gradient")


def optimize(model, objective: str | Objective, *, method: str = "bo", budget: int = 1000, seed: int | None = 0,
             start: str | None = None, min_similarity: float | None = None,
             init_smiles: Sequence[str] | None = None, init_scores: Sequence[float] | None = None,
             guards: Guards | None = None,
             log_path: str | Path | None = None, top_k: int = 10, progress: bool = False,
             settings: dict[str, Any] | GradientSettings | BOSettings | None = None,
             resume: str | Path | None = None) -> OptimizationResult:
    """Search ``model``'s latent space for molecules maximizing ``objective``.

    Args:
        model: a trained :class:`molvae.MolVAE`.
        objective: an objective string (``qed``, ``plogp``, ``qed+0.5*similarity:CCO``,
            ``module:function``; see :mod:`molvae.objectives`) or an :class:`Objective`.
        method: ``bo`` or ``gradient``.
        budget: most distinct molecules scored by the objective.
        seed: makes the run reproducible (same seed, model and settings: same log).
        start: a start molecule; with ``min_similarity``, the constrained protocol.
        min_similarity: Tanimoto floor to ``start``; molecules below it are never scored or returned.
        init_smiles: molecules to start from (e.g. the training set): encoded for the initial
            design; without them the initial design is decoded prior samples.
        guards: limits on scored molecules (default: at most 38 heavy atoms); ignored when
            ``objective`` is already an :class:`Objective`.
        log_path: CSV written as the search goes (``step, smiles, score, method, similarity, oracle_call, status``).
        top_k: rows of :attr:`OptimizationResult.top`.
        progress: a progress bar with the best score so far on stderr.
        settings: method settings (:class:`GradientSettings` / :class:`BOSettings` or a dict of their fields).
        resume: the log of an earlier run of the same objective (one stopped by a signal, or one that spent
            a smaller budget): its molecules are known to the oracle and never scored again, the oracle calls
            it holds count against ``budget``, its scored molecules start the search (the best first, as
            known scores do) and the new log (``log_path``) holds its rows before the new ones.

    While it runs, ``log_path`` is locked (``LOG.lock``): a second search writing the same log is refused.

    Raises:
        InvalidInputError: unknown method or objective, bad start molecule, similarity floor
            without a start, budget < 1, BoTorch missing for ``bo``, ``init_scores``
            without ``init_smiles`` or of another length.
    """
    from tqdm.auto import tqdm

    obj, settings = _check_options(method, objective, budget, start, min_similarity, guards, settings)
    canon_start = _start_molecule(model, start) if start else None
    init, known = _initial_design(init_smiles, init_scores)
    previous, source = _read_resumed(resume) if resume is not None else (None, None)
    if previous is not None:
        known = _with_logged(known, previous)
    seed_value = 0 if seed is None else int(seed)
    rng = np.random.default_rng(seed_value)
    if settings.retrain_every:
        import copy

        model = copy.deepcopy(model)    # weighted retraining fine-tunes the search's own copy
    model.net.eval()
    bar = tqdm(total=budget, desc=f"optimize {method}", unit="call", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    lock = None
    if log_path is not None:
        from ..checkpoint import FileLock

        lock = FileLock(Path(f"{log_path}.lock"), what=(log_path, "the optimization log"), error=InvalidInputError,
                        busy=f"{log_path}: another molvae optimize{{holder}} is writing this log; wait for it "
                             "to finish or log to another --out").acquire()
    try:
        oracle = Oracle(obj, budget, method=method, start=canon_start, min_similarity=min_similarity,
                        log_path=log_path, progress=bar)
        result = _search(model, obj, oracle, bar, method, budget, seed, seed_value, rng, settings, canon_start,
                         min_similarity, init, known, top_k, previous)
        if source is not None and source.name.startswith(".") and log_path is not None:
            source.unlink(missing_ok=True)  # a killed run's unfinished log: its rows are in the new log now
        return result
    finally:
        if lock is not None:
            lock.release()


def _search(model, obj, oracle, bar, method, budget, seed, seed_value, rng, settings, canon_start, min_similarity,
            init, known, top_k, previous) -> OptimizationResult:
    """The search itself, with ``oracle`` open: returns when the budget is spent, the method gives up or a
    signal stops it."""
    t0 = time.perf_counter()
    caught: list[int] = []

    def stop(signum: int) -> None:  # a scheduler's SIGTERM or Ctrl-C: finish the batch, keep everything
        caught.append(signum)
        oracle.stop(f"stopped by {signal.Signals(signum).name}")

    try:
        if previous is not None:
            oracle.replay(previous)
            log.info("resumed: %d molecules logged, %d oracle calls of the budget of %d", len(previous),
                     oracle.n_calls, budget)
        start_score = None
        if canon_start is not None:
            start_score = float(oracle([canon_start], step=0, method="start")[0])
            if not math.isfinite(start_score):
                reason = oracle.cache[canon_start].status
                raise InvalidInputError(f"start molecule {canon_start} cannot be scored ({reason})")
        with torch.random.fork_rng(devices=[]), stop_on_signals(stop):
            torch.manual_seed(seed_value)
            if method == "gradient":
                from .gradient import run_gradient

                reason = run_gradient(model, oracle, obj, settings, rng=rng, seed=seed_value, start=canon_start,
                                      init_smiles=init, known=known)
            else:
                from .bo import run_bo

                reason = run_bo(model, oracle, obj, settings, rng=rng, seed=seed_value, start=canon_start,
                                init_smiles=init, known=known)
    finally:
        bar.close()
        oracle.close()
    top = oracle.scored().head(top_k)[["smiles", "score", "step", "similarity"]].reset_index(drop=True)
    import dataclasses

    return OptimizationResult(
        method=method, objective=obj.name, budget=budget, n_calls=oracle.n_calls, seed=seed, top=top,
        log=oracle.log(), elapsed_s=time.perf_counter() - t0, start_smiles=canon_start, start_score=start_score,
        min_similarity=min_similarity, settings=dataclasses.asdict(settings), stop_reason=oracle.stopped or reason,
        objective_s=oracle.objective_s, stop_signal=caught[0] if caught else 0)


def _check_options(method: str, objective: str | Objective, budget: int, start: str | None,
                   min_similarity: float | None, guards: Guards | None, settings
                   ) -> tuple[Objective, GradientSettings | BOSettings]:
    """The objective and the method's settings, after checking the options :func:`optimize` takes."""
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InvalidInputError(f"budget must be a positive number of oracle calls, got {budget!r}")
    if min_similarity is not None and not 0.0 <= min_similarity <= 1.0:
        raise InvalidInputError(f"min_similarity must be in [0, 1], got {min_similarity}")
    if min_similarity is not None and not start:
        raise InvalidInputError("a similarity floor (min_similarity) needs a start molecule")
    obj = objective if isinstance(objective, Objective) else parse_objective(objective, guards)
    cls = GradientSettings if method == "gradient" else BOSettings
    if settings is None or isinstance(settings, dict):
        settings = settings_from_dict(cls, settings)
    elif not isinstance(settings, cls):
        raise InvalidInputError(f"settings for method {method!r} must be {cls.__name__}, got {type(settings).__name__}")
    return obj, settings


def _start_molecule(model, start: str) -> str:
    """The canonical start molecule, checked to be one the model can encode."""
    canon_start = chem.canonicalize(start)
    if canon_start is None:
        raise InvalidInputError(f"start molecule {start!r} is not a valid SMILES")
    ids, read, how = model.read(canon_start)
    if isinstance(ids, str):
        raise InvalidInputError(f"start molecule {start!r} cannot be encoded by this model: {ids}")
    if how:
        log.warning("start molecule %s read as %s (its %s form: the model lacks its tokens)", start, read,
                    "stereo-free" if how == "stereo" else "neutral" if how == "charge" else "stereo-free, neutral")
        return read
    return canon_start


def _read_resumed(path: str | Path):
    """The log a search resumes (the unfinished one of a killed run where there is one): refused when it is
    no optimization log."""
    from .oracle import LOG_COLUMNS, read_log, unfinished_log

    unfinished = unfinished_log(path)
    if unfinished is not None:
        log.warning("%s: the search writing it was killed; resuming from the log it left, %s", path, unfinished)
        path = unfinished
    elif not Path(path).is_file():
        raise InvalidInputError(f"{path}: no such log to resume")
    try:
        previous = read_log(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read the log to resume ({exc})") from exc
    missing = [c for c in LOG_COLUMNS if c not in previous.columns]
    if missing:
        raise InvalidInputError(f"{path}: not an optimization log (no column {', '.join(missing)}); expected the "
                                "--out log of an earlier molvae optimize")
    return previous, Path(path)


def _with_logged(known, previous):
    """``known`` with the scored molecules of a resumed log added (they start the search, best first)."""
    from .design import KnownSet

    called = previous[previous["oracle_call"]]
    scores = called["score"].astype(float).to_numpy()
    smiles = called["smiles"].astype(str).tolist()
    if known is not None:
        smiles, scores = known.smiles + smiles, np.concatenate([known.scores, scores])
    merged = KnownSet(smiles, scores)
    return merged if len(merged) else known


def _initial_design(init_smiles: Sequence[str] | None, init_scores: Sequence[float] | None):
    """``(distinct canonical initial molecules or None, their known scores as a KnownSet or None)``."""
    init = None
    known = None
    if init_scores is not None:
        if init_smiles is None:
            raise InvalidInputError("init_scores needs init_smiles (the molecules they score)")
        init_scores = np.asarray(init_scores, dtype=float).reshape(-1)
        if len(init_scores) != len(init_smiles):
            raise InvalidInputError(f"{len(init_smiles)} initial molecules but {len(init_scores)} initial scores")
    if init_smiles is not None:
        canon = [chem.canonicalize(s) for s in init_smiles]
        first = {}
        for i, c in enumerate(canon):
            if c and c not in first:
                first[c] = i
        init = list(first)
        if not init:
            raise InvalidInputError("none of the initial molecules is a valid SMILES")
        if init_scores is not None:
            from .design import KnownSet

            known = KnownSet(init, init_scores[list(first.values())])
            if not len(known):
                raise InvalidInputError("none of the initial scores is a finite number")
    return init, known
