"""Models the old backend trained, as our `Model`.

`mlbackend.legacy` reads moodlemlbackend's files as data and checks them;
this makes what it read a model of format version 1 (3.x: ReLU) or 2
(2.x exports: tanh), on the raw features as the old backends fed them.
"""

from __future__ import annotations

import numpy as np

from mlbackend.contract import BackendError
from mlbackend.legacy import LegacyNetwork
from mlbackend.model.classifier import Model
from mlbackend.model.format import CENTRED, CENTRED_TANH
from mlbackend.model.inputs import Inputs
from mlbackend.model.network import Dense, Network


def from_legacy(old: LegacyNetwork, nfeatures: int | None = None) -> Model:
    """A `Model` for datasets of `nfeatures` features.

    3.x models need it from the dataset they are first used with; the
    dataset must have at least the columns the old model used.
    """
    if old.nfeatures is not None:
        if nfeatures is not None and nfeatures != old.nfeatures:
            raise BackendError(
                f"The dataset has {nfeatures} features but the {old.fmt} model in "
                f"{old.source} was trained with {old.nfeatures}. The features of a "
                "model cannot change; train a new model."
            )
        nfeatures = old.nfeatures
    if nfeatures is None:
        raise BackendError(
            f"The {old.fmt} model in {old.source} does not record how many features "
            "its datasets have; it is converted the first time it is used with a "
            "dataset (prediction, training or evaluation)."
        )
    columns = (
        np.arange(old.width, dtype=np.int64)
        if old.columns is None
        else old.columns.astype(np.int64)
    )
    if columns.size and int(columns.max()) >= nfeatures:
        raise BackendError(
            f"The dataset has {nfeatures} features but the {old.fmt} model in "
            f"{old.source} uses feature number {int(columns.max()) + 1}. The features "
            "of a model cannot change; train a new model."
        )
    width = columns.size
    version = CENTRED_TANH if old.activation == "tanh" else CENTRED
    return Model(
        classes=list(range(old.n_classes)),
        nfeatures=int(nfeatures),
        # The old backends fed the raw features to the network.
        inputs=Inputs(
            columns=columns,
            mean=np.zeros(width, dtype=np.float32),
            scale=np.ones(width, dtype=np.float32),
        ),
        network=Network(
            [
                Dense(layer.kernel.astype(np.float32), layer.bias.astype(np.float32))
                for layer in old.layers
            ],
            old.activation,
        ),
        format_version=version.number,
        history={"converted_from": old.fmt, "legacy_settings": old.settings},
    )
