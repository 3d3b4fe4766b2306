"""RTSP pull with PyAV, reconnecting forever (or as often as asked).

One worker thread per source opens the URL, decodes, samples to ``fps``,
converts kept frames (``to_rgb``) and hands them to the event loop through a
:class:`~streams.bridge.Bridge` (queue policy ``"latest"``: latest wins,
drops counted). This module holds the source (its reconnect loop, backoff
and async side) and its spec; one session, open to end, is
:mod:`streams.rtsp_session`. With ``audio=True`` the session's first audio stream is
decoded too and handed out as :class:`~streams.media.AudioChunk` on the
video's timeline.

State machine (:attr:`RTSPSource.state`)::

    idle -> connecting -> streaming -> (connection lost) -> backoff -> connecting ...
                      \\-> (open failed) -> backoff            any state -> closed

A dropped connection never reaches the consumer: the thread waits a capped
exponential backoff with jitter and reconnects. Only when the caller limits
``retries`` (``0`` = no retries) does the iterator raise
:class:`~streams.errors.DisconnectedError` once they are used up.

Time: ``Frame.t`` is one monotonic timeline across reconnects
(:class:`~streams.timeline.LiveClock`: each reconnect leaves a gap equal to the
wall-clock time it took, listed in :attr:`RTSPSource.gaps`; a stray sender
timestamp is placed by arrival and counted, ``clock_clamped`` in stats; a
sender clock that jumps and stays starts a new piece at real elapsed time,
``clock_jumps``). Frames whose pts is None — GStreamer's RTSP server sends
the very first frame that way — are placed by arrival time after their
predecessor.

Wall clock — one clock per session, chosen at its first frame and shown as
``wall_source`` in stats: ``"rtcp"`` when a sender report has come by then
and is within ``max_clock_skew`` seconds of our clock (FFmpeg's RTSP demuxer
turns the first report's NTP time into ``start_time_realtime``, the wall time
of pts 0, so ``wall = start_time_realtime + pts`` is the sender's capture
clock, right even for frames FFmpeg buffered while probing); ``"arrival"``
otherwise (our clock when the frames arrive: the least delayed frame so far,
as the frames FFmpeg buffered while probing come late, in a burst). Every
frame of the session is ``t + offset``: a skewed camera never carries two
clocks in one session, and a stray timestamp never a stray wall.

Timeouts adapt to the camera (:mod:`streams.liveness`: socket silence with
RTCP counted as liveness, a frame deadline of three frame intervals, an open
deadline that doubles after each timeout and covers two keyframe intervals);
``open_timeout``/``read_timeout`` (also in :class:`RTSPSpec`) are the
floors. Packets that do not decode (a stream joined between keyframes whose
SDP lacks SPS/PPS, loss) are skipped and counted (``damaged_packets``); a
session with no decodable picture for the picture deadline ends. Why the
latest attempt ended is ``last_error``; a source that gives up
(``retries``) says so there and in its :class:`DisconnectedError`.
:meth:`RTSPSource.close` returns within about the frame deadline even when
the server hangs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import ClassVar, Literal

from pydantic import Field

from streams.audio import AudioChunker
from streams.bridge import Bridge, QueuePolicy
from streams.errors import DisconnectedError, SourceUnavailableError
from streams.live_source import LiveSource
from streams.liveness import Deadlines
from streams.media import Media
from streams.registry import OpenContext, register
from streams.rtsp_session import RTSPSessions, WallSource
from streams.sampler import Sampler
from streams.source import SourceSpec, SourceState, SourceStats
from streams.timeline import LiveClock
from streams.urls import mask_url

log = logging.getLogger(__name__)

State = Literal["idle", "connecting", "streaming", "backoff", "closed"]


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (1, 2, ...): capped exponential, "equal jitter".

    Half the capped delay is fixed and half random, so many cameras dropped
    at once (a switch reboot) do not reconnect in lockstep, yet each waits at
    least half its step.
    """
    step = min(cap, initial * 2.0 ** max(0, attempt - 1))
    return step / 2.0 + rng.uniform(0.0, step / 2.0)


class RTSPSource(LiveSource):
    """Async iterator of :class:`Frame` (and :class:`AudioChunk` with ``audio``) from an RTSP URL.

    ``async with RTSPSource(url, stream="cam1") as src: async for frame in src``.
    Counters: :attr:`frames_in` (decoded), :attr:`frames_out` (delivered),
    :attr:`dropped` (stale frames discarded, consumer too slow),
    :attr:`reconnects` (sessions after the first), :attr:`failures`
    (connection attempts or sessions that failed).
    """

    queue_policy: ClassVar[QueuePolicy] = "latest"
    restarts_clock: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        fps: float = 2.0,
        short_side: int = 224,
        transport: Literal["tcp", "udp"] = "tcp",
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        retries: int | None = None,
        queue_size: int = 8,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        max_clock_skew: float = 120.0,
        options: dict[str, str] | None = None,
        audio: bool = False,
    ) -> None:
        if not url.startswith(("rtsp://", "rtsps://")):
            raise SourceUnavailableError(f"not an RTSP URL: {mask_url(url)!r}")
        if transport not in ("tcp", "udp"):
            raise SourceUnavailableError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise SourceUnavailableError("need 0 < backoff_initial <= backoff_max")
        if retries is not None and retries < 0:
            raise SourceUnavailableError("retries must be >= 0 or None (forever)")
        self.url = url
        self.stream = stream
        self.transport = transport
        self.retries = retries
        self._backoff = (backoff_initial, backoff_max)
        try:
            self._deadlines = Deadlines(open_timeout, read_timeout)
        except ValueError as exc:
            raise SourceUnavailableError(str(exc)) from exc
        options = {
            "rtsp_transport": transport,
            # FFmpeg probes up to 5 s by default; a live H.264 stream's parameters come within 1 s.
            "analyzeduration": "1000000",
            # Estimating the frame rate while probing waits for ~20 frames: minutes for a slow
            # camera. Live time comes from pts and arrival, so the estimate is not needed.
            "fpsprobesize": "0",
            **(options or {}),
        }
        self._bridge: Bridge[Media] = Bridge(queue_size, "latest")
        self._clock = LiveClock()
        self._stop = threading.Event()
        self._sessions = RTSPSessions(
            url,
            stream=stream,
            options=options,
            deadlines=self._deadlines,
            sampler=Sampler(fps),
            short_side=short_side,
            clock=self._clock,
            chunker=AudioChunker(stream) if audio else None,
            bridge=self._bridge,
            stop=self._stop,
            max_skew=max_clock_skew,
            on_streaming=self._streaming,
        )
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._state: State = "idle"
        self._closed = False
        self.frames_out = 0
        self.audio_out = 0
        self.failures = 0

    @property
    def frames_in(self) -> int:
        """Pictures decoded, over every session."""
        return self._sessions.frames_in

    @property
    def reconnects(self) -> int:
        """Sessions opened after the first."""
        return self._sessions.reconnects

    @property
    def damaged_packets(self) -> int:
        """Packets skipped as undecodable (before the first keyframe, after loss)."""
        return self._sessions.damaged_packets

    @property
    def wall_source(self) -> WallSource:
        """Where the latest session's wall clock comes from."""
        return self._sessions.wall_source

    @property
    def last_error(self) -> str | None:
        """Why the latest connection attempt or session ended, for /metrics and logs."""
        return self._sessions.last_error

    @property
    def state(self) -> State:
        """connecting / streaming / backoff / closed (idle before the first read)."""
        return self._state

    def stats(self) -> SourceStats:
        state: SourceState = "connecting" if self._state == "idle" else self._state
        return SourceStats(
            state,
            frames=self.frames_out,
            drops=self.dropped,
            reconnects=self.reconnects,
            last_error=self.last_error,
            audio_chunks=self.audio_out,
            damaged_packets=self.damaged_packets,
            extra={
                "failures": self.failures,
                "wall_source": self.wall_source,
                "clock_clamped": self._clock.clamped,
                "clock_jumps": self._clock.jumps,
                **self._deadlines.to_dict(),
            },
        )

    async def __aenter__(self) -> RTSPSource:
        self.start()
        return self

    def start(self) -> None:
        """Start the worker thread (iteration starts it too). Needs a running loop."""
        if self._thread is not None or self._closed:
            return
        self._bridge.bind()
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{self.stream}", daemon=True)
        self._thread.start()

    async def __anext__(self) -> Media:
        self.start()
        return await self._next_item()

    async def close(self) -> None:
        """Stop the thread and end iteration. Idempotent; waits for the thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._bridge.close()
        thread = self._thread
        if thread is not None:
            # The thread notices the stop flag per frame, or after read_timeout on a stalled server.
            await asyncio.to_thread(thread.join)
        self._state = "closed"

    # ---- worker thread -------------------------------------------------------------------------

    def _streaming(self) -> None:
        """Called by the session once its packets flow."""
        self._state = "streaming"

    def _run(self) -> None:
        failed_in_row = 0
        sessions = 0
        try:
            while not self._stop.is_set():
                self._state = "connecting"
                delivered = self._sessions.run(sessions)
                if delivered is not None:
                    sessions += 1
                if self._stop.is_set():
                    break
                failed_in_row = 1 if delivered else failed_in_row + 1
                self.failures += 1
                if self.retries is not None and failed_in_row > self.retries:
                    reason = self.last_error or "disconnected"
                    gave_up = f"gave up after {failed_in_row} failed attempt(s) in a row: {reason}"
                    self._sessions.last_error = gave_up
                    log.warning("%s: %s", self.stream, gave_up)
                    error = DisconnectedError(f"{mask_url(self.url)}: {gave_up}")
                    self._bridge.finish(error)
                    return
                self._state = "backoff"
                delay = backoff_delay(max(1, failed_in_row), *self._backoff, self._rng)
                log.info("%s: %s; reconnecting in %.2fs", self.stream, self.last_error, delay)
                self._stop.wait(delay)
        except Exception as exc:  # a bug: surface it to the consumer rather than dying silently
            log.exception("%s: RTSP worker crashed", self.stream)
            self._bridge.finish(exc)
            return
        finally:
            self._state = "closed" if self._stop.is_set() else self._state
        self._bridge.finish()


class RTSPSpec(SourceSpec):
    """An RTSP camera or server, pulled and reconnected (giving up after ``OpenContext.retries`` failures in a row)."""

    kind: Literal["rtsp"]
    url: str
    transport: Literal["tcp", "udp"] = "tcp"
    open_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds an open may take at first (doubled after each open that timed out)."""
    read_timeout: float = Field(default=5.0, gt=0, le=300)
    """Floor of the read deadlines: silence (no byte, RTCP included) and no media (see streams.liveness)."""
    retries: int | None = Field(default=None, ge=0)
    """Failed connection attempts in a row before the source gives up; None: ``OpenContext.retries``
    (the operator's cameras: forever unless the service says otherwise)."""

    @property
    def live(self) -> bool:
        return True

    def location(self) -> dict[str, str | None]:
        return {"url": mask_url(self.url), "path": None}


def open_rtsp(spec: RTSPSpec, ctx: OpenContext) -> RTSPSource:
    """Factory: a fresh session (live: nothing to resume), giving up after ``ctx.retries`` failures in a row."""
    return RTSPSource(
        spec.url,
        stream=spec.id,
        fps=ctx.fps_of(spec),
        short_side=ctx.short_side,
        transport=spec.transport,
        queue_size=ctx.queue_size,
        open_timeout=spec.open_timeout,
        read_timeout=spec.read_timeout,
        audio=spec.audio,
        retries=spec.retries if spec.retries is not None else ctx.retries,
    )


register(RTSPSpec, open_rtsp)
