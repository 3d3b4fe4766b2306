"""A stream's ``state.json`` record: its wall-clock map, meta, generation and a counter summary.

The channels keep their own files (see :mod:`agent.index.stream_state`);
``state.json`` holds what belongs to the stream as a whole, committed with
them as one generation (:mod:`agent.store.snapshot`):

* ``clock``: the (stream time, wall clock) pairs of a live stream
  (:class:`ClockMap`), so answers carry wall times after a restart;
* ``meta``: the caller's resume token, offset and the like;
* ``generation``, ``saved_at``: which snapshot this is and when it was taken;
* ``stats``: a summary of the visual channel's counters (:data:`SUMMARY_KEYS`),
  for readers of the file; on load the channels restore their own counters.

:func:`read_state` type-checks what a load relies on (a wrong type is an
:class:`~agent.errors.IndexStoreError`); :func:`state_record` builds what a
save writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from agent.channels.ingest import IngestStats
from agent.errors import IndexStoreError
from agent.store import snapshot

STATE_VERSION = 1
SUMMARY_KEYS = (
    "frames",
    "encoded_frames",
    "gated_frames",
    "superimages",
    "dropped_superimages",
    "first_time",
    "last_time",
    "first_wall",
    "last_wall",
)
"""The stream's counters written into ``state.json`` as a summary (the same keys as ever)."""
_CLOCK_STEP = 5.0
"""Seconds between (stream time, wall clock) pairs kept for live streams."""
_CLOCK_TOLERANCE = 0.5
"""Seconds the stream-to-wall offset may move before a new (stream time, wall clock) pair is kept."""
_CLOCK_CAP = 200_000


class ClockMap:
    """(stream time, wall clock) pairs of a live stream, and the wall time of any stream second.

    Sans-I/O and unlocked: its owner (:class:`~agent.index.stream_state.StreamState`)
    notes points under its lock; :meth:`wall_of` tolerates a concurrent append.
    """

    def __init__(self, t: Sequence[float] = (), wall: Sequence[float] = ()) -> None:
        """``t``, ``wall``: the points restored from ``state.json`` (equal lengths, in stream order)."""
        self._t = list(t)
        self._wall = list(wall)

    def note(self, t: float, wall: float | None) -> None:
        """Remember (stream time, wall clock) pairs: every few seconds, and at once when the offset moves.

        A new point whenever ``wall - t`` differs from the last point's by more
        than :data:`_CLOCK_TOLERANCE` seconds (a recorder that was off, a
        back-filled segment, a new RTSP session's clock), else one per
        :data:`_CLOCK_STEP` seconds of stream time.
        """
        if wall is None:
            return
        if self._t:
            moved = abs((wall - t) - (self._wall[-1] - self._t[-1])) > _CLOCK_TOLERANCE
            if not moved and t - self._t[-1] < _CLOCK_STEP:
                return
        self._t.append(t)
        self._wall.append(wall)
        if len(self._t) > _CLOCK_CAP:
            del self._t[: _CLOCK_CAP // 10]
            del self._wall[: _CLOCK_CAP // 10]

    def wall_of(self, t: float) -> float | None:
        """Wall-clock time of stream time ``t`` (None for recordings)."""
        if not self._t:
            return None
        ts = np.asarray(self._t)
        ws = np.asarray(self._wall)
        i = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(ts) - 1))
        wall = float(ws[i] + (t - ts[i]))
        if i + 1 < len(ts) and t < ts[i + 1]:
            # Before a point whose offset is smaller (a late first frame re-dated): never past it,
            # so wall times stay in stream order.
            wall = min(wall, float(ws[i + 1]))
        return wall

    def columns(self) -> list[list[float]]:
        """``[stream times, wall times]``, as ``state.json`` keeps them."""
        return [self._t, self._wall]


class StateFile(BaseModel):
    """The parts of ``state.json`` a load relies on, type-checked (wrong types: IndexStoreError)."""

    model_config = ConfigDict(extra="allow")

    generation: int = Field(default=0, ge=0)
    saved_at: float | None = None
    clock: tuple[list[FiniteFloat], list[FiniteFloat]] = ([], [])
    meta: dict[str, Any] = Field(default_factory=dict)


def read_state(root: Path) -> StateFile | None:
    """The committed ``state.json`` of the stream folder ``root``; None when there is none yet.

    Raises IndexStoreError (SnapshotVersionError) for a file that fails the
    snapshot's checks, a wrong type or clock columns of different lengths.
    """
    path = root / snapshot.STATE_FILE
    data = snapshot.read_committed(root, STATE_VERSION, what="stream state")
    if data is None:
        return None
    try:
        state = StateFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise IndexStoreError(f"{path}: unreadable stream state: {where}: {first['msg']}") from exc
    if len(state.clock[0]) != len(state.clock[1]):
        raise IndexStoreError(f"{path}: unreadable stream state: clock columns differ in length")
    return state


def state_record(
    stream: str,
    *,
    generation: int,
    saved_at: float,
    stats: IngestStats,
    clock: ClockMap,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """What a snapshot of generation ``generation`` writes into ``state.json`` (``saved_at``: Unix time)."""
    return {
        "version": STATE_VERSION,
        "stream": stream,
        "generation": generation,
        "saved_at": saved_at,
        # A summary for readers of this file (tools, older versions); on load
        # the channels restore their own counters (the visual one: ingest.json).
        "stats": {k: getattr(stats, k) for k in SUMMARY_KEYS},
        "clock": clock.columns(),
        "meta": meta,
    }
