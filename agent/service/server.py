"""The service's listening socket: one aiohttp server for the websocket API and plain HTTP.

Why aiohttp: one dependency serves the websocket *and* POST endpoints on the
same port. The ``websockets`` package's server answers only GET upgrades,
so WHIP (an HTTP POST of an SDP offer) could not share its port, and
aiortc — which the WHIP ingest is built on — is itself used with aiohttp in
its own examples. ``websockets`` remains the client library.

The routes and the websocket dispatch live in :mod:`agent.service.router`,
the per-client queue in :mod:`agent.service.connection`, the answers in
:mod:`agent.service.serving`; the token, origin and backoff middleware of
every route in :mod:`agent.service.auth`, what clients may add in
:mod:`agent.service.access`.
"""

from __future__ import annotations

from aiohttp import web

from agent.errors import ConfigError
from agent.service.config import ServiceConfig
from agent.service.router import Router
from agent.service.serving import Serving
from agent.service.web.web_routes import WebRoutes


class Server:
    """Listens on the configured host/port and serves a :class:`Router` of ``serving``."""

    def __init__(self, serving: Serving, cfg: ServiceConfig) -> None:
        self.router = Router(serving, cfg)
        self.web = WebRoutes(serving)
        """The web page's routes (its files read here, once, before the loop serves)."""
        self.cfg = cfg
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listen (port 0 picks a free port); returns the port."""
        app = self.router.app()
        app.add_routes(self.web.routes())  # the page: under the same middleware
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, or the host is not an address of this machine
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror or exc}"
            ) from exc
        server = site._server  # aiohttp exposes the bound sockets only here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.cfg.port
        self.router.access.own_ports.add(self.port)  # clients may not point an RTSP stream at us
        return self.port

    async def close(self) -> None:
        """Disconnect clients and stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        for conn in list(self.router.connections):
            await conn.ws.close(code=1001, message=b"server shutdown")
        if runner is not None:
            await runner.cleanup()
