"""Follow a folder that a recorder fills with finished segment files.

Recorders (``ffmpeg -f segment``, NVRs) write one file at a time and name
them so that they sort in time order (``out%03d.mp4``, ``%Y%m%d-%H%M%S.ts``).
Names are compared *naturally* (digit runs as numbers), so ``out1000`` comes
after ``out999`` even without zero padding.

When is a segment complete?  The recorder closes a segment before it opens
the next one, so:

* a segment with a *newer* segment beside it is complete once its size and
  mtime did not change over one poll (a guard against recorders that open
  the next file a moment early);
* the *newest* segment is read only after its size and mtime stayed the
  same for ``settle_seconds`` (the recording stopped or paused). If it then
  fails to open (an MP4 without its ``moov`` index yet), it is not counted
  as corrupt but retried when it changes or a newer segment appears; only a
  segment that still fails once a newer one exists is corrupt. A recorder
  that pauses longer than ``settle_seconds`` inside a streamable segment
  (``.ts``) would be read up to the pause: choose ``settle_seconds`` above
  the recorder's longest write stall.

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

Recorders restart, rename, prune and back-fill (see
:mod:`streams.segment_folder` for how a new segment is told from a finished
one, by identity rather than name):

* a *late* segment — its own wall time starts before the end of the latest
  segment read, e.g. ``seg003`` back-filled after ``seg004`` — is ingested:
  appended to the stream timeline (stream time only goes forward) and dated
  by its own wall time, so answers give when it was recorded; it does not
  move the recorder clock kept for the segments after it. Logged, counted
  (``segments_late``);
* a recorder that restarts numbering from ``000`` writes new files: read as
  new segments (its clock restarted, so they are appended);
* a pending segment renamed is read under its new name (``segments_renamed``);
* a pending segment deleted (retention) before it was read is logged at
  WARNING and counted (``segments_lost``), like corrupt ones
  (``segments_corrupt``); all of these are in :meth:`stats` and so in the
  stream's status.

Resume: :attr:`SegmentFolderSource.position` (a :class:`SegmentPosition`,
JSON-able; :meth:`~SegmentFolderSource.resume_token` is its dict) says which
segments are done and the last frame time handed out — as of the items the
consumer received, not of what the thread decoded ahead; a new source given that position skips finished segments and frames
already delivered, so a restart neither loses nor repeats footage.

Policy: segments are files, nothing is lost by waiting, so this source
applies *backpressure* (queue policy ``"block"``: one worker thread watches
the folder and decodes, and pauses while the consumer is busy) and never
drops. Segments are decoded by the shared loop of :mod:`streams.decode`
(its damage tolerance: damaged packets skipped up to a limit, a truncated
segment reported after its good frames); a corrupt segment is logged,
counted and skipped. With ``audio=True`` the segments' sound comes too, as
:class:`~streams.media.AudioChunk` on the same timeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from streams.audio import AudioChunker
from streams.bridge import Bridge, BridgeClosed, QueuePolicy
from streams.decode import Damage, Picture, Sound, decode, open_media
from streams.errors import CorruptMediaError, SourceUnavailableError
from streams.media import AudioChunk, Frame, Media
from streams.registry import OpenContext, register
from streams.sampler import Sampler, to_rgb
from streams.segment_folder import SegmentFolder, SegmentPosition, natural_key, wall_from_name
from streams.source import RecordingSpec, Source, SourceState, SourceStats

__all__ = ["DEFAULT_PATTERNS", "SegmentFolderSource", "SegmentPosition", "SegmentsSpec", "natural_key"]

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.mp4", "*.ts", "*.mkv")
LATE_TOLERANCE = 2.0
"""Seconds a segment's own start may precede the last segment's end before it counts as late."""
State = Literal["waiting", "reading", "done", "closed"]
_STATS_STATE: dict[State, SourceState] = {
    "waiting": "connecting",
    "reading": "streaming",
    "done": "done",
    "closed": "closed",
}


@dataclass(frozen=True)
class _Mark:
    """The thread's position at a segment boundary, applied when the consumer reaches it."""

    position: SegmentPosition


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


_Item = Media | _Mark | _End


class SegmentFolderSource(Source):
    """Async iterator of :class:`Frame` (and :class:`AudioChunk`) from a folder of recorder segments.

    ``follow=False`` reads what is there (every file counts as complete) and
    ends; the default follows the folder until :meth:`close`.
    Counters: :attr:`frames_in`, :attr:`frames_out`, :attr:`dropped`
    (always 0: backpressure), :attr:`reconnects` (always 0),
    :attr:`segments_done`, :attr:`segments_corrupt`, and in :meth:`stats`
    ``damaged_packets`` (skipped as undecodable, over every segment). A
    followed folder has no end: ``progress`` is None.
    """

    queue_policy: ClassVar[QueuePolicy] = "block"

    def __init__(
        self,
        folder: Path,
        *,
        stream: str,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        fps: float = 2.0,
        short_side: int = 224,
        poll_interval: float = 0.5,
        settle_seconds: float = 2.0,
        follow: bool = True,
        position: SegmentPosition | None = None,
        max_gap: float = 3600.0,
        queue_size: int = 8,
        audio: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceUnavailableError(f"{self.folder}: not a directory")
        if poll_interval <= 0 or settle_seconds < 0:
            raise SourceUnavailableError("poll_interval must be > 0 and settle_seconds >= 0")
        self.stream = stream
        self.patterns = tuple(patterns)
        self.follow = follow
        self._sampler = Sampler(fps)
        self._short_side = short_side
        self._poll = poll_interval
        self._max_gap = max_gap
        self._work = (
            position.model_copy(deep=True) if position is not None else SegmentPosition()
        )  # the thread's
        if self._work.finished is None and self._work.done is None:
            self._work.finished = []
        self._pos = self._work.model_copy(deep=True)  # as of the items handed out
        self._resumed_at = self._work.last_t  # sound up to here was handed out before a restart
        if self._work.last_t is not None:
            self._sampler.take(self._work.last_t)  # continue the sampling grid where it stopped
        self._chunker = AudioChunker(stream) if audio else None
        self._folder = SegmentFolder(self.folder, self.patterns, settle_seconds)
        self._bridge: Bridge[_Item] = Bridge(queue_size, "block")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._segment: str | None = None
        self._state: State = "waiting"
        self._finished = False
        self._error: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.audio_out = 0
        self.dropped = 0
        self.reconnects = 0
        self.segments_done = 0
        self.segments_corrupt = 0
        self.segments_late = 0
        self.segments_lost = 0
        self.segments_renamed = 0
        self._damage = Damage()

    @property
    def position(self) -> SegmentPosition:
        """A copy of the resume state (items handed out so far)."""
        return self._pos.model_copy()

    def resume_token(self) -> dict[str, Any] | None:
        """:attr:`position` as a dict (:meth:`SegmentPosition.from_dict` reads it back)."""
        return self._pos.to_dict()

    @property
    def segment(self) -> str | None:
        """Name of the segment being read, if any."""
        return self._segment

    @property
    def state(self) -> State:
        """waiting (for a complete segment) / reading / done (follow=False) / closed."""
        return self._state

    def stats(self) -> SourceStats:
        return SourceStats(
            "done" if self._finished else _STATS_STATE[self._state],  # a finished source stays done
            frames=self.frames_out,
            last_error=self._error,
            audio_chunks=self.audio_out,
            damaged_packets=self._damage.packets,
            extra={
                "segments_done": self.segments_done,
                "segments_corrupt": self.segments_corrupt,
                "segments_late": self.segments_late,
                "segments_lost": self.segments_lost,
                "segments_renamed": self.segments_renamed,
            },
        )

    async def __aenter__(self) -> SegmentFolderSource:
        self._begin()
        return self

    def _begin(self) -> None:
        if self._thread is not None or self._state == "closed":
            return
        self._bridge.bind()
        self._thread = threading.Thread(target=self._run, name=f"segments-{self.stream}", daemon=True)
        self._thread.start()

    async def __anext__(self) -> Media:
        self._begin()
        while not self._finished and self._state != "closed":
            try:
                item = await self._bridge.get()
            except BridgeClosed:
                break
            if isinstance(item, _Mark):
                self._pos = item.position.model_copy(update={"last_t": self._pos.last_t}, deep=True)
            elif isinstance(item, _End):
                self._finished = True
                if item.error is not None:
                    self._error = str(item.error)
                    raise item.error
            elif isinstance(item, AudioChunk):
                self.audio_out += 1
                return item
            else:
                self._pos.last_t = item.t
                self.frames_out += 1
                return item
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop reading; idempotent. Waits for the thread, which closes the segment file."""
        self._state = "closed"
        self._stop.set()
        self._bridge.close(drop=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._state = "closed"

    # ---- worker thread: choosing segments ----------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                name = self._next_segment()
                if name is None:
                    if self._state == "done":
                        break
                    self._stop.wait(self._poll)
                    continue
                if not self._read(name):
                    return  # the consumer is gone
        except Exception as exc:  # a bug: surface it to the consumer rather than dying silently
            log.exception("%s: segment reader crashed", self.stream)
            error = exc
        if self._chunker is not None and error is None:
            for chunk in self._chunker.flush():
                self._bridge.put(chunk)
        self._bridge.put(_End(error))

    def _next_segment(self) -> str | None:
        """The next complete segment, or None (then :attr:`state` is done when nothing will come)."""
        scan = self._folder.scan(self._work)
        for name in scan.lost:
            self.segments_lost += 1
            self._error = f"segment {name} deleted before it was read"
            log.warning("%s: %s", self.stream, self._error)
        for old, new in scan.renamed:
            self.segments_renamed += 1
            log.info("%s: pending segment %s renamed to %s", self.stream, old, new)
        pending = scan.pending
        if not pending:
            if not self.follow:
                self._state = "done"
            return None
        name = pending[0]
        if self.follow and not self._folder.complete(name, newer=len(pending) > 1):
            return None
        return name

    # ---- worker thread: reading one segment ----------------------------------------------------------

    def _read(self, name: str) -> bool:
        """Hand over one segment's media and its boundary marks; False when the consumer is gone."""
        self._state, self._segment = "reading", name
        seen_frames = False
        try:
            ident = self._folder.identity(name)
        except FileNotFoundError:
            self.segments_lost += 1
            self._error = f"segment {name} deleted before it was read"
            log.warning("%s: %s", self.stream, self._error)
            self._folder.forget(name)
            self._state, self._segment = "waiting", None
            return True
        try:
            for item in self._segment_media(self.folder / name):
                seen_frames = True
                if not self._bridge.put(item):
                    return False
        except CorruptMediaError as exc:
            if self._segment_failed(name, exc, seen_frames):
                self._finish(ident)
        else:
            if self._stop.is_set():
                return False
            self._work.done = name
            self._finish(ident)
            self.segments_done += 1
        finally:
            self._folder.forget(name)
            self._segment = None
            if self._state == "reading":
                self._state = "waiting"
        return self._bridge.put(_Mark(self._work.model_copy()))

    def _finish(self, ident: str) -> None:
        finished = self._work.finished if self._work.finished is not None else []
        self._work.finished = [*finished, ident]

    def _segment_failed(self, name: str, exc: CorruptMediaError, seen_frames: bool) -> bool:
        """Count a segment that failed; False when it is to be retried (the newest, maybe unfinished)."""
        if not seen_frames and self.follow:
            if self._folder.newest() == name:
                # The newest segment may still be written (MP4 before its index): retry later.
                self._folder.defer(name)
                log.info("%s: newest segment %s not readable yet (%s)", self.stream, name, exc)
                return False
        log.warning("%s: corrupt segment %s skipped: %s", self.stream, name, exc)
        self.segments_corrupt += 1
        self._work.done = name
        return True

    def _segment_media(self, path: Path) -> Iterator[_Item]:
        """Sampled frames (and sound) of one segment on the stream's timeline, plus its start mark."""
        try:
            container, _ = open_media(path)
        except (CorruptMediaError, SourceUnavailableError) as exc:
            raise CorruptMediaError(f"{path}: cannot read segment ({exc})") from exc
        try:
            yield from self._decode(container, path)
        finally:
            container.close()

    def _decode(self, container: Any, path: Path) -> Iterator[_Item]:
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
                    yield _Mark(p.model_copy())
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


class SegmentsSpec(RecordingSpec):
    """A folder a recorder fills with segment files, followed until the stream is removed."""

    kind: Literal["segments"]

    def check_input(self) -> None:
        if not Path(self.path).is_dir():
            raise SourceUnavailableError(f"{self.path}: no such folder")


def open_segments(spec: SegmentsSpec, ctx: OpenContext) -> SegmentFolderSource:
    """Factory: follow the folder from the token's position (or from its first segment)."""
    position = SegmentPosition.from_dict(ctx.resume_token) if ctx.resume_token is not None else None
    return SegmentFolderSource(
        Path(spec.path),
        stream=spec.id,
        fps=ctx.fps_of(spec),
        short_side=ctx.short_side,
        position=position,
        queue_size=ctx.queue_size,
        audio=spec.audio,
    )


register(SegmentsSpec, open_segments)
