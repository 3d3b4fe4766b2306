"""aiohttp routes and the websocket dispatch table; calls nothing but the serving façade.

Routes: ``GET /ws`` (websocket, protocol in :mod:`agent.service.protocol`),
``GET /healthz``, ``GET /metrics`` (Prometheus text),
``GET /thumbnails/{stream}/{t}.jpg`` (nearest stored frame), and the ingest
routes of the shards (WHIP: ``POST /whip/{stream}``...).

Each websocket text message is validated into a request model and handed
to the handler of its ``type`` (:attr:`Router.handlers`). ``query`` and
``watch`` run as tasks owned by the connection so that a slow query does not
hold up the next message; everything else is answered in order. Any failure
becomes one ``error`` event (:func:`agent.service.errors.error_event`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from agent.errors import ProtocolError, VmrError
from agent.service.config import ServiceConfig
from agent.service.connection import Connection
from agent.service.errors import error_event
from agent.service.metrics import CONTENT_TYPE
from agent.service.protocol import (
    PROTOCOL_VERSION,
    UNAUTHORIZED,
    Cancel,
    CancelledEvent,
    ClientMessage,
    ErrorEvent,
    Hello,
    HelloEvent,
    MomentsEvent,
    QueryMsg,
    StreamEvent,
    StreamRemovedEvent,
    StreamsAdd,
    StreamsEvent,
    StreamsList,
    StreamsRemove,
    WatchingEvent,
    WatchMsg,
    id_of,
    leading_id,
    load_json,
    validate_message,
)
from agent.service.serving import Serving

log = logging.getLogger(__name__)

Handler = Callable[[Connection, Any], Awaitable[None]]


class Router:
    """HTTP handlers and the websocket loop of one service."""

    def __init__(self, serving: Serving, cfg: ServiceConfig) -> None:
        self.serving = serving
        self.cfg = cfg
        self.connections: set[Connection] = set()
        self.handlers: dict[str, Handler] = {
            "hello": self.hello,
            "streams.list": self.streams_list,
            "streams.add": self.streams_add,
            "streams.remove": self.streams_remove,
            "query": self.spawn,
            "watch": self.spawn,
            "cancel": self.cancel,
        }
        """Request ``type`` -> handler; one entry per member of :data:`ClientMessage`."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_message_bytes)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/thumbnails/{stream}/{t}.jpg", self.thumbnail)
        app.add_routes(self.serving.routes())
        return app

    # ----------------------------------------------------------------- HTTP
    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.serving.health()
        return web.Response(text=health.model_dump_json(), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.serving.render_metrics(len(self.connections))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def thumbnail(self, request: web.Request) -> web.Response:
        try:
            t = float(request.match_info["t"])
        except ValueError:
            raise web.HTTPBadRequest(text="time must be a number of stream seconds") from None
        try:
            found, jpeg = await self.serving.thumbnail(request.match_info["stream"], t)
        except VmrError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"X-Stream-Time": f"{found:.3f}"})

    # ------------------------------------------------------------ websocket
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp's own cap sits above ours, so an oversize message gets a typed error, not a close.
        ws = web.WebSocketResponse(max_msg_size=2 * self.cfg.max_message_bytes, heartbeat=30.0)
        await ws.prepare(request)
        conn = Connection(ws, self.cfg.client_queue, authed=self.cfg.token is None)
        self.connections.add(conn)
        writer = asyncio.create_task(conn.writer(), name="ws-writer")
        if conn.authed:
            self.serving.subscribers.add(conn.send)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    conn.send(
                        error_event(None, ProtocolError("binary messages are not part of the protocol"))
                    )
                if conn.kicked or ws.closed:
                    break
        finally:
            await self._drop(conn, writer)
        return ws

    async def _drop(self, conn: Connection, writer: asyncio.Task[None]) -> None:
        self.connections.discard(conn)
        self.serving.subscribers.discard(conn.send)
        for watch in conn.watches.values():
            self.serving.close_watch(watch)
        await conn.finish(writer)

    async def handle(self, conn: Connection, raw: str) -> None:
        """Validate one text message and run its handler; every failure becomes an ``error`` event."""
        rid: str | None = None
        try:
            if len(raw.encode()) > self.cfg.max_message_bytes:
                rid = leading_id(raw)  # not parsed whole: the id is read from the message's head
                raise ProtocolError(f"message over {self.cfg.max_message_bytes} bytes")
            data = load_json(raw)
            rid = id_of(data)  # for the error event if the message does not validate
            msg = validate_message(data)
            if not conn.authed and not isinstance(msg, Hello):
                conn.kick(ErrorEvent(id=rid, code=UNAUTHORIZED, message="send hello with the token first"))
                return
            await self.dispatch(conn, msg)
        except Exception as exc:  # the one error mapper: typed code, never a traceback
            conn.send(error_event(rid, exc))

    async def dispatch(self, conn: Connection, msg: ClientMessage) -> None:
        await self.handlers[msg.type](conn, msg)

    # ------------------------------------------------------------- handlers
    async def hello(self, conn: Connection, msg: Hello) -> None:
        if self.cfg.token is not None and msg.token != self.cfg.token:
            conn.kick(ErrorEvent(id=msg.id, code=UNAUTHORIZED, message="wrong or missing token"))
            return
        if msg.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol {msg.protocol} not supported; this server speaks {PROTOCOL_VERSION}"
            )
        if not conn.authed:
            conn.authed = True
            self.serving.subscribers.add(conn.send)
        info = await self.serving.model_info()
        conn.send(HelloEvent(id=msg.id, model=info["model"], meaningless=info["meaningless"]))

    async def streams_list(self, conn: Connection, msg: StreamsList) -> None:
        conn.send(StreamsEvent(id=msg.id, streams=await self.serving.list_streams()))

    async def streams_add(self, conn: Connection, msg: StreamsAdd) -> None:
        conn.send(StreamEvent(id=msg.id, stream=await self.serving.add_stream(msg.stream)))

    async def streams_remove(self, conn: Connection, msg: StreamsRemove) -> None:
        await self.serving.remove_stream(msg.stream, purge=msg.purge)
        conn.send(StreamRemovedEvent(id=msg.id, stream=msg.stream))

    async def spawn(self, conn: Connection, msg: QueryMsg | WatchMsg) -> None:
        """Run a query or watch as a task of the connection (its id must be free)."""
        rid = msg.id or uuid.uuid4().hex
        conn.check_free(rid)  # before the task exists: a refused duplicate must not run unowned
        conn.own(rid, asyncio.create_task(self._answer(conn, rid, msg), name=f"request-{rid}"))

    async def _answer(self, conn: Connection, rid: str, msg: QueryMsg | WatchMsg) -> None:
        try:
            query = await self.serving.parse_query(msg)
            if isinstance(msg, WatchMsg):
                watch = await self.serving.open_watch(
                    rid, query, conn.send, threshold=msg.threshold, close_seconds=msg.close_seconds
                )
                conn.watches[rid] = watch
                conn.send(WatchingEvent(id=rid, threshold=watch.threshold, calibrating=watch.calibrating))
                if not msg.backward:
                    return
            conn.send(MomentsEvent.of(rid, await self.serving.query(query)))
        except Exception as exc:  # same mapper as above: this runs as its own task
            conn.send(error_event(rid, exc))

    async def cancel(self, conn: Connection, msg: Cancel) -> None:
        task = conn.tasks.pop(msg.target, None)
        watch = conn.watches.pop(msg.target, None)
        if task is None and watch is None:
            raise ProtocolError(f"nothing to cancel with id {msg.target!r}")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watch is not None:
            self.serving.close_watch(watch)
            watch.close_all()
        conn.send(CancelledEvent(id=msg.id, target=msg.target))
