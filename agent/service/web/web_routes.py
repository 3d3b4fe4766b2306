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
* ``GET /clips/{stream}.mp4?start=S&end=E`` — an MP4 of the stored frames of
  any stream between stream seconds S and E (:mod:`.clips`): what the page
  plays for live streams. 400 for a bad span, 404 for an unknown stream or
  one without stored frames there.

With a token set, only the page and its files (:data:`PAGE_PATHS`) load
without it: the router lists them among the auth middleware's open paths.
The page and its files are read once, at start, from the package (they are
package data): a request never touches the disk for them.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from importlib import resources
from pathlib import Path

from aiohttp import web

from agent.errors import QueryError, VmrError
from agent.service.serving import Serving
from agent.service.web.clips import clip_times, encode_mp4

STATIC: dict[str, str] = {
    "app.js": "text/javascript",
    "views.js": "text/javascript",
    "style.css": "text/css",
}
"""The page's files under ``/static/`` and their content types."""

PAGE = "index.html"
PAGE_PATHS = frozenset({"/", *(f"/static/{name}" for name in STATIC)})
"""Paths served without the token (the page and its files carry no data; everything they fetch needs it)."""
MEDIA_KINDS = frozenset({"file"})
"""Stream kinds whose ``path`` is one source file the page may play by range requests."""
SLACK = 1.0
"""Seconds outside a clip's span from which a nearest stored frame is still taken into the clip."""


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
            web.get("/clips/{stream}.mp4", self.clip),
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
                path = Path(status.path)
                # A client's path was resolved when it was admitted: a symlink there now was put
                # in its place afterwards (it could point anywhere). Only a regular file is served.
                return path if await asyncio.to_thread(_plain_file, path) else None
        return None

    async def clip(self, request: web.Request) -> web.Response:
        """An MP4 of ``{stream}``'s stored frames in ``[start, end]`` (400: bad span; 404: no frames)."""
        stream = request.match_info["stream"]
        try:
            times = clip_times(float(request.query["start"]), float(request.query["end"]))
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="start and end must be numbers of stream seconds") from None
        except QueryError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        try:
            found = [await self.serving.thumbnail(stream, t) for t in times]
            # The nearest stored frame of a look-up may lie outside the span: kept only when close.
            near = [f for f in found if times[0] - SLACK <= f[0] <= times[-1] + SLACK]
            body = await asyncio.to_thread(encode_mp4, near)
        except VmrError as exc:  # unknown stream, no stored frames (there)
            raise web.HTTPNotFound(text=str(exc)) from exc
        return web.Response(body=body, content_type="video/mp4", headers={"Cache-Control": "no-store"})


def _plain_file(path: Path) -> bool:
    """Whether ``path`` is a regular file and not a symlink (``lstat``: links are not followed)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
