"""The shared cache root and atomic writes (benchmark/cache.py)."""

from __future__ import annotations

import pytest

from benchmark.adaround import cache_dir as adaround_dir
from benchmark.cache import atomic_path, atomic_write_text, cache_dir
from emq.allocate.sensitivity import allocate_cache_dir
from primitives.inputs import cache_dir as inputs_dir


def test_every_cache_lives_under_one_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE", str(tmp_path))
    assert inputs_dir() == tmp_path / "inputs" == cache_dir("inputs")
    assert adaround_dir() == tmp_path / "adaround"
    assert allocate_cache_dir() == tmp_path / "allocate"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    with atomic_path(path, ".npz") as tmp:
        assert tmp.name.endswith(".npz") and tmp.parent == path.parent
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
