"""A small websocket client of the service (the ``websockets`` package).

:func:`remote_query` sends one ``query`` and returns the ``moments`` event;
:func:`watch` yields the events of a standing query until cancelled.
Both start with ``hello`` (carrying the token when one is given) and turn
``error`` events into the typed :mod:`agent.errors` exception of their code.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from agent import errors
from agent.errors import ConfigError, ProtocolError, VmrError
from agent.service.protocol import PROTOCOL_VERSION

_BY_CODE: dict[str, type[VmrError]] = {
    cls.code: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, VmrError)
}


def error_from(event: dict[str, Any]) -> VmrError:
    """The typed exception of an ``error`` event (ProtocolError for codes without a class)."""
    cls = _BY_CODE.get(str(event.get("code")), ProtocolError)
    exc = cls(f"[{event.get('code')}] {event.get('message')}")
    return exc


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
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        raise ProtocolError(f"cannot connect to {url}: {exc}") from exc
    try:
        await ws.send(
            json.dumps({"type": "hello", "id": "hello", "protocol": PROTOCOL_VERSION, "token": token})
        )
        reply = await _recv_for(ws, "hello")
        if reply["type"] != "hello":
            raise ProtocolError(f"unexpected answer to hello: {reply}")
        yield ws
    finally:
        await ws.close()


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(await ws.recv())
    except websockets.ConnectionClosed as exc:
        raise ProtocolError(f"connection closed: {exc}") from exc
    return data


async def _recv_for(ws: ClientConnection, rid: str) -> dict[str, Any]:
    """Next event answering request ``rid`` (broadcast events are skipped); raises on ``error``."""
    while True:
        event = await _recv(ws)
        if event.get("id") == rid or (event["type"] == "error" and event.get("id") is None):
            if event["type"] == "error":
                raise error_from(event)
            return event


def query_message(
    rid: str,
    kind: str,
    *,
    text: str | None,
    image_path: Path | None,
    streams: list[str] | None,
    start: float | None,
    end: float | None,
    top_k: int | None,
) -> dict[str, Any]:
    """A ``query``/``watch`` message; an image file is sent as base64."""
    msg: dict[str, Any] = {
        "type": kind,
        "id": rid,
        "streams": streams,
        "start": start,
        "end": end,
        "top_k": top_k,
    }
    if image_path is not None:
        try:
            msg["image"] = base64.b64encode(Path(image_path).read_bytes()).decode()
        except OSError as exc:
            raise ConfigError(f"cannot read query image {image_path}: {exc}") from exc
    else:
        msg["text"] = text
    return msg


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
) -> dict[str, Any]:
    """Ask a running service one query; returns its ``moments`` event."""
    async with connect(url, token) as ws:
        rid = uuid.uuid4().hex
        msg = query_message(
            rid, "query", text=text, image_path=image_path, streams=streams, start=start, end=end, top_k=top_k
        )
        await ws.send(json.dumps(msg))
        return await _recv_for(ws, rid)


async def watch(
    url: str,
    *,
    text: str | None,
    image_path: Path | None = None,
    streams: list[str] | None = None,
    threshold: float | None = None,
    backward: bool = True,
    token: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the events of a standing query (``watching``, ``moments``, ``moment``, ``moment.update``)."""
    async with connect(url, token) as ws:
        rid = uuid.uuid4().hex
        msg = query_message(
            rid, "watch", text=text, image_path=image_path, streams=streams, start=None, end=None, top_k=None
        )
        msg.update(threshold=threshold, backward=backward)
        await ws.send(json.dumps(msg))
        while True:
            yield await _recv_for(ws, rid)
