"""The zip reader (`mlbackend.server.uploads.safe_extract`) against crafted
zips: every compression zipfile knows, names of every kind, and then the
bytes bent where a zip keeps what it believes (flags, compression method,
name lengths, sizes, CRCs) or anywhere. Whatever the zip, the answer is the
files extracted, all inside the directory, or `UnsafeZip` with a short
sentence: never another exception (an import would answer 500).

`make test` runs a few examples, the same every time; `make fuzz`
thousands of fresh ones (see hostile.py).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from helpers.hostile import examples
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mlbackend import transfer
from mlbackend.server import uploads

METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
NAMES = st.one_of(
    st.sampled_from(
        [
            "model.npz",
            "classifier/model.npz",
            "classifier.pkl",
            "model.ckpt/variables/variables.index",
            "model.ckpt/variables/variables.data-00000-of-00001",
            "model.ckpt/saved_model.pb",
            "model.json",
            "readme.txt",
            "a/b/c/d",
            "dir/",
            "../x",
            "/abs",
            "x" * 300,
            "é/ü.bin",
            "a\\b",
        ]
    ),
    st.text(min_size=1, max_size=12),
)
DATA = st.one_of(st.binary(max_size=300), st.sampled_from([bytes(4096), b"PK\x03\x04" * 20]))


def build(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names: wanted
        for name, data, method in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            z.writestr(info, data)
    return buf.getvalue()


def headers(data: bytes) -> list[tuple[int, bool]]:
    """(offset, is central) of every local and central header."""
    found = []
    for magic, central in ((b"PK\x03\x04", False), (b"PK\x01\x02", True)):
        at = data.find(magic)
        while at >= 0:
            found.append((at, central))
            at = data.find(magic, at + 1)
    return found


#: Fields a zip reader believes, as (offset in a local header, in a central
#: header, struct format).
FIELDS = {
    "flags": (6, 8, "<H"),
    "method": (8, 10, "<H"),
    "crc": (14, 16, "<I"),
    "compressed size": (18, 20, "<I"),
    "size": (22, 24, "<I"),
    "name length": (26, 28, "<H"),
}


@st.composite
def zips(draw: Any) -> bytes:
    entries = draw(
        st.lists(st.tuples(NAMES, DATA, st.sampled_from(METHODS)), min_size=0, max_size=5)
    )
    data = bytearray(build(entries))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["field", "field", "byte", "cut", "utf-8 name"]))
        event(how)
        places = headers(bytes(data))
        if how == "byte" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif places:
            at, central = draw(st.sampled_from(places))
            if how == "utf-8 name":  # bit 11, and a name byte that is not UTF-8
                flags = at + (8 if central else 6)
                name = at + (46 if central else 30)
                if name < len(data):
                    data[flags : flags + 2] = struct.pack(
                        "<H", struct.unpack_from("<H", data, flags)[0] | 0x800
                    )
                    data[name] = draw(st.sampled_from([0xFF, 0xC3, 0x80]))
            else:
                local, cent, fmt = FIELDS[draw(st.sampled_from(sorted(FIELDS)))]
                offset = at + (cent if central else local)
                size = struct.calcsize(fmt)
                if offset + size <= len(data):
                    limit = (1 << (8 * size)) - 1
                    value = draw(
                        st.one_of(st.sampled_from([0, 1, 99, 0x801, limit]), st.integers(0, limit))
                    )
                    data[offset : offset + size] = struct.pack(fmt, value)
    return bytes(data)


@settings(max_examples=examples(60, 5000))
@given(archive=zips(), keep_models=st.booleans())
def test_the_zip_reader_answers_every_zip(archive, keep_models):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.zip"
        path.write_bytes(archive)
        dest = Path(tmp) / "out"
        keep = transfer.is_model_file if keep_models else None
        try:
            written = uploads.safe_extract(str(path), str(dest), 1 << 20, keep=keep)
        except uploads.UnsafeZip as exc:
            assert 0 < len(exc.message) < 500, exc.message
            assert "None)" not in exc.message, exc.message
            event("refused: " + exc.message.split("(")[0][:50])
        else:
            event(f"extracted {len(written)}")
            for rel in written:
                target = (dest / rel).resolve()
                assert target.is_file() and str(target).startswith(str(dest.resolve()) + os.sep)
                assert keep is None or keep(rel)
        assert sorted(os.listdir(tmp)) in (["upload.zip"], ["out", "upload.zip"])
