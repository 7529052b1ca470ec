"""TensorFlow checkpoints (tensor bundles) read as data, without TensorFlow.

The weights of a moodlemlbackend 3.x model are in its SavedModel's variables
checkpoint: `variables.index`, a LevelDB-style table (SSTable) that maps each
tensor's name to a `BundleEntryProto` (dtype, shape, which data file, offset,
size), and `variables.data-NNNNN-of-MMMMM` files holding the raw bytes.

TensorFlow's own reader trusts the index: a crafted entry (a negative or
enormous dimension, an unknown dtype, bytes that are not a protobuf) makes it
fail a CHECK and abort the whole process, which no `except` can catch, and
over HTTP that is the whole server. So the index is parsed here, every
field checked against the format and against the data file's size, and the
few tensors a model needs are read with NumPy. TensorFlow never sees the
file. This is also simpler and safer than reading it in a child process (a
frozen program would need a second entry point, and each conversion would
pay for importing TensorFlow).

What is read: the table's footer, index block and data blocks (uncompressed,
as TensorFlow writes bundles), the header entry (number of shards, byte
order) and the entries of the tensors asked for, which must be plain
float32 or float64 tensors of at most 8 dimensions, not partitioned
(no slices), whose bytes lie inside their data file. Checksums are not
verified (NumPy has no CRC32C); a damaged number is caught later, as every
weight must be finite.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

from mlbackend import files
from mlbackend.contract import BackendError, shown

#: The table's magic number, at the end of its footer.
TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
#: Real index files are a few KB; a larger one is refused unread.
MAX_INDEX_BYTES = 4 << 20
MAX_DIMS = 8

#: TensorFlow's DataType values for the tensors a model's weights may be.
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f8")}


class CheckpointError(BackendError):
    """The checkpoint is not one we read; the message says what is wrong."""


def _bad(what: str) -> CheckpointError:
    return CheckpointError(what)


# --------------------------------------------------------------------------
# Protocol buffers and varints, just what the format needs


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _bad("a number in the index is cut off or too long")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; refuses anything malformed."""
    out: list[tuple[int, int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _bad("an index entry is not a protobuf message (field 0)")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _bad("an index entry is cut off")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise _bad("an index entry is cut off")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _bad("an index entry is cut off")
            value = buf[pos : pos + length]
            pos += length
        else:
            raise _bad(f"an index entry is not a protobuf message (wire type {wire})")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    """A varint read as int64 (protobuf writes negative numbers as 2**64 - n)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _int_field(fields: list[tuple[int, int, int | bytes]], number: int, default: int = 0) -> int:
    values = [v for n, w, v in fields if n == number]
    if not values:
        return default
    v = values[-1]
    if not isinstance(v, int):
        raise _bad(f"field {number} of an index entry is not a number")
    return _signed(v)


# --------------------------------------------------------------------------
# The table


def _block(data: bytes, offset: int, size: int) -> bytes:
    if offset < 0 or size < 0 or offset + size + BLOCK_TRAILER_BYTES > len(data):
        raise _bad("a block of the index lies outside the file")
    if data[offset + size] != 0:
        raise _bad("the index is compressed, which TensorFlow's checkpoints are not")
    return data[offset : offset + size]


def _handle(buf: bytes) -> tuple[int, int]:
    offset, pos = _varint(buf, 0, len(buf))
    size, _ = _varint(buf, pos, len(buf))
    return offset, size


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of a block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise _bad("a block of the index is too short")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if restarts < 1 or end < 0:
        raise _bad("a block of the index has an invalid restart table")
    out = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, end)
        unshared, pos = _varint(block, pos, end)
        length, pos = _varint(block, pos, end)
        if shared > len(key) or pos + unshared + length > end:
            raise _bad("a key or value of the index lies outside its block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def read_index(path: str) -> dict[str, bytes]:
    """Tensor name -> serialized BundleEntryProto ("" is the header)."""
    try:
        data = files.read_at_most(path, MAX_INDEX_BYTES)
    except OSError as exc:
        raise _bad(f"{path} cannot be read ({files.why(exc)})") from None
    if data is None:
        raise _bad(
            f"{path} is larger than a model's checkpoint index ({MAX_INDEX_BYTES} bytes at most)"
        )
    if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise _bad(f"{path} is not a TensorFlow checkpoint index (no table footer)")
    footer = data[len(data) - FOOTER_BYTES : len(data) - 8]
    _, pos = _varint(footer, 0, len(footer))  # metaindex offset
    _, pos = _varint(footer, pos, len(footer))  # metaindex size
    index_offset, pos = _varint(footer, pos, len(footer))
    index_size, _ = _varint(footer, pos, len(footer))
    entries: dict[str, bytes] = {}
    for _, handle in _entries(_block(data, index_offset, index_size)):
        offset, size = _handle(handle)
        for key, value in _entries(_block(data, offset, size)):
            try:
                entries[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise _bad("a tensor name in the index is not text") from None
    return entries


# --------------------------------------------------------------------------
# Tensors


class Checkpoint:
    """The tensors of one checkpoint `prefix` (`.../variables/variables`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.entries = read_index(prefix + ".index")
        header = _fields(self.entries.get("", b""))
        self.num_shards = _int_field(header, 1, default=1)
        if not 1 <= self.num_shards <= 1000:
            raise _bad(f"the index names {shown(self.num_shards)} data files")
        if _int_field(header, 2) != 0:
            raise _bad("the checkpoint is big-endian")

    def names(self) -> set[str]:
        return {k for k in self.entries if k}

    def data_path(self, shard: int) -> str:
        return f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}"

    def shard_ends(self) -> dict[int, int]:
        """Bytes of each data file that the index's tensors use, all of them
        (optimizer state and the object graph too, whatever their type):
        TensorFlow writes a data file as its tensors one after the other,
        so a file holds no more than this."""
        ends: dict[int, int] = {}
        for name, entry in self.entries.items():
            if not name:
                continue
            fields = _fields(entry)
            shard, offset, size = (
                _int_field(fields, 3),
                _int_field(fields, 4),
                _int_field(fields, 5),
            )
            if not 0 <= shard < self.num_shards or offset < 0 or size < 0:
                raise _bad(f"the tensor {shown(name)} points outside the data files")
            ends[shard] = max(ends.get(shard, 0), offset + size)
        return ends

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple[np.dtype, tuple[int, ...], int, int, int]:
        """dtype, shape, shard, offset and size of a tensor, checked."""
        if name not in self.entries:
            raise _bad(f"there is no tensor {shown(name)}")
        fields = _fields(self.entries[name])
        dtype_code = _int_field(fields, 1)
        if dtype_code not in DTYPES:
            raise _bad(
                f"the tensor {shown(name)} has data type {shown(dtype_code)}, not "
                "floating-point numbers"
            )
        if any(n == 7 for n, _, _ in fields):
            raise _bad(f"the tensor {shown(name)} is partitioned (slices)")
        shapes = [v for n, w, v in fields if n == 2]
        if len(shapes) != 1 or not isinstance(shapes[0], bytes):
            raise _bad(f"the tensor {shown(name)} has no shape")
        dims = []
        for n, _, v in _fields(shapes[0]):
            if n == 3 and v:
                raise _bad(f"the tensor {shown(name)} has an unknown rank")
            if n == 2:
                if not isinstance(v, bytes):
                    raise _bad(f"the tensor {shown(name)} has a malformed shape")
                size = _int_field(_fields(v), 1)
                if size < 0:
                    raise _bad(f"the tensor {shown(name)} has a dimension of {size}")
                dims.append(size)
        if len(dims) > MAX_DIMS:
            raise _bad(f"the tensor {shown(name)} has {len(dims)} dimensions")
        shard, offset, size = (_int_field(fields, 3), _int_field(fields, 4), _int_field(fields, 5))
        dtype = DTYPES[dtype_code]
        if any(d > 1 << 40 for d in dims) or math.prod(dims) * dtype.itemsize != size:
            raise _bad(
                f"the tensor {shown(name)} of shape {shown(tuple(dims))} has {shown(size)} bytes"
            )
        if not 0 <= shard < self.num_shards or offset < 0:
            raise _bad(f"the tensor {shown(name)} points outside the data files")
        return dtype, tuple(dims), shard, offset, size

    def tensor(self, name: str) -> np.ndarray:
        dtype, shape, shard, offset, size = self._entry(name)
        path = self.data_path(shard)
        try:
            with files.open_regular(path) as f:
                if offset + size > os.fstat(f.fileno()).st_size:
                    raise _bad(
                        f"the tensor {shown(name)} lies past the end of "
                        f"{os.path.basename(path)} (truncated?)"
                    )
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise _bad(f"{os.path.basename(path)} cannot be read ({files.why(exc)})") from None
        if len(data) != size:
            raise _bad(f"{os.path.basename(path)} is truncated")
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
