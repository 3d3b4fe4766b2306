"""RTSP pull with PyAV, reconnecting forever (or as often as asked).

One worker thread per source opens the URL, decodes, samples to ``fps``,
converts kept frames (``to_rgb``) and hands them to the event loop through a
:class:`~streams.bridge.Bridge` (queue policy ``"latest"``: latest wins,
drops counted). With ``audio=True`` the session's first audio stream is
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
import errno
import logging
import random
import threading
import time
from typing import ClassVar, Literal

import av
import av.container
from pydantic import Field

from streams.audio import AudioChunker
from streams.bridge import Bridge, QueuePolicy
from streams.errors import DisconnectedError, SourceUnavailableError
from streams.live_source import LiveSource
from streams.liveness import Deadlines
from streams.media import Frame, Media
from streams.registry import OpenContext, register
from streams.sampler import Sampler, to_rgb, tune_decoder
from streams.source import SourceSpec, SourceState, SourceStats
from streams.timeline import LiveClock
from streams.urls import mask_text, mask_url

log = logging.getLogger(__name__)

State = Literal["idle", "connecting", "streaming", "backoff", "closed"]
WallSource = Literal["rtcp", "arrival", "unknown"]


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
        self._sampler = Sampler(fps)
        self._short_side = short_side
        self._backoff = (backoff_initial, backoff_max)
        try:
            self._deadlines = Deadlines(open_timeout, read_timeout)
        except ValueError as exc:
            raise SourceUnavailableError(str(exc)) from exc
        self._max_skew = max_clock_skew
        self._options = {
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
        self._chunker = AudioChunker(stream) if audio else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._state: State = "idle"
        self._closed = False
        self.wall_source: WallSource = "unknown"
        """Where the latest session's wall clock comes from."""
        self.frames_in = 0
        self.frames_out = 0
        self.audio_out = 0
        self.reconnects = 0
        self.failures = 0
        self.damaged_packets = 0
        """Packets skipped as undecodable (before the first keyframe, after loss)."""
        self._session_frames = 0
        self.last_error: str | None = None
        """Why the latest connection attempt or session ended, for /metrics and logs."""

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

    def _run(self) -> None:
        failed_in_row = 0
        sessions = 0
        try:
            while not self._stop.is_set():
                self._state = "connecting"
                delivered = self._session(sessions)
                if delivered is not None:
                    sessions += 1
                if self._stop.is_set():
                    break
                failed_in_row = 1 if delivered else failed_in_row + 1
                self.failures += 1
                if self.retries is not None and failed_in_row > self.retries:
                    reason = self.last_error or "disconnected"
                    self.last_error = f"gave up after {failed_in_row} failed attempt(s) in a row: {reason}"
                    log.warning("%s: %s", self.stream, self.last_error)
                    error = DisconnectedError(f"{mask_url(self.url)}: {self.last_error}")
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

    def _session(self, sessions: int) -> int | None:
        """One connection: None if it did not open, else the number of frames delivered."""
        deadlines = self._deadlines
        opened = time.monotonic()
        options = {"timeout": str(int(deadlines.socket_timeout * 1_000_000)), **self._options}
        try:
            container = av.open(
                self.url, options=options, timeout=(deadlines.open_timeout, deadlines.frame_timeout)
            )
        except (av.FFmpegError, OSError) as exc:
            if _timed_out(exc) or time.monotonic() - opened >= deadlines.open_timeout:
                waited = deadlines.open_timeout
                deadlines.open_timed_out()
                self.last_error = (
                    f"open timed out after {waited:.1f}s (next try allows {deadlines.open_timeout:.1f}s)"
                )
            else:
                self.last_error = mask_text(f"open failed: {exc}")  # FFmpeg quotes the URL
            return None
        self._session_frames = 0
        try:
            if not container.streams.video:
                self.last_error = "no video stream"
                return None
            if sessions:
                self.reconnects += 1
            self._clock.new_session()
            deadlines.new_session()
            return self._pump(container)
        except (av.FFmpegError, OSError) as exc:
            if _timed_out(exc):
                waited = deadlines.frame_timeout
                if self._session_frames:
                    deadlines.read_timed_out()
                self.last_error = (
                    f"read timed out: no media for {waited:.1f}s "
                    f"(next session allows {deadlines.frame_timeout:.1f}s)"
                )
            else:
                self.last_error = mask_text(f"read failed: {exc}")
            return self._session_frames
        finally:
            if self._chunker is not None:
                for chunk in self._chunker.flush():
                    self._bridge.put(chunk)
            container.close()

    def _pump(self, container: av.container.InputContainer) -> int:
        vstream = container.streams.video[0]
        tune_decoder(vstream, threads="SLICE")  # frame threading would add frames of latency
        tb = vstream.time_base
        astream = (
            container.streams.audio[0] if self._chunker is not None and container.streams.audio else None
        )
        wall_offset: float | None = None  # wall - t for this session, fixed by its first frame
        session_offset: float | None = None  # t - raw for this session, once known (places audio)
        delivered = 0
        last_picture = time.monotonic()
        self._state = "streaming"
        self.last_error = "end of stream"
        packets = container.demux(vstream) if astream is None else container.demux(vstream, astream)
        for packet in packets:
            if self._stop.is_set():
                break
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                # Before the first keyframe (no SPS/PPS yet) or after loss: wait for a decodable one.
                self.damaged_packets += 1
                frames = []
            if not frames and time.monotonic() - last_picture > self._deadlines.picture_timeout:
                waited = self._deadlines.picture_timeout
                self.last_error = f"no decodable picture for {waited:.1f}s"
                return delivered
            for frame in frames:
                if isinstance(frame, av.AudioFrame):
                    self._audio(frame, session_offset, wall_offset)
                    continue
                if not isinstance(frame, av.VideoFrame):
                    continue
                now_wall, now_mono = time.time(), time.monotonic()
                last_picture = now_mono
                self.frames_in += 1
                self._session_frames += 1
                self._deadlines.frame(now_mono, bool(frame.key_frame))
                raw = float(frame.pts * tb) if frame.pts is not None and tb is not None else None
                clamped = self._clock.clamped
                t = self._clock.map(raw, now_mono)
                if raw is not None and self._clock.clamped == clamped:  # a stray pts places no audio
                    session_offset = t - raw
                if wall_offset is None:
                    wall_offset = self._session_wall_offset(container, raw, t, now_wall)
                elif self.wall_source == "arrival":
                    # Frames FFmpeg buffered while probing arrive in a burst, late: the least
                    # delayed frame dates the session (the offset only moves earlier).
                    wall_offset = min(wall_offset, now_wall - t)
                wall = t + wall_offset
                if not self._sampler.take(t):
                    continue
                image = to_rgb(frame, self._short_side)
                if not self._bridge.put(Frame(self.stream, t, image, wall, bool(frame.key_frame))):
                    return delivered
                delivered += 1
        return delivered

    def _audio(self, frame: av.AudioFrame, session_offset: float | None, wall_offset: float | None) -> None:
        """Sound on the video's timeline; dropped until the session's first video frame places it."""
        if self._chunker is None or session_offset is None or frame.pts is None or frame.time_base is None:
            return
        t = float(frame.pts * frame.time_base) + session_offset
        wall = None if wall_offset is None else t + wall_offset
        for chunk in self._chunker.push(frame, t, wall):
            self._bridge.put(chunk)

    def _session_wall_offset(
        self, container: av.container.InputContainer, raw: float | None, t: float, now_wall: float
    ) -> float:
        """wall - t for the whole session, chosen at its first frame (one clock per session).

        The sender's clock (RTCP sender reports: FFmpeg's ``start_time_realtime``
        is the wall time of pts 0) when a report has come and it is within
        ``max_clock_skew`` of our clock; else our arrival time of this frame.
        """
        realtime = container.start_time_realtime
        if realtime is not None and realtime > 0:
            # A session's first frame without pts (GStreamer's, FFmpeg's first RTP packet) is pts 0.
            wall = realtime / 1_000_000 + (raw or 0.0)
            if abs(wall - now_wall) <= self._max_skew:
                self.wall_source = "rtcp"
                return wall - t
        self.wall_source = "arrival"
        return now_wall - t


def _timed_out(exc: BaseException) -> bool:
    """Whether a PyAV error is a deadline (PyAV's interrupt: ExitError) or a socket timeout."""
    return isinstance(exc, av.ExitError | TimeoutError) or getattr(exc, "errno", None) == errno.ETIMEDOUT


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
