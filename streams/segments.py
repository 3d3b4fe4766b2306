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
starts at 0. ``Frame.wall`` is estimated from the segment file's mtime (its
end) minus its declared duration, as recorders do not write wall clocks
into segments portably.

Resume: :attr:`SegmentFolderSource.position` (a :class:`SegmentPosition`,
JSON-able) says which segments are done and the last frame time handed
out; a new source given that position skips finished segments and frames
already delivered, so a restart neither loses nor repeats footage.

Policy: segments are files, nothing is lost by waiting, so this source
applies *backpressure* (decoding pauses while the consumer is busy) and
never drops. A corrupt segment is logged, counted and skipped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import CorruptVideoError, SourceError
from agent.types import Frame
from streams.live import LiveCounters
from streams.sampler import Sampler, to_rgb, tune_decoder

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.mp4", "*.ts", "*.mkv")
State = Literal["waiting", "reading", "done", "closed"]


class SegmentPosition(BaseModel):
    """Resume state of a segment folder; persist it with the stream's memory."""

    model_config = ConfigDict(extra="forbid")

    done: str | None = None
    """Name of the last finished segment: it and every name sorting before it are done."""
    next_t: float = 0.0
    """Stream time where the next segment starts."""
    shift: float | None = None
    """Recorder time + shift = stream time, for the segment being read or last read."""
    last_duration: float = 0.0
    """Length of the last finished segment (seconds), to tell a kept clock from a reset one."""
    last_t: float | None = None
    """Time of the last frame handed out (resume mid-segment without repeats)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentPosition:
        """Inverse of :meth:`to_dict`; raises SourceError on garbage."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SourceError(f"invalid segment position: {exc}") from exc


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing digit runs as numbers: ``a9`` < ``a10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


@dataclass(frozen=True)
class _Seen:
    signature: tuple[int, int]  # (size, mtime_ns)
    since: float  # monotonic time this signature was first seen


class SegmentFolderSource:
    """Async iterator of :class:`Frame` from a folder of recorder segments.

    ``follow=False`` reads what is there (every file counts as complete) and
    ends; the default follows the folder until :meth:`close`.
    Counters: :attr:`frames_in`, :attr:`frames_out`, :attr:`dropped`
    (always 0: backpressure), :attr:`reconnects` (always 0),
    :attr:`segments_done`, :attr:`segments_corrupt`.
    """

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
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: not a directory")
        if poll_interval <= 0 or settle_seconds < 0:
            raise SourceError("poll_interval must be > 0 and settle_seconds >= 0")
        self.stream = stream
        self.patterns = tuple(patterns)
        self.follow = follow
        self._sampler = Sampler(fps)
        self._short_side = short_side
        self._poll = poll_interval
        self._settle = settle_seconds
        self._max_gap = max_gap
        self._pos = position.model_copy() if position is not None else SegmentPosition()
        if self._pos.last_t is not None:
            self._sampler.take(self._pos.last_t)  # continue the sampling grid where it stopped
        self._seen: dict[str, _Seen] = {}
        self._deferred: dict[str, tuple[int, int]] = {}  # newest segment that failed to open, by signature
        self._gen: Iterator[Frame] | None = None
        self._gen_name: str | None = None
        self._inflight: asyncio.Future[Frame | None] | None = None
        self._frames_seen = False  # the current segment decoded at least one frame
        self._state: State = "waiting"
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.reconnects = 0
        self.segments_done = 0
        self.segments_corrupt = 0

    @property
    def position(self) -> SegmentPosition:
        """A copy of the resume state (frames handed out so far)."""
        return self._pos.model_copy()

    @property
    def segment(self) -> str | None:
        """Name of the segment being read, if any."""
        return self._gen_name

    @property
    def state(self) -> State:
        """waiting (for a complete segment) / reading / done (follow=False) / closed."""
        return self._state

    @property
    def counters(self) -> LiveCounters:
        """A snapshot of the common counters."""
        return LiveCounters(self.frames_in, self.frames_out, self.dropped, self.reconnects)

    async def __aenter__(self) -> SegmentFolderSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> SegmentFolderSource:
        return self

    async def __anext__(self) -> Frame:
        while self._state not in ("closed", "done"):
            if self._gen is None:
                if not await self._open_next():
                    continue
            frame = await self._step()
            if frame is not None:
                self._pos.last_t = frame.t
                self.frames_out += 1
                return frame
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop reading; idempotent. Waits for a decode step in flight, then closes the file."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        await self._drop_gen()

    # ---- choosing segments -------------------------------------------------------------------

    async def _open_next(self) -> bool:
        """Start the next complete segment; False after waiting (or when done)."""
        names = await asyncio.to_thread(self._list)
        pending = [n for n in names if self._pos.done is None or natural_key(n) > natural_key(self._pos.done)]
        if not pending:
            if not self.follow:
                self._state = "done"
            else:
                await asyncio.sleep(self._poll)
            return False
        name = pending[0]
        newer = len(pending) > 1
        if self.follow and not await asyncio.to_thread(self._complete, name, newer):
            await asyncio.sleep(self._poll)
            return False
        if self._state == "closed":  # closed while we looked at the folder
            return False
        self._frames_seen = False
        self._gen = self._frames(self.folder / name)
        self._gen_name = name
        self._state = "reading"
        return True

    def _list(self) -> list[str]:
        with os.scandir(self.folder) as it:
            names = [
                e.name for e in it if e.is_file() and any(fnmatch.fnmatch(e.name, p) for p in self.patterns)
            ]
        return sorted(names, key=natural_key)

    def _complete(self, name: str, newer: bool) -> bool:
        """Runs in a thread: whether ``name`` may be read now (see module docstring)."""
        try:
            st = os.stat(self.folder / name)
        except FileNotFoundError:
            return False
        sig = (st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or seen.signature != sig:
            self._seen[name] = _Seen(sig, now)
            return False
        if not newer and self._deferred.get(name) == sig:
            return False  # failed to open at this very size; wait for a change
        return newer or now - seen.since >= self._settle

    # ---- reading one segment -----------------------------------------------------------------

    async def _step(self) -> Frame | None:
        """Decode up to the next kept frame of the current segment in a worker thread."""
        assert self._gen is not None
        self._inflight = asyncio.ensure_future(asyncio.to_thread(next, self._gen, None))
        try:
            frame = await asyncio.shield(self._inflight)
        except CorruptVideoError as exc:
            await self._segment_failed(exc)
            return None
        finally:
            self._inflight = None
        if frame is None:
            await self._segment_finished()
        return frame

    async def _segment_finished(self) -> None:
        self._pos.done = self._gen_name
        self.segments_done += 1
        await self._drop_gen()

    async def _segment_failed(self, exc: CorruptVideoError) -> None:
        name = self._gen_name
        assert name is not None
        if not self._frames_seen and self.follow:
            names = await asyncio.to_thread(self._list)
            if names and names[-1] == name:
                # The newest segment may still be written (MP4 before its index): retry later.
                seen = self._seen.get(name)
                if seen is not None:
                    self._deferred[name] = seen.signature
                log.info("%s: newest segment %s not readable yet (%s)", self.stream, name, exc)
                await self._drop_gen()
                return
        log.warning("%s: corrupt segment %s skipped: %s", self.stream, name, exc)
        self.segments_corrupt += 1
        self._pos.done = name
        await self._drop_gen()

    async def _drop_gen(self) -> None:
        gen, name = self._gen, self._gen_name
        self._gen = self._gen_name = None
        if name is not None:
            self._seen.pop(name, None)
        if self._state == "reading":
            self._state = "waiting"
        if gen is not None:
            close = getattr(gen, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    def _frames(self, path: Path) -> Iterator[Frame]:
        """Runs in worker threads, one step at a time: sampled frames of one segment."""
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise _open_error(path, exc) from exc
        try:
            if not container.streams.video:
                raise _open_error(path, ValueError("no video stream"))
            yield from self._decode(container, path)
        finally:
            container.close()

    def _decode(self, container: Any, path: Path) -> Iterator[Frame]:
        vstream = container.streams.video[0]
        tune_decoder(vstream)
        tb = vstream.time_base
        rate = vstream.average_rate or vstream.guessed_rate
        period = 1.0 / float(rate) if rate else 0.04
        declared = float(container.duration / av.time_base) if container.duration else None
        wall_start = os.stat(path).st_mtime - declared if declared else None
        first_t: float | None = None
        rec: float | None = None
        end = self._pos.next_t
        finished = False  # False when the consumer closed us mid-segment: keep the resume point
        try:
            for frame in container.decode(vstream):
                self.frames_in += 1
                self._frames_seen = True
                rec = float(frame.pts * tb) if frame.pts is not None and tb else (rec or 0.0) + period
                if first_t is None:
                    self._begin_segment(rec)
                assert self._pos.shift is not None
                t = rec + self._pos.shift
                first_t = t if first_t is None else first_t
                dur = float(frame.duration * tb) if frame.duration and tb else period
                end = max(end, t + dur)
                if self._pos.last_t is not None and t <= self._pos.last_t:
                    continue  # already delivered before a restart, or overlapping segments
                if self._sampler.take(t):
                    wall = None if wall_start is None else wall_start + (t - first_t)
                    yield Frame(self.stream, t, to_rgb(frame, self._short_side), wall, bool(frame.key_frame))
            finished = True
        except av.FFmpegError as exc:
            finished = True
            raise CorruptVideoError(
                f"{path}: unreadable after {end - self._pos.next_t:.2f}s ({exc})"
            ) from exc
        finally:
            if finished and first_t is not None:
                self._pos.last_duration = max(0.0, end - first_t)
                self._pos.next_t = end
        if first_t is None:
            raise _open_error(path, ValueError("no decodable frame"))

    def _begin_segment(self, rec: float) -> None:
        """Decide whether the recorder's clock continues (keep it) or restarted (append)."""
        p = self._pos
        if p.shift is not None:
            tol = min(1.0, 0.5 * p.last_duration) if p.last_duration > 0 else 1.0
            t = rec + p.shift
            if p.next_t - tol <= t <= p.next_t + self._max_gap:
                return
        p.shift = p.next_t - rec


def _open_error(path: Path, exc: BaseException) -> CorruptVideoError:
    return CorruptVideoError(f"{path}: cannot read segment ({exc})")
