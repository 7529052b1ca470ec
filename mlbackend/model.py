"""Training the classifier with TensorFlow/Keras.

TensorFlow is imported inside these functions only: prediction, `version`
and `--help` never pay for it. The network is the old backend's family (a
feed-forward ReLU network with a softmax output) with what it lacked:
standardised inputs, class weights so the minority class (the students at
risk) is predicted at all, dropout and early stopping on a validation split
instead of a fixed epoch formula. Training hands back a plain
`mlbackend.inference.Model`; the Keras object never leaves this module.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbackend.contract import MISSING_CLASSES_MESSAGE, NOT_ENOUGH_DATA, BackendError
from mlbackend.inference import Model

log = logging.getLogger(__name__)

#: Without a validation split, train on the rows tiled to this many, this many epochs.
SMALL_DATA_ROWS = 2048
SMALL_DATA_EPOCHS = 40


@dataclass
class TrainingOptions:
    """Knobs of one training; the defaults are what Moodle gets."""

    seed: int = 0
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    dropout: float = 0.2
    l2: float = 1e-4
    validation_fraction: float = 0.15
    progress: bool = False           # a progress line on stderr (terminals only)
    tensorboard_dir: str | None = None


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def import_keras() -> Any:
    quiet_tensorflow()
    import tensorflow as tf  # noqa: F401  (heavy: only here)
    import keras

    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    tf.get_logger().setLevel(logging.ERROR)
    return keras


def class_indices(y: np.ndarray, classes: list[int]) -> np.ndarray:
    """Class values to 0..k-1 in `classes` order."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.fromiter((lookup[int(v)] for v in y), dtype=np.int64, count=len(y))


def require_all_classes(y_idx: np.ndarray, nclasses: int) -> None:
    if len(np.unique(y_idx)) < nclasses:
        raise BackendError(MISSING_CLASSES_MESSAGE, status=NOT_ENOUGH_DATA,
                           errors=MISSING_CLASSES_MESSAGE)


def train(X: np.ndarray, y: np.ndarray, classes: list[int], feature_names: list[str],
          previous: Model | None = None, options: TrainingOptions | None = None) -> Model:
    """Train a new model, or continue training `previous` on new rows."""
    options = options or TrainingOptions()
    y_idx = class_indices(y, classes)
    require_all_classes(y_idx, len(classes))
    if previous is not None:
        previous.check_features(X.shape[1])
        if previous.classes != classes:
            raise BackendError(f"The dataset's targetclasses {classes} differ from the "
                               f"model's {previous.classes}; train a new model.")
        columns, mean, scale = previous.columns, previous.mean, previous.scale
        hidden = previous.hidden_units
        activation = previous.activation  # tanh for models converted from 2.x
    else:
        columns, mean, scale = _scaling(X)
        hidden = _hidden_units(X, len(columns))
        activation = "relu"
    keras = import_keras()
    keras.utils.set_random_seed(options.seed)
    Z = ((X[:, columns] - mean) / scale).astype(np.float32)
    net = _network(keras, len(columns), hidden, len(classes), options, activation)
    if previous is not None:
        net.set_weights(previous.weights)
    train_idx, val_idx = _validation_split(y_idx, options)
    callbacks = _callbacks(keras, options, with_validation=val_idx is not None)
    weights = _class_weights(y_idx[train_idx], len(classes))
    fit_args: dict[str, Any] = {}
    if val_idx is not None:
        fit_args["validation_data"] = (Z[val_idx], y_idx[val_idx])
        epochs = options.max_epochs
    else:
        # Too few rows to hold some out: a fixed budget of steps. Tiling the
        # rows makes the budget a few long epochs instead of hundreds of tiny
        # ones (Keras spends milliseconds per epoch, whatever its size).
        reps = -(-SMALL_DATA_ROWS // len(train_idx))
        train_idx = np.tile(train_idx, reps)
        epochs = SMALL_DATA_EPOCHS
    history = net.fit(Z[train_idx], y_idx[train_idx], epochs=epochs,
                      batch_size=min(options.batch_size, len(train_idx)),
                      class_weight=weights, callbacks=callbacks, verbose=0, shuffle=True,
                      **fit_args)
    if options.progress:
        sys.stderr.write("\n")
    epochs_run = len(history.history.get("loss", []))
    log.info("trained %d rows for %d epochs (hidden layers %s)", len(train_idx), epochs_run,
             hidden)
    past = dict(previous.history) if previous is not None else {}
    record = {
        "trainings": int(past.get("trainings", 0)) + 1,
        "rows_seen": int(past.get("rows_seen", 0)) + int(X.shape[0]),
        "last_epochs": epochs_run,
    }
    return Model(classes=list(classes), nfeatures=int(X.shape[1]), columns=columns,
                 mean=mean, scale=scale, weights=[np.asarray(w) for w in net.get_weights()],
                 feature_names=list(feature_names), history=record, activation=activation)


# --------------------------------------------------------------------------


def _scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the columns that vary; centre them.

    Constant columns carry no information and the old backend dropped them
    too. When nothing varies (Moodle sends all-zero features in its own
    tests) every column is kept, and the network learns the class prior.
    """
    std = X.std(axis=0, dtype=np.float64)
    columns = np.flatnonzero(std > 0)
    if columns.size == 0:
        columns = np.arange(X.shape[1])
    mean = X[:, columns].mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = std[columns].astype(np.float32)
    # Only shrink columns wider than Moodle's [-1, 1] range: dividing a rare,
    # nearly constant indicator by its tiny deviation makes it explode on new
    # rows (measured on site-a: AUC 0.58 with plain standardisation, 0.92 so).
    scale = np.maximum(scale, np.float32(1.0))
    return columns.astype(np.int64), mean, scale


def _hidden_units(X: np.ndarray, width: int) -> list[int]:
    """Small data gets a small network, as the old backend did."""
    few_rows = X.shape[0] < 1000 and len(np.unique(X, axis=0)) < 100
    if few_rows:
        return [10]
    units = int(min(128, max(16, width // 3)))
    return [units, units]


def _network(keras: Any, width: int, hidden: list[int], nclasses: int,
             options: TrainingOptions, activation: str = "relu") -> Any:
    reg = keras.regularizers.L2(options.l2)
    layers = [keras.Input(shape=(width,))]
    for units in hidden:
        layers.append(keras.layers.Dense(units, activation=activation, kernel_regularizer=reg))
        if options.dropout:
            layers.append(keras.layers.Dropout(options.dropout))
    layers.append(keras.layers.Dense(nclasses))
    net = keras.Sequential(layers)
    net.compile(optimizer=keras.optimizers.Adam(options.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return net


def _validation_split(y_idx: np.ndarray, options: TrainingOptions
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Stratified hold-out for early stopping; none when the data is too small."""
    n = len(y_idx)
    rng = np.random.default_rng(options.seed)
    counts = np.bincount(y_idx)
    if n < 100 or np.min(counts[counts > 0]) * options.validation_fraction < 2:
        return rng.permutation(n), None
    train, val = [], []
    for c in np.flatnonzero(counts):
        idx = rng.permutation(np.flatnonzero(y_idx == c))
        k = max(1, int(round(len(idx) * options.validation_fraction)))
        val.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), np.concatenate(val)


def _class_weights(y_idx: np.ndarray, nclasses: int) -> dict[int, float]:
    """Balanced weights: every class counts as much in the loss, whatever its size."""
    counts = np.bincount(y_idx, minlength=nclasses).astype(np.float64)
    counts[counts == 0] = 1
    w = len(y_idx) / (nclasses * counts)
    return {i: float(w[i]) for i in range(nclasses)}


def _callbacks(keras: Any, options: TrainingOptions, with_validation: bool) -> list[Any]:
    callbacks: list[Any] = []
    if with_validation:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True))
    if options.tensorboard_dir:
        callbacks.append(_tensorboard_callback(keras, options.tensorboard_dir))
    if options.progress:
        callbacks.append(_progress_callback(keras, options.max_epochs))
    return callbacks


def _progress_callback(keras: Any, max_epochs: int) -> Any:
    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            extra = f" validation loss {logs['val_loss']:.4f}" if "val_loss" in logs else ""
            sys.stderr.write(f"\r  epoch {epoch + 1:>3} (at most {max_epochs}): "
                             f"loss {logs.get('loss', float('nan')):.4f}{extra}   ")
            sys.stderr.flush()

    return Progress()


def _tensorboard_callback(keras: Any, log_dir: str) -> Any:
    """Every epoch's losses as TensorBoard scalars (see mlbackend.tensorboard)."""
    from mlbackend.tensorboard import ScalarWriter

    class TensorBoardScalars(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.writer = ScalarWriter(log_dir)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            for key, value in (logs or {}).items():
                self.writer.scalar(f"epoch_{key}", value, epoch)

        def on_train_end(self, logs: dict | None = None) -> None:
            self.writer.close()

    return TensorBoardScalars()
