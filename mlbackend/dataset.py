"""Reading and validating Moodle dataset files.

This is the only place that parses CSV. Everything past `read_training` and
`read_prediction` can trust the arrays it gets: the right shape, finite
numbers, labels from `targetclasses`. Every problem becomes a `BackendError`
that names the line (1-based, as an editor shows it) and the column.

The reader streams the file in blocks of lines and parses each block with
NumPy's C parser, so memory holds one block of text beside the float32
result, and a 30 MB file parses in about a second.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from mlbackend import files
from mlbackend.contract import BackendError

#: Bytes of text parsed at once; bounds the memory the text takes.
BLOCK_BYTES = 1 << 20
#: Longest line accepted. Real lines are at most tens of KB (the column names
#: of 450 indicators); a line is held whole in memory, so this bounds what a
#: file that is one enormous line can make us allocate.
MAX_LINE_BYTES = 4 << 20
#: Most features accepted. Real datasets have 2 to about 450; training
#: allocates per feature whatever the number of rows (a small dataset is
#: tiled to 2048 rows), so a short file declaring a million would take GBs.
MAX_FEATURES = 10_000
#: Widest rows decoded with TensorFlow (see `_tf_numbers`); real ones have 2 to ~450.
TF_MAX_COLUMNS = 2048
#: Training files smaller than this are decoded by NumPy even for callers
#: that load TensorFlow: as quick there (site-a's 1.3 MB: 0.15 s either way;
#: site-b's 11.7 MB: 1.2 s against 0.5 s), and TensorFlow's tensor per column
#: and decoder kernels would add 10-15 MB to a small training's peak memory
#: (issue 23). By the file, not by the block of lines that is decoded.
TF_MIN_BYTES = 4 << 20

_F32_MAX = float(np.finfo(np.float32).max)

#: Largest class value in targetclasses. Moodle's classes are small whole
#: numbers (0, 1, 2...), and training sizes a lookup table by the largest one.
MAX_CLASS = 1_000_000


@dataclass
class Dataset:
    """A validated Moodle dataset: features as float32, labels as class values."""

    path: str
    nfeatures: int
    classes: list[int]
    feature_names: list[str]
    X: np.ndarray
    y: np.ndarray | None = None  # training files: class value per row
    sample_ids: list[str] = field(default_factory=list)  # prediction files

    @property
    def labels(self) -> np.ndarray:
        """The class value of every row: training files only."""
        if self.y is None:
            raise ValueError(f"{self.path} is a prediction file: it has no labels")
        return self.y

    @property
    def nrows(self) -> int:
        return int(self.X.shape[0])


def read_training(path: str, tensorflow: bool = False) -> Dataset:
    """A training file: features then the label in every row.

    `tensorflow=True` converts the numbers of a large file (TF_MIN_BYTES)
    with TensorFlow's CSV decoder, twice NumPy's speed, for callers that
    load TensorFlow anyway (training, evaluation). Validation is the same.
    """
    large = tensorflow and _size(path) >= TF_MIN_BYTES
    return _read(path, training=True, numbers=_tf_numbers if large else _numpy_numbers)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # `_read` says what is wrong with the path


def read_prediction(path: str) -> Dataset:
    """A prediction file: the sample id then the features in every row."""
    return _read(path, training=False, numbers=_numpy_numbers)


# --------------------------------------------------------------------------
# Internals


def _fail(message: str, line: int | None = None) -> BackendError:
    where = f"Line {line} of the dataset: " if line is not None else ""
    return BackendError(where + message)


def _show(value: object, limit: int = 40) -> str:
    """A value from the file for a message (strings quoted), cut when long so
    that a hostile file cannot make the answer huge."""
    text = value if isinstance(value, str) else str(value)
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return repr(cut) if isinstance(value, str) else cut


def _open(path: str) -> BinaryIO:
    """The dataset, if it is a regular file: a named pipe or a device (whose
    reading would block or never end) is refused before a byte is read. A
    link to a file is followed: Moodle names the dataset."""
    try:
        return files.open_regular(path, follow_links=True)
    except FileNotFoundError:
        raise _fail(f"The dataset file {path} does not exist.") from None
    except PermissionError:
        raise _fail(f"The dataset file {path} cannot be read (permission denied).") from None
    except files.NotRegularFile as exc:
        if os.path.isdir(path):
            raise _fail(f"The dataset {path} is a directory, not a CSV file.") from None
        raise _fail(
            f"The dataset {path} is not a file that can be read ({files.why(exc)}); "
            "Moodle writes its datasets as files."
        ) from None
    except OSError as exc:
        raise _fail(f"The dataset file {path} cannot be read ({files.why(exc)}).") from None


#: Line ends other than LF and CRLF, which Moodle's files do not have, by
#: what a person would call them.
_ODD_LINE_ENDS = (
    ("\r", "a carriage return alone (\\r, as classic Mac OS wrote)"),
    ("\u2028", "the Unicode line separator U+2028"),
    ("\u2029", "the Unicode paragraph separator U+2029"),
    ("\x85", "the next-line character U+0085"),
    ("\x0b", "a vertical tab"),
    ("\x0c", "a form feed"),
)


def _odd_line_ends(text: str) -> str | None:
    """What separates the lines of `text` (the first ones of a file) when it
    is not LF or CRLF, in words; None when nothing odd is there."""
    for char, words in _ODD_LINE_ENDS:
        if char in text:
            return words
    return None


def _line_ends_error(text: str, line: int) -> BackendError | None:
    odd = _odd_line_ends(text)
    if odd is None:
        return None
    return _fail(
        f"the lines seem to end with {odd}; a Moodle dataset's lines end with a "
        "line feed (\\n, or \\r\\n as Windows writes them). Save the file with those line "
        "ends.",
        line,
    )


def _lines(f: BinaryIO) -> Iterator[tuple[int, list[str]]]:
    """Yield (number of the first line, decoded lines) in blocks of about
    `BLOCK_BYTES`. Lines end at \\n; a \\r before it is dropped. A line is
    refused once it is longer than `MAX_LINE_BYTES`, before it is read whole."""
    lineno = 1
    pending = bytearray()  # the start of a line that goes on in the next chunk
    first = True
    while True:
        chunk = f.read(BLOCK_BYTES)
        if first:
            chunk = chunk[3:] if chunk.startswith(b"\xef\xbb\xbf") else chunk
            first = False
        if not chunk:
            if pending:  # the last line, without a line end
                yield lineno, _decode(bytes(pending), lineno)
            return
        end = chunk.rfind(b"\n") + 1
        if not end:
            pending += chunk
            if len(pending) > MAX_LINE_BYTES:
                odd = _line_ends_error(pending[:BLOCK_BYTES].decode("utf-8", "replace"), lineno)
                if odd is not None:
                    raise odd
                raise _fail(
                    f"the line is longer than {MAX_LINE_BYTES >> 20} MiB; a Moodle "
                    "dataset's lines are far shorter. Is this a Moodle analytics "
                    "dataset?",
                    lineno,
                )
            continue
        blob = bytes(pending) + chunk[:end] if pending else chunk[:end]
        pending = bytearray(chunk[end:])
        yield lineno, _decode(blob, lineno)
        lineno += blob.count(b"\n")


def _decode(blob: bytes, lineno: int) -> list[str]:
    """The lines of `blob` (whole lines, the first being line `lineno`)."""
    nul = blob.find(b"\x00")
    if nul >= 0:
        raise _fail(
            "the file holds binary data (a NUL byte); a dataset must be a UTF-8 CSV text file.",
            lineno + blob.count(b"\n", 0, nul),
        )
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            "the text is not valid UTF-8; a dataset must be a UTF-8 CSV text file.",
            lineno + blob.count(b"\n", 0, exc.start),
        ) from None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if "\r" in text:
        lines = [line.rstrip("\r") for line in lines]
    return lines


def _csv_row(text: str, line: int) -> list[str]:
    try:
        rows = list(csv.reader([text]))
    except csv.Error as exc:
        raise _line_ends_error(text, line) or _fail(
            f"the CSV is malformed ({exc}).", line
        ) from None
    return rows[0] if rows else []


def _parse_header(
    names: list[str], values: list[str], colnames: list[str], training: bool
) -> tuple[int, list[int], list[str]]:
    names = [n.strip() for n in names]
    if "nfeatures" not in names:
        # Nothing of the line is quoted: a file that is not a dataset (a
        # mistyped path, /etc/shadow run as root) must not be echoed.
        raise _fail(
            "the first line must name the metadata (nfeatures, targetclasses, "
            "targettype, ...) but it does not. Is this a Moodle analytics dataset?",
            1,
        )
    if len(values) != len(names):
        raise _fail(
            f"the metadata names {len(names)} fields on line 1 but gives {len(values)} values.", 2
        )
    meta = dict(zip(names, (v.strip() for v in values)))
    # ASCII digits only: int() also takes other scripts' digits ('\u0663' is 3).
    negative = meta["nfeatures"].startswith("-")
    text = meta["nfeatures"][negative:]
    if not (text.isascii() and text.isdigit()):
        raise _fail(f"nfeatures must be a whole number, not {_show(meta['nfeatures'])}.", 2)
    if len(text) > 12:  # not parsed: a 5,000-digit number is no feature count
        raise _fail(
            f"nfeatures is {_show(text)}; at most {MAX_FEATURES} features are "
            "accepted (Moodle's datasets have a few hundred).",
            2,
        )
    nfeatures = -int(text) if negative else int(text)
    if nfeatures < 1:
        raise _fail(f"nfeatures must be at least 1, not {_show(nfeatures)}.", 2)
    if nfeatures > MAX_FEATURES:
        raise _fail(
            f"nfeatures is {_show(nfeatures)}; at most {MAX_FEATURES} features are "
            "accepted (Moodle's datasets have a few hundred).",
            2,
        )
    if meta.get("targettype", "discrete") not in ("discrete", ""):
        raise _fail(
            f"targettype {_show(meta['targettype'])} is not supported; this backend "
            "trains classifiers (targettype discrete).",
            2,
        )
    if "targetclasses" not in meta:
        raise _fail('the metadata lacks targetclasses (the list of classes, e.g. "[0,1]").', 1)
    classes = _parse_classes(meta["targetclasses"])
    expected = nfeatures + 1
    if len(colnames) not in (expected, nfeatures) or (training and len(colnames) != expected):
        what = (
            "the features then the target column"
            if training
            else "the sample id column then the features"
        )
        raise _fail(
            f"nfeatures is {_show(nfeatures)}, so line 3 must name {what} "
            f"({_show(expected)} columns), but it names {len(colnames)}.",
            3,
        )
    features = colnames[:nfeatures] if training else colnames[-nfeatures:]
    return nfeatures, classes, features


def _parse_classes(text: str) -> list[int]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value:
        raise _fail(f'targetclasses must be a JSON list such as "[0,1]", not {_show(text)}.', 2)
    classes = []
    for c in value:
        # NaN and 1e400 (inf) are valid JSON to Python; neither is a class.
        if (
            isinstance(c, bool)
            or not isinstance(c, (int, float))
            or not math.isfinite(c)
            or int(c) != c
        ):
            raise _fail(f"targetclasses must list whole numbers, but it holds {_show(c)}.", 2)
        if not 0 <= c <= MAX_CLASS:
            raise _fail(
                f"targetclasses must list whole numbers from 0 to {MAX_CLASS}, but it "
                f"holds {_show(c)}.",
                2,
            )
        classes.append(int(c))
    if len(set(classes)) != len(classes):
        raise _fail(f"targetclasses lists a class twice: {_show(text)}.", 2)
    if len(classes) < 2:
        raise _fail(f"targetclasses must list at least two classes, not {_show(text)}.", 2)
    return classes


def _split_block(
    lines: list[str], first_line: int, ncols: int
) -> tuple[list[int], list[list[str]] | list[str]]:
    """Drop blank lines and check every row has `ncols` cells.

    Returns the line numbers kept and either the lines (no quoting: fast path)
    or the rows already split by the csv module (quoted cells).
    """
    numbers = [first_line + i for i, line in enumerate(lines) if line.strip()]
    kept = [line for line in lines if line.strip()]
    if any('"' in line for line in kept):
        rows = [_csv_row(line, n) for line, n in zip(kept, numbers)]
        for row, text, n in zip(rows, kept, numbers):
            if len(row) != ncols:
                raise _ragged(len(row), ncols, n, text)
        return numbers, rows
    for line, n in zip(kept, numbers):
        if line.count(",") != ncols - 1:
            raise _ragged(line.count(",") + 1, ncols, n, line)
    return numbers, kept


def _ragged(found: int, ncols: int, line: int, text: str) -> BackendError:
    odd = _line_ends_error(text, line)  # two rows run together: odd line ends
    if odd is not None:
        return odd
    return _fail(
        f"the row has {found} cells but every data row must have {ncols} (nfeatures + 1).", line
    )


Numbers = Callable[[list[str], int], "np.ndarray | None"]


def _numpy_numbers(lines: list[str], ncols: int) -> np.ndarray | None:
    """Rows of numbers through NumPy's C parser; None when a cell is not a number."""
    if ncols == 0:
        return np.zeros((len(lines), 0), dtype=np.float64)
    s = "\n" + "\n".join(lines) + "\n"
    # An empty cell is a missing value, which Moodle means as 0.
    s = s.replace(",,", ",0,").replace(",,", ",0,").replace("\n,", "\n0,").replace(",\n", ",0\n")
    if ncols == 1:
        s = s.replace("\n\n", "\n0\n").replace("\n\n", "\n0\n")
    try:
        arr = np.loadtxt(
            io.StringIO(s), delimiter=",", dtype=np.float64, ndmin=2, comments=None, quotechar=None
        )
    except ValueError:
        return None
    return arr if arr.shape == (len(lines), ncols) else None


def _tf_numbers(lines: list[str], ncols: int) -> np.ndarray | None:
    """The same with `tf.io.decode_csv`, whose defaults make empty cells 0.

    Its cost grows faster than the number of columns (a tensor per column):
    past `TF_MAX_COLUMNS` NumPy's parser is faster, and a file of a million
    columns would take TensorFlow minutes.
    """
    if ncols == 0 or ncols > TF_MAX_COLUMNS:
        return _numpy_numbers(lines, ncols)
    from mlbackend.tf import import_tensorflow

    tf = import_tensorflow()
    try:
        cols = tf.io.decode_csv(lines, record_defaults=[tf.constant(0.0, tf.float64)] * ncols)
    except (tf.errors.InvalidArgumentError, ValueError):
        return None
    return tf.stack(cols, axis=1).numpy()


def _locate_bad_cell(
    rows: list[list[str]], numbers: list[int], names: list[str], col_offset: int
) -> BackendError:
    for row, n in zip(rows, numbers):
        for j, cell in enumerate(row):
            v = _cell_number(cell)
            if v is None:
                return _fail(
                    f"column {j + 1 + col_offset} ({_name(names, j)}) holds "
                    f"{_show(cell)}, which is not a number.",
                    n,
                )
            if not abs(v) <= _F32_MAX:
                text = cell.strip().lstrip("+-").lower()
                if text.startswith(("inf", "nan")):
                    why = "values must be finite numbers, not infinity or NaN"
                else:  # finite, or a decimal too long for a 64-bit float
                    why = (
                        "it is too large: values must be between -3.4e38 and 3.4e38 "
                        "(32-bit floating-point numbers)"
                    )
                return _fail(
                    f"column {j + 1 + col_offset} ({_name(names, j)}) holds {_show(cell)}; {why}.",
                    n,
                )
    return _fail("a cell is not a number.", numbers[0] if numbers else None)


def _plain(lines: list[str]) -> bool:
    """Whether a block can go to the decoders: ASCII, and none of what Python's
    float() or strtod() take but the other decoder refuses (hex, '_' digit
    separators). Otherwise its cells are checked one by one."""
    text = "\n".join(lines)
    return text.isascii() and "_" not in text and "x" not in text and "X" not in text


def _cell_number(cell: str) -> float | None:
    """One cell as both decoders read it: empty is 0, else a plain ASCII number
    (spaces around it allowed; spaces alone are not a number)."""
    if not cell:
        return 0.0
    c = cell.strip()
    if not c:
        return None
    if not cell.isascii() or "_" in c or "x" in c or "X" in c:
        return None
    try:
        return float(c)
    except ValueError:
        return None


def _name(names: list[str], j: int) -> str:
    if j >= len(names):
        return f"column {j + 1}"
    return names[j] if len(names[j]) <= 40 else names[j][:40] + "..."


def _parse_block(
    line_numbers: list[int],
    block: list[str] | list[list[str]],
    ncols: int,
    training: bool,
    feature_names: list[str],
    classes: list[int],
    numbers: Numbers,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    nfeat = ncols - 1
    if block and isinstance(block[0], list):
        rows = block  # already split (quoted cells)
    else:
        rows = None
    ids: list[str] = []
    if training:
        lines = block if rows is None else [",".join(r) for r in rows]
        names = feature_names + ["target"]
        col_offset = 0
    else:
        if rows is None:
            pairs = [line.split(",", 1) for line in block]  # type: ignore[union-attr]
            ids = [p[0].strip() for p in pairs]
            lines = [p[1] if len(p) > 1 else "" for p in pairs]
        else:
            ids = [r[0].strip() for r in rows]
            lines = [",".join(r[1:]) for r in rows]
        names = list(feature_names)
        col_offset = 1
    arr = None
    if _plain(lines):  # type: ignore[arg-type]
        arr = numbers(lines, ncols if training else nfeat)  # type: ignore[arg-type]
    if arr is not None and not np.all(np.abs(arr) <= _F32_MAX):
        arr = None
    if arr is None:
        split = rows if rows is not None else [line.split(",") for line in block]  # type: ignore
        if not training:
            split = [r[1:] for r in split]
        raise _locate_bad_cell(split, line_numbers, names, col_offset)
    if training:
        labels = arr[:, -1]
        X = arr[:, :-1].astype(np.float32)
        allowed = np.array(classes, dtype=np.float64)
        ok = np.isin(labels, allowed)
        if not ok.all():
            i = int(np.argmin(ok))
            raise _fail(
                f"the label {labels[i]:g} in the last column is not one of the "
                f"targetclasses {_show(classes, 80)}.",
                line_numbers[i],
            )
        return X, labels.astype(np.int64), ids
    for i, sid in enumerate(ids):
        if not sid:
            raise _fail("the first cell (the sample id) is empty.", line_numbers[i])
    return arr.astype(np.float32), None, ids


def _read(path: str, training: bool, numbers: Numbers) -> Dataset:
    with _open(path) as f:
        blocks = _lines(f)
        header: list[str] = []
        rest: tuple[int, list[str]] | None = None
        for first, lines in blocks:
            take = 3 - len(header)
            header.extend(lines[:take])
            if len(header) == 3:
                rest = (first + take, lines[take:])
                break
        if not header or (len(header) == 1 and not header[0].strip()):
            raise _fail(f"The dataset file {path} is empty.")
        for i, line in enumerate(header):  # a CR inside a line: not LF line ends
            odd = _line_ends_error(line, i + 1)
            if odd is not None:
                raise odd
        if len(header) < 3:
            raise _fail(
                "the file ends before the data: a Moodle dataset has metadata names, "
                "metadata values and column names on its first three lines.",
                len(header) + 1,
            )
        names = _csv_row(header[0], 1)
        values = _csv_row(header[1], 2)
        colnames = [c.strip() for c in _csv_row(header[2], 3)]
        nfeatures, classes, feature_names = _parse_header(names, values, colnames, training)
        ncols = nfeatures + 1
        file_size = os.fstat(f.fileno()).st_size
        X_rows = _Rows(nfeatures, np.float32)
        y_rows = _Rows(0, np.int64)
        ids: list[str] = []
        for first, lines in _chain(rest, blocks):
            line_numbers, block = _split_block(lines, first, ncols)
            if not line_numbers:
                continue
            X, y, sid = _parse_block(
                line_numbers, block, ncols, training, feature_names, classes, numbers
            )
            if X_rows.n == 0:
                # Size the result from the first block: rows ~ bytes / bytes per row,
                # measured on the data rows (blank lines are not rows). A row has
                # at least ncols bytes (its commas and line end), so the array is
                # at most about 4 times the rest of the file, whatever it holds.
                kept = [lines[n - first] for n in line_numbers]
                per_row = max(ncols, sum(len(line) + 1 for line in kept) // len(kept))
                X_rows.reserve(len(X) + (file_size - f.tell()) // per_row + 16)
            X_rows.add(X)
            if y is not None:
                y_rows.reserve(X_rows.capacity)
                y_rows.add(y)
            ids.extend(sid)
    if X_rows.n == 0:
        raise _fail(f"The dataset file {path} has no data rows after its three header lines.")
    return Dataset(
        path=path,
        nfeatures=nfeatures,
        classes=classes,
        feature_names=feature_names,
        X=X_rows.result(),
        y=y_rows.result() if training else None,
        sample_ids=ids,
    )


class _Rows:
    """A growing array of rows, allocated once at the estimated final size:
    appending blocks and concatenating them at the end would hold the data
    twice (3.2 GB for a million rows of 400 features)."""

    def __init__(self, width: int, dtype: type) -> None:
        self.width = width
        self.buf: np.ndarray = np.empty((0, width) if width else 0, dtype=dtype)
        self.n = 0

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def reserve(self, rows: int) -> None:
        if rows > len(self.buf):
            grown = np.empty((rows, self.width) if self.width else rows, dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown

    def add(self, block: np.ndarray) -> None:
        if self.n + len(block) > len(self.buf):
            self.reserve(max(self.n + len(block), int(len(self.buf) * 1.25)))
        self.buf[self.n : self.n + len(block)] = block
        self.n += len(block)

    def result(self) -> np.ndarray:
        if self.n < len(self.buf):
            # Shrinks in place (realloc): nothing else refers to the buffer.
            self.buf.resize((self.n, self.width) if self.width else self.n, refcheck=False)
        return self.buf


def _chain(
    first: tuple[int, list[str]] | None, rest: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, list[str]]]:
    if first is not None:
        yield first
    yield from rest
