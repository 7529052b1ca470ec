"""Writing files so that a crash or a full disk never leaves half of one.

A file is written to a temporary file in its own directory, flushed to
disk, then renamed over the old one: a reader sees the old file or the new
one, never half of either. Temporary files start with `TEMP_PREFIX`, so
that whoever comes next can tell a killed writer's leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from typing import IO

from mlbackend.contract import BackendError, WriteError

TEMP_PREFIX = ".tmp-"


def write_atomically(
    target: str, write: Callable[[IO[bytes]], None], failure: str, unchanged: str
) -> None:
    """Write `target` with `write(file)` through a temporary file in its
    directory, fsynced, then renamed: a crash or a full disk leaves the old
    file (or none) and no temporary file behind. `failure` and `unchanged`
    make the message of a `WriteError`."""
    target_dir = os.path.dirname(target)
    try:
        os.makedirs(target_dir, exist_ok=True)
        fd, tmp = new_file(target_dir, os.path.splitext(target)[1])
    except OSError as exc:
        raise write_error(exc, failure, target_dir, unchanged) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target_dir)
    except OSError as exc:
        remove_quietly(tmp)
        raise write_error(exc, failure, target_dir, unchanged) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def write_error(exc: OSError, failure: str, directory: str, unchanged: str) -> WriteError:
    why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
    return WriteError(f"{failure} in {directory} ({why}). {unchanged}".rstrip())


def new_file(directory: str, suffix: str) -> tuple[int, str]:
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


def remove_temporary(directory: str) -> None:
    """Remove the temporary files (and directories) in `directory`."""
    for name in os.listdir(directory):
        if name.startswith(TEMP_PREFIX):
            remove_quietly(os.path.join(directory, name))


def has_temporary(directory: str) -> bool:
    return any(name.startswith(TEMP_PREFIX) for name in os.listdir(directory))


def makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"The directory {path} cannot be created ({exc.strerror}).") from None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_quietly(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
