"""The visual channel: frames -> cheap index, gate, frame store, super-images -> encoder -> memory.

The first :class:`~agent.channels.base.Channel`. Ingest is sans-I/O apart
from the frame store's appends: :meth:`VisualChannel.push` returns
super-images as work items for the ``"image"`` batch worker (the prescreen
encoder), :meth:`VisualChannel.commit` folds their embeddings into the SVD
memory in stream order (see :mod:`agent.channels.ingest`), and
:meth:`VisualChannel.fail` retries a failed super-image up to
``max_attempts`` times, then drops it so nothing behind it waits.
:meth:`VisualChannel.search` prescreens the memory and refines on stored
frames (:mod:`agent.channels.retrieval`; blocking: run it in a thread).

Files, in the stream's folder (the layout predates channels, so the visual
channel keeps the stream folder's top level: :attr:`VisualChannel.keeps_root`)::

    memory.npz    anchors (SVD bases, representatives) - atomic snapshot
    cheap.npz     cheap-index ring buffer               - atomic snapshot
    ingest.json   ingest counters (frames, times, encoder passes) - atomic snapshot
    frames/       frame-store chunk files (append-only, self-healing)

Snapshots written before channels saved their own counters have no
``ingest.json``: :meth:`VisualChannel.restore` then reads the counters from
the ``stats`` of the stream's ``state.json``, where they used to be.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.channels.base import Channel, ChannelAnswer, ChannelQuery, WorkItem
from agent.channels.ingest import IngestStats, StreamIngestor
from agent.channels.refine import VisualPlan, refine_plans
from agent.channels.retrieval import FrameEmbeddingCache, plan_visual
from agent.config import MEMORY_RULES, IndexConfig
from agent.core.cheap_index import CheapIndex
from agent.core.memory import Memory
from agent.core.superimage import SuperImage
from agent.errors import IndexStoreError
from agent.models.encoder import Encoder
from agent.store.atomic import write_json, write_npz
from agent.store.frame_store import FrameStore
from agent.store.memory_store import load_memory, save_memory
from agent.store.versioned import read_versioned
from agent.types import Frame, RGBImage

log = logging.getLogger(__name__)

IMAGE_WORKER = "image"
"""The batch worker that encodes super-images (the prescreen encoder)."""
DEFAULT_ATTEMPTS = 3
"""Tries per super-image (the first and two retries) before it is dropped."""
COUNTERS_VERSION = 1
_LEGACY_STATE_VERSION = 1
"""Version of the stream ``state.json`` files that held these counters before ``ingest.json``."""
_COUNTERS = tuple(f.name for f in fields(IngestStats) if f.name != "extra")


def images_of(items: list[WorkItem]) -> list[RGBImage]:
    """The super-images of ``"image"`` work items: the encoder's batch input."""
    out = []
    for item in items:
        if not isinstance(item.payload, np.ndarray):
            raise TypeError(f"work item of {item.stream}/{item.channel} carries no image")
        out.append(item.payload)
    return out


class VisualChannel(Channel):
    """Super-image memory, cheap index and frame store of one stream.

    Built fresh (empty memory and cheap index; the frame store opens what is
    in ``folder/frames``); :meth:`restore` then loads a snapshot.
    """

    name = "visual"
    keeps_root: ClassVar[bool] = True

    def __init__(
        self,
        folder: Path,
        stream: str,
        cfg: IndexConfig,
        *,
        dim: int,
        image_size: int,
        refine: Encoder | None = None,
        cache: FrameEmbeddingCache | None = None,
        max_attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.stream = stream
        self.cfg = cfg
        self.refine = refine
        self.cache = cache or FrameEmbeddingCache()
        self.max_attempts = max(1, max_attempts)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.image_size = image_size
        self.memory = self._new_memory()
        self.cheap = CheapIndex(cfg.cheap_capacity)
        self.store = (
            FrameStore(
                self.folder / "frames",
                max_bytes=cfg.store_bytes,
                size=cfg.store_size,
                quality=cfg.store_quality,
            )
            if cfg.store_bytes > 0
            else None
        )
        self.ingestor = self._ingestor()
        self._closed = False

    def _ingestor(self) -> StreamIngestor:
        return StreamIngestor(
            self.stream,
            self.cfg,
            memory=self.memory,
            cheap=self.cheap,
            store=self.store,
            image_size=self.image_size,
        )

    # ---------------------------------------------------------------- ingest
    @property
    def stats(self) -> IngestStats:
        return self.ingestor.stats

    @property
    def frame_seconds(self) -> float:
        return 1.0 / self.cfg.fps

    @property
    def last_time(self) -> float | None:
        return self.ingestor.stats.last_time

    def push(self, frame: Frame) -> list[WorkItem]:
        return [self._item(si) for si in self.ingestor.push(frame)]

    def flush(self) -> list[WorkItem]:
        return [self._item(si) for si in self.ingestor.flush()]

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        self.ingestor.commit(self._si(item), result)

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        si = self._si(item)
        self.counters.failed += 1
        if not self.ingestor.owns(si):
            raise KeyError("fail() of a work item this channel is not waiting for")
        if item.attempt + 1 < self.max_attempts:
            self.counters.retried += 1
            retry = self._item(si)
            retry.attempt = item.attempt + 1
            return [retry]
        self.counters.dropped += 1
        self.ingestor.drop(si)
        return []

    @property
    def in_flight(self) -> int:
        return self.ingestor.in_flight

    def _item(self, si: SuperImage) -> WorkItem:
        return WorkItem(self.stream, self.name, IMAGE_WORKER, si.image, si, si.start, si.end)

    def _si(self, item: WorkItem) -> SuperImage:
        if item.channel != self.name or not isinstance(item.ref, SuperImage):
            raise KeyError(f"work item of channel {item.channel!r} handed to the visual channel")
        return item.ref

    # ---------------------------------------------------------------- search
    def search(self, query: ChannelQuery) -> ChannelAnswer:
        """Prescreen + refine without a time limit (blocking; needs the refine encoder given at construction)."""
        return self.refine_plans({self.stream: self.plan(query)})[self.stream]

    def plan(self, query: ChannelQuery) -> VisualPlan:
        """The prescreen's anchor-level answer and what refining it takes (fast; reads memory and cheap index)."""
        return plan_visual(self, query, query.cfg)

    def refine_plans(
        self, plans: dict[str, VisualPlan], deadline: float | None = None
    ) -> dict[str, ChannelAnswer]:
        """Refine ``plans`` (of this channel's streams sharing its encoder) until ``deadline`` (time.monotonic)."""
        if self.refine is None:
            raise IndexStoreError("the visual channel was opened without a refine encoder")
        return refine_plans(plans, self.refine, self.cache, deadline=deadline)

    def background(self, vector: np.ndarray) -> np.ndarray:
        # The prescreen's own scores (the memory's scorer), so calibration sees what ranks.
        return self.memory.scores(vector)

    def resume_time(self) -> float | None:
        """Latest of the memory's, the cheap index's and the frame store's last times."""
        times = [self.stats.last_time, self.cheap.last_time]
        if self.store is not None and len(self.store):
            times.append(float(self.store.times()[-1]))
        known = [t for t in times if t is not None]
        return max(known) if known else None

    # ------------------------------------------------------------- snapshots
    def save(self, folder: Path | None = None) -> None:
        """Snapshot memory, cheap index and counters under ``folder`` (default: the channel's own)."""
        root = self.folder if folder is None else Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        save_memory(self.memory, root / "memory.npz")
        write_npz(root / "cheap.npz", self.cheap.state_dict())
        st = self.stats
        write_json(
            root / "ingest.json",
            {"version": COUNTERS_VERSION, "stats": {k: getattr(st, k) for k in _COUNTERS}},
        )
        if self.store is not None:
            self.store.flush()

    def restore(self, folder: Path | None = None) -> None:
        """Load memory, cheap index and counters saved under ``folder`` (default: the channel's own).

        Raises IndexStoreError for unreadable files or a memory of another
        dimension than the encoder's. The frame store is not part of it: it
        opened its append-only files at construction.
        """
        root = self.folder if folder is None else Path(folder)
        self.memory = self._load_memory(root / "memory.npz")
        self.cheap = self._load_cheap(root / "cheap.npz")
        self.ingestor = self._ingestor()
        for key, value in self._load_counters(root).items():
            if key in _COUNTERS:
                setattr(self.stats, key, value)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.store is not None:
            self.store.close()

    def _new_memory(self) -> Memory:
        c = self.cfg
        return Memory(
            self.dim,
            budget=c.budget,
            theta=c.theta,
            rank=c.rank,
            representative=c.representative,
            merge=c.merge,
            scorer=c.scorer,
            gap_seconds=c.gap_seconds,
        )

    def _load_memory(self, path: Path) -> Memory:
        if not path.exists():
            return self._new_memory()
        mem = load_memory(path)
        if mem.dim != self.dim:
            raise IndexStoreError(f"{path}: memory has dim {mem.dim}, encoder gives {self.dim}")
        its = [str(getattr(mem, r)) for r in MEMORY_RULES]
        ours = [str(getattr(self.cfg, r)) for r in MEMORY_RULES]
        if its != ours:
            # The snapshot's rules are kept (switching a built memory's token or merges silently
            # would be worse); said aloud, since this stream now ranks unlike the index's others.
            log.warning(
                "stream %s: its memory was built with %s %s, the index says %s; the memory keeps its own",
                self.stream,
                "/".join(MEMORY_RULES),
                "/".join(its),
                "/".join(ours),
            )
        return mem

    def _load_cheap(self, path: Path) -> CheapIndex:
        if not path.exists():
            return CheapIndex(self.cfg.cheap_capacity)
        try:
            with np.load(path) as data:
                return CheapIndex.from_state({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError) as exc:
            raise IndexStoreError(f"{path}: unreadable cheap index: {exc}") from exc

    @staticmethod
    def _load_counters(root: Path) -> dict[str, Any]:
        data = read_versioned(root / "ingest.json", COUNTERS_VERSION, what="visual ingest counters")
        if data is None:  # a snapshot from before channels saved their own counters
            data = read_versioned(root / "state.json", _LEGACY_STATE_VERSION, what="stream state")
        stats = {} if data is None else data.get("stats", {})
        if not isinstance(stats, dict):
            raise IndexStoreError(f"{root}: unreadable visual ingest counters: not an object")
        return stats
