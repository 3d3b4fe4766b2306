"""Inline ingest's encoder stage in its own thread: decode, tiling and encoding overlap.

:meth:`agent.index.video_index.VideoIndex.ingest` pushes frames on the
caller's thread (cheap index, frame store, tiling) and hands each full batch
of ``(owner, work item)`` pairs to :class:`EncodePipeline`, which runs the
workers the items name in one worker thread. The results are committed back
on the caller's thread (``owner.commit(item, result)``), batch by batch in
submission order, so a channel is only ever touched by the thread that
pushes to it and the memory sees its events in stream order.

Queue policy: at most ``depth`` batches wait behind the one being encoded;
:meth:`EncodePipeline.submit` then waits for the oldest (backpressure: the
caller, and with it the decoder, waits; nothing is dropped). The worker
thread is owned here: :meth:`close` (idempotent, also from ``with``) cancels
the batches not started and joins it. A worker's error is raised on the
caller's thread by the :meth:`submit`, :meth:`poll` or :meth:`drain` that
reaches its batch, as inline encoding would raise it.

:attr:`EncodePipeline.waits` tells who waited for whom (seconds): the worker
busy encoding, and the caller blocked on a batch not yet encoded (backpressure
or the final drain). The archive-pass bench reports them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.channels.base import WorkItem, group_by_worker

DEFAULT_DEPTH = 2
"""Batches queued behind the running one (16 super-images each by default: ~3 MiB at 256 px)."""

Worker = Callable[[list[WorkItem]], list[np.ndarray]]


class Owner(Protocol):
    """What takes a work item's result back (a :class:`~agent.index.stream_state.StreamState`)."""

    def commit(self, item: WorkItem, result: np.ndarray) -> None: ...


Entry = tuple[Owner, WorkItem]


def run_by_worker(batch: Sequence[Entry], workers: Mapping[str, Worker], *, runner: str) -> list[np.ndarray]:
    """The result of each entry of ``batch`` from the worker its item names, in ``batch`` order.

    Blocking (any thread). An item naming a worker not in ``workers`` is a
    configuration bug: :class:`~agent.errors.ConfigError` before anything of
    the batch runs (as the service's :class:`~agent.service.workers.Workers` does).
    """
    by_worker = group_by_worker(batch, lambda entry: entry[1], workers, runner=runner)
    results: dict[int, np.ndarray] = {}
    for name, group in by_worker.items():
        vecs = workers[name]([item for _, item in group])
        for (_, item), vec in zip(group, vecs, strict=True):
            results[id(item)] = vec
    return [results[id(item)] for _, item in batch]


@dataclass
class PipelineWaits:
    """Seconds the encoder stage spent working and the caller spent waiting for it (wall clock)."""

    encoding_s: float = 0.0
    """The worker running batches (in the caller's thread when not threaded)."""
    caller_blocked_s: float = 0.0
    """The caller waiting for a batch to finish: a full queue (backpressure) or :meth:`EncodePipeline.drain`."""
    batches: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "encoding_s": round(self.encoding_s, 2),
            "caller_blocked_s": round(self.caller_blocked_s, 2),
            "batches": self.batches,
        }


class EncodePipeline:
    """Runs batches through ``workers`` in one worker thread; commits on the caller's thread, in order."""

    def __init__(
        self,
        workers: Mapping[str, Worker],
        *,
        runner: str,
        depth: int = DEFAULT_DEPTH,
        threaded: bool = True,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """``threaded=False``: each batch runs and commits inside :meth:`submit`, on the caller's
        thread (no worker thread: the serial baseline and the per-stage profile). ``on_start``
        runs first in the worker thread (threaded only: an archive pass lowers its priority)."""
        if depth < 0:
            raise ValueError("depth must be >= 0")
        self._workers = workers
        self._runner = runner
        self.depth = depth
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="vmr-encode", initializer=on_start) if threaded else None
        )
        self._queued: deque[tuple[list[Entry], Future[list[np.ndarray]]]] = deque()
        self._closed = False
        self.waits = PipelineWaits()

    def __enter__(self) -> EncodePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet committed."""
        return len(self._queued)

    def submit(self, batch: list[Entry]) -> None:
        """Queue ``batch`` (empty: nothing); waits for the oldest while ``depth`` + 1 are in flight."""
        if self._closed:
            raise RuntimeError("submit() on a closed encode pipeline")
        if not batch:
            return
        if self._pool is None:
            for (owner, item), vec in zip(batch, self._run(batch), strict=True):
                owner.commit(item, vec)
            return
        while len(self._queued) > self.depth:
            self._commit_oldest()
        self._queued.append((batch, self._pool.submit(self._run, batch)))

    def poll(self) -> None:
        """Commit the batches already encoded, oldest first (never waits)."""
        while self._queued and self._queued[0][1].done():
            self._commit_oldest()

    def drain(self) -> None:
        """Wait for every submitted batch and commit it, in order."""
        while self._queued:
            self._commit_oldest()

    def close(self) -> None:
        """Cancel the batches not started, wait for the running one, stop the thread (idempotent).

        Results not committed by then are discarded: :meth:`drain` first keeps them.
        """
        if self._closed:
            return
        self._closed = True
        for _, future in self._queued:
            future.cancel()
        self._queued.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self, batch: list[Entry]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            return run_by_worker(batch, self._workers, runner=self._runner)
        finally:  # one worker thread: these sums are never written concurrently
            self.waits.encoding_s += time.perf_counter() - t0
            self.waits.batches += 1

    def _commit_oldest(self) -> None:
        batch, future = self._queued.popleft()
        if not future.done():
            t0 = time.perf_counter()
            future.exception()  # waits; the error itself is raised by result() below
            self.waits.caller_blocked_s += time.perf_counter() - t0
        for (owner, item), vec in zip(batch, future.result(), strict=True):
            owner.commit(item, vec)
