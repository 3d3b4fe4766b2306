"""Decoding video files (archives, recordings) into sampled frames.

:func:`decode_frames` is a plain synchronous generator (PyAV, frame/slice
threads inside FFmpeg); :class:`FileSource` runs it in a worker thread and
hands frames to asyncio consumers through a bounded queue with backpressure.

What damaged input really does (checked with PyAV 18 / FFmpeg 7):

* Random bytes, a truncated MP4 (no ``moov`` atom) or a file without a video
  stream fail at open: :class:`CorruptVideoError`.
* A truncated Matroska / MPEG-TS / AVI file does *not* raise: the demuxer
  logs "File ended prematurely" and stops, and the H.264 decoder conceals
  broken macroblocks. We therefore compare the time the packets reached with
  the duration the container declares; when the stream ends well short of
  it (more than max(1 s, 2 %)), the good frames are yielded first and then
  :class:`CorruptVideoError` says where decoding stopped. MPEG-TS declares
  no duration (FFmpeg estimates it from the timestamps at the file's tail),
  so a cut TS file is indistinguishable from a shorter one and just ends.
* Garbage in the middle of an MP4/MKV (index intact) makes single packets
  fail in ``avcodec_send_packet`` (``InvalidDataError``): such a packet is
  skipped, counted and logged (the first one, then a total at the end), and
  decoding resumes at the next good picture. More than
  :data:`MAX_BAD_PACKETS_IN_A_ROW` in a row abort with
  :class:`CorruptVideoError`. The same damage in an AVI stops the demuxer;
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
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video.stream

from agent.errors import CorruptVideoError, SourceError
from agent.types import Frame
from streams.sampler import Sampler, frame_seconds, to_rgb, tune_decoder

log = logging.getLogger(__name__)

MAX_BAD_PACKETS_IN_A_ROW = 50
"""Consecutive undecodable packets after which a file counts as corrupt."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream."""

    path: Path
    duration: float
    """Seconds (stream duration when known, else the container's; 0 if neither)."""
    fps: float | None
    width: int
    height: int
    codec: str
    frames: int | None
    """Frame count declared by the container, when it declares one."""


def _open(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and its first video stream, translating PyAV errors."""
    try:
        container = av.open(str(path), mode="r")
    except FileNotFoundError as exc:  # av.error.FileNotFoundError derives from it
        raise SourceError(f"{path}: no such file") from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise CorruptVideoError(f"{path}: cannot open as video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise CorruptVideoError(f"{path}: no video stream")
    return container, container.streams.video[0]


# Matroska stores the segment's *end* time as its duration (FFmpeg's muxer
# writes the largest timestamp), so a stream that starts late looks longer.
_DURATION_IS_END = ("matroska",)


def _declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Declared length of the video stream in seconds (0 when unknown)."""
    tb = stream.time_base
    if stream.duration is not None and tb is not None and stream.duration > 0:
        return float(stream.duration * tb)
    if container.duration is None or container.duration <= 0:
        return 0.0
    seconds = container.duration / av.time_base
    if container.format.name.startswith(_DURATION_IS_END) and stream.start_time and tb is not None:
        seconds -= float(stream.start_time * tb)
    return max(0.0, seconds)


def probe(path: Path) -> VideoInfo:
    """Read the header of ``path``: duration, rate, size, codec.

    Raises :class:`SourceError` for a missing file and
    :class:`CorruptVideoError` for anything that is not decodable video.
    """
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=path,
            duration=_declared_duration(container, stream),
            fps=float(rate) if rate else None,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            frames=stream.frames or None,
        )
    finally:
        container.close()


class _Clock:
    """Stream seconds per frame; extrapolates over frames without pts."""

    def __init__(self, start_pts: int | None, time_base: Fraction | None, fps: float | None) -> None:
        self.start_pts = start_pts
        self.time_base = time_base
        self.period = 1.0 / fps if fps else 0.04
        self.last: float | None = None

    def seconds(self, frame: av.VideoFrame) -> float:
        t = frame_seconds(frame, self.start_pts, self.time_base)
        if t is None:
            # No pts (raw/RTSP-like streams): one nominal period after the previous frame.
            t = 0.0 if self.last is None else self.last + self.period
        self.last = t
        return t


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float) -> None:
    if start <= 0 or stream.time_base is None:
        return
    target = int(start / stream.time_base) + (stream.start_time or 0)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as exc:
        # Unseekable input: decode from the beginning and drop frames before start.
        log.warning("%s: seek to %.2fs failed (%s); decoding from the start", container.name, start, exc)


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
) -> Iterator[Frame]:
    """Yield sampled RGB frames of ``path`` with their stream times.

    Times are ``(pts - start_time) * time_base`` (variable frame rate and
    non-zero start times come out right). At most ``fps`` frames per stream
    second are kept; ``keyframes_only`` makes FFmpeg skip every non-key frame
    (a fast coarse pass) and samples the keyframes. Kept frames are
    converted and resized once so the short side is ``short_side``.
    ``stop`` (checked per packet) ends the generator early and quietly.

    Raises :class:`CorruptVideoError` (after yielding the good frames) when
    the input is damaged; see the module docstring for what counts.
    """
    container, vstream = _open(path)
    try:
        yield from _decode(
            container, vstream, path, stream, Sampler(fps), keyframes_only, short_side, start, end, stop
        )
    finally:
        container.close()


def _decode(
    container: av.container.InputContainer,
    vstream: av.video.stream.VideoStream,
    path: Path,
    stream: str,
    sampler: Sampler,
    keyframes_only: bool,
    short_side: int,
    start: float,
    end: float | None,
    stop: threading.Event | None,
) -> Iterator[Frame]:
    tune_decoder(vstream)
    if keyframes_only:
        vstream.codec_context.skip_frame = "NONKEY"
    rate = vstream.average_rate or vstream.guessed_rate
    clock = _Clock(vstream.start_time, vstream.time_base, float(rate) if rate else None)
    declared = _declared_duration(container, vstream)
    _seek(container, vstream, start)
    reached = 0.0  # furthest stream time seen in packets (decoded or skipped)
    bad_in_row = bad_total = 0
    try:
        for packet in container.demux(vstream):
            if stop is not None and stop.is_set():
                return
            reached = max(reached, _packet_end(packet, vstream))
            try:
                frames = packet.decode()
            except av.InvalidDataError as exc:
                bad_in_row += 1
                bad_total += 1
                # One line for the first, the count at the end: a damaged file can have thousands.
                level = logging.WARNING if bad_total == 1 else logging.DEBUG
                log.log(level, "%s: damaged packet near %.2fs skipped (%s)", path, reached, exc)
                if bad_in_row > MAX_BAD_PACKETS_IN_A_ROW:
                    raise CorruptVideoError(
                        f"{path}: {bad_in_row} damaged packets in a row at {reached:.2f}s"
                    ) from exc
                continue
            bad_in_row = 0
            for frame in frames:
                t = clock.seconds(frame)
                if t < start:
                    continue
                if end is not None and t >= end:
                    return
                if sampler.take(t):
                    yield Frame(stream, t, to_rgb(frame, short_side), keyframe=bool(frame.key_frame))
    except av.FFmpegError as exc:
        raise CorruptVideoError(f"{path}: unreadable at {reached:.2f}s ({exc})") from exc
    if bad_total:
        log.warning("%s: %d damaged packets skipped", path, bad_total)
    _check_complete(path, declared, reached, clock.period, start)


def _packet_end(packet: av.Packet, vstream: av.video.stream.VideoStream) -> float:
    pts = packet.pts if packet.pts is not None else packet.dts
    if pts is None or vstream.time_base is None:
        return 0.0
    dur = packet.duration or 0
    return float((pts + dur - (vstream.start_time or 0)) * vstream.time_base)


def _check_complete(path: Path, declared: float, reached: float, period: float, start: float) -> None:
    """Raise when the packets ended well before the declared duration (a truncated file)."""
    if declared <= 0 or start >= declared:
        return
    slack = max(1.0, 0.02 * declared, 3 * period)
    if reached + slack < declared:
        raise CorruptVideoError(f"{path}: ends at {reached:.2f}s of a declared {declared:.2f}s (truncated?)")


_END = object()


class FileSource:
    """Async iterator of :class:`Frame` from a video file.

    Decoding runs in one worker thread. Frames pass through a bounded queue
    with *backpressure*: a file replay never drops a frame, the decoder
    waits while the queue is full. ``realtime=True`` paces frames at stream
    speed (a recording replayed as if live). ``start`` seeks to that stream
    second first (to the keyframe before it, then decodes and discards the
    frames before ``start``), so resuming a long archive costs no decoding of
    what came before. :attr:`progress` is the share of the declared duration
    decoded so far. Errors from the decoder
    (:class:`CorruptVideoError`) reach the consumer after the good frames.

    Use as ``async with FileSource(path) as src: async for frame in src``;
    :meth:`close` is idempotent and stops the thread promptly.
    """

    _PUT_TIMEOUT = 0.05  # how often a blocked decoder re-checks for close()

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
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not start >= 0.0:  # also rejects NaN
            raise SourceError(f"start must be a non-negative number of seconds, not {start}")
        self.path = Path(path)
        self.start = start
        self.stream = stream
        self.realtime = realtime
        self._fps = fps
        self._keyframes_only = keyframes_only
        self._short_side = short_side
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._duration = 0.0
        self._decoded_t = start
        self._finished = False
        self._closed = False
        self._pace: tuple[float, float] | None = None  # (loop time, stream time) of the first frame
        self.frames_out = 0
        """Frames handed to the consumer so far."""

    @property
    def progress(self) -> float:
        """Seconds decoded / declared duration, in [0, 1]; 1 once the file is done."""
        if self._finished:
            return 1.0
        if self._duration <= 0:
            return 0.0
        return min(1.0, self._decoded_t / self._duration)

    async def __aenter__(self) -> FileSource:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> FileSource:
        return self

    def _start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode-{self.stream}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Worker thread: decode, hand over each frame, then the end marker or the error."""
        outcome: object = _END
        try:
            self._duration = probe(self.path).duration
            for frame in decode_frames(
                self.path,
                stream=self.stream,
                fps=self._fps,
                keyframes_only=self._keyframes_only,
                short_side=self._short_side,
                start=self.start,
                stop=self._stop,
            ):
                self._decoded_t = frame.t
                if not self._put(frame):
                    return
        except Exception as exc:  # VmrError for bad input; anything else is a bug, surfaced too
            outcome = exc
        self._put(outcome)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._PUT_TIMEOUT)
            except queue.Full:
                if self._loop is not None and self._loop.is_closed():
                    return False  # the owner's loop is gone without close(): stop anyway
                continue
            if self._loop is not None and self._ready is not None:
                try:
                    self._loop.call_soon_threadsafe(self._ready.set)
                except RuntimeError:  # loop already closed: nobody is listening
                    return False
            return True
        return False

    async def __anext__(self) -> Frame:
        self._start()
        if self._closed or self._finished or self._ready is None:
            raise StopAsyncIteration
        while True:
            try:
                item = self._queue.get_nowait()
                break
            except queue.Empty:
                self._ready.clear()
                if not self._queue.empty():  # put between get_nowait and clear
                    continue
                await self._ready.wait()
                if self._closed:
                    raise StopAsyncIteration from None
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        assert isinstance(item, Frame)
        if self.realtime:
            await self._wait_for(item.t)
        self.frames_out += 1
        return item

    async def _wait_for(self, t: float) -> None:
        loop = asyncio.get_running_loop()
        if self._pace is None:
            self._pace = (loop.time(), t)
            return
        delay = self._pace[0] + (t - self._pace[1]) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop decoding and release the file; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._ready is not None:
            self._ready.set()  # wake a consumer waiting in __anext__
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        while True:  # drop queued frames now rather than when the object dies
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
