"""Files in and out of the server: zips checked before extraction, zips made.

An uploaded zip (Moodle's `/import`) and a zip read back from S3 are
untrusted: a crafted one could write outside its directory (absolute paths,
`..`), plant a symbolic link that a later write follows, expand to fill
the disk, or cost hours in small entries (10,000 entries 32 folders deep
are 320,000 directories). `safe_extract` reads the whole table of contents
first and refuses the archive, writing nothing, if any entry is suspect or
the total (of bytes, of path levels) is too big; then it writes each file
itself, counting bytes, instead of trusting `ZipFile.extractall`, and only
the entries its caller keeps (an import keeps what a model is made of).
Any zip that cannot be decoded (a damaged entry, a name flagged UTF-8 that
is not, a compression that fails) is refused with a sentence, never an
unexpected error.
"""

from __future__ import annotations

import bz2  # noqa: F401 - zipfile's bzip2 entries need it; imported here so the freeze has it
import errno
import io
import lzma
import os
import posixpath
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator

from mlbackend.contract import BackendError, shown

#: Entries a model or log archive could need; far more is an attack or a mistake.
MAX_ENTRIES = 10_000
#: Longest entry name, name part and deepest nesting accepted: a model or
#: log archive has a few levels of short names; longer ones cannot be
#: written on every file system (NAME_MAX is 255 bytes, PATH_MAX 4096).
MAX_NAME_CHARS = 1024
MAX_PART_BYTES = 255
MAX_DEPTH = 32
#: Path levels of all entries together, and distinct directories: what
#: extracting costs besides bytes (a directory made and removed per level).
#: A model's zip has a few entries a few levels deep.
MAX_LEVELS = 20_000
MAX_DIRECTORIES = 1_000
_CHUNK = 1 << 16

#: What reading a zip (its directory, an entry's header or data) raises when
#: the bytes are not what they claim: zipfile's own errors, and those of the
#: decoders and of the struct and text decoding under it. bz2 raises an
#: OSError without an error number. Never the server's fault: a 400.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # a compression method zipfile does not know
    RuntimeError,  # an entry encrypted in a way the flags did not say
    UnicodeDecodeError,  # a name flagged UTF-8 that is not
    ValueError,
    struct.error,
    OverflowError,
    IndexError,
    KeyError,
    MemoryError,
)
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, *DECODE_ERRORS)


class UnsafeZip(BackendError):
    """The archive is not one we extract; nothing was written."""


def check_zip(
    archive: zipfile.ZipFile,
    max_total_bytes: int,
    keep: Callable[[str], bool] | None = None,
) -> list[tuple[zipfile.ZipInfo, str]]:
    """The (entry, relative path) pairs to extract; raises `UnsafeZip` on any
    bad entry. Every entry is checked; only those `keep` accepts (all when
    None) are returned and count against `max_total_bytes`."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise UnsafeZip(
            f"The zip file has {len(infos)} entries; at most {MAX_ENTRIES} are accepted."
        )
    total = 0
    levels = 0
    out = []
    files: set[str] = set()
    dirs: set[str] = set()
    for info in infos:
        name = info.filename
        mode = (info.external_attr >> 16) & 0xFFFF
        if "\\" in name or "\0" in name:
            raise UnsafeZip(f"The zip entry {shown(name)} has a backslash or NUL in its name.")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise UnsafeZip(f"The zip entry {shown(name)} has an absolute path.")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if (
            len(name) > MAX_NAME_CHARS
            or len(parts) > MAX_DEPTH
            or any(len(p.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for p in parts)
        ):
            raise UnsafeZip(
                f"The zip entry {shown(name)} has a name too long or too deep "
                f"(at most {MAX_DEPTH} levels of {MAX_PART_BYTES} bytes)."
            )
        if ".." in parts:
            raise UnsafeZip(f"The zip entry {shown(name)} points outside the archive ('..').")
        levels += len(parts)
        if levels > MAX_LEVELS:
            raise UnsafeZip(
                f"The zip file's names have more than {MAX_LEVELS} folder levels in all "
                f"({len(infos)} entries); a model's zip has a few short paths."
            )
        # Unix zips keep the file type in the high bits (many tools leave it 0):
        # anything but a plain file or a directory (a link, a device) is refused.
        if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeZip(f"The zip entry {shown(name)} is a link or a special file.")
        if info.flag_bits & 0x1:
            raise UnsafeZip(f"The zip entry {shown(name)} is encrypted.")
        if not parts:
            continue
        rel = posixpath.join(*parts)
        parents = [posixpath.join(*parts[:i]) for i in range(1, len(parts))]
        # A name that is a file in one entry and a directory in another
        # cannot be extracted: refused before anything is written.
        if rel in files or (not info.is_dir() and rel in dirs) or any(p in files for p in parents):
            raise UnsafeZip(
                f"The zip entry {shown(name)} is both a file and a directory, or appears twice."
            )
        dirs.update(parents)
        if len(dirs) > MAX_DIRECTORIES:
            raise UnsafeZip(
                f"The zip file has more than {MAX_DIRECTORIES} folders; a model's zip has a few."
            )
        if info.is_dir():
            dirs.add(rel)
            continue
        files.add(rel)
        if keep is not None and not keep(rel):
            continue
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeZip(f"The zip file expands to more than {max_total_bytes} bytes.")
        out.append((info, rel))
    return out


def safe_extract(
    zip_path: str,
    dest_dir: str,
    max_total_bytes: int,
    keep: Callable[[str], bool] | None = None,
) -> list[str]:
    """Extract a checked archive into `dest_dir`; returns the relative paths
    written. `keep(relative path)`: which files to extract (all when None);
    the others are checked like every entry, and left in the zip."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except OSError as exc:
        raise UnsafeZip(f"The file is not a readable zip archive ({_reason(exc)}).") from None
    except DECODE_ERRORS as exc:
        raise UnsafeZip(f"The file is not a readable zip archive ({_reason(exc)}).") from None
    with archive:
        entries = check_zip(archive, max_total_bytes, keep)
        os.makedirs(dest_dir, exist_ok=True)
        root = os.path.realpath(dest_dir)
        written = []
        budget = max_total_bytes
        for info, rel in entries:
            target = os.path.realpath(os.path.join(root, rel))
            if os.path.commonpath([root, target]) != root:  # belt and braces
                raise UnsafeZip(f"The zip entry {shown(info.filename)} points outside the archive.")
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "xb") as dst:
                    for chunk in _entry_chunks(archive, info):
                        budget -= len(chunk)
                        if budget < 0:
                            raise UnsafeZip(
                                f"The zip file expands to more than {max_total_bytes} bytes."
                            )
                        dst.write(chunk)
            except FileExistsError:
                raise UnsafeZip(f"The zip entry {shown(info.filename)} appears twice.") from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise UnsafeZip(
                        "The zip file could not be extracted: the server's temporary disk is full."
                    ) from None
                raise UnsafeZip(
                    f"The zip entry {shown(info.filename)} cannot be extracted ({_reason(exc)})."
                ) from None
            written.append(rel)
    return written


def _entry_chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The entry's bytes, decompressed, a chunk at a time; any failure to
    decode them (or to read the archive: its errors are the upload's) is
    `UnsafeZip`, whatever raised it."""
    try:
        with archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                yield chunk
    except _READ_ERRORS as exc:
        raise UnsafeZip(
            f"The zip entry {shown(info.filename)} cannot be decoded: it is damaged or "
            f"compressed in a way that fails ({_reason(exc)})."
        ) from None


def _reason(exc: BaseException) -> str:
    """An exception as a short phrase for a message: its text, bounded, or its type."""
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return shown(text)[1:-1] if text else type(exc).__name__


def zip_directory(src_dir: str, skip: tuple[str, ...] = ()) -> bytes:
    """The files under `src_dir` (paths relative to it) as zip bytes.

    Only regular files are taken, never links; names starting with one of
    `skip` are left out (lock files, half-written temporary files).
    An absent directory gives an empty archive, which Moodle unpacks to
    nothing.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        if os.path.isdir(src_dir):
            for root, dirs, files in os.walk(src_dir):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if name.startswith(skip) or not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    archive.write(path, os.path.relpath(path, src_dir).replace(os.sep, "/"))
    return buf.getvalue()
