"""The feed-forward network: its layers, and its forward pass in NumPy and in
TensorFlow.

Dense layers, a hidden activation between them (ReLU; tanh for models
converted from moodlemlbackend 2.x), a softmax after the last. `Network`
holds one network's weights and runs it with NumPy (prediction, importance);
`Layout` is its shape, which the trainer builds its TensorFlow graph from
(`Layout.tf_logits`), for several networks side by side: their weights carry
a leading "network" axis K. This module is the only one that knows how the
layers are laid out; everyone else asks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlbackend.model.limits import MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH, MAX_PARAMETERS

#: Hidden-layer activations, by the name stored in the model file.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


@dataclass
class Dense:
    """One dense layer: `h @ kernel + bias`. In a side-by-side training the
    arrays carry a leading network axis: kernel [K, in, out], bias [K, out]."""

    kernel: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Layout:
    """The shape of a network: `inputs` -> `hidden` layers -> `outputs`."""

    inputs: int
    hidden: tuple[int, ...]
    outputs: int
    activation: str = "relu"

    @property
    def sizes(self) -> list[int]:
        return [self.inputs, *self.hidden, self.outputs]

    def initial(self, rng: np.random.Generator, K: int) -> list[Dense]:
        """K networks' starting weights: Glorot-uniform kernels and zero
        biases, as Keras' Dense starts."""
        layers = []
        for fan_in, fan_out in zip(self.sizes, self.sizes[1:]):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            layers.append(
                Dense(
                    rng.uniform(-limit, limit, (K, fan_in, fan_out)).astype(np.float32),
                    np.zeros((K, fan_out), dtype=np.float32),
                )
            )
        return layers

    def tf_logits(
        self, tf: Any, layers: list[tuple[Any, Any]], h: Any, masks: list[Any] | None = None
    ) -> Any:
        """The logits of K networks side by side, in TensorFlow: `h` is
        [K, rows, inputs], `layers` their (kernel, bias) tensors; when
        training, each hidden layer's output times its dropout mask
        ([K, rows, units], see `mlbackend.training.dropout_masks`)."""
        activate = {"relu": tf.nn.relu, "tanh": tf.tanh}[self.activation]
        for i, (kernel, bias) in enumerate(layers[:-1]):
            h = activate(tf.matmul(h, kernel) + bias[:, None, :])
            if masks:
                h = h * masks[i]
        kernel, bias = layers[-1]
        return tf.matmul(h, kernel) + bias[:, None, :]


@dataclass
class Network:
    """One trained network, run with NumPy."""

    layers: list[Dense]
    activation: str = "relu"

    @classmethod
    def from_side_by_side(
        cls, layers: list[Dense], k: int, inputs: int, activation: str
    ) -> Network:
        """Network `k` of a side-by-side training, without the kernel rows of
        the padding inputs beyond its own `inputs` (see `inputs.tf_stage`)."""
        own = [Dense(layer.kernel[k], layer.bias[k]) for layer in layers]
        own[0] = Dense(own[0].kernel[:inputs], own[0].bias)
        return cls(own, activation)

    def side_by_side(self) -> list[Dense]:
        """This network's weights with a network axis of 1, to train on."""
        return [Dense(layer.kernel[None], layer.bias[None]) for layer in self.layers]

    @property
    def layout(self) -> Layout:
        return Layout(
            inputs=int(self.layers[0].kernel.shape[0]),
            hidden=tuple(int(layer.kernel.shape[1]) for layer in self.layers[:-1]),
            outputs=int(self.layers[-1].kernel.shape[1]),
            activation=self.activation,
        )

    @property
    def hidden_units(self) -> list[int]:
        return list(self.layout.hidden)

    @property
    def widths(self) -> list[int]:
        """Every layer's output width, input to output."""
        return [int(layer.kernel.shape[1]) for layer in self.layers]

    @property
    def parameters(self) -> int:
        return sum(int(layer.kernel.size + layer.bias.size) for layer in self.layers)

    @property
    def nbytes(self) -> int:
        return sum(int(layer.kernel.nbytes + layer.bias.nbytes) for layer in self.layers)

    def proba(self, h: np.ndarray) -> np.ndarray:
        """Softmax outputs for network inputs `h` (computed in h's dtype)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self.head(self.first_layer(h))

    def first_layer(self, h: np.ndarray) -> np.ndarray:
        """The first layer's pre-activations for inputs `h`."""
        first = self.layers[0]
        return h @ first.kernel.astype(h.dtype, copy=False) + first.bias

    def first_layer_change(self, delta: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """How the first layer's pre-activations move when the network inputs
        at positions `inputs` change by `delta` (rows x len(inputs)): the
        first layer is linear, so a shuffled column costs this small product
        instead of a whole forward pass (`mlbackend.importance`)."""
        return delta @ self.layers[0].kernel[inputs].astype(delta.dtype, copy=False)

    def input_weight(self, inputs: np.ndarray) -> float:
        """Total absolute first-layer weight of the inputs at `inputs`."""
        return float(np.abs(self.layers[0].kernel[inputs]).sum())

    def head(self, z: np.ndarray) -> np.ndarray:
        """Softmax outputs from the first layer's pre-activations `z` (in z's
        dtype): the forward pass after the first matrix product."""
        dtype = z.dtype.type
        activate = ACTIVATIONS[self.activation]
        with np.errstate(over="ignore", invalid="ignore"):
            for layer in self.layers[1:]:
                z = activate(z) @ layer.kernel.astype(dtype, copy=False) + layer.bias
            logits = z.astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)

    def shift_output(self, shift: np.ndarray) -> Network:
        """This network with `shift` added to its output layer's bias (the
        decision shift of `mlbackend.training`; a negative one takes it out)."""
        last = self.layers[-1]
        return replace(self, layers=[*self.layers[:-1], Dense(last.kernel, last.bias + shift)])

    def check(self, inputs: int, outputs: int) -> str | None:
        """Why these layers do not chain `inputs` -> ... -> `outputs`, or None."""
        if self.activation not in ACTIVATIONS:
            return "unknown activation"
        if not 1 <= len(self.layers) <= MAX_HIDDEN_LAYERS + 1:
            return f"hidden_units must list at most {MAX_HIDDEN_LAYERS} layers"
        width = inputs
        for i, layer in enumerate(self.layers):
            kernel, bias = layer.kernel, layer.bias
            if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
                return f"layer {i} has the wrong shape"
            width = kernel.shape[1]
            if i < len(self.layers) - 1 and not 1 <= width <= MAX_HIDDEN_WIDTH:
                return (
                    f"hidden layer {i + 1} has {width} units; at most "
                    f"{MAX_HIDDEN_WIDTH} are accepted"
                )
        if self.parameters > MAX_PARAMETERS:
            return f"{self.parameters} weights; at most {MAX_PARAMETERS} are accepted"
        if width != outputs:
            return "the output layer does not match the classes"
        if not all(
            np.all(np.isfinite(a)) for layer in self.layers for a in (layer.kernel, layer.bias)
        ):
            return "weights are not finite numbers"
        return None
