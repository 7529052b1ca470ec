"""Metrics against definitions computed the slow, obvious way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlbackend import metrics


def brute_force_auc(pos, score):
    p = [s for s, y in zip(score, pos) if y]
    n = [s for s, y in zip(score, pos) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(p, n))
    return wins / (len(p) * len(n))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.3
    score = np.round(rng.random(60), 1)  # many ties
    assert metrics.roc_auc(y, score) == pytest.approx(brute_force_auc(y, score))


def test_auc_undefined_with_one_class():
    assert metrics.roc_auc(np.array([True, True]), np.array([0.2, 0.4])) is None


def test_roc_curve_ends_and_area():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.1])
    fpr, tpr = metrics.roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, s))


def test_weighted_scores_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1])
    yhat = np.array([0, 0, 0, 1, 1, 0])
    s = metrics.classification_scores(y, yhat, 2)
    # class 0: p=3/4 r=3/4 f=3/4 (support 4); class 1: p=1/2 r=1/2 f=1/2 (support 2)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["balanced accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert s["precision"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    assert s["f1_score"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    assert metrics.confusion_matrix(y, yhat, 2).tolist() == [[3, 1], [1, 1]]


def test_brier_and_expected_calibration_error_by_hand():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    # (0.1^2 + 0.3^2 + 0.6^2 + 0.5^2) / 4, for the usual binary Brier score.
    assert metrics.brier_score(y, proba) == pytest.approx((0.01 + 0.09 + 0.36 + 0.25) / 4)
    # Confidences 0.9 (right), 0.7 (right), 0.6 (wrong), 0.5 (right): bins 9, 7, 6, 5.
    expected = (abs(1 - 0.9) + abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.5)) / 4
    assert metrics.expected_calibration_error(y, proba) == pytest.approx(expected)
