"""A batch worker shared by every stream: fair batching, backpressure, a failure path.

Channels hand out :class:`~agent.channels.base.WorkItem`s; a worker serves
the items of one kind (``"image"``: the prescreen encoder's
``encode_images``; whisper or OCR later) with a blocking *batch function*
that maps a list of payloads to one result per payload.

Fairness: each stream owns a bounded lane. A batch is built round-robin - one
item from each stream in turn, starting after the stream served *last* in the
previous batch - up to ``batch_size``, so a fast file replay cannot starve a live
camera, and with more busy lanes than ``batch_size`` each lane waits at most
``ceil(lanes / batch_size)`` batches. (Starting one lane later each batch, as this
worker once did, let the lanes just past the start win every batch while those
at the end of the order waited lanes - batch_size batches in a row; with 28 lanes,
batch 8 and a modelled encoder at 93 % load, ``bench.worker_fairness`` measured a
p95 queue wait of 6.3 s that way and 3.3 s now.) The batch function and the commits run in a thread; the event loop
only moves references.

Queue policy: :meth:`BatchWorker.submit` *waits* while its stream's lane
holds ``queue_size`` items (backpressure onto that stream's ingest task; a
live source's latest-wins queue then drops stale frames, a replay decodes
more slowly). Retries re-enter the front of their lane, so a lane holds at
most ``queue_size + batch_size`` items and ``pending`` never exceeds that.

Failure path: when the batch function raises, every item of the batch is
reported to its stream (``sink.fail``); the channel returns the items to try
again or drops them (a dropped item never blocks what comes after it). The
worker counts ``failed`` / ``retried`` / ``dropped`` per (stream, channel)
and ``errors`` (failed batches) for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.channels.base import WorkCounters, WorkItem

log = logging.getLogger(__name__)

BatchFn = Callable[[list[WorkItem]], "Sequence[np.ndarray] | np.ndarray"]
"""Blocking: one result per item, in order - a list, or an (n, ...) array (runs in a worker thread)."""
Listener = Callable[[WorkItem, np.ndarray], None]
"""Told about every committed result (called on the event loop)."""


class Sink(Protocol):
    """Where a stream's results and failures go (a StreamState; thread-safe)."""

    def commit(self, item: WorkItem, result: np.ndarray) -> None: ...

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]: ...


@dataclass
class _Lane:
    sink: Sink
    capacity: int
    items: deque[WorkItem] = field(default_factory=deque)
    in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pending(self) -> int:
        return len(self.items) + self.in_flight


class BatchWorker:
    """Batches work items of many streams into shared calls of one batch function.

    Use ``async with BatchWorker(name, fn, batch_size=...) as worker``;
    :meth:`close` is idempotent and cancels the worker task (queued work is
    dropped; call :meth:`drain` first to finish it).
    """

    def __init__(self, name: str, fn: BatchFn, *, batch_size: int, queue_size: int = 8) -> None:
        self.name = name
        self.fn = fn
        self.batch_size = max(1, batch_size)
        self.queue_size = max(1, queue_size)
        self.listeners: list[Listener] = []
        self.passes = 0
        """Batches run successfully."""
        self.images = 0
        """Items processed successfully."""
        self.errors = 0
        """Batches whose batch function raised."""
        self.busy_seconds = 0.0
        """Wall seconds spent in the batch function and commits (busy / elapsed = duty cycle)."""
        self._counters: dict[tuple[str, str], WorkCounters] = {}
        self._lanes: dict[str, _Lane] = {}
        self._order: list[str] = []
        self._next = 0
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> BatchWorker:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the worker task (needs a running loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"batch-worker-{self.name}")

    async def close(self) -> None:
        """Cancel the worker and wait for it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------- streams
    def open(self, stream: str, sink: Sink) -> None:
        """Give ``stream`` a lane; results and failures go to ``sink``."""
        if stream in self._lanes:
            raise ValueError(f"stream {stream!r} already has a {self.name} lane")
        self._lanes[stream] = _Lane(sink, self.queue_size)
        self._order.append(stream)

    def forget(self, stream: str) -> None:
        """Drop ``stream``'s lane and its queued work (the stream is being removed)."""
        lane = self._lanes.pop(stream, None)
        if lane is None:
            return
        i = self._order.index(stream)
        del self._order[i]
        if i < self._next:  # the lanes after it moved up one: the cursor follows the lane it named
            self._next -= 1
        lane.items.clear()
        lane.changed.set()

    def depth(self, stream: str) -> int:
        """Items queued or in the batch function for ``stream``."""
        lane = self._lanes.get(stream)
        return 0 if lane is None else lane.pending

    def depths(self) -> dict[str, int]:
        return {name: lane.pending for name, lane in self._lanes.items()}

    def counters(self) -> dict[tuple[str, str], WorkCounters]:
        """Failure counters by (stream, channel); streams keep theirs after removal."""
        return {k: WorkCounters(c.failed, c.retried, c.dropped) for k, c in self._counters.items()}

    async def submit(self, stream: str, items: list[WorkItem]) -> None:
        """Queue ``items`` of ``stream``, waiting while its lane is full."""
        for item in items:
            lane = self._lanes.get(stream)
            if lane is None:
                return  # removed meanwhile: nothing to do it for
            while len(lane.items) >= lane.capacity and self._lanes.get(stream) is lane:
                lane.changed.clear()
                await lane.changed.wait()
            lane.items.append(item)
            self._work.set()

    async def drain(self, stream: str) -> None:
        """Wait until everything ``stream`` submitted is committed or dropped."""
        lane = self._lanes.get(stream)
        while lane is not None and lane.pending and self._lanes.get(stream) is lane:
            lane.changed.clear()
            await lane.changed.wait()

    # -------------------------------------------------------------- worker
    def _take_batch(self) -> list[tuple[str, _Lane, WorkItem]]:
        """Round-robin over lanes with work, one item per lane per round.

        A retry (``attempt > 0``) runs in a batch of its own: an item that
        breaks the batch function then fails alone instead of taking the
        items batched with it down through their retries too.
        """
        batch: list[tuple[str, _Lane, WorkItem]] = []
        names = self._order[self._next :] + self._order[: self._next]
        for name in names:
            lane = self._lanes[name]
            if lane.items and lane.items[0].attempt > 0:
                self._resume_after(name)
                return [self._pop(name, lane)]
        while len(batch) < self.batch_size:
            took = False
            for name in names:
                lane = self._lanes[name]
                if lane.items and len(batch) < self.batch_size:
                    batch.append(self._pop(name, lane))
                    took = True
            if not took:
                break
        if batch:
            self._resume_after(batch[-1][0])
        return batch

    def _resume_after(self, name: str) -> None:
        """The next batch starts with the lane after ``name`` (the last one served)."""
        self._next = (self._order.index(name) + 1) % len(self._order)

    @staticmethod
    def _pop(name: str, lane: _Lane) -> tuple[str, _Lane, WorkItem]:
        item = lane.items.popleft()
        lane.in_flight += 1
        lane.changed.set()
        return name, lane, item

    async def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                results = await asyncio.to_thread(self._process, batch)
            except Exception as exc:  # one failed batch must not stop any stream's ingest
                log.exception("%s batch of %d items failed", self.name, len(batch))
                self.errors += 1
                retries = await asyncio.to_thread(self._fail_all, batch, f"{type(exc).__name__}: {exc}")
                self._requeue(retries)
                results = None
            for k, (name, lane, item) in enumerate(batch):
                lane.in_flight -= 1
                lane.changed.set()
                result = None if results is None else results[k]
                if result is not None and self._lanes.get(name) is lane:
                    for listener in self.listeners:
                        listener(item, result)

    def _process(self, batch: list[tuple[str, _Lane, WorkItem]]) -> list[np.ndarray | None]:
        """Run the batch function and commit each result (worker thread)."""
        t0 = time.perf_counter()
        try:
            return self._run_and_commit(batch)
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def _run_and_commit(self, batch: list[tuple[str, _Lane, WorkItem]]) -> list[np.ndarray | None]:
        results = list(self.fn([item for _, _, item in batch]))
        if len(results) != len(batch):
            raise ValueError(f"{self.name}: {len(results)} results for {len(batch)} items")
        self.passes += 1
        self.images += len(batch)
        out: list[np.ndarray | None] = []
        for (_, lane, item), result in zip(batch, results, strict=True):
            try:
                lane.sink.commit(item, result)
                out.append(result)
            except Exception:  # a result the channel cannot take (a bug): lose the item, not the batch
                log.exception(
                    "%s: commit of %s/%s failed; item dropped", self.name, item.stream, item.channel
                )
                c = self._count(item)
                c.failed += 1
                c.dropped += 1
                out.append(None)
        return out

    def _fail_all(self, batch: list[tuple[str, _Lane, WorkItem]], error: str) -> list[tuple[str, WorkItem]]:
        """Report every item of a failed batch to its stream (worker thread); collect retries."""
        retries: list[tuple[str, WorkItem]] = []
        for name, lane, item in batch:
            c = self._count(item)
            c.failed += 1
            try:
                again = lane.sink.fail(item, error)
            except Exception:  # the stream forgot the item (removed): nothing to retry
                log.exception("%s: fail() of %s/%s raised", self.name, item.stream, item.channel)
                again = []
            if again:
                c.retried += len(again)
            else:
                c.dropped += 1
            retries.extend((name, retry) for retry in again)
        return retries

    def _requeue(self, retries: list[tuple[str, WorkItem]]) -> None:
        """Retries go to the front of their lane (ahead of newer work, as stream order wants)."""
        for name, item in reversed(retries):
            lane = self._lanes.get(name)
            if lane is not None:
                lane.items.appendleft(item)
                self._work.set()

    def _count(self, item: WorkItem) -> WorkCounters:
        return self._counters.setdefault((item.stream, item.channel), WorkCounters())
