"""The shard seam: the only way the service reaches streams.

A :class:`StreamShard` holds some streams — their sources, state and
encoder — and answers for them: add, remove, list, search a query into
per-stream results, the scores a watch needs (background scores for its
relative threshold; every newly encoded super-image and every new
transcript or on-screen text span forwarded to a :class:`ShardListener`), snapshots, statistics, close. Every call the
service makes is async so that a shard in another process or on another
machine (a Ray actor, a later issue) fits behind the same interface; today
:class:`~agent.service.local_shard.LocalShard` (in process) is the only one.

The serving façade holds a list of shards and merges their answers; stream
ids are unique across shards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from aiohttp import web

from agent.channels.base import ChannelSize, WorkCounters
from agent.channels.retrieval import Query
from agent.channels.text_search import TimedText
from agent.core.superimage import SuperImage
from agent.service.config import StreamSpec
from agent.service.protocol import ServerEvent, StreamStatus
from agent.types import QueryResult


class ShardListener(Protocol):
    """What a shard tells the service; every call on the event loop, none may block."""

    def on_event(self, event: ServerEvent) -> None:
        """A broadcast event: a stream's status changed, a replay's progress."""

    def on_embedding(self, stream: str, si: SuperImage, vec: np.ndarray) -> None:
        """A super-image of ``stream`` was encoded to the unit vector ``vec`` (dim,)."""

    def on_text_span(self, stream: str, channel: str, span: TimedText) -> None:
        """A text channel of ``stream`` (``speech``, ``ocr``) kept a new span: an utterance, a line shown.

        Plain data (times in stream seconds, text, timed words), so a shard in
        another process can forward it as it is.
        """

    def on_stream_end(self, stream: str) -> None:
        """``stream`` ended, failed or was stopped."""


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Counters of one stream at one instant (the ``/metrics`` families with a ``stream`` label)."""

    frames: int
    dropped: int
    reconnects: int
    up: bool
    """Running and not reconnecting (:class:`agent.service.health.StreamHealth`)."""
    tokens: int
    encoder_queue: int
    source_events: dict[str, int] = field(default_factory=dict)
    """The source's own counters by name (segments lost or late, clamped timestamps, ...)."""
    store_writing: bool = True
    """False while the frame store is paused after a write failure (disk full): frames are skipped."""
    store_skipped: int = 0
    """Frames the frame store did not keep because of write failures."""
    gaps: int = 0
    """Holes in the memory's coverage."""
    gap_seconds: float = 0.0
    snapshot_age: float = 0.0
    """Seconds since the last good snapshot (since the stream started, before the first)."""
    errors: dict[str, int] = field(default_factory=dict)
    """The stream's failures by error code (its own failure, failed snapshots)."""
    channels: dict[str, ChannelSize] = field(default_factory=dict)
    """Size and lag of each text channel (``speech``, ``ocr``) by name; empty when none is on."""
    restarts: int = 0
    """Times the stream was restarted elsewhere after its process or node died (remote shards)."""
    lost_seconds: float = 0.0
    """Wall seconds of ingest lost over those restarts: last snapshot to death, summed."""
    lost_frames: int = 0
    """Frames ingested after the last snapshot before a death, absent from the restored state."""


@dataclass(frozen=True, slots=True)
class ShardStats:
    """Counters of one shard at one instant."""

    streams: dict[str, StreamStats] = field(default_factory=dict)
    encoder_passes: int = 0
    encoder_images: int = 0
    encoder_errors: int = 0
    work: dict[tuple[str, str], WorkCounters] = field(default_factory=dict)
    """Failure accounting per (stream, channel): failed, retried, dropped work items."""
    events_dropped: int = 0
    """Shard events (status, embeddings) dropped on the way to the service (a remote shard's
    bounded event queue overflowing); always 0 in process."""


class ShardResults(dict[str, QueryResult]):
    """Per-stream results of a shard that could not reach every stream asked about.

    A remote shard returns one when some of its streams missed their deadline
    or are moving to another node: the results it has, plus ``missing``
    (stream -> reason). A plain dict means every stream answered.
    """

    def __init__(self, results: dict[str, QueryResult], missing: dict[str, str]) -> None:
        super().__init__(results)
        self.missing = dict(missing)


def missing_of(part: dict[str, QueryResult]) -> dict[str, str]:
    """The streams a shard's answer lacks, by reason (empty for a complete answer)."""
    return dict(part.missing) if isinstance(part, ShardResults) else {}


FirstAnswer = Callable[[dict[str, QueryResult]], None]
"""Receives a query's first (prescreen) per-stream results, on the event loop."""


class StreamShard(ABC):
    """Streams behind one interface; see the module docstring."""

    @abstractmethod
    async def start(
        self, specs: Iterable[StreamSpec], listener: ShardListener, *, removed: Collection[str] = ()
    ) -> None:
        """Open the shard's state and start ``specs`` (restored or configured streams).

        ``removed``: streams removed earlier whose files are not to be opened.
        A stream whose snapshot cannot be loaded starts ``failed`` (typed
        error; bad files set aside); the others start.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop every stream, flush the encoder, take a final snapshot (idempotent)."""

    # -------------------------------------------------------------- streams
    @abstractmethod
    async def add(self, spec: StreamSpec) -> StreamStatus:
        """Start a new stream (ConfigError if its id is taken here, SourceError if its input is missing)."""

    @abstractmethod
    async def remove(self, stream: str, *, purge: bool = False) -> None:
        """Stop ``stream`` and forget it; UnknownStreamError if not here.

        Its stored files stay, unless ``purge``: then they are deleted
        (snapshots, stored frames and thumbnails), also for a stream that no
        longer runs but whose files are still here.
        """

    @abstractmethod
    async def statuses(self) -> list[StreamStatus]:
        """Status of every running (or ended) stream of this shard."""

    @abstractmethod
    def specs(self) -> list[StreamSpec]:
        """Specs of the streams this shard runs (what the registry persists)."""

    @abstractmethod
    async def stream_ids(self) -> set[str]:
        """Streams this shard can answer queries about (running or restored from disk)."""

    # -------------------------------------------------------------- queries
    @abstractmethod
    async def search(
        self, query: Query, *, budget: float | None = None, on_first: FirstAnswer | None = None
    ) -> dict[str, QueryResult]:
        """Per-stream results of ``query`` over ``query.streams`` (all of this shard's when None).

        Progressive: ``on_first`` (when given) receives the prescreen's
        anchor-level results as soon as they exist; the return value is the
        answer refined for at most ``budget`` seconds (None: no limit).
        """

    @abstractmethod
    async def embed_query(self, query: Query) -> np.ndarray:
        """The (dim,) unit vector of ``query`` under the encoder whose embeddings watches receive."""

    @abstractmethod
    async def background_scores(self, qvec: np.ndarray, streams: set[str] | None) -> np.ndarray:
        """Scores of ``qvec`` against every retained anchor of ``streams`` (all when None)."""

    @abstractmethod
    def wall_of(self, stream: str, t: float) -> float | None:
        """Wall-clock time of stream second ``t`` (None for recordings or unknown streams)."""

    @abstractmethod
    async def thumbnail(self, stream: str, t: float) -> tuple[float, bytes]:
        """(time, JPEG) of the stored frame nearest ``t``; UnknownStreamError / IndexStoreError."""

    # ----------------------------------------------------- state and health
    @abstractmethod
    async def snapshot(self) -> None:
        """Snapshot every stream now; every stream is tried, the old generation of a failed one stays.

        Raises IndexStoreError naming the streams that failed (after trying all).
        """

    @abstractmethod
    async def stats(self) -> ShardStats:
        """Counters for ``/metrics``."""

    @abstractmethod
    async def model_info(self) -> dict[str, Any]:
        """``{"model": {...}, "meaningless": bool, "channels": [name]}`` of the shard's encoders and channels."""

    def routes(self) -> list[web.RouteDef]:
        """Ingest routes this shard serves on the service's port (WHIP); none by default."""
        return []


SOURCE_EVENTS = (
    "damaged_packets",
    "failures",
    "clock_clamped",
    "clock_jumps",
    "segments_corrupt",
    "segments_refused",
    "segments_late",
    "segments_lost",
    "segments_renamed",
)
"""Source counters exported per stream as ``vmr_source_events_total{event=...}``."""


def source_events(info: dict[str, Any] | None) -> dict[str, int]:
    """The counters of :data:`SOURCE_EVENTS` a source's statistics carry."""
    if info is None:
        return {}
    return {k: int(info[k]) for k in SOURCE_EVENTS if isinstance(info.get(k), int)}
