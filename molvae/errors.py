"""Exceptions raised by molvae.

Every user-facing failure is a :class:`MolvaeError` whose message says what was
received and what was expected; the CLI prints it as one line and exits 1.
"""

from __future__ import annotations

__all__ = ["MolvaeError", "InvalidInputError", "VocabularyError", "CheckpointError", "WorkerCrashed", "RunFolderError"]


class MolvaeError(Exception):
    """Base class of every error molvae raises on purpose."""


class InvalidInputError(MolvaeError, ValueError):
    """A file, column, string or option value that cannot be used."""


class VocabularyError(MolvaeError):
    """A token or molecule the model's vocabulary cannot represent."""


class CheckpointError(MolvaeError):
    """A model file that is missing, corrupt, unsafe or of an unknown format."""


class WorkerCrashed(MolvaeError):
    """A worker process died (a crash in a native library, the out-of-memory killer, a signal)."""


class RunFolderError(MolvaeError):
    """A run folder that already holds a run, or that another process is writing."""
