"""The model and its storage, in process: parity of the NumPy forward pass
with Keras, continued training, atomic and validated storage."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mlbackend import dataset, store, training
from oracle import keras_predict_proba
from mlbackend.contract import BackendError
from mlbackend.inference import Model


@pytest.fixture(scope="module")
def trained(binary_data):
    ds = dataset.read_training(binary_data["train"], tensorflow=True)
    return ds, training.train(ds.X, ds.y, ds.classes, ds.feature_names)


def test_numpy_prediction_equals_keras(trained, binary_data):
    ds, m = trained
    X = dataset.read_prediction(binary_data["predict"]).X
    np.testing.assert_allclose(m.predict_proba(X), keras_predict_proba(m, X), atol=1e-5)


def test_constant_columns_are_dropped_and_remembered(trained):
    ds, m = trained
    # The generator makes the first two columns constant.
    assert 0 not in m.columns and 1 not in m.columns
    assert m.nfeatures == 20 and len(m.columns) < 20


def test_continued_training_keeps_the_scaling_and_changes_the_weights(trained):
    ds, m = trained
    again = training.train(ds.X[:300], ds.y[:300], ds.classes, ds.feature_names, previous=m)
    np.testing.assert_array_equal(again.columns, m.columns)
    np.testing.assert_array_equal(again.mean, m.mean)
    assert not np.allclose(again.weights[0], m.weights[0])
    assert again.history["trainings"] == 2


def test_continued_training_refuses_other_features_or_classes(trained):
    ds, m = trained
    with pytest.raises(BackendError, match="features"):
        training.train(ds.X[:, :5], ds.y, ds.classes, [], previous=m)
    with pytest.raises(BackendError, match="targetclasses"):
        training.train(ds.X, ds.y, [0, 1, 2], [], previous=m)


def test_store_round_trip(trained, tmp_path):
    _, m = trained
    with store.writer_lock(str(tmp_path)):
        store.save(str(tmp_path), m)
    loaded = store.load(str(tmp_path))
    X = np.random.default_rng(0).uniform(-1, 1, (10, 20)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(X))
    assert sorted(os.listdir(tmp_path / "classifier")) == [".lock", "model.npz"]


def test_a_reader_sees_the_old_model_or_the_new_never_a_partial_one(trained, tmp_path):
    """Saves are atomic: a reader that loads the file while saves of two
    different models alternate always gets one of them, whole."""
    import threading

    _, a = trained
    b = Model(**{**a.__dict__, "weights": [w * 0.5 for w in a.weights]})
    X = np.random.default_rng(1).uniform(-1, 1, (5, 20)).astype(np.float32)
    answers = [a.predict_proba(X), b.predict_proba(X)]
    store.save(str(tmp_path), a)
    path = store.model_path(str(tmp_path))
    done = threading.Event()
    seen = []

    def read() -> None:
        while not done.is_set():
            try:
                with open(path, "rb") as f:  # past the cache: the file as it is now
                    p = store._read(f, path).predict_proba(X)
            except Exception as exc:  # noqa: BLE001 - a partial file: recorded, then failed
                seen.append(repr(exc))
                continue
            seen.append(next((i for i, ans in enumerate(answers) if np.array_equal(p, ans)),
                             "another model"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            with store.writer_lock(str(tmp_path)):
                store.save(str(tmp_path), b if i % 2 == 0 else a)
    finally:
        done.set()
        reader.join()
    assert len(seen) > 0 and set(seen) <= {0, 1}, set(seen)


def test_failed_save_keeps_the_previous_model(trained, tmp_path, monkeypatch):
    _, m = trained
    store.save(str(tmp_path), m)
    before = (tmp_path / "classifier" / "model.npz").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(BackendError, match="disk is full"):
        store.save(str(tmp_path), m)
    assert (tmp_path / "classifier" / "model.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "classifier")) == ["model.npz"]


def test_stray_temporary_files_are_cleaned_by_the_next_writer(tmp_path):
    os.makedirs(tmp_path / "classifier")
    (tmp_path / "classifier" / ".tmp-killed.npz").write_bytes(b"half")
    with store.writer_lock(str(tmp_path)):
        pass
    assert not (tmp_path / "classifier" / ".tmp-killed.npz").exists()


@pytest.mark.parametrize("damage", ["truncate", "bad shape", "pickle inside", "future"])
def test_damaged_models_are_refused(trained, tmp_path, damage):
    _, m = trained
    arrays = m.to_arrays()
    path = tmp_path / "model.npz"
    if damage == "truncate":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "bad shape":
        arrays["layer0_kernel"] = arrays["layer0_kernel"][:, :3]
        np.savez(path, **arrays)
    elif damage == "pickle inside":
        arrays["columns"] = np.array([object()], dtype=object)
        np.savez(path, **arrays)
    else:
        arrays["meta"] = np.array(str(arrays["meta"]).replace('"format_version": 1',
                                                              '"format_version": 99'))
        np.savez(path, **arrays)
    with pytest.raises(BackendError) as err:
        store.load_file(str(path))
    assert err.value.status == 1


def test_model_arrays_are_plain_data(trained):
    _, m = trained
    for name, arr in m.to_arrays().items():
        assert arr.dtype != object, name
    assert isinstance(Model.from_arrays(m.to_arrays(), "x"), Model)
