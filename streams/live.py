"""Building blocks shared by live sources (RTSP, WHIP, segment folders).

* :class:`LatestQueue` — the bounded hand-over between a producer (a decode
  thread or an aiortc track reader) and the asyncio consumer. Policy:
  **latest wins** — when the queue is full the *oldest* item is dropped and
  counted, because for a live camera a stale frame is worth less than the
  newest one, and the producer must never block on a slow consumer.
* :class:`LiveClock` — maps each connection's raw timestamps onto one
  monotonic stream timeline that survives reconnects and frames without pts.
* :class:`LiveCounters` — the counters every source exposes.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_MIN_STEP = 1e-3
"""Smallest forward step (seconds) between two emitted frames: keeps time strictly increasing."""


@dataclass(slots=True)
class LiveCounters:
    """Counters of one source; plain ints, read from any thread.

    ``frames_in``: decoded frames received from the source (before sampling).
    ``frames_out``: frames handed to the consumer.
    ``dropped``: sampled frames discarded because the consumer fell behind.
    ``reconnects``: sessions started after the first one.
    """

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    reconnects: int = 0


class QueueClosed(Exception):
    """Raised by :meth:`LatestQueue.get` once the queue is closed and drained.

    Internal control flow between a producer and its own source; it never
    reaches a vmr caller (sources turn it into ``StopAsyncIteration``).
    """


class LatestQueue(Generic[T]):
    """Bounded asyncio queue where the latest item wins.

    ``put_nowait`` never blocks: when ``maxsize`` items are waiting, the
    oldest is discarded and :attr:`dropped` grows. ``put_threadsafe`` is
    the same from a foreign (decode) thread. :meth:`close` ends the stream:
    the consumer still receives the items already queued, then either
    :class:`QueueClosed` or the error passed to ``close``. Not thread-safe
    except through ``put_threadsafe``/``close_threadsafe``.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[T] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def put_nowait(self, item: T) -> bool:
        """Queue ``item``; return False when it displaced the oldest item."""
        if self._closed:
            return True  # a late producer after close: nothing is waiting for it
        kept = True
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
            kept = False
        self._items.append(item)
        self._wakeup.set()
        return kept

    def put_threadsafe(self, loop: asyncio.AbstractEventLoop, item: T) -> bool:
        """Queue ``item`` from another thread; False when the loop is gone."""
        try:
            loop.call_soon_threadsafe(self.put_nowait, item)
        except RuntimeError:  # loop closed: the consumer is gone
            return False
        return True

    def close(self, error: BaseException | None = None) -> None:
        """End the stream; queued items are still delivered first. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wakeup.set()

    def close_threadsafe(self, loop: asyncio.AbstractEventLoop, error: BaseException | None = None) -> None:
        """:meth:`close` from another thread."""
        try:
            loop.call_soon_threadsafe(self.close, error)
        except RuntimeError:
            pass

    async def get(self) -> T:
        """Next item; raises :class:`QueueClosed` (or the close error) at the end."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise QueueClosed
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


@dataclass(slots=True)
class Gap:
    """A hole in a live stream's timeline (a reconnect or a pts jump)."""

    start: float
    end: float


@dataclass
class LiveClock:
    """One monotonic timeline across sessions (reconnects) of a live source.

    Each session reports raw times (seconds from its own first pts) or None
    when a frame has no pts. The first frame of the first session is at 0.
    A new session (or a raw time going backwards) is re-anchored so that it
    continues after the last emitted time by the *wall-clock time that
    really passed* — a reconnect that took 4 s leaves a 4 s gap, recorded in
    :attr:`gaps`. A frame without pts gets the previous time plus the
    elapsed arrival time, so it is never placed before its predecessor.
    """

    last_t: float | None = None
    gaps: list[Gap] = field(default_factory=list)
    _offset: float | None = None
    _last_arrival: float | None = None
    _new_session: bool = False

    def new_session(self) -> None:
        """A new connection starts: its raw times restart from anything."""
        self._offset = None
        self._new_session = self.last_t is not None

    def map(self, raw: float | None, arrival: float) -> float:
        """Stream time of a frame with raw session time ``raw`` arriving at ``arrival``."""
        if self.last_t is None or self._last_arrival is None:
            expected = 0.0
        else:
            expected = self.last_t + max(arrival - self._last_arrival, _MIN_STEP)
        if raw is None:
            t = expected
        else:
            if self._offset is None or (self.last_t is not None and raw + self._offset <= self.last_t):
                # New session, or the sender restarted its clock: continue from here.
                self._offset = expected - raw
            t = raw + self._offset
        if self.last_t is not None:
            if self._new_session:
                self.gaps.append(Gap(self.last_t, t))
            t = max(t, self.last_t + _MIN_STEP)
        self._new_session = False
        self.last_t = t
        self._last_arrival = arrival
        return t


class CountedSource:
    """Counter properties shared by live sources.

    A subclass sets ``frames_in``, ``frames_out``, ``reconnects``, a
    ``_queue`` (:class:`LatestQueue`) and a ``_clock`` (:class:`LiveClock`).
    """

    frames_in: int
    frames_out: int
    reconnects: int
    _queue: LatestQueue[Any]
    _clock: LiveClock

    @property
    def dropped(self) -> int:
        """Sampled frames discarded because the consumer fell behind."""
        return self._queue.dropped

    @property
    def gaps(self) -> list[Gap]:
        """Holes in the timeline left by reconnects or publisher changes."""
        return list(self._clock.gaps)

    @property
    def counters(self) -> LiveCounters:
        """A snapshot of the counters."""
        return LiveCounters(self.frames_in, self.frames_out, self.dropped, self.reconnects)

    async def _next_frame(self) -> Any:
        """The next queued frame, counted; StopAsyncIteration once the queue closes."""
        try:
            frame = await self._queue.get()
        except QueueClosed:
            raise StopAsyncIteration from None
        self.frames_out += 1
        return frame
