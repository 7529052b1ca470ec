"""Old-backend model files written as moodlemlbackend writes them, and the
answers they must give (from a Keras network with the same weights, not
from our code): the fixtures of the legacy tests and the replicas' imports.

A joblib pickle of a `moodlemlbackend.model.tensor.TF` object with the same
opcodes and globals (written by a pure-Python pickler that appends the array
bytes after the wrapper's BUILD, as joblib does, with stand-in classes
registered under the old module names only while writing), beside a
SavedModel whose variables carry the tf.keras names
`layer_with_weights-N/{kernel,bias}`.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from mlbackend import dataset, legacy

#: Columns the fixture's old model kept (of 20): the 3.x backend dropped
#: columns without variance; 19 is dropped too, so max(columns) + 1 != 20.
VARIABLE_COLUMNS = [c for c in range(20) if c not in (3, 7, 19)]
HIDDEN = 8


@contextlib.contextmanager
def old_module_names() -> Iterator[dict[str, type]]:
    """Stand-in classes under moodlemlbackend's and joblib's module names,
    registered in sys.modules only while a fixture pickle is written."""
    tf_cls = type("TF", (), {"__module__": "moodlemlbackend.model.tensor"})
    wrapper = type("NumpyArrayWrapper", (), {"__module__": "joblib.numpy_pickle"})
    modules = {
        name: types.ModuleType(name)
        for name in (
            "moodlemlbackend",
            "moodlemlbackend.model",
            "moodlemlbackend.model.tensor",
            "joblib",
            "joblib.numpy_pickle",
        )
    }
    modules["moodlemlbackend.model.tensor"].TF = tf_cls
    modules["joblib.numpy_pickle"].NumpyArrayWrapper = wrapper
    with mock.patch.dict(sys.modules, modules):
        yield {"TF": tf_cls, "NumpyArrayWrapper": wrapper}


class JoblibLikePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes arrays the way joblib.dump does: a NumpyArrayWrapper object,
    then (outside the pickle frames) the raw array bytes."""

    def __init__(self, file: io.BytesIO, wrapper: type) -> None:
        super().__init__(file, protocol=4)
        self.wrapper = wrapper

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, np.ndarray):
            w = self.wrapper()
            w.__dict__.update(
                subclass=np.ndarray, shape=obj.shape, order="C", dtype=obj.dtype, allow_mmap=True
            )
            super().save(w)
            self.framer.commit_frame(force=True)
            self.framer.file_write(obj.tobytes("C"))
            return
        super().save(obj, save_persistent_id)


def legacy_pickle(state: dict[str, Any]) -> bytes:
    with old_module_names() as cls:
        obj = cls["TF"]()
        obj.__dict__.update(state)
        buf = io.BytesIO()
        JoblibLikePickler(buf, cls["NumpyArrayWrapper"]).dump(obj)
    return buf.getvalue()


def tf_state(n_inputs: int, columns: list[int] | None = None, **changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "n_epoch": 110,
        "batch_size": 1414,
        "n_features": n_inputs,
        "n_hidden": HIDDEN,
        "n_hidden_layers": 2,
        "n_classes": 2,
    }
    if columns is not None:
        state["variable_columns"] = np.array(columns, dtype=np.int64)
    state.update(changes)
    return state


def write_savedmodel(path: Path, weights: list[np.ndarray], activations: list[str]) -> None:
    """A SavedModel whose checkpoint has tf.keras's variable names, plus a
    keras_metadata.pb naming the activations (as tf.keras 2 wrote them)."""
    from mlbackend.tf import import_tensorflow

    import_tensorflow()  # first, quietly
    # The whole API (tf.Module, tf.saved_model), which the program never loads.
    import tensorflow as tf

    root = tf.Module()
    for i in range(len(weights) // 2):
        layer = tf.Module()
        layer.kernel = tf.Variable(weights[2 * i])
        layer.bias = tf.Variable(weights[2 * i + 1])
        setattr(root, f"layer_with_weights-{i}", layer)
    optimizer = tf.Module()
    optimizer.iter = tf.Variable(np.int64(42))  # the real one has optimizer state too
    root.optimizer = optimizer
    tf.saved_model.save(root, str(path))
    layers = [
        {
            "class_name": "Dense",
            "config": {"units": int(weights[2 * i].shape[1]), "activation": act},
        }
        for i, act in enumerate(activations)
    ]
    (path / "keras_metadata.pb").write_bytes(
        b"\n\x04root\x12\x11_tf_keras_network" + json.dumps({"layers": layers}).encode()
    )


def random_weights(sizes: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(sizes, sizes[1:]):
        out.append((rng.normal(size=(a, b)) * 1.2 / np.sqrt(a)).astype(np.float32))
        out.append((rng.normal(size=b) * 0.3).astype(np.float32))
    return out


def keras_reference(X: np.ndarray, weights: list[np.ndarray], activation: str) -> np.ndarray:
    """Class probabilities from a Keras network with these weights."""
    from mlbackend.tf import import_tensorflow

    import_tensorflow()  # first, quietly: Keras imports it
    import keras

    layers: list[Any] = [keras.Input(shape=(weights[0].shape[0],))]
    for i in range(len(weights) // 2 - 1):
        layers.append(keras.layers.Dense(weights[2 * i].shape[1], activation=activation))
    layers.append(keras.layers.Dense(weights[-1].shape[0], activation="softmax"))
    net = keras.Sequential(layers)
    net.set_weights(weights)
    return np.asarray(net.predict(X, verbose=0), dtype=np.float64)


def outputdir_with(tmp_path: Path, source: Path) -> Path:
    """An OUTPUTDIR whose classifier/ is a copy of `source`."""
    out = tmp_path / "model"
    shutil.copytree(source, out / "classifier")
    return out


def check_predictions(answer: dict[str, Any], expected: np.ndarray, ids: list[str]) -> None:
    rows = answer["predictions"]
    assert [r[0] for r in rows] == ids
    assert all(isinstance(v, str) for r in rows for v in r)
    labels = np.array([int(r[1]) for r in rows])
    probs = np.array([float(r[2]) for r in rows])
    assert np.array_equal(labels, expected.argmax(axis=1))
    np.testing.assert_allclose(probs, expected.max(axis=1), atol=1e-5)
    assert len(set(labels)) == 2  # the fixture's network really decides


def make_legacy3(d: Path, predict_csv: str) -> dict[str, Any]:
    """A moodlemlbackend 3.x classifier/ at `d` and the answers it must give
    for `predict_csv`."""
    d.mkdir()
    weights = random_weights([len(VARIABLE_COLUMNS), HIDDEN, HIDDEN, 2], seed=3)
    (d / "classifier.pkl").write_bytes(
        legacy_pickle(tf_state(len(VARIABLE_COLUMNS), VARIABLE_COLUMNS))
    )
    write_savedmodel(d / "model.ckpt", weights, ["relu", "relu", "softmax"])
    ds = dataset.read_prediction(predict_csv)
    proba = keras_reference(ds.X[:, VARIABLE_COLUMNS], weights, "relu")
    return {"dir": d, "weights": weights, "proba": proba, "ids": ds.sample_ids}


def make_export2(d: Path, predict_csv: str) -> dict[str, Any]:
    """A moodlemlbackend 2.x export in `d` (model.json, one tanh layer of 10)
    and the answers it must give for `predict_csv`."""
    weights = random_weights([20, 10, 2], seed=4)
    doc = {"n_features": 20, "n_classes": 2, "n_hidden": 10}
    for key, w in zip(legacy._JSON_KEYS, weights):
        doc[key] = w.astype(np.float64).tolist()
    (d / "model.json").write_text(json.dumps(doc))
    ds = dataset.read_prediction(predict_csv)
    return {
        "dir": d,
        "doc": doc,
        "weights": weights,
        "proba": keras_reference(ds.X, weights, "tanh"),
        "ids": ds.sample_ids,
    }
