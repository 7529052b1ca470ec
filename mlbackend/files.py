"""Writing files so that a crash or a full disk never leaves half of one.

A file is written to a temporary file in its own directory, flushed to
disk, then renamed over the old one: a reader sees the old file or the new
one, never half of either. Temporary files start with `TEMP_PREFIX`, so
that whoever comes next can tell a killed writer's leftovers.

And reading or making files where someone else may have put something
first: `open_regular` opens a regular file and nothing else, without
blocking (a named pipe with no writer would block `open` for ever, a device
such as /dev/zero would never end) and, unless asked, without following a
symbolic link; `own_directory` makes sure a directory the program writes in
is a directory of its own, not a link to one elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from typing import IO, BinaryIO

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
    return WriteError(f"{failure} in {directory} ({why(exc)}). {unchanged}".rstrip())


def why(exc: OSError) -> str:
    """What went wrong, for a message: the system's words, or the library's
    when there is no error number (bz2 and shutil raise OSError with a text
    only, whose `strerror` is None)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return exc.strerror or str(exc) or type(exc).__name__


class NotRegularFile(OSError):
    """Something other than a regular file where one is read (a symbolic
    link not followed, a named pipe, a device, a directory); nothing was
    read from it. Its `strerror` says what it is, for a message."""


LINK = "a symbolic link"


def kind(mode: int) -> str:
    """What a file of this `st_mode` is, in words."""
    for test, words in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, LINK),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "a special file"


def open_regular(path: str, *, follow_links: bool = False) -> BinaryIO:
    """`path` opened for reading if it is a regular file; `NotRegularFile`
    (an OSError) otherwise, before a byte is read.

    It never blocks: the file is opened with O_NONBLOCK (a named pipe with
    no writer would block open() for ever) and checked with fstat before
    anything is read (a device would never end). A symbolic link is not
    followed unless `follow_links` (O_NOFOLLOW; directories above the last
    name are the caller's to check)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_links:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise NotRegularFile(
                errno.ELOOP, "it is a symbolic link, which is not followed", path
            ) from None
        if exc.errno == errno.ENXIO:  # a socket, or a device without its driver
            raise NotRegularFile(errno.ENXIO, "it is not a regular file", path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"it is {kind(mode)}, not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_at_most(path: str, limit: int, *, follow_links: bool = False) -> bytes | None:
    """The bytes of the regular file at `path`, or None when it holds more
    than `limit`: never more than limit + 1 bytes are read, so a huge file
    costs nothing. OSError (`NotRegularFile` included) passes through:
    callers word it for their kind of file."""
    with open_regular(path, follow_links=follow_links) as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def own_directory(path: str) -> None:
    """Create `path` (and its parents) if missing, and make sure it is a
    directory of its own: a symbolic link there (to /etc, say) would make
    every file written in it land elsewhere, so it is refused, as is
    anything but a directory. For the directories the program makes inside
    the ones Moodle names (`classifier/`, `logs/`)."""
    try:
        found = not_a_directory(path)
    except FileNotFoundError:
        makedirs(path)
        found = not_a_directory(path)
    if found == LINK:
        raise BackendError(
            f"{path} is a symbolic link; the program does not write through links. "
            "Remove it: the program makes a plain directory there."
        )
    if found:
        raise BackendError(f"{path} is {found}, not a directory.")


def not_a_directory(path: str) -> str | None:
    """What `path` is instead of a directory of its own (`LINK` for a
    symbolic link, even to a directory), or None when it is one. OSError
    (FileNotFoundError included) passes through."""
    mode = os.lstat(path).st_mode
    return None if stat.S_ISDIR(mode) else kind(mode)


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
        raise BackendError(f"The directory {path} cannot be created ({why(exc)}).") from None


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
