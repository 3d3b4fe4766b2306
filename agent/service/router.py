"""aiohttp routes and the websocket dispatch table; calls nothing but the serving façade.

Routes: ``GET /ws`` (websocket, protocol in :mod:`agent.service.protocol`),
``GET /healthz``, ``GET /metrics`` (Prometheus text),
``GET /thumbnails/{stream}/{t}.jpg`` (nearest stored frame), and the ingest
routes of the shards (WHIP: ``POST /whip/{stream}``...).

Each websocket text message is validated into a request model and handed
to the handler of its ``type`` (:attr:`Router.handlers`). ``query`` and
``watch`` run as tasks owned by the connection so that a slow query does not
hold up the next message, at most ``max_in_flight`` of them per connection
(one more is answered ``busy`` at once); everything else is answered in
order. Any failure becomes one ``error`` event
(:func:`agent.service.errors.error_event`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from agent.channels.refine import DEFAULT_REFINE_BUDGET_S
from agent.errors import LimitExceededError, ProtocolError, VmrError
from agent.service.access import SourcePolicy
from agent.service.auth import AUTHED, Auth
from agent.service.config import ServiceConfig, is_loopback
from agent.service.connection import Connection
from agent.service.errors import error_event
from agent.service.json_text import ERROR_CHARS, clip, id_of, leading_id, load_json
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
    MomentsUpdateEvent,
    QueryMsg,
    StreamEvent,
    StreamRemovedEvent,
    StreamsAdd,
    StreamsEvent,
    StreamsList,
    StreamsRemove,
    WatchingEvent,
    WatchMsg,
    validate_message,
)
from agent.service.serving import Serving
from agent.service.web.web_routes import PAGE_PATHS

log = logging.getLogger(__name__)

Handler = Callable[[Connection, Any], Awaitable[None]]


class Router:
    """HTTP handlers and the websocket loop of one service."""

    def __init__(self, serving: Serving, cfg: ServiceConfig) -> None:
        self.serving = serving
        self.cfg = cfg
        self.connections: set[Connection] = set()
        self.auth = Auth(
            cfg.token,
            cfg.auth,
            open_paths={"/ws", "/healthz", *PAGE_PATHS},
            loopback_only=is_loopback(cfg.host),
        )
        """Token, origins and backoff: the middleware of every route, and ``hello``."""
        self.access = SourcePolicy(cfg.sources)
        """What a client's ``streams.add`` may name."""
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
        app = web.Application(client_max_size=self.cfg.max_message_bytes, middlewares=[self.auth.middleware])
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/thumbnails/{stream}/{t}.jpg", self.thumbnail)
        app.add_routes(self.serving.routes())
        return app

    # ----------------------------------------------------------------- HTTP
    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.serving.health()
        if not request.get(AUTHED):  # open without a token: the state only, no stream ids or reasons
            return web.json_response({"status": health.status})
        return web.Response(text=health.model_dump_json(), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.serving.render_metrics(len(self.connections))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def thumbnail(self, request: web.Request) -> web.Response:
        try:
            t = float(request.match_info["t"])
        except ValueError:
            t = math.nan
        if not math.isfinite(t):
            raise web.HTTPBadRequest(text="time must be a finite number of stream seconds")
        try:
            found, jpeg = await self.serving.thumbnail(request.match_info["stream"], t)
        except VmrError as exc:
            raise web.HTTPNotFound(text=clip(str(exc), ERROR_CHARS)) from exc
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"X-Stream-Time": f"{found:.3f}"})

    # ------------------------------------------------------------ websocket
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp's own cap sits above ours, so an oversize message gets a typed error, not a close.
        ws = web.WebSocketResponse(max_msg_size=2 * self.cfg.max_message_bytes, heartbeat=30.0)
        await ws.prepare(request)
        conn = Connection(
            ws,
            self.cfg.client_queue,
            authed=bool(request.get(AUTHED)),
            address=request.remote or "",
            max_bytes=self.cfg.client_queue_bytes,
            max_in_flight=self.cfg.max_in_flight,
        )
        self.connections.add(conn)
        writer = asyncio.create_task(conn.writer(), name="ws-writer")
        if conn.authed:
            self.serving.subscribers.add(conn.send)
        late = (
            None
            if conn.authed
            else asyncio.get_running_loop().call_later(self.cfg.auth.hello_seconds, self._no_hello, conn)
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(conn, msg.data)
                elif msg.type == WSMsgType.BINARY and not self._too_big_before_auth(conn, len(msg.data)):
                    conn.send(
                        self._error(None, ProtocolError("binary messages are not part of the protocol"))
                    )
                    self._strike(conn)
                if conn.kicked or ws.closed:
                    break
        finally:
            if late is not None:
                late.cancel()
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
        if self._too_big_before_auth(conn, len(raw)):  # chars <= bytes: a lower bound
            return
        try:
            if len(raw.encode()) > self.cfg.max_message_bytes:
                rid = leading_id(raw)  # not parsed whole: the id is read from the message's head
                raise ProtocolError(f"message over {self.cfg.max_message_bytes} bytes")
            data = load_json(raw)
            rid = id_of(data)  # for the error event if the message does not validate
            msg = validate_message(data)
            conn.valid_seen = True
            if not conn.authed and not isinstance(msg, Hello):
                error = ErrorEvent(id=rid, code=UNAUTHORIZED, message="send hello with the token first")
                conn.kick(error, "unauthorized")
                return
            await self.dispatch(conn, msg)
        except Exception as exc:  # the one error mapper: typed code, never a traceback
            conn.send(self._error(rid, exc))
            self._strike(conn)

    def _error(self, rid: str | None, exc: BaseException) -> ErrorEvent:
        """The error event answering ``exc``, counted by code (``vmr_errors_total{scope="request"}``)."""
        event = error_event(rid, exc)
        self.serving.metrics.count_error(event.code)
        return event

    def _too_big_before_auth(self, conn: Connection, size: int) -> bool:
        """Disconnect an unauthenticated client whose message exceeds the pre-auth cap (close 1009)."""
        limit = self.cfg.auth.preauth_max_bytes
        if conn.authed or size <= limit:
            return False
        error = ErrorEvent(code=ProtocolError.code, message=f"message over {limit} bytes before hello")
        conn.kick(error, "message too big before authentication", code=1009)
        return True

    def _no_hello(self, conn: Connection) -> None:
        """Disconnect a client still unauthenticated ``auth.hello_seconds`` after connecting."""
        if not conn.authed:
            message = f"no hello with the token within {self.cfg.auth.hello_seconds:g} s"
            conn.kick(ErrorEvent(code=UNAUTHORIZED, message=message), "no hello in time")

    def _strike(self, conn: Connection) -> None:
        """Count an invalid message; disconnect a client that has sent only invalid ones."""
        if conn.strike(self.cfg.auth.preauth_max_invalid):
            message = f"{conn.invalid} invalid messages and no valid one; disconnecting"
            conn.kick(ErrorEvent(code=LimitExceededError.code, message=message), "too many invalid messages")

    async def dispatch(self, conn: Connection, msg: ClientMessage) -> None:
        await self.handlers[msg.type](conn, msg)

    # ------------------------------------------------------------- handlers
    async def hello(self, conn: Connection, msg: Hello) -> None:
        if not conn.authed:
            verdict = self.auth.check(conn.address, msg.token)
            if not verdict.ok:
                conn.kick(ErrorEvent(id=msg.id, code=UNAUTHORIZED, message=verdict.message), "unauthorized")
                return
        if msg.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol {msg.protocol} not supported; this server speaks {PROTOCOL_VERSION}"
            )
        if not conn.authed:
            conn.authed = True
            self.serving.subscribers.add(conn.send)
        info = await self.serving.model_info()
        conn.send(
            HelloEvent(
                id=msg.id, model=info["model"], meaningless=info["meaningless"], channels=info["channels"]
            )
        )

    async def streams_list(self, conn: Connection, msg: StreamsList) -> None:
        conn.send(StreamsEvent(id=msg.id, streams=await self.serving.list_streams()))

    async def streams_add(self, conn: Connection, msg: StreamsAdd) -> None:
        self.access.spend_add(conn.address)  # per address: reconnecting does not refill it
        spec = await self.access.admit(msg.stream)  # a client names only what the operator allows
        conn.send(StreamEvent(id=msg.id, stream=await self.serving.add_stream(spec)))

    async def streams_remove(self, conn: Connection, msg: StreamsRemove) -> None:
        await self.serving.remove_stream(msg.stream, purge=msg.purge)
        conn.send(StreamRemovedEvent(id=msg.id, stream=msg.stream))

    async def spawn(self, conn: Connection, msg: QueryMsg | WatchMsg) -> None:
        """Run a query or watch as a task of the connection (its id free, its client not ``busy``)."""
        rid = msg.id or uuid.uuid4().hex
        conn.admit(rid)  # before the task exists: a refused request must not run unowned
        conn.own(rid, asyncio.create_task(self._answer(conn, rid, msg), name=f"request-{rid}"))

    async def _answer(self, conn: Connection, rid: str, msg: QueryMsg | WatchMsg) -> None:
        try:
            query = await self.serving.parse_query(msg)
            if isinstance(msg, WatchMsg):
                watch = await self.serving.open_watch(
                    rid,
                    query,
                    conn.send,
                    threshold=msg.threshold,
                    close_seconds=msg.close_seconds,
                    word_share=msg.word_share,
                )
                conn.watches[rid] = watch
                conn.send(WatchingEvent(id=rid, threshold=watch.threshold, calibrating=watch.calibrating))
                if not msg.backward:
                    return
            if isinstance(msg, WatchMsg):  # the backward scan: one ``moments`` event, refined
                conn.send(MomentsEvent.of(rid, await self.serving.query(query)))
                return
            budget = DEFAULT_REFINE_BUDGET_S if msg.budget is None else msg.budget
            final = await self.serving.query(
                query, budget=budget, on_first=lambda first: conn.send(MomentsEvent.of(rid, first))
            )
            conn.send(MomentsUpdateEvent.of(rid, final))
        except Exception as exc:  # same mapper as above: this runs as its own task
            conn.send(self._error(rid, exc))

    async def cancel(self, conn: Connection, msg: Cancel) -> None:
        task = conn.tasks.pop(msg.target, None)
        watch = conn.watches.pop(msg.target, None)
        if task is None and watch is None:
            raise ProtocolError(f"nothing to cancel with id {clip(repr(msg.target))}")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watch is not None:
            self.serving.close_watch(watch)
            watch.close_all()
        conn.send(CancelledEvent(id=msg.id, target=msg.target))
