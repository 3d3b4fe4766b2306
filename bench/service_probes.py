"""Bench-only probes on a running :class:`~agent.service.pipeline.Service` (``bench.service_load``).

Like :mod:`bench.needle_trace`, these wrap seams of one service instance and
never ship in it: :class:`GcPauses` (cyclic-GC passes), :class:`QueueWaits`
(encoder-queue wait of every work item), :func:`time_trims` (each
``malloc_trim``), and :func:`legacy_round_robin`, the worker's batch order
before the fix, kept only to A/B it.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
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
        self.batch_cpu: list[tuple[float, float]] = []
        """(batch start wall, CPU seconds of the calling thread in the batch function) per batch."""
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
            c0 = time.thread_time()
            try:
                return fn(items)
            finally:
                self.batch_cpu.append((now, time.thread_time() - c0))

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
            "batch_fn_thread_cpu_s": round(sum(c for at, c in self.batch_cpu if t0 <= at <= t1), 2),
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


def _thread_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every thread of this process, by thread id (Linux)."""
    out: dict[int, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


class ThreadCpu:
    """CPU seconds per thread group over a window: the CPU profile that names the live bound.

    Python threads are grouped by name (``decode-<stream>``: demux, H.264 decode, sampling,
    RGB conversion; ``asyncio_*``: the default executor, which runs both the encoder's batch
    function and each frame's push (cheap index, gate, JPEG store, tiling); ``MainThread``:
    the event loop). Threads Python did not start are native: those alive at
    :meth:`mark_native` (called once the encoder has run, before the streams open) are the
    inference runtime's pool, those started later belong to the decoders (FFmpeg threads).
    Threads come and go (a looping replay opens its file, and a decode thread, per loop), so
    every thread is read every ``every`` seconds and keeps its last reading; what threads
    spent between their last reading and their end is ``unattributed`` (process CPU minus
    the groups). Linux only (``/proc/self/task``); elsewhere every figure is empty.
    """

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self._runtime: set[int] = set()
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0

    def mark_native(self) -> None:
        """Native threads alive now count as the inference runtime's pool."""
        python = {t.native_id for t in threading.enumerate()}
        self._runtime = {tid for tid in _ticks_or_empty() if tid not in python}

    def start(self) -> None:
        self._first = _ticks_or_empty()
        self._cpu0 = time.process_time()
        self._read()
        self._thread = threading.Thread(target=self._poll, name="bench-threadcpu", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._read()

    def _read(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self._names[t.native_id] = t.name
        self._last.update(_ticks_or_empty())

    def summary(self, elapsed: float) -> dict[str, Any]:
        """Stop polling; CPU seconds per group since :meth:`start`, and the cores they kept busy."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()
        process = time.process_time() - self._cpu0
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        groups: dict[str, float] = {}
        for tid, ticks in self._last.items():
            group = self._group(tid)
            groups[group] = groups.get(group, 0.0) + (ticks - self._first.get(tid, 0)) / hz
        groups["unattributed"] = process - sum(groups.values())
        return {
            "cpu_s": {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "process_cpu_s": round(process, 1),
            "cores_busy": round(process / elapsed, 2) if elapsed > 0 else None,
        }

    def _group(self, tid: int) -> str:
        name = self._names.get(tid)
        if name is None:
            return "native: inference runtime" if tid in self._runtime else "native: decoders"
        if name.startswith("asyncio_"):
            return "asyncio executor"
        return name.split("-", 1)[0] if "-" in name else name


def _ticks_or_empty() -> dict[int, int]:
    try:
        return _thread_ticks()
    except OSError:
        return {}
