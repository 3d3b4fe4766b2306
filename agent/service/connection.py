"""One websocket client: its outbound event queue, its request tasks and its watches.

Slow clients: the outbound queue is bounded twice, in events (``limit``) and
in bytes (``max_bytes``: the memory of the queued JSON texts; events are
encoded once, when queued). Above half of either (the low watermarks)
``progress`` events are dropped and a non-final ``moment.update`` replaces
the queued update of the same match (coalescing); an event that would take
the queue over either high watermark disconnects the client instead: the
queue is emptied (its memory freed at once), the client gets an ``error``
with code ``slow_client`` and the socket closes with code 1008 and the
reason "slow client: N events (M bytes) unread". One event alone is always
queued, so the queue holds at most ``max_bytes`` plus one event (and events
are bounded: error messages are cut, answers hold at most ``top_k``
moments). Opening and closing events of matches are never dropped while
the client is connected; nothing the service stores depends on a client
keeping up. A client that stops reading altogether is also cut off by the
websocket heartbeat; aiohttp's own write buffer stays at its flow-control
limit because the writer awaits the socket.

Requests in flight: at most ``max_in_flight`` queries and watches of one
client run at once (:meth:`Connection.admit`); one more is answered at once
with an ``error`` of code ``busy`` and nothing runs. Other requests are
answered in order by the read loop, one at a time.

Before authentication (see :mod:`agent.service.auth`): a client that has
sent no valid message yet is disconnected after ``preauth_max_invalid``
invalid ones (:meth:`Connection.strike`), and every disconnection says why
in its close frame (``unauthorized``, ``too many invalid messages``,
``message too big before authentication``, ``no hello in time``,
``slow client``).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections import deque

from aiohttp import web

from agent.errors import BusyError, ProtocolError
from agent.service.protocol import (
    SLOW_CLIENT,
    ErrorEvent,
    MomentUpdateEvent,
    ProgressEvent,
    ServerEvent,
    encode,
)
from agent.service.watch import Watch

FLUSH_SECONDS = 1.0
"""How long a closing connection may spend sending what is still queued."""
QUEUE_BYTES = 8 * 1024**2
"""Default byte bound of a client's outbound queue (``ServiceConfig.client_queue_bytes``)."""
IN_FLIGHT = 8
"""Default limit of a client's queries and watches in flight (``ServiceConfig.max_in_flight``)."""


def _essential(event: ServerEvent) -> bool:
    """Events never dropped below the high watermark (everything but progress and open updates)."""
    if isinstance(event, ProgressEvent):
        return False
    return not isinstance(event, MomentUpdateEvent) or event.closed


class Connection:
    """A connected client; :meth:`send` never blocks, :meth:`writer` drains the queue to the socket."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        limit: int,
        *,
        authed: bool,
        address: str = "",
        max_bytes: int = QUEUE_BYTES,
        max_in_flight: int = IN_FLIGHT,
    ) -> None:
        self.ws = ws
        self.address = address
        """The client's IP address (the key of the failed-token backoff)."""
        self.high = limit
        self.low = max(1, limit // 2)
        self.high_bytes = max_bytes
        self.low_bytes = max(1, max_bytes // 2)
        self.max_in_flight = max_in_flight
        self.queue: deque[ServerEvent] = deque()
        self.texts: deque[str] = deque()
        """The JSON text of each queued event (same order as :attr:`queue`)."""
        self.queued_bytes = 0
        """Memory of :attr:`texts`, in bytes (``sys.getsizeof`` of each)."""
        self.ready = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.watches: dict[str, Watch] = {}
        self.authed = authed
        self.dropped = 0
        """Progress events dropped above the low watermark."""
        self.kicked = False
        """Set once the client is to be disconnected (slow, or unauthorized)."""
        self.close_code = 1008
        self.close_reason = "policy violation"
        """Close frame sent after the last event of a kicked client (the reason, at most 123 bytes)."""
        self.valid_seen = False
        """Whether the client has sent one valid message (before that, invalid ones are struck)."""
        self.invalid = 0
        """Invalid messages received before the first valid one."""
        self.closing = False
        """Set when the connection ends: the writer sends what is queued, then returns."""

    # ------------------------------------------------------------- outbound
    def send(self, event: ServerEvent) -> None:
        """Queue an event (never blocks; applies the slow-client policy of the module docstring)."""
        if self.kicked:
            return
        n = len(self.queue)
        text = encode(event)
        size = sys.getsizeof(text)
        if (n >= self.low or self.queued_bytes + size > self.low_bytes) and not _essential(event):
            if isinstance(event, MomentUpdateEvent):
                for i, old in enumerate(self.queue):
                    if isinstance(old, MomentUpdateEvent) and (old.id, old.match) == (event.id, event.match):
                        self.queued_bytes += size - sys.getsizeof(self.texts[i])
                        self.queue[i], self.texts[i] = event, text
                        return
            if isinstance(event, ProgressEvent):
                self.dropped += 1
                return
        if n >= self.high or (n and self.queued_bytes + size > self.high_bytes):
            self._disconnect_slow(n)
        else:
            self._append(event, text, size)
        self.ready.set()

    def _append(self, event: ServerEvent, text: str, size: int) -> None:
        self.queue.append(event)
        self.texts.append(text)
        self.queued_bytes += size

    def _disconnect_slow(self, unread: int) -> None:
        self.close_code, self.close_reason = (
            1008,
            f"slow client: {unread} events ({self.queued_bytes} bytes) unread",
        )
        self.kicked = True
        self.queue.clear()
        self.texts.clear()
        self.queued_bytes = 0
        last = ErrorEvent(code=SLOW_CLIENT, message=f"client too slow; disconnecting ({self.close_reason})")
        text = encode(last)
        self._append(last, text, sys.getsizeof(text))

    def kick(self, event: ErrorEvent, reason: str, code: int = 1008) -> None:
        """Send ``event`` as the last one, then close the socket with ``code`` and ``reason``."""
        self.send(event)
        if not self.kicked:
            self.close_code, self.close_reason = code, reason
        self.kicked = True

    def strike(self, limit: int) -> bool:
        """Count an invalid message; True when a client without any valid one reached ``limit``."""
        if self.valid_seen:
            return False
        self.invalid += 1
        return self.invalid >= limit

    async def writer(self) -> None:
        """Send queued events in order; closes the socket after a slow-client or auth error."""
        while True:
            while not self.queue:
                if self.closing:
                    return
                self.ready.clear()
                await self.ready.wait()
            self.queue.popleft()
            text = self.texts.popleft()
            self.queued_bytes -= sys.getsizeof(text)
            await self.ws.send_str(text)
            if self.kicked and not self.queue:
                await self.ws.close(code=self.close_code, message=self.close_reason.encode()[:123])
                return

    # ------------------------------------------------------------- requests
    def own(self, rid: str, task: asyncio.Task[None]) -> None:
        """Track a request task under its id until it finishes (ProtocolError if the id is in use)."""
        self.check_free(rid)
        self.tasks[rid] = task
        task.add_done_callback(functools.partial(_forget_task, self.tasks, rid))

    def check_free(self, rid: str) -> None:
        if rid in self.tasks or rid in self.watches:
            raise ProtocolError(f"request id {rid!r} is already in use")

    def admit(self, rid: str) -> None:
        """Check that a query or watch may start now under id ``rid``.

        ProtocolError if the id is in use; BusyError when :attr:`max_in_flight`
        requests of this client are running (the client retries after an answer
        or a ``cancel``).
        """
        self.check_free(rid)
        if len(self.tasks) >= self.max_in_flight:
            raise BusyError(
                f"{len(self.tasks)} requests in flight, the most one client may have; "
                "wait for an answer or cancel one"
            )

    async def finish(self, writer: asyncio.Task[None]) -> None:
        """Cancel and await the request tasks, then flush the queue (close the watches first)."""
        pending = list(self.tasks.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.closing = True
        self.ready.set()
        try:
            await asyncio.wait_for(writer, FLUSH_SECONDS)  # a socket already closed fails fast
        except (TimeoutError, ConnectionError, RuntimeError):
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


def _forget_task(tasks: dict[str, asyncio.Task[None]], rid: str, task: asyncio.Task[None]) -> None:
    if tasks.get(rid) is task:
        del tasks[rid]
