"""WebRTC ingest via WHIP (RFC 9725) on aiortc.

A publisher (OBS, an NVR, a browser) POSTs an SDP offer to
``/whip/{stream}`` and gets ``201 Created`` with the SDP answer and a
``Location`` naming its session; ``DELETE`` on that location ends it.
:class:`WhipIngest` does the WebRTC side independently of any web framework;
:func:`whip_routes` mounts it on aiohttp (the same application that serves
the websocket API, so everything shares one port).

Each stream has one :class:`WhipSource`, an async iterator of frames that
outlives publisher sessions: a publisher that reconnects (a new offer for
the same stream) replaces the old session, counts as a reconnect and
continues the same monotonic timeline (:class:`~streams.timeline.LiveClock`,
gaps recorded). Frames: aiortc decodes in its own thread and hands
``av.VideoFrame`` objects to the event loop; we map their RTP timestamps
(90 kHz, wrapping every 13 h) to stream time with the same rules as RTSP:
a stray timestamp is placed by arrival and counted (``clock_clamped``), a
wrap or any jump that persists starts a new piece of timeline at real
elapsed time (``clock_jumps``); then we sample to ``fps`` and convert only
the kept frames, in a worker thread. ``Frame.wall`` is one clock per
session: the arrival time of its first frame plus the stream time since
(aiortc does not expose the RTCP sender reports; ``wall_source`` is
``"arrival"``).
Delivery uses a :class:`~streams.bridge.Bridge` with queue policy
``"latest"``: latest wins, drops counted.

ICE: no STUN/TURN servers (``RTCConfiguration(iceServers=[])``); the agent
answers with its host candidates, enough for publishers on the same network.
Audio: a stream registered with ``audio=True`` reads the publisher's audio
track into :class:`~streams.media.AudioChunk` items (mono 16 kHz, ~1 s),
placed on the video's timeline by arrival (RTP clocks of different tracks
start at unrelated random values). Otherwise audio tracks are accepted and
discarded (aiortc's ``MediaBlackhole``) so they do not pile up in aiortc's
unbounded track queues.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack

from streams.errors import BadOfferError, SourceUnavailableError, StreamError, UnknownSourceError
from streams.registry import HUB_WHIP, OpenContext, register
from streams.source import SourceSpec
from streams.whip_source import WhipSource

__all__ = ["MAX_SDP_BYTES", "WhipIngest", "WhipSource", "WhipSpec", "whip_routes"]

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
"""An SDP offer is a few kilobytes; anything far larger is not one."""


@dataclass
class _Session:
    resource: str
    stream: str
    pc: RTCPeerConnection
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    blackhole: MediaBlackhole = field(default_factory=MediaBlackhole)
    video: bool = False
    audio: bool = False


class WhipIngest:
    """WHIP endpoint logic: offers in, answers out, media to per-stream sources.

    Streams are registered with :meth:`add_stream` (a service does it when a
    ``whip`` stream is added); an offer for an unknown (or closed) stream
    raises :class:`~streams.errors.UnknownSourceError` unless
    ``auto_register`` is set. Every peer connection and reader task is owned
    here and ended by :meth:`delete`, :meth:`end_sessions`,
    :meth:`remove_stream` or :meth:`close`.
    """

    def __init__(
        self, *, fps: float = 2.0, short_side: int = 224, queue_size: int = 8, auto_register: bool = False
    ) -> None:
        self._fps = fps
        self._short_side = short_side
        self._queue_size = queue_size
        self.auto_register = auto_register
        self._sources: dict[str, WhipSource] = {}
        self._sessions: dict[str, _Session] = {}  # by resource id
        self._housekeeping: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def streams(self) -> list[str]:
        """Registered stream ids."""
        return list(self._sources)

    def add_stream(
        self,
        stream: str,
        *,
        fps: float | None = None,
        short_side: int | None = None,
        queue_size: int | None = None,
        audio: bool = False,
    ) -> WhipSource:
        """Register ``stream`` (idempotent while its source is open) and return its source.

        Options default to the ingest's own. Raises SourceUnavailableError once closed.
        """
        if self._closed:
            raise SourceUnavailableError("WHIP ingest is closed")
        src = self._sources.get(stream)
        if src is None or src.closed:
            src = WhipSource(
                stream,
                fps=fps or self._fps,
                short_side=short_side or self._short_side,
                queue_size=queue_size or self._queue_size,
                audio=audio,
                ingest=self,
            )
            self._sources[stream] = src
        return src

    def source(self, stream: str) -> WhipSource:
        """The source of a registered stream."""
        try:
            return self._sources[stream]
        except KeyError:
            raise UnknownSourceError(f"no WHIP stream {stream!r}") from None

    async def end_sessions(self, stream: str) -> None:
        """End the publisher session(s) of ``stream``, if any."""
        for session in [s for s in self._sessions.values() if s.stream == stream]:
            await self._end(session)

    async def remove_stream(self, stream: str) -> None:
        """End the stream's publisher session, close its source and forget it."""
        await self.end_sessions(stream)
        src = self._sources.pop(stream, None)
        if src is not None:
            await src.close()

    async def handle_offer(self, stream: str, sdp_offer: str) -> tuple[str, str]:
        """Answer a publisher's SDP offer; returns (answer SDP, resource id).

        A new offer for a stream that already has a publisher replaces the
        old session (a reconnecting encoder often cannot DELETE first).
        Raises :class:`~streams.errors.UnknownSourceError`,
        :class:`~streams.errors.BadOfferError` or (closed)
        :class:`~streams.errors.SourceUnavailableError`.
        """
        _check_offer(sdp_offer)
        if self._closed:
            raise SourceUnavailableError("WHIP ingest is closed")
        known = self._sources.get(stream)
        if known is None or known.closed:
            if not self.auto_register:
                raise UnknownSourceError(f"no WHIP stream {stream!r}")
            self.add_stream(stream)
        source = self._sources[stream]
        await self.end_sessions(stream)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = _Session(uuid.uuid4().hex, stream, pc)
        self._wire(session, source)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp_offer, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise BadOfferError("the offer has no video")
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # aiortc gathers every candidate first: no trickle needed
        except BadOfferError:
            await self._end(session)
            raise
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            await self._end(session)
            raise BadOfferError(f"bad SDP offer: {exc}") from exc
        self._sessions[session.resource] = session
        log.info("WHIP %s: publisher session %s", stream, session.resource)
        return pc.localDescription.sdp, session.resource

    async def delete(self, resource: str, stream: str | None = None) -> None:
        """End a publisher session (WHIP DELETE). Unknown ids raise UnknownSourceError."""
        session = self._sessions.get(resource)
        if session is None or (stream is not None and session.stream != stream):
            raise UnknownSourceError(f"no WHIP session {resource!r}")
        await self._end(session)

    async def close(self) -> None:
        """End every session and source; idempotent."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions.values()):
            await self._end(session)
        for src in self._sources.values():
            await src.close()
        while self._housekeeping:
            await asyncio.gather(*list(self._housekeeping), return_exceptions=True)

    def _wire(self, session: _Session, source: WhipSource) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not session.video:
                session.video = True
                session.tasks.append(
                    asyncio.create_task(source.consume(track), name=f"whip-{session.stream}")
                )
            elif track.kind == "audio" and source.audio and not session.audio:
                session.audio = True
                session.tasks.append(
                    asyncio.create_task(source.consume_audio(track), name=f"whip-audio-{session.stream}")
                )
            else:  # unwanted audio, or a second track: discard so it never accumulates
                session.blackhole.addTrack(track)
                self._spawn(session.blackhole.start())

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and session.resource in self._sessions:
                log.info("WHIP %s: session %s %s", session.stream, session.resource, pc.connectionState)
                self._spawn(self._end(session))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)

    async def _end(self, session: _Session) -> None:
        self._sessions.pop(session.resource, None)
        await session.pc.close()  # ends the tracks: readers see MediaStreamError
        await session.blackhole.stop()
        for task in session.tasks:
            task.cancel()
        await asyncio.gather(*session.tasks, return_exceptions=True)


def _check_offer(sdp: str) -> None:
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadOfferError("empty SDP offer")
    if len(sdp) > MAX_SDP_BYTES:
        raise BadOfferError(f"SDP offer over {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise BadOfferError("not an SDP offer (must start with v=0)")
    if "m=video" not in sdp:
        raise BadOfferError("the offer has no video")


def whip_routes(ingest: WhipIngest, *, prefix: str = "/whip", token: str | None = None) -> list[web.RouteDef]:
    """aiohttp routes: ``POST {prefix}/{stream}``, ``DELETE {prefix}/{stream}/{resource}``.

    POST needs ``Content-Type: application/sdp`` (else 415) and answers
    ``201`` with the SDP answer and a ``Location`` header; an unknown stream
    is 404, a bad offer 400. With ``token`` set, requests must carry
    ``Authorization: Bearer <token>`` (RFC 9725 section 4.5) or get 401.
    Trickle ICE (PATCH) is not offered; aiohttp answers it 405.
    """

    def authorised(request: web.Request) -> bool:
        return token is None or request.headers.get("Authorization") == f"Bearer {token}"

    async def post(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="Content-Type must be application/sdp")
        if (request.content_length or 0) > MAX_SDP_BYTES:
            return web.Response(status=413, text="SDP offer too large")
        stream = request.match_info["stream"]
        try:
            answer, resource = await ingest.handle_offer(stream, await request.text())
        except UnknownSourceError as exc:
            return web.Response(status=404, text=str(exc))
        except StreamError as exc:
            return web.Response(status=400, text=str(exc))
        return web.Response(
            status=201,
            body=answer.encode(),
            content_type="application/sdp",
            headers={"Location": f"{prefix}/{stream}/{resource}"},
        )

    async def delete(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            await ingest.delete(request.match_info["resource"], stream=request.match_info["stream"])
        except UnknownSourceError as exc:
            return web.Response(status=404, text=str(exc))
        return web.Response(status=200)

    async def options(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": "application/sdp"})

    return [
        web.post(prefix + "/{stream}", post),
        web.options(prefix + "/{stream}", options),
        web.delete(prefix + "/{stream}/{resource}", delete),
    ]


class WhipSpec(SourceSpec):
    """A stream published to this service over WHIP (``POST /whip/{id}``)."""

    kind: Literal["whip"]

    @property
    def live(self) -> bool:
        return True


def open_whip(spec: WhipSpec, ctx: OpenContext) -> WhipSource:
    """Factory: register the stream with the shared ingest (``ctx.hubs[HUB_WHIP]``)."""
    ingest = ctx.hubs.get(HUB_WHIP)
    if not isinstance(ingest, WhipIngest):
        raise SourceUnavailableError("WHIP ingest is not available in this service")
    return ingest.add_stream(
        spec.id, fps=ctx.fps_of(spec), short_side=ctx.short_side, queue_size=ctx.queue_size, audio=spec.audio
    )


register(WhipSpec, open_whip)
