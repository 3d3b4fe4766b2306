"""One websocket client: its outbound event queue, its request tasks and its watches.

Slow clients: the outbound queue holds at most ``limit`` events. Above half
of it (the low watermark) ``progress`` events are dropped and a non-final
``moment.update`` replaces the queued update of the same match
(coalescing); at the high watermark the client gets an ``error`` with code
``slow_client`` and is disconnected (close code 1008). Opening and closing
events of matches are never dropped while the client is connected; nothing
the service stores depends on a client keeping up.

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
from collections import deque

from aiohttp import web

from agent.errors import ProtocolError
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


def _essential(event: ServerEvent) -> bool:
    """Events never dropped below the high watermark (everything but progress and open updates)."""
    if isinstance(event, ProgressEvent):
        return False
    return not isinstance(event, MomentUpdateEvent) or event.closed


class Connection:
    """A connected client; :meth:`send` never blocks, :meth:`writer` drains the queue to the socket."""

    def __init__(self, ws: web.WebSocketResponse, limit: int, *, authed: bool, address: str = "") -> None:
        self.ws = ws
        self.address = address
        """The client's IP address (the key of the failed-token backoff)."""
        self.high = limit
        self.low = max(1, limit // 2)
        self.queue: deque[ServerEvent] = deque()
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
        """Queue an event (never blocks; applies the slow-client policy)."""
        if self.kicked:
            return
        n = len(self.queue)
        if n >= self.low and not _essential(event):
            if isinstance(event, MomentUpdateEvent):
                for i, old in enumerate(self.queue):
                    if isinstance(old, MomentUpdateEvent) and (old.id, old.match) == (event.id, event.match):
                        self.queue[i] = event
                        return
            if isinstance(event, ProgressEvent):
                self.dropped += 1
                return
        if n >= self.high:
            self.kicked = True
            self.close_code, self.close_reason = 1008, "slow client"
            self.queue.clear()
            self.queue.append(ErrorEvent(code=SLOW_CLIENT, message="client too slow; disconnecting"))
        else:
            self.queue.append(event)
        self.ready.set()

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
            event = self.queue.popleft()
            await self.ws.send_str(encode(event))
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
