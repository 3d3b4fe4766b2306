"""Which segment of a recorder's folder comes next, and whether it is complete.

See :mod:`streams.segments` for the rules; this module holds the folder
scan (natural name order), the completeness test (size and mtime stable,
a newer segment beside it, or settled for ``settle_seconds``) and the
resume position (:class:`SegmentPosition`). Blocking file-system calls:
run it in the reader's worker thread.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

    def names(self) -> list[str]:
        """Segment files in natural order."""
        with os.scandir(self.folder) as it:
            names = [
                e.name for e in it if e.is_file() and any(fnmatch.fnmatch(e.name, p) for p in self.patterns)
            ]
        return sorted(names, key=natural_key)

    def pending(self, done: str | None) -> list[str]:
        """Segments after ``done`` (all when None), in order."""
        return [n for n in self.names() if done is None or natural_key(n) > natural_key(done)]

    def newest(self) -> str | None:
        """The last segment in order, if any."""
        names = self.names()
        return names[-1] if names else None

    def complete(self, name: str, newer: bool) -> bool:
        """Whether ``name`` may be read now (see :mod:`streams.segments`)."""
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
        """Drop what was seen of ``name`` (after reading it)."""
        self._seen.pop(name, None)
