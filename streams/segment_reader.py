"""Reading one recorder segment onto the stream's timeline (the worker thread of :mod:`streams.segments`).

:class:`SegmentReader` opens a segment, checks its container format against
the demuxers allowed (``formats``: a JPEG or a text file named ``seg.mp4``
would otherwise be rendered as video by FFmpeg's auto-detected ``image2`` or
``tty`` demuxers), decodes it with the shared loop of :mod:`streams.decode`,
samples its pictures and places pictures and sound on the stream's timeline:
whether the recorder's clock continues or restarted, and whether the segment
is *late* (back-filled), are decided here; the rules are in
:mod:`streams.segments` and below. Blocking: run it in the source's worker thread.

Time: ``Frame.t`` is continuous across segments. A recorder either restarts
timestamps in every segment (``-reset_timestamps 1``, most NVRs) or keeps
one running clock (``-reset_timestamps 0``, MPEG-TS). Each segment's first
timestamp is checked against where the previous one ended: if it continues
the running clock (within a tolerance, or forward by less than ``max_gap``
seconds, which then is a real gap) the recorder's clock is kept; otherwise
the segment is appended right after the previous one. The first segment
starts at 0. ``Frame.wall`` is the segment's own time: the date and time in
its name when there is one (:func:`~streams.segment_folder.wall_from_name`),
else the file's mtime (its end) minus its declared duration, as recorders do
not write wall clocks into segments portably.

Late segments: one whose own wall time starts before the end of the latest
segment read (``seg003`` back-filled after ``seg004``) is ingested, appended
to the stream timeline (stream time only goes forward) and dated by its own
wall time, so answers give when it was recorded; it does not move the
recorder clock kept for the segments after it. Logged, counted
(``segments_late``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.audio import AudioChunker
from streams.decode import Damage, Picture, Sound, decode, open_media
from streams.errors import CorruptMediaError, FormatNotAllowedError, SourceUnavailableError, StreamError
from streams.media import AudioChunk, Frame, Media
from streams.sampler import Sampler, to_rgb
from streams.segment_folder import SegmentPosition, wall_from_name

log = logging.getLogger("streams.segments")  # one logger for the segment source, as operators filter it

LATE_TOLERANCE = 2.0
"""Seconds a segment's own start may precede the last segment's end before it counts as late."""


class RefusedSegmentError(StreamError):
    """A segment whose container format is not one of the allowed demuxers (skipped, never read)."""


@dataclass(frozen=True)
class Mark:
    """The thread's position at a segment boundary, applied when the consumer reaches it."""

    position: SegmentPosition


class SegmentReader:
    """Decodes segments into sampled :class:`Frame` (and :class:`AudioChunk`) plus boundary :class:`Mark`.

    ``position`` is the worker thread's resume state, updated in place.
    ``formats``: FFmpeg demuxer names a segment may be opened with (None:
    any). Counters: :attr:`frames_in` (pictures decoded), :attr:`segments_late`.
    """

    def __init__(
        self,
        stream: str,
        position: SegmentPosition,
        *,
        sampler: Sampler,
        short_side: int,
        max_gap: float,
        chunker: AudioChunker | None,
        stop: threading.Event,
        damage: Damage,
        formats: Collection[str] | None = None,
    ) -> None:
        self.stream = stream
        self._work = position
        self._sampler = sampler
        self._short_side = short_side
        self._max_gap = max_gap
        self._chunker = chunker
        self._stop = stop
        self._damage = damage
        self._formats = None if formats is None else frozenset(formats)
        self._resumed_at = position.last_t  # sound up to here was handed out before a restart
        self.frames_in = 0
        self.segments_late = 0

    def media(self, path: Path) -> Iterator[Media | Mark]:
        """Sampled frames (and sound) of one segment on the stream's timeline, plus its start mark.

        Raises RefusedSegmentError (format not allowed, nothing read) or
        CorruptMediaError (cannot be read, or damaged after its good frames).
        """
        try:
            # FFmpeg itself refuses another demuxer, before a playlist could open what it lists.
            container, _ = open_media(path, self._formats)
        except FormatNotAllowedError as exc:
            raise RefusedSegmentError(str(exc)) from exc
        except (CorruptMediaError, SourceUnavailableError) as exc:
            raise CorruptMediaError(f"{path}: cannot read segment ({exc})") from exc
        try:
            yield from self._decode(container, path)
        finally:
            container.close()

    def _decode(self, container: Any, path: Path) -> Iterator[Media | Mark]:
        vstream = container.streams.video[0]
        declared = float(container.duration / 1_000_000) if container.duration else None
        wall_start = wall_from_name(path.name)
        if wall_start is None and declared:
            wall_start = os.stat(path).st_mtime - declared
        p = self._work
        late = (
            wall_start is not None
            and p.last_wall_end is not None
            and wall_start < p.last_wall_end - LATE_TOLERANCE
        )
        kept_shift = p.shift  # a late segment does not move the recorder clock of the ones after it
        first_t: float | None = None
        end = p.next_t
        finished = False  # False when the consumer closed us mid-segment: keep the resume point
        early: list[Sound] = []  # sound before the segment's first picture, which places the segment
        try:
            for item in decode(
                container,
                vstream,
                label=path,
                relative=False,
                audio=self._chunker is not None,
                stop=self._stop,
                damage=self._damage,
            ):
                if not isinstance(item, Picture):
                    if first_t is None:
                        early.append(item)
                    else:
                        yield from self._sound(item, first_t, wall_start)
                    continue
                if first_t is None:
                    if late:
                        p.shift = None  # appended after what was read, dated by its own time
                        self.segments_late += 1
                        log.info("%s: late segment %s ingested at its own wall time", self.stream, path.name)
                    self._begin_segment(item.t)
                    yield Mark(p.model_copy())
                    assert p.shift is not None
                    first_t = item.t + p.shift
                    for sound in early:
                        yield from self._sound(sound, first_t, wall_start)
                assert p.shift is not None
                t = item.t + p.shift
                self.frames_in += 1
                end = max(end, t + item.duration)
                if p.last_t is not None and t <= p.last_t:
                    continue  # already delivered before a restart, or overlapping segments
                if self._sampler.take(t):
                    p.last_t = t
                    wall = None if wall_start is None else wall_start + (t - first_t)
                    image = to_rgb(item.frame, self._short_side)
                    yield Frame(self.stream, t, image, wall, bool(item.frame.key_frame))
            finished = not self._stop.is_set()
        except CorruptMediaError:
            finished = True
            raise
        finally:
            if finished and first_t is not None:
                p.next_t = end
                if late:
                    p.shift = kept_shift
                else:
                    p.last_duration = max(0.0, end - first_t)
                    if wall_start is not None:
                        p.last_wall_end = wall_start + (end - first_t)
        if first_t is None:
            raise CorruptMediaError(f"{path}: cannot read segment (no decodable frame)")

    def _sound(self, sound: Sound, first_t: float, wall_start: float | None) -> Iterator[AudioChunk]:
        """Chunks of a segment's sound on the stream's timeline (none already delivered before a restart)."""
        p = self._work
        if self._chunker is None or p.shift is None:
            return
        t = None if sound.t is None else sound.t + p.shift
        if t is not None and self._resumed_at is not None and t <= self._resumed_at:
            return
        wall = None if wall_start is None or t is None else wall_start + (t - first_t)
        yield from self._chunker.push(sound.frame, t, wall)

    def _begin_segment(self, rec: float) -> None:
        """Decide whether the recorder's clock continues (keep it) or restarted (append)."""
        p = self._work
        if p.shift is not None:
            tol = min(1.0, 0.5 * p.last_duration) if p.last_duration > 0 else 1.0
            t = rec + p.shift
            if p.next_t - tol <= t <= p.next_t + self._max_gap:
                return
        p.shift = p.next_t - rec
