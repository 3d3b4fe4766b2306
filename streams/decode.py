"""The one decode loop of recorded media (files and recorder segments), with one damage tolerance.

:func:`open_media` opens a container and its first video stream, translating
PyAV's errors; :func:`decode` demuxes it (video, plus the first audio stream
when asked) and yields every decoded picture and sound frame with its time.

Damage tolerance, the same for every recording:

* A packet that fails in ``avcodec_send_packet`` (``InvalidDataError``:
  garbage inside an intact container) is skipped, counted and logged (the
  first one, then a total at the end); decoding resumes at the next good
  picture; the caller's :class:`Damage` counts them, so a source can report
  that a recording which ended well was not intact. More than
  :data:`MAX_BAD_PACKETS_IN_A_ROW` in a row abort with
  :class:`~streams.errors.CorruptMediaError`.
* A demux error aborts at once, after the frames already yielded.
* When the packets end well before the duration the container declares
  (more than max(1 s, 2 %, three frame periods)), the input was truncated:
  the good frames come first, then :class:`CorruptMediaError` says where
  decoding stopped (``check_truncation``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.audio.stream
import av.container
import av.video.stream

from streams.errors import CorruptMediaError, SourceUnavailableError
from streams.sampler import frame_seconds, tune_decoder

log = logging.getLogger(__name__)

MAX_BAD_PACKETS_IN_A_ROW = 50
"""Consecutive undecodable packets after which an input counts as corrupt."""

# Matroska stores the segment's *end* time as its duration (FFmpeg's muxer
# writes the largest timestamp), so a stream that starts late looks longer.
_DURATION_IS_END = ("matroska",)


@dataclass(slots=True)
class Damage:
    """Packets :func:`decode` skipped as undecodable, summed over every call it is given to.

    Written by the decoding thread, read by the source's ``stats()`` (a plain
    int: one writer, readers tolerate a stale value).
    """

    packets: int = 0


@dataclass(frozen=True, slots=True)
class Picture:
    """A decoded video frame at ``t`` seconds (see :func:`decode` for the origin), lasting ``duration``."""

    frame: av.VideoFrame
    t: float
    duration: float


@dataclass(frozen=True, slots=True)
class Sound:
    """A decoded audio frame whose first sample is at ``t`` seconds (None: right after the previous)."""

    frame: av.AudioFrame
    t: float | None


def open_media(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and its first video stream.

    Raises :class:`SourceUnavailableError` for a missing file and
    :class:`CorruptMediaError` for anything that is not decodable video.
    """
    try:
        container = av.open(str(path), mode="r")
    except FileNotFoundError as exc:  # av.error.FileNotFoundError derives from it
        raise SourceUnavailableError(f"{path}: no such file") from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise CorruptMediaError(f"{path}: cannot open as video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise CorruptMediaError(f"{path}: no video stream")
    return container, container.streams.video[0]


def declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
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


def frame_period(stream: av.video.stream.VideoStream) -> float:
    """Nominal seconds per frame (0.04 when the container declares no rate)."""
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.04


class _Clock:
    """Seconds per frame; extrapolates over frames without pts."""

    def __init__(self, start_pts: int | None, time_base: Fraction | None, period: float) -> None:
        self.start_pts = start_pts
        self.time_base = time_base
        self.period = period
        self.last: float | None = None

    def seconds(self, frame: av.VideoFrame) -> float:
        t = frame_seconds(frame, self.start_pts, self.time_base)
        if t is None:
            # No pts (raw streams): one nominal period after the previous frame.
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


def decode(
    container: av.container.InputContainer,
    vstream: av.video.stream.VideoStream,
    *,
    label: Path | str,
    relative: bool = True,
    keyframes_only: bool = False,
    audio: bool = False,
    start: float = 0.0,
    end: float | None = None,
    stop: threading.Event | None = None,
    check_truncation: bool = True,
    damage: Damage | None = None,
) -> Iterator[Picture | Sound]:
    """Yield every decoded picture (and sound frame, with ``audio``) of an open container.

    Times are ``(pts - start_time) * time_base`` of the video stream with
    ``relative`` (a file's own seconds, 0 at its first frame), else
    ``pts * time_base`` (a recorder's running clock). Pictures before
    ``start`` (seconds; seeks first) are dropped, decoding ends at ``end``;
    ``stop`` (checked per packet) ends the generator early and quietly.
    ``keyframes_only`` makes FFmpeg skip every non-key frame. ``damage``
    (optional) counts the packets skipped as undecodable.

    Raises :class:`CorruptMediaError` after the good frames; see the module docstring.
    """
    tune_decoder(vstream)
    if keyframes_only:
        vstream.codec_context.skip_frame = "NONKEY"
    period = frame_period(vstream)
    origin_pts = vstream.start_time if relative else None
    clock = _Clock(origin_pts, vstream.time_base, period)
    origin = float((origin_pts or 0) * vstream.time_base) if vstream.time_base is not None else 0.0
    astream: av.audio.stream.AudioStream | None = None
    if audio and container.streams.audio:
        astream = container.streams.audio[0]
    declared = declared_duration(container, vstream)
    _seek(container, vstream, start)
    reached = 0.0  # furthest video time seen in packets (decoded or skipped)
    bad_in_row = bad_total = 0
    demuxed = container.demux(vstream) if astream is None else container.demux(vstream, astream)
    try:
        for packet in demuxed:
            if stop is not None and stop.is_set():
                return
            is_video = packet.stream.type == "video"
            if is_video:
                reached = max(reached, _packet_end(packet, vstream))
            try:
                frames = packet.decode()
            except av.InvalidDataError as exc:
                bad_in_row += 1
                bad_total += 1
                if damage is not None:
                    damage.packets += 1
                # One line for the first, the count at the end: a damaged file can have thousands.
                level = logging.WARNING if bad_total == 1 else logging.DEBUG
                log.log(level, "%s: damaged packet near %.2fs skipped (%s)", label, reached, exc)
                if bad_in_row > MAX_BAD_PACKETS_IN_A_ROW:
                    raise CorruptMediaError(
                        f"{label}: {bad_in_row} damaged packets in a row at {reached:.2f}s"
                    ) from exc
                continue
            bad_in_row = 0
            for frame in frames:
                if isinstance(frame, av.AudioFrame):
                    atb = frame.time_base
                    at = (
                        float(frame.pts * atb) - origin if frame.pts is not None and atb is not None else None
                    )
                    if at is None or at >= start:
                        yield Sound(frame, at)
                    continue
                if not isinstance(frame, av.VideoFrame):
                    continue
                t = clock.seconds(frame)
                if t < start:
                    continue
                if end is not None and t >= end:
                    return
                tb = frame.time_base or vstream.time_base
                dur = float(frame.duration * tb) if frame.duration and tb is not None else period
                yield Picture(frame, t, dur)
    except av.FFmpegError as exc:
        raise CorruptMediaError(f"{label}: unreadable at {reached:.2f}s ({exc})") from exc
    if bad_total:
        log.warning("%s: %d damaged packets skipped", label, bad_total)
    if check_truncation:
        _check_complete(label, declared, reached, period, start)


def _packet_end(packet: av.Packet, vstream: av.video.stream.VideoStream) -> float:
    pts = packet.pts if packet.pts is not None else packet.dts
    if pts is None or vstream.time_base is None:
        return 0.0
    dur = packet.duration or 0
    return float((pts + dur - (vstream.start_time or 0)) * vstream.time_base)


def _check_complete(label: Path | str, declared: float, reached: float, period: float, start: float) -> None:
    """Raise when the packets ended well before the declared duration (a truncated input)."""
    if declared <= 0 or start >= declared:
        return
    slack = max(1.0, 0.02 * declared, 3 * period)
    if reached + slack < declared:
        raise CorruptMediaError(f"{label}: ends at {reached:.2f}s of a declared {declared:.2f}s (truncated?)")
