"""Reading molecule files, cleaning them into token ids, splitting and batching.

Data flow: a file (csv/csv.gz/tsv/smi/txt/sdf) -> :func:`read_molecules` (a table
with ``row`` and ``input``) -> :func:`prepare` (canonicalize, keep the largest
fragment, SELFIES-encode, dedupe, reject with a reason) -> :class:`TokenData`
(flat token ids + offsets) -> length-bucketed :class:`Batch` tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import chem
from .errors import InvalidInputError
from .vocab import Vocabulary

__all__ = [
    "read_molecules",
    "find_smiles_column",
    "prepare",
    "PreparedData",
    "TokenData",
    "Batch",
    "split_indices",
    "bucket_batches",
    "file_hash",
]

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".tsv"}
LINE_SUFFIXES = {".smi", ".txt", ".smiles"}
SDF_SUFFIXES = {".sdf", ".sd", ".mol"}
READ_ERROR = "_read_error"   # column of read_molecules' table: why a record could not be read ('' if it could)


def _suffix(path: Path) -> tuple[str, bool]:
    """The format suffix of ``path`` and whether it is gzip-compressed."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def _read_text(path: Path, compressed: bool) -> str:
    try:
        raw = gzip.open(path, "rb").read() if compressed else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InvalidInputError(f"{path}: could not read the file ({exc})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[exc.start]:#04x}); expected a UTF-8 text file"
        ) from None


def find_smiles_column(columns: Sequence[str], requested: str | None = None, *, source: str = "input") -> str:
    """Pick the SMILES column: ``requested`` if given, else one named ``smiles`` (any case), else the only column."""
    columns = [str(c) for c in columns]
    if requested is not None:
        if requested in columns:
            return requested
        matches = [c for c in columns if c.lower() == requested.lower()]
        if len(matches) == 1:
            return matches[0]
        raise InvalidInputError(f"{source}: no column {requested!r}; columns are {columns}")
    matches = [c for c in columns if c.strip().lower() == "smiles"]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidInputError(
            f"{source}: ambiguous SMILES column: several columns are named 'smiles' ({matches}); "
            "choose one with --smiles-column")
    # No exact 'smiles': one column whose name contains it (canonical_smiles) is taken,
    # several (PubChem's CanonicalSMILES and IsomericSMILES) are ambiguous.
    like = [c for c in columns if "smiles" in c.lower()]
    if len(like) == 1:
        log.info("%s: using column %r for SMILES", source, like[0])
        return like[0]
    if len(like) > 1:
        raise InvalidInputError(
            f"{source}: ambiguous SMILES column: several columns look like SMILES ({like}); "
            "choose one with --smiles-column")
    if len(columns) == 1:
        return columns[0]
    raise InvalidInputError(
        f"{source}: no 'smiles' column among {columns}; expected a column named 'smiles', "
        "or name the SMILES column with --smiles-column")


def read_molecules(path: str | os.PathLike, smiles_column: str | None = None) -> pd.DataFrame:
    """Read a molecule file into a table with ``row`` (1-based record number) and ``input`` (the SMILES text).

    Other columns of a CSV (names, properties) are kept beside them. Formats:
    ``.csv``/``.tsv`` (header row; the SMILES column is found by name or is the
    only column), ``.smi``/``.txt`` (one SMILES per line, optional name after
    whitespace, optional ``smiles`` header line), ``.sdf``; any of them gzipped.

    Raises:
        InvalidInputError: missing or empty file, no usable SMILES column, non-UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder; expected a file of SMILES")
    suffix, compressed = _suffix(path)
    if suffix in SDF_SUFFIXES:
        return _read_sdf(path, compressed)
    text = _read_text(path, compressed)
    if not text.strip():
        raise InvalidInputError(f"{path}: the file is empty; expected SMILES")
    if suffix in LINE_SUFFIXES or (suffix not in TABLE_SUFFIXES and not _looks_like_table(text)):
        return _read_lines(path, text)
    return _read_table(path, text, "\t" if suffix == ".tsv" else ",", smiles_column)


def _looks_like_table(text: str) -> bool:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return "," in first or first.strip().lower() == "smiles"


def _read_table(path: Path, text: str, sep: str, smiles_column: str | None) -> pd.DataFrame:
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise InvalidInputError(f"{path}: the file is empty; expected a header row and SMILES") from None
    except pd.errors.ParserError as exc:
        raise InvalidInputError(f"{path}: not a valid CSV table ({str(exc).strip().splitlines()[-1]})") from None
    if not isinstance(df.index, pd.RangeIndex):
        # pandas takes the extra leading fields of rows longer than the header as an
        # index, which would shift every value into the wrong column.
        raise InvalidInputError(
            f"{path}: row 1 has more fields than the {len(df.columns)} columns of the header {list(df.columns)}; "
            "expected one value per column (quote fields that contain the separator)")
    if (smiles_column is None and len(df.columns) == 1 and "smiles" not in str(df.columns[0]).lower()
            and chem.to_mol(str(df.columns[0])) is not None):
        # A one-column file without a header: its first line is a molecule, not a column name.
        log.info("%s: no header row (the first line %r is a SMILES)", path, str(df.columns[0]))
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True,
                         header=None, names=["smiles"])
    col = find_smiles_column(list(df.columns), smiles_column, source=str(path))
    if len(df) == 0:
        raise InvalidInputError(f"{path}: has a header but no rows; expected at least one SMILES")
    out = pd.DataFrame({"row": np.arange(1, len(df) + 1), "input": df[col].astype(str).str.strip()})
    for c in df.columns:
        if c != col and c not in out.columns:
            out[c] = df[c].values
    return out


def _read_lines(path: Path, text: str) -> pd.DataFrame:
    rows, inputs, names = [], [], []
    lines = text.splitlines()
    start = 0
    if lines and lines[0].strip().lower().split()[:1] == ["smiles"]:
        start = 1
    for i, line in enumerate(lines[start:], start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        rows.append(i)
        inputs.append(parts[0])
        names.append(parts[1] if len(parts) > 1 else "")
    if not inputs:
        raise InvalidInputError(f"{path}: no SMILES lines; expected one SMILES per line")
    out = pd.DataFrame({"row": rows, "input": inputs})
    if any(names):
        out["name"] = names
    return out


def _read_sdf(path: Path, compressed: bool) -> pd.DataFrame:
    from rdkit import Chem

    handle = gzip.open(path, "rb") if compressed else open(path, "rb")
    rows, inputs, names, errors = [], [], [], []
    with handle, chem.quiet_rdkit():
        supplier = Chem.ForwardSDMolSupplier(handle, sanitize=True)
        for i, mol in enumerate(supplier, start=1):
            rows.append(i)
            if mol is None:
                inputs.append("")
                names.append("")
                errors.append(f"SD record {i} could not be read by RDKit (bad atom block, valence or aromaticity)")
            else:
                inputs.append(Chem.MolToSmiles(mol))
                names.append(mol.GetProp("_Name") if mol.HasProp("_Name") else "")
                errors.append("")
    if not rows:
        raise InvalidInputError(f"{path}: no molecule records; expected an SD file")
    out = pd.DataFrame({"row": rows, "input": inputs})
    if any(names):
        out["name"] = names
    if any(errors):
        out[READ_ERROR] = errors  # prepare() rejects these rows with this reason
    return out


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- preparation

@dataclass
class TokenData:
    """Token ids of many molecules, stored flat: molecule ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    Ids exclude ``<bos>``/``<eos>``; :meth:`batch` adds ``<eos>``.
    """

    ids: np.ndarray       # (total_tokens,) int16/int32
    offsets: np.ndarray   # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each molecule, ``(n,)``."""
        return np.diff(self.offsets)

    def get(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_sequences(cls, seqs: Sequence[Sequence[int]]) -> TokenData:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids=ids, offsets=offsets)

    def batch(self, indices: Sequence[int] | np.ndarray, eos_id: int, pad_id: int) -> Batch:
        """Padded ``(B, L+1)`` tensor of the molecules at ``indices``, each followed by ``<eos>``."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices] + 1
        width = int(lengths.max()) if len(indices) else 1
        out = np.full((len(indices), width), pad_id, dtype=np.int64)
        for r, i in enumerate(indices):
            s, e = self.offsets[i], self.offsets[i + 1]
            out[r, : e - s] = self.ids[s:e]
            out[r, e - s] = eos_id
        return Batch(tokens=torch.from_numpy(out), lengths=torch.from_numpy(lengths), indices=indices)


@dataclass
class Batch:
    """One batch: ``tokens (B, L)`` padded, each sequence ending in ``<eos>``; ``lengths (B,)`` counting it."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    indices: np.ndarray
    properties: torch.Tensor | None = None   # (B, P) float, NaN where unlabelled

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            tokens=self.tokens.to(device, non_blocking=non_blocking),
            lengths=self.lengths,  # pack_padded_sequence wants lengths on the CPU
            indices=self.indices,
            properties=None if self.properties is None else self.properties.to(device, non_blocking=non_blocking),
        )


@dataclass
class PreparedData:
    """Cleaned molecules ready for training, plus what was rejected and why."""

    smiles: list[str]               # canonical SMILES, one per kept molecule
    rows: np.ndarray                # input row of each kept molecule
    tokens: TokenData
    vocab: Vocabulary
    rejected: pd.DataFrame          # columns row, input, reason (input order)
    n_input: int
    n_duplicates: int
    properties: pd.DataFrame | None = None   # one column per property, NaN where missing
    source_hash: str | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.smiles)


def _process_chunk(args: tuple[list[str], bool]) -> list:
    inputs, keep_largest = args
    return [chem.process_smiles(s, keep_largest_fragment=keep_largest) for s in inputs]


def process_many(inputs: Sequence[str], keep_largest_fragment: bool = True, n_jobs: int = 1,
                 show_progress: bool = False) -> list:
    """:func:`chem.process_smiles` over many inputs, in input order, in ``n_jobs`` processes."""
    inputs = list(inputs)
    if n_jobs is None or n_jobs <= 0:
        n_jobs = os.cpu_count() or 1
    if n_jobs == 1 or len(inputs) < 2000:
        from tqdm.auto import tqdm

        return [chem.process_smiles(s, keep_largest_fragment=keep_largest_fragment)
                for s in tqdm(inputs, desc="preprocess", disable=not show_progress, leave=False)]
    import multiprocessing as mp

    chunk = max(1000, math.ceil(len(inputs) / (n_jobs * 16)))
    pieces = [(inputs[i:i + chunk], keep_largest_fragment) for i in range(0, len(inputs), chunk)]
    out: list = []
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    from tqdm.auto import tqdm

    with ctx.Pool(n_jobs) as pool, tqdm(total=len(inputs), desc="preprocess", disable=not show_progress,
                                          leave=False) as bar:
        for res in pool.imap(_process_chunk, pieces):
            out.extend(res)
            bar.update(len(res))
    return out


def prepare(table: pd.DataFrame, *, largest_fragment: bool = True, max_len: int | None = None,
            vocab: Vocabulary | None = None, property_columns: Sequence[str] = (),
            n_jobs: int = 1, show_progress: bool = False) -> PreparedData:
    """Clean the molecules of ``table`` (from :func:`read_molecules`) into token ids.

    Each row is canonicalized (optionally reduced to its largest fragment),
    SELFIES-encoded and tokenized. Rows that fail, that are longer than ``max_len``
    tokens, that use a token outside a given ``vocab``, or that repeat an earlier
    molecule are listed in ``rejected`` with a reason; nothing is dropped silently.

    Raises:
        InvalidInputError: a requested property column is missing.
    """
    missing = [c for c in property_columns if c not in table.columns]
    if missing:
        raise InvalidInputError(f"no property column {missing[0]!r}; columns are {list(table.columns)}")
    results = process_many(table["input"].tolist(), largest_fragment, n_jobs=n_jobs, show_progress=show_progress)
    rows = table["row"].to_numpy()
    inputs = table["input"].tolist()
    rejected: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    keep_idx: list[int] = []
    kept: list[chem.ProcessedMolecule] = []
    n_dup = 0
    read_errors = table[READ_ERROR].tolist() if READ_ERROR in table.columns else None
    for i, res in enumerate(results):
        if read_errors is not None and read_errors[i]:
            rejected.append((int(rows[i]), inputs[i], read_errors[i]))
            continue
        if isinstance(res, str):
            rejected.append((int(rows[i]), inputs[i], res))
            continue
        if max_len is not None and len(res.tokens) > max_len:
            rejected.append((int(rows[i]), inputs[i], f"{len(res.tokens)} SELFIES tokens, longer than max_len {max_len}"))
            continue
        if vocab is not None:
            unknown = vocab.unknown(res.tokens)
            if unknown:
                rejected.append((int(rows[i]), inputs[i], f"tokens not in the model's vocabulary: {' '.join(unknown[:5])}"))
                continue
        first = seen.get(res.smiles)
        if first is not None:
            n_dup += 1
            rejected.append((int(rows[i]), inputs[i], f"duplicate of row {first}"))
            continue
        seen[res.smiles] = int(rows[i])
        keep_idx.append(i)
        kept.append(res)
    if vocab is None:
        vocab = Vocabulary.build(m.tokens for m in kept)
    index = vocab.index
    token_data = TokenData.from_sequences([[index[t] for t in m.tokens] for m in kept])
    if len(vocab) < 32767:
        token_data.ids = token_data.ids.astype(np.int16)
    props = None
    if property_columns:
        props = pd.DataFrame({c: pd.to_numeric(table[c].iloc[keep_idx], errors="coerce").to_numpy(dtype=float)
                              for c in property_columns})
        props = props.where(np.isfinite(props))  # inf and text count as missing: masked, not learned
        kept_rows = rows[keep_idx]
        for c in property_columns:
            gaps = kept_rows[props[c].isna().to_numpy()]
            if len(gaps) and len(gaps) == len(props):
                raise InvalidInputError(
                    f"property column {c!r} has no numeric value in any of the {len(props)} kept rows; "
                    "expected numbers (empty cells are allowed and masked)")
            if len(gaps):
                shown = ", ".join(str(int(r)) for r in gaps[:10]) + (", ..." if len(gaps) > 10 else "")
                log.warning("property %r: %d of %d rows have no numeric value (rows %s); they train without "
                            "a %r target", c, len(gaps), len(props), shown, c)
    rejected_df = pd.DataFrame(rejected, columns=["row", "input", "reason"])
    return PreparedData(
        smiles=[m.smiles for m in kept],
        rows=rows[keep_idx] if keep_idx else np.zeros(0, dtype=np.int64),
        tokens=token_data,
        vocab=vocab,
        rejected=rejected_df,
        n_input=len(table),
        n_duplicates=n_dup,
        properties=props,
    )


# ----------------------------------------------------------------------------- split and batches

def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``range(n)``; training keeps at least one molecule."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    n_val = min(n_val, max(n - 1, 0))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def bucket_batches(lengths: np.ndarray, indices: np.ndarray, batch_size: int, *,
                   shuffle: bool, rng: np.random.Generator | None = None,
                   bucket_factor: int = 50) -> list[np.ndarray]:
    """Split ``indices`` into batches of molecules of similar length.

    Indices are shuffled, cut into pools of ``bucket_factor × batch_size``, each pool
    sorted by length and cut into batches, and the batch order shuffled: padding is
    small while every epoch still sees every molecule exactly once in a new order.
    """
    indices = np.asarray(indices)
    if len(indices) == 0:
        return []
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True needs an rng")
        indices = indices[rng.permutation(len(indices))]
    pool = max(batch_size * bucket_factor, batch_size)
    batches: list[np.ndarray] = []
    for s in range(0, len(indices), pool):
        chunk = indices[s:s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


def iterate_batches(tokens: TokenData, batches: Sequence[np.ndarray], vocab: Vocabulary,
                    properties: np.ndarray | None = None) -> Iterator[Batch]:
    """Materialize :class:`Batch` objects for precomputed index batches."""
    for idx in batches:
        b = tokens.batch(idx, vocab.eos_id, vocab.pad_id)
        if properties is not None:
            b.properties = torch.from_numpy(properties[idx].astype(np.float32))
        yield b
