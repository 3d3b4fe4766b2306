"""Periodic return of the C heap's free pages to the system (glibc ``malloc_trim``).

Why: a weeks-long service allocates and frees steadily in many threads
(decoder threads that come and go with every file pass or reconnect, the
``to_thread`` pool, the encoder, JSON and base64 of every query). glibc
keeps freed blocks in its per-thread arenas and returns memory to the
system only from the top of the main heap, so the resident set creeps up
with no live object behind it. Measured (``bench.soak --streams 4 --clients
4 --seconds 360 --warmup 120 --tracemalloc 25 --malloc-trim``): with
``malloc_trim(0)`` before every 10-s sample, RSS went from 1146 to 1070 MiB
after the warm-up while the traced Python heap grew 4.5 MiB (the refine
cache filling towards its bound, in-flight queries); untrimmed, 8 streams
grew 7 % in the same stretch of a 30-minute soak.

:class:`HeapTrimmer` owns one task that calls :func:`trim_heap` (of
:mod:`agent.process_memory`, shared with the model loaders) every
``period`` seconds, in a worker thread (the call walks every arena and
takes each one's lock; it must not stall the event loop). Off glibc it does
nothing. :meth:`HeapTrimmer.close` is idempotent; it cancels and awaits the
task.

Only on growth (``growth_bytes``): a trim is not free under load. It walks every
arena holding its lock, so every thread that allocates meanwhile (decoders, the
encoder's commit, the event loop sending a ``moment``) waits, and the pages it
hands back are faulted in again by the next frames. At 20 live 720p streams on
2 shared cores (``bench.service_load``, py-spy) a trim took 0.4 s (0.01-0.13 s in
other runs), every 30 s; two needles of the 20-stream run stalled 0.43-0.49 s in
``commit`` (the others 0.003 s), which fits. So each
period reads RSS (``/proc/self/statm``, microseconds) and trims only when it grew
``growth_bytes`` above the level the last trim left (or the lowest seen since):
steady-state churn reuses its freed pages and is left alone, a creep is still
cut back within ``growth_bytes``. ``growth_bytes=0`` trims every period. The other remedy, applied once when the service is built:
:func:`agent.process_memory.limit_heap` caps the number of arenas and fixes
the mmap threshold (``ServiceConfig.malloc_arenas`` / ``malloc_mmap_threshold``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.process_memory import rss_bytes, trim_heap

__all__ = ["HeapTrimmer", "TrimStats", "rss_bytes", "trim_heap"]

log = logging.getLogger(__name__)


@dataclass
class TrimStats:
    """What the trimmer did: calls, bytes of RSS given back (summed), seconds spent in the calls."""

    trims: int = 0
    skipped: int = 0
    """Periods that found RSS within ``growth_bytes`` of the last trim's level (no trim)."""
    released_bytes: int = 0
    seconds: float = 0.0


class HeapTrimmer:
    """Calls ``trim`` every ``period`` seconds in a thread until :meth:`close`.

    ``trim`` is :func:`trim_heap` unless a test gives another (it returns
    whether memory was released). A failing call is logged and the next
    period tries again: trimming is an optimisation, never a reason to stop.
    """

    def __init__(
        self,
        period: float,
        trim: Callable[[], bool] = trim_heap,
        *,
        growth_bytes: int = 0,
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        """``growth_bytes``: RSS growth since the last trim that makes a period trim (0: every
        period); ``rss``: resident bytes now (a test gives another). ValueError for a period
        <= 0 or a negative growth."""
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, not {period}")
        if growth_bytes < 0:
            raise ValueError(f"growth_bytes must be >= 0, not {growth_bytes}")
        self.period = period
        self.growth_bytes = growth_bytes
        self.stats = TrimStats()
        self._trim = trim
        self._rss = rss
        self._floor: int | None = None
        """RSS the last trim left, lowered to any smaller reading since; None: no trim yet."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the periodic task (once; after :meth:`close` it stays closed)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._loop(), name="heap-trim")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # the next period tries again
                log.exception("malloc_trim failed; retrying in %.0f s", self.period)

    def tick(self) -> bool:
        """One period: trim when RSS grew ``growth_bytes`` past the floor (the first period always
        trims, setting it); True when it trimmed (blocking: the loop runs it in a thread)."""
        now = self._rss()
        if self._floor is not None and self.growth_bytes and now < self._floor + self.growth_bytes:
            self._floor = min(self._floor, now)
            self.stats.skipped += 1
            return False
        self.trim_once(now)
        return True

    def trim_once(self, before: int | None = None) -> None:
        """One trim, counted (blocking); ``before``: RSS just read, if the caller has it."""
        before = self._rss() if before is None else before
        t0 = time.perf_counter()
        self._trim()
        self.stats.seconds += time.perf_counter() - t0
        self.stats.trims += 1
        self._floor = after = self._rss()
        self.stats.released_bytes += max(0, before - after)

    async def close(self) -> None:
        """Stop the task and wait for it (idempotent)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
