"""The backend's jobs: train, predict, evaluate, export, import.

The command line and the server both call these and nothing else, so a
Moodle site gets the same behaviour whichever way it talks to us. Each
returns the contract's answer (or raises `BackendError`); formatting it is
the caller's business.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mlbackend import cpu
from mlbackend.contract import BackendError, NotTrainedError, answer

# Every action needs NumPy, which dies with SIGILL on a CPU below x86-64-v2:
# ask before importing it, so that the caller (the command line, the server)
# answers with the contract's JSON instead. Importing this module is the
# first thing both do before they touch NumPy.
cpu.require_numpy()

from mlbackend import dataset, store, transfer  # noqa: E402 - NumPy, after the CPU check
from mlbackend.model import Model  # noqa: E402

log = logging.getLogger(__name__)

#: Most evaluation iterations accepted. Moodle asks for 10; every iteration
#: trains a network side by side with the others (memory grows with their
#: number) and writes its own TensorBoard directory.
MAX_ITERATIONS = 100


def train(model_dir: str, dataset_path: str, progress: bool = False) -> dict[str, Any]:
    """Train the model in `model_dir`, continuing from it when it exists."""
    cpu.require_tensorflow()
    from mlbackend import training  # TensorFlow

    ds = dataset.read_training(dataset_path, tensorflow=True)
    with store.writer_lock(model_dir):
        try:
            stored = store.read(model_dir, nfeatures=ds.nfeatures)
        except store.DamagedModel as exc:
            # Training makes a new model instead of failing for ever; the
            # damaged file is kept for whoever wants to look at it.
            aside = store.set_aside_damaged(model_dir)
            log.warning(
                "%s The damaged file is kept as %s; training makes a new model.", exc.message, aside
            )
            stored = None
        previous = stored.model if stored is not None else None
        if previous is not None:
            previous.check_work(ds.nrows)
        options = training.TrainingOptions(progress=progress)
        trained = training.train(
            ds.X, ds.labels, ds.classes, ds.feature_names, previous=previous, options=options
        )
        store.save(model_dir, trained)
        if stored is not None and stored.converted:
            store.move_legacy_aside(model_dir)  # trained on from the old model: kept for a rollback
    log.info("trained %s on %d rows", model_dir, ds.nrows)
    return answer()


def predict(model_dir: str, dataset_path: str) -> dict[str, Any]:
    """Predictions with NumPy only: no TensorFlow on this path."""
    if not store.has_model(model_dir):
        raise NotTrainedError()
    ds = dataset.read_prediction(dataset_path)
    store.tidy(model_dir)  # after a killed training, whichever call comes next
    trained = _trained_model(model_dir, ds.nfeatures)
    proba = trained.predict_proba(ds.X)
    best = proba.argmax(axis=1)
    rows = [
        [sid, str(trained.classes[k]), _prob(p[k])] for sid, k, p in zip(ds.sample_ids, best, proba)
    ]
    return answer(predictions=rows)


def evaluate(
    model_dir: str,
    dataset_path: str,
    min_score: float,
    max_deviation: float,
    iterations: int,
    trained_model_dir: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    cpu.require_tensorflow()
    from mlbackend import evaluation

    if not 1 <= iterations <= MAX_ITERATIONS:
        raise BackendError(
            f"The number of iterations must be from 1 to {MAX_ITERATIONS}, not "
            f"{iterations} (Moodle asks for 10)."
        )
    for name, value in (("minimum score", min_score), ("accepted deviation", max_deviation)):
        if not math.isfinite(value):
            raise BackendError(f"The {name} must be a finite number, not {value}.")
    if trained_model_dir and not store.has_model(trained_model_dir):
        raise NotTrainedError()
    ds = dataset.read_training(dataset_path, tensorflow=True)
    trained = _trained_model(trained_model_dir, ds.nfeatures) if trained_model_dir else None
    return evaluation.evaluate(
        ds, model_dir, min_score, max_deviation, iterations, trained=trained, progress=progress
    )


def export(model_dir: str, export_dir: str) -> str:
    """Write the model into `export_dir`; returns the directory to hand over."""
    return transfer.export_model(model_dir, export_dir)


def import_(model_dir: str, import_dir: str) -> None:
    """Store the model exported into `import_dir` as this model."""
    transfer.import_model(model_dir, import_dir)


def _trained_model(model_dir: str, nfeatures: int) -> Model:
    """The model to predict with. A model of the old backend, converted as it
    is read, is kept in our format at its first use (its files moved aside),
    so that later calls read ours."""
    stored = store.read(model_dir, nfeatures=nfeatures)
    if stored is None:  # removed since has_model() said it was there
        raise NotTrainedError()
    if stored.converted:
        store.save_converted(model_dir, nfeatures)
    return stored.model


def _prob(p: float) -> str:
    return repr(round(float(p), 6))
