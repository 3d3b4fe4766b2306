"""Bench-only probes on a running :class:`~agent.service.pipeline.Service` (``bench.service_load``).

Like :mod:`bench.needle_trace`, these wrap seams of one service instance and
never ship in it: :class:`GcPauses` (cyclic-GC passes), :class:`QueueWaits`
(encoder-queue wait of every work item), :func:`time_trims` (each
``malloc_trim``), and :func:`legacy_round_robin`, the worker's batch order
before the fix, kept only to A/B it.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

from agent.channels.base import WorkItem
from agent.service.batch_worker import BatchWorker
from agent.service.pipeline import Service


class GcPauses:
    """Wall seconds of every cyclic-GC pass (any thread) while installed: a stop-the-world stall."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on)

    def _on(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t0))

    def summary(self) -> dict[str, Any]:
        full = [s for g, s in self.pauses if g == 2]
        return {
            "collections": len(self.pauses),
            "seconds": round(sum(s for _, s in self.pauses), 3),
            "gen2": len(full),
            "gen2_max_s": round(max(full), 3) if full else 0.0,
        }


def legacy_round_robin(worker: BatchWorker) -> None:
    """A/B only: the worker's batches start one lane later each time, as before the fix
    (``agent.service.batch_worker``: lanes at the end of the order then sit out batches)."""
    lanes: Any = worker._lanes

    def take() -> list[tuple[str, Any, WorkItem]]:
        order = worker._order
        names = order[worker._next :] + order[: worker._next]
        if order:
            worker._next = (worker._next + 1) % len(order)
        for name in names:
            if lanes[name].items and lanes[name].items[0].attempt > 0:
                return [worker._pop(name, lanes[name])]
        batch: list[tuple[str, Any, WorkItem]] = []
        while len(batch) < worker.batch_size:
            took = False
            for name in names:
                if lanes[name].items and len(batch) < worker.batch_size:
                    batch.append(worker._pop(name, lanes[name]))
                    took = True
            if not took:
                break
        return batch

    worker._take_batch = take  # type: ignore[method-assign]


class QueueWaits:
    """Encoder-queue wait of every work item (all streams): submitted -> its batch started.

    A hook on the image worker (bench-only, like :mod:`bench.needle_trace`): ``submit`` notes
    when each item was handed over (before any backpressure wait), the batch function when
    its batch began. Items still queued at the end count with their age so far, so a lane
    that never got a turn is not silently left out.
    """

    def __init__(self, worker: BatchWorker) -> None:
        self.waits: list[tuple[float, float]] = []
        """(batch start wall, seconds waited) per item encoded."""
        self._since: dict[int, float] = {}
        submit, fn = worker.submit, worker.fn

        async def timed_submit(stream: str, items: list[WorkItem]) -> None:
            now = time.time()
            for item in items:
                self._since[id(item)] = now
            await submit(stream, items)

        def timed_fn(items: list[WorkItem]) -> Any:
            now = time.time()
            for item in items:
                since = self._since.pop(id(item), None)
                if since is not None:
                    self.waits.append((now, now - since))
            return fn(items)

        worker.submit = timed_submit  # type: ignore[method-assign]
        worker.fn = timed_fn

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        done = np.asarray([w for at, w in self.waits if t0 <= at <= t1])
        waiting = [t1 - since for since in self._since.values() if since <= t1]
        pct = {f"p{q}_s": round(float(np.percentile(done, q)), 3) if len(done) else None for q in (50, 95)}
        return {
            "items": len(done),
            **pct,
            "max_s": round(float(done.max()), 3) if len(done) else None,
            "still_queued": len(waiting),
            "oldest_queued_s": round(max(waiting), 3) if waiting else None,
        }


def time_trims(svc: Service, walls: list[tuple[float, float]]) -> None:
    """Note (start, end) wall times of every ``malloc_trim`` the service's trimmer makes."""
    trimmer = svc.trimmer
    if trimmer is None:
        return
    trim = trimmer._trim

    def timed() -> bool:
        t0 = time.time()
        try:
            return trim()
        finally:
            walls.append((t0, time.time()))

    trimmer._trim = timed
