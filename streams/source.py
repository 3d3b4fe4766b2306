"""The source contract: what every kind of source offers, and the spec every kind extends.

A :class:`Source` is an async iterator of media (:class:`~streams.media.Frame`,
and :class:`~streams.media.AudioChunk` when its spec asks for audio) with an
idempotent :meth:`Source.close`, a :meth:`Source.stats` snapshot, a
:meth:`Source.resume_token` and a declared :attr:`Source.queue_policy`.

A :class:`SourceSpec` is the validated (pydantic) description of one stream
of a kind; each kind subclasses it with ``kind: Literal["..."]`` and registers
it with :func:`streams.registry.register`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from streams.bridge import QueuePolicy
from streams.media import Media

SourceState = Literal["connecting", "streaming", "backoff", "done", "closed"]
"""connecting (opening, or waiting for input) / streaming / backoff (live, before a
reconnect) / done (a finite source ended: everything delivered, or failed with
``last_error`` set) / closed."""


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A snapshot of a source's counters (JSON-able through :meth:`to_dict`).

    ``state``: see :data:`SourceState`; a finite source that failed is
    ``done`` with ``last_error`` set. ``frames``: frames handed to the
    consumer. ``drops``: frames discarded because the consumer fell behind
    (latest-wins sources only). ``reconnects``: sessions after the first.
    ``last_error``: the latest failure as text (None: none so far).
    ``audio_chunks``: audio chunks handed out. ``progress``: share in [0, 1]
    of a finite source delivered (1.0 only once it ended without error);
    None for sources without an end (live, followed folders).
    ``damaged_packets``: packets skipped as undecodable (a recording damaged
    mid-way still ends ``done``; this says it was not intact).
    ``extra``: kind-specific values (``segments_done``/``segments_corrupt``
    of a segment folder, ``failures`` of RTSP, ...).
    """

    state: SourceState
    frames: int = 0
    drops: int = 0
    reconnects: int = 0
    last_error: str | None = None
    audio_chunks: int = 0
    progress: float | None = None
    damaged_packets: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy: the fields, then ``extra``'s keys beside them (fields win on a clash)."""
        return {
            **self.extra,
            "state": self.state,
            "frames": self.frames,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "audio_chunks": self.audio_chunks,
            "progress": self.progress,
            "damaged_packets": self.damaged_packets,
        }


class Source(abc.ABC):
    """Async iterator of media from one stream; subclass per kind.

    Use as ``async with src: async for item in src``. Iteration ends
    (``StopAsyncIteration``) when a finite source is done or after
    :meth:`close`; failures raise :class:`~streams.errors.StreamError`
    subclasses after the media already decoded.
    """

    queue_policy: ClassVar[QueuePolicy]
    """``"latest"`` (live: stale frames dropped and counted) or ``"block"`` (replay: backpressure)."""

    restarts_clock: ClassVar[bool] = False
    """True when a new source of the same spec starts its times at 0 again (live
    sources): a consumer then continues its own timeline after what it stored."""

    def __aiter__(self) -> AsyncIterator[Media]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Media:
        """The next frame or audio chunk."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop producing and release threads and files; idempotent."""

    @abc.abstractmethod
    def stats(self) -> SourceStats:
        """Counters and state now (cheap; callable from the loop at any time, also after close)."""

    def resume_token(self) -> dict[str, Any] | None:
        """JSON-able position after the last item handed out, or None (live sources).

        A new source of the same spec given this token continues without
        loss or repeat.
        """
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SourceSpec(BaseModel):
    """Fields common to every kind; subclasses add ``kind: Literal[...]`` and their own fields.

    ``id``: the stream's name. ``fps``: sampling rate (None: the consumer's
    default). ``audio``: also yield :class:`~streams.media.AudioChunk`
    (off by default: decoding sound costs time).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: str
    fps: float | None = Field(default=None, gt=0, le=60)
    audio: bool = False

    @property
    def live(self) -> bool:
        """Whether the input is live (drops stale frames) rather than a replay."""
        return False

    @property
    def paced(self) -> bool:
        """Whether frames are to be consumed at stream pace (a recording replayed as if live)."""
        return False

    @property
    def repeats(self) -> bool:
        """Whether the stream starts over when its source ends (a looping replay)."""
        return False

    def wall_origin(self) -> float | None:
        """Unix time of stream second 0 when the spec knows it (recordings with a start time)."""
        return None

    def location(self) -> dict[str, str | None]:
        """Where the input is, for listings: ``{"url": ..., "path": ...}``."""
        return {"url": None, "path": None}

    def check_input(self) -> None:
        """Blocking check that the input exists; raises SourceUnavailableError. Default: nothing to check."""

    def rebased(self, base: Path) -> Self:
        """The spec with relative paths taken from ``base`` (a config file's folder)."""
        return self


class RecordingSpec(SourceSpec):
    """A spec whose input is a path on disk, optionally with the wall time of second 0."""

    path: str
    start_wall: datetime | None = None
    """Wall-clock time of stream second 0, so answers carry wall times."""

    def wall_origin(self) -> float | None:
        return None if self.start_wall is None else self.start_wall.timestamp()

    def location(self) -> dict[str, str | None]:
        return {"url": None, "path": self.path}

    def rebased(self, base: Path) -> Self:
        if Path(self.path).is_absolute():
            return self
        return self.model_copy(update={"path": str(base / self.path)})
