"""Keras' forward pass of a stored model: the reference the NumPy prediction
path (`Model.predict_proba`) is checked against. It lives with the tests: the
program never imports Keras, and the frozen bundle leaves it out."""
from __future__ import annotations

from typing import Any

import numpy as np

from mlbackend.inference import Model
from mlbackend.tf import quiet_tensorflow


def keras_predict_proba(model: Model, X: np.ndarray) -> np.ndarray:
    """Keras' forward pass of a stored model: the reference that the NumPy
    prediction path (`Model.predict_proba`) is checked against in the tests."""
    quiet_tensorflow()
    import keras

    layers: list[Any] = [keras.Input(shape=(len(model.columns),))]
    units = model.hidden_units + [len(model.classes)]
    for i, u in enumerate(units):
        hidden = i < len(units) - 1
        layers.append(keras.layers.Dense(u, activation=model.activation if hidden else None))
    net = keras.Sequential(layers)
    net.set_weights(model.weights)
    logits = net.predict(model.standardised(X), verbose=0, batch_size=4096)
    return np.asarray(keras.ops.softmax(logits, axis=-1))
