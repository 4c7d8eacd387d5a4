"""One self-describing model file of plain data and tensors.

The file is a dict of str/int/float/bool/None, lists, dicts and tensors, written with
``torch.save`` and read with ``torch.load(..., weights_only=True)``, so loading a
model file from a stranger cannot execute code. Writes are atomic: a temporary file
in the same folder is written, fsynced and renamed over the target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ._version import __version__, versions  # versions stays importable from here (older callers)
from .errors import CheckpointError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "versions", "atomic_write",
           "atomic_output", "atomic_path", "FileLock"]

log = logging.getLogger(__name__)

FORMAT_NAME = "molvae-model"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call ``write_fn(file_object)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` (same suffix, for libraries that pick the format by it);
    when the block succeeds it is fsynced and renamed over ``path``, otherwise deleted.

    Every command writes its output files this way: a failure (a bad option found late, an error,
    Ctrl-C) never leaves a truncated file, and an existing file is replaced only by a complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            tmp_path.unlink()
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", **open_kwargs):
    """``open(path, mode)`` on a temporary file that replaces ``path`` when the block succeeds
    (see :func:`atomic_path`); text mode defaults to UTF-8."""
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain(obj: Any, where: str = "payload") -> Any:
    """``obj`` reduced to what ``torch.load(weights_only=True)`` accepts: builtins, containers and tensors.

    NumPy scalars and arrays become Python numbers and tensors; anything else is a bug
    and raises ``TypeError`` here rather than producing a file that cannot be loaded.
    """
    import numpy as np

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int)) else str(k): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights-only model file")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plain data and tensors) with format name and version added."""
    data = plain({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "versions": versions(), **payload})
    atomic_write(path, lambda f: torch.save(data, f))


def newer_writer_note(data: dict[str, Any]) -> str:
    """``"; written by molvae X, newer than this molvae Y: upgrade molvae"`` when the file says so, else ``""``.

    A newer molvae may store settings this one does not know (same file format, new keys); the
    error about them should say that upgrading is the fix, not that the file is broken.
    """
    written = (data.get("versions") or {}).get("molvae") if isinstance(data.get("versions"), dict) else None

    def key(v: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", str(v))[:3])

    try:
        if written and key(written) > key(__version__):
            return f"; written by molvae {written}, newer than this molvae {__version__}: upgrade molvae"
    except Exception:  # noqa: BLE001 - a malformed version string is not worth an error of its own
        pass
    return ""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a model file safely and check its format.

    Raises:
        CheckpointError: missing, truncated or corrupt file; a file holding pickled
            code (refused without running it); another format; a newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a model file (model.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: model file is empty")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of hand-made files; the outcome is reported below.
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if found or "global" in text.lower():
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the file contains pickled Python objects{what}, not only data and tensors; "
                "molvae model files never do, so it was not loaded and nothing in it was run") from exc
        # torch's own wording is about its defaults; keep only the unpickler's reason.
        inner = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
        reason = " ".join((inner.group(1) if inner else text.strip().splitlines()[0] if text.strip() else "").split())
        raise CheckpointError(
            f"{path}: truncated or corrupt model file, or not one written by molvae "
            f"(unpickling failed: {reason[:200]}); it was not loaded") from exc
    except Exception as exc:  # noqa: BLE001
        # Arbitrary bytes reach torch's legacy unpickler, which fails in many ways (IndexError,
        # struct.error, EOFError, zipfile.BadZipFile, ...); every one of them means a corrupt file.
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt model file ({msg[:200]})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a molvae model file (expected format {FORMAT_NAME!r})")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: model file has no format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model file format {version} is newer than this molvae reads ({FORMAT_VERSION}); "
            "upgrade molvae")
    for key in ("model_config", "vocab", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path}: model file lacks {key!r}")
    return data


class FileLock:
    """An exclusive ``flock`` on ``path`` (a small file holding the holder's pid), so two processes never
    write one thing (a run folder, an optimization log). The kernel releases it when the process dies, so
    a killed job leaves no stale lock; the file is removed on :meth:`release`.

    Args:
        path: the lock file.
        what: ``(where, what)`` is locked, for the warning on a file system without locks
            (``(run, "the run folder")``).
        busy: the error when another process holds it; ``{holder}`` becomes `` (pid N)`` where known.
        error: the exception class raised with ``busy``.
    """

    def __init__(self, path: Path, *, what: tuple[Any, str], busy: str, error: type[Exception] = CheckpointError
                 ) -> None:
        self.path = Path(path)
        self.what, self.busy, self.error = what, busy, error
        self._fh = None

    def acquire(self) -> FileLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; best effort
            return self
        while True:
            fh = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                raise self.error(self.busy.format(holder=f" (pid {holder})" if holder else "")) from exc
            except OSError as exc:  # a file system without locks (some network mounts): go on unlocked
                fh.close()
                log.warning("%s: cannot lock %s on this file system (%s); make sure no other molvae process "
                            "writes it", self.what[0], self.what[1], exc.strerror or exc)
                return self
            try:  # the holder before us may have unlinked the file we opened: lock the one on disk
                same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        self._fh.close()
        self._fh = None
