"""Classification metrics, computed with NumPy.

Written here rather than taken from scikit-learn: importing scikit-learn
(and SciPy behind it) costs about a second per call and hundreds of MB in
the frozen bundle, for a dozen lines of arithmetic.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y: np.ndarray, yhat: np.ndarray, nclasses: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones (class indices)."""
    cm = np.zeros((nclasses, nclasses), dtype=np.int64)
    np.add.at(cm, (y, yhat), 1)
    return cm


def classification_scores(y: np.ndarray, yhat: np.ndarray, nclasses: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, and precision/recall/F1 weighted by support."""
    cm = confusion_matrix(y, yhat, nclasses)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = support.sum()
    weights = support / total if total else support
    present = support > 0
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "balanced accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "precision": float((precision * weights).sum()),
        "recall": float((recall * weights).sum()),
        "f1_score": float((f1 * weights).sum()),
    }


def roc_auc(y_positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None if undefined."""
    y_positive = np.asarray(y_positive, dtype=bool)
    npos = int(y_positive.sum())
    nneg = int(len(y_positive) - npos)
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score)[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_positive].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def roc_curve(y_positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    y_positive = np.asarray(y_positive, dtype=bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s = np.asarray(score)[order]
    yp = y_positive[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(yp)[distinct]
    fps = (distinct + 1) - tps
    npos, nneg = max(int(yp.sum()), 1), max(int((~yp).sum()), 1)
    return np.r_[0.0, fps / nneg], np.r_[0.0, tps / npos]


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean squared distance between the class probabilities and the true
    class, halved: for two classes it is the usual mean of (p - y)^2 for
    either class (0 is perfect, 0.25 a constant 0.5)."""
    onehot = np.zeros_like(proba, dtype=np.float64)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.square(proba - onehot).sum(axis=1).mean() / 2) if len(y) else 0.0


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """How far the probability of the predicted class is from how often that
    class is right (Guo et al. 2017): rows binned by that probability in
    `bins` equal widths, |accuracy - mean probability| averaged over the bins,
    weighted by their rows. It is the probability Moodle filters on (it keeps
    predictions of probability >= 0.6), so it is the one that must mean what it says."""
    if not len(y):
        return 0.0
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(y))
