"""The frame store's record format and its damage-tolerant scan (sans-I/O: bytes in, records out).

A record is a 28-byte header ``<4s d d I I>`` — magic, stream time ``t``
(seconds), wall-clock time (Unix seconds, NaN when unknown), JPEG length
(bytes), CRC-32 — followed by the JPEG bytes. Two magics exist:

- ``VFR2`` (written now): the CRC covers the first 24 header bytes *and*
  the JPEG, so a flipped bit in the time or the length is caught too;
- ``VFR1`` (older stores, still read): the CRC covers the JPEG only.

:func:`scan` reads a chunk with length framing *and* resynchronisation: a
record that is short, fails its CRC or goes back in time is skipped by
searching for the next magic at which a valid record starts, so one damaged
byte costs one record, not everything after it (the rule chosen). A
magic-like byte pattern inside a JPEG cannot pass for a record: its CRC
would have to match as well.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass, field

MAGIC_V1 = b"VFR1"
MAGIC = b"VFR2"
HEADER = struct.Struct("<4sddII")
_PREFIX = HEADER.size - 4  # the header bytes the VFR2 CRC covers (everything but the CRC)
_ANY_MAGIC = re.compile(re.escape(MAGIC) + b"|" + re.escape(MAGIC_V1))


def pack(t: float, wall: float, jpeg: bytes) -> bytes:
    """One ``VFR2`` record: header then JPEG bytes."""
    prefix = HEADER.pack(MAGIC, t, wall, len(jpeg), 0)[:_PREFIX]
    return prefix + struct.pack("<I", zlib.crc32(jpeg, zlib.crc32(prefix))) + jpeg


@dataclass(frozen=True, slots=True)
class Record:
    """A valid record found by :func:`scan`: ``offset`` is where its JPEG starts in the chunk."""

    t: float
    wall: float
    offset: int
    length: int


@dataclass(slots=True)
class ScanResult:
    """What :func:`scan` found in one chunk.

    ``records`` in file order (times ascending); ``end``: one past the last
    valid record (bytes after it are a damaged tail to cut); ``holes``:
    ``(start, end)`` byte ranges skipped *between* valid records.
    """

    records: list[Record] = field(default_factory=list)
    end: int = 0
    holes: list[tuple[int, int]] = field(default_factory=list)


def _parse(data: bytes, pos: int, last_t: float) -> Record | None:
    """The valid record at ``pos``, or None (short, bad magic, bad CRC, time going back)."""
    if pos + HEADER.size > len(data):
        return None
    magic, t, wall, length, crc = HEADER.unpack_from(data, pos)
    body = pos + HEADER.size
    if magic not in (MAGIC, MAGIC_V1) or body + length > len(data):
        return None
    view = memoryview(data)
    seed = zlib.crc32(view[pos : pos + _PREFIX]) if magic == MAGIC else 0
    if zlib.crc32(view[body : body + length], seed) != crc:
        return None
    if math.isnan(t) or t < last_t:  # a VFR1 header is not covered by its CRC
        return None
    return Record(t, wall, body, length)


def scan(data: bytes, last_t: float = -math.inf) -> ScanResult:
    """Every valid record of a chunk whose times are at least ``last_t``, resyncing past damage."""
    out = ScanResult()
    pos = 0
    while pos + HEADER.size <= len(data):
        rec = _parse(data, pos, last_t)
        if rec is None:
            found = _ANY_MAGIC.search(data, pos + 1)
            if found is None:
                break
            pos = found.start()
            continue
        if pos > out.end:
            out.holes.append((out.end, pos))
        out.records.append(rec)
        last_t = rec.t
        pos = out.end = rec.offset + rec.length
    return out
