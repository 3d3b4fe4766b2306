"""One encoder shared by every stream: fair batching across per-stream queues.

Each stream owns a bounded queue of super-images waiting for the encoder.
The worker builds a batch round-robin — one super-image from each stream in
turn, starting after the stream served first last time — up to the
encoder's ``batch_size``, so a fast file replay cannot starve a live camera:
every stream with work gets at least ``batch_size // streams`` slots of
every pass. The forward pass and the commits run in a thread; the event loop
only moves references.

Queue policy: :meth:`EncoderWorker.submit` *waits* while its stream's queue
is full (backpressure onto that stream's ingest task). For a live source the
pressure ends at its :class:`~streams.live.LatestQueue`, which drops stale
frames (counted); a file replay simply decodes more slowly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.core.superimage import SuperImage
from agent.models.encoder import Encoder

log = logging.getLogger(__name__)

Commit = Callable[[SuperImage, np.ndarray], None]
"""Hands an embedding back to the stream (called in the worker thread)."""
Listener = Callable[[str, SuperImage, np.ndarray], None]
"""Told about every committed embedding (called on the event loop)."""


@dataclass
class _Lane:
    commit: Commit
    capacity: int
    items: deque[SuperImage] = field(default_factory=deque)
    in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pending(self) -> int:
        return len(self.items) + self.in_flight


class EncoderWorker:
    """Batches super-images of many streams into shared forward passes.

    Use ``async with EncoderWorker(encoder) as worker``; :meth:`close` is
    idempotent and cancels the worker task (queued work is dropped; call
    :meth:`drain` first to finish it).
    """

    def __init__(self, encoder: Encoder, *, batch_size: int, queue_size: int = 8) -> None:
        self.encoder = encoder
        self.batch_size = max(1, batch_size)
        self.queue_size = queue_size
        self.listeners: list[Listener] = []
        self.passes = 0
        """Forward passes (batches) run."""
        self.images = 0
        """Super-images encoded."""
        self.errors = 0
        self._lanes: dict[str, _Lane] = {}
        self._order: list[str] = []
        self._next = 0
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> EncoderWorker:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the worker task (needs a running loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="encoder-worker")

    async def close(self) -> None:
        """Cancel the worker and wait for it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------- streams
    def open(self, stream: str, commit: Commit) -> None:
        """Give ``stream`` a lane; its embeddings go to ``commit``."""
        if stream in self._lanes:
            raise ValueError(f"stream {stream!r} already has an encoder lane")
        self._lanes[stream] = _Lane(commit, self.queue_size)
        self._order.append(stream)

    def forget(self, stream: str) -> None:
        """Drop ``stream``'s lane and its queued work (the stream is being removed)."""
        lane = self._lanes.pop(stream, None)
        if lane is None:
            return
        self._order.remove(stream)
        lane.items.clear()
        lane.changed.set()

    def depth(self, stream: str) -> int:
        """Super-images queued or being encoded for ``stream``."""
        lane = self._lanes.get(stream)
        return 0 if lane is None else lane.pending

    def depths(self) -> dict[str, int]:
        return {name: lane.pending for name, lane in self._lanes.items()}

    async def submit(self, stream: str, items: list[SuperImage]) -> None:
        """Queue super-images of ``stream``, waiting while its lane is full."""
        for si in items:
            lane = self._lanes.get(stream)
            if lane is None:
                return  # removed meanwhile: nothing to encode for
            while len(lane.items) >= lane.capacity and self._lanes.get(stream) is lane:
                lane.changed.clear()
                await lane.changed.wait()
            lane.items.append(si)
            self._work.set()

    async def drain(self, stream: str) -> None:
        """Wait until everything ``stream`` submitted is encoded and committed."""
        lane = self._lanes.get(stream)
        while lane is not None and lane.pending and self._lanes.get(stream) is lane:
            lane.changed.clear()
            await lane.changed.wait()

    # -------------------------------------------------------------- worker
    def _take_batch(self) -> list[tuple[str, _Lane, SuperImage]]:
        """Round-robin over lanes with work, one item per lane per round."""
        batch: list[tuple[str, _Lane, SuperImage]] = []
        names = self._order[self._next :] + self._order[: self._next]
        if self._order:
            self._next = (self._next + 1) % len(self._order)
        while len(batch) < self.batch_size:
            took = False
            for name in names:
                lane = self._lanes[name]
                if lane.items and len(batch) < self.batch_size:
                    batch.append((name, lane, lane.items.popleft()))
                    lane.in_flight += 1
                    lane.changed.set()
                    took = True
            if not took:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                vecs = await asyncio.to_thread(self._encode_and_commit, batch)
            except Exception:  # a model failure must not kill ingestion of every stream
                log.exception("encoder pass failed; %d super-images dropped", len(batch))
                self.errors += 1
                vecs = None
            for k, (name, lane, si) in enumerate(batch):
                lane.in_flight -= 1
                lane.changed.set()
                if vecs is not None and self._lanes.get(name) is lane:
                    for listener in self.listeners:
                        listener(name, si, vecs[k])

    def _encode_and_commit(self, batch: list[tuple[str, _Lane, SuperImage]]) -> np.ndarray:
        vecs = self.encoder.encode_images([si.image for _, _, si in batch])
        self.passes += 1
        self.images += len(batch)
        for (_, lane, si), vec in zip(batch, vecs, strict=True):
            lane.commit(si, vec)
        return vecs
