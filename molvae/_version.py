"""The package version and the versions of everything a result depends on, written once (layer 0).

Imports nothing of molvae, so every layer (checkpoint, cache, metrics, report) can ask for
versions without importing the package root.
"""

from __future__ import annotations

import platform

__all__ = ["__version__", "versions", "MODEL_LIBRARIES"]

__version__ = "0.1.0"

# What a model file records: the libraries that change what a model computes or decodes.
MODEL_LIBRARIES = ("molvae", "python", "torch", "rdkit", "selfies")


def _library_version(name: str) -> str | None:
    """Version string of ``name``; ``None`` for an optional library that is not installed."""
    if name == "molvae":
        return __version__
    if name == "python":
        return platform.python_version()
    if name == "fcd":  # optional: absent, or broken at import, means "not used"
        try:
            import fcd
        except Exception:  # noqa: BLE001 - any import failure means FCD is unavailable
            return None
        return str(getattr(fcd, "__version__", "?"))
    module = __import__(name)
    return str(module.__version__)


def versions(*names: str) -> dict[str, str | None]:
    """``{library: version}`` for ``names`` (default :data:`MODEL_LIBRARIES`), in that order.

    Known names: molvae, python, torch, rdkit, selfies, numpy, fcd (``None`` when not installed).
    """
    return {name: _library_version(name) for name in (names or MODEL_LIBRARIES)}
