"""aiohttp server: the websocket API and plain HTTP on one port.

Why aiohttp: one dependency serves the websocket *and* POST endpoints on the
same port. The ``websockets`` package's server answers only GET upgrades,
so WHIP (an HTTP POST of an SDP offer) could not share its port, and
aiortc — which the WHIP ingest is built on — is itself used with aiohttp in
its own examples. ``websockets`` remains the client library.

Routes: ``GET /ws`` (websocket, protocol in :mod:`agent.service.protocol`),
``GET /healthz``, ``GET /metrics`` (Prometheus text),
``GET /thumbnails/{stream}/{t}.jpg`` (nearest stored frame), and the WHIP
routes of :func:`streams.whip.whip_routes` (``POST /whip/{stream}``...).

Slow clients: each connection has a bounded outbound queue of
``client_queue`` events. Above half of it (the low watermark) ``progress``
events are dropped and a non-final ``moment.update`` replaces the queued
update of the same match (coalescing); at the high watermark the client
gets an ``error`` with code ``slow_client`` and is disconnected (close code
1008). Nothing the service stores depends on a client keeping up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from agent.errors import ProtocolError, VmrError
from agent.service.config import ServiceConfig, parse_spec
from agent.service.metrics import CONTENT_TYPE
from agent.service.pipeline import Service
from agent.service.protocol import (
    PROTOCOL_VERSION,
    SLOW_CLIENT,
    UNAUTHORIZED,
    Cancel,
    ClientMessage,
    Hello,
    QueryMsg,
    StreamsAdd,
    StreamsList,
    StreamsRemove,
    WatchMsg,
    error_event,
    moments_event,
    parse_message,
    request_id,
    to_query,
)
from agent.service.watch import Watch

log = logging.getLogger(__name__)


class Client:
    """One websocket connection: its outbound queue, request tasks and watches."""

    def __init__(self, ws: web.WebSocketResponse, limit: int) -> None:
        self.ws = ws
        self.high = limit
        self.low = max(1, limit // 2)
        self.queue: deque[dict[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.watches: dict[str, Watch] = {}
        self.authed = False
        self.dropped = 0
        self.kicked = False
        self.closing = False
        """Set when the connection ends: the writer sends what is queued, then returns."""

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event (never blocks; applies the slow-client policy)."""
        if self.kicked:
            return
        n = len(self.queue)
        if n >= self.low and not _essential(event):
            if event["type"] == "moment.update":
                for i, old in enumerate(self.queue):
                    if old["type"] == "moment.update" and (old["id"], old["match"]) == (
                        event["id"],
                        event["match"],
                    ):
                        self.queue[i] = event
                        return
            if event["type"] == "progress":
                self.dropped += 1
                return
        if n >= self.high:
            self.kicked = True
            self.queue.clear()
            self.queue.append(error_event(None, code=SLOW_CLIENT, message="client too slow; disconnecting"))
        else:
            self.queue.append(event)
        self.ready.set()

    async def writer(self) -> None:
        """Send queued events in order; closes the socket after a slow-client error."""
        while True:
            while not self.queue:
                if self.closing:
                    return
                self.ready.clear()
                await self.ready.wait()
            event = self.queue.popleft()
            await self.ws.send_json(event)
            if self.kicked and not self.queue:
                await self.ws.close(code=1008, message=b"slow client")
                return


def _forget_task(tasks: dict[str, asyncio.Task[None]], rid: str, _task: object) -> None:
    tasks.pop(rid, None)


def _essential(event: dict[str, Any]) -> bool:
    return event["type"] not in ("progress", "moment.update") or bool(event.get("closed"))


class Server:
    """The HTTP + websocket front of a :class:`Service`."""

    def __init__(self, service: Service, cfg: ServiceConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.clients: set[Client] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_message_bytes)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/thumbnails/{stream}/{t}.jpg", self.thumbnail)
        if self.service.whip is not None:
            from streams.whip import whip_routes

            app.add_routes(whip_routes(self.service.whip, token=self.cfg.token))
        return app

    async def start(self) -> int:
        """Listen on the configured host/port (0 picks a free port); returns the port."""
        self._runner = web.AppRunner(self.app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.cfg.port
        return self.port

    async def close(self) -> None:
        """Disconnect clients and stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        for client in list(self.clients):
            await client.ws.close(code=1001, message=b"server shutdown")
        if runner is not None:
            await runner.cleanup()

    # ----------------------------------------------------------------- HTTP
    async def healthz(self, request: web.Request) -> web.Response:
        streams = self.service.list_streams()
        body = {
            "status": "ok",
            "protocol": PROTOCOL_VERSION,
            "streams": len(streams),
            "failed": [s["id"] for s in streams if s["status"] == "failed"],
        }
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.service.metrics(len(self.clients))
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def thumbnail(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        st = self.service.idx.streams.get(stream)
        try:
            t = float(request.match_info["t"])
        except ValueError:
            raise web.HTTPBadRequest(text="time must be a number of stream seconds") from None
        if st is None or st.store is None or len(st.store) == 0:
            raise web.HTTPNotFound(text=f"no stored frames for stream {stream!r}")
        try:
            found, jpeg = await asyncio.to_thread(st.store.get_jpeg, t)
        except VmrError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"X-Stream-Time": f"{found:.3f}"})

    # ------------------------------------------------------------ websocket
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp's own cap sits above ours, so an oversize message gets a typed error, not a close.
        ws = web.WebSocketResponse(max_msg_size=2 * self.cfg.max_message_bytes, heartbeat=30.0)
        await ws.prepare(request)
        client = Client(ws, self.cfg.client_queue)
        client.authed = self.cfg.token is None
        self.clients.add(client)
        writer = asyncio.create_task(client.writer(), name="ws-writer")
        if client.authed:
            self.service.subscribers.add(client.send)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._handle(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    client.send(
                        error_event(None, ProtocolError("binary messages are not part of the protocol"))
                    )
                if client.kicked or ws.closed:
                    break
        finally:
            await self._drop(client, writer)
        return ws

    async def _drop(self, client: Client, writer: asyncio.Task[None]) -> None:
        self.clients.discard(client)
        self.service.subscribers.discard(client.send)
        for watch in client.watches.values():
            self.service.close_watch(watch)
        pending = list(client.tasks.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        client.closing = True
        client.ready.set()
        try:
            await asyncio.wait_for(writer, 1.0)  # flush queued events (a socket already closed fails fast)
        except (TimeoutError, ConnectionError, RuntimeError):
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _handle(self, client: Client, raw: str) -> None:
        rid = request_id(raw)
        try:
            if len(raw.encode()) > self.cfg.max_message_bytes:
                raise ProtocolError(f"message over {self.cfg.max_message_bytes} bytes")
            msg = parse_message(raw)
            if not client.authed and not isinstance(msg, Hello):
                client.send(error_event(rid, code=UNAUTHORIZED, message="send hello with the token first"))
                client.kicked = True
                return
            await self._dispatch(client, msg)
        except VmrError as exc:
            client.send(error_event(rid, exc))
        except Exception:  # never a traceback to the client
            log.exception("request %s failed", rid)
            client.send(error_event(rid, code="internal", message="internal error; see the server log"))

    async def _dispatch(self, client: Client, msg: ClientMessage) -> None:
        svc = self.service
        if isinstance(msg, Hello):
            if self.cfg.token is not None and msg.token != self.cfg.token:
                client.send(error_event(msg.id, code=UNAUTHORIZED, message="wrong or missing token"))
                client.kicked = True
                return
            if msg.protocol != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol {msg.protocol} not supported; this server speaks {PROTOCOL_VERSION}"
                )
            if not client.authed:
                client.authed = True
                svc.subscribers.add(client.send)
            info = svc.idx.info()
            client.send(
                {
                    "type": "hello",
                    "id": msg.id,
                    "protocol": PROTOCOL_VERSION,
                    "server": "vmr",
                    "model": info["model"],
                    "meaningless": info["meaningless"],
                }
            )
        elif isinstance(msg, StreamsList):
            client.send({"type": "streams", "id": msg.id, "streams": svc.list_streams()})
        elif isinstance(msg, StreamsAdd):
            info = await svc.add_stream(parse_spec(msg.stream))
            client.send({"type": "stream", "id": msg.id, "stream": info})
        elif isinstance(msg, StreamsRemove):
            await svc.remove_stream(msg.stream)
            client.send({"type": "stream.removed", "id": msg.id, "stream": msg.stream})
        elif isinstance(msg, QueryMsg | WatchMsg):
            rid = msg.id or uuid.uuid4().hex
            if rid in client.tasks or rid in client.watches:
                raise ProtocolError(f"request id {rid!r} is already in use")
            task = asyncio.create_task(self._answer(client, rid, msg), name=f"request-{rid}")
            client.tasks[rid] = task
            task.add_done_callback(functools.partial(_forget_task, client.tasks, rid))
        elif isinstance(msg, Cancel):
            await self._cancel(client, msg)

    async def _answer(self, client: Client, rid: str, msg: QueryMsg | WatchMsg) -> None:
        svc = self.service
        try:
            query = to_query(msg, svc.settings.query)
            top_k = query.top_k or svc.settings.query.top_k
            if isinstance(msg, WatchMsg):
                watch = await svc.open_watch(
                    rid, query, client.send, threshold=msg.threshold, close_seconds=msg.close_seconds
                )
                client.watches[rid] = watch
                client.send(
                    {
                        "type": "watching",
                        "id": rid,
                        "threshold": watch.threshold,
                        "calibrating": watch.calibrating,
                    }
                )
                if not msg.backward:
                    return
            client.send(moments_event(rid, await svc.query(query), top_k))
        except VmrError as exc:
            client.send(error_event(rid, exc))
        except Exception:
            log.exception("request %s failed", rid)
            client.send(error_event(rid, code="internal", message="internal error; see the server log"))

    async def _cancel(self, client: Client, msg: Cancel) -> None:
        task = client.tasks.pop(msg.target, None)
        watch = client.watches.pop(msg.target, None)
        if task is None and watch is None:
            raise ProtocolError(f"nothing to cancel with id {msg.target!r}")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watch is not None:
            self.service.close_watch(watch)
            watch.close_all()
        client.send({"type": "cancelled", "id": msg.id, "target": msg.target})
