"""Which indicators a model relies on: permutation importance, with NumPy.

An indicator matters as much as the model's score drops when its values are
shuffled among the rows (Breiman 2001): the link between that indicator and
the outcome is broken, everything else is kept. It is measured on rows the
model did not train on (evaluation's held-out 20 %), so it says what the
model uses to generalise, not what it memorised.

Kept cheap: a shuffled column changes only its own inputs of the first
layer, so each column costs one small product (its inputs times their kernel
rows, `Network.first_layer_change`) and the rest of the forward pass
(`Network.head`); at most MAX_ROWS rows
and MAX_COLUMNS columns (those with the largest first-layer weights) are
measured.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlbackend import metrics
from mlbackend.model import Model

#: Held-out rows used per model (a seeded sample beyond)...
MAX_ROWS = 1000
#: ... and fewer when there are many columns: rows x columns measured at most.
MAX_ROW_COLUMNS = 100_000
#: Columns measured per model; the others get NaN.
MAX_COLUMNS = 200


def score_function(model: Model, y_idx: np.ndarray) -> tuple[str, Callable[[np.ndarray], float]]:
    """What importance is the loss of: AUC for two classes (the ranking that
    finds the students at risk), else the weighted F1 (the evaluation's score)."""
    nclasses = len(model.classes)
    if nclasses == 2:
        positive = model.classes.index(1) if 1 in model.classes else 1
        is_pos = y_idx == positive
        if 0 < is_pos.sum() < len(is_pos):
            return "AUC", lambda p: float(metrics.roc_auc(is_pos, p[:, positive]) or 0.0)
    return "weighted F1", lambda p: metrics.classification_scores(
        y_idx, p.argmax(axis=1), nclasses
    )["f1_score"]


def permutation_importance(
    model: Model, X: np.ndarray, y_idx: np.ndarray, rng: np.random.Generator
) -> tuple[str, np.ndarray]:
    """(score name, drop of that score per used column of `model` when the
    column is shuffled); NaN for columns not measured."""
    groups = model.inputs.groups()
    most = max(min(MAX_ROWS, MAX_ROW_COLUMNS // max(min(len(groups), MAX_COLUMNS), 1)), 2)
    if len(y_idx) > most:
        rows = np.sort(rng.choice(len(y_idx), most, replace=False))
        X, y_idx = X[rows], y_idx[rows]
    name, score = score_function(model, y_idx)
    importance = np.full(len(groups), np.nan)
    if len(y_idx) < 2:
        return name, importance
    network = model.network
    h = model.inputs(X)
    z = network.first_layer(h)
    base = score(network.head(z))
    measured = np.arange(len(groups))
    if len(groups) > MAX_COLUMNS:
        weight = np.array([network.input_weight(g) for g in groups])
        measured = np.sort(np.argsort(-weight, kind="stable")[:MAX_COLUMNS])
    for j in measured:
        g = groups[j]
        part = h[:, g]
        shuffled = part[rng.permutation(len(y_idx))]
        importance[j] = base - score(
            network.head(z + network.first_layer_change(shuffled - part, g))
        )
    return name, importance
