"""Short MP4 clips assembled from a stream's stored frames, for streams with no source file to seek in.

A live stream (RTSP, WHIP, a segment folder) has no one file the page can
play by range requests; what the service keeps of it is its stored frames
(JPEG, at the index rate). :func:`clip_times` says which stream seconds to
look up, :func:`encode_mp4` writes the frames found as an H.264 MP4 (PyAV)
whose presentation times are the frames' own, relative to the first. Both
are plain functions (no I/O, no asyncio): the route runs the encoding in a
thread.

Rule chosen: at most :data:`MAX_CLIP_SECONDS` of a stream per clip, looked
up every :data:`STEP` seconds (finer than any index rate vmr uses, so no
stored frame in the span is skipped; repeats of one frame are dropped).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from agent.errors import QueryError

MAX_CLIP_SECONDS = 60.0
"""Longest span one clip covers (longer asks are refused: the page asks for a moment's span)."""
STEP = 0.25
"""Seconds between two look-ups of the nearest stored frame."""
_TIME_BASE = Fraction(1, 1000)


def clip_times(start: float, end: float) -> list[float]:
    """Stream seconds to look up for a clip of [start, end] (QueryError: empty, negative or too long)."""
    if not (0.0 <= start < end):
        raise QueryError(f"a clip needs 0 <= start < end (got {start}, {end})")
    if end - start > MAX_CLIP_SECONDS:
        raise QueryError(f"a clip is at most {MAX_CLIP_SECONDS:g} s long (asked {end - start:g} s)")
    n = int((end - start) / STEP) + 1
    return [start + i * STEP for i in range(n)] + ([end] if start + (n - 1) * STEP < end else [])


def encode_mp4(frames: Sequence[tuple[float, bytes]]) -> bytes:
    """An H.264 MP4 of ``(stream seconds, JPEG)`` frames (sorted, deduplicated by time; QueryError if none).

    Frames are scaled to the first frame's size (rounded down to even sides, as yuv420p needs); the last
    frame is held for :data:`STEP` seconds so that a one-frame clip still has a duration.
    """
    unique = sorted({round(t, 3): jpeg for t, jpeg in frames}.items())
    if not unique:
        raise QueryError("no stored frames in that span")
    t0 = unique[0][0]
    first = Image.open(io.BytesIO(unique[0][1]))
    width, height = max(2, first.width // 2 * 2), max(2, first.height // 2 * 2)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=max(1, round(1 / STEP)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = _TIME_BASE
        stream.codec_context.time_base = _TIME_BASE
        stamps = [t - t0 for t, _ in unique] + [unique[-1][0] - t0 + STEP]
        for i, (_, jpeg) in enumerate(unique):
            rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((width, height)))
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = round(stamps[i] * 1000), _TIME_BASE
            out.mux(stream.encode(frame))
        # The last frame is repeated at the clip's end so that the clip lasts until then.
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = round(stamps[-1] * 1000), _TIME_BASE
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
