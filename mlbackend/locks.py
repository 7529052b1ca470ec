"""Exclusive locks on a directory, shared between processes (`flock` on a
lock file in it), for the writers of a model.

Two pitfalls are handled here once: a directory deleted (lock file and all)
while someone waited for its lock, and a thread taking a lock it already
holds (flock would deadlock on a second open of the lock file). And the
lock is never taken through a symbolic link, the directory's or the lock
file's: whoever can write the directory must not make us create or lock a
file elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from typing import BinaryIO

from mlbackend.contract import BackendError
from mlbackend.files import kind, own_directory

LOCK_FILE = ".lock"

_held = threading.local()


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[bool]:
    """Hold the exclusive lock of `directory` (created if missing), waiting
    for it. Re-entrant within a thread; yields True when this call took the
    lock, False when the thread held it already. A directory that is a
    symbolic link is refused (`files.own_directory`)."""
    own_directory(directory)
    key = os.path.realpath(directory)
    held: set[str] = _held.__dict__.setdefault("dirs", set())
    if key in held:
        yield False
        return
    with _locked_file(directory) as lock:
        held.add(key)
        try:
            yield True
        finally:
            held.discard(key)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def unless_busy(directory: str) -> Iterator[bool]:
    """The lock of an existing `directory` if nobody holds it (in this process
    too: flock is per open), without waiting: yields whether it was taken.
    Never creates anything but the lock file."""
    try:
        lock = _open_lock(directory)
    except (OSError, BackendError):  # no directory, read-only, a link: nothing we may do
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except OSError:
            taken = False
        if not taken:
            yield False
            return
        try:
            yield _is_current(lock, os.path.join(directory, LOCK_FILE))  # not deleted meanwhile
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _locked_file(directory: str) -> Iterator[BinaryIO]:
    """The lock file of `directory`, opened and flock'ed exclusively.

    A writer may remove the directory, lock file included, while it holds
    the lock (`store.delete_model`). One that was waiting on that file then
    holds a lock on a file nobody else will ever open, while a newcomer locks
    a new file at the same path: both would write at once. So, once the lock
    is ours, the file must still be the one at the path; if not, start again.
    """
    path = os.path.join(directory, LOCK_FILE)
    while True:
        own_directory(directory)
        try:
            lock = _open_lock(directory)
        except FileNotFoundError:  # the directory was removed in between
            continue
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if _is_current(lock, path):
                yield lock
                return
        finally:
            lock.close()


def _is_current(lock: BinaryIO, path: str) -> bool:
    """Whether the open lock file is still the one at `path` (see `_locked_file`)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(lock.fileno())
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


def _open_lock(directory: str) -> BinaryIO:
    """The lock file, never through a symbolic link (the directory's or its
    own) and never anything but a regular file (opened without blocking)."""
    if os.path.islink(directory):
        raise BackendError(
            f"{directory} is a symbolic link; the program does not write through links. "
            "Remove it: the program makes a plain directory there."
        )
    path = os.path.join(directory, LOCK_FILE)
    try:
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BackendError(
                f"The lock file {path} is a symbolic link; it is not followed. "
                "Remove it (the program makes a plain file)."
            ) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BackendError(
            f"The lock file {path} is {kind(mode)}, not a regular file. "
            "Remove it (the program makes a plain file)."
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a+b")
