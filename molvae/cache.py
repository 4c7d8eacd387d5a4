"""Preprocessing cache: clean and tokenize a molecule file once, reuse it in every later run.

Cleaning a million SMILES (RDKit parse and canonicalization, SELFIES encoding) takes
minutes even in parallel; loading the result takes a second. :func:`prepare_file` keys
the result by the SHA-256 of the input file's bytes and every setting that changes the
output (SMILES column, largest-fragment handling, ``max_len``, property columns, and
the versions of molvae, RDKit and selfies), so a stale entry is never used: any change
gives a new key.

One entry is a folder ``<cache dir>/<key>/``::

    meta.json        settings, counts, format version (written last: its presence marks a complete entry)
    ids.npy          (total_tokens,) int16/int32 token ids, all molecules back to back (memory-mapped)
    offsets.npy      (n + 1,) int64: molecule i is ids[offsets[i]:offsets[i+1]] (memory-mapped)
    rows.npy         (n,) input row of each kept molecule
    smiles.txt       canonical SMILES, one per line
    vocab.json       the vocabulary (a list of tokens)
    rejected.csv     row, input, reason of every rejected input row
    properties.npy   (n, P) float64 property targets (only with property columns)

The cache folder is ``$MOLVAE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/molvae``, else
``~/.cache/molvae``. Entries are written to a temporary folder and renamed into place,
so concurrent runs and crashes never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data as data_mod
from ._version import versions
from .vocab import Vocabulary

__all__ = ["default_cache_dir", "cache_key", "prepare_file", "save_prepared", "load_prepared",
           "CACHE_FORMAT"]

log = logging.getLogger(__name__)

# Bump when the stored layout or the meaning of the preprocessing changes.
CACHE_FORMAT = 1


def default_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The one cache folder (preprocessing and metrics): ``path`` if given, else ``$MOLVAE_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/molvae``, else ``~/.cache/molvae``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("MOLVAE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "molvae"


def cache_key(source_hash: str, settings: dict[str, Any]) -> str:
    """Folder name of the entry for a file with SHA-256 ``source_hash`` cleaned under ``settings``."""
    blob = json.dumps({"source": source_hash, "settings": settings, "format": CACHE_FORMAT,
                       "versions": versions("molvae", "rdkit", "selfies")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare_file(path: str | os.PathLike, *, smiles_column: str | None = None, largest_fragment: bool = True,
                 max_len: int | None = None, property_columns: Sequence[str] = (), n_jobs: int = 0,
                 show_progress: bool = False, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, source_hash: str | None = None) -> data_mod.PreparedData:
    """:func:`molvae.data.prepare` of a molecule file, through the cache.

    A hit loads the stored entry (token arrays memory-mapped); a miss reads and
    cleans the file in ``n_jobs`` processes (0 = all cores) and stores the result.
    ``prepared.extra["cache"]`` says which happened and where.

    Raises:
        InvalidInputError: as :func:`molvae.data.read_molecules` and :func:`molvae.data.prepare`.
    """
    path = Path(path)
    if not path.is_file():
        data_mod.read_molecules(path, smiles_column)  # raises the reader's own error for a missing file or folder
    source_hash = source_hash or data_mod.file_hash(path)
    settings = {"smiles_column": smiles_column, "largest_fragment": bool(largest_fragment),
                "max_len": max_len, "property_columns": list(property_columns)}
    key = cache_key(source_hash, settings)
    root = default_cache_dir(cache_dir)
    entry = root / key
    if use_cache and (entry / "meta.json").is_file():
        t0 = time.perf_counter()
        try:
            prepared = load_prepared(entry)
        except Exception as exc:  # a damaged entry is rebuilt, never trusted
            log.warning("preprocessing cache entry %s is unreadable (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            if prepared.source_hash == source_hash:
                log.info("preprocessed data loaded from the cache %s in %.1f s", entry, time.perf_counter() - t0)
                prepared.extra["cache"] = {"hit": True, "path": str(entry)}
                return prepared
    t0 = time.perf_counter()
    table = data_mod.read_molecules(path, smiles_column)
    prepared = data_mod.prepare(table, largest_fragment=largest_fragment, max_len=max_len,
                                property_columns=property_columns, n_jobs=n_jobs, show_progress=show_progress)
    del table
    prepared.source_hash = source_hash
    elapsed = time.perf_counter() - t0
    prepared.extra["cache"] = {"hit": False, "path": str(entry) if use_cache else None,
                               "preprocess_s": elapsed}
    if use_cache:
        try:
            save_prepared(prepared, entry, settings={**settings, "source": str(path.resolve()),
                                                     "preprocess_s": round(elapsed, 2)})
            log.info("preprocessed %d molecules in %.1f s; cached in %s", prepared.n_input, elapsed, entry)
        except OSError as exc:  # a read-only or full disk must not stop training
            log.warning("could not write the preprocessing cache %s (%s)", entry, exc)
    return prepared


def save_prepared(prepared: data_mod.PreparedData, entry: str | os.PathLike,
                  settings: dict[str, Any] | None = None) -> Path:
    """Store ``prepared`` as the cache entry folder ``entry`` (atomically: temp folder, then rename)."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "ids.npy", np.ascontiguousarray(prepared.tokens.ids))
        np.save(tmp / "offsets.npy", np.ascontiguousarray(prepared.tokens.offsets, dtype=np.int64))
        np.save(tmp / "rows.npy", np.asarray(prepared.rows, dtype=np.int64))
        with open(tmp / "smiles.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(prepared.smiles))
        (tmp / "vocab.json").write_text(json.dumps(prepared.vocab.to_list()), encoding="utf-8")
        prepared.rejected.to_csv(tmp / "rejected.csv", index=False)
        prop_names: list[str] = []
        if prepared.properties is not None:
            prop_names = [str(c) for c in prepared.properties.columns]
            np.save(tmp / "properties.npy", prepared.properties.to_numpy(dtype=np.float64))
        meta = {"format": CACHE_FORMAT, "versions": versions("molvae", "rdkit", "selfies"), "source_hash": prepared.source_hash,
                "n_input": int(prepared.n_input), "n_molecules": len(prepared),
                "n_duplicates": int(prepared.n_duplicates), "property_names": prop_names,
                "has_properties": prepared.properties is not None, "settings": settings or {}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process stored the same entry first (the target folder is not empty): keep theirs.
            if not (entry / "meta.json").is_file():
                shutil.rmtree(entry, ignore_errors=True)
                os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def load_prepared(entry: str | os.PathLike, mmap: bool = True) -> data_mod.PreparedData:
    """Read a cache entry folder written by :func:`save_prepared`.

    Token arrays are memory-mapped (read-only): a million molecules open instantly and
    pages are shared between processes (e.g. the ranks of a distributed run).
    """
    entry = Path(entry)
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache format {meta.get('format')}, expected {CACHE_FORMAT}")
    mode = "r" if mmap else None
    ids = np.load(entry / "ids.npy", mmap_mode=mode)
    offsets = np.load(entry / "offsets.npy", mmap_mode=mode)
    rows = np.load(entry / "rows.npy")
    text = (entry / "smiles.txt").read_text(encoding="utf-8")
    smiles = text.split("\n") if text else []
    if len(smiles) != meta["n_molecules"] or len(offsets) != len(smiles) + 1 or len(rows) != len(smiles):
        raise ValueError("entry is inconsistent (molecule counts differ between files)")
    if int(offsets[-1]) != len(ids):
        raise ValueError("entry is inconsistent (offsets do not cover the token ids)")
    vocab = Vocabulary.from_list(json.loads((entry / "vocab.json").read_text(encoding="utf-8")))
    rejected = pd.read_csv(entry / "rejected.csv", dtype={"input": str, "reason": str}, keep_default_na=False)
    if len(rejected) == 0:
        rejected = pd.DataFrame({"row": pd.Series(dtype=np.int64), "input": pd.Series(dtype=str),
                                 "reason": pd.Series(dtype=str)})
    properties = None
    if meta.get("has_properties"):
        values = np.load(entry / "properties.npy")
        properties = pd.DataFrame(values, columns=meta["property_names"])
    return data_mod.PreparedData(
        smiles=smiles, rows=rows, tokens=data_mod.TokenData(ids=ids, offsets=offsets), vocab=vocab,
        rejected=rejected, n_input=int(meta["n_input"]), n_duplicates=int(meta["n_duplicates"]),
        properties=properties, source_hash=meta.get("source_hash"))
