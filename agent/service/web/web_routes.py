"""HTTP routes of the web page: the page itself, its static files and the source files it plays.

Routes (all on the service's one aiohttp application, so the service's
middleware — token and Origin checks — covers every one of them):

* ``GET /`` — ``index.html``.
* ``GET /static/{name}`` — one of the page's own files (:data:`STATIC`); any
  other name is 404. Names are looked up in a fixed table, never joined to a
  path, so no request can reach another file.
* ``GET /media/{stream}`` — the source file of a ``file`` stream, by stream
  id, with HTTP range requests (aiohttp's :class:`~aiohttp.web.FileResponse`
  answers ``Range`` with 206): the page's ``<video>`` seeks in it. Only
  files the service already ingests are served; a stream without a source
  file (live kinds) is 404.

The page and its files are read once, at start, from the package (they are
package data): a request never touches the disk for them.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path

from aiohttp import web

from agent.service.serving import Serving

STATIC: dict[str, str] = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
"""The page's files under ``/static/`` and their content types."""

PAGE = "index.html"
MEDIA_KINDS = frozenset({"file"})
"""Stream kinds whose ``path`` is one source file the page may play by range requests."""


def _read(name: str) -> bytes:
    return resources.files("agent.service.web").joinpath(name).read_bytes()


class WebRoutes:
    """The page's routes over a :class:`Serving`; :meth:`routes` is what the server mounts."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self._page = _read(PAGE)
        self._static = {name: _read(name) for name in STATIC}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/media/{stream}", self.media),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound(text=f"no static file {name!r}")
        return web.Response(body=body, content_type=STATIC[name], charset="utf-8")

    async def media(self, request: web.Request) -> web.FileResponse:
        """The source file of stream ``{stream}`` (range requests answered with 206); 404 otherwise."""
        stream = request.match_info["stream"]
        path = await self.source_file(stream)
        if path is None:
            raise web.HTTPNotFound(text=f"stream {stream!r} has no source file to play")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # FileResponse stats and reads the file in the executor: the event loop never blocks on disk.
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "no-store"})

    async def source_file(self, stream: str) -> Path | None:
        """The ingested source file of ``stream`` (None: unknown stream, or not a file kind)."""
        for status in await self.serving.list_streams():
            if status.id == stream and status.kind in MEDIA_KINDS and status.path:
                return Path(status.path)
        return None
