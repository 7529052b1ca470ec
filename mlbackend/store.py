"""Model directories: where models live on disk, and how they are written.

This is the only module that touches model files. Its promises:

- A model is one file, `OUTPUTDIR/classifier/model.npz` (NumPy arrays plus
  a JSON metadata string, read with `allow_pickle=False`: data, never code).
- It is written to a temporary file in the same directory, flushed to disk,
  then renamed over the old one, so a reader sees the old model or the new
  one, never half of either, and a crash leaves the old model in place.
- Writers hold an exclusive OS lock on `OUTPUTDIR/classifier/.lock`, so two
  trainings of one model run one after the other (each continuing from the
  other's result) instead of racing.
- A loaded model stays in memory while its file is unchanged (same path,
  inode, modification time and size), so a server answering prediction
  after prediction reads and checks the file once. Models are never
  modified in place, so sharing one between threads is safe.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from typing import BinaryIO, Iterator

import numpy as np

from mlbackend.contract import BackendError
from mlbackend.inference import Model

CLASSIFIER_DIR = "classifier"
MODEL_FILE = "model.npz"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
#: Loaded models kept in memory (one per model file); a few hundred KB each.
CACHE_SIZE = 64


def classifier_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CLASSIFIER_DIR)


def model_path(model_dir: str) -> str:
    return os.path.join(model_dir, CLASSIFIER_DIR, MODEL_FILE)


def default_model_dir(model_id: str) -> str:
    """Where the human form of the commands keeps a model nobody placed."""
    import platformdirs  # only the human form needs it

    safe = safe_name(model_id)
    if not safe:
        raise BackendError(f"The model id {model_id!r} has no usable characters "
                           "(letters, digits, '_' and '-').")
    return os.path.join(platformdirs.user_data_dir("mlbackend"), "models", safe)


def safe_name(value: str) -> str:
    """Moodle's rule for names that become directories: [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "", value)


def has_model(model_dir: str) -> bool:
    return os.path.isfile(model_path(model_dir))


def load(model_dir: str) -> Model | None:
    """The stored model, or None when this directory was never trained.

    Served from memory while the file is the one read before.
    """
    path = model_path(model_dir)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"The stored model {path} cannot be read ({exc.strerror}).") from None
    with f:
        st = os.fstat(f.fileno())  # of the file we read, even if replaced meanwhile
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        key = os.path.abspath(path)
        model = _cache.get(key, stamp)
        if model is None:
            model = _read(f, path)
            _cache.put(key, stamp, model)
    return model


def load_file(path: str, missing_ok: bool = False) -> Model | None:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BackendError(f"There is no model file at {path}.") from None
    except OSError as exc:
        raise BackendError(f"The stored model {path} cannot be read ({exc.strerror}).") from None
    with f:
        return _read(f, path)


def _read(f: BinaryIO, path: str) -> Model:
    try:
        with np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BackendError(f"The stored model {path} cannot be read ({exc}). Train the model "
                           "again or import a good copy.") from None
    return Model.from_arrays(arrays, path)


class _ModelCache:
    """Path -> (file stamp, Model), least recently used dropped first; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple[int, ...], Model]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, stamp: tuple[int, ...]) -> Model | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamp:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, stamp: tuple[int, ...], model: Model) -> None:
        with self._lock:
            self._entries[key] = (stamp, model)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _ModelCache(CACHE_SIZE)


def save(model_dir: str, model: Model) -> None:
    """Write atomically: temporary file, fsync, rename. Caller holds the lock."""
    target_dir = classifier_dir(model_dir)
    _makedirs(target_dir)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".npz", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **model.to_arrays())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, model_path(model_dir))
        _fsync_dir(target_dir)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BackendError(f"The model could not be saved in {target_dir}: the disk is "
                               "full. The previous model is unchanged.") from None
        raise BackendError(f"The model could not be saved in {target_dir} ({exc.strerror}). "
                           "The previous model is unchanged.") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def writer_lock(model_dir: str) -> Iterator[None]:
    """Exclusive lock for anything that writes this model directory.

    Stray temporary files from a killed writer are removed once the lock is
    held: no other writer can be using them then.
    """
    target_dir = classifier_dir(model_dir)
    _makedirs(target_dir)
    with open(os.path.join(target_dir, LOCK_FILE), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            for name in os.listdir(target_dir):
                if name.startswith(TEMP_PREFIX):
                    _remove_quietly(os.path.join(target_dir, name))
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def export_model(model_dir: str, export_dir: str) -> str:
    """Copy the model into `export_dir`; returns the directory Moodle should zip."""
    if not has_model(model_dir):
        raise BackendError("There is no trained model to export.")
    model = load(model_dir)
    assert model is not None
    _makedirs(export_dir)
    target = os.path.join(export_dir, MODEL_FILE)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".npz", dir=export_dir)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **model.to_arrays())
    os.replace(tmp, target)
    return os.path.abspath(export_dir)


def import_model(model_dir: str, import_dir: str) -> Model:
    """Validate the model found in `import_dir` and store it as this model."""
    if not os.path.isdir(import_dir):
        raise BackendError(f"The import directory {import_dir} does not exist.")
    candidates = [os.path.join(import_dir, MODEL_FILE), model_path(import_dir)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise BackendError(f"No exported model found in {import_dir} (expected {MODEL_FILE}).")
    model = load_file(found)
    assert model is not None
    with writer_lock(model_dir):
        save(model_dir, model)
    return model


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"The directory {path} cannot be created ({exc.strerror}).") from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
