"""Small models made without training, for tests that are not about training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlbackend.model import Model
from mlbackend.model.format import CENTRED, CENTRED_TANH
from mlbackend.model.inputs import Inputs
from mlbackend.model.network import Dense, Network


def network(
    sizes: Sequence[int], seed: int = 0, activation: str = "relu", bias: float = 0.0
) -> Network:
    """A network of layer widths `sizes` (inputs first), normal weights,
    biases drawn with standard deviation `bias` (0: zero biases)."""
    rng = np.random.default_rng(seed)
    return Network(
        [
            Dense(
                rng.normal(size=(a, b)).astype(np.float32),
                (rng.normal(size=b) * bias).astype(np.float32),
            )
            for a, b in zip(sizes, sizes[1:])
        ],
        activation,
    )


def model(
    nfeatures: int = 3,
    hidden: Sequence[int] = (4,),
    seed: int = 0,
    classes: Sequence[int] = (0, 1),
    activation: str = "relu",
    bias: float = 0.0,
    feature_names: list[str] | None = None,
) -> Model:
    """A model of format 1 (2 with tanh) on every column, uncentred."""
    return Model(
        classes=list(classes),
        nfeatures=nfeatures,
        inputs=Inputs(
            columns=np.arange(nfeatures),
            mean=np.zeros(nfeatures, np.float32),
            scale=np.ones(nfeatures, np.float32),
        ),
        network=network([nfeatures, *hidden, len(classes)], seed, activation, bias),
        format_version=(CENTRED_TANH if activation == "tanh" else CENTRED).number,
        feature_names=feature_names or [],
    )


def weights(m: Model) -> list[np.ndarray]:
    """Kernels and biases, input to output, as Keras' `set_weights` takes them."""
    return [a for layer in m.network.layers for a in (layer.kernel, layer.bias)]


def scaled_network(net: Network, factor: float) -> Network:
    """The same network with every weight multiplied by `factor`."""
    layers = [Dense(layer.kernel * factor, layer.bias * factor) for layer in net.layers]
    return Network(layers, net.activation)


def scaled(m: Model, factor: float) -> Model:
    """The same model with every weight multiplied by `factor`."""
    return Model(**{**m.__dict__, "network": scaled_network(m.network, factor)})
