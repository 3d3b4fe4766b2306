"""The one hand-over of media from a producer (a decode thread, an aiortc reader) to asyncio.

:class:`Bridge` is a bounded queue with one of two policies, declared by the
source that owns it:

* ``"latest"`` — live sources. :meth:`Bridge.put` never blocks: when
  ``maxsize`` items wait, the *oldest* is discarded and counted in
  :attr:`Bridge.dropped`, because for a live camera a stale frame is worth
  less than the newest one, and the producer must never stall on a slow
  consumer.
* ``"block"`` — replays (files, segment folders). :meth:`Bridge.put` waits
  while the queue is full (backpressure: nothing is lost by waiting), and
  re-checks every ``recheck`` seconds whether the bridge was closed or the
  consumer's event loop is gone, so a producer thread always ends promptly.

The producer calls :meth:`put` from any thread (or from the loop itself for
``"latest"``) and ends the stream with :meth:`finish` (optionally with the
error the consumer should see after the items already queued). The consumer
awaits :meth:`get`; :meth:`close` abandons the stream from the consumer side
(producers are refused, ``drop=True`` discards what is queued).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

QueuePolicy = Literal["latest", "block"]


class BridgeClosed(Exception):
    """Raised by :meth:`Bridge.get` once the stream ended and every item was delivered.

    Control flow between a source and its own bridge; sources turn it into
    ``StopAsyncIteration``.
    """


class Bridge(Generic[T]):
    """Bounded thread-to-loop queue with a latest-wins or a blocking policy."""

    def __init__(self, maxsize: int, policy: QueuePolicy, *, recheck: float = 0.05) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if policy not in ("latest", "block"):
            raise ValueError(f"unknown queue policy {policy!r}")
        self.maxsize = maxsize
        self.policy: QueuePolicy = policy
        self.dropped = 0
        """Items discarded by the latest-wins policy."""
        self._recheck = recheck
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._ended = False  # no more items will come (finish or close)
        self._closed = False  # the consumer abandoned the stream
        self._error: BaseException | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def closed(self) -> bool:
        """True once the stream ended (finished by the producer or closed by the consumer)."""
        return self._ended

    def bind(self) -> None:
        """Attach to the running loop (the consumer's); called by :meth:`get` too."""
        with self._lock:
            self._bind_locked()

    def _bind_locked(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._wakeup = asyncio.Event()

    # ---- producer side ---------------------------------------------------------------------------
    def put(self, item: T) -> bool:
        """Hand ``item`` over; False when nobody will read it any more (stop producing).

        ``"latest"``: never blocks, displaces the oldest item when full.
        ``"block"``: waits for room; must not be called from the consumer's loop.
        """
        with self._lock:
            if self.policy == "block":
                if self._loop_thread == threading.get_ident():
                    raise RuntimeError("a blocking bridge cannot be fed from its own event loop")
                while len(self._items) >= self.maxsize and not self._ended:
                    if self._loop is not None and self._loop.is_closed():
                        return False  # the owner's loop is gone without close(): stop anyway
                    self._room.wait(self._recheck)
            if self._ended:
                return False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            return self._wake_locked()

    def finish(self, error: BaseException | None = None) -> None:
        """End of stream from the producer: queued items first, then ``error`` or the end."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._error = error
            self._room.notify_all()
            self._wake_locked()

    def _wake_locked(self) -> bool:
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return True  # no consumer waits yet; it looks at the items before waiting
        if self._loop_thread == threading.get_ident():
            event.set()
            return True
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # loop closed: the consumer is gone
            return False
        return True

    # ---- consumer side ---------------------------------------------------------------------------
    async def get(self) -> T:
        """Next item; raises :class:`BridgeClosed` (or the producer's error) at the end."""
        while True:
            with self._lock:
                self._bind_locked()
                assert self._wakeup is not None
                if self._items:
                    item = self._items.popleft()
                    self._room.notify()
                    return item
                if self._ended:
                    if self._error is not None and not self._closed:
                        raise self._error
                    raise BridgeClosed
                self._wakeup.clear()
                event = self._wakeup
            await event.wait()

    def close(self, *, drop: bool = False) -> None:
        """Abandon the stream (idempotent): producers are refused and unblocked.

        ``drop=False`` still delivers what is queued; ``drop=True`` discards it.
        """
        with self._lock:
            self._closed = True
            self._ended = True
            if drop:
                self._items.clear()
            self._room.notify_all()
            if self._wakeup is not None and self._loop_thread == threading.get_ident():
                self._wakeup.set()
            elif self._wakeup is not None and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._wakeup.set)
                except RuntimeError:
                    pass
