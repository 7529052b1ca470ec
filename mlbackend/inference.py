"""The trained classifier as plain data, and prediction with NumPy alone.

A `Model` holds everything prediction needs: which columns to keep, how to
scale them, and the weights of a feed-forward network (ReLU hidden layers,
or tanh for models converted from moodlemlbackend 2.x) with a softmax
output. Keeping
it as arrays (not a Keras object) is what lets a prediction call answer
without importing TensorFlow, and what makes the stored format data only.
`mlbackend.training` trains it with TensorFlow and hands back one of these.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlbackend import __version__
from mlbackend.contract import BackendError, shown

FORMAT_NAME = "mlbackend-classifier"
#: The newest format version this program reads. Version 1 files are ReLU
#: networks; a model with another hidden activation is written as version 2,
#: so that a program that only knows version 1 (and would silently use ReLU)
#: refuses it instead of predicting nonsense.
FORMAT_VERSION = 2

#: What a model may ask of the machine. A model file is small, but the work
#: it causes grows with its shape: prediction allocates every layer's width
#: for each row, and a loaded model stays in memory. Real models have at most
#: a few hundred features wide (10,000 is the dataset limit), hidden layers
#: of at most 128 units (moodlemlbackend's: a few hundred), 2 or 3 layers and
#: a handful of classes; these bounds are far above that and far below what
#: would exhaust a server.
MAX_FEATURES = 10_000
MAX_HIDDEN_WIDTH = 4096
MAX_HIDDEN_LAYERS = 16
MAX_CLASSES = 1000
MAX_PARAMETERS = 16_000_000          # 64 MB of float32 weights
#: Memory one block of predicted rows may take for the network's layers:
#: rows are predicted in blocks sized from the model's widths.
PREDICT_BLOCK_BYTES = 64 << 20
#: Most multiply-adds (rows x weights) one call may ask of a model: time,
#: not memory, is what a large model costs per row. A real model (74,000
#: weights for 450 features) predicts 100,000 rows in 7.4e9; this is about
#: a minute of two cores.
MAX_WORK = 500_000_000_000

#: Hidden-layer activations, by the name stored in the model file.
ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


@dataclass
class Model:
    """A trained feed-forward classifier.

    `columns` are the indices of the input features the network sees (the
    ones that varied in the first training); `mean` and `scale` standardise
    them. `weights` alternate kernels and biases, input to output.
    `activation` is the hidden layers' (a key of `ACTIVATIONS`).
    """

    classes: list[int]
    nfeatures: int
    columns: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    feature_names: list[str] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    activation: str = "relu"

    @property
    def hidden_units(self) -> list[int]:
        return [int(w.shape[1]) for w in self.weights[0:-2:2]]

    def check_features(self, nfeatures: int) -> None:
        if nfeatures != self.nfeatures:
            raise BackendError(
                f"The dataset has {nfeatures} features but this model was trained with "
                f"{self.nfeatures}. The features of a model cannot change; train a new model.")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per sample, columns in `classes` order.

        In float32; rows whose inputs are so far out of range that float32
        overflows (inf - inf is NaN) are computed again in float64. A model
        whose output is still not a number is refused: a probability of
        "nan" would reach Moodle as an answer."""
        self.check_features(X.shape[1])
        self.check_work(X.shape[0])
        proba = np.empty((X.shape[0], len(self.classes)), dtype=np.float64)
        step = self.block_rows
        for start in range(0, X.shape[0], step):
            proba[start:start + step] = self._forward(X[start:start + step], np.float32)
        bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        for start in range(0, bad.size, step):
            rows = bad[start:start + step]
            proba[rows] = self._forward(X[rows], np.float64)
        if bad.size:
            if not np.isfinite(proba).all():
                raise BackendError(
                    "The model's output is not a number for some rows: its weights are "
                    "damaged or out of range. Train the model again or import a good copy.")
        return proba

    def check_work(self, rows: int) -> None:
        """Refuse a call that would take this model far longer than a real one."""
        if rows * self.parameters > MAX_WORK:
            raise BackendError(
                f"{rows} rows through this model's {self.parameters} weights would take "
                f"{rows * self.parameters:.2g} multiply-adds, more than the {MAX_WORK:.0e} "
                "allowed: the model is far larger than the ones this program trains. Send "
                "fewer rows at a time, or train a new model.")

    @property
    def parameters(self) -> int:
        return sum(int(w.size) for w in self.weights)

    @property
    def nbytes(self) -> int:
        """Memory the loaded model takes (its arrays)."""
        return sum(int(a.nbytes) for a in [self.columns, self.mean, self.scale, *self.weights])

    @property
    def block_rows(self) -> int:
        """Rows predicted at once: each row takes, in float64, its input, and
        every layer's output twice (the product and the activation)."""
        widths = [int(self.columns.size)] + [int(w.shape[1]) for w in self.weights[0::2]]
        per_row = 8 * (self.nfeatures + 2 * sum(widths))
        return max(1, PREDICT_BLOCK_BYTES // per_row)

    def standardised(self, X: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """The network's inputs: the kept columns, centred and scaled."""
        return (X[:, self.columns].astype(dtype) - self.mean) / self.scale

    def _forward(self, X: np.ndarray, dtype: type) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            h = self.standardised(X, dtype)
            layers = list(zip(self.weights[0::2], self.weights[1::2]))
            activate = ACTIVATIONS[self.activation]
            for kernel, bias in layers[:-1]:
                h = activate(h @ kernel.astype(dtype, copy=False) + bias)
            kernel, bias = layers[-1]
            logits = (h @ kernel.astype(dtype, copy=False) + bias).astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------
    # To and from plain arrays (the storage format, see mlbackend.store)

    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {
            "format": FORMAT_NAME,
            "format_version": 1 if self.activation == "relu" else 2,
            "classes": self.classes,
            "nfeatures": self.nfeatures,
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "output": "softmax",
            "feature_names": self.feature_names,
            "history": self.history,
            # Which program wrote the file: for support, never read back.
            "written_by": f"mlbackend {__version__}",
        }
        arrays = {
            "meta": np.array(json.dumps(meta)),
            "columns": self.columns.astype(np.int64),
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
        }
        for i, w in enumerate(self.weights):
            arrays[f"layer{i // 2}_{'kernel' if i % 2 == 0 else 'bias'}"] = w.astype(np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str) -> "Model":
        """Rebuild a model, checking every shape: a damaged file must not load."""
        def bad(why: str) -> BackendError:
            return BackendError(f"The stored model {source} is damaged or not an mlbackend "
                                f"model ({why}).")
        try:
            meta = json.loads(str(arrays["meta"]))
            if not isinstance(meta, dict):
                raise bad(f"its metadata is a {type(meta).__name__}, not an object")
            if meta.get("format") != FORMAT_NAME:
                raise bad("unknown format")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise bad(f"format version {shown(meta['format_version'])} is newer than this "
                          f"program understands")
            activation = str(meta.get("activation", "relu"))
            if activation not in ACTIVATIONS:
                raise bad(f"unknown activation {shown(activation)}")
            if meta.get("output", "softmax") != "softmax":
                raise bad(f"unknown output {shown(meta['output'])}")
            classes, nfeatures = meta["classes"], meta["nfeatures"]
            hidden = meta["hidden_units"]
            feature_names = meta.get("feature_names", [])
            history = meta.get("history", {})
            if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES \
                    or not all(_whole(c) for c in classes):
                raise bad(f"classes must be 2 to {MAX_CLASSES} whole numbers, not "
                          f"{shown(classes)}")
            classes = [int(c) for c in classes]
            if not _whole(nfeatures) or not 1 <= nfeatures <= MAX_FEATURES:
                raise bad(f"nfeatures must be a whole number from 1 to {MAX_FEATURES}, not "
                          f"{shown(nfeatures)}")
            nfeatures = int(nfeatures)
            if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
                raise bad(f"hidden_units must list at most {MAX_HIDDEN_LAYERS} layers, not "
                          f"{shown(hidden)}")
            if not isinstance(feature_names, list) \
                    or not all(isinstance(n, str) for n in feature_names):
                raise bad(f"feature_names must be a list of names, not {shown(feature_names)}")
            if not isinstance(history, dict):
                raise bad(f"history must be an object, not {shown(history)}")
            columns = np.asarray(arrays["columns"], dtype=np.int64)
            mean = np.asarray(arrays["mean"], dtype=np.float32)
            scale = np.asarray(arrays["scale"], dtype=np.float32)
            nlayers = len(hidden) + 1
            weights = []
            for i in range(nlayers):
                weights.append(np.asarray(arrays[f"layer{i}_kernel"], dtype=np.float32))
                weights.append(np.asarray(arrays[f"layer{i}_bias"], dtype=np.float32))
        except BackendError:
            raise
        except (KeyError, ValueError, TypeError, RecursionError, OverflowError) as exc:
            raise bad(f"missing or unreadable part: {shown(str(exc))}") from None
        if columns.ndim != 1 or (columns.size and (columns.min() < 0 or columns.max() >= nfeatures)):
            raise bad("column indices out of range")
        if mean.shape != columns.shape or scale.shape != columns.shape or not np.all(scale > 0):
            raise bad("scaling does not match the columns")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
            raise bad("scaling is not finite numbers")
        width = columns.size
        for i in range(nlayers):
            kernel, bias = weights[2 * i], weights[2 * i + 1]
            if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
                raise bad(f"layer {i} has the wrong shape")
            width = kernel.shape[1]
            if i < nlayers - 1 and not 1 <= width <= MAX_HIDDEN_WIDTH:
                raise bad(f"hidden layer {i + 1} has {width} units; at most "
                          f"{MAX_HIDDEN_WIDTH} are accepted")
        parameters = sum(int(w.size) for w in weights)
        if parameters > MAX_PARAMETERS:
            raise bad(f"{parameters} weights; at most {MAX_PARAMETERS} are accepted")
        if width != len(classes):
            raise bad("the output layer does not match the classes")
        if not all(np.all(np.isfinite(w)) for w in weights):
            raise bad("weights are not finite numbers")
        return cls(classes=classes, nfeatures=nfeatures, columns=columns, mean=mean,
                   scale=scale, weights=weights, feature_names=list(feature_names),
                   history=dict(history), activation=activation)


def _whole(value: Any) -> bool:
    """A JSON whole number (not a bool, not a float with a fraction)."""
    return isinstance(value, int) and not isinstance(value, bool)
