"""Everything one stream keeps: memory, cheap index, frame store, clock map.

Layout under the stream's folder::

    memory.npz    anchors (SVD bases, representatives) - atomic snapshot
    cheap.npz     cheap-index ring buffer               - atomic snapshot
    state.json    counters, clock map, format version   - atomic snapshot
    frames/       frame-store chunk files (append-only, self-healing)

Each snapshot file is replaced atomically, so a crash leaves each one either
the old or the new complete state; ``state.json`` is written last and names
the memory generation it belongs with.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.ingest import IngestStats, StreamIngestor
from agent.config import IndexConfig
from agent.core.cheap_index import CheapIndex
from agent.core.memory import Memory
from agent.errors import IndexStoreError, SnapshotVersionError
from agent.store.atomic import write_json, write_npz
from agent.store.frame_store import FrameStore
from agent.store.memory_store import load_memory, save_memory

STATE_VERSION = 1
_CLOCK_STEP = 5.0
"""Seconds between (stream time, wall clock) pairs kept for live streams."""
_CLOCK_CAP = 200_000


class StreamState:
    """One stream's retained state and its ingestor."""

    def __init__(self, root: Path, stream: str, cfg: IndexConfig, *, dim: int, image_size: int) -> None:
        self.root = Path(root)
        self.stream = stream
        self.cfg = cfg
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        """Held by writers (ingest, snapshot) and readers (queries) of this stream."""
        self.memory = self._load_memory(dim)
        self.cheap = self._load_cheap()
        self.store = (
            FrameStore(
                self.root / "frames",
                max_bytes=cfg.store_bytes,
                size=cfg.store_size,
                quality=cfg.store_quality,
            )
            if cfg.store_bytes > 0
            else None
        )
        self.ingestor = StreamIngestor(
            stream, cfg, memory=self.memory, cheap=self.cheap, store=self.store, image_size=image_size
        )
        self._clock_t: list[float] = []
        self._clock_wall: list[float] = []
        self.meta: dict[str, Any] = {}
        self._load_state()

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
    def save(self) -> None:
        """Snapshot memory, cheap index and counters atomically."""
        with self.lock:
            save_memory(self.memory, self.root / "memory.npz")
            write_npz(self.root / "cheap.npz", self.cheap.state_dict())
            if self.store is not None:
                self.store.flush()
            st = self.ingestor.stats
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
        """Close the frame store (idempotent)."""
        if self.store is not None:
            self.store.close()

    def _load_memory(self, dim: int) -> Memory:
        path = self.root / "memory.npz"
        if path.exists():
            mem = load_memory(path)
            if mem.dim != dim:
                raise IndexStoreError(f"{path}: memory has dim {mem.dim}, encoder gives {dim}")
            return mem
        c = self.cfg
        return Memory(
            dim,
            budget=c.budget,
            theta=c.theta,
            rank=c.rank,
            representative=c.representative,
            gap_seconds=c.gap_seconds,
        )

    def _load_cheap(self) -> CheapIndex:
        path = self.root / "cheap.npz"
        if not path.exists():
            return CheapIndex(self.cfg.cheap_capacity)
        try:
            with np.load(path) as data:
                return CheapIndex.from_state({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError) as exc:
            raise IndexStoreError(f"{path}: unreadable cheap index: {exc}") from exc

    def _load_state(self) -> None:
        path = self.root / "state.json"
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexStoreError(f"{path}: unreadable stream state: {exc}") from exc
        if data.get("version") != STATE_VERSION:
            raise SnapshotVersionError(f"{path}: state version {data.get('version')} != {STATE_VERSION}")
        st: IngestStats = self.ingestor.stats
        for key, value in data.get("stats", {}).items():
            setattr(st, key, value)
        clock = data.get("clock") or [[], []]
        self._clock_t, self._clock_wall = list(clock[0]), list(clock[1])
        self.meta = dict(data.get("meta", {}))
