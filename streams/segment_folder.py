"""Which segment of a recorder's folder comes next, and whether it is complete.

See :mod:`streams.segments` for the rules; this module holds the folder
scan (natural name order), the completeness test (size and mtime stable,
a newer segment beside it, or settled for ``settle_seconds``), a segment's
own wall clock (:func:`wall_from_name`) and the resume position
(:class:`SegmentPosition`). Blocking file-system calls: run it in the
reader's worker thread.

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

Which segments are new: a file is *finished* once read (or skipped as
corrupt); :attr:`SegmentPosition.finished` holds the identity of each
finished file still in the folder — device, inode, size and mtime, not its
name. So a segment back-filled with a name before the last one read is
still new; a recorder that restarts and numbers from ``000`` again (a new
file, or the old name overwritten: new size and mtime) is new; a finished
file renamed is not read twice; a pruned file is forgotten (the list stays
as long as the folder). A pending file (seen, not finished) whose name is
gone before it was read, and whose identity is nowhere else, is *lost*; one
whose identity reappears under another name was *renamed*
(:meth:`SegmentFolder.scan` reports both). A pending file still being
written changes identity at each scan but keeps its name: neither.

Symbolic links inside a segment folder are not segments (recorders write files; a link
could point anywhere, outside the folder a client was allowed to name).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from streams.errors import SourceUnavailableError


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
    finished: list[str] | None = None
    """Identities (:func:`identity`) of finished segments still in the folder; None in positions
    written before it existed (then ``done`` and every name before it count as finished)."""
    last_wall_end: float | None = None
    """Wall clock where the latest (not late) segment read ends, to tell a back-filled segment."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentPosition:
        """Inverse of :meth:`to_dict`; raises SourceUnavailableError on garbage."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SourceUnavailableError(f"invalid segment position: {exc}") from exc


def identity(st: os.stat_result) -> str:
    """A file's identity across renames: device, inode, size and mtime (ns)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


_DATE_TIME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})[T _.-]?(\d{2})[-:.h]?(\d{2})[-:.m]?(\d{2})(?!\d)")
_EPOCH = re.compile(r"(?<!\d)(1\d{9})(?!\d)")


def wall_from_name(name: str) -> float | None:
    """Unix time a recorder wrote into a segment's name, or None.

    ``YYYYmmdd-HHMMSS`` and its separated forms (``2024-05-01_12-30-00``,
    ``20240501T123000``; local time, as ``strftime`` names are) or a
    10-digit Unix time; years 2000-2099 only, so sequence numbers do not pass.
    """
    match = _DATE_TIME.search(name)
    if match is not None:
        y, mo, d, h, mi, sec = (int(g) for g in match.groups())
        if 2000 <= y < 2100:
            try:
                return datetime(y, mo, d, h, mi, sec).timestamp()
            except ValueError:
                pass
    match = _EPOCH.search(name)
    return float(match.group(1)) if match is not None else None


@dataclass
class Scan:
    """One look at the folder: what is pending, and what went missing since the last look."""

    pending: list[str] = field(default_factory=list)
    """Segments not finished, in natural order."""
    lost: list[str] = field(default_factory=list)
    """Pending segments whose file is gone before they were read."""
    renamed: list[tuple[str, str]] = field(default_factory=list)
    """Pending segments seen under a new name: (old, new)."""


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing digit runs as numbers: ``a9`` < ``a10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


@dataclass(frozen=True)
class _Seen:
    signature: tuple[int, int]  # (size, mtime_ns)
    since: float  # monotonic time this signature was first seen


class SegmentFolder:
    """The segment files of one folder, and the signatures (size, mtime) seen of each."""

    def __init__(self, folder: Path, patterns: Sequence[str], settle_seconds: float) -> None:
        self.folder = folder
        self.patterns = tuple(patterns)
        self.settle = settle_seconds
        self._seen: dict[str, _Seen] = {}
        self._deferred: dict[str, tuple[int, int]] = {}  # newest segment that failed to open, by signature
        self._pending: dict[str, str] = {}  # identity -> name of the pending files at the last scan

    def names(self) -> list[str]:
        """Segment files in natural order."""
        with os.scandir(self.folder) as it:
            names = [
                e.name
                for e in it
                if e.is_file(follow_symlinks=False) and any(fnmatch.fnmatch(e.name, p) for p in self.patterns)
            ]
        return sorted(names, key=natural_key)

    def pending(self, done: str | None) -> list[str]:
        """Segments after ``done`` (all when None), in order."""
        return [n for n in self.names() if done is None or natural_key(n) > natural_key(done)]

    def scan(self, pos: SegmentPosition) -> Scan:
        """Pending segments by identity (see the module docstring); prunes ``pos.finished`` in place."""
        stats: dict[str, os.stat_result] = {}
        for name in self.names():
            try:
                stats[name] = os.stat(self.folder / name)
            except FileNotFoundError:
                continue  # gone between the listing and the stat: the next scan tells
        if pos.finished is None:  # a position from before identities: the name cursor decides
            done = pos.done
            pos.finished = [
                identity(st)
                for n, st in stats.items()
                if done is not None and natural_key(n) <= natural_key(done)
            ]
        present = {identity(st) for st in stats.values()}
        pos.finished = [i for i in pos.finished if i in present]
        finished = set(pos.finished)
        out = Scan()
        pending: dict[str, str] = {}  # identity -> name
        for name, st in stats.items():
            if identity(st) not in finished:
                pending[identity(st)] = name
                out.pending.append(name)
        by_name = {name: identity(st) for name, st in stats.items()}
        for ident, name in self._pending.items():
            if ident in pending:
                if pending[ident] != name:
                    out.renamed.append((name, pending[ident]))
            elif name not in by_name:
                out.lost.append(name)  # gone, and not renamed (a rename keeps inode, size and mtime)
        self._pending = pending
        return out

    def identity(self, name: str) -> str:
        """The identity of ``name`` now; FileNotFoundError when it is gone."""
        return identity(os.stat(self.folder / name))

    def newest(self) -> str | None:
        """The last segment in order, if any."""
        names = self.names()
        return names[-1] if names else None

    def complete(self, name: str, newer: bool) -> bool:
        """Whether ``name`` may be read now (see the module docstring)."""
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
        return newer or now - seen.since >= self.settle

    def defer(self, name: str) -> None:
        """``name`` failed to open as it is now: do not retry it until it changes or a newer one appears."""
        seen = self._seen.get(name)
        if seen is not None:
            self._deferred[name] = seen.signature

    def forget(self, name: str) -> None:
        """Drop what was seen of ``name`` (after reading it: no longer pending, so never lost)."""
        self._seen.pop(name, None)
        self._pending = {k: v for k, v in self._pending.items() if v != name}
