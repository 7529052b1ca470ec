"""Models written by the old backend, moodlemlbackend, read as data.

A site that switches Moodle from `moodlemlbackend` to us already has trained
models on disk in the old formats, and its admins keep models exported by it:

- 3.x (`classifier/` of a trained model): `classifier.pkl`, a joblib pickle
  of a `moodlemlbackend.model.tensor.TF` object (`n_features`, `n_classes`,
  `n_hidden`, `n_hidden_layers`, `n_epoch`, `batch_size` and a NumPy
  `variable_columns` array), beside `model.ckpt/`, a Keras SavedModel whose
  network is `n_hidden_layers` ReLU layers and a softmax output. It saw only
  the `variable_columns` of the dataset (the ones that varied at the first
  training) and did not scale them.
- 2.x exports (Moodle's "export model with weights"): `model.json` with
  `n_features`, `n_classes`, optionally `n_hidden`, and the weights of one
  tanh hidden layer under `initialise-vars/...`. No columns were dropped.

A pickle is a program, not data: loading one as is lets whoever wrote the
file run code as the web server. So the pickle is read by `SafeUnpickler`,
which knows the few names the format uses and refuses any other before
anything runs; the weights come from the SavedModel's variables checkpoint
(parsed and checked by `mlbackend.checkpoint`, without TensorFlow), never
from its graph, which is code too. The result is a `LegacyNetwork` of plain
arrays, which `mlbackend.model.convert` makes a `Model`.

The old backend named its predictions by class *index* (0, 1, ...), so a
converted model's classes are `0..n_classes-1`: it answers what it answered.

Only the files a model is made of are read or copied (`MODEL_PATHS`), each
a regular file of a bounded size, never through a symbolic link (a link
there could point at /dev/zero or at another directory) and never a named
pipe or a device (reading one would block or never end). Anything else
beside them is left alone.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mlbackend import files
from mlbackend.contract import BackendError, shown
from mlbackend.model.limits import MAX_CLASSES, MAX_FEATURES, MAX_HIDDEN_LAYERS
from mlbackend.model.network import Dense

log = logging.getLogger(__name__)

PICKLE_FILE = "classifier.pkl"
SAVEDMODEL_DIR = "model.ckpt"
VARIABLES_DIR = "variables"
CHECKPOINT_PREFIX = os.path.join(VARIABLES_DIR, "variables")
KERAS_METADATA = "keras_metadata.pb"
SAVED_MODEL = "saved_model.pb"
FINGERPRINT = "fingerprint.pb"
EXPORT_JSON = "model.json"
#: Where a converted model's old files are kept, inside `classifier/`.
ASIDE_DIR = "legacy-moodlemlbackend"

FORMAT_3X = "moodlemlbackend 3.x"
FORMAT_2X_EXPORT = "moodlemlbackend 2.x export"

#: Real files are a few kilobytes (the pickle) and megabytes (model.json);
#: the limits keep a hostile file from making us read gigabytes.
MAX_PICKLE_BYTES = 4 << 20
MAX_JSON_BYTES = 256 << 20
#: The SavedModel's graph (copied for a rollback to moodlemlbackend, never
#: read here): a few hundred KB for the old backend's small networks.
MAX_SAVED_MODEL_BYTES = 32 << 20
MAX_FINGERPRINT_BYTES = 1 << 20
#: A checkpoint's data files hold the weights and the optimizer's state
#: (RMSprop keeps one number per weight), a few scalars and the object
#: graph: at most this many times the weights' bytes, plus DATA_SLACK.
DATA_FACTOR = 8
DATA_SLACK = 1 << 20

#: Every file a moodlemlbackend model is made of, relative to its directory
#: (its `classifier/`): all that is read, copied or kept of it. The data
#: files are `variables.data-NNNNN-of-NNNNN`.
MODEL_PATHS = (
    PICKLE_FILE,
    EXPORT_JSON,
    f"{SAVEDMODEL_DIR}/{SAVED_MODEL}",
    f"{SAVEDMODEL_DIR}/{KERAS_METADATA}",
    f"{SAVEDMODEL_DIR}/{FINGERPRINT}",
    f"{SAVEDMODEL_DIR}/{VARIABLES_DIR}/variables.index",
)
_DATA_PATH = re.compile(
    rf"{re.escape(SAVEDMODEL_DIR)}/{VARIABLES_DIR}/variables\.data-[0-9]{{5}}-of-[0-9]{{5}}"
)


def is_model_path(relpath: str) -> bool:
    """Whether `relpath` (with '/') names one of the files a moodlemlbackend
    model is made of."""
    return relpath in MODEL_PATHS or _DATA_PATH.fullmatch(relpath) is not None


#: Largest weight matrix accepted, in numbers (about 450 features squared is
#: the most a real Moodle model needs).
MAX_WEIGHTS = 50_000_000
#: Largest whole-number setting (features, classes, layers...) accepted.
MAX_SETTING = 1 << 31

_CKPT_KEY = "layer_with_weights-{i}/{part}/.ATTRIBUTES/VARIABLE_VALUE"
_JSON_KEYS = (
    "initialise-vars/input-to-hidden-weights",
    "initialise-vars/hidden-bias",
    "initialise-vars/hidden-to-output-weights",
    "initialise-vars/output-bias",
)


# --------------------------------------------------------------------------
# Finding old models


def detect(directory: str) -> str | None:
    """Which old format `directory` holds (`FORMAT_3X`, `FORMAT_2X_EXPORT`), or None.

    A 3.x model is recognised by either of its two parts, so that one whose
    other part is missing is reported as damaged rather than as untrained.
    Whatever is there counts, links and pipes too: reading it then says
    what it is (links are not followed, pipes not opened).
    """
    if os.path.lexists(os.path.join(directory, PICKLE_FILE)) or os.path.lexists(
        os.path.join(directory, SAVEDMODEL_DIR)
    ):
        return FORMAT_3X
    if os.path.lexists(os.path.join(directory, EXPORT_JSON)):
        return FORMAT_2X_EXPORT
    return None


def legacy_files(directory: str) -> list[str]:
    """Names of the old backend's files present in `directory`."""
    return [
        name
        for name in (PICKLE_FILE, SAVEDMODEL_DIR, EXPORT_JSON)
        if os.path.lexists(os.path.join(directory, name))
    ]


# --------------------------------------------------------------------------
# The network read from an old model, before it becomes a Model


@dataclass
class LegacyNetwork:
    """What an old model holds, checked; `nfeatures` is None when the old
    format does not say how many features the dataset had (3.x kept only the
    indices of the columns it used). `mlbackend.model.convert` makes it a
    `Model`."""

    source: str
    fmt: str
    columns: np.ndarray | None  # dataset columns the network sees; None: all
    layers: list[Dense]
    n_classes: int
    activation: str
    nfeatures: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    #: The directory it was read from, and the files it is made of there
    #: (path relative to it, size when checked): what `copy_files` copies.
    directory: str = ""
    files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.layers[0].kernel.shape[0])


def read(directory: str) -> LegacyNetwork:
    """Read and check the old model in `directory`, whatever its format."""
    fmt = detect(directory)
    if fmt == FORMAT_3X:
        return read_3x(directory)
    if fmt == FORMAT_2X_EXPORT:
        return read_2x_export(os.path.join(directory, EXPORT_JSON))
    raise BackendError(
        f"No moodlemlbackend model found in {directory} (expected "
        f"{PICKLE_FILE} with {SAVEDMODEL_DIR}/, or {EXPORT_JSON})."
    )


# --------------------------------------------------------------------------
# 3.x: the pickle


class LegacyRecord:
    """Stands in for `moodlemlbackend.model.tensor.TF`: its attributes as a
    dict, and no behaviour (the real class rebuilt a TensorFlow graph)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _refuse(f"the classifier's state is a {type(state).__name__}, not a dict")
        self.state = dict(state)


class JoblibArray:
    """Stands in for joblib's `NumpyArrayWrapper`: joblib writes the array's
    bytes right after this object's BUILD opcode, outside the pickle stream."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _refuse("a joblib array header is not a dict")
        self.state = dict(state)

    def read_array(self, read: Callable[[int], bytes], limit: int) -> np.ndarray:
        st = self.state
        if st.get("subclass") is not np.ndarray:
            raise _refuse(f"a joblib array of type {shown(st.get('subclass'))}, not a plain array")
        dtype, shape, order = st.get("dtype"), st.get("shape"), st.get("order", "C")
        if not isinstance(dtype, np.dtype) or not _plain_dtype(dtype):
            raise _refuse(f"a joblib array of dtype {shown(dtype)}")
        if (
            not isinstance(shape, tuple)
            or len(shape) > 8
            or not all(isinstance(n, int) and n >= 0 for n in shape)
        ):
            raise _refuse(f"a joblib array of shape {shown(shape)}")
        if order not in ("C", "F"):
            raise _refuse(f"a joblib array of order {shown(order)}")
        if st.get("numpy_array_alignment_bytes") is not None:  # joblib >= 1.2
            pad = read(1)
            if len(pad) != 1:
                raise _truncated()
            if len(read(pad[0])) != pad[0]:
                raise _truncated()
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > limit:
            raise _truncated()
        data = read(nbytes)
        if len(data) != nbytes:
            raise _truncated()
        flat = np.frombuffer(data, dtype=dtype, count=count).copy()
        if order == "F":
            return flat.reshape(shape[::-1]).transpose()
        return flat.reshape(shape)


_NUMERIC_KINDS = "biuf"
#: The state NumPy pickles for a plain number dtype (`np.dtype('f8').__reduce__()`):
#: version 3, byte order, no subarray, no field names, no fields, item size
#: and alignment -1 (implied by the type), no flags. A pickle's BUILD step
#: may set a dtype's state to nothing else: NumPy takes a state with a
#: subarray or an item size that contradict the type, and an array read with
#: such a dtype reads past its buffer (a crash, not an exception).
_PLAIN_DTYPE_STATE = (3, None, None, None, -1, -1, 0)


def _plain_dtype(dtype: np.dtype) -> bool:
    """A little-endian (or single-byte) number type, as moodlemlbackend's
    arrays have: no subarray, no fields, the item size its type implies."""
    if (
        dtype.kind not in _NUMERIC_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.byteorder not in ("<", "|", "=")
    ):
        return False
    try:
        return dtype.itemsize == np.dtype(dtype.str).itemsize > 0
    except TypeError:
        return False


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype` for plain numbers only: an object dtype would let the
    pickle put arbitrary objects into an array."""
    if not isinstance(obj, str):
        raise _refuse(f"a NumPy dtype built from {type(obj).__name__}")
    try:
        dtype = np.dtype(obj)
    except (TypeError, ValueError, SyntaxError):
        raise _refuse(f"the NumPy dtype {shown(obj)}") from None
    if not _plain_dtype(dtype):
        raise _refuse(f"the NumPy dtype {shown(obj)}")
    return np.dtype(obj, align=bool(align), copy=bool(copy))


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """`numpy.core.multiarray._reconstruct`, for plain arrays: it makes an
    empty array that the BUILD opcode then fills from bytes."""
    if subtype is not np.ndarray:
        raise _refuse(f"an array of type {shown(subtype)}, not a plain array")
    if not isinstance(shape, tuple) or shape != (0,):
        raise _refuse(f"an array placeholder of shape {shown(shape)}")
    return np.empty(0, dtype=np.uint8)


#: Every global a legacy pickle may name, and what it becomes here. Nothing
#: is imported by name: a name not listed is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("moodlemlbackend.model.tensor", "TF"): LegacyRecord,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): JoblibArray,
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"): JoblibArray,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
}


class _Refused(BackendError):
    pass


def _refuse(what: str) -> _Refused:
    return _Refused(f"refused {what}")


def _truncated() -> BackendError:
    return BackendError("the file ends too early (truncated?)")


#: What the opcodes that call or build may act on (the format needs no more).
_CONSTRUCTIBLE = (LegacyRecord, JoblibArray)  # NEWOBJ, with no arguments
_CALLABLE = (_safe_dtype, _safe_reconstruct)  # REDUCE
_BUILDABLE = (LegacyRecord, JoblibArray, np.ndarray, np.dtype)  # BUILD, instances only


class SafeUnpickler(pickle._Unpickler):
    """Unpickler for the old backend's joblib files that runs nothing.

    `find_class` answers from `ALLOWED_GLOBALS` and refuses every other name,
    so no module is imported and no function outside that table is called.
    The opcodes that call or build are narrowed further to what the format
    does (`_CONSTRUCTIBLE`, `_CALLABLE`, `_BUILDABLE`; INST, OBJ and
    NEWOBJ_EX are refused), so an allowed name cannot be misused, e.g. to
    allocate a huge array or to set attributes of a class.

    It is the pure-Python unpickler because joblib's format needs a hook at
    the BUILD opcode (the array bytes follow it in the stream), which the C
    one cannot give; joblib itself reads its files the same way.
    """

    # The pure-Python unpickler's internals, which the hooks below use (its
    # stack, its reader, its dispatch table by opcode): this class is the one
    # place that knows them; tests/test_legacy.py's
    # test_allowed_names_cannot_be_misused fails if a Python changes them.
    stack: list[Any]
    read: Callable[[int], bytes]
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, limit: int) -> None:
        super().__init__(file)
        self._limit = limit

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _refuse(
                f"the global {module}.{name} (a moodlemlbackend model names "
                "only its classifier class and NumPy arrays)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("a persistent id")

    def _load_build(self) -> None:
        inst = self.stack[-2]
        if not isinstance(inst, _BUILDABLE):
            raise _refuse(f"setting the state of {_describe(inst)}")
        if isinstance(inst, np.dtype):
            state = self.stack[-1]
            if (
                not isinstance(state, tuple)
                or len(state) != 8
                or state[1] not in ("<", "|", "=")
                or tuple(state[:1]) + tuple(state[2:]) != _PLAIN_DTYPE_STATE
            ):
                raise _refuse(
                    f"the NumPy dtype state {shown(state)} (a moodlemlbackend "
                    "model's arrays are plain numbers)"
                )
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        if isinstance(inst, np.dtype) and not _plain_dtype(inst):
            raise _refuse(f"the NumPy dtype {shown(inst)}")
        top = self.stack[-1]
        if isinstance(top, JoblibArray):
            self.stack[-1] = top.read_array(self.read, self._limit)

    def _load_newobj(self) -> None:
        cls, args = self.stack[-2], self.stack[-1]
        if not any(cls is c for c in _CONSTRUCTIBLE) or args != ():
            raise _refuse(f"constructing {_describe(cls)}")
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def _load_reduce(self) -> None:
        func = self.stack[-2]
        if not any(func is f for f in _CALLABLE):
            raise _refuse(f"calling {_describe(func)}")
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        raise _refuse(f"constructing {_describe(klass)} (INST/OBJ)")

    def _load_newobj_ex(self) -> None:
        raise _refuse("NEWOBJ_EX")

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    return f"{name}" if isinstance(name, str) else f"a {type(obj).__name__}"


def read_pickle(path: str) -> dict[str, Any]:
    """The attributes of the pickled `TF` object in `path`, nothing executed."""
    return read_pickle_bytes(_read_bytes(path, MAX_PICKLE_BYTES), path)


def read_pickle_bytes(data: bytes, path: str) -> dict[str, Any]:
    """`read_pickle` for the file's bytes; `path` names it in messages."""
    if not data.startswith(b"\x80"):
        raise BackendError(
            f"The old model file {path} is not an uncompressed joblib pickle "
            "as moodlemlbackend writes it; it is refused."
        )
    try:
        obj = SafeUnpickler(io.BytesIO(data), limit=len(data)).load()
    except _Refused as exc:
        raise BackendError(
            f"The old model file {path} was refused, nothing in it was run: "
            f"{exc.message}. It is not a model moodlemlbackend wrote, or it "
            "was tampered with."
        ) from None
    except BackendError as exc:
        raise BackendError(f"The old model file {path} cannot be read: {exc.message}.") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
        RecursionError,
        struct.error,
        LookupError,
        ArithmeticError,
    ) as exc:
        raise BackendError(
            f"The old model file {path} cannot be read: it is damaged or "
            f"truncated ({type(exc).__name__}: {shown(str(exc))})."
        ) from None
    if not isinstance(obj, LegacyRecord):
        raise BackendError(
            f"The old model file {path} does not hold a moodlemlbackend "
            f"classifier (found {type(obj).__name__})."
        )
    return obj.state


def _int_setting(
    state: dict[str, Any],
    key: str,
    path: str,
    minimum: int,
    default: int | None = None,
    maximum: int = MAX_SETTING,
) -> int:
    value = state.get(key, default)
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise BackendError(f"The old model file {path} has an invalid {key}: {shown(value)}.")
    if value > maximum:
        raise BackendError(
            f"The old model file {path} has an invalid {key}: {shown(value)} (more than {maximum})."
        )
    return int(value)


def _plain_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The pickle's simple settings, kept in the converted model's history
    (JSON): only text keys and values that JSON writes back as they were
    (no integer too long for JSON, no text longer than a setting's)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(k, str) or len(k) > 100:
            continue
        if v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 200):
            out[k] = v
        elif isinstance(v, int) and abs(v) <= MAX_SETTING:
            out[k] = v
        elif isinstance(v, float) and math.isfinite(v):
            out[k] = v
    return out


# --------------------------------------------------------------------------
# 3.x: the SavedModel's variables


def read_3x(directory: str) -> LegacyNetwork:
    """A 3.x `classifier/` (or a copy of one): the pickle and the SavedModel."""
    pkl = os.path.join(directory, PICKLE_FILE)
    saved = os.path.join(directory, SAVEDMODEL_DIR)
    if not os.path.lexists(pkl):
        raise BackendError(
            f"The old model in {directory} is incomplete: {PICKLE_FILE} is "
            f"missing beside {SAVEDMODEL_DIR}/."
        )
    if not os.path.lexists(saved):
        raise BackendError(
            f"The old model in {directory} is incomplete: {SAVEDMODEL_DIR}/ "
            f"is missing beside {PICKLE_FILE}."
        )
    _check_directory(saved)
    state = read_pickle(pkl)
    n_classes = _int_setting(state, "n_classes", pkl, 2, maximum=MAX_CLASSES)
    n_layers = (
        _int_setting(state, "n_hidden_layers", pkl, 0, default=2, maximum=MAX_HIDDEN_LAYERS) + 1
    )
    n_inputs = _int_setting(state, "n_features", pkl, 1, maximum=MAX_FEATURES)
    columns = state.get("variable_columns")
    if columns is not None:
        if (
            not isinstance(columns, np.ndarray)
            or columns.ndim != 1
            or columns.dtype.kind not in "iu"
        ):
            raise BackendError(f"The old model file {pkl} has invalid variable_columns.")
        columns = columns.astype(np.int64)
        if columns.size != n_inputs:
            raise BackendError(
                f"The old model file {pkl} is inconsistent: {columns.size} "
                f"variable columns for a network of {n_inputs} inputs."
            )
        if columns.size and (columns.min() < 0 or np.any(np.diff(columns) <= 0)):
            raise BackendError(
                f"The old model file {pkl} has invalid variable_columns "
                "(not increasing column numbers)."
            )
    _check_activations(saved)
    variables = os.path.join(saved, VARIABLES_DIR)
    if os.path.lexists(variables):
        _check_directory(variables)
    layers, data_files = read_checkpoint(os.path.join(saved, CHECKPOINT_PREFIX), n_layers)
    _check_chain(layers, n_inputs, n_classes, saved)
    settings = _plain_settings(state)
    model_files = [(PICKLE_FILE, _file_size(pkl, MAX_PICKLE_BYTES))]
    for name, limit in (
        (SAVED_MODEL, MAX_SAVED_MODEL_BYTES),
        (KERAS_METADATA, MAX_PICKLE_BYTES),
        (FINGERPRINT, MAX_FINGERPRINT_BYTES),
    ):
        if os.path.lexists(os.path.join(saved, name)):
            model_files.append(
                (f"{SAVEDMODEL_DIR}/{name}", _file_size(os.path.join(saved, name), limit))
            )
    model_files += [(f"{SAVEDMODEL_DIR}/{VARIABLES_DIR}/{n}", size) for n, size in data_files]
    return LegacyNetwork(
        source=directory,
        fmt=FORMAT_3X,
        columns=columns,
        layers=layers,
        n_classes=n_classes,
        activation="relu",
        nfeatures=None if columns is not None else n_inputs,
        settings=settings,
        directory=directory,
        files=model_files,
    )


def _check_directory(path: str) -> None:
    """A directory of an old model must be one, not a link to one elsewhere."""
    found = files.not_a_directory(path)
    if found == files.LINK:
        raise BackendError(
            f"The old model's {os.path.basename(path)}/ in {os.path.dirname(path)} is a "
            "symbolic link, which is not followed: a model's files are in its own directory."
        )
    if found:
        raise BackendError(
            f"The old model's {os.path.basename(path)} in {os.path.dirname(path)} is "
            f"{found}, not a directory."
        )


def _file_size(path: str, limit: int) -> int:
    """The size of a model's regular file (links not followed, pipes not
    opened), refused over `limit`."""
    try:
        with files.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise BackendError(
            f"The old model file {path} cannot be read ({files.why(exc)})."
        ) from None
    if size > limit:
        raise BackendError(
            f"The old model file {path} has {size} bytes, more than any model "
            f"moodlemlbackend writes ({limit} bytes at most); it is refused."
        )
    return size


def _check_activations(saved: str) -> None:
    """The 3.x network is ReLU layers and a softmax output; the Keras
    metadata beside the variables says so in JSON text. Read as bytes (it is
    data), and refuse a network that says otherwise."""
    path = os.path.join(saved, KERAS_METADATA)
    if not os.path.lexists(path):
        return  # older Keras wrote none; the 3.x code always used ReLU + softmax
    text = _read_bytes(path, MAX_PICKLE_BYTES)
    found = set(re.findall(rb'"activation": "([A-Za-z_]+)"', text))
    unknown = found - {b"relu", b"softmax"}
    if unknown:
        names = ", ".join(sorted(n.decode() for n in unknown))
        raise BackendError(
            f"The old model in {saved} uses activations this program does "
            f"not convert ({names}); moodlemlbackend 3.x used ReLU and softmax."
        )


def read_checkpoint(prefix: str, n_layers: int) -> tuple[list[Dense], list[tuple[str, int]]]:
    """Kernels and biases of `n_layers` Dense layers from a TensorFlow
    checkpoint, and the checkpoint's files (name, size): tensors only, the
    SavedModel's graph is never loaded, and the checkpoint is parsed and
    checked by `mlbackend.checkpoint`, never by TensorFlow (which aborts
    the process on a crafted index). Its data files must hold what its
    index lists and no more, and that must be what a model of these
    weights needs (`DATA_FACTOR`)."""
    from mlbackend.checkpoint import Checkpoint, CheckpointError

    if not os.path.lexists(prefix + ".index"):
        raise BackendError(f"The old model's weights are missing: no {prefix}.index.")
    try:
        reader = Checkpoint(prefix)
        names = reader.names()
        wanted = [
            _CKPT_KEY.format(i=i, part=part) for i in range(n_layers) for part in ("kernel", "bias")
        ]
        missing = [k for k in wanted if k not in names]
        if missing:
            raise BackendError(
                f"The old model's weights in {prefix} do not match its "
                f"settings ({n_layers} layers): {missing[0]} is missing."
            )
        extra = _CKPT_KEY.format(i=n_layers, part="kernel")
        if extra in names:
            raise BackendError(
                f"The old model's weights in {prefix} have more layers than "
                f"its settings say ({n_layers})."
            )
        for key in wanted:
            shape = reader.shape(key)
            if math.prod(shape) > MAX_WEIGHTS:
                raise BackendError(
                    f"The old model's weights in {prefix} are too large ({key}: {shown(shape)})."
                )
        layers = [
            Dense(
                reader.tensor(_CKPT_KEY.format(i=i, part="kernel")),
                reader.tensor(_CKPT_KEY.format(i=i, part="bias")),
            )
            for i in range(n_layers)
        ]
        weights = sum(layer.kernel.nbytes + layer.bias.nbytes for layer in layers)
        ends = reader.shard_ends()
        if sum(ends.values()) > DATA_FACTOR * weights + DATA_SLACK:
            raise BackendError(
                f"The old model's checkpoint {prefix} lists {sum(ends.values())} bytes of "
                f"tensors for {weights} bytes of weights, more than a model's checkpoint "
                "holds; it is refused."
            )
        found = [(os.path.basename(prefix) + ".index", _file_size(prefix + ".index", 1 << 62))]
        for shard in range(reader.num_shards):
            path = reader.data_path(shard)
            if not os.path.lexists(path) and shard not in ends:
                continue
            size = _file_size(path, 1 << 62)
            if size > ends.get(shard, 0):
                raise BackendError(
                    f"The old model's data file {path} has {size} bytes, but its index "
                    f"lists {ends.get(shard, 0)}: a checkpoint's data file holds its "
                    "tensors and nothing else. It is refused."
                )
            found.append((os.path.basename(path), size))
        return layers, found
    except CheckpointError as exc:
        raise BackendError(
            f"The old model's weights in {prefix} cannot be read: they are "
            f"damaged or truncated ({exc.message})."
        ) from None


def _check_chain(layers: list[Dense], n_inputs: int, n_classes: int, source: str) -> None:
    """Shapes must chain input -> hidden ... -> classes, numbers be finite.
    The old files' own checks, with their own messages (the converted
    model is checked again as any model is)."""
    width = n_inputs
    for i, layer in enumerate(layers):
        kernel, bias = layer.kernel, layer.bias
        if (
            kernel.ndim != 2
            or kernel.shape[0] != width
            or bias.ndim != 1
            or bias.shape[0] != kernel.shape[1]
            or kernel.shape[1] < 1
        ):
            raise BackendError(
                f"The old model in {source} has weights of the wrong shape "
                f"(layer {i + 1}: {kernel.shape} and {bias.shape} after "
                f"{width} inputs)."
            )
        if kernel.dtype.kind != "f" or bias.dtype.kind != "f":
            raise BackendError(
                f"The old model in {source} has weights that are not floating-point numbers."
            )
        width = kernel.shape[1]
    if width != n_classes:
        raise BackendError(
            f"The old model in {source} has {width} outputs for {n_classes} classes."
        )
    if not all(np.all(np.isfinite(a)) for layer in layers for a in (layer.kernel, layer.bias)):
        raise BackendError(f"The old model in {source} has weights that are not finite.")


# --------------------------------------------------------------------------
# 2.x exports


def read_2x_export(path: str) -> LegacyNetwork:
    """A 2.x `model.json`: one tanh hidden layer and a softmax output, on
    every feature, unscaled (moodlemlbackend 2.x `TF.build_graph`)."""
    raw = _read_bytes(path, MAX_JSON_BYTES)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BackendError(
            f"The exported model {path} is not valid JSON "
            f"({shown(str(exc))}); it is "
            "damaged or truncated."
        ) from None
    if not isinstance(doc, dict):
        raise BackendError(f"The exported model {path} is not a moodlemlbackend export.")
    missing = [k for k in ("n_features",) + _JSON_KEYS if k not in doc]
    if missing:
        raise BackendError(
            f"The exported model {path} is not a moodlemlbackend export: {missing[0]} is missing."
        )
    n_features = _int_setting(doc, "n_features", path, 1, maximum=MAX_FEATURES)
    n_classes = _int_setting(
        doc,
        "n_classes",
        path,
        2,
        default=2,  # as 2.x import did
        maximum=MAX_CLASSES,
    )
    arrays = {}
    for key in _JSON_KEYS:
        try:
            arrays[key] = np.asarray(doc[key], dtype=np.float64)
        except (ValueError, TypeError):
            raise BackendError(
                f"The exported model {path} has invalid weights under {key}."
            ) from None
    layers = [
        Dense(arrays[kernel], arrays[bias]) for kernel, bias in (_JSON_KEYS[:2], _JSON_KEYS[2:])
    ]
    _check_chain(layers, n_features, n_classes, path)
    hidden = int(layers[0].kernel.shape[1])
    if "n_hidden" in doc and _int_setting(doc, "n_hidden", path, 1) != hidden:
        raise BackendError(
            f"The exported model {path} is inconsistent: n_hidden is "
            f"{shown(doc['n_hidden'])} but the weights have {hidden}."
        )
    return LegacyNetwork(
        source=path,
        fmt=FORMAT_2X_EXPORT,
        columns=None,
        layers=layers,
        n_classes=n_classes,
        activation="tanh",
        nfeatures=n_features,
        settings={"n_hidden": hidden},
        directory=os.path.dirname(path),
        files=[(os.path.basename(path), len(raw))],
    )


# --------------------------------------------------------------------------
# Files


def _read_bytes(path: str, limit: int) -> bytes:
    try:
        data = files.read_at_most(path, limit)
    except OSError as exc:
        raise BackendError(
            f"The old model file {path} cannot be read ({files.why(exc)})."
        ) from None
    if data is None:
        raise BackendError(
            f"The old model file {path} is larger than any model "
            f"moodlemlbackend writes ({limit} bytes at most); it is refused."
        )
    return data


def move_aside(directory: str) -> str | None:
    """Move the old backend's files in `directory` into a subdirectory, so
    that a rollback to moodlemlbackend can put them back; returns it."""
    names = legacy_files(directory)
    if not names:
        return None
    aside = os.path.join(directory, ASIDE_DIR)
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = os.path.join(directory, f"{ASIDE_DIR}.{n}")
    os.mkdir(aside)
    for name in names:
        os.rename(os.path.join(directory, name), os.path.join(aside, name))
    return aside


def copy_files(model: LegacyNetwork, target: str) -> None:
    """Copy the files `model` was read from (`LegacyNetwork.files`) into
    `target`, a new directory: those and nothing else, each a regular file
    opened without following links, at most the size it had when it was
    checked. OSError passes through."""
    for rel, size in model.files:
        src = os.path.join(model.directory, rel)
        dst = os.path.join(target, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with files.open_regular(src) as f, open(dst, "xb") as out:
            left = size
            while chunk := f.read(min(1 << 20, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise BackendError(
                        f"The old model file {src} grew while it was copied; nothing was stored."
                    )
                out.write(chunk)
