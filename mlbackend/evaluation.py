"""Evaluation: is this model worth using on this site?

Moodle asks for NITERATIONS random 80/20 splits (train a fresh model on 80 %,
score the other 20 %), or, with a trained model directory, for the score of
that model on every row. The answer's `score` is the mean weighted F1 and
`score_deviation` its standard deviation; Moodle compares them with its
`min_score` and `accepted_deviation`.

The answer's `info` (the lines Moodle shows the admin in the model's log)
ends with a short summary: rows and iterations, AUC and balanced accuracy
with their spread, and the five indicators the models relied on most
(permutation importance on the held-out rows, averaged over the iterations).

Each run leaves `OUTPUTDIR/logs/RUNID/` for the admin: `info.log`,
`metrics.json` (every iteration, its confusion matrix and calibration, the
full importance table), `roc-curve.png` (binary targets), `importance.png`
and TensorBoard event files under `tensor/`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbackend import files, importance, metrics, store
from mlbackend.contract import LOW_SCORE, NOT_ENOUGH_DATA, OK, BackendError, answer
from mlbackend.dataset import Dataset
from mlbackend.model import Model

log = logging.getLogger(__name__)

#: Networks trained at once (Moodle asks for 10 iterations); more iterations
#: are trained in groups of this many, one group after the other.
SIDE_BY_SIDE = 10
#: Points kept of each iteration's ROC curve.
ROC_POINTS = 2000

LOW_SCORE_MESSAGE = (
    "The evaluated model prediction accuracy is not very good: score {score:.4f} "
    "is below the minimum {min_score}."
)
DEVIATION_MESSAGE = (
    "The results obtained varied too much between iterations (deviation "
    "{dev:.4f}, accepted {accepted}); more samples are needed to check if this "
    "model is valid."
)


@dataclass
class Iteration:
    scores: dict[str, float]
    confusion: np.ndarray
    auc: float | None
    roc: tuple[np.ndarray, np.ndarray] | None
    train_rows: int
    test_rows: int
    brier: float = 0.0
    ece: float = 0.0
    #: Score lost per used column of the model when it is shuffled (NaN: not measured).
    importance: np.ndarray | None = None


def new_run_dir(output_dir: str) -> tuple[int, str]:
    """A fresh `logs/RUNID` directory; two runs started together get distinct
    ids. `logs/` must be a directory of its own, not a link elsewhere."""
    files.own_directory(os.path.join(output_dir, store.LOGS_DIR))
    runid = int(time.time() * 1000)
    while True:
        path = store.run_log_dir(output_dir, runid)
        try:
            os.mkdir(path)
            return runid, os.path.abspath(path)
        except FileExistsError:
            runid += 1


def stratified_split(
    y_idx: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """80/20 per class, keeping at least one row of every class for training."""
    train, test = [], []
    for c in np.unique(y_idx):
        idx = rng.permutation(np.flatnonzero(y_idx == c))
        k = int(round(len(idx) * test_fraction))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def score(model: Model, X: np.ndarray, y_idx: np.ndarray) -> Iteration:
    proba = model.predict_proba(X)
    yhat = proba.argmax(axis=1)
    nclasses = len(model.classes)
    auc = roc = None
    if nclasses == 2:
        positive = model.classes.index(1) if 1 in model.classes else 1
        is_pos = y_idx == positive
        auc = metrics.roc_auc(is_pos, proba[:, positive])
        if auc is not None:
            roc = _thin(*metrics.roc_curve(is_pos, proba[:, positive]))
    return Iteration(
        scores=metrics.classification_scores(y_idx, yhat, nclasses),
        confusion=metrics.confusion_matrix(y_idx, yhat, nclasses),
        auc=auc,
        roc=roc,
        train_rows=0,
        test_rows=len(y_idx),
        brier=metrics.brier_score(y_idx, proba),
        ece=metrics.expected_calibration_error(y_idx, proba),
    )


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ROC_POINTS points of a ROC curve (kept for the plot, one per
    iteration): a curve has a point per distinct score, up to one per row."""
    if len(fpr) <= ROC_POINTS:
        return fpr, tpr
    keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(np.int64))
    return fpr[keep], tpr[keep]


def evaluate(
    ds: Dataset,
    output_dir: str,
    min_score: float,
    accepted_deviation: float,
    iterations: int,
    trained: Model | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the evaluation and write its log directory; returns Moodle's answer.

    A log directory that cannot be written (a full disk) is an answer with
    status 1 that says so, not an unexpected error."""
    try:
        return _evaluate(
            ds, output_dir, min_score, accepted_deviation, iterations, trained, progress
        )
    except OSError as exc:
        raise BackendError(
            f"The evaluation could not write its logs in "
            f"{os.path.join(output_dir, store.LOGS_DIR)} ({files.why(exc)})."
        ) from None


def _evaluate(
    ds: Dataset,
    output_dir: str,
    min_score: float,
    accepted_deviation: float,
    iterations: int,
    trained: Model | None,
    progress: bool,
) -> dict[str, Any]:
    from mlbackend import training  # TensorFlow: only when we train

    y_idx = training.class_indices(ds.labels, ds.classes)
    if trained is None:
        training.require_all_classes(y_idx, len(ds.classes))
    runid, run_dir = new_run_dir(output_dir)
    handler = _RunLog(os.path.join(run_dir, "info.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("mlbackend")
    handler.setLevel(logging.INFO)
    # This run's lines only: a server runs other requests (other evaluations
    # too) in other threads at the same time, all logging to "mlbackend".
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # the stderr handler keeps its own level
    try:
        log.info(
            "evaluation %d of %s: %d rows, %d features, classes %s",
            runid,
            ds.path,
            ds.nrows,
            ds.nfeatures,
            ds.classes,
        )
        results: list[Iteration] = []
        shuffler = np.random.default_rng(runid + 1)
        if trained is not None:
            trained.check_features(ds.nfeatures)
            log.info("scoring the trained model on all rows")
            results.append(score(trained, ds.X, y_idx))
            score_name, results[0].importance = importance.permutation_importance(
                trained, ds.X, y_idx, shuffler
            )
            models: list[Model] = [trained]
        else:
            rng = np.random.default_rng(runid)
            # At most SIDE_BY_SIDE networks train at once, their splits made
            # and dropped group by group: memory does not grow with the
            # number of iterations (up to actions.MAX_ITERATIONS).
            models = []
            for first in range(0, iterations, SIDE_BY_SIDE):
                group = range(first, min(first + SIDE_BY_SIDE, iterations))
                splits = [stratified_split(y_idx, 0.2, rng) for _ in group]
                log.info(
                    "training %d networks side by side on %d rows each",
                    len(group),
                    len(splits[0][0]),
                )
                dirs = [os.path.join(run_dir, "tensor", f"iteration-{i + 1}") for i in group]
                options = training.TrainingOptions(progress=progress, tensorboard_dirs=dirs)
                trained_group = training.train_splits(
                    ds.X,
                    ds.labels,
                    ds.classes,
                    ds.feature_names,
                    [train for train, _ in splits],
                    options,
                )
                for i, m, (train_idx, test_idx) in zip(group, trained_group, splits):
                    it = score(m, ds.X[test_idx], y_idx[test_idx])
                    it.train_rows = len(train_idx)
                    score_name, it.importance = importance.permutation_importance(
                        m, ds.X[test_idx], y_idx[test_idx], shuffler
                    )
                    results.append(it)
                    log.info(
                        "iteration %d: %s auc=%s epochs=%d",
                        i + 1,
                        json.dumps({k: round(v, 4) for k, v in it.scores.items()}),
                        it.auc,
                        m.history["last_epochs"],
                    )
                models = models or trained_group[:1]  # names the importance table's inputs
                del trained_group, splits
        out = _summarise(results, min_score, accepted_deviation, len(ds.classes) == 2)
        table = importance_table(models[0], results, ds.feature_names)
        out["info"] += summary_lines(ds.nrows, results, trained is not None, score_name, table)
        out.update(runid=runid, dir=run_dir)
        _write_logs(run_dir, runid, ds, results, out, trained is not None, score_name, table)
        log.info("result: %s", json.dumps(out))
        return out
    finally:
        root.removeHandler(handler)
        handler.close()


class _RunLog(logging.FileHandler):
    """info.log. A record it cannot write (a full disk) fails the evaluation,
    which answers why, instead of logging printing a traceback and going on."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # the error being handled, in emit()


def _summarise(
    results: list[Iteration], min_score: float, accepted_deviation: float, binary: bool
) -> dict[str, Any]:
    keys = ["accuracy", "balanced accuracy", "precision", "recall", "f1_score"]
    means = {k: float(np.mean([r.scores[k] for r in results])) for k in keys}
    f1 = np.array([r.scores["f1_score"] for r in results])
    status, info = OK, []
    score_value, deviation = float(f1.mean()), float(f1.std())
    if score_value < min_score:
        status |= LOW_SCORE
        info.append(LOW_SCORE_MESSAGE.format(score=score_value, min_score=min_score))
    if deviation > accepted_deviation:
        status |= NOT_ENOUGH_DATA
        info.append(DEVIATION_MESSAGE.format(dev=deviation, accepted=accepted_deviation))
    out = answer(
        status,
        info,
        **means,
        score=score_value,
        score_deviation=deviation,
        min_score=min_score,
        accepted_deviation=accepted_deviation,
    )
    if binary:
        aucs = [r.auc for r in results if r.auc is not None]
        if aucs:
            out["auc"] = float(np.mean(aucs))
            out["auc_deviation"] = float(np.std(aucs))
        else:
            out["info"].append("AUC is undefined: no test split held both classes.")
    return out


def importance_table(
    model: Model, results: list[Iteration], names: list[str]
) -> list[dict[str, Any]]:
    """Every used column's importance, averaged over the iterations, most
    important first; columns named as in the dataset's header."""
    per_iteration = np.array([r.importance for r in results if r.importance is not None])
    if per_iteration.size == 0:
        return []
    rows: list[dict[str, Any]] = []
    for j, column in enumerate(model.columns):
        values = per_iteration[:, j]
        if np.isnan(values).all():
            continue
        name = names[column] if column < len(names) else f"column {column + 1}"
        rows.append(
            {
                "column": int(column),
                "name": name,
                "importance": float(np.nanmean(values)),
                "deviation": float(np.nanstd(values)),
                "iterations": [None if np.isnan(v) else float(v) for v in values],
            }
        )
    rows.sort(key=lambda r: -float(r["importance"]))
    return rows


def summary_lines(
    nrows: int,
    results: list[Iteration],
    trained: bool,
    score_name: str,
    table: list[dict[str, Any]],
) -> list[str]:
    """What the admin reads in Moodle: what was measured, how well, and why."""

    def spread(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    if trained:
        lines = [f"The trained model was scored on all {nrows} rows."]
    else:
        lines = [
            f"{len(results)} iterations: a model trained on a random 80 % of the "
            f"{nrows} rows, scored on the other 20 %."
        ]
    aucs = [r.auc for r in results if r.auc is not None]
    balanced = spread([r.scores["balanced accuracy"] for r in results])
    measured = (f"AUC {spread(aucs)}, " if aucs else "") + f"balanced accuracy {balanced}"
    lines.append(measured + (" (mean ± standard deviation)." if len(results) > 1 else "."))
    top = [r for r in table[:5] if r["importance"] > 0]
    if top:
        lines.append(
            f"The indicators that matter most ({score_name} lost when one is "
            "shuffled among the held-out rows): "
            + "; ".join(f"{r['name']} ({r['importance']:.3f})" for r in top)
            + "."
        )
    else:
        lines.append("No indicator changes the predictions measurably when shuffled.")
    return lines


def _write_logs(
    run_dir: str,
    runid: int,
    ds: Dataset,
    results: list[Iteration],
    summary: dict[str, Any],
    trained: bool,
    score_name: str,
    table: list[dict[str, Any]],
) -> None:
    from mlbackend.rocplot import write_importance_png, write_roc_png

    doc = {
        "runid": runid,
        "dataset": os.path.abspath(ds.path),
        "rows": ds.nrows,
        "features": ds.nfeatures,
        "classes": ds.classes,
        "mode": "trained model on all rows" if trained else "random 80/20 splits",
        "iterations": [
            dict(
                r.scores,
                iteration=i + 1,
                auc=r.auc,
                brier=r.brier,
                expected_calibration_error=r.ece,
                train_rows=r.train_rows,
                test_rows=r.test_rows,
                confusion_matrix=r.confusion.tolist(),
            )
            for i, r in enumerate(results)
        ],
        "calibration": {
            "brier": float(np.mean([r.brier for r in results])),
            "expected_calibration_error": float(np.mean([r.ece for r in results])),
        },
        "importance": {
            "what": f"{score_name} lost when the column is shuffled among the held-out rows "
            f"(at most {importance.MAX_ROWS} rows, {importance.MAX_COLUMNS} columns "
            "per iteration), mean and standard deviation over the iterations",
            "columns": table,
        },
        "summary": summary,
    }
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(doc, f, indent=2)
    curves = [r.roc for r in results if r.roc is not None]
    if len(ds.classes) == 2:
        write_roc_png(os.path.join(run_dir, "roc-curve.png"), curves)
    write_importance_png(os.path.join(run_dir, "importance.png"), score_name, table)
    _write_tensorboard(os.path.join(run_dir, "tensor"), results)


def _write_tensorboard(path: str, results: list[Iteration]) -> None:
    """Per-iteration scores as TensorBoard scalars, beside the training curves."""
    from mlbackend.tensorboard import ScalarWriter

    with ScalarWriter(os.path.join(path, "evaluation")) as writer:
        for i, r in enumerate(results):
            for k, v in r.scores.items():
                writer.scalar(k.replace(" ", "_"), v, i + 1)
            if r.auc is not None:
                writer.scalar("auc", r.auc, i + 1)
