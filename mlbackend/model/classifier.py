"""The trained classifier as plain data, and prediction with NumPy alone.

A `Model` holds everything prediction needs: its `Inputs` (which columns,
how encoded and scaled) and its `Network`. Keeping it as arrays (not a
Keras object) is what lets a prediction call answer without importing
TensorFlow, and what makes the stored format data only
(`mlbackend.model.format`). `mlbackend.training` trains it with TensorFlow
and hands back one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mlbackend.model.limits as limits
from mlbackend.contract import BackendError
from mlbackend.model.inputs import Inputs
from mlbackend.model.network import Network


@dataclass
class Model:
    """A trained feed-forward classifier.

    `format_version` is the version of `mlbackend.model.format` this model is
    written in: chosen by whoever made it (training, the conversion of an old
    model) and read back from its file, never worked out from its arrays.
    `logit_shift` (one per class, or None) is what training added to the
    output layer's bias (see `mlbackend.training.DECISION_SHIFT_POWER`): it is
    in the weights, so every reader predicts the same; it is kept so that
    training on can take it out (`unshifted_network`).
    """

    classes: list[int]
    nfeatures: int
    inputs: Inputs
    network: Network
    format_version: int
    feature_names: list[str] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    logit_shift: np.ndarray | None = None

    @property
    def columns(self) -> np.ndarray:
        """Indices of the dataset columns the model reads."""
        return self.inputs.columns

    @property
    def hidden_units(self) -> list[int]:
        return self.network.hidden_units

    @property
    def activation(self) -> str:
        return self.network.activation

    @property
    def parameters(self) -> int:
        return self.network.parameters

    @property
    def nbytes(self) -> int:
        """Memory the loaded model takes (its arrays)."""
        return self.inputs.nbytes + self.network.nbytes

    def unshifted_network(self) -> Network:
        """The network as training left it, before the decision shift."""
        if self.logit_shift is None:
            return self.network
        return self.network.shift_output(-self.logit_shift)

    def check_features(self, nfeatures: int) -> None:
        if nfeatures != self.nfeatures:
            raise BackendError(
                f"The dataset has {nfeatures} features but this model was trained with "
                f"{self.nfeatures}. The features of a model cannot change; train a new model."
            )

    def check_work(self, rows: int) -> None:
        """Refuse a call that would take this model far longer than a real one."""
        if rows * self.parameters > limits.MAX_WORK:
            raise BackendError(
                f"{rows} rows through this model's {self.parameters} weights would take "
                f"{rows * self.parameters:.2g} multiply-adds, more than the "
                f"{limits.MAX_WORK:.0e} allowed: the model is far larger than the ones this "
                "program trains. Send fewer rows at a time, or train a new model."
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
        if bad.size and not np.isfinite(proba).all():
            raise BackendError(
                "The model's output is not a number for some rows: its weights are "
                "damaged or out of range. Train the model again or import a good copy."
            )
        return proba

    @property
    def block_rows(self) -> int:
        """Rows predicted at once: each row takes, in float64, its input, its
        used columns, the network's (encoded) inputs, and every layer's output
        twice (the product and the activation)."""
        widths = [int(self.inputs.columns.size), self.inputs.width, *self.network.widths]
        per_row = 8 * (self.nfeatures + 2 * sum(widths))
        return max(1, limits.PREDICT_BLOCK_BYTES // per_row)

    def _forward(self, X: np.ndarray, dtype: type) -> np.ndarray:
        """Softmax outputs of a block of rows (see `block_rows`)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self.network.proba(self.inputs(X, dtype))
