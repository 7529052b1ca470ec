"""Hostile inputs for the property-based tests (hypothesis), and the checks
every answer to them must pass.

`datasets()` bends Moodle's CSV in every way a broken export, a wrong file or
an attacker could: declared sizes that lie, NaN/inf/1e308 cells, BOMs, CRLF
and stray CR, quoted commas, non-UTF-8 bytes, NULs, truncation, blank lines.
Most examples stay close to a real dataset, so that they get past the first
checks and reach the deeper ones.

How many examples run: `make test` runs a few of each, the same ones every
time; `make fuzz` (MLBACKEND_FUZZ=1) runs thousands with fresh seeds. The
profiles are registered in conftest.py; `examples(quick, fuzz)` picks the
count for one test.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

FUZZ = os.environ.get("MLBACKEND_FUZZ", "") not in ("", "0")


def examples(quick: int, fuzz: int) -> int:
    """`quick` examples under `make test`, `fuzz` under `make fuzz`."""
    return fuzz if FUZZ else quick


# --------------------------------------------------------------------------
# Cells, lines, files

GOOD_CELLS = st.sampled_from(
    ["0", "1", "-1", "0.5", "-0.25", "", "0.33", "1.0", ".5", "+1", " 1 ", "1e-3", "-0", '"0.5"']
)
HOSTILE_CELLS = st.sampled_from(
    [
        "nan",
        "NaN",
        "-nan",
        "inf",
        "-inf",
        "Infinity",
        "1e308",
        "-1e308",
        "3.4e38",
        "-3.4e38",
        "3.5e38",
        "1e39",
        "1e-320",
        "1e999",
        "1" * 400,
        '"1,5"',
        '""',
        '"',
        '"a""b"',
        "abc",
        "0x10",
        "1_0",
        "\u0661\u0662",
        "\u00a0",
        "1e",
        "--1",
        "\t0\t",
        "0,",
        "TRUE",
        "\ufeff1",
        "1\r",
        "\u2028",
        "\u00e9",
    ]
)
CELLS = st.one_of(GOOD_CELLS, HOSTILE_CELLS, st.text(max_size=6))

GOOD_CLASSES = st.sampled_from(['"[0,1]"', '"[0,1,2]"', '"[1,0]"', '"[0, 1]"'])
HOSTILE_CLASSES = st.sampled_from(
    [
        "[0,1]",
        '"[NaN,1]"',
        '"[1e400,0]"',
        '"[-1,0]"',
        '"[0,1000000000000]"',
        '"[]"',
        '"[0,0]"',
        '"[true,false]"',
        '"{}"',
        '"[0.5,1]"',
        '"[0,1.0]"',
        '"[1]"',
        '""',
        '"[0, 1"',
        '"[[0],[1]]"',
        '"[""0"",1]"',
        '"null"',
        '"[0,' + "9" * 5000 + ']"',
        '"[' + ",".join(map(str, range(300))) + ']"',
    ]
)
HOSTILE_NFEATURES = st.sampled_from(
    [
        "0",
        "-1",
        "10000000000",
        "99999999999999999999999",
        "1e3",
        "",
        "x",
        "3.0",
        " 2 ",
        "9" * 5000,
        "\u0663",
        "2 2",
    ]
)
HOSTILE_NEWLINES = st.sampled_from(["\r", "\u2028", "\n\n", "\r\r\n", "\x85", "\n\n\n\n"])
INSERTS = st.sampled_from(
    [
        b"\xff",
        b"\x00",
        b"\xc3",
        b"\xef\xbb\xbf",
        b"\r",
        b'"',
        b",",
        b"\n",
        b"\n" * 50,
        b",,,,,,,,",
        b"\xe2\x80\xa8",
        b"\x85",
    ]
)


DAMAGE = [
    "nfeatures",
    "classes",
    "metadata",
    "cells",
    "ids",
    "labels",
    "ragged",
    "line ends",
    "bytes",
    "cut",
]


@st.composite
def datasets(
    draw: Any,
    features: st.SearchStrategy[int] = st.integers(1, 4),
    predictions: st.SearchStrategy[bool] = st.booleans(),
) -> bytes:
    """A Moodle dataset file, training- or prediction-shaped, bent at random.

    Each file gets zero, one or two kinds of damage (`DAMAGE`), so that many
    are valid or wrong in one way only, and get past the first checks.
    """
    damage = set(
        draw(st.lists(st.sampled_from(DAMAGE), max_size=draw(st.sampled_from([0, 0, 0, 1, 1, 2]))))
    )

    def some(kind: str) -> bool:  # this kind of damage, here?
        return kind in damage and draw(st.booleans())

    nfeatures = draw(features)
    prediction = draw(predictions)
    declared = draw(HOSTILE_NFEATURES) if "nfeatures" in damage else str(nfeatures)
    classes = draw(HOSTILE_CLASSES if "classes" in damage else GOOD_CLASSES)
    meta = [
        ("nfeatures", declared),
        ("targetclasses", classes),
        ("targettype", "discrete"),
        ("timesplitting", '"\\core\\analytics\\time_splitting\\upcoming_week"'),
    ]
    if some("metadata"):
        meta += draw(
            st.lists(
                st.sampled_from(
                    [
                        ("moodleversion", "4.5"),
                        ("other", "x"),
                        ("targettype", "linear"),
                        ("nfeatures", "2"),
                        ("targetclasses", '"[0,1,2,3]"'),
                    ]
                ),
                min_size=1,
                max_size=2,
            )
        )
    meta = draw(st.permutations(meta))
    if some("metadata"):
        meta.pop(draw(st.integers(0, len(meta) - 1)))
    try:
        labels = json.loads(classes[1:-1].replace('""', '"') if classes[:1] == '"' else classes)
    except ValueError:
        labels = None
    labels = [str(c) for c in labels] if isinstance(labels, list) and labels else ["0", "1"]
    header = (
        ["sampleid"] * prediction
        + [f"f{i}" for i in range(nfeatures)]
        + ["target"] * (not prediction)
    )
    lines = [",".join(m[0] for m in meta), ",".join(m[1] for m in meta), ",".join(header)]
    for _ in range(draw(st.integers(1, 8))):
        cells = draw(
            st.lists(CELLS if some("cells") else GOOD_CELLS, min_size=nfeatures, max_size=nfeatures)
        )
        if prediction:
            ids = ["", '"a,b"', "x" * 50, "\u00e9"] if some("ids") else ["s1", "123-4", "7"]
            cells.insert(0, draw(st.sampled_from(ids)))
        else:
            cells.append(draw(CELLS if some("labels") else st.sampled_from(labels)))
        if some("ragged"):
            cells = cells[:-1] if draw(st.booleans()) else cells + ["0"]
        lines.append(",".join(cells))
    line_end = draw(st.sampled_from(["\n", "\r\n"]))
    text = "".join(
        line + (draw(HOSTILE_NEWLINES) if some("line ends") else line_end) for line in lines
    )
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if "bytes" in damage:  # stray bytes anywhere
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(INSERTS) + data[at:]
    if "cut" in damage:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def any_bytes() -> st.SearchStrategy[bytes]:
    """Bytes with no structure at all, alone or after a valid header."""
    head = b'nfeatures,targetclasses,targettype\n2,"[0,1]",discrete\nf1,f2,target\n'
    return st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: head + b))


def deflated_npz(path: Path, name: str, megabytes: int) -> None:
    """An .npz whose one member declares `megabytes` MiB of zeros: a few
    hundred KB on disk, deflated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (megabytes << 18,)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(zeros)


# --------------------------------------------------------------------------
# What every answer must be


def check_answer(rc: int, stdout: str, stderr: str, allowed: tuple[int, ...]) -> dict[str, Any]:
    """The contract: the last stdout line is a JSON object whose status is the
    exit code, with an `info` list of strings; no traceback anywhere."""
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
    assert "Unexpected error" not in stdout, stdout[-2000:]
    lines = [line for line in stdout.split("\n") if line.strip()]
    assert lines, f"no answer on stdout; stderr: {stderr[-2000:]}"
    answer = json.loads(lines[-1])
    assert isinstance(answer, dict)
    assert answer["status"] == rc, (answer, rc)
    assert rc in allowed, answer
    assert isinstance(answer["info"], list) and all(isinstance(i, str) for i in answer["info"])
    if rc != 0:
        assert answer["info"] and 0 < len(answer["info"][0]) <= 2000, answer
    return answer


def check_predictions(answer: dict[str, Any], nclasses: int, classes: list[str]) -> None:
    """Every prediction row is three strings; the probability is that of the
    predicted class, so between 1/nclasses and 1."""
    for row in answer["predictions"]:
        assert len(row) == 3 and all(isinstance(x, str) for x in row), row
        assert row[1] in classes, row
        p = float(row[2])
        assert math.isfinite(p) and 1 / nclasses - 1e-6 <= p <= 1.0, row


# --------------------------------------------------------------------------
# Old-format model files: pickled NumPy dtypes and TensorFlow checkpoints


class DtypeWithState:
    """Pickles as `numpy.dtype(name)` followed by a BUILD that sets `state`:
    what a crafted classifier.pkl can ask NumPy to do."""

    def __init__(self, name: str, state: tuple[Any, ...]) -> None:
        self.name, self.state = name, state

    def __reduce__(self) -> Any:
        return (np.dtype, (self.name, False, True), self.state)


#: dtype states a crafted pickle may give; only the first is what NumPy writes.
DTYPE_STATES = {
    "subarray (the 272-byte crash)": (
        "f8",
        (3, "<", (np.dtype("f8"), (200_000_000,)), None, None, 8, 1, 0),
    ),
    "item size larger than the type": ("f8", (3, "<", None, None, None, 1 << 30, 1, 0)),
    "fields": ("f8", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 16)),
    "big-endian": ("f8", (3, ">", None, None, None, -1, -1, 0)),
    "metadata (version 4)": ("f8", (4, "<", None, None, None, -1, -1, 0, {"x": 1})),
    "not a tuple": ("f8", {"a": 1}),
}


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def proto_field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint (int) or length-delimited (bytes)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def bundle_entry(dtype: int, dims: list[int], offset: int, size: int, shard: int = 0) -> bytes:
    """A BundleEntryProto as TensorFlow writes it."""
    shape = b"".join(proto_field(2, proto_field(1, d)) for d in dims)
    return (
        proto_field(1, dtype)
        + proto_field(2, shape)
        + proto_field(3, shard)
        + proto_field(4, offset)
        + proto_field(5, size)
    )


#: The columns (of 4) and layer sizes of `write_legacy3`'s model.
LEGACY_COLUMNS = [0, 1, 3]
LEGACY_SIZES = [3, 4, 2]


def write_legacy3(directory: Path, seed: int = 0) -> None:
    """A moodlemlbackend 3.x `classifier/` without TensorFlow, for datasets
    of 4 features (it uses columns `LEGACY_COLUMNS`): the joblib pickle
    (tests/helpers/legacy_files.py), and a checkpoint (index and data file)
    as TensorFlow lays it out."""
    from helpers.legacy_files import legacy_pickle, tf_state

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "classifier.pkl").write_bytes(
        legacy_pickle(tf_state(len(LEGACY_COLUMNS), LEGACY_COLUMNS, n_hidden_layers=1))
    )
    variables = directory / "model.ckpt" / "variables"
    variables.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = {"": proto_field(1, 1)}  # the header: one data file
    data = b""
    for i, (a, b) in enumerate(zip(LEGACY_SIZES, LEGACY_SIZES[1:])):
        for part, shape in (("kernel", [a, b]), ("bias", [b])):
            values = rng.normal(size=shape).astype("<f4").tobytes()
            key = f"layer_with_weights-{i}/{part}/.ATTRIBUTES/VARIABLE_VALUE"
            entries[key] = bundle_entry(1, shape, len(data), len(values))
            data += values
    write_table(variables / "variables.index", entries)
    (variables / "variables.data-00000-of-00001").write_bytes(data)
    (directory / "model.ckpt" / "saved_model.pb").write_bytes(b"\x08\x01graph")


def write_table(path: Path, entries: dict[str, bytes]) -> None:
    """A LevelDB-style table (a checkpoint's .index) holding `entries`,
    keys sorted, one data block, as TensorFlow lays it out."""

    def block(items: list[tuple[bytes, bytes]]) -> bytes:
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
        return body + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")

    items = sorted((k.encode(), v) for k, v in entries.items())
    data = block(items)
    out = data + b"\0\0\0\0\0"
    meta_offset = len(out)
    meta = block([])
    out += meta + b"\0\0\0\0\0"
    index_offset = len(out)
    index = block([(items[-1][0] + b"\0", _varint(0) + _varint(len(data)))])
    out += index + b"\0\0\0\0\0"
    handles = (
        _varint(meta_offset) + _varint(len(meta)) + _varint(index_offset) + _varint(len(index))
    )
    out += handles + bytes(40 - len(handles)) + (0xDB4775248B80FB57).to_bytes(8, "little")
    path.write_bytes(out)


# --------------------------------------------------------------------------
# Model files (model.npz), bent at random


def small_model_arrays(nfeatures: int = 3, hidden: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a valid model.npz, made without training."""
    from helpers.models import model
    from mlbackend.model.format import to_arrays

    return to_arrays(
        model(
            nfeatures,
            (hidden,),
            seed,
            bias=1.0,
            feature_names=[f"f{i}" for i in range(nfeatures)],
        )
    )


HOSTILE_JSON = st.sampled_from(
    [
        None,
        True,
        5,
        -1,
        0,
        1.5,
        float("nan"),
        10**30,
        "x",
        "",
        [],
        [1, 2],
        {},
        {"a": 1},
        [[[[[]]]]],
        "relu",
        "tanh",
        "softmax",
        "mlbackend-classifier",
        [0, 1],
        [0, 1, 1],
        [True, False],
        ["0", "1"],
        [0.5, 1],
        2,
        3,
        10_001,
        99,
        [10],
        [16_000_000],
        [0],
        list(range(20)),
        ["a"] * 3,
        "\u0663",
    ]
)
META_KEYS = [
    "format",
    "format_version",
    "classes",
    "nfeatures",
    "hidden_units",
    "activation",
    "output",
    "feature_names",
    "history",
]
HOSTILE_ARRAYS = st.sampled_from(
    [
        np.zeros(0, np.float32),
        np.zeros((3, 4, 1), np.float32),
        np.zeros(3, np.int64) - 5,
        np.array(5.0),
        np.full(3, np.nan, np.float32),
        np.zeros(3, np.complex64),
        np.array(["a", "b", "c"]),
        np.zeros(3, dtype=[("a", "f4")]),
        np.zeros(3, bool),
        np.zeros((3, 4), ">f4"),
        np.zeros((4, 2), np.float16),
        np.array([1e39, 0, 0]),
        np.arange(3) + 10,
        np.ones((3, 5000), np.float32),
    ]
)


@st.composite
def model_files(draw: Any) -> bytes:
    """A model.npz: valid, or with its metadata, arrays or bytes bent."""
    arrays = small_model_arrays(draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    kind = draw(st.sampled_from(["valid", "meta", "meta", "arrays", "arrays", "bytes", "cut"]))
    if kind == "meta":
        meta = json.loads(str(arrays["meta"]))
        if draw(st.integers(0, 5)) == 0:
            meta = draw(HOSTILE_JSON)
        else:
            for _ in range(draw(st.integers(1, 3))):
                key = draw(st.sampled_from(META_KEYS))
                if draw(st.booleans()):
                    meta[key] = draw(HOSTILE_JSON)
                else:
                    meta.pop(key, None)
        arrays["meta"] = np.array(json.dumps(meta))
    elif kind == "arrays":
        for _ in range(draw(st.integers(1, 2))):
            key = draw(st.sampled_from(sorted(arrays)))
            if draw(st.integers(0, 3)) == 0:
                del arrays[key]
            else:
                arrays[key] = draw(HOSTILE_ARRAYS)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    return data
