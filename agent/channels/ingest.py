"""One stream's ingest path: frames -> cheap index, gate, store, tiler -> memory.

Synchronous and encoder-agnostic: :meth:`StreamIngestor.push` returns the
super-images that need an encoder pass, and :meth:`StreamIngestor.commit`
hands their embeddings back. The CLI encodes inline; the service batches
super-images from many streams in one shared batch worker. Either way the
memory sees events in stream order: a FIFO holds super-images that wait for
their embedding together with the "static stretch" extensions the gate
produced after them, and commit() applies the FIFO's resolved head only.
A super-image whose encoding was given up is resolved by :meth:`drop`: its
span is not retained, and nothing behind it waits for it.

Time rules of :meth:`StreamIngestor.push`: a frame held on screen for longer
than a sampling period (``Frame.duration``: a screen recording, a slide) is
sampled again at each sampling instant it covers, so it is covered, gated
and stored like any static scene; a frame without a duration stands for one
period, so a clock jump stays a gap. Sources deliver time in order (a file's
discontinuities are stitched by the decoder); a frame older than the last
one cannot be merged into an ordered memory: it is dropped, counted
(``IngestStats.out_of_order``) and logged once per stream, never silently.
Gaps: a jump in stream time larger than ``cfg.gap_seconds`` (a source
outage, a reconnect, frames dropped upstream) closes the filling grid
before the frame after it, so no super-image spans the jump and the memory
records the hole as a gap in coverage (:meth:`Memory.coverage`). A dropped
super-image's span is a gap too, however short (:meth:`Memory.break_coverage`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from agent.config import IndexConfig
from agent.core.cheap_index import CheapIndex, Gate
from agent.core.memory import Memory
from agent.core.superimage import SuperImage, Tiler
from agent.store.frame_store import FrameStore
from agent.types import Frame

log = logging.getLogger(__name__)

SCENE_CUT = 0.25
"""Histogram change (L1/2) above which a frame starts a new super-image."""
MAX_TILE_GAP = 4
"""Gated (static) samples in a row a filling grid may wait across.

Counted in samples, not seconds: a keyframe pass samples once per keyframe
interval (2 s on IP cameras), and a rule in sampling periods (4 x 0.5 s)
closed its grids at every second static keyframe, one encoder pass per
frame (300 s clip: 34 passes for 92 encoded keyframes). On a full pass at
the sampling rate both rules agree; ``gap_seconds`` still bounds the wait."""


@dataclass(slots=True)
class _Pending:
    si: SuperImage | None
    extend_to: float | None = None
    embedding: np.ndarray | None = None
    dropped: bool = False

    @property
    def ready(self) -> bool:
        return self.si is None or self.embedding is not None or self.dropped


@dataclass(slots=True)
class IngestStats:
    """Counters of one stream's ingest."""

    frames: int = 0
    encoded_frames: int = 0
    gated_frames: int = 0
    superimages: int = 0
    dropped_superimages: int = 0
    out_of_order: int = 0
    """Frames dropped because they were older than the last one."""
    held_samples: int = 0
    """Samples added for frames held on screen longer than a sampling period."""
    last_time: float | None = None
    first_time: float | None = None
    last_wall: float | None = None
    first_wall: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class StreamIngestor:
    """Turns one stream's sampled frames into memory, cheap index and stored frames."""

    def __init__(
        self,
        stream: str,
        cfg: IndexConfig,
        *,
        memory: Memory,
        cheap: CheapIndex,
        store: FrameStore | None,
        image_size: int,
    ) -> None:
        self.stream = stream
        self.cfg = cfg
        self.memory = memory
        self.cheap = cheap
        self.store = store
        self.gate = Gate(cfg.gate_motion, cfg.gate_hist, cfg.gate_max_seconds) if cfg.gate else None
        # Tiles may sit across a short static run (MAX_TILE_GAP samples, each within
        # gap_seconds of the one before): the Tiler's guard is that bound, the gap rule is ours.
        self.tiler = Tiler(
            stream,
            grid=cfg.grid,
            size=image_size,
            period=1.0 / cfg.fps,
            max_gap=(MAX_TILE_GAP + 1) * cfg.gap_seconds,
        )
        self.stats = IngestStats()
        self._fifo: deque[_Pending] = deque()
        self._by_id: dict[int, _Pending] = {}
        self._static: list[float] = []
        """Times of the gated samples since the newest pending tile (see :data:`MAX_TILE_GAP`)."""

    def push(self, frame: Frame) -> list[SuperImage]:
        """Take one sampled frame; return super-images that now need encoding.

        A frame held longer than a sampling period is taken again at each
        sampling instant it covers (module docstring).
        """
        last = self.stats.last_time
        if last is not None and frame.t < last:
            # An ordered memory cannot take it: dropped, but counted and said.
            self.stats.out_of_order += 1
            if self.stats.out_of_order == 1:
                log.warning(
                    "%s: frame at %.2fs older than the last (%.2fs) dropped", self.stream, frame.t, last
                )
            return []
        out = self._take(frame)
        period = self.tiler.period
        repeats = math.ceil((frame.duration or 0.0) / period - 1e-6) - 1
        for i in range(1, repeats + 1):
            self.stats.held_samples += 1
            wall = None if frame.wall is None else frame.wall + i * period
            out += self._take(
                replace(frame, t=frame.t + i * period, wall=wall, keyframe=False, duration=None)
            )
        return out

    def _take(self, frame: Frame) -> list[SuperImage]:
        prev = self.stats.last_time
        jumped = prev is not None and frame.t - prev > self.cfg.gap_seconds  # an outage, not a static run
        self._count(frame)
        entry = self.cheap.add(frame.t, frame.image)
        if self.store is not None:
            self.store.put(frame.t, frame.image, frame.wall)
        if self.gate is not None and not self.gate.should_encode(entry) and self._has_history():
            self.stats.gated_frames += 1
            return self._gated(frame.t, jumped)
        self.stats.encoded_frames += 1
        out = []
        if self.tiler.pending and (entry.hist_change >= SCENE_CUT or jumped):
            out = self._close_grid()  # never tile across a scene cut or a gap
        self._static.clear()  # the static run before this tile lies inside its grid's span
        return out + self._emit(self.tiler.push(frame.t, frame.image))

    def _gated(self, t: float, jumped: bool) -> list[SuperImage]:
        """A static frame: no encoder pass; the memory's coverage still reaches it."""
        period = self.tiler.period
        if not self.tiler.pending:
            self._queue(_Pending(None, extend_to=t + period))
            return []
        if len(self._static) < MAX_TILE_GAP and not jumped:
            # Short static run inside a filling grid: the next tile's span covers it.
            self._static.append(t)
            return []
        # A long static stretch: close the grid (tiles stay near-consecutive) and stretch.
        out = self._close_grid()
        self._queue(_Pending(None, extend_to=t + period))
        return out

    def _close_grid(self) -> list[SuperImage]:
        """Emit the filling grid, then stretch coverage over the static samples after its last tile.

        One extension per sample: a keyframe pass's static run (up to
        MAX_TILE_GAP samples 2 s apart) is longer than ``gap_seconds``, and a
        single stretch over it would read as an outage.
        """
        out = self._emit(self.tiler.flush())
        for t in self._static:
            self._queue(_Pending(None, extend_to=t + self.tiler.period))
        self._static.clear()
        return out

    def flush(self) -> list[SuperImage]:
        """Emit the last partial grid (end of stream or a pause); coverage reaches the last frame."""
        out = self._close_grid()
        last = self.stats.last_time
        if last is not None and self.stats.encoded_frames:
            self._queue(_Pending(None, extend_to=last + self.tiler.period))
        return out

    def commit(self, si: SuperImage, embedding: np.ndarray) -> None:
        """Hand back the embedding of a super-image returned by push/flush."""
        pending = self._by_id.pop(id(si), None)
        if pending is None:
            raise KeyError("commit() of a super-image this ingestor did not emit")
        pending.embedding = np.asarray(embedding, np.float32)
        self._drain()

    def drop(self, si: SuperImage) -> None:
        """Give up on a super-image returned by push/flush: its span stays unretained.

        The FIFO entry resolves now, so later embeddings reach the memory
        without waiting (KeyError for a super-image this ingestor did not emit).
        """
        pending = self._by_id.pop(id(si), None)
        if pending is None:
            raise KeyError("drop() of a super-image this ingestor did not emit")
        pending.dropped = True
        self.stats.dropped_superimages += 1
        self._drain()

    def owns(self, si: SuperImage) -> bool:
        """Whether ``si`` was emitted here and is still waiting for commit or drop."""
        return id(si) in self._by_id

    @property
    def in_flight(self) -> int:
        """Super-images emitted but not yet committed."""
        return len(self._by_id)

    def _has_history(self) -> bool:
        # The first frame of a stream is always encoded, so gated frames
        # always have an anchor (or a pending super-image) to extend.
        return self.stats.encoded_frames > 0

    def _count(self, frame: Frame) -> None:
        s = self.stats
        s.frames += 1
        s.last_time = frame.t
        if s.first_time is None:
            s.first_time = frame.t
        if frame.wall is not None:
            s.last_wall = frame.wall
            if s.first_wall is None:
                s.first_wall = frame.wall

    def _emit(self, si: SuperImage | None) -> list[SuperImage]:
        if si is None:
            return []
        self.stats.superimages += 1
        pending = _Pending(si)
        self._by_id[id(si)] = pending
        self._queue(pending)
        return [si]

    def _queue(self, item: _Pending) -> None:
        self._fifo.append(item)
        self._drain()

    def _drain(self) -> None:
        fifo = self._fifo
        while fifo and fifo[0].ready:
            item = fifo.popleft()
            if item.dropped:
                self.memory.break_coverage()  # its span is a gap, not retained
            elif item.si is not None and item.embedding is not None:
                self.memory.add(item.si.start, item.si.end, item.embedding)
            elif item.extend_to is not None and self.memory.tokens > 0 and not self.memory.coverage_broken:
                # After a dropped super-image (the break, kept in snapshots) no anchor stretches over it.
                self.memory.extend(item.extend_to)
