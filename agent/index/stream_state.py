"""Everything one stream keeps: its channels, clock map and counters.

Layout under the stream's folder::

    memory.npz    visual channel: anchors (SVD bases, representatives) - atomic snapshot
    cheap.npz     visual channel: cheap-index ring buffer               - atomic snapshot
    frames/       visual channel: frame-store chunk files (append-only, self-healing)
    <channel>/    any other channel's files (its own folder)
    state.json    counters, clock map, format version                  - atomic snapshot

Each snapshot file is replaced atomically, so a crash leaves each one either
the old or the new complete state; ``state.json`` is written last.

A :class:`StreamState` is the thin shell around its sans-I/O channels: it
fans media out to every channel, routes worker results and failures back to
the channel that owns the work item, and serialises every mutation and
search with its own lock, so callers (the CLI's inline encoder, the
service's batch workers and query threads) never lock anything themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.base import AudioMedia, Channel, ChannelAnswer, ChannelQuery, WorkCounters, WorkItem
from agent.channels.ingest import IngestStats
from agent.channels.retrieval import FrameEmbeddingCache
from agent.channels.visual import VisualChannel
from agent.config import IndexConfig
from agent.core.memory import Memory
from agent.models.encoder import Encoder
from agent.store.atomic import write_json
from agent.store.frame_store import FrameStore
from agent.store.versioned import read_versioned
from agent.types import Frame

STATE_VERSION = 1
_CLOCK_STEP = 5.0
"""Seconds between (stream time, wall clock) pairs kept for live streams."""
_CLOCK_CAP = 200_000


class StreamState:
    """One stream's channels, clock map and counters (thread-safe facade)."""

    def __init__(
        self,
        root: Path,
        stream: str,
        cfg: IndexConfig,
        *,
        dim: int,
        image_size: int,
        refine: Encoder | None = None,
        cache: FrameEmbeddingCache | None = None,
    ) -> None:
        self.root = Path(root)
        self.stream = stream
        self.cfg = cfg
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        visual = VisualChannel(
            self.root, stream, cfg, dim=dim, image_size=image_size, refine=refine, cache=cache
        )
        # One line per channel: the speech and text channels are added here.
        self.channels: dict[str, Channel] = {visual.name: visual}
        self._clock_t: list[float] = []
        self._clock_wall: list[float] = []
        self.meta: dict[str, Any] = {}
        self._load_state()

    # -------------------------------------------------- the visual channel
    @property
    def visual(self) -> VisualChannel:
        channel = self.channels[VisualChannel.name]
        assert isinstance(channel, VisualChannel)
        return channel

    @property
    def memory(self) -> Memory:
        """The visual channel's memory (read-only use: tokens, spans, info)."""
        return self.visual.memory

    @property
    def store(self) -> FrameStore | None:
        """The stream's stored frames (thumbnails, refinement, captions); None when disabled."""
        return self.visual.store

    @property
    def stats(self) -> IngestStats:
        """Frames, times and encoder passes of the stream (every frame reaches the visual channel)."""
        return self.visual.stats

    # ---------------------------------------------------------------- ingest
    def push(self, frame: Frame) -> list[WorkItem]:
        """Fan one frame out to every channel; returns their work (blocking: JPEG store)."""
        with self._lock:
            self.note_clock(frame.t, frame.wall)
            return [item for ch in self.channels.values() for item in ch.push(frame)]

    def push_audio(self, chunk: AudioMedia) -> list[WorkItem]:
        """Fan one audio chunk out to every channel (channels without audio ignore it)."""
        with self._lock:
            return [item for ch in self.channels.values() for item in ch.push_audio(chunk)]

    def flush(self) -> list[WorkItem]:
        """End of stream or pause: every channel's held-back work."""
        with self._lock:
            return [item for ch in self.channels.values() for item in ch.flush()]

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        """Hand a worker's result to the channel that owns ``item`` (KeyError if none does)."""
        with self._lock:
            self._channel(item).commit(item, result)

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        """``item``'s attempt failed: its channel retries (returned items) or drops it."""
        with self._lock:
            return self._channel(item).fail(item, error)

    @property
    def in_flight(self) -> int:
        """Work items handed out and not yet committed or dropped, all channels."""
        with self._lock:
            return sum(ch.in_flight for ch in self.channels.values())

    def counters(self) -> dict[str, WorkCounters]:
        """Failure counters by channel name (copies)."""
        with self._lock:
            return {
                n: WorkCounters(c.counters.failed, c.counters.retried, c.counters.dropped)
                for n, c in self.channels.items()
            }

    def _channel(self, item: WorkItem) -> Channel:
        channel = self.channels.get(item.channel)
        if channel is None or item.stream != self.stream:
            raise KeyError(f"work item of {item.stream}/{item.channel} does not belong to {self.stream}")
        return channel

    # ---------------------------------------------------------------- search
    def search(self, query: ChannelQuery) -> dict[str, ChannelAnswer]:
        """Every channel's proposals for an encoded query (blocking: refine encoder, frame reads)."""
        with self._lock:
            return {name: ch.search(query) for name, ch in self.channels.items()}

    def background(self, vector: np.ndarray) -> np.ndarray:
        """The visual channel's token scores for a prescreen query vector (watch calibration)."""
        with self._lock:
            return self.visual.background(vector)

    def resume_time(self) -> float | None:
        """Latest stream time any part of the snapshot has seen (frames at or before it are skipped)."""
        with self._lock:
            v = self.visual
            times = [v.stats.last_time, v.cheap.last_time]
            if v.store is not None and len(v.store):
                times.append(float(v.store.times()[-1]))
            known = [t for t in times if t is not None]
            return max(known) if known else None

    # ----------------------------------------------------------------- clock
    def note_clock(self, t: float, wall: float | None) -> None:
        """Remember (stream time, wall clock) pairs every few seconds."""
        if wall is None:
            return
        if self._clock_t and t - self._clock_t[-1] < _CLOCK_STEP:
            return
        self._clock_t.append(t)
        self._clock_wall.append(wall)
        if len(self._clock_t) > _CLOCK_CAP:
            del self._clock_t[: _CLOCK_CAP // 10]
            del self._clock_wall[: _CLOCK_CAP // 10]

    def wall_of(self, t: float) -> float | None:
        """Wall-clock time of stream time ``t`` (None for recordings)."""
        if not self._clock_t:
            return None
        ts = np.asarray(self._clock_t)
        ws = np.asarray(self._clock_wall)
        i = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(ts) - 1))
        return float(ws[i] + (t - ts[i]))

    # ------------------------------------------------------------ snapshots
    def save(self, meta: dict[str, Any] | None = None) -> None:
        """Snapshot every channel, then counters and clock (``meta`` merged first)."""
        with self._lock:
            if meta:
                self.meta.update(meta)
            for ch in self.channels.values():
                ch.save(self.root if isinstance(ch, VisualChannel) else self.root / ch.name)
            st = self.stats
            write_json(
                self.root / "state.json",
                {
                    "version": STATE_VERSION,
                    "stream": self.stream,
                    "stats": {
                        "frames": st.frames,
                        "encoded_frames": st.encoded_frames,
                        "gated_frames": st.gated_frames,
                        "superimages": st.superimages,
                        "dropped_superimages": st.dropped_superimages,
                        "first_time": st.first_time,
                        "last_time": st.last_time,
                        "first_wall": st.first_wall,
                        "last_wall": st.last_wall,
                    },
                    "clock": [self._clock_t, self._clock_wall],
                    "meta": self.meta,
                },
            )

    def close(self) -> None:
        """Close every channel (idempotent)."""
        with self._lock:
            for ch in self.channels.values():
                ch.close()

    def _load_state(self) -> None:
        data = read_versioned(self.root / "state.json", STATE_VERSION, what="stream state")
        if data is None:
            return
        st = self.stats
        for key, value in data.get("stats", {}).items():
            if hasattr(st, key):
                setattr(st, key, value)
        clock = data.get("clock") or [[], []]
        self._clock_t, self._clock_wall = list(clock[0]), list(clock[1])
        self.meta = dict(data.get("meta", {}))
