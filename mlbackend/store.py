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
- A `classifier/` written by the old backend, moodlemlbackend, is converted
  (see `mlbackend.legacy`, which reads it without running anything in it) the
  first time it is used with a dataset: the new `model.npz` is saved as
  above, under the lock, and only then are the old files moved into
  `classifier/legacy-moodlemlbackend/`, kept for a rollback, never deleted.
- A loaded model stays in memory while its file is unchanged (same path,
  inode, modification time and size), so a server answering prediction
  after prediction reads and checks the file once. Models are never
  modified in place, so sharing one between threads is safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from mlbackend import legacy
from mlbackend.contract import (
    GENERAL_ERROR,
    BackendError,
    NotTrainedError,
    WriteError,
    shown,
)
from mlbackend.inference import MAX_PARAMETERS, Model

log = logging.getLogger(__name__)

CLASSIFIER_DIR = "classifier"
#: Evaluation runs keep what an admin looks at in MODEL_DIR/logs/RUNID/.
LOGS_DIR = "logs"
MODEL_FILE = "model.npz"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
#: Loaded models kept in memory (one per model file); a few hundred KB each.
CACHE_SIZE = 64
#: Most memory the loaded models kept in memory may take together; the
#: least recently used are dropped first (a model larger than this is used
#: and not kept).
CACHE_BYTES = 256 << 20
#: Most bytes a model file's arrays may take once unpacked: the largest
#: model accepted (`inference.MAX_PARAMETERS` float32 weights) and room for
#: its other arrays. Real models take a few hundred KB (one of 10,000
#: features about 6 MB). A crafted file's compressed members can declare
#: gigabytes that NumPy would allocate and fill: such a file is refused
#: before any array is read.
MAX_MODEL_BYTES = 4 * MAX_PARAMETERS + (16 << 20)
#: Suffix of a model file that could not be read, kept aside by training.
DAMAGED_SUFFIX = ".damaged-"


class DamagedModel(BackendError):
    """Our model file exists but cannot be read or is not a usable model."""


def classifier_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CLASSIFIER_DIR)


def model_path(model_dir: str) -> str:
    return os.path.join(model_dir, CLASSIFIER_DIR, MODEL_FILE)


def run_log_dir(model_dir: str, runid: int | str) -> str:
    return os.path.join(model_dir, LOGS_DIR, str(runid))


def default_model_dir(model_id: str) -> str:
    """Where the human form of the commands keeps a model nobody placed."""
    import platformdirs  # only the human form needs it

    safe = safe_name(model_id)
    if not safe:
        raise BackendError(
            f"The model id {model_id!r} has no usable characters (letters, digits, '_' and '-')."
        )
    return os.path.join(platformdirs.user_data_dir("mlbackend"), "models", safe)


def safe_name(value: str) -> str:
    """Moodle's rule for names that become directories: [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "", value)


def has_model(model_dir: str) -> bool:
    """Whether this directory holds a trained model, ours or the old backend's."""
    return (
        os.path.isfile(model_path(model_dir))
        or legacy.detect(classifier_dir(model_dir)) is not None
    )


def load(
    model_dir: str, nfeatures: int | None = None, replace_damaged: bool = False
) -> Model | None:
    """The stored model, or None when this directory was never trained.

    `nfeatures` is the feature count of the dataset the caller is about to
    use. An old-format model is converted with it (moodlemlbackend 3.x did
    not record the count) and saved in our format, so this happens once.

    `replace_damaged` is for training, which holds the writer lock: a model
    file that cannot be read is renamed `model.npz.damaged-TIMESTAMP` (kept,
    for whoever wants to look at it) and the model counts as untrained, so
    that training makes a new one instead of failing for ever.
    """
    clean_strays(model_dir)
    try:
        model = _load_cached(model_path(model_dir))
    except DamagedModel as exc:
        if not replace_damaged:
            raise
        aside = _set_aside(model_path(model_dir))
        log.warning(
            "%s The damaged file is kept as %s; training makes a new model.", exc.message, aside
        )
        model = None
    if model is not None or legacy.detect(classifier_dir(model_dir)) is None:
        return model
    return _convert_legacy(model_dir, nfeatures)


def _set_aside(path: str) -> str:
    """Rename a damaged model file beside itself, with the time in its name."""
    aside = f"{path}{DAMAGED_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}{DAMAGED_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}.{n}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise BackendError(
            f"The stored model {path} cannot be read, and it could not be "
            f"moved aside to train a new one ({exc.strerror})."
        ) from None
    return aside


def _convert_legacy(model_dir: str, nfeatures: int | None) -> Model | None:
    """Convert the old backend's model in `model_dir` to ours, once."""
    target_dir = classifier_dir(model_dir)
    if not os.access(target_dir, os.W_OK):
        log.warning(
            "%s is read-only: its moodlemlbackend model is converted in memory, on every use",
            target_dir,
        )
        return legacy.convert(target_dir, nfeatures)
    with writer_lock(model_dir):
        # Another process may have converted it while we waited for the lock.
        model = load_file(model_path(model_dir), missing_ok=True)
        if model is not None or legacy.detect(target_dir) is None:
            return model
        network = legacy.read(target_dir)
        model = network.to_model(nfeatures)
        save(model_dir, model)
        try:
            aside = legacy.move_aside(target_dir)
        except OSError as exc:
            # The new model is saved and is what load() reads from now on.
            log.warning(
                "converted %s, but its old files could not be moved aside (%s)",
                target_dir,
                exc.strerror,
            )
        else:
            log.warning(
                "converted the %s model in %s to mlbackend's format; the old files are kept in %s",
                network.fmt,
                target_dir,
                aside,
            )
    return model


def _load_cached(path: str) -> Model | None:
    """Our model file at `path` (None if absent), from memory while unchanged."""
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
        with zipfile.ZipFile(f) as archive:
            _check_members(archive, path)
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage (bad zip, bad zlib, bad header)
        raise DamagedModel(
            f"The stored model {path} cannot be read ({shown(str(exc))}). {REPAIR_ADVICE}"
        ) from None
    try:
        return Model.from_arrays(arrays, path)
    except BackendError as exc:
        raise DamagedModel(f"{exc.message} {REPAIR_ADVICE}") from None


def _check_members(archive: zipfile.ZipFile, path: str) -> None:
    """Every member's declared array must fit in the bytes it unpacks to,
    and they all in `MAX_MODEL_BYTES`: NumPy allocates what a header
    declares before it reads the data."""
    unpacked = 0
    for info in archive.infolist():
        unpacked += info.file_size
        if unpacked > MAX_MODEL_BYTES:
            raise DamagedModel(
                f"The stored model {path} cannot be read: it unpacks to more "
                f"than a model can take ({MAX_MODEL_BYTES} bytes). "
                f"{REPAIR_ADVICE}"
            )
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise DamagedModel(
                f"The stored model {path} cannot be read: its part "
                f"{shown(info.filename)} declares more data than it holds. "
                f"{REPAIR_ADVICE}"
            )


#: What to do about a model file that cannot be read (training does this).
REPAIR_ADVICE = (
    "Train the model again (training replaces a model that cannot be read and "
    "keeps the damaged file beside it) or import a good copy."
)


class _ModelCache:
    """Path -> (file stamp, Model), least recently used dropped first; thread-safe."""

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
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
            self._entries.pop(key, None)
            if model.nbytes > self.max_bytes:
                return
            self._entries[key] = (stamp, model)
            total = sum(m.nbytes for _, m in self._entries.values())
            while len(self._entries) > self.size or total > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                total -= dropped.nbytes


_cache = _ModelCache(CACHE_SIZE)


def save(model_dir: str, model: Model) -> None:
    """Write atomically: temporary file, fsync, rename. Caller holds the lock.

    A model that would not load back (a training gone wrong: weights that are
    not numbers) is refused before anything is written: saving it would
    replace a good model with one that answers nothing but errors.
    """
    target_dir = classifier_dir(model_dir)
    arrays = model.to_arrays()
    try:
        Model.from_arrays(arrays, os.path.join(target_dir, MODEL_FILE))
    except BackendError as exc:
        raise BackendError(
            f"The new model was not saved: it is not usable ({exc.message}) "
            "The previous model is unchanged."
        ) from None
    _write_atomically(
        model_path(model_dir),
        arrays,
        "The model could not be saved",
        "The previous model is unchanged.",
    )


def _write_atomically(
    target: str, arrays: dict[str, np.ndarray], failure: str, unchanged: str
) -> None:
    """Write `arrays` to `target` through a temporary file in its directory,
    fsynced, then renamed: a crash or a full disk leaves the old file (or
    none) and no temporary file behind. Used for saves and exports alike."""
    target_dir = os.path.dirname(target)
    try:
        os.makedirs(target_dir, exist_ok=True)
        fd, tmp = _new_file(target_dir, ".npz")
    except OSError as exc:
        raise _write_error(exc, failure, target_dir, unchanged) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target_dir)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _write_error(exc, failure, target_dir, unchanged) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _write_error(exc: OSError, failure: str, directory: str, unchanged: str) -> WriteError:
    why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
    return WriteError(f"{failure} in {directory} ({why}). {unchanged}".rstrip())


_held = threading.local()


@contextlib.contextmanager
def writer_lock(model_dir: str) -> Iterator[None]:
    """Exclusive lock for anything that writes this model directory.

    Stray temporary files (and directories) from a killed writer are removed
    once the lock is held: no other writer can be using them then. The lock
    is re-entrant within a thread, because training holds it while it loads
    the model, and loading an old-format model takes it to convert it
    (flock would deadlock on a second open of the lock file).
    """
    target_dir = classifier_dir(model_dir)
    _makedirs(target_dir)
    key = os.path.realpath(target_dir)
    held: set[str] = _held.__dict__.setdefault("dirs", set())
    if key in held:
        yield
        return
    with _locked_file(target_dir) as lock:
        held.add(key)
        try:
            _remove_strays(target_dir)
            yield
        finally:
            held.discard(key)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _locked_file(target_dir: str) -> Iterator[BinaryIO]:
    """The lock file of `target_dir`, opened and flock'ed exclusively.

    `delete_model` removes the directory, lock file included, while it holds
    the lock. A writer that was waiting on that file then holds a lock on a
    file nobody else will ever open, while a newcomer locks a new file at
    the same path: both would write at once. So, once the lock is ours, the
    file must still be the one at the path; if not, start again.
    """
    path = os.path.join(target_dir, LOCK_FILE)
    while True:
        _makedirs(target_dir)
        try:
            lock = _open_lock(target_dir)
        except FileNotFoundError:  # the directory was removed in between
            continue
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if _is_current(lock, path):
                yield lock
                return
        finally:
            lock.close()


def delete_model(model_dir: str) -> bool:
    """Remove a model directory, in turn with its writers; True if it existed.

    The writer lock is taken first, so a training of this model that is
    running finishes (and is then deleted with the rest) instead of saving
    its result after the delete, and no training can start while the files
    go. The lock file goes with the directory; `writer_lock` notices that
    and waiters lock the new one.
    """
    if not os.path.isdir(model_dir):
        return False
    with writer_lock(model_dir):
        shutil.rmtree(model_dir, ignore_errors=True)
    # A writer that was waiting re-creates the directory for its own model.
    return True


def clean_strays(model_dir: str) -> None:
    """Remove a killed writer's temporary files, if no writer is at work.

    Writers remove them when they take the lock (see `writer_lock`); readers
    call this, so that whichever call comes next tidies up. It never waits:
    while a writer holds the lock, the files may be its own, and are left to
    it. Nothing to do (the usual case) costs one directory listing.
    """
    target_dir = classifier_dir(model_dir)
    try:
        if not any(name.startswith(TEMP_PREFIX) for name in os.listdir(target_dir)):
            return
        lock = _open_lock(target_dir)
    except (OSError, BackendError):  # no directory, read-only, a link: nothing we may do
        return
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a writer is at work (in this process too: flock is per open)
            return
        try:
            if _is_current(lock, os.path.join(target_dir, LOCK_FILE)):  # not deleted meanwhile
                _remove_strays(target_dir)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _is_current(lock: BinaryIO, path: str) -> bool:
    """Whether the open lock file is still the one at `path` (see `_locked_file`)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(lock.fileno())
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


def _open_lock(target_dir: str) -> BinaryIO:
    """The lock file, never through a symbolic link: whoever can write the
    model directory must not make us create or lock a file elsewhere."""
    path = os.path.join(target_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BackendError(
                f"The lock file {path} is a symbolic link; it is not followed. "
                "Remove it (the program makes a plain file)."
            ) from None
        raise
    return os.fdopen(fd, "a+b")


def _new_file(directory: str, suffix: str) -> tuple[int, str]:
    """A new temporary file in `directory`, opened for writing.

    Unlike `tempfile.mkstemp` (always mode 0600), it is created with mode
    0666 less the umask, like any file the program writes: where cron and
    the web server run as different users, the umask says who may read a
    model, not us."""
    while True:
        path = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
            ), path
        except FileExistsError:
            continue


def _remove_strays(target_dir: str) -> None:
    for name in os.listdir(target_dir):
        if name.startswith(TEMP_PREFIX):
            _remove_quietly(os.path.join(target_dir, name))


def export_model(model_dir: str, export_dir: str) -> str:
    """Copy the model into `export_dir`; returns the directory Moodle should zip.

    An old-format model not converted yet (that needs a dataset) is exported
    as its old files, which `import_model` reads back.
    """
    if not has_model(model_dir):
        # Status 1, not NO_DATASET: Moodle's contract for export.
        raise NotTrainedError("There is no trained model to export.", status=GENERAL_ERROR)
    model = load_file(model_path(model_dir), missing_ok=True)
    if model is None:
        return _export_legacy(model_dir, export_dir)
    _write_atomically(
        os.path.join(export_dir, MODEL_FILE),
        model.to_arrays(),
        "The model could not be exported",
        "",
    )
    return os.path.abspath(export_dir)


def _export_legacy(model_dir: str, export_dir: str) -> str:
    source = classifier_dir(model_dir)
    legacy.read(source)  # export only what import will take back
    try:
        os.makedirs(export_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=export_dir)
    except OSError as exc:
        raise _write_error(exc, "The model could not be exported", export_dir, "") from None
    try:
        legacy.copy_files(source, staging)
        for name in os.listdir(staging):
            target = os.path.join(export_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
    except OSError as exc:
        raise _write_error(exc, "The model could not be exported", export_dir, "") from None
    finally:
        remove_tree(staging)
    return os.path.abspath(export_dir)


def import_model(model_dir: str, import_dir: str) -> None:
    """Validate the model found in `import_dir` and store it as this model.

    Accepted: our export (`model.npz`), a moodlemlbackend 2.x export
    (`model.json`, converted now) and a moodlemlbackend 3.x model
    (`classifier.pkl` with `model.ckpt/`, checked now and stored as it is,
    to be converted when first used with a dataset, since it does not record
    the dataset's feature count).
    """
    if not os.path.isdir(import_dir):
        raise BackendError(f"The import directory {import_dir} does not exist.")
    candidates = [os.path.join(import_dir, MODEL_FILE), model_path(import_dir)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is not None:
        model = load_file(found)
        assert model is not None
        with writer_lock(model_dir):
            save(model_dir, model)
            _move_legacy_aside(classifier_dir(model_dir))
        return
    source = next(
        (d for d in (import_dir, classifier_dir(import_dir)) if legacy.detect(d) is not None), None
    )
    if source is None:
        raise BackendError(
            f"No exported model found in {import_dir} (expected {MODEL_FILE}, "
            f"or moodlemlbackend's {legacy.EXPORT_JSON}, or its "
            f"{legacy.PICKLE_FILE} with {legacy.SAVEDMODEL_DIR}/)."
        )
    network = legacy.read(source)  # refuses anything hostile before a byte is copied
    if network.nfeatures is not None:
        model = network.to_model()
        with writer_lock(model_dir):
            save(model_dir, model)
            _move_legacy_aside(classifier_dir(model_dir))
        return
    with writer_lock(model_dir):
        _store_legacy(model_dir, source)


def _store_legacy(model_dir: str, source: str) -> None:
    """Put a checked 3.x model's files in place of this model. Caller holds the lock.

    The files are copied into a temporary directory first and renamed into
    place; our `model.npz` goes last, so a crash leaves the previous model.
    """
    target_dir = classifier_dir(model_dir)
    staging = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target_dir)
    try:
        legacy.copy_files(source, staging)
        _move_legacy_aside(target_dir)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(target_dir, name))
        _remove_quietly(model_path(model_dir))
        _fsync_dir(target_dir)
    except OSError as exc:
        raise BackendError(
            f"The model could not be stored in {target_dir} ({exc.strerror})."
        ) from None
    finally:
        remove_tree(staging)


def _move_legacy_aside(target_dir: str) -> None:
    """Old-format files left in `classifier/` would be stale beside a newly
    imported model; they are moved aside like a converted model's, not deleted."""
    aside = legacy.move_aside(target_dir)
    if aside:
        log.warning("the moodlemlbackend files that were in %s are kept in %s", target_dir, aside)


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
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
