"""A user-facing error keeps its cause, so MOLVAE_DEBUG=1 shows where it came from."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from molvae import data
from molvae.checkpoint import load_checkpoint
from molvae.cli import main
from molvae.errors import CheckpointError, InvalidInputError

from conftest import cli, one_error


def _corrupt_model(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    return path


def test_corrupt_gzip_error_keeps_its_cause(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage that is not deflate")
    with pytest.raises(InvalidInputError) as info:
        data.read_molecules(path)
    assert info.value.__cause__ is not None


def test_corrupt_model_error_keeps_its_cause(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_corrupt_model(tmp_path))
    assert info.value.__cause__ is not None


def test_debug_prints_the_chained_traceback(tmp_path, monkeypatch):
    model = _corrupt_model(tmp_path)
    quiet = cli("generate", "-m", model, "--n", "2")
    line = one_error(quiet, "truncated or corrupt model file")
    monkeypatch.setenv("MOLVAE_DEBUG", "1")
    loud = CliRunner().invoke(main, ["generate", "-m", str(model), "--n", "2"])
    assert loud.exit_code == 1
    assert one_error(loud) == line  # the one-line message is the same with and without debug
    assert "Traceback" in loud.output
    assert "The above exception was the direct cause of the following exception" in loud.output


def _cannot_start():
    raise ImportError("No module named 'pyarrow'")


def test_a_worker_that_cannot_start_reports_its_own_exception():
    """Not "a crash in RDKit or the out-of-memory killer": the worker's ImportError, in one line."""
    from concurrent.futures.process import BrokenProcessPool

    from molvae import workers
    from molvae.errors import WorkerCrashed

    with pytest.raises(WorkerCrashed) as caught:
        with workers.process_pool(2, _cannot_start) as pool:
            try:
                list(pool.map(abs, [1, -2, 3]))
            except BrokenProcessPool as exc:
                raise workers.crashed("reading molecules", pool) from exc
    message = str(caught.value)
    assert message.startswith("a worker process failed while reading molecules: ImportError: No module named 'pyarrow'")
    assert "out-of-memory" not in message and "\n" not in message
