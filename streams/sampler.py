"""Frame sampling and conversion shared by every PyAV-based source.

Timestamps come from ``pts * time_base`` relative to the stream's start time,
never from a frame index and a nominal rate, so variable frame rate and
non-zero start times come out right.

Conversion rules (:func:`to_rgb`), the same for every source:

* Rotation: the display matrix (PyAV's ``frame.rotation``, degrees
  counter-clockwise) is applied, so the encoder and the frame store see the
  picture upright, as a player shows it.
* Size: the short side becomes ``short``; the long side is capped at
  :data:`MAX_ASPECT` times that (a 1920x1 strip becomes 896x224, squeezed,
  not 430080x224), so a degenerate size costs what a normal clip costs.
  A side beyond :data:`MAX_SIDE` pixels, or none at all, is an absurd size:
  :class:`~streams.errors.CorruptMediaError` (:func:`check_size`).

:class:`HeldBack` gives a recording's samples their ``duration`` (how long
the picture stays on screen), so a consumer can tell a held frame from a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from streams.errors import CorruptMediaError
from streams.media import Frame, RGBImage

MAX_SIDE = 32_768
"""Pixels: a picture side beyond this is absurd (H.264/HEVC levels stop near 16 888)."""
MAX_ASPECT = 4.0
"""The long side of a converted picture is at most this many times its short side."""


class Sampler:
    """Keeps frames whose timestamp reaches the next sample instant.

    A source at any rate (or variable rate) is thinned to at most ``fps``
    frames per stream second. After a jump forward in time the grid restarts
    at the new time instead of emitting a burst of catch-up frames.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.period = 1.0 / fps
        self._next: float | None = None

    def take(self, t: float) -> bool:
        """Whether the frame at stream time ``t`` is kept."""
        if self._next is None or t >= self._next + self.period or t < self._next - 10 * self.period:
            # First frame, a jump forward, or a clock reset backward: restart the grid here.
            self._next = t + self.period
            return True
        if t + 1e-9 >= self._next:
            self._next += self.period
            return True
        return False


DecoderThreads = Literal["AUTO", "SLICE"]
"""FFmpeg decoder threading. ``AUTO``: frame and slice threads (fastest for one stream
decoded as fast as possible: a file pass). ``SLICE``: one frame in flight, no per-thread
copies of the decoder and its reference frames (a live or paced stream: no frames of
latency, and at 720p H.264 11 MiB of resident memory per open decoder instead of 19:
``bench/results/decoder_rss.json``)."""


def tune_decoder(
    vstream: av.video.stream.VideoStream, *, threads: DecoderThreads = "AUTO", count: int = 0
) -> None:
    """Decoder settings for sampled ingest, set before the first packet.

    Deblocking is skipped (``skip_loop_filter=all``, plus ``flags2=+fast``):
    frames are shrunk to ~224 px for the encoder, where the in-loop filter's
    effect is invisible, and H.264 decoding gets ~40 % faster (720p: 503 ->
    719 frames/s on one core here). Decoding, not the encoder, bounds how many
    live streams one machine takes. ``count``: decoder threads (0: FFmpeg's
    choice, one per core and one more). One thread spends the least CPU per
    frame (no frame-thread hand-offs), the choice when an encoder keeps the
    other cores busy; more threads finish one file sooner when nothing else runs.
    """
    if count < 0:
        raise ValueError("decoder thread count must be >= 0")
    vstream.thread_type = threads
    if count:
        vstream.codec_context.thread_count = count
    vstream.codec_context.options = {"skip_loop_filter": "all", "flags2": "+fast"}


def frame_seconds(frame: av.VideoFrame, start_pts: int | None, time_base: Fraction | None) -> float | None:
    """Stream seconds of a decoded frame, or None when it has no timestamp."""
    pts = frame.pts
    tb = frame.time_base or time_base
    if pts is None or tb is None:
        return None
    return float((pts - (start_pts or 0)) * tb)


def check_size(width: int, height: int, *, label: object = "video") -> None:
    """Raise :class:`CorruptMediaError` for an absurd picture size (no pixels, or a side over :data:`MAX_SIDE`)."""
    if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE:
        raise CorruptMediaError(f"{label}: absurd picture size {width}x{height} (each side 1..{MAX_SIDE})")


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) scaled so the short side is ``short``, the long side capped; even sizes for swscale.

    The long side is at most :data:`MAX_ASPECT` x ``short`` (beyond that the
    picture is squeezed). Raises :class:`CorruptMediaError` for an absurd size.
    """
    check_size(width, height)
    scale = short / min(width, height)
    cap = MAX_ASPECT * short
    w = max(2, math.floor(min(width * scale, cap) / 2 + 0.5) * 2)
    h = max(2, math.floor(min(height * scale, cap) / 2 + 0.5) * 2)
    return w, h


def rotation_turns(frame: av.VideoFrame) -> int:
    """Quarter turns counter-clockwise (0..3) that show ``frame`` upright (its display matrix)."""
    return round(frame.rotation / 90) % 4


def to_rgb(frame: av.VideoFrame, short: int) -> RGBImage:
    """Convert and resize once (swscale), keeping aspect: short side = ``short``; then turn upright.

    Returns an (H, W, 3) uint8 array in display orientation (see the module docstring).
    """
    w, h = short_side_size(frame.width, frame.height, short)
    arr = frame.to_ndarray(width=w, height=h, format="rgb24")
    turns = rotation_turns(frame)
    if turns:
        arr = np.rot90(arr, k=turns)
    return np.ascontiguousarray(arr, dtype=np.uint8)


class HeldBack:
    """The last sample, held back until its picture's end is known (sans-I/O).

    A sample's ``duration`` is how long its picture stays on screen: until
    the next picture or the picture's own duration, and for the last one
    clipped to the end of the stream (``stream_end``, when the container
    states one beyond it).
    """

    def __init__(self, stream_end: float) -> None:
        self._stream_end = stream_end
        self._kept: Frame | None = None
        self._on_screen: tuple[float, float] | None = None  # (time, duration) of the picture on screen

    def shown(self, t: float, duration: float) -> Iterator[Frame]:
        """A picture at ``t`` lasting ``duration`` s replaces the one on screen: the held sample is complete."""
        if self._kept is not None and self._on_screen is not None:
            yield self._lasting(min(sum(self._on_screen), t))
        self._kept, self._on_screen = None, (t, duration)

    def keep(self, frame: Frame) -> None:
        """``frame`` samples the picture now on screen."""
        self._kept = frame

    def ended(self, *, complete: bool) -> Iterator[Frame]:
        """The input ended (``complete``: normally; else on an error): the held sample, if any."""
        if self._kept is None or self._on_screen is None:
            return
        t, duration = self._on_screen
        until = t + duration
        if complete and self._stream_end > t:
            until = min(until, self._stream_end)
        yield self._lasting(until)
        self._kept = None

    def _lasting(self, until: float) -> Frame:
        assert self._kept is not None  # callers check
        return replace(self._kept, duration=max(until - self._kept.t, 1e-3))
