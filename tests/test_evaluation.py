"""Evaluation says why: the summary in the answer's `info` (what Moodle shows
the admin), the importance table and calibration in metrics.json, the pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlbackend import dataset, evaluation, importance, synthetic, training
from mlbackend.contract import EVALUATION_FIGURES

#: Header names as Moodle sends them: indicator class names, some with parameters.
NAMES = [
    "\\core\\analytics\\indicator\\any_write_action",
    "\\core\\analytics\\indicator\\read_actions",
    "\\mod_assign\\analytics\\indicator\\cognitive_depth",
    "\\core_course\\analytics\\indicator\\no_teacher",
    "\\core\\analytics\\indicator\\any_course_access",
    "\\mod_quiz\\analytics\\indicator\\social_breadth",
    "\\core_user\\analytics\\indicator\\user_track_forums",
    "\\mod_forum\\analytics\\indicator\\cognitive_depth",
]


@pytest.fixture(scope="module")
def named_csv(tmp_path_factory) -> str:
    """The class follows column 2 (cognitive_depth) alone, strongly; the rest is noise."""
    rng = np.random.default_rng(5)
    X = np.round(rng.uniform(-1, 1, (700, len(NAMES))), 2)
    y = (X[:, 2] + rng.normal(0, 0.15, 700) > 0.6).astype(int)
    path = tmp_path_factory.mktemp("named") / "train.csv"
    data = synthetic.Synthetic(X=X, y=y, classes=[0, 1])
    synthetic.write_training(str(path), data)
    lines = path.read_text().split("\n")
    lines[2] = ",".join(f'"{n}"' for n in NAMES) + ",target"
    path.write_text("\n".join(lines))
    return str(path)


def test_info_summarises_and_names_the_header_columns_that_matter(named_csv, tmp_path):
    ds = dataset.read_training(named_csv, tensorflow=True)
    assert ds.feature_names == NAMES
    out = evaluation.evaluate(ds, str(tmp_path), 0.5, 0.5, 3)
    assert out["status"] == 0
    info = out["info"]
    assert info[0].startswith("3 iterations") and "700 rows" in info[0]
    assert info[1].startswith("AUC ") and "balanced accuracy" in info[1] and "±" in info[1]
    assert "indicators that matter most" in info[2]
    # The one informative column comes first, by its header name.
    assert info[2].split(": ", 1)[1].startswith(NAMES[2] + " (")

    run = Path(out["dir"])
    doc = json.loads((run / "metrics.json").read_text())
    table = doc["importance"]["columns"]
    assert [r["name"] for r in table][0] == NAMES[2]
    assert {r["name"] for r in table} <= set(NAMES) and len(table) == len(NAMES)
    assert all(len(r["iterations"]) == 3 for r in table)
    assert table[0]["importance"] > 0.2 > abs(table[-1]["importance"])
    assert 0 <= doc["calibration"]["brier"] <= 0.25
    assert 0 <= doc["calibration"]["expected_calibration_error"] <= 1
    for it in doc["iterations"]:
        assert "brier" in it and "expected_calibration_error" in it
    for picture in ("roc-curve.png", "importance.png"):
        assert (run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The contract's keys are unchanged.
    for key in EVALUATION_FIGURES:
        assert isinstance(out[key], float), key


def test_a_trained_model_is_summarised_on_all_rows(named_csv, tmp_path):
    ds = dataset.read_training(named_csv, tensorflow=True)
    model = training.train(ds.X, ds.y, ds.classes, ds.feature_names)
    out = evaluation.evaluate(ds, str(tmp_path), 0.5, 0.5, 10, trained=model)
    assert out["info"][0] == "The trained model was scored on all 700 rows."
    assert NAMES[2] in out["info"][2]


def test_permutation_importance_is_exact_for_the_shuffled_column_and_bounded(named_csv):
    """Reusing the first layer's product is the same as predicting on the
    shuffled rows; more columns than MAX_COLUMNS leave the rest unmeasured."""
    ds = dataset.read_training(named_csv, tensorflow=True)
    model = training.train(ds.X, ds.y, ds.classes, ds.feature_names)
    y_idx = training.class_indices(ds.y, ds.classes)
    name, imp = importance.permutation_importance(model, ds.X, y_idx, np.random.default_rng(0))
    assert name == "AUC" and imp.shape == (len(model.columns),)
    # The same permutations, applied to the rows themselves.
    rng = np.random.default_rng(0)
    rows = (
        np.sort(rng.choice(len(y_idx), importance.MAX_ROWS, replace=False))
        if len(y_idx) > importance.MAX_ROWS
        else np.arange(len(y_idx))
    )
    X, y = ds.X[rows], y_idx[rows]
    _, score = importance.score_function(model, y)
    base = score(model.predict_proba(X))
    for j, column in enumerate(model.columns):
        shuffled = X.copy()
        shuffled[:, column] = X[rng.permutation(len(y)), column]
        assert imp[j] == pytest.approx(base - score(model.predict_proba(shuffled)), abs=2e-3)


def test_importance_measures_at_most_max_columns(named_csv, monkeypatch):
    ds = dataset.read_training(named_csv, tensorflow=True)
    model = training.train(ds.X, ds.y, ds.classes, ds.feature_names)
    monkeypatch.setattr(importance, "MAX_COLUMNS", 3)
    y_idx = training.class_indices(ds.y, ds.classes)
    _, imp = importance.permutation_importance(model, ds.X, y_idx, np.random.default_rng(0))
    assert np.isfinite(imp).sum() == 3
    assert np.isfinite(imp[list(model.columns).index(2)])  # the strongest is among them


def read_png(path: Path) -> np.ndarray:
    """The RGB pixels of a PNG that rocplot wrote (one IDAT, filter 0 rows)."""
    import struct
    import zlib

    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    raw = zlib.decompress(data[start : start + length])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_the_pictures_have_their_labels(tmp_path):
    from mlbackend import bitmapfont, rocplot

    fpr, tpr = np.array([0, 0.2, 1.0]), np.array([0, 0.8, 1.0])
    rocplot.write_roc_png(str(tmp_path / "roc.png"), [(fpr, tpr)])
    img = read_png(tmp_path / "roc.png")
    black = (img == 0).all(axis=2)
    # "False positive rate" under the plot, "True positive rate" left of it, in black.
    assert black[rocplot.SIZE - 22 : rocplot.SIZE - 8, rocplot.LEFT :].sum() > 100
    assert black[rocplot.TOP : rocplot.SIZE - rocplot.BOTTOM, :22].sum() > 100
    # The glyphs are the font's: the x-axis title as rendered, at scale 2.
    text = bitmapfont.render("False positive rate", 2)
    x0 = rocplot.LEFT + (rocplot.SIZE - rocplot.LEFT - rocplot.RIGHT) // 2 - 19 * 6
    drawn = black[rocplot.SIZE - 22 : rocplot.SIZE - 22 + text.shape[0], x0 : x0 + text.shape[1]]
    np.testing.assert_array_equal(drawn, text)

    table = [
        {
            "name": f"\\core\\analytics\\indicator\\number_{i}",
            "importance": 0.1 / (i + 1),
            "deviation": 0.01,
        }
        for i in range(30)
    ]
    rocplot.write_importance_png(str(tmp_path / "imp.png"), "AUC", table)
    img = read_png(tmp_path / "imp.png")
    bars = (img == rocplot.COLOURS[0]).all(axis=2)
    lengths = bars.sum(axis=1)
    lengths = lengths[lengths > 0]
    assert len(lengths) == rocplot.IMPORTANCE_ROWS * 12  # 20 bars, 12 pixel rows each
    assert lengths[0] > lengths[-1]
