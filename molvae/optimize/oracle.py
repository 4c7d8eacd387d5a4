"""The oracle: the one place an objective is called, with its budget, cache and log.

The budget counts *distinct molecules passed to the objective*. A molecule seen before
is answered from the cache and never charged again, whatever its score (NaN included).
Decodes that give no molecule, molecules a guard rejects and, in constrained mode,
molecules under the similarity floor never reach the objective and are not charged;
they are logged once with their reason. *Known* molecules (:meth:`Oracle.add_known`:
molecules whose score the caller already has, e.g. labelled training data) are cached
and logged uncharged with status ``known``; they teach the search but are not results.
The budget is never exceeded: when fewer calls remain than new molecules arrive, the
first ones (in order) are scored and the rest are left unscored.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import DataStructs

from .. import chem
from ..errors import InvalidInputError
from ..objectives import Objective

__all__ = ["Oracle", "LOG_COLUMNS", "read_log", "standard_log", "unfinished_log"]

#: ``oracle_call``: whether the row cost an oracle call (counted against the budget)
LOG_COLUMNS = ["step", "smiles", "score", "method", "similarity", "oracle_call", "status"]
#: names older logs used for today's columns
OLD_LOG_COLUMNS = {"charged": "oracle_call"}


def standard_log(log: pd.DataFrame) -> pd.DataFrame:
    """An optimization log with today's column names (an older log's ``charged`` is ``oracle_call``) and
    ``oracle_call`` as booleans (a CSV read back holds them as text)."""
    log = log.rename(columns={k: v for k, v in OLD_LOG_COLUMNS.items() if k in log.columns and v not in log.columns})
    if "oracle_call" in log.columns and log["oracle_call"].dtype != bool:
        log = log.assign(oracle_call=log["oracle_call"].astype(str).str.strip().str.lower().isin(("true", "1")))
    return log


def read_log(path: str | Path) -> pd.DataFrame:
    """An optimization log written by ``--out``/``log_path``, this version's or an older one. A last line cut
    short (the log of a killed run) is left out: its numbers may be cut too."""
    import io

    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return standard_log(pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""]))


def unfinished_log(path: str | Path) -> Path | None:
    """The log a killed search left beside ``path`` (it writes to a temporary file that replaces ``path`` at
    the end), when it is newer than ``path``."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"), key=lambda p: p.stat().st_mtime)
    if found and (not path.exists() or found[-1].stat().st_mtime >= path.stat().st_mtime):
        return found[-1]
    return None


@dataclass
class _Entry:
    score: float
    status: str
    similarity: float


class Oracle:
    """Scores molecules with ``objective`` within ``budget`` distinct calls, logging each.

    Args:
        objective: what to maximize (guards included).
        budget: most distinct molecules to score.
        method: written in the log's ``method`` column.
        start: the start molecule of constrained mode (canonical SMILES).
        min_similarity: in constrained mode, molecules with Tanimoto (Morgan r=2, 2048 bits)
            below this to ``start`` are rejected unscored.
        log_path: CSV file written row by row (``step, smiles, score, method, similarity,
            oracle_call, status``); ``None`` keeps the log in memory only.
        progress: a tqdm bar (total = budget) to advance, or ``None``.
    """

    def __init__(self, objective: Objective, budget: int, *, method: str = "", start: str | None = None,
                 min_similarity: float | None = None, log_path: str | Path | None = None, progress=None):
        if budget < 1:
            raise InvalidInputError(f"budget must be a positive number of oracle calls, got {budget}")
        if min_similarity is not None and start is None:
            raise InvalidInputError("a similarity floor needs a start molecule")
        self.objective = objective
        self.budget = int(budget)
        self.method = method
        self.start = start
        self.min_similarity = min_similarity
        self._start_fp = chem.morgan_fingerprint(start, 2, 2048) if start else None
        if start and self._start_fp is None:
            raise InvalidInputError(f"start molecule {start!r} is not a valid SMILES")
        self.cache: dict[str, _Entry] = {}
        self.rows: list[dict] = []
        self.n_calls = 0
        self.objective_s = 0.0      # seconds spent inside the objective (the rest of a search is overhead)
        self.best_score = -math.inf
        self.best_smiles: str | None = None
        self.stopped: str | None = None   # why the search was stopped early (a signal), see stop()
        self.step_offset = 0              # added to new rows' steps: a resumed log continues its numbering
        self.progress = progress
        self.t0 = time.perf_counter()
        self._log_file = None
        self._writer = None
        if log_path is not None:
            # The log grows in a temporary file beside ``log_path`` and replaces it at close(): an
            # existing log is never truncated by a search that then fails before scoring anything.
            import tempfile

            path = Path(log_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
            self._log_path, self._log_tmp = path, Path(tmp)
            self._log_file = open(fd, "w", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._log_file, fieldnames=LOG_COLUMNS)
            self._writer.writeheader()

    # ------------------------------------------------------------------ state
    @property
    def remaining(self) -> int:
        return self.budget - self.n_calls

    @property
    def exhausted(self) -> bool:
        """The budget is spent, or the search was asked to stop (:meth:`stop`)."""
        return self.n_calls >= self.budget or self.stopped is not None

    def stop(self, reason: str) -> None:
        """End the search after the oracle batch in progress: later calls score nothing new."""
        self.stopped = reason

    def similarity(self, smiles: str) -> float:
        """Tanimoto to the start molecule (NaN without one or for an invalid SMILES)."""
        if self._start_fp is None:
            return math.nan
        fp = chem.morgan_fingerprint(smiles, 2, 2048)
        return math.nan if fp is None else DataStructs.TanimotoSimilarity(self._start_fp, fp)

    def seen(self, smiles: str) -> bool:
        return smiles in self.cache

    def add_known(self, smiles: Sequence[str], scores: Sequence[float], step: int = 0,
                  method: str = "known") -> np.ndarray:
        """Record molecules whose scores are already known, without charging the budget.

        They are answered from the cache from now on (a search that decodes one again gets
        its known score for free) and are left out of :meth:`scored` unless asked for: a
        search's results are the molecules it found, not the ones it was given. A known
        molecule that a guard rejects, or that is under the similarity floor, is recorded
        with a NaN score, as the search would see it. Returns the scores as recorded.
        """
        smiles, scores = list(smiles), np.asarray(scores, dtype=float).reshape(-1)
        if len(smiles) != len(scores):
            raise InvalidInputError(f"{len(smiles)} known molecules but {len(scores)} scores")
        out = np.full(len(smiles), np.nan)
        for i, (s, v) in enumerate(zip(smiles, scores)):
            if not s:
                continue
            if s not in self.cache:
                sim = self.similarity(s)
                feasible = ((self.min_similarity is None or sim >= self.min_similarity)
                            and self.objective.reject_reason(s) is None)
                value = float(v) if feasible and math.isfinite(v) else math.nan
                self._record(step, s, value, method, sim, False, "known")
            out[i] = self.cache[s].score
        if self._log_file is not None:
            self._log_file.flush()
        return out

    def replay(self, previous: pd.DataFrame) -> None:
        """Take over an earlier run's log (:func:`read_log`): its rows go into this log as they were, its
        molecules are answered from the cache, and its oracle calls count against the budget. New rows
        continue its step numbers."""
        for r in previous.itertuples(index=False):  # read_log gives NaN for empty numbers
            self.n_calls += bool(r.oracle_call)
            self._record(int(r.step), str(r.smiles), float(r.score), str(r.method), float(r.similarity),
                         bool(r.oracle_call), str(r.status))
        if len(previous):
            self.step_offset = int(previous["step"].max()) + 1
        if self._log_file is not None:
            self._log_file.flush()

    # ------------------------------------------------------------------ scoring
    def __call__(self, smiles: Sequence[str], step: int = 0, method: str | None = None) -> np.ndarray:
        """Scores of ``smiles`` (canonical; '' = no molecule), NaN where not scored.

        New molecules are scored in order until the budget runs out; repeats come from the cache.
        """
        smiles = list(smiles)
        out = np.full(len(smiles), np.nan)
        method = method or self.method
        fresh: list[str] = []
        for s in smiles:
            if s and s not in self.cache and s not in fresh and self.stopped is None:
                fresh.append(s)
        to_score: list[str] = []
        for s in fresh:
            sim = self.similarity(s)
            if self.min_similarity is not None and not sim >= self.min_similarity:
                self._record(step, s, math.nan, method, sim, False, f"similarity {sim:.3f} < {self.min_similarity}")
                continue
            reason = self.objective.reject_reason(s)
            if reason is not None:
                self._record(step, s, math.nan, method, sim, False, reason)
                continue
            if len(to_score) >= self.remaining:
                break  # budget spent: leave the rest unscored and uncached
            to_score.append(s)
        if to_score:
            t0 = time.perf_counter()
            scores, reasons = self.objective.evaluate(to_score)
            self.objective_s += time.perf_counter() - t0
            for s, v, r in zip(to_score, scores, reasons):
                self.n_calls += 1
                self._record(step, s, float(v), method, self.similarity(s), True, r or "ok")
        for i, s in enumerate(smiles):
            e = self.cache.get(s)
            if e is not None:
                out[i] = e.score
        if self._log_file is not None:
            self._log_file.flush()
        return out

    def _record(self, step: int, smiles: str, score: float, method: str, sim: float, oracle_call: bool,
                status: str) -> None:
        step += self.step_offset
        self.cache[smiles] = _Entry(score, status, sim)
        known = status == "known"
        row = {"step": step, "smiles": smiles, "score": score, "method": method, "similarity": sim,
               "oracle_call": oracle_call, "status": status}
        self.rows.append(row)
        if self._writer is not None:
            self._writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        if (not known and math.isfinite(score) and score > self.best_score
                and (smiles != self.start or self.best_smiles is None)):
            self.best_score, self.best_smiles = score, smiles
        if self.progress is not None:
            if oracle_call:
                self.progress.update(1)
            if math.isfinite(self.best_score):
                self.progress.set_postfix_str(f"best {self.best_score:.3f}", refresh=False)

    # ------------------------------------------------------------------ results
    def log(self) -> pd.DataFrame:
        """Every molecule seen, in order: ``step, smiles, score, method, similarity, oracle_call, status``."""
        return pd.DataFrame(self.rows, columns=LOG_COLUMNS)

    def scored(self, exclude_start: bool = True, include_known: bool = False) -> pd.DataFrame:
        """Molecules with a finite score (feasible in constrained mode), best first; known
        molecules (:meth:`add_known`) only with ``include_known``."""
        df = self.log()
        df = df[np.isfinite(df["score"].astype(float))]
        if not include_known:
            df = df[df["status"] != "known"]
        if exclude_start and self.start is not None:
            df = df[df["smiles"] != self.start]
        return df.sort_values(["score", "step"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def close(self) -> None:
        """Close the log; it replaces ``log_path`` when it holds at least one molecule (a partial log
        of an interrupted search is kept), else the temporary file is removed."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            import os

            try:
                if self.rows:
                    os.chmod(self._log_tmp, 0o644)
                    os.replace(self._log_tmp, self._log_path)
                else:
                    self._log_tmp.unlink()
            except OSError:
                pass
