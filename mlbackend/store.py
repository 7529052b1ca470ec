"""Model directories: where models live on disk, reading them, and the few
named steps that write them.

Its promises:

- A model is one file, `OUTPUTDIR/classifier/model.npz`
  (`mlbackend.model.format`), written atomically (`mlbackend.files`): a
  reader sees the old model or the new one, never half of either, and a
  crash leaves the old model in place.
- Writers hold an exclusive lock on `OUTPUTDIR/classifier/.lock`
  (`writer_lock`), so two trainings of one model run one after the other
  (each continuing from the other's result) instead of racing. Taking it
  removes a killed writer's temporary files.
- Reading (`read`) never writes. It converts a model of the old backend,
  moodlemlbackend (`mlbackend.legacy`), in memory; keeping the conversion
  is a step of its own (`save_converted`), as are setting a damaged file
  aside (`set_aside_damaged`) and tidying after a killed writer (`tidy`).
  The actions call them where they decide to (`mlbackend.actions`).
- A model read stays in memory while its file is unchanged (same path,
  inode, modification time and size), so a server answering prediction
  after prediction reads and checks the file once. Models are never
  modified in place, so sharing one between threads is safe.
- Nothing is read or written through a symbolic link in a model directory
  (`classifier/` must be a directory of its own, `model.npz` a regular
  file), and nothing but a regular file is opened, so a link there cannot
  send a write to /etc nor a named pipe block a call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mlbackend import files, legacy, locks
from mlbackend.contract import BackendError
from mlbackend.model.classifier import Model
from mlbackend.model.convert import from_legacy
from mlbackend.model.format import FormatError, from_arrays, read_npz, to_arrays, write_npz

log = logging.getLogger(__name__)

CLASSIFIER_DIR = "classifier"
#: Evaluation runs keep what an admin looks at in MODEL_DIR/logs/RUNID/.
LOGS_DIR = "logs"
MODEL_FILE = "model.npz"
LOCK_FILE = locks.LOCK_FILE
TEMP_PREFIX = files.TEMP_PREFIX
#: Loaded models kept in memory (one per model file); a few hundred KB each.
CACHE_SIZE = 64
#: Most memory the loaded models kept in memory may take together; the
#: least recently used are dropped first (a model larger than this is used
#: and not kept).
CACHE_BYTES = 256 << 20
#: Suffix of a model file that could not be read, kept aside by training.
DAMAGED_SUFFIX = ".damaged-"
#: What to do about a model file that cannot be read (training does this).
REPAIR_ADVICE = (
    "Train the model again (training replaces a model that cannot be read and "
    "keeps the damaged file beside it) or import a good copy."
)


class DamagedModel(BackendError):
    """Our model file exists but cannot be read or is not a usable model."""


@dataclass(frozen=True)
class Stored:
    """A model as read from a model directory."""

    model: Model
    #: Read from moodlemlbackend's files and converted in memory:
    #: `save_converted` keeps it in our format.
    converted: bool = False


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
    """Whether this directory holds a trained model, ours or the old backend's.

    Whatever is at `model.npz` counts (reading it then says what is wrong
    with a link or a pipe there); a `classifier/` that is a symbolic link
    is refused."""
    directory = classifier_dir(model_dir)
    if os.path.islink(directory):
        raise BackendError(
            f"{directory} is a symbolic link; the program does not read or write through "
            "links. Remove it: the program makes a plain directory there."
        )
    return os.path.lexists(model_path(model_dir)) or legacy.detect(directory) is not None


# --------------------------------------------------------------------------
# Reading


def read(model_dir: str, nfeatures: int | None = None) -> Stored | None:
    """The stored model, or None when this directory was never trained.

    Reads, and writes nothing. A model of the old backend is converted in
    memory, with `nfeatures` (the feature count of the dataset the caller
    is about to use: moodlemlbackend 3.x did not record it). A model file
    that cannot be read raises `DamagedModel`.
    """
    if not has_model(model_dir):
        return None
    model = _read_cached(model_path(model_dir))
    if model is not None:
        return Stored(model)
    directory = classifier_dir(model_dir)
    if legacy.detect(directory) is None:
        return None
    return Stored(from_legacy(legacy.read(directory), nfeatures), converted=True)


def read_file(path: str, missing_ok: bool = False, stored: bool = True) -> Model | None:
    """The model in the file at `path` (not cached); `stored`: a model
    directory's own file (not one being imported)."""
    f = _open_model(path, stored)
    if f is None:
        if missing_ok:
            return None
        raise BackendError(f"There is no model file at {path}.")
    with f:
        return _read(f, path)


def _open_model(path: str, stored: bool = True) -> BinaryIO | None:
    """The model file at `path` opened (None if absent): a regular file, not
    a link (not followed) nor a pipe (whose open would block)."""
    what = "The stored model" if stored else "The model file"
    try:
        return files.open_regular(path)
    except FileNotFoundError:
        return None
    except files.NotRegularFile as exc:
        advice = " Remove it: the program writes a plain file there." if stored else ""
        raise BackendError(f"{what} {path} cannot be read ({files.why(exc)}).{advice}") from None
    except OSError as exc:
        raise BackendError(f"{what} {path} cannot be read ({files.why(exc)}).") from None


def _read_cached(path: str) -> Model | None:
    """Our model file at `path` (None if absent), from memory while unchanged."""
    f = _open_model(path)
    if f is None:
        return None
    with f:
        st = os.fstat(f.fileno())  # of the file we read, even if replaced meanwhile
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        key = os.path.abspath(path)
        model = _cache.get(key, stamp)
        if model is None:
            model = _read(f, path)
            _cache.put(key, stamp, model)
    return model


def _read(f: BinaryIO, path: str) -> Model:
    try:
        return read_npz(f, path)
    except FormatError as exc:
        raise DamagedModel(f"{exc.message} {REPAIR_ADVICE}") from None


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


# --------------------------------------------------------------------------
# Writing: each step named, each called by an action that decided to


@contextlib.contextmanager
def writer_lock(model_dir: str) -> Iterator[None]:
    """Exclusive lock for anything that writes this model directory.

    Stray temporary files (and directories) from a killed writer are removed
    once the lock is taken: no other writer can be using them then. The lock
    is re-entrant within a thread (an import holds it while it saves).
    """
    target_dir = classifier_dir(model_dir)
    with locks.exclusive(target_dir) as taken:
        if taken:
            files.remove_temporary(target_dir)
        yield


def save(model_dir: str, model: Model) -> None:
    """Write atomically: temporary file, fsync, rename. Caller holds the lock.

    A model that would not load back (a training gone wrong: weights that are
    not numbers) is refused before anything is written: saving it would
    replace a good model with one that answers nothing but errors.
    """
    save_file(
        model_path(model_dir),
        model,
        "The model could not be saved",
        "The previous model is unchanged.",
    )


def save_file(path: str, model: Model, failure: str, unchanged: str) -> None:
    """Write `model` atomically at `path` (a save, an export), once it is
    known to read back."""
    try:
        from_arrays(to_arrays(model), path)
    except BackendError as exc:
        raise BackendError(
            f"The new model was not saved: it is not usable ({exc.message}) "
            "The previous model is unchanged."
        ) from None
    files.write_atomically(path, lambda f: write_npz(f, model), failure, unchanged)


def set_aside_damaged(model_dir: str) -> str:
    """Rename a model file that cannot be read beside itself, with the time in
    its name, so that training can make a new model and the damaged file is
    kept for whoever wants to look at it. Caller holds the lock. Returns
    the new name."""
    path = model_path(model_dir)
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
            f"moved aside to train a new one ({files.why(exc)})."
        ) from None
    return aside


def save_converted(model_dir: str, nfeatures: int | None) -> None:
    """Keep the moodlemlbackend model of `model_dir` (which `read` converts in
    memory) in our format, and move the old files aside (kept for a
    rollback, never deleted), so that the conversion happens once. It is
    converted again under the lock, from the files there now: another
    process may have converted it, or imported another model, meanwhile. In
    a directory this process may not write, the model stays converted in
    memory, on every use."""
    target_dir = classifier_dir(model_dir)
    if not os.access(target_dir, os.W_OK):
        log.warning(
            "%s is read-only: its moodlemlbackend model is converted in memory, on every use",
            target_dir,
        )
        return
    with writer_lock(model_dir):
        if os.path.lexists(model_path(model_dir)) or legacy.detect(target_dir) is None:
            return
        old = legacy.read(target_dir)
        save(model_dir, from_legacy(old, nfeatures))
        try:
            aside = legacy.move_aside(target_dir)
        except OSError as exc:
            # The new model is saved and is what read() reads from now on.
            log.warning(
                "converted %s, but its old files could not be moved aside (%s)",
                target_dir,
                files.why(exc),
            )
        else:
            log.warning(
                "converted the %s model in %s to mlbackend's format; the old files are kept in %s",
                old.fmt,
                target_dir,
                aside,
            )


def move_legacy_aside(model_dir: str) -> None:
    """Old-format files left in `classifier/` would be stale beside a newly
    saved model; they are moved aside like a converted model's, not deleted.
    Caller holds the lock."""
    target_dir = classifier_dir(model_dir)
    aside = legacy.move_aside(target_dir)
    if aside:
        log.warning("the moodlemlbackend files that were in %s are kept in %s", target_dir, aside)


def tidy(model_dir: str) -> None:
    """Remove a killed writer's temporary files, if no writer is at work.

    Writers remove them when they take the lock (`writer_lock`); a reading
    action calls this so that whichever call comes next tidies up. It never
    waits: while a writer holds the lock, the files may be its own, and are
    left to it. Nothing to do (the usual case) costs one directory listing.
    """
    target_dir = classifier_dir(model_dir)
    try:
        if not files.has_temporary(target_dir):
            return
    except OSError:
        return
    with locks.unless_busy(target_dir) as taken:
        if taken:
            files.remove_temporary(target_dir)


def delete_model(model_dir: str) -> bool:
    """Remove a model directory, in turn with its writers; True if it existed.

    The writer lock is taken first, so a training of this model that is
    running finishes (and is then deleted with the rest) instead of saving
    its result after the delete, and no training can start while the files
    go. The lock file goes with the directory; `locks.exclusive` notices
    that and waiters lock the new one.
    """
    if not os.path.isdir(model_dir):
        return False
    with writer_lock(model_dir):
        shutil.rmtree(model_dir, ignore_errors=True)
    # A writer that was waiting re-creates the directory for its own model.
    return True


def remove_tree(path: str) -> None:
    files.remove_tree(path)
