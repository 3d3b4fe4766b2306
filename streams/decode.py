"""The one decode loop of recorded media (files and recorder segments), with one set of rules for real files.

:func:`open_media` opens a container and its video stream, translating
PyAV's errors; :func:`decode` demuxes it (video, plus the first audio stream
when asked) and yields every decoded picture and sound frame with its time.

Which stream is the video: the first video stream that is not an *attached
picture* (disposition ``attached_pic``: cover art in MP4, MKV, MP3, ...).
A file whose only pictures are attached ones raises
:class:`~streams.errors.NoVideoStreamError`; a video stream without a single
decodable frame raises :class:`~streams.errors.EmptyMediaError` (after
demuxing everything, so the caller keeps nothing and writes no index).

Pictures, as every source converts them (:func:`streams.sampler.to_rgb`):
upright per the display matrix (rotation) before the encoder and the frame
store; the short side scaled to the encoder's size and the long side capped
at 4x that (a 1920x1 strip costs what a normal clip costs); a side beyond
32768 px (or none) is an absurd size, a :class:`~streams.errors.CorruptMediaError`
at open (:func:`open_media`) or at the first such picture.

Time, frame by frame (:class:`Clock`):

* A picture's time is ``(pts - start_time) * time_base``. Pictures without
  a pts (raw elementary streams: Annex-B H.264/HEVC, ...) follow their
  predecessor by its duration: the frame's own duration (the parser's, from
  the SPS timing), else the stream's real rate (:func:`frame_period`: the
  codec's frame rate or ``guessed_rate`` for raw streams, never FFmpeg's
  25 fps placeholder ``average_rate``).
* A clock that goes *backwards* by more than one frame period (concatenated
  MPEG-TS/PS files each starting at PTS 0, a camera restarting its clock) is
  a discontinuity: it is stitched in playback order, the next picture
  continuing right after the end of the previous one (as FFmpeg splices TS
  discontinuities), counted and logged in :class:`Damage`; sound follows the
  same offset. Small steps back (one period or less) are left alone.
* A jump *forward* stays a gap (a TS clock +600 s is 600 s of nothing).
* A picture lasts its own duration as the container states it (a screen
  recording holds a frame for seconds; a 25 fps camera for 0.04 s), else one
  nominal frame period; :class:`Picture` carries it, and the sampler
  (:func:`streams.file.decode_media`) clips it to the next picture and the
  end of the stream. That tells a held frame from a discontinuity: only the
  container's duration makes a frame last (Matroska and MPEG-TS state none
  per frame, so a long pause there is a gap).

Damage tolerance, the same for every recording:

* A packet that fails in ``avcodec_send_packet`` (``InvalidDataError``:
  garbage inside an intact container) is skipped, counted and logged (the
  first one, then a total at the end); decoding resumes at the next good
  picture; the caller's :class:`Damage` counts them, so a source can report
  that a recording which ended well was not intact. More than
  :data:`MAX_BAD_PACKETS_IN_A_ROW` in a row abort with
  :class:`~streams.errors.CorruptMediaError`.
* A demux (read) error aborts at once, after the frames already yielded.
* Truncation (a cut last packet, or fewer bytes than the container states;
  never a duration in a header) is checked after the good frames, with
  ``check_truncation``: :mod:`streams.truncation` has the rules. Then
  :class:`CorruptMediaError` says where decoding stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Generator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.audio.stream
import av.container
import av.video.stream

from streams.errors import (
    CorruptMediaError,
    EmptyMediaError,
    FormatNotAllowedError,
    NoVideoStreamError,
    SourceUnavailableError,
)
from streams.sampler import DecoderThreads, check_size, frame_seconds, tune_decoder
from streams.truncation import check_complete

log = logging.getLogger(__name__)

MAX_BAD_PACKETS_IN_A_ROW = 50
"""Consecutive undecodable packets after which an input counts as corrupt."""

# Matroska stores the segment's *end* time as its duration (FFmpeg's muxer
# writes the largest timestamp), so a stream that starts late looks longer.
_DURATION_IS_END = ("matroska",)
_NO_TIMESTAMPS = 0x0080  # AVFMT_NOTIMESTAMPS: raw elementary streams
_ATTACHED_PIC = 0x0400  # AV_DISPOSITION_ATTACHED_PIC


@dataclass(slots=True)
class Damage:
    """What :func:`decode` noticed, summed over every call it is given to.

    ``packets``: packets skipped as undecodable. ``stitched``: stream seconds
    where a clock going backwards was stitched (a discontinuity). ``end``:
    stream seconds where the last picture read ends (what was really read,
    whatever the header says). Written by the decoding thread, read by the
    source's ``stats()`` (plain values: one writer, readers tolerate a stale value).
    """

    packets: int = 0
    stitched: list[float] = field(default_factory=list)
    end: float = 0.0

    def notes(self) -> list[str]:
        """One line per irregularity a user should know about (empty for a clean input)."""
        out = [
            f"clock went backwards at {t:.2f}s: discontinuity stitched in playback order"
            for t in self.stitched
        ]
        if self.packets:
            out.append(f"{self.packets} damaged packets skipped")
        return out


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


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not an attached picture (cover art), or None."""
    for stream in container.streams.video:
        if not stream.disposition & _ATTACHED_PIC:
            return stream
    return None


def open_options(formats: Collection[str] | None) -> dict[str, str]:
    """FFmpeg options that make the open itself refuse any demuxer outside ``formats`` (None: any).

    ``format_whitelist`` is checked right after probing, before the demuxer
    reads its header: a playlist (ffconcat, HLS) or a photo named ``.mp4``
    fails with EINVAL and nothing it lists is opened. ``protocol_whitelist``
    keeps a demuxer that is allowed from reaching other protocols.
    """
    if formats is None:
        return {}
    return {"format_whitelist": ",".join(sorted(formats)), "protocol_whitelist": "file"}


def open_media(
    path: Path, formats: Collection[str] | None = None
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and its video stream (see the module docstring for which one).

    ``formats``: FFmpeg demuxer names FFmpeg may open it with (None: any);
    one alias of a demuxer (``mp4`` of ``mov,mp4,m4a,...``) admits it.

    Raises :class:`SourceUnavailableError` for a missing file,
    :class:`FormatNotAllowedError` for a demuxer outside ``formats`` (nothing read past the probe),
    :class:`NoVideoStreamError` when it has no video (or only cover art),
    and :class:`CorruptMediaError` for anything that is not decodable video
    (also a size beyond :data:`~streams.sampler.MAX_SIDE`).
    """
    try:
        container = av.open(str(path), mode="r", options=open_options(formats))
    except FileNotFoundError as exc:  # av.error.FileNotFoundError derives from it
        raise SourceUnavailableError(f"{path}: no such file") from exc
    except av.ArgumentError as exc:
        if formats is None:
            raise CorruptMediaError(f"{path}: cannot open as video ({exc})") from exc
        # EINVAL from avformat_open_input: the probed demuxer is not whitelisted (FFmpeg names none).
        raise FormatNotAllowedError(f"{path.name}: container format is not an allowed video format") from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise CorruptMediaError(f"{path}: cannot open as video ({exc})") from exc
    stream = video_stream(container)
    try:
        if stream is None:
            covers = len(container.streams.video)
            raise NoVideoStreamError(f"{path}: no video stream" + (" (only cover art)" if covers else ""))
        check_size(stream.codec_context.width, stream.codec_context.height, label=path)
    except CorruptMediaError:
        container.close()
        raise
    return container, stream


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
    """Nominal seconds per frame (0.04 when nothing states a rate).

    A raw elementary stream (no container timestamps) has FFmpeg's 25 fps
    placeholder as ``average_rate``; its real rate is the codec's (SPS
    timing) or ``guessed_rate``. Containers: ``average_rate``, else ``guessed_rate``.
    """
    raw = stream.container is not None and bool(stream.container.format.flags & _NO_TIMESTAMPS)
    rates = (
        (stream.codec_context.framerate, stream.guessed_rate)
        if raw
        else (stream.average_rate, stream.guessed_rate)
    )
    rate = next((r for r in rates if r), None)
    return 1.0 / float(rate) if rate else 0.04


class Clock:
    """Stream seconds of each decoded picture: pts, extrapolation without pts, stitched discontinuities.

    Sans-I/O: :meth:`place` takes a frame's raw time (None without pts) and
    its duration, returns its time; see the module docstring for the rules.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.offset = 0.0
        """Added to raw times: the sum of the stitched jumps back."""
        self.last: float | None = None
        self.last_duration = period
        self.stitched: list[float] = []

    def place(self, raw: float | None, duration: float) -> float:
        if raw is None:
            t = 0.0 if self.last is None else self.last + self.last_duration
        else:
            t = raw + self.offset
            if self.last is not None and t < self.last - self.period - 1e-6:
                # The clock restarted: continue right after the previous picture ends.
                at = self.last + self.last_duration
                self.offset += at - t
                self.stitched.append(at)
                t = at
        self.last, self.last_duration = t, duration
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
    threads: DecoderThreads = "AUTO",
    thread_count: int = 0,
) -> Generator[Picture | Sound, None, None]:
    """Yield every decoded picture (and sound frame, with ``audio``) of an open container.

    Times are ``(pts - start_time) * time_base`` of the video stream with
    ``relative`` (a file's own seconds, 0 at its first frame), else
    ``pts * time_base`` (a recorder's running clock), plus the offset of any
    stitched discontinuity (module docstring). Pictures before ``start``
    (seconds; seeks first) are dropped, decoding ends at ``end``; ``stop``
    (checked per packet) ends the generator early and quietly.
    ``keyframes_only`` makes FFmpeg skip every non-key frame. ``damage``
    (optional) receives the skipped packets, the stitches and the end read.
    ``threads``: FFmpeg's threading (:data:`~streams.sampler.DecoderThreads`);
    ``thread_count``: decoder threads (0: FFmpeg's choice; :func:`~streams.sampler.tune_decoder`).

    Raises :class:`CorruptMediaError` after the good frames (see the module
    docstring), :class:`EmptyMediaError` when the stream held no picture at all.
    """
    tune_decoder(vstream, threads=threads, count=thread_count)
    if keyframes_only:
        vstream.codec_context.skip_frame = "NONKEY"
    report = damage if damage is not None else Damage()
    period = frame_period(vstream)
    origin_pts = vstream.start_time if relative else None
    clock = Clock(period)
    origin = float((origin_pts or 0) * vstream.time_base) if vstream.time_base is not None else 0.0
    astream: av.audio.stream.AudioStream | None = None
    if audio and container.streams.audio:
        astream = container.streams.audio[0]
    _seek(container, vstream, start)
    reached = 0.0  # furthest video time seen in packets (decoded or skipped)
    bad_in_row = bad_total = pictures = 0
    cut = False  # the last video packet was cut short (FFmpeg flags it corrupt)
    demuxed = container.demux(vstream) if astream is None else container.demux(vstream, astream)
    try:
        for packet in demuxed:
            if stop is not None and stop.is_set():
                return
            if packet.stream.type == "video" and packet.size:
                reached = max(reached, _packet_end(packet, vstream))
                cut = packet.is_corrupt
            try:
                frames = packet.decode()
            except av.InvalidDataError as exc:
                bad_in_row += 1
                bad_total += 1
                report.packets += 1
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
                        float(frame.pts * atb) - origin + clock.offset
                        if frame.pts is not None and atb is not None
                        else None
                    )
                    if at is None or at >= start:
                        yield Sound(frame, at)
                    continue
                if not isinstance(frame, av.VideoFrame):
                    continue
                pictures += 1
                tb = frame.time_base or vstream.time_base
                dur = float(frame.duration * tb) if frame.duration and tb is not None else period
                stitches = len(clock.stitched)
                t = clock.place(frame_seconds(frame, origin_pts, vstream.time_base), dur)
                if len(clock.stitched) > stitches:
                    report.stitched.append(t)
                    log.warning("%s: clock went backwards at %.2fs; stitched in playback order", label, t)
                report.end = max(report.end, t + dur)
                if t < start:
                    continue
                if end is not None and t >= end:
                    return
                yield Picture(frame, t, dur)
    except av.FFmpegError as exc:
        raise CorruptMediaError(f"{label}: unreadable at {reached:.2f}s ({exc})") from exc
    if bad_total:
        log.warning("%s: %d damaged packets skipped", label, bad_total)
    if not pictures and start <= 0:
        raise EmptyMediaError(f"{label}: the video stream holds no frame")
    if check_truncation:
        check_complete(label, container.name, cut=cut, end=report.end)


def _packet_end(packet: av.Packet, vstream: av.video.stream.VideoStream) -> float:
    pts = packet.pts if packet.pts is not None else packet.dts
    if pts is None or vstream.time_base is None:
        return 0.0
    dur = packet.duration or 0
    return float((pts + dur - (vstream.start_time or 0)) * vstream.time_base)
