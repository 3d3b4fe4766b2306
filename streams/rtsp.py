"""RTSP pull with PyAV, reconnecting forever (or as often as asked).

One worker thread per source opens the URL, decodes, samples to ``fps``,
converts kept frames (``to_rgb``) and hands them to the event loop through a
:class:`~streams.live.LatestQueue` (live policy: latest wins, drops counted).

State machine (:attr:`RTSPSource.state`)::

    idle -> connecting -> streaming -> (connection lost) -> backoff -> connecting ...
                      \\-> (open failed) -> backoff            any state -> closed

A dropped connection never reaches the consumer: the thread waits a capped
exponential backoff with jitter and reconnects. Only when the caller limits
``retries`` (``0`` = no retries) does the iterator raise
:class:`StreamDisconnectedError` once they are used up.

Time: ``Frame.t`` is one monotonic timeline across reconnects
(:class:`~streams.live.LiveClock`; each reconnect leaves a gap equal to the
wall-clock time it took, listed in :attr:`RTSPSource.gaps`). Frames whose pts
is None — GStreamer's RTSP server sends the very first frame that way — are
placed by arrival time after their predecessor. ``Frame.wall`` comes from the
server's RTCP sender reports: FFmpeg's RTSP demuxer turns the first report's
NTP time into ``AVFormatContext.start_time_realtime`` (the wall time of pts
0), which PyAV exposes, so ``wall = start_time_realtime + pts * time_base``.
That is the capture clock of the sender, and it is right even for the frames
FFmpeg buffered while probing (seconds before they reach us). When no report
has arrived, or the sender's clock is off from ours by more than
``max_clock_skew`` seconds, the wall time is the arrival time of the
session's first frame plus its pts offset (:attr:`RTSPSource.wall_source`
tells which).

Timeouts: ``av.open(timeout=(open, read))`` interrupts a server that accepts
the connection and then stalls, and the RTSP ``timeout`` option (socket I/O
timeout, microseconds; FFmpeg >= 5 renamed the old ``stimeout`` to it) covers
the transport. :meth:`RTSPSource.close` therefore returns within about
``read_timeout`` seconds even when the server hangs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Literal

import av
import av.container

from agent.errors import SourceError, StreamDisconnectedError
from agent.types import Frame
from streams.live import CountedSource, LatestQueue, LiveClock
from streams.sampler import Sampler, to_rgb, tune_decoder

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


class RTSPSource(CountedSource):
    """Async iterator of :class:`Frame` from an RTSP URL.

    ``async with RTSPSource(url, stream="cam1") as src: async for frame in src``.
    Counters: :attr:`frames_in` (decoded), :attr:`frames_out` (delivered),
    :attr:`dropped` (stale frames discarded, consumer too slow),
    :attr:`reconnects` (sessions after the first), :attr:`failures`
    (connection attempts or sessions that failed).
    """

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
    ) -> None:
        if not url.startswith(("rtsp://", "rtsps://")):
            raise SourceError(f"not an RTSP URL: {url!r}")
        if transport not in ("tcp", "udp"):
            raise SourceError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise SourceError("need 0 < backoff_initial <= backoff_max")
        if retries is not None and retries < 0:
            raise SourceError("retries must be >= 0 or None (forever)")
        self.url = url
        self.stream = stream
        self.transport = transport
        self.retries = retries
        self._sampler = Sampler(fps)
        self._short_side = short_side
        self._backoff = (backoff_initial, backoff_max)
        self._timeouts = (open_timeout, read_timeout)
        self._max_skew = max_clock_skew
        self._options = {
            "rtsp_transport": transport,
            # FFmpeg probes up to 5 s by default; a live H.264 stream's parameters come within 1 s.
            "analyzeduration": "1000000",
            "timeout": str(int(read_timeout * 1_000_000)),
            **(options or {}),
        }
        self._queue: LatestQueue[Frame] = LatestQueue(queue_size)
        self._clock = LiveClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._state: State = "idle"
        self._closed = False
        self.wall_source: WallSource = "unknown"
        """Where the latest session's wall clock comes from."""
        self.frames_in = 0
        self.frames_out = 0
        self.reconnects = 0
        self.failures = 0
        self.last_error: str | None = None
        """Why the latest connection attempt or session ended, for /metrics and logs."""

    @property
    def state(self) -> State:
        """connecting / streaming / backoff / closed (idle before the first read)."""
        return self._state

    async def __aenter__(self) -> RTSPSource:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> RTSPSource:
        return self

    def start(self) -> None:
        """Start the worker thread (iteration starts it too). Needs a running loop."""
        if self._thread is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name=f"rtsp-{self.stream}", daemon=True
        )
        self._thread.start()

    async def __anext__(self) -> Frame:
        self.start()
        frame: Frame = await self._next_frame()
        return frame

    async def close(self) -> None:
        """Stop the thread and end iteration. Idempotent; waits for the thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._queue.close()
        thread = self._thread
        if thread is not None:
            # The thread notices the stop flag per frame, or after read_timeout on a stalled server.
            await asyncio.to_thread(thread.join)
        self._state = "closed"

    # ---- worker thread -------------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        failed_in_row = 0
        sessions = 0
        try:
            while not self._stop.is_set():
                self._state = "connecting"
                delivered = self._session(loop, sessions)
                if delivered is not None:
                    sessions += 1
                if self._stop.is_set():
                    break
                failed_in_row = 1 if delivered else failed_in_row + 1
                self.failures += 1
                if self.retries is not None and failed_in_row > self.retries:
                    error = StreamDisconnectedError(f"{self.url}: {self.last_error or 'disconnected'}")
                    self._queue.close_threadsafe(loop, error)
                    return
                self._state = "backoff"
                delay = backoff_delay(max(1, failed_in_row), *self._backoff, self._rng)
                log.info("%s: %s; reconnecting in %.2fs", self.stream, self.last_error, delay)
                self._stop.wait(delay)
        except Exception as exc:  # a bug: surface it to the consumer rather than dying silently
            log.exception("%s: RTSP worker crashed", self.stream)
            self._queue.close_threadsafe(loop, exc)
            return
        finally:
            self._state = "closed" if self._stop.is_set() else self._state
        self._queue.close_threadsafe(loop)

    def _session(self, loop: asyncio.AbstractEventLoop, sessions: int) -> int | None:
        """One connection: None if it did not open, else the number of frames delivered."""
        try:
            container = av.open(self.url, options=self._options, timeout=self._timeouts)
        except (av.FFmpegError, OSError) as exc:
            self.last_error = f"open failed: {exc}"
            return None
        try:
            if not container.streams.video:
                self.last_error = "no video stream"
                return None
            if sessions:
                self.reconnects += 1
            self._clock.new_session()
            return self._pump(container, loop)
        except (av.FFmpegError, OSError) as exc:
            self.last_error = f"read failed: {exc}"
            return 0
        finally:
            container.close()

    def _pump(self, container: av.container.InputContainer, loop: asyncio.AbstractEventLoop) -> int:
        vstream = container.streams.video[0]
        tune_decoder(vstream, threads="SLICE")  # frame threading would add frames of latency
        tb = vstream.time_base
        wall_offset: float | None = None  # wall - t for this session, once known
        delivered = 0
        self._state = "streaming"
        self.last_error = "end of stream"
        for frame in container.decode(vstream):
            if self._stop.is_set():
                break
            now_wall, now_mono = time.time(), time.monotonic()
            self.frames_in += 1
            raw = float(frame.pts * tb) if frame.pts is not None and tb is not None else None
            t = self._clock.map(raw, now_mono)
            if raw is not None:
                wall_offset = self._wall_offset(container, raw, t, now_wall, wall_offset)
            wall = now_wall if wall_offset is None else t + wall_offset
            if not self._sampler.take(t):
                continue
            image = to_rgb(frame, self._short_side)
            if not self._queue.put_threadsafe(
                loop, Frame(self.stream, t, image, wall, bool(frame.key_frame))
            ):
                break
            delivered += 1
        return delivered

    def _wall_offset(
        self,
        container: av.container.InputContainer,
        raw: float,
        t: float,
        now_wall: float,
        current: float | None,
    ) -> float:
        """wall - t for the session: from RTCP sender reports when sane, else first arrival."""
        realtime = container.start_time_realtime
        if realtime is not None and realtime > 0:
            wall = realtime / 1_000_000 + raw
            if abs(wall - now_wall) <= self._max_skew:
                self.wall_source = "rtcp"
                return wall - t
        if current is not None:
            return current
        self.wall_source = "arrival"
        return now_wall - t
