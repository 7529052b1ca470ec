"""The model file format: every version's reader and writer.

A model file (`model.npz`) is a NumPy archive of plain arrays, read with
`allow_pickle=False` (data, never code): a JSON `meta` string and the
arrays of the model's `Inputs` and `Network`. `meta["format_version"]`
states the version; the reader of that version reads the file, and a model
is written by the writer of its own `Model.format_version`. The versions:

1. ReLU layers on the centred columns (`columns`, `mean`, `scale`,
   `layerN_kernel`, `layerN_bias`).
2. The same with tanh hidden layers: models converted from moodlemlbackend
   2.x. Written as its own version so that a program that knew only
   version 1 (and would silently use ReLU) refuses it.
3. Version 1 with the piecewise-linear encoding of the inputs
   (`encoding_counts`, `encoding_edges`), which an older program would not
   apply.

Any version may carry `logit_shift` in its meta (what training added to the
last bias). Every file ever written stays readable and predicts as it did:
`tests/golden/` holds one of each. A new architecture is a new version here,
with its reader and writer, and a golden file.

Everything read is checked (shapes, ranges, limits): a damaged or crafted
file raises `FormatError` with the reason, and never loads.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from mlbackend import __version__
from mlbackend.contract import BackendError, shown
from mlbackend.model.classifier import Model
from mlbackend.model.inputs import Inputs, PiecewiseLinear
from mlbackend.model.limits import (
    MAX_CLASSES,
    MAX_FEATURES,
    MAX_HIDDEN_LAYERS,
    MAX_LOGIT_SHIFT,
    MAX_PARAMETERS,
)
from mlbackend.model.network import Dense, Network

FORMAT_NAME = "mlbackend-classifier"

#: Most bytes a model file's arrays may take once unpacked: the largest
#: model accepted (`MAX_PARAMETERS` float32 weights) and room for its other
#: arrays. Real models take a few hundred KB (one of 10,000 features about
#: 6 MB). A crafted file's compressed members can declare gigabytes that
#: NumPy would allocate and fill: such a file is refused before any array
#: is read.
MAX_MODEL_BYTES = 4 * MAX_PARAMETERS + (16 << 20)


class FormatError(BackendError):
    """The file is not a readable model: damaged, truncated, crafted, or of
    a version this program does not know. The message says why."""


@dataclass(frozen=True)
class Version:
    """One format version: what it is, which hidden activations it allows,
    whether its inputs are encoded, and its reader and writer."""

    number: int
    what: str
    activations: frozenset[str]
    encoded: bool

    def read(
        self, meta: dict[str, Any], arrays: dict[str, np.ndarray], bad: Callable[[str], FormatError]
    ) -> Model:
        return _read(self, meta, arrays, bad)

    def write(self, model: Model) -> dict[str, np.ndarray]:
        return _write(self, model)


CENTRED = Version(1, "ReLU layers on centred columns", frozenset({"relu"}), encoded=False)
CENTRED_TANH = Version(
    2, "tanh layers on centred columns (moodlemlbackend 2.x)", frozenset({"tanh"}), encoded=False
)
ENCODED = Version(3, "ReLU layers on piecewise-linear inputs", frozenset({"relu"}), encoded=True)
VERSIONS: dict[int, Version] = {v.number: v for v in (CENTRED, CENTRED_TANH, ENCODED)}
#: The newest format version this program reads and writes.
LATEST = max(VERSIONS)


def to_arrays(model: Model) -> dict[str, np.ndarray]:
    """The arrays of `model`'s file, by the writer of its format version."""
    return VERSIONS[model.format_version].write(model)


def from_arrays(arrays: dict[str, np.ndarray], source: str) -> Model:
    """The model in a file's arrays, by the reader of the version it states;
    checks every part (`FormatError` says what is wrong)."""

    def bad(why: str) -> FormatError:
        return FormatError(
            f"The stored model {source} is damaged or not an mlbackend model ({why})."
        )

    try:
        meta = json.loads(str(arrays["meta"]))
        if not isinstance(meta, dict):
            raise bad(f"its metadata is a {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT_NAME:
            raise bad("unknown format")
        number = meta.get("format_version")
        if not isinstance(number, int) or isinstance(number, bool) or number not in VERSIONS:
            if isinstance(number, int) and not isinstance(number, bool) and number > LATEST:
                raise bad(f"format version {shown(number)} is newer than this program understands")
            raise bad(f"unknown format version {shown(number)}")
        return VERSIONS[number].read(meta, arrays, bad)
    except BackendError:
        raise
    except (KeyError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise bad(f"missing or unreadable part: {shown(str(exc))}") from None


def read_npz(f: IO[bytes], source: str) -> Model:
    """The model in an open `model.npz` file; `FormatError` if it is not one.

    Every member's declared array must fit in the bytes it unpacks to, and
    they all in `MAX_MODEL_BYTES`: NumPy allocates what a header declares
    before it reads the data."""
    try:
        with zipfile.ZipFile(f) as archive:
            _check_members(archive, source)
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage (bad zip, bad zlib, bad header)
        raise FormatError(
            f"The stored model {source} cannot be read ({shown(str(exc))})."
        ) from None
    return from_arrays(arrays, source)


def write_npz(f: IO[bytes], model: Model) -> None:
    """Write `model` as a `model.npz` into the open file `f`."""
    np.savez(f, allow_pickle=False, **to_arrays(model))


# --------------------------------------------------------------------------


def _write(version: Version, model: Model) -> dict[str, np.ndarray]:
    network, inputs = model.network, model.inputs
    if network.activation not in version.activations or version.encoded != (
        inputs.encoding is not None
    ):
        raise ValueError(f"a {network.activation} model is not of format version {version.number}")
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": version.number,
        "classes": model.classes,
        "nfeatures": model.nfeatures,
        "hidden_units": network.hidden_units,
        "activation": network.activation,
        "output": "softmax",
        "feature_names": model.feature_names,
        "history": model.history,
        # Which program wrote the file: for support, never read back.
        "written_by": f"mlbackend {__version__}",
    }
    if version.encoded:
        meta["encoding"] = "piecewise-linear"
    if model.logit_shift is not None:
        meta["logit_shift"] = [float(v) for v in model.logit_shift]
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "columns": inputs.columns.astype(np.int64),
        "mean": inputs.mean.astype(np.float32),
        "scale": inputs.scale.astype(np.float32),
    }
    if inputs.encoding is not None:
        arrays["encoding_counts"] = inputs.encoding.counts.astype(np.int64)
        arrays["encoding_edges"] = inputs.encoding.edges.astype(np.float32)
    for i, layer in enumerate(network.layers):
        arrays[f"layer{i}_kernel"] = layer.kernel.astype(np.float32)
        arrays[f"layer{i}_bias"] = layer.bias.astype(np.float32)
    return arrays


def _read(
    version: Version,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    bad: Callable[[str], FormatError],
) -> Model:
    activation = meta.get("activation", "relu")
    if activation not in version.activations:
        raise bad(f"unknown activation {shown(activation)} for format version {version.number}")
    if meta.get("output", "softmax") != "softmax":
        raise bad(f"unknown output {shown(meta['output'])}")
    classes, nfeatures = meta["classes"], meta["nfeatures"]
    hidden = meta["hidden_units"]
    feature_names = meta.get("feature_names", [])
    history = meta.get("history", {})
    encoding = None
    if version.encoded:
        if meta.get("encoding") != "piecewise-linear":
            raise bad(f"unknown encoding {shown(meta.get('encoding'))}")
        encoding = PiecewiseLinear(
            counts=np.asarray(arrays["encoding_counts"], dtype=np.int64),
            edges=np.asarray(arrays["encoding_edges"], dtype=np.float32),
        )
    if (
        not isinstance(classes, list)
        or not 2 <= len(classes) <= MAX_CLASSES
        or not all(_whole(c) for c in classes)
    ):
        raise bad(f"classes must be 2 to {MAX_CLASSES} whole numbers, not {shown(classes)}")
    if not _whole(nfeatures) or not 1 <= nfeatures <= MAX_FEATURES:
        raise bad(
            f"nfeatures must be a whole number from 1 to {MAX_FEATURES}, not {shown(nfeatures)}"
        )
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        raise bad(f"hidden_units must list at most {MAX_HIDDEN_LAYERS} layers, not {shown(hidden)}")
    if not isinstance(feature_names, list) or not all(isinstance(n, str) for n in feature_names):
        raise bad(f"feature_names must be a list of names, not {shown(feature_names)}")
    if not isinstance(history, dict):
        raise bad(f"history must be an object, not {shown(history)}")
    logit_shift = _logit_shift(meta.get("logit_shift"), len(classes), bad)
    inputs = Inputs(
        columns=np.asarray(arrays["columns"], dtype=np.int64),
        mean=np.asarray(arrays["mean"], dtype=np.float32),
        scale=np.asarray(arrays["scale"], dtype=np.float32),
        encoding=encoding,
    )
    network = Network(
        [
            Dense(
                np.asarray(arrays[f"layer{i}_kernel"], dtype=np.float32),
                np.asarray(arrays[f"layer{i}_bias"], dtype=np.float32),
            )
            for i in range(len(hidden) + 1)
        ],
        activation,
    )
    why = inputs.check(int(nfeatures)) or network.check(inputs.width, len(classes))
    if why:
        raise bad(why)
    return Model(
        classes=[int(c) for c in classes],
        nfeatures=int(nfeatures),
        inputs=inputs,
        network=network,
        format_version=version.number,
        feature_names=list(feature_names),
        history=dict(history),
        logit_shift=logit_shift,
    )


def _logit_shift(value: Any, nclasses: int, bad: Callable[[str], FormatError]) -> np.ndarray | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != nclasses
        or not all(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and abs(v) <= MAX_LOGIT_SHIFT
            for v in value
        )
    ):
        raise bad(
            f"logit_shift must be {nclasses} numbers of at most {MAX_LOGIT_SHIFT} in size, "
            f"not {shown(value)}"
        )
    return np.asarray(value, dtype=np.float32)


def _check_members(archive: zipfile.ZipFile, source: str) -> None:
    unpacked = 0
    for info in archive.infolist():
        unpacked += info.file_size
        if unpacked > MAX_MODEL_BYTES:
            raise FormatError(
                f"The stored model {source} cannot be read: it unpacks to more "
                f"than a model can take ({MAX_MODEL_BYTES} bytes)."
            )
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise FormatError(
                f"The stored model {source} cannot be read: its part "
                f"{shown(info.filename)} declares more data than it holds."
            )


def _whole(value: Any) -> bool:
    """A JSON whole number (not a bool, not a float with a fraction)."""
    return isinstance(value, int) and not isinstance(value, bool)
