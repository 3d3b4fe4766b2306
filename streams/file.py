"""Decoding video files (archives, recordings) into sampled frames (and, when asked, sound).

:func:`decode_frames` is a plain synchronous generator (PyAV, frame/slice
threads inside FFmpeg) over the one decode loop of :mod:`streams.decode`;
:class:`FileSource` runs it in a worker thread and hands media to asyncio
consumers through a :class:`~streams.bridge.Bridge` with backpressure.

What damaged input really does (checked with PyAV 18 / FFmpeg 7):

* Random bytes, a truncated MP4 (no ``moov`` atom) or a file without a video
  stream fail at open: :class:`~streams.errors.CorruptMediaError`.
* A truncated Matroska / MPEG-TS / AVI file does *not* raise: the demuxer
  logs "File ended prematurely" and stops, and the H.264 decoder conceals
  broken macroblocks. Truncation is therefore read off the file itself,
  never off a header duration (those cover the longest track, audio
  included, or are wrong): a cut last packet (AVI) or fewer bytes than the
  container states (Matroska's Segment size, AVI's RIFF size). The good
  frames are yielded first, then :class:`~streams.errors.CorruptMediaError`
  says where decoding stopped. MPEG-TS states no length, so a cut TS file is
  indistinguishable from a shorter one and just ends.
* Garbage in the middle of an MP4/MKV (index intact) makes single packets
  fail in ``avcodec_send_packet`` (``InvalidDataError``): such a packet is
  skipped, counted and logged (the first one, then a total at the end), and
  decoding resumes at the next good picture. More than
  :data:`~streams.decode.MAX_BAD_PACKETS_IN_A_ROW` in a row abort with
  :class:`~streams.errors.CorruptMediaError`. The same damage in an AVI stops the demuxer;
  the duration check then reports it. A demux error aborts at once, after
  the frames already yielded.
* ``/work/shared/data/videos/Megamind_bugy.avi`` is despite its name fully
  decodable: it is OpenCV's heavily compressed re-encode of ``Megamind.avi``
  (the PSNR/SSIM tutorial's test input), 270 MPEG-4 frames at a declared
  30 fps with visible compression artefacts. FFmpeg only warns "Discarding
  excessive bitstream in packed xvid". It decodes without error here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from streams.audio import AudioChunker
from streams.bridge import Bridge, BridgeClosed, QueuePolicy
from streams.decode import MAX_BAD_PACKETS_IN_A_ROW, Damage, Picture, declared_duration, decode, open_media
from streams.errors import SourceUnavailableError, StreamError
from streams.media import AudioChunk, Frame, Media
from streams.probe import VideoInfo, probe
from streams.registry import OpenContext, register
from streams.sampler import DecoderThreads, HeldBack, Sampler, to_rgb
from streams.source import RecordingSpec, Source, SourceState, SourceStats
from streams.timeline import Pacer

__all__ = ["MAX_BAD_PACKETS_IN_A_ROW", "FileSource", "FileSpec", "VideoInfo", "decode_frames", "probe"]


def decode_media(
    path: Path,
    *,
    stream: str = "file",
    fps: float = 2.0,
    keyframes_only: bool = False,
    short_side: int = 224,
    start: float = 0.0,
    end: float | None = None,
    stop: threading.Event | None = None,
    audio: bool = False,
    damage: Damage | None = None,
    formats: Collection[str] | None = None,
    threads: DecoderThreads = "AUTO",
    thread_count: int = 0,
) -> Iterator[Media]:
    """Like :func:`decode_frames`, plus :class:`AudioChunk` items (mono 16 kHz, ~1 s) with ``audio``.

    ``damage`` (optional) receives what decoding noticed. Each frame carries
    its ``duration``: how long its picture stays on screen (until the next
    picture or its own duration, clipped to the end of the stream), so a
    sample is yielded once the next picture is decoded (or the input ends).
    ``formats``: the demuxers FFmpeg may open it with (None: any), see
    :func:`~streams.decode.open_media`. ``thread_count``: decoder threads (0: FFmpeg's
    choice, :func:`~streams.sampler.tune_decoder`). ``threads``: FFmpeg's decoder threading
    (:data:`~streams.sampler.DecoderThreads`).
    """
    container, vstream = open_media(path, formats)
    sampler = Sampler(fps)
    chunker = AudioChunker(stream) if audio else None
    held = HeldBack(declared_duration(container, vstream))
    pictures = decode(
        container,
        vstream,
        label=path,
        keyframes_only=keyframes_only,
        audio=audio,
        start=start,
        end=end,
        stop=stop,
        damage=damage,
        threads=threads,
        thread_count=thread_count,
    )
    try:
        try:
            for item in pictures:
                if isinstance(item, Picture):
                    yield from held.shown(item.t, item.duration)
                    if sampler.take(item.t):
                        image = to_rgb(item.frame, short_side)
                        held.keep(Frame(stream, item.t, image, keyframe=bool(item.frame.key_frame)))
                elif chunker is not None:
                    yield from chunker.push(item.frame, item.t)
        except StreamError:
            yield from held.ended(complete=False)  # the good frames first, the error after
            raise
        yield from held.ended(complete=True)
        if chunker is not None:
            yield from chunker.flush()
    finally:
        container.close()


def decode_frames(
    path: Path,
    *,
    stream: str = "file",
    fps: float = 2.0,
    keyframes_only: bool = False,
    short_side: int = 224,
    start: float = 0.0,
    end: float | None = None,
    stop: threading.Event | None = None,
    damage: Damage | None = None,
    thread_count: int = 0,
) -> Iterator[Frame]:
    """Yield sampled RGB frames of ``path`` with their stream times.

    Times are ``(pts - start_time) * time_base`` (variable frame rate and
    non-zero start times come out right). At most ``fps`` frames per stream
    second are kept; ``keyframes_only`` makes FFmpeg skip every non-key frame
    (a fast coarse pass) and samples the keyframes. Kept frames are
    converted and resized once so the short side is ``short_side``.
    ``stop`` (checked per packet) ends the generator early and quietly.
    ``damage`` (optional) receives what decoding noticed (:class:`~streams.decode.Damage`).
    ``thread_count``: decoder threads (0: FFmpeg's choice), see :func:`~streams.sampler.tune_decoder`.

    Raises :class:`~streams.errors.SourceUnavailableError` for a missing file and
    :class:`~streams.errors.CorruptMediaError` (after yielding the good frames) when the input
    is damaged; see the module docstring for what counts.
    """
    for item in decode_media(
        path,
        stream=stream,
        fps=fps,
        keyframes_only=keyframes_only,
        short_side=short_side,
        start=start,
        end=end,
        stop=stop,
        damage=damage,
        thread_count=thread_count,
    ):
        if isinstance(item, Frame):
            yield item


class FileSource(Source):
    """Async iterator of :class:`Frame` (and :class:`AudioChunk` with ``audio``) from a video file.

    Decoding runs in one worker thread. Media pass through a bounded
    :class:`~streams.bridge.Bridge` with *backpressure* (policy ``"block"``):
    a file replay never drops a frame, the decoder waits while the queue is
    full. ``realtime=True`` paces frames at stream speed (a recording
    replayed as if live). ``start`` seeks to that stream second first (to the
    keyframe before it, then decodes and discards the frames before
    ``start``), so resuming a long archive costs no decoding of what came
    before; ``resume`` (a :meth:`resume_token`) does the same and also skips
    the frame at exactly that second, which was already handed out.
    :attr:`progress` is the share of the declared duration decoded so far;
    ``stats().damaged_packets`` counts the packets skipped as undecodable.
    Errors from the decoder (:class:`~streams.errors.CorruptMediaError`) reach the consumer
    after the good frames. ``threads``: FFmpeg's decoder threading
    (:data:`~streams.sampler.DecoderThreads`; a paced replay opened by the service uses ``SLICE``). ``formats`` (None: any) goes to FFmpeg at every open:
    a demuxer outside it fails with :class:`~streams.errors.FormatNotAllowedError`.

    Use as ``async with FileSource(path) as src: async for frame in src``;
    :meth:`close` is idempotent and stops the thread promptly.
    """

    queue_policy: ClassVar[QueuePolicy] = "block"

    def __init__(
        self,
        path: Path,
        *,
        stream: str = "file",
        fps: float = 2.0,
        keyframes_only: bool = False,
        short_side: int = 224,
        realtime: bool = False,
        queue_size: int = 64,
        start: float = 0.0,
        resume: dict[str, Any] | None = None,
        audio: bool = False,
        formats: Collection[str] | None = None,
        threads: DecoderThreads = "AUTO",
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        after: float | None = None
        if resume is not None:
            seconds = resume.get("seconds")
            if not isinstance(seconds, int | float) or not seconds >= 0.0:
                raise SourceUnavailableError(f"invalid file resume token {resume!r}")
            start = after = float(seconds)
        if not start >= 0.0:  # also rejects NaN
            raise SourceUnavailableError(f"start must be a non-negative number of seconds, not {start}")
        self.path = Path(path)
        self.start = start
        self.stream = stream
        self.realtime = realtime
        self._after = after
        self._fps = fps
        self._keyframes_only = keyframes_only
        self._short_side = short_side
        self._audio = audio
        self._formats = None if formats is None else frozenset(formats)
        self._threads: DecoderThreads = threads
        self._bridge: Bridge[Media | BaseException | None] = Bridge(queue_size, "block")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pacer = Pacer() if realtime else None
        self._duration = 0.0
        self._decoded_t = start
        self._last_t: float | None = after
        self._state: SourceState = "connecting"
        self._error: str | None = None
        self._damage = Damage()
        self.frames_out = 0
        """Frames handed to the consumer so far."""
        self.audio_out = 0

    @property
    def progress(self) -> float:
        """Seconds decoded / declared duration, in [0, 1]; 1 once the file ended without error.

        A file that failed keeps the share it reached (0 when nothing decoded).
        """
        if self._state == "done" and self._error is None:
            return 1.0
        if self._duration <= 0:
            return 0.0
        return min(1.0, self._decoded_t / self._duration)

    def stats(self) -> SourceStats:
        return SourceStats(
            self._state,
            frames=self.frames_out,
            last_error=self._error,
            audio_chunks=self.audio_out,
            progress=round(self.progress, 4),
            damaged_packets=self._damage.packets,
            extra={"discontinuities": len(self._damage.stitched)},
        )

    def resume_token(self) -> dict[str, Any] | None:
        """``{"seconds": t}`` of the last frame handed out (None before the first)."""
        return None if self._last_t is None else {"seconds": self._last_t}

    async def __aenter__(self) -> FileSource:
        self._begin()
        return self

    def _begin(self) -> None:
        if self._thread is not None or self._state in ("closed", "done"):
            return
        self._bridge.bind()
        self._thread = threading.Thread(target=self._run, name=f"decode-{self.stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Worker thread: decode, hand over each item, then None (the end) or the error."""
        outcome: BaseException | None = None
        try:
            # Every open carries the allow-list: the file may be replaced after it was admitted.
            self._duration = probe(self.path, self._formats).duration
            for item in decode_media(
                self.path,
                stream=self.stream,
                fps=self._fps,
                keyframes_only=self._keyframes_only,
                short_side=self._short_side,
                start=self.start,
                stop=self._stop,
                audio=self._audio,
                damage=self._damage,
                formats=self._formats,
                threads=self._threads,
            ):
                if isinstance(item, Frame):
                    if self._after is not None and item.t <= self._after:
                        continue  # handed out before the restart
                    self._decoded_t = item.t
                if not self._bridge.put(item):
                    return
        except Exception as exc:  # StreamError for bad input; anything else is a bug, surfaced too
            outcome = exc
        self._bridge.put(outcome)

    async def __anext__(self) -> Media:
        self._begin()
        if self._state in ("closed", "done"):
            raise StopAsyncIteration
        try:
            item = await self._bridge.get()
        except BridgeClosed:
            raise StopAsyncIteration from None
        if item is None:
            self._state = "done"
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._state, self._error = "done", str(item)
            raise item
        self._state = "streaming"
        if isinstance(item, AudioChunk):
            self.audio_out += 1
            return item
        if self._pacer is not None:
            await self._pacer.wait(item.t)
        self.frames_out += 1
        self._last_t = item.t
        return item

    async def close(self) -> None:
        """Stop decoding and release the file; safe to call more than once."""
        if self._state != "done":
            self._state = "closed"
        self._stop.set()
        self._bridge.close(drop=True)  # wakes a blocked decoder and a waiting consumer
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)


class FileSpec(RecordingSpec):
    """A video file, replayed as fast as ingest takes it (or at stream pace, or in a loop)."""

    kind: Literal["file"]
    realtime: bool = False
    """Replay at stream pace (as if live) instead of as fast as possible."""
    loop: bool = False
    """Start over at the end (a stand-in camera for demos and load tests)."""
    formats: list[str] | None = Field(default=None, max_length=64)
    """FFmpeg demuxer names the file may open with, at every open (None: any, the operator's own
    streams). A service writes its allow-list here when a client adds the stream."""

    @property
    def live(self) -> bool:
        return self.realtime

    @property
    def paced(self) -> bool:
        return self.realtime

    @property
    def repeats(self) -> bool:
        return self.loop

    def check_input(self) -> None:
        if not Path(self.path).is_file():
            raise SourceUnavailableError(f"{self.path}: no such file")


def open_file(spec: FileSpec, ctx: OpenContext) -> FileSource:
    """Factory: the file from the token (or the stored point), paced by the consumer."""
    spec.check_input()
    return FileSource(
        Path(spec.path),
        stream=spec.id,
        fps=ctx.fps_of(spec),
        short_side=ctx.short_side,
        queue_size=ctx.queue_size,
        start=ctx.resume_at or 0.0,
        resume=ctx.resume_token,
        audio=spec.audio,
        formats=spec.formats,
        # A paced replay stands in for a camera: decode it like one (RTSP: slice threads).
        threads="SLICE" if spec.paced else "AUTO",
    )


register(FileSpec, open_file)
