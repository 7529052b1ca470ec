"""TensorFlow's forward pass of a stored model: the reference the NumPy
prediction path (`Model.predict_proba`) is checked against. It lives with the
tests: the program never imports Keras, and the frozen bundle leaves it out.

The piecewise-linear encoding of format 3 is computed here again with
TensorFlow ops from the stored bin edges, column by column, independently of
`PiecewiseLinear.encode`."""

from __future__ import annotations

from typing import Any

import numpy as np

from helpers.models import weights
from mlbackend.model import Model
from mlbackend.tf import quiet_tensorflow


def tf_inputs(model: Model, X: np.ndarray) -> np.ndarray:
    """The network's inputs, with TensorFlow: the used columns, encoded
    piecewise-linearly (format 3) or not, minus mean, over scale."""
    quiet_tensorflow()
    import tensorflow as tf

    inputs = model.inputs
    used = tf.gather(tf.constant(X, tf.float32), inputs.columns, axis=1)
    if inputs.encoding is not None:
        parts, start = [], 0
        for j, count in enumerate(inputs.encoding.counts):
            edges = tf.constant(inputs.encoding.edges[start : start + count])
            start += count
            x = used[:, j : j + 1]
            parts.append(tf.clip_by_value((x - edges[:-1]) / (edges[1:] - edges[:-1]), 0.0, 1.0))
        used = tf.concat(parts, axis=1)
    return ((used - inputs.mean) / inputs.scale).numpy()


def keras_predict_proba(model: Model, X: np.ndarray) -> np.ndarray:
    """Keras' forward pass of a stored model on TensorFlow-made inputs."""
    quiet_tensorflow()
    import keras

    layers: list[Any] = [keras.Input(shape=(model.inputs.width,))]
    units = model.hidden_units + [len(model.classes)]
    for i, u in enumerate(units):
        hidden = i < len(units) - 1
        layers.append(keras.layers.Dense(u, activation=model.activation if hidden else None))
    net = keras.Sequential(layers)
    net.set_weights(weights(model))
    logits = net.predict(tf_inputs(model, X), verbose=0, batch_size=4096)
    return np.asarray(keras.ops.softmax(logits, axis=-1))
