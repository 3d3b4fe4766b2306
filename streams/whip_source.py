"""The media side of a WHIP stream: one :class:`WhipSource` per stream, fed by publisher tracks.

:class:`~streams.whip.WhipIngest` (the WebRTC side) creates the source and
runs :meth:`WhipSource.consume` (video) and :meth:`WhipSource.consume_audio`
(audio, when the stream asks for it) as tasks for each publisher session.
See :mod:`streams.whip` for timing, wall clock and queue policy.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Literal, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streams.audio import AudioChunker
from streams.bridge import Bridge, QueuePolicy
from streams.live_source import LiveSource
from streams.media import Frame, Media
from streams.sampler import Sampler, to_rgb
from streams.source import SourceStats
from streams.timeline import LiveClock


class SessionOwner(Protocol):
    """What a source needs of its ingest: ending its publisher sessions when it closes."""

    async def end_sessions(self, stream: str) -> None: ...


class WhipSource(LiveSource):
    """Media of one WHIP stream across publisher sessions (async iterator).

    Counters: :attr:`frames_in` (decoded frames received), :attr:`frames_out`,
    :attr:`dropped` (latest-wins drops), :attr:`reconnects` (sessions after
    the first). :attr:`publishing` says whether a publisher is connected.
    Closing the source ends its publisher's session too (through the
    :class:`WhipIngest` that made it).
    """

    queue_policy: ClassVar[QueuePolicy] = "latest"
    restarts_clock: ClassVar[bool] = True

    def __init__(
        self,
        stream: str,
        *,
        fps: float = 2.0,
        short_side: int = 224,
        queue_size: int = 8,
        audio: bool = False,
        ingest: SessionOwner | None = None,
    ) -> None:
        self.stream = stream
        self.audio = audio
        self._sampler = Sampler(fps)
        self._short_side = short_side
        self._bridge: Bridge[Media] = Bridge(queue_size, "latest")
        self._clock = LiveClock()
        self._chunker = AudioChunker(stream) if audio else None
        self._ingest = ingest
        self._sessions = 0
        self._arrival: float | None = None  # monotonic arrival of the last video frame
        self._closed = False
        self.publishing = False
        self.frames_in = 0
        self.frames_out = 0
        self.audio_out = 0
        self.reconnects = 0

    @property
    def closed(self) -> bool:
        return self._bridge.closed

    def stats(self) -> SourceStats:
        if self.closed:
            state: Literal["connecting", "streaming", "closed"] = "closed"
        else:
            state = "streaming" if self.publishing else "connecting"
        return SourceStats(
            state,
            frames=self.frames_out,
            drops=self.dropped,
            reconnects=self.reconnects,
            audio_chunks=self.audio_out,
            extra={
                "publishing": self.publishing,
                "wall_source": "arrival",
                "clock_clamped": self._clock.clamped,
                "clock_jumps": self._clock.jumps,
            },
        )

    async def __anext__(self) -> Media:
        return await self._next_item()

    async def __aenter__(self) -> WhipSource:
        return self

    async def close(self) -> None:
        """End iteration (items already queued are still delivered) and the publisher's session.

        Idempotent. The ingest keeps the (closed) entry: a new
        :meth:`WhipIngest.add_stream` for the same id makes a fresh source.
        """
        if self._closed:
            return
        self._closed = True
        self._bridge.close()
        if self._ingest is not None:
            await self._ingest.end_sessions(self.stream)

    async def consume(self, track: MediaStreamTrack) -> None:
        """Read one publisher's video track until it ends (run as a task by the ingest)."""
        self._clock.new_session()
        if self._sessions:
            self.reconnects += 1
        self._sessions += 1
        self.publishing = True
        wall_offset: float | None = None
        try:
            while not self.closed:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return  # the publisher went away
                now_wall, now_mono = time.time(), time.monotonic()
                self.frames_in += 1
                if not isinstance(frame, av.VideoFrame):
                    continue  # a video track yields frames; packets only with decode=False publishers
                pts, tb = frame.pts, frame.time_base
                raw = float(pts * tb) if pts is not None and tb is not None else None
                t = self._clock.map(raw, now_mono)
                self._arrival = now_mono
                if wall_offset is None:
                    wall_offset = now_wall - t
                if not self._sampler.take(t):
                    continue
                image = await asyncio.to_thread(to_rgb, frame, self._short_side)
                self._bridge.put(Frame(self.stream, t, image, t + wall_offset, bool(frame.key_frame)))
        finally:
            self.publishing = False

    async def consume_audio(self, track: MediaStreamTrack) -> None:
        """Read one publisher's audio track into chunks until it ends (run as a task by the ingest).

        The first audio frame is placed at the video timeline's "now" (its
        last frame plus the time since it arrived); later frames follow by
        their own RTP time.
        """
        chunker = self._chunker
        if chunker is None:
            return
        anchor: tuple[float, float] | None = None  # (stream time, raw time) of the first frame
        try:
            while not self.closed:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if not isinstance(frame, av.AudioFrame) or frame.pts is None or frame.time_base is None:
                    continue
                raw = float(frame.pts * frame.time_base)
                if anchor is None:
                    anchor = (self._now_t(), raw)
                t = anchor[0] + raw - anchor[1]
                for chunk in chunker.push(frame, t, time.time()):
                    self._bridge.put(chunk)
        finally:
            for chunk in chunker.flush():
                self._bridge.put(chunk)

    def _now_t(self) -> float:
        last = self._clock.last_t
        if last is None or self._arrival is None:
            return 0.0 if last is None else last
        return last + max(0.0, time.monotonic() - self._arrival)
