"""Reading molecule files, cleaning them into token ids, splitting and batching.

Data flow: a file (csv/csv.gz/tsv/smi/txt/sdf) -> :func:`read_molecules` (a table
with ``row`` and ``input``) -> :func:`prepare` (canonicalize, keep the largest
fragment, SELFIES-encode, dedupe, reject with a reason) -> :class:`TokenData`
(flat token ids + offsets) -> length-bucketed :class:`Batch` tensors.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import chem
from .errors import InvalidInputError
from .vocab import Vocabulary
from .workers import available_cpus, resolve_jobs

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
    except zlib.error as exc:
        raise InvalidInputError(f"{path}: corrupt gzip data ({exc}); expected an intact .gz file") from exc
    except (OSError, EOFError) as exc:
        raise InvalidInputError(f"{path}: could not read the file ({exc})") from exc
    if raw[257:262] == b"ustar":
        raw = _tar_member(path, raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[exc.start]:#04x}); expected a UTF-8 text file"
        ) from exc


def _tar_member(path: Path, raw: bytes) -> bytes:
    """The bytes of the one file in the tar archive ``raw`` (e.g. ZINC250k's ``.txt.gz``, a gzipped tar)."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            if len(files) != 1:
                names = ", ".join(m.name for m in files[:3]) + (", ..." if len(files) > 3 else "")
                raise InvalidInputError(f"{path}: a tar archive of {len(files)} files ({names or 'none'}); "
                                        "expected one file of molecules")
            return tar.extractfile(files[0]).read()
    except tarfile.ReadError:
        return raw   # "ustar" at byte 257 of a file that is not a tar archive: text after all
    except tarfile.TarError as exc:
        raise InvalidInputError(f"{path}: a damaged tar archive ({exc}); expected one file of molecules") from exc


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


def read_molecules(path: str | os.PathLike, smiles_column: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Read a molecule file into a table with ``row`` (1-based record number) and ``input`` (the SMILES text).

    ``smiles_column`` names the SMILES column of a table (a file without it is refused), or gives
    candidates (a list: the first one the table has, else the column is found by name, with a warning).

    Other columns of a CSV (names, properties) are kept beside them. Formats:
    ``.csv``/``.tsv`` (header row; the SMILES column is found by name or is the
    only column), ``.smi``/``.txt`` (one SMILES per line, optional name after
    whitespace, optional ``smiles`` header line), ``.sdf``; any of them gzipped; a (gzipped)
    tar archive of one text file, as ZINC250k is often distributed, is read as that file.

    Raises:
        InvalidInputError: missing or empty file, no usable SMILES column, non-UTF-8 text.
    """
    if str(path) == "-":
        return _read_stdin(smiles_column)
    if "://" in str(path):
        raise InvalidInputError(f"{path}: molvae reads local files only (and mounted network file systems); "
                                "download the file first")
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


STDIN = "-"


def _read_stdin(smiles_column: str | Sequence[str] | None) -> pd.DataFrame:
    """``-``: molecules from standard input, one SMILES per line or a CSV table with a header."""
    source = Path("<stdin>")
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInputError("'-' reads molecules from standard input, but nothing is piped in; "
                                "e.g. `cat mols.smi | molvae encode - --out z.npy`")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"<stdin>: byte {exc.start} is not valid UTF-8; expected UTF-8 text") from exc
    if not text.strip():
        raise InvalidInputError("<stdin>: no input; expected SMILES, one per line, or a CSV table")
    if smiles_column is not None or _looks_like_table(text):
        return _read_table(source, text, ",", smiles_column)
    return _read_lines(source, text)


def _looks_like_table(text: str) -> bool:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return "," in first or first.strip().lower() == "smiles"


def _read_table(path: Path, text: str, sep: str, smiles_column: str | Sequence[str] | None) -> pd.DataFrame:
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except pd.errors.EmptyDataError as exc:
        raise InvalidInputError(f"{path}: the file is empty; expected a header row and SMILES") from exc
    except pd.errors.ParserError as exc:
        raise InvalidInputError(f"{path}: not a valid CSV table ({str(exc).strip().splitlines()[-1]})") from exc
    if smiles_column is not None and not isinstance(smiles_column, str):
        # candidates: the first one this table has, else found by name (said, so a typo is not silent)
        present = [c for c in smiles_column if c in df.columns]
        if not present:
            log.warning("%s has no column %s; its SMILES column is found by name", path,
                        " or ".join(repr(c) for c in smiles_column))
        smiles_column = present[0] if present else None
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
    handle = gzip.open(path, "rb") if compressed else open(path, "rb")
    rows, inputs, names, errors, fields = [], [], [], [], []
    try:
        _sdf_records(handle, rows, inputs, names, errors, fields)
    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: corrupt gzip data ({exc}); expected an intact .gz file") from exc
    if not rows:
        raise InvalidInputError(f"{path}: no molecule records; expected an SD file")
    out = pd.DataFrame({"row": rows, "input": inputs})
    if any(names):
        out["name"] = names
    for key, values in _sd_fields(fields, set(out.columns) | {READ_ERROR}).items():
        out[key] = values
    if any(errors):
        out[READ_ERROR] = errors  # prepare() rejects these rows with this reason
    return out


def _sd_fields(fields: list[dict[str, str]], taken: set[str]) -> dict[str, pd.Series]:
    """Every SD data field as a column (``--property``, ``--init-scores``, ``predict``'s true values): numbers
    where every value present parses as one, else text; missing in a record -> NaN. A field named like one
    of the reader's own columns gets ``_sd`` appended."""
    keys = list(dict.fromkeys(k for f in fields for k in f))
    out = {}
    for key in keys:
        values = pd.Series([f.get(key) for f in fields], dtype=object)
        present = values.dropna()
        numbers = pd.to_numeric(present.str.strip(), errors="coerce")
        if len(present) and not numbers.isna().any():
            values = pd.to_numeric(values, errors="coerce")
        name = key if key not in taken else f"{key}_sd"
        out[name] = values
    return out


def _sdf_records(handle, rows: list, inputs: list, names: list, errors: list, fields: list) -> None:
    from rdkit import Chem

    with handle, chem.quiet_rdkit():
        supplier = Chem.ForwardSDMolSupplier(handle, sanitize=True)
        for i, mol in enumerate(supplier, start=1):
            rows.append(i)
            fields.append({} if mol is None else
                          {k: str(v) for k, v in mol.GetPropsAsDict(includePrivate=False, includeComputed=False).items()
                           if k != "_Name"})
            if mol is None:
                inputs.append("")
                names.append("")
                errors.append(f"SD record {i} could not be read by RDKit (bad atom block, valence or aromaticity)")
            elif chem.atoms_problem(mol):
                inputs.append("")
                names.append(mol.GetProp("_Name") if mol.HasProp("_Name") else "")
                errors.append(f"SD record {i}: {chem.atoms_problem(mol)}")
            else:
                inputs.append(Chem.MolToSmiles(mol))
                names.append(mol.GetProp("_Name") if mol.HasProp("_Name") else "")
                errors.append("")


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
        starts = self.offsets[indices]
        n_real = self.offsets[indices + 1] - starts
        lengths = n_real + 1
        width = int(lengths.max()) if len(indices) else 1
        # Vectorized gather: no Python loop over the molecules of the batch.
        pos = np.arange(width, dtype=np.int64)
        real = pos[None, :] < n_real[:, None]
        out = np.full((len(indices), width), pad_id, dtype=np.int64)
        out[real] = self.ids[(starts[:, None] + pos[None, :])[real]]
        out[np.arange(len(indices)), n_real] = eos_id
        return Batch(tokens=torch.from_numpy(out), lengths=torch.from_numpy(lengths), indices=indices)


@dataclass
class Batch:
    """One batch: ``tokens (B, L)`` padded, each sequence ending in ``<eos>``; ``lengths (B,)`` counting it."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    indices: np.ndarray
    properties: torch.Tensor | None = None   # (B, P) float, NaN where unlabelled

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors, so copies to a GPU can overlap with compute."""
        return Batch(tokens=self.tokens.pin_memory(), lengths=self.lengths, indices=self.indices,
                     properties=None if self.properties is None else self.properties.pin_memory())

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

    def with_vocabulary(self, vocab: Vocabulary) -> PreparedData:
        """The same molecules with token ids of ``vocab``, which must hold every token they use (a base
        model's extended vocabulary when fine-tuning).

        Raises:
            InvalidInputError: ``vocab`` lacks a token of these molecules.
        """
        missing = [t for t in self.vocab.tokens if t not in vocab]
        if missing:
            raise InvalidInputError(f"the vocabulary lacks tokens of the data: {' '.join(missing[:5])}")
        mapping = np.array([vocab.index[t] for t in self.vocab.tokens], dtype=np.int64)
        id_dtype = np.int16 if len(vocab) < 32767 else np.int32
        tokens = TokenData(ids=mapping[self.tokens.ids.astype(np.int64)].astype(id_dtype),
                           offsets=self.tokens.offsets)
        return dataclasses.replace(self, tokens=tokens, vocab=vocab)


# Reasons of :func:`chem.process_smiles`, reproduced by the fast path below.
_REASON_EMPTY = "empty SMILES"
_REASON_PARSE = "RDKit could not parse the SMILES"
_REASON_NO_ATOMS = "molecule has no atoms"
_REASON_FRAGMENTS = "several fragments (use --largest-fragment to keep the largest)"
_REASON_CANONICAL = "RDKit could not write canonical SMILES"
_REASON_SELFIES = "SELFIES could not encode the molecule (valence outside SELFIES constraints)"
_REASON_SELFIES_EMPTY = "SELFIES encoding is empty"


@dataclass
class CompactResults:
    """:func:`chem.process_smiles` over many inputs, stored without a Python object per token.

    Molecule ``k`` of the successful ones (input position ``ok[k]``) has canonical SMILES
    ``smiles[k]`` and SELFIES tokens ``tokens[ids[offsets[k]:offsets[k+1]]]``.
    """

    ok: np.ndarray          # (n_ok,) int64 input positions that were processed successfully
    smiles: list[str]       # (n_ok,) canonical SMILES
    ids: np.ndarray         # (total,) int32 ids into ``tokens``
    offsets: np.ndarray     # (n_ok + 1,) int64
    tokens: list[str]       # SELFIES tokens, in order of first appearance
    failed: np.ndarray      # (n_failed,) int64 input positions that failed
    reasons: list[str]      # (n_failed,) why


def _process_compact_chunk(args: tuple[int, list, bool]) -> tuple:
    """Worker: process one chunk, returning arrays and chunk-local token ids (cheap to pickle)."""
    start, inputs, keep_largest = args
    from rdkit import Chem
    import selfies as sf

    mol_from_smiles, mol_to_smiles = Chem.MolFromSmiles, Chem.MolToSmiles
    local: dict[str, int] = {}
    ids: list[int] = []
    lengths: list[int] = []
    ok: list[int] = []
    smiles_out: list[str] = []
    failed: list[int] = []
    reasons: list[str] = []
    with chem.quiet_rdkit():  # one log block per chunk instead of one per call
        for i, s in enumerate(inputs):
            reason = None
            if not isinstance(s, str) or not s.strip():
                reason = _REASON_EMPTY
            else:
                s = s.strip()
                reason = chem.size_problem(s)
                try:
                    mol = None if reason else mol_from_smiles(s)
                except Exception:
                    mol = None
                if reason:
                    pass
                elif mol is None:
                    reason = f"{_REASON_PARSE} ({chem.parse_error(s)})"
                elif mol.GetNumAtoms() == 0:
                    reason = _REASON_NO_ATOMS
                elif chem.atoms_problem(mol):
                    reason = chem.atoms_problem(mol)
                else:
                    # A SMILES without '.' is one connected fragment: skip the fragment search.
                    if "." in s:
                        if keep_largest:
                            mol = chem.largest_fragment(mol)
                        elif len(Chem.GetMolFrags(mol)) > 1:
                            reason = _REASON_FRAGMENTS
                    if reason is None:
                        try:
                            canonical = mol_to_smiles(mol)
                        except Exception:
                            canonical = ""
                        if not canonical:
                            reason = _REASON_CANONICAL
                        else:
                            try:
                                selfies = sf.encoder(canonical, strict=True)
                            except Exception:
                                selfies = None
                            if selfies is None:
                                reason = _REASON_SELFIES
                            elif not selfies:
                                reason = _REASON_SELFIES_EMPTY
                            else:
                                if "." in selfies or not (selfies[0] == "[" and selfies[-1] == "]"):
                                    toks = list(sf.split_selfies(selfies))
                                else:
                                    toks = ["[" + t + "]" for t in selfies[1:-1].split("][")]
                                if not toks:
                                    reason = _REASON_SELFIES_EMPTY
                                else:
                                    for t in toks:
                                        j = local.get(t)
                                        if j is None:
                                            j = local[t] = len(local)
                                        ids.append(j)
                                    lengths.append(len(toks))
                                    ok.append(start + i)
                                    smiles_out.append(canonical)
            if reason is not None:
                failed.append(start + i)
                reasons.append(reason)
    return (np.asarray(ok, dtype=np.int64), smiles_out, np.asarray(ids, dtype=np.int32),
            np.asarray(lengths, dtype=np.int64), list(local), np.asarray(failed, dtype=np.int64), reasons)


def process_compact(inputs: Sequence[str], keep_largest_fragment: bool = True, n_jobs: int = 1,
                    show_progress: bool = False, chunk_size: int = 5000) -> CompactResults:
    """Clean and tokenize many SMILES in ``n_jobs`` processes (0 or ``None`` = all cores).

    Gives exactly what :func:`chem.process_smiles` gives for each input, but returns
    flat arrays, so a million molecules cost a few hundred MB instead of several GB of
    Python objects, and the workers send back little to pickle.
    """
    inputs = inputs if isinstance(inputs, list) else list(inputs)
    n_jobs = resolve_jobs(n_jobs)
    pieces = [(i, inputs[i:i + chunk_size], keep_largest_fragment) for i in range(0, len(inputs), chunk_size)]
    token_index: dict[str, int] = {}
    oks, smiles, ids, lengths, faileds, reasons = [], [], [], [], [], []
    from tqdm.auto import tqdm

    def collect(res: tuple) -> None:
        ok, smi, loc_ids, lens, loc_tokens, failed, why = res
        remap = np.array([token_index.setdefault(t, len(token_index)) for t in loc_tokens] or [0], dtype=np.int32)
        oks.append(ok)
        smiles.extend(smi)
        ids.append(remap[loc_ids])
        lengths.append(lens)
        faileds.append(failed)
        reasons.extend(why)

    from .workers import ordered_map

    with tqdm(total=len(inputs), desc="preprocess", disable=not show_progress, leave=False, unit="mol") as bar:
        for piece, res in zip(pieces, ordered_map(_process_compact_chunk, pieces, n_jobs, what="cleaning molecules")):
            collect(res)
            bar.update(len(piece[1]))
    lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return CompactResults(
        ok=np.concatenate(oks) if oks else np.zeros(0, dtype=np.int64), smiles=smiles,
        ids=np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32), offsets=offsets,
        tokens=list(token_index), failed=np.concatenate(faileds) if faileds else np.zeros(0, dtype=np.int64),
        reasons=reasons)


def prepare(table: pd.DataFrame, *, largest_fragment: bool = True, max_len: int | None = None,
            vocab: Vocabulary | None = None, property_columns: Sequence[str] = (),
            n_jobs: int = 1, show_progress: bool = False) -> PreparedData:
    """Clean the molecules of ``table`` (from :func:`read_molecules`) into token ids.

    Each row is canonicalized (optionally reduced to its largest fragment),
    SELFIES-encoded and tokenized. Rows that fail, that are longer than ``max_len``
    tokens, that use a token outside a given ``vocab``, or that repeat an earlier
    molecule are listed in ``rejected`` with a reason; nothing is dropped silently.

    Raises:
        InvalidInputError: a requested property is neither a column nor an RDKit property.

    A property name that is not a column of ``table`` but is one of
    :data:`molvae.chem.PROPERTY_FUNCTIONS` (``qed``, ``logp``, ``sa``, ``plogp``, ...) is
    computed by RDKit from each kept molecule's canonical SMILES.
    """
    missing = [c for c in property_columns if c not in table.columns and c not in chem.PROPERTY_FUNCTIONS]
    if missing:
        raise InvalidInputError(
            f"no property column {missing[0]!r}; columns are {list(table.columns)} and RDKit properties are "
            f"{sorted(chem.PROPERTY_FUNCTIONS)}")
    inputs = table["input"].tolist()
    rows = table["row"].to_numpy()
    res = process_compact(inputs, largest_fragment, n_jobs=n_jobs, show_progress=show_progress)
    lengths = np.diff(res.offsets)
    raw_tokens = res.tokens
    read_errors = table[READ_ERROR].tolist() if READ_ERROR in table.columns else None
    keep_idx, keep_slot, rejected, n_dup = _select_rows(inputs, rows, read_errors, res, max_len, vocab)
    keep = np.asarray(keep_slot, dtype=np.int64)
    kept_smiles = [res.smiles[k] for k in keep_slot]
    keep_mask = np.zeros(len(res.ok), dtype=bool)
    keep_mask[keep] = True
    kept_ids = res.ids[np.repeat(keep_mask, lengths)] if len(res.ids) else res.ids
    if vocab is None:
        present = np.unique(kept_ids) if len(kept_ids) else np.zeros(0, dtype=np.int64)
        vocab = Vocabulary.build([[raw_tokens[j] for j in present.tolist()]])
    to_vocab = np.array([vocab.index.get(t, -1) for t in raw_tokens] or [0], dtype=np.int64)
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=offsets[1:])
    id_dtype = np.int16 if len(vocab) < 32767 else np.int32
    token_data = TokenData(ids=to_vocab[kept_ids].astype(id_dtype), offsets=offsets)
    del res
    props = None
    if property_columns:
        props = _property_table(table, property_columns, kept_smiles, keep_idx, n_jobs)
    rejected_df = pd.DataFrame(rejected, columns=["row", "input", "reason"])
    return PreparedData(
        smiles=kept_smiles,
        rows=rows[keep_idx] if keep_idx else np.zeros(0, dtype=np.int64),
        tokens=token_data,
        vocab=vocab,
        rejected=rejected_df,
        n_input=len(table),
        n_duplicates=n_dup,
        properties=props,
    )


def _select_rows(inputs: list, rows: np.ndarray, read_errors: list | None, res: CompactResults,
                 max_len: int | None, vocab: Vocabulary | None) -> tuple[list[int], list[int], list, int]:
    """Which inputs :func:`prepare` keeps: ``(input positions, their slots in res, rejected rows, duplicates)``.

    An input is rejected (with a reason, in input order) when it could not be read or cleaned, is
    longer than ``max_len`` tokens, uses a token outside ``vocab``, or repeats an earlier molecule.
    """
    lengths = np.diff(res.offsets)
    # Per input: its position among the processed molecules, or -1 when processing failed.
    slot = np.full(len(inputs), -1, dtype=np.int64)
    slot[res.ok] = np.arange(len(res.ok))
    fail_reason = dict(zip(res.failed.tolist(), res.reasons))
    if vocab is not None:  # molecules with a token outside the given vocabulary
        to_vocab = np.array([vocab.index.get(t, -1) for t in res.tokens] or [0], dtype=np.int64)
        has_unknown = np.zeros(len(res.ok), dtype=bool)
        if len(res.ids):
            owner = np.repeat(np.arange(len(res.ok)), lengths)
            has_unknown[owner[to_vocab[res.ids] < 0]] = True
    rejected: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    keep_idx: list[int] = []
    keep_slot: list[int] = []
    n_dup = 0
    for i in range(len(inputs)):
        if read_errors is not None and read_errors[i]:
            rejected.append((int(rows[i]), inputs[i], read_errors[i]))
            continue
        k = slot[i]
        if k < 0:
            rejected.append((int(rows[i]), inputs[i], fail_reason[i]))
            continue
        if max_len is not None and lengths[k] > max_len:
            rejected.append((int(rows[i]), inputs[i], f"{lengths[k]} SELFIES tokens, longer than max_len {max_len}"))
            continue
        if vocab is not None and has_unknown[k]:
            unknown = vocab.unknown(res.tokens[j] for j in res.ids[res.offsets[k]:res.offsets[k + 1]])
            rejected.append((int(rows[i]), inputs[i], f"tokens not in the model's vocabulary: {' '.join(unknown[:5])}"))
            continue
        smi = res.smiles[k]
        first = seen.get(smi)
        if first is not None:
            n_dup += 1
            rejected.append((int(rows[i]), inputs[i], f"duplicate of row {first}"))
            continue
        seen[smi] = int(rows[i])
        keep_idx.append(i)
        keep_slot.append(k)
    return keep_idx, keep_slot, rejected, n_dup


def _property_table(table: pd.DataFrame, property_columns: Sequence[str], kept_smiles: list[str],
                    keep_idx: list[int], n_jobs: int) -> pd.DataFrame:
    """Property targets of the kept molecules: a column of ``table`` or computed by RDKit; NaN where missing.

    Raises:
        InvalidInputError: a property column without one numeric value among the kept rows.
    """
    computed = chem.compute_properties(kept_smiles, [c for c in property_columns if c not in table.columns],
                                       n_jobs=n_jobs if n_jobs and n_jobs > 0 else available_cpus())
    props = pd.DataFrame({c: computed[c] if c in computed else
                          pd.to_numeric(table[c].iloc[keep_idx], errors="coerce").to_numpy(dtype=float)
                          for c in property_columns})
    props = props.where(np.isfinite(props))  # inf and text count as missing: masked, not learned
    kept_rows = table["row"].to_numpy()[keep_idx]
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
    return props


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
