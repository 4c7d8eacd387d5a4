"""Each concept has one home: versions, the cache folder, the worker pool, the property functions."""

from __future__ import annotations

import molvae
from molvae import _version, cache, checkpoint
from molvae.metrics import stats


def test_one_versions_helper_everywhere():
    assert checkpoint.versions is _version.versions
    assert molvae.__version__ == _version.__version__
    found = _version.versions()
    assert list(found) == ["molvae", "python", "torch", "rdkit", "selfies"]
    assert all(isinstance(v, str) and v for v in found.values())
    assert set(_version.versions("numpy", "fcd")) == {"numpy", "fcd"}


def test_one_cache_folder(tmp_path, monkeypatch):
    assert stats.cache_dir is cache.default_cache_dir
    monkeypatch.setenv("MOLVAE_CACHE_DIR", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    assert cache.default_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_dead_helpers_are_gone():
    from molvae import data

    for name in ("process_many", "_process_chunk", "iterate_batches", "_available_cpus"):
        assert not hasattr(data, name), name
    assert not hasattr(data.TokenData, "get")


def test_one_parallel_map_and_one_core_count():
    import inspect

    from molvae import chem, core, data, workers
    from molvae.metrics import chemnet, molecules, similarity

    assert molecules.resolve_n_jobs is workers.resolve_jobs
    assert "ordered_map" in inspect.getsource(data.process_compact)
    assert "ordered_map" in inspect.getsource(chem.compute_properties)
    assert "process_pool" in inspect.getsource(molecules.Workers)
    for module in (data, chem, molecules, core, chemnet, similarity):
        source = inspect.getsource(module)
        assert "cpu_count" not in source and "ProcessPoolExecutor" not in source and "mp.Pool" not in source
