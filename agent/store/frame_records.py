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
would have to match as well. :class:`RecordIndex` holds what the scans and
appends found, as columns.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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


class RecordIndex:
    """The store's in-memory index: growable columns (time, wall, chunk, offset, length).

    Rows are appended in time order; eviction drops a prefix (the oldest chunk's rows).
    """

    def __init__(self) -> None:
        self.t = np.zeros(256, np.float64)
        self.wall = np.zeros(256, np.float64)
        self.chunk = np.zeros(256, np.int64)
        self.offset = np.zeros(256, np.int64)
        self.length = np.zeros(256, np.int64)
        self.lo = 0  # first live row
        self.hi = 0  # one past the last row

    def __len__(self) -> int:
        return self.hi - self.lo

    def append(self, t: float, wall: float, chunk: int, offset: int, length: int) -> None:
        if self.hi == len(self.t):
            self._compact_or_grow()
        i = self.hi
        self.t[i], self.wall[i], self.chunk[i], self.offset[i], self.length[i] = (
            t,
            wall,
            chunk,
            offset,
            length,
        )
        self.hi += 1

    def _compact_or_grow(self) -> None:
        n = len(self)
        size = len(self.t) if n <= len(self.t) // 2 else 2 * len(self.t)
        for name in ("t", "wall", "chunk", "offset", "length"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype)
            new[:n] = old[self.lo : self.hi]
            setattr(self, name, new)
        self.lo, self.hi = 0, n

    def drop_chunk(self, chunk: int) -> None:
        """Drop the leading rows that live in ``chunk`` (the oldest one)."""
        live = self.chunk[self.lo : self.hi]
        self.lo += int(np.searchsorted(live, chunk, side="right"))

    def times(self) -> npt.NDArray[np.float64]:
        return self.t[self.lo : self.hi]
