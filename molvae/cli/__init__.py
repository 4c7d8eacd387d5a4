"""The ``molvae`` command line: a thin shell over the Python API.

Each command lives in its own module of this package and is registered on the
:data:`main` group below. Every :class:`~molvae.errors.MolvaeError` (and any other
failure) becomes one line on stderr and exit code 1, never a traceback; set
``MOLVAE_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .._version import __version__
from ..errors import MolvaeError

__all__ = ["main"]


class MolvaeGroup(click.Group):
    """Click group that turns exceptions into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except MolvaeError as exc:
            _fail(str(exc), exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError as exc:
            _fail("out of memory; try a smaller --batch-size", exc)
        except BrokenPipeError:
            # Output piped into `head` and friends: not an error.
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            sys.exit(0)
        except OSError as exc:
            if exc.errno is None:  # not from the operating system: a bug, reported as such below
                _fail(f"unexpected {type(exc).__name__}: {exc} (set MOLVAE_DEBUG=1 for the traceback)", exc)
            # e.g. --out in a read-only folder, a full disk: say which file, without "unexpected"
            what = f" {exc.filename}" if exc.filename else ""
            _fail(f"cannot write or read{what}: {exc.strerror or exc}", exc)
        except Exception as exc:  # last resort: still one line
            _fail(f"unexpected {type(exc).__name__}: {exc} (set MOLVAE_DEBUG=1 for the traceback)", exc)


def _fail(message: str, exc: BaseException) -> None:
    if os.environ.get("MOLVAE_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    message = " ".join(str(message).split())
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@click.group(cls=MolvaeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="molvae")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """molvae: train, sample, evaluate and optimize a SELFIES GRU variational autoencoder.

    \b
    Quick start:
      molvae train data/moses_sample.csv --epochs 10     # default 30
      molvae generate --n 1000 --out generated.csv
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("molvae")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


# Command modules; each defines its commands with @main.command().
COMMAND_MODULES = ["train", "generate", "evaluate", "models", "latent", "plot", "optimize", "prior"]
_register()
