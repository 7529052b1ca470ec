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
from mlbackend.contract import BackendError

FORMAT_NAME = "mlbackend-classifier"
#: The newest format version this program reads. Version 1 files are ReLU
#: networks; a model with another hidden activation is written as version 2,
#: so that a program that only knows version 1 (and would silently use ReLU)
#: refuses it instead of predicting nonsense.
FORMAT_VERSION = 2

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
        proba = self._forward(X, np.float32)
        bad = ~np.isfinite(proba).all(axis=1)
        if bad.any():
            proba[bad] = self._forward(X[bad], np.float64)
            if not np.isfinite(proba).all():
                raise BackendError(
                    "The model's output is not a number for some rows: its weights are "
                    "damaged or out of range. Train the model again or import a good copy.")
        return proba

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
                                f"model ({why}). Train the model again or import a good copy.")
        try:
            meta = json.loads(str(arrays["meta"]))
            if meta.get("format") != FORMAT_NAME:
                raise bad("unknown format")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise bad(f"format version {meta['format_version']} is newer than this "
                          f"program understands")
            activation = str(meta.get("activation", "relu"))
            if activation not in ACTIVATIONS:
                raise bad(f"unknown activation {activation!r}")
            if meta.get("output", "softmax") != "softmax":
                raise bad(f"unknown output {meta['output']!r}")
            classes = [int(c) for c in meta["classes"]]
            nfeatures = int(meta["nfeatures"])
            columns = np.asarray(arrays["columns"], dtype=np.int64)
            mean = np.asarray(arrays["mean"], dtype=np.float32)
            scale = np.asarray(arrays["scale"], dtype=np.float32)
            nlayers = len(meta["hidden_units"]) + 1
            weights = []
            for i in range(nlayers):
                weights.append(np.asarray(arrays[f"layer{i}_kernel"], dtype=np.float32))
                weights.append(np.asarray(arrays[f"layer{i}_bias"], dtype=np.float32))
        except BackendError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise bad(f"missing or unreadable part: {exc}") from None
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
        if width != len(classes):
            raise bad("the output layer does not match the classes")
        if not all(np.all(np.isfinite(w)) for w in weights):
            raise bad("weights are not finite numbers")
        return cls(classes=classes, nfeatures=nfeatures, columns=columns, mean=mean,
                   scale=scale, weights=weights, feature_names=list(meta.get("feature_names", [])),
                   history=dict(meta.get("history", {})), activation=activation)
