"""The in-memory model cache of `store.load`: fast repeated predictions, never stale."""

from __future__ import annotations

import os

import numpy as np

from mlbackend import store
from mlbackend.inference import Model


def tiny_model(seed: int) -> Model:
    rng = np.random.default_rng(seed)
    return Model(
        classes=[0, 1],
        nfeatures=3,
        columns=np.arange(3),
        mean=np.zeros(3, np.float32),
        scale=np.ones(3, np.float32),
        weights=[
            rng.normal(size=(3, 4)).astype(np.float32),
            np.zeros(4, np.float32),
            rng.normal(size=(4, 2)).astype(np.float32),
            np.zeros(2, np.float32),
        ],
    )


def save(model_dir: str, model: Model) -> None:
    with store.writer_lock(model_dir):
        store.save(model_dir, model)


def test_unchanged_file_is_loaded_once(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    first = store.load(model_dir)
    assert first is not None
    assert store.load(model_dir) is first


def test_replaced_file_is_read_again(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    first = store.load(model_dir)
    save(model_dir, tiny_model(2))
    second = store.load(model_dir)
    assert second is not first
    assert not np.array_equal(second.weights[0], first.weights[0])


def test_deleted_file_is_untrained(tmp_path):
    model_dir = str(tmp_path / "m")
    save(model_dir, tiny_model(1))
    assert store.load(model_dir) is not None
    os.unlink(store.model_path(model_dir))
    assert store.load(model_dir) is None


def test_cache_is_bounded(tmp_path):
    for i in range(store.CACHE_SIZE + 5):
        model_dir = str(tmp_path / f"m{i}")
        save(model_dir, tiny_model(i))
        store.load(model_dir)
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
