"""Protobuf wire format and the two record framings the scalar-log readers meet, decoded without the
producers' packages (no tensorboard, no wandb at read time).

- `fields(buf)`: the (field number, wire type, value) triples of one protobuf message. Enough to pull a few
  known fields out of TensorBoard `Event`s and W&B `Record`s; the schemas live with their readers.
- `tfrecords(data)`: TFRecord framing (uint64 length, uint32 masked crc, data, uint32 crc) of TensorBoard event
  files. A truncated last record (a file being written) ends the iteration.
- `leveldb_log(data, skip)`: the LevelDB log framing W&B uses for `run-*.wandb` (the datastore written by
  wandb-core): 32 KiB blocks of records, each `crc32 (uint32), length (uint16), type (uint8), data`, where type
  FULL=1 holds a whole record and FIRST=2 / MIDDLE=3 / LAST=4 chunks of one spread over blocks; fewer than 7
  bytes at the end of a block are zero padding. `skip` bytes of file header count towards the first block.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of the base-128 varint at `buf[i]`."""
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: varints as int, fixed64/fixed32 as their 8/4
    raw bytes, length-delimited values as bytes. Groups (wire types 3/4) are not used by these schemas."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = varint(buf, i)
            val, i = buf[i:i + size], i + size
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("protobuf message ends inside a field")
        yield num, wire, val


def double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def signed(v: int) -> int:
    """A varint read as int64 (two's complement: negative values are 10-byte varints)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def tfrecords(data: bytes) -> Iterator[bytes]:
    i = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        start, end = i + 12, i + 12 + length
        if end + 4 > len(data):
            return
        yield data[start:end]
        i = end + 4


def leveldb_log(data: bytes, skip: int = 0) -> Iterator[bytes]:
    """Whole records of a LevelDB-framed log. A chunk whose length runs past the end (a file being written)
    ends the iteration; a chunk of an unknown type raises ValueError (not this format)."""
    import zlib

    i, parts = skip, []
    n = len(data)
    while i < n:
        left = BLOCK - i % BLOCK
        if left < 7:  # block trailer: zero padding
            i += left
            continue
        if i + 7 > n:
            return
        crc, length, kind = struct.unpack("<IHB", data[i:i + 7])
        if kind == 0 and length == 0:  # zero padding (a preallocated or partly written block)
            i += left
            continue
        start, end = i + 7, i + 7 + length
        if end > n:
            return
        chunk = data[start:end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"checksum mismatch in the record chunk at byte {i}")
        i = end
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            parts.append(chunk)
            yield b"".join(parts)
            parts = []
        else:
            raise ValueError(f"unknown record chunk type {kind} at byte {i}")
