"""The trained classifier as plain data, and prediction with NumPy alone.

A `Model` holds everything prediction needs: which columns to keep, how to
encode them (a piecewise-linear encoding, or plain centring for older
models), and the weights of a feed-forward network (ReLU hidden layers,
or tanh for models converted from moodlemlbackend 2.x) with a softmax
output. Keeping
it as arrays (not a Keras object) is what lets a prediction call answer
without importing TensorFlow, and what makes the stored format data only.
`mlbackend.training` trains it with TensorFlow and hands back one of these.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlbackend import __version__
from mlbackend.contract import BackendError, shown

FORMAT_NAME = "mlbackend-classifier"
#: The newest format version this program reads. Version 1 files are ReLU
#: networks on centred inputs; a model with another hidden activation is
#: written as version 2, so that a program that only knows version 1 (and would
#: silently use ReLU) refuses it instead of predicting nonsense. Version 3
#: adds the piecewise-linear encoding of the inputs (`PiecewiseLinear`), which
#: an older program would not apply.
FORMAT_VERSION = 3
#: Most bin edges per column of the piecewise-linear encoding (32 bins).
MAX_EDGES = 33

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
MAX_PARAMETERS = 16_000_000  # 64 MB of float32 weights
#: Largest logit shift accepted in a file: training makes |shift| <= a few.
MAX_LOGIT_SHIFT = 50.0
#: Memory one block of predicted rows may take for the network's layers:
#: rows are predicted in blocks sized from the model's widths.
PREDICT_BLOCK_BYTES = 64 << 20
#: Most multiply-adds (rows x weights) one call may ask of a model: time,
#: not memory, is what a large model costs per row. A real model (74,000
#: weights for 450 features) predicts 100,000 rows in 7.4e9; this is about
#: a minute of two cores.
MAX_WORK = 500_000_000_000

#: Hidden-layer activations, by the name stored in the model file.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


@dataclass
class PiecewiseLinear:
    """The piecewise-linear encoding of numeric inputs (Gorishniy et al. 2022,
    "On Embeddings for Numerical Features in Tabular Deep Learning").

    Column j (of the model's used columns) with bin edges e_0 < ... < e_m
    becomes m inputs, component t being (x - e_t) / (e_{t+1} - e_t) clipped
    to [0, 1]: how far x has gone through bin t. A linear layer on top of it
    is any piecewise-linear function of x with knots at the edges, so the
    network can bend each indicator where its training rows put the
    quantiles (measured: site-b AUC 0.971 -> 0.977). `counts[j]` is the
    number of edges of column j; `edges` holds them all, column after column.
    How many bins a column may get is the trainer's choice (`fit`'s
    `max_edges`), at most MAX_EDGES - 1.
    """

    counts: np.ndarray
    edges: np.ndarray

    @classmethod
    def fit(cls, Xc: np.ndarray, max_edges: int = MAX_EDGES) -> PiecewiseLinear:
        """Edges per column of `Xc` (the used columns of the training rows):
        its distinct values when it has at most `max_edges` of them, else its
        quantiles at `max_edges` evenly spaced levels (repeats merged). A
        column constant on these rows gets the edges v and v + 1."""
        counts, edges = [], []
        max_edges = int(min(max(max_edges, 2), MAX_EDGES))
        levels = np.linspace(0.0, 1.0, max_edges)
        for j in range(Xc.shape[1]):
            col = Xc[:, j]
            distinct = np.unique(col).astype(np.float32)
            if len(distinct) > max_edges:
                distinct = np.unique(np.quantile(col.astype(np.float64), levels).astype(np.float32))
            if len(distinct) < 2:
                v = float(distinct[0]) if len(distinct) else 0.0
                distinct = np.array([v, v + 1.0], dtype=np.float32)
            counts.append(len(distinct))
            edges.append(distinct)
        return cls(
            counts=np.asarray(counts, dtype=np.int64),
            edges=np.concatenate(edges).astype(np.float32) if edges else np.zeros(0, np.float32),
        )

    @property
    def width(self) -> int:
        """Number of encoded inputs."""
        return int((self.counts - 1).sum())

    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per encoded input: the used column it reads, its bin's lower edge
        and its bin's width (e_{t+1} - e_t, in float32)."""
        ends = np.cumsum(self.counts)
        keep = np.ones(len(self.edges), dtype=bool)
        keep[ends - 1] = False  # a column's last edge starts no bin
        source = np.repeat(np.arange(len(self.counts)), self.counts - 1)
        lower = self.edges[keep]
        upper = self.edges[np.flatnonzero(keep) + 1]
        return source, lower, (upper - lower).astype(np.float32)

    def encode(self, Xc: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """The encoding of `Xc` (rows of the used columns)."""
        source, lower, width = self.components()
        return np.clip(
            (Xc.astype(dtype)[:, source] - lower.astype(dtype)) / width.astype(dtype), 0.0, 1.0
        )

    def check(self, ncolumns: int) -> str | None:
        """Why these arrays are not a valid encoding of `ncolumns` columns, or None."""
        if self.counts.shape != (ncolumns,) or self.edges.ndim != 1:
            return "the encoding does not match the columns"
        if ncolumns and (self.counts.min() < 2 or self.counts.max() > MAX_EDGES):
            return "the encoding has a column with a wrong number of bin edges"
        if int(self.counts.sum()) != self.edges.size:
            return "the encoding's bin edges do not match their counts"
        if not np.all(np.isfinite(self.edges)):
            return "the encoding's bin edges are not finite numbers"
        _, _, width = self.components()
        if not np.all(width > 0):
            return "the encoding's bin edges are not increasing"
        return None


@dataclass
class Model:
    """A trained feed-forward classifier.

    `columns` are the indices of the input features the network sees (the
    ones that varied in the first training). With an `encoding` (format
    version 3), they are encoded piecewise-linearly and `mean` and `scale`
    (one per encoded input) centre the result; without one (versions 1 and
    2), `mean` and `scale` standardise the columns themselves. `weights`
    alternate kernels and biases, input to output. `activation` is the hidden
    layers' (a key of `ACTIVATIONS`). `logit_shift` (one per class, or None)
    is what training added to the output layer's bias (see
    `mlbackend.training.DECISION_SHIFT_POWER`): it is in the weights, so every
    reader predicts the same; it is kept so that training on can take it out.
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
    encoding: PiecewiseLinear | None = None
    logit_shift: np.ndarray | None = None

    @property
    def hidden_units(self) -> list[int]:
        return [int(w.shape[1]) for w in self.weights[0:-2:2]]

    def check_features(self, nfeatures: int) -> None:
        if nfeatures != self.nfeatures:
            raise BackendError(
                f"The dataset has {nfeatures} features but this model was trained with "
                f"{self.nfeatures}. The features of a model cannot change; train a new model."
            )

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
            proba[start : start + step] = self._forward(X[start : start + step], np.float32)
        bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        for start in range(0, bad.size, step):
            rows = bad[start : start + step]
            proba[rows] = self._forward(X[rows], np.float64)
        if bad.size:
            if not np.isfinite(proba).all():
                raise BackendError(
                    "The model's output is not a number for some rows: its weights are "
                    "damaged or out of range. Train the model again or import a good copy."
                )
        return proba

    def check_work(self, rows: int) -> None:
        """Refuse a call that would take this model far longer than a real one."""
        if rows * self.parameters > MAX_WORK:
            raise BackendError(
                f"{rows} rows through this model's {self.parameters} weights would take "
                f"{rows * self.parameters:.2g} multiply-adds, more than the {MAX_WORK:.0e} "
                "allowed: the model is far larger than the ones this program trains. Send "
                "fewer rows at a time, or train a new model."
            )

    @property
    def parameters(self) -> int:
        return sum(int(w.size) for w in self.weights)

    @property
    def nbytes(self) -> int:
        """Memory the loaded model takes (its arrays)."""
        arrays = [self.columns, self.mean, self.scale, *self.weights]
        if self.encoding is not None:
            arrays += [self.encoding.counts, self.encoding.edges]
        return sum(int(a.nbytes) for a in arrays)

    @property
    def block_rows(self) -> int:
        """Rows predicted at once: each row takes, in float64, its input, its
        used columns, the network's (encoded) inputs, and every layer's output
        twice (the product and the activation)."""
        widths = [int(self.columns.size), int(self.mean.size)] + [
            int(w.shape[1]) for w in self.weights[0::2]
        ]
        per_row = 8 * (self.nfeatures + 2 * sum(widths))
        return max(1, PREDICT_BLOCK_BYTES // per_row)

    def standardised(self, X: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """The network's inputs: the kept columns, encoded (if the model has an
        encoding), centred and scaled."""
        h: np.ndarray = X[:, self.columns].astype(dtype)
        if self.encoding is not None:
            h = self.encoding.encode(h, dtype)
        return (h - self.mean.astype(dtype)) / self.scale.astype(dtype)

    @property
    def format_version(self) -> int:
        if self.encoding is not None:
            return 3
        return 1 if self.activation == "relu" else 2

    def _forward(self, X: np.ndarray, dtype: type) -> np.ndarray:
        """Softmax outputs of a block of rows (see `block_rows`)."""
        with np.errstate(over="ignore", invalid="ignore"):
            h = self.standardised(X, dtype)
            return self.head(h @ self.weights[0].astype(dtype, copy=False) + self.weights[1])

    def head(self, z: np.ndarray) -> np.ndarray:
        """Softmax outputs from the first layer's pre-activations `z` (in z's
        dtype): the part of the forward pass after the first matrix product,
        which permutation importance reuses (`mlbackend.importance`)."""
        dtype = z.dtype.type
        activate = ACTIVATIONS[self.activation]
        with np.errstate(over="ignore", invalid="ignore"):
            for kernel, bias in zip(self.weights[2::2], self.weights[3::2]):
                z = activate(z) @ kernel.astype(dtype, copy=False) + bias
            logits = z.astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)

    def input_groups(self) -> list[np.ndarray]:
        """For each used column, the positions of the network inputs made from it."""
        if self.encoding is None:
            return [np.array([j]) for j in range(len(self.columns))]
        ends = np.cumsum(self.encoding.counts - 1)
        return [np.arange(end - (count - 1), end) for end, count in zip(ends, self.encoding.counts)]

    # ------------------------------------------------------------------
    # To and from plain arrays (the storage format, see mlbackend.store)

    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
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
        if self.encoding is not None:
            meta["encoding"] = "piecewise-linear"
        if self.logit_shift is not None:
            meta["logit_shift"] = [float(v) for v in self.logit_shift]
        arrays = {
            "meta": np.array(json.dumps(meta)),
            "columns": self.columns.astype(np.int64),
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
        }
        if self.encoding is not None:
            arrays["encoding_counts"] = self.encoding.counts.astype(np.int64)
            arrays["encoding_edges"] = self.encoding.edges.astype(np.float32)
        for i, w in enumerate(self.weights):
            arrays[f"layer{i // 2}_{'kernel' if i % 2 == 0 else 'bias'}"] = w.astype(np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str) -> Model:
        """Rebuild a model, checking every shape: a damaged file must not load."""

        def bad(why: str) -> BackendError:
            return BackendError(
                f"The stored model {source} is damaged or not an mlbackend model ({why})."
            )

        try:
            meta = json.loads(str(arrays["meta"]))
            if not isinstance(meta, dict):
                raise bad(f"its metadata is a {type(meta).__name__}, not an object")
            if meta.get("format") != FORMAT_NAME:
                raise bad("unknown format")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise bad(
                    f"format version {shown(meta['format_version'])} is newer than this "
                    f"program understands"
                )
            activation = str(meta.get("activation", "relu"))
            if activation not in ACTIVATIONS:
                raise bad(f"unknown activation {shown(activation)}")
            if meta.get("output", "softmax") != "softmax":
                raise bad(f"unknown output {shown(meta['output'])}")
            classes, nfeatures = meta["classes"], meta["nfeatures"]
            hidden = meta["hidden_units"]
            feature_names = meta.get("feature_names", [])
            history = meta.get("history", {})
            logit_shift = meta.get("logit_shift")
            encoding = None
            if int(meta.get("format_version", 0)) >= 3:
                if meta.get("encoding") != "piecewise-linear":
                    raise bad(f"unknown encoding {shown(meta.get('encoding'))}")
                encoding = PiecewiseLinear(
                    counts=np.asarray(arrays["encoding_counts"], dtype=np.int64),
                    edges=np.asarray(arrays["encoding_edges"], dtype=np.float32),
                )
            if (
                not isinstance(classes, list)
                or not 2 <= len(classes) <= MAX_CLASSES
                or not all(_whole(c) for c in classes)
            ):
                raise bad(f"classes must be 2 to {MAX_CLASSES} whole numbers, not {shown(classes)}")
            classes = [int(c) for c in classes]
            if not _whole(nfeatures) or not 1 <= nfeatures <= MAX_FEATURES:
                raise bad(
                    f"nfeatures must be a whole number from 1 to {MAX_FEATURES}, not "
                    f"{shown(nfeatures)}"
                )
            nfeatures = int(nfeatures)
            if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
                raise bad(
                    f"hidden_units must list at most {MAX_HIDDEN_LAYERS} layers, not "
                    f"{shown(hidden)}"
                )
            if not isinstance(feature_names, list) or not all(
                isinstance(n, str) for n in feature_names
            ):
                raise bad(f"feature_names must be a list of names, not {shown(feature_names)}")
            if not isinstance(history, dict):
                raise bad(f"history must be an object, not {shown(history)}")
            if logit_shift is not None:
                if (
                    not isinstance(logit_shift, list)
                    or len(logit_shift) != len(classes)
                    or not all(
                        isinstance(v, int | float)
                        and not isinstance(v, bool)
                        and math.isfinite(v)
                        and abs(v) <= MAX_LOGIT_SHIFT
                        for v in logit_shift
                    )
                ):
                    raise bad(
                        f"logit_shift must be {len(classes)} numbers of at most "
                        f"{MAX_LOGIT_SHIFT} in size, not {shown(logit_shift)}"
                    )
                logit_shift = np.asarray(logit_shift, dtype=np.float32)
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
        if columns.ndim != 1 or (
            columns.size and (columns.min() < 0 or columns.max() >= nfeatures)
        ):
            raise bad("column indices out of range")
        width = columns.size
        if encoding is not None:
            why = encoding.check(columns.size)
            if why:
                raise bad(why)
            width = encoding.width
        if mean.shape != (width,) or scale.shape != (width,) or not np.all(scale > 0):
            raise bad("scaling does not match the columns")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
            raise bad("scaling is not finite numbers")
        for i in range(nlayers):
            kernel, bias = weights[2 * i], weights[2 * i + 1]
            if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
                raise bad(f"layer {i} has the wrong shape")
            width = kernel.shape[1]
            if i < nlayers - 1 and not 1 <= width <= MAX_HIDDEN_WIDTH:
                raise bad(
                    f"hidden layer {i + 1} has {width} units; at most "
                    f"{MAX_HIDDEN_WIDTH} are accepted"
                )
        parameters = sum(int(w.size) for w in weights)
        if parameters > MAX_PARAMETERS:
            raise bad(f"{parameters} weights; at most {MAX_PARAMETERS} are accepted")
        if width != len(classes):
            raise bad("the output layer does not match the classes")
        if not all(np.all(np.isfinite(w)) for w in weights):
            raise bad("weights are not finite numbers")
        return cls(
            classes=classes,
            nfeatures=nfeatures,
            columns=columns,
            mean=mean,
            scale=scale,
            weights=weights,
            feature_names=list(feature_names),
            history=dict(history),
            activation=activation,
            encoding=encoding,
            logit_shift=logit_shift,
        )


def _whole(value: Any) -> bool:
    """A JSON whole number (not a bool, not a float with a fraction)."""
    return isinstance(value, int) and not isinstance(value, bool)
