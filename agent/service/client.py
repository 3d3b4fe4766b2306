"""A small websocket client of the service (the ``websockets`` package), speaking the protocol models.

:func:`remote_query` sends one ``query`` and returns the ``moments`` event;
:func:`watch` yields the events of a standing query until cancelled.
Both start with ``hello`` (carrying the token when one is given) and turn
``error`` events into the typed :mod:`agent.errors` exception of their code.
Every message sent is a request model, every message received is parsed
into an event model (:mod:`agent.service.protocol`).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection

from agent import errors
from agent.errors import ConfigError, ConnectError, ProtocolError, VmrError
from agent.service.protocol import (
    ClientMessage,
    ErrorEvent,
    Hello,
    HelloEvent,
    MomentsEvent,
    MomentsUpdateEvent,
    QueryMsg,
    ServerEvent,
    WatchMsg,
    encode,
    parse_event,
)

_BY_CODE: dict[str, type[VmrError]] = {
    cls.code: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, VmrError)
}


def error_from(event: ErrorEvent) -> VmrError:
    """The typed exception of an ``error`` event (ProtocolError for codes without a class)."""
    cls = _BY_CODE.get(event.code, ProtocolError)
    return cls(f"[{event.code}] {event.message}")


def ws_url(url: str) -> str:
    """Accept ``ws://host:port`` or ``ws://host:port/ws``."""
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"not a websocket URL: {url!r}")
    return url if url.rstrip("/").endswith("/ws") else url.rstrip("/") + "/ws"


@asynccontextmanager
async def connect(
    url: str, token: str | None = None, max_size: int = 64 * 1024**2
) -> AsyncIterator[ClientConnection]:
    """An open connection that has said ``hello``."""
    try:
        ws = await websockets.connect(ws_url(url), max_size=max_size)
    except OSError as exc:  # refused, no route, DNS, the open timeout (TimeoutError)
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else exc.strerror or exc
        raise ConnectError(f"cannot reach the service at {url}: {why}") from exc
    except (websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        # Something answered, but not as the service's websocket does.
        raise ProtocolError(f"cannot connect to {url}: {exc}") from exc
    try:
        await send(ws, Hello(id="hello", token=token))
        reply = await recv_for(ws, "hello")
        if not isinstance(reply, HelloEvent):
            raise ProtocolError(f"unexpected answer to hello: {reply.type}")
        yield ws
    finally:
        await ws.close()


async def send(ws: ClientConnection, msg: ClientMessage) -> None:
    """Send one request model."""
    try:
        await ws.send(encode(msg))
    except websockets.ConnectionClosed as exc:
        raise ProtocolError(f"connection closed: {exc}") from exc


async def recv(ws: ClientConnection) -> ServerEvent:
    """The next event of any kind, parsed (ProtocolError when closed or not an event)."""
    try:
        raw = await ws.recv()
    except websockets.ConnectionClosed as exc:
        raise ProtocolError(f"connection closed: {exc}") from exc
    return parse_event(raw)


async def recv_for(ws: ClientConnection, rid: str) -> ServerEvent:
    """Next event answering request ``rid`` (broadcast events are skipped); raises on ``error``."""
    while True:
        event = await recv(ws)
        if event.id == rid or (isinstance(event, ErrorEvent) and event.id is None):
            if isinstance(event, ErrorEvent):
                raise error_from(event)
            return event


def read_image_b64(path: Path) -> str:
    """A query image file as base64 (ConfigError when unreadable)."""
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise ConfigError(f"cannot read query image {path}: {exc}") from exc


async def remote_query(
    url: str,
    *,
    text: str | None,
    image_path: Path | None = None,
    streams: list[str] | None = None,
    start: float | None = None,
    end: float | None = None,
    top_k: int | None = None,
    token: str | None = None,
    budget: float | None = None,
    fast: bool = False,
) -> MomentsEvent | MomentsUpdateEvent:
    """Ask a running service one query; returns its refined answer (``moments.update``).

    ``fast``: return the first (anchor-level) ``moments`` event instead and
    leave (the service then stops refining). ``budget``: refine seconds
    (None: the service's default).
    """
    image = None if image_path is None else await asyncio.to_thread(read_image_b64, image_path)
    async with connect(url, token) as ws:
        msg = QueryMsg(
            id=uuid.uuid4().hex,
            text=None if image is not None else text,
            image=image,
            streams=streams,
            start=start,
            end=end,
            top_k=top_k,
            budget=budget,
        )
        await send(ws, msg)
        reply = await recv_for(ws, msg.id or "")
        if not isinstance(reply, MomentsEvent):
            raise ProtocolError(f"unexpected answer to query: {reply.type}")
        if fast:
            return reply
        update = await recv_for(ws, msg.id or "")
        if not isinstance(update, MomentsUpdateEvent):
            raise ProtocolError(f"unexpected update of query: {update.type}")
        return update


async def watch(
    url: str,
    *,
    text: str | None,
    image_path: Path | None = None,
    streams: list[str] | None = None,
    threshold: float | None = None,
    backward: bool = True,
    token: str | None = None,
) -> AsyncIterator[ServerEvent]:
    """Yield the events of a standing query (``watching``, ``moments``, ``moment``, ``moment.update``)."""
    image = None if image_path is None else await asyncio.to_thread(read_image_b64, image_path)
    async with connect(url, token) as ws:
        msg = WatchMsg(
            id=uuid.uuid4().hex,
            text=None if image is not None else text,
            image=image,
            streams=streams,
            threshold=threshold,
            backward=backward,
        )
        await send(ws, msg)
        while True:
            yield await recv_for(ws, msg.id or "")
