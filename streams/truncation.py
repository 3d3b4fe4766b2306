"""Whether a recording was cut short: its last packet is cut, or it holds fewer bytes than it states.

Truncation is a read error or a cut packet, never a duration in a header
(header durations cover the longest track, audio included, or are simply
wrong). After the decode loop (:func:`streams.decode.decode`) has yielded
every good frame, :func:`check_complete` raises when the input counts as
truncated:

* its last video packet is cut (FFmpeg flags it corrupt: AVI), or
* the container states its own byte length and the file holds fewer bytes:
  Matroska/WebM's Segment size, the RIFF size of AVI (:func:`stated_bytes`).

A container that states neither (MPEG-TS, a live-written Matroska whose
Segment size is "unknown") just ends.
"""

from __future__ import annotations

import os
from pathlib import Path

from streams.errors import CorruptMediaError

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = b"\x18\x53\x80\x67"


def check_complete(label: Path | str, name: str, *, cut: bool, end: float) -> None:
    """Raise :class:`CorruptMediaError` when the input at ``name`` was cut short.

    ``cut``: the last video packet read was flagged corrupt; ``end``: stream
    seconds where the last picture read ends (named in the message).
    """
    if cut:
        raise CorruptMediaError(f"{label}: ends at {end:.2f}s in a cut packet (truncated)")
    stated, size = stated_bytes(name)
    if stated is not None and size < stated:
        raise CorruptMediaError(
            f"{label}: ends at {end:.2f}s, {size} of the {stated} bytes its container states (truncated)"
        )


def stated_bytes(name: str) -> tuple[int | None, int]:
    """(bytes the container says the file holds, bytes it holds): Matroska Segment or RIFF size.

    ``(None, size)`` when the container states no length (or it is unknown:
    a live-written Matroska) or ``name`` is not a readable file.
    """
    try:
        with open(name, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None, 0
    if head[:4] == b"RIFF" and len(head) >= 8:
        riff = int.from_bytes(head[4:8], "little")
        return (8 + riff if 0 < riff < 0xFFFFFFFF else None), size  # 0 / all ones: not yet written
    if head[:4] != _EBML_MAGIC:
        return None, size
    pos = 4
    length, width = _vint(head, pos)  # EBML header's size
    if length is None:
        return None, size
    pos += width + length
    if head[pos : pos + 4] != _SEGMENT_ID:
        return None, size
    length, width = _vint(head, pos + 4)
    if length is None:
        return None, size
    return pos + 4 + width + length, size


def _vint(data: bytes, pos: int) -> tuple[int | None, int]:
    """An EBML variable-size integer at ``pos``: (value, width); value None when unknown or unreadable."""
    if pos >= len(data) or data[pos] == 0:
        return None, 1
    width = 9 - data[pos].bit_length()
    if pos + width > len(data):
        return None, width
    value = data[pos] & (0xFF >> width)
    for b in data[pos + 1 : pos + width]:
        value = (value << 8) | b
    if value == (1 << (7 * width)) - 1:  # all ones: size unknown (live writer)
        return None, width
    return value, width
