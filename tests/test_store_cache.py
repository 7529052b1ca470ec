"""The in-memory model cache of `store.read`: fast repeated predictions, never stale."""

from __future__ import annotations

import os

import numpy as np
from helpers.models import model as tiny

from mlbackend import store
from mlbackend.model import Model


def tiny_model(seed: int) -> Model:
    return tiny(3, (4,), seed)


def read(model_dir: str) -> Model | None:
    stored = store.read(model_dir)
    return stored.model if stored is not None else None


def save(model_dir: str, model: Model) -> None:
    with store.writer_lock(model_dir):
        store.save(model_dir, model)


def test_unchanged_file_is_loaded_once(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    first = read(model_dir)
    assert first is not None
    assert read(model_dir) is first


def test_replaced_file_is_read_again(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    first = read(model_dir)
    save(model_dir, tiny_model(2))
    second = read(model_dir)
    assert second is not first
    assert not np.array_equal(second.network.layers[0].kernel, first.network.layers[0].kernel)


def test_deleted_file_is_untrained(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    assert read(model_dir) is not None
    os.unlink(store.model_path(model_dir))
    assert read(model_dir) is None


def test_cache_is_bounded(tmp_path):
    for i in range(store.CACHE_SIZE + 5):
        model_dir = str(tmp_path / f"m{i}")
        save(model_dir, tiny_model(i))
        read(model_dir)
    assert len(store._cache._entries) <= store.CACHE_SIZE


def test_the_cache_is_bounded_by_memory_not_only_by_count():
    """64 large models would have stayed in memory (16 GiB of crafted ones)."""
    model = tiny_model(1)
    cache = store._ModelCache(size=64, max_bytes=3 * model.nbytes)
    for i in range(10):
        cache.put(f"m{i}", (i,), model)
    kept = [i for i in range(10) if cache.get(f"m{i}", (i,)) is not None]
    assert kept == [7, 8, 9]  # the most recent, as many as fit
    small = store._ModelCache(size=64, max_bytes=model.nbytes - 1)
    small.put("big", (0,), model)  # larger than the whole cache: used, not kept
    assert small.get("big", (0,)) is None
