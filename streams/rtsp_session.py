"""One RTSP session of :class:`~streams.rtsp.RTSPSource`: open the URL, demux, decode, sample, place in time.

:class:`RTSPSessions` runs in the source's worker thread, one call of
:meth:`RTSPSessions.run` per connection; the reconnect loop, its backoff and
the async side stay in :mod:`streams.rtsp` (whose docstring has the rules for
time, wall clocks and timeouts). Here: the open and read deadlines applied
(:mod:`streams.liveness`), undecodable packets skipped and counted, pictures
sampled and timed on the source's :class:`~streams.timeline.LiveClock`, one
wall clock chosen per session (RTCP sender reports or arrival), sound placed
on the video's timeline, every item handed to the bridge. Its counters
(frames decoded, damaged packets, reconnects, the wall clock's source, why
the latest session ended) are the source's statistics.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Literal

import av
import av.container

from streams.audio import AudioChunker
from streams.bridge import Bridge
from streams.liveness import Deadlines
from streams.media import Frame, Media
from streams.sampler import Sampler, to_rgb, tune_decoder
from streams.timeline import LiveClock
from streams.urls import mask_text

WallSource = Literal["rtcp", "arrival", "unknown"]


class RTSPSessions:
    """The sessions of one RTSP source, one at a time, in its worker thread.

    ``on_streaming`` is called once a session's first packets are read (the
    source's state becomes ``streaming``). Counters: :attr:`frames_in`,
    :attr:`damaged_packets`, :attr:`reconnects` (sessions after the first);
    :attr:`wall_source` and :attr:`last_error` describe the latest session.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        options: dict[str, str],
        deadlines: Deadlines,
        sampler: Sampler,
        short_side: int,
        clock: LiveClock,
        chunker: AudioChunker | None,
        bridge: Bridge[Media],
        stop: threading.Event,
        max_skew: float,
        on_streaming: Callable[[], None],
    ) -> None:
        self.url = url
        self.stream = stream
        self._options = options
        self._deadlines = deadlines
        self._sampler = sampler
        self._short_side = short_side
        self._clock = clock
        self._chunker = chunker
        self._bridge = bridge
        self._stop = stop
        self._max_skew = max_skew
        self._on_streaming = on_streaming
        self.wall_source: WallSource = "unknown"
        """Where the latest session's wall clock comes from."""
        self.frames_in = 0
        self.reconnects = 0
        self.damaged_packets = 0
        """Packets skipped as undecodable (before the first keyframe, after loss)."""
        self._session_frames = 0
        self.last_error: str | None = None
        """Why the latest connection attempt or session ended, for /metrics and logs."""

    def run(self, sessions: int) -> int | None:
        """One connection (``sessions``: how many opened before): None if it did not open, else the
        number of frames delivered. Returns when the session ends; ``last_error`` says why."""
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
        self._on_streaming()
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
