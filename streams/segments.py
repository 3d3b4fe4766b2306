"""Follow a folder that a recorder fills with finished segment files.

Recorders (``ffmpeg -f segment``, NVRs) write one file at a time and name
them so that they sort in time order (``out%03d.mp4``, ``%Y%m%d-%H%M%S.ts``).
Names are compared *naturally* (digit runs as numbers), so ``out1000`` comes
after ``out999`` even without zero padding.

When a segment is complete (a newer one beside it, or settled for
``settle_seconds``) is decided by :mod:`streams.segment_folder`.

Time (continuous across segments; a recorder's clock kept or restarted) and the
segments' wall clocks are placed by :mod:`streams.segment_reader`.

Recorders restart, rename, prune and back-fill (see
:mod:`streams.segment_folder` for how a new segment is told from a finished
one, by identity rather than name):

* a *late* segment (back-filled, e.g. ``seg003`` after ``seg004``) is ingested at
  its own wall time (:mod:`streams.segment_reader`), counted (``segments_late``);
* a recorder that restarts numbering from ``000`` writes new files: read as
  new segments (its clock restarted, so they are appended);
* a pending segment renamed is read under its new name (``segments_renamed``);
* a pending segment deleted (retention) before it was read is logged at
  WARNING and counted (``segments_lost``), like corrupt ones
  (``segments_corrupt``) and ones of a container format not allowed
  (``segments_refused``: ``formats``, see :class:`SegmentsSpec`); all of
  these are in :meth:`stats` and so in the stream's status.

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
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from streams.audio import AudioChunker
from streams.bridge import Bridge, BridgeClosed, QueuePolicy
from streams.decode import Damage
from streams.errors import CorruptMediaError, SourceUnavailableError
from streams.media import AudioChunk, Media
from streams.registry import OpenContext, register
from streams.sampler import Sampler
from streams.segment_folder import SegmentFolder, SegmentPosition, natural_key
from streams.segment_reader import Mark, RefusedSegmentError, SegmentReader
from streams.source import RecordingSpec, Source, SourceState, SourceStats

__all__ = ["DEFAULT_PATTERNS", "SegmentFolderSource", "SegmentPosition", "SegmentsSpec", "natural_key"]

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.mp4", "*.ts", "*.mkv")
State = Literal["waiting", "reading", "done", "closed"]
_STATS_STATE: dict[State, SourceState] = {
    "waiting": "connecting",
    "reading": "streaming",
    "done": "done",
    "closed": "closed",
}


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


_Item = Media | Mark | _End


class SegmentFolderSource(Source):
    """Async iterator of :class:`Frame` (and :class:`AudioChunk`) from a folder of recorder segments.

    ``follow=False`` reads what is there (every file counts as complete) and
    ends; the default follows the folder until :meth:`close`.
    Counters: :attr:`frames_in`, :attr:`frames_out`, :attr:`dropped`
    (always 0: backpressure), :attr:`reconnects` (always 0),
    :attr:`segments_done`, :attr:`segments_corrupt`, :attr:`segments_refused`,
    and in :meth:`stats` ``damaged_packets`` (skipped as undecodable, over
    every segment). A followed folder has no end: ``progress`` is None.

    ``formats``: FFmpeg demuxer names a segment may open with (None: any); a
    segment of another format is logged, counted, shown as ``last_error``, skipped.
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
        formats: Collection[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceUnavailableError(f"{self.folder}: not a directory")
        if poll_interval <= 0 or settle_seconds < 0:
            raise SourceUnavailableError("poll_interval must be > 0 and settle_seconds >= 0")
        self.stream = stream
        self.patterns = tuple(patterns)
        self.follow = follow
        sampler = Sampler(fps)
        self._poll = poll_interval
        self._work = (
            position.model_copy(deep=True) if position is not None else SegmentPosition()
        )  # the thread's
        if self._work.finished is None and self._work.done is None:
            self._work.finished = []
        self._pos = self._work.model_copy(deep=True)  # as of the items handed out
        if self._work.last_t is not None:
            sampler.take(self._work.last_t)  # continue the sampling grid where it stopped
        self._chunker = AudioChunker(stream) if audio else None
        self._stop = threading.Event()
        self._damage = Damage()
        self._reader = SegmentReader(
            stream,
            self._work,
            sampler=sampler,
            short_side=short_side,
            max_gap=max_gap,
            chunker=self._chunker,
            stop=self._stop,
            damage=self._damage,
            formats=formats,
        )
        self._folder = SegmentFolder(self.folder, self.patterns, settle_seconds)
        self._bridge: Bridge[_Item] = Bridge(queue_size, "block")
        self._thread: threading.Thread | None = None
        self._segment: str | None = None
        self._state: State = "waiting"
        self._finished = False
        self._error: str | None = None
        self.frames_out = 0
        self.audio_out = 0
        self.dropped = 0
        self.reconnects = 0
        self.segments_done = 0
        self.segments_corrupt = 0
        self.segments_refused = 0
        self.segments_lost = 0
        self.segments_renamed = 0

    @property
    def frames_in(self) -> int:
        """Pictures decoded, before sampling."""
        return self._reader.frames_in

    @property
    def segments_late(self) -> int:
        """Back-filled segments ingested at their own wall time."""
        return self._reader.segments_late

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
                "segments_refused": self.segments_refused,
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
            if isinstance(item, Mark):
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
            for item in self._reader.media(self.folder / name):
                seen_frames = True
                if not self._bridge.put(item):
                    return False
        except RefusedSegmentError as exc:
            self._refused(name, exc)
            self._finish(ident)
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
        return self._bridge.put(Mark(self._work.model_copy()))

    def _finish(self, ident: str) -> None:
        finished = self._work.finished if self._work.finished is not None else []
        self._work.finished = [*finished, ident]

    def _refused(self, name: str, exc: RefusedSegmentError) -> None:
        """Count a segment of a format not allowed; it is never decoded, and read again only if it changes."""
        self.segments_refused += 1
        self._error = f"segment refused: {exc}"
        log.warning("%s: %s", self.stream, self._error)
        self._work.done = name

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


class SegmentsSpec(RecordingSpec):
    """A folder a recorder fills with segment files, followed until the stream is removed.

    ``formats``: FFmpeg demuxer names each segment must open with (None: any,
    the operator's own streams). A service writes its allow-list here when a
    client adds the stream, so the check survives restarts.
    """

    kind: Literal["segments"]
    formats: list[str] | None = Field(default=None, max_length=64)

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
        formats=spec.formats,
    )


register(SegmentsSpec, open_segments)
