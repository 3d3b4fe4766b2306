"""The serving façade: the only API the router calls.

:class:`Serving` answers what clients ask — hello info, the stream list,
adding and removing streams, queries, standing queries (watches),
thumbnails, health and metrics — over a list of :class:`StreamShard`
(one in-process shard today) and merges their answers. Every answer is a
model of :mod:`agent.service.protocol` or :mod:`agent.service.answer`; every
blocking step (image decode, search, disk) runs in a thread, in the shard or
here.

It is also the shards' :class:`~agent.service.shard.ShardListener`: stream
events are broadcast to subscribers (connected clients), encoded
super-images are scored by the open watches, stream ends close their
matches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.channels.refine import DEFAULT_REFINE_BUDGET_S
from agent.channels.retrieval import Query
from agent.channels.text_search import TimedText
from agent.config import Settings
from agent.core.superimage import SuperImage
from agent.errors import ConfigError, LimitExceededError, QueryError, UnknownStreamError
from agent.service.answer import QueryAnswer, query_answer
from agent.service.config import ServiceConfig, StreamSpec, parse_spec
from agent.service.metrics import ServiceMetrics
from agent.service.protocol import (
    PROTOCOL_VERSION,
    Health,
    QueryMsg,
    ServerEvent,
    StreamStatus,
    WatchMsg,
    to_query,
)
from agent.service.registry import StreamRegistry
from agent.service.shard import StreamShard, missing_of
from agent.service.watch import Emit, Watch
from agent.types import QueryResult
from streams.source import SourceSpec

log = logging.getLogger(__name__)

Subscriber = Callable[[ServerEvent], None]


class Serving:
    """Queries, watches and stream management over shards; see the module docstring."""

    def __init__(
        self, cfg: ServiceConfig, settings: Settings, shards: Sequence[StreamShard], registry: StreamRegistry
    ) -> None:
        if not shards:
            raise ConfigError("the service needs at least one shard")
        self.cfg = cfg
        self.settings = settings
        self.shards = list(shards)
        self.registry = registry
        self.watches: dict[int, Watch] = {}
        self.subscribers: set[Subscriber] = set()
        """Receive broadcast events (``progress``, ``stream``)."""
        self.metrics = ServiceMetrics()
        self._adding: set[str] = set()
        """Ids whose ``streams.add`` is under way."""
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    async def start(self, configured: Sequence[StreamSpec] = ()) -> None:
        """Restore the persisted streams (plus new configured ones) and start the shards."""
        specs = await asyncio.to_thread(self.registry.restore, configured)
        # One shard today: it takes every stream. Placement over several is the Ray issue's.
        await self.shards[0].start(specs, self, removed=set(self.registry.removed))
        for shard in self.shards[1:]:
            await shard.start((), self)
        await self._save_specs()
        self.registry.start_snapshots(self.shards)

    async def close(self) -> None:
        """Stop snapshots, close every watch and shard (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.registry.close()
        for watch in list(self.watches.values()):
            watch.close_all()
        for shard in self.shards:
            await shard.close()

    async def _save_specs(self, *extra: StreamSpec) -> None:
        specs = [spec for shard in self.shards for spec in shard.specs()] + list(extra)
        await asyncio.to_thread(self.registry.save, specs)

    # ------------------------------------------------------- ShardListener
    def on_event(self, event: ServerEvent) -> None:
        self.broadcast(event)

    def on_embedding(self, stream: str, si: SuperImage, vec: np.ndarray) -> None:
        for watch in list(self.watches.values()):
            try:
                watch.on_embedding(stream, si, vec)
            except Exception:  # one broken watch must not stop the encoder worker
                log.exception("watch %s failed", watch.id)

    def on_text_span(self, stream: str, channel: str, span: TimedText) -> None:
        for watch in list(self.watches.values()):
            try:
                watch.on_text_span(stream, channel, span)
            except Exception:  # one broken watch must not stop the speech or OCR worker
                log.exception("watch %s failed", watch.id)

    def on_stream_end(self, stream: str) -> None:
        for watch in list(self.watches.values()):
            watch.on_stream_end(stream)

    def broadcast(self, event: ServerEvent) -> None:
        for send in list(self.subscribers):
            send(event)

    # -------------------------------------------------------------- streams
    async def model_info(self) -> dict[str, Any]:
        """``{"model", "meaningless", "channels"}`` for ``hello``."""
        return await self.shards[0].model_info()

    async def list_streams(self) -> list[StreamStatus]:
        return [status for shard in self.shards for status in await shard.statuses()]

    async def add_stream(self, raw: dict[str, Any] | StreamSpec) -> StreamStatus:
        """Validate and start a stream (ConfigError: invalid or taken id; SourceError: missing input;
        LimitExceededError: ``sources.max_streams`` are running or being added)."""
        spec = raw if isinstance(raw, SourceSpec) else parse_spec(raw)
        if spec.id in self._adding or any(spec.id in {s.id for s in shard.specs()} for shard in self.shards):
            raise ConfigError(f"stream {spec.id!r} already exists")
        cap = self.cfg.sources.max_streams
        if len(self._adding) + sum(len(shard.specs()) for shard in self.shards) >= cap:
            raise LimitExceededError(f"the service runs at most {cap} streams (sources.max_streams)")
        self._adding.add(spec.id)  # reserved before the first await: two adds of one id cannot both pass
        try:
            # Persisted before the runner starts: once it runs, nothing may await before the caller
            # answers, so that the answer to ``streams.add`` precedes the stream's own status events.
            await self._save_specs(spec)
            try:
                return await self.shards[0].add(spec)
            except BaseException:
                await self._save_specs()
                raise
        finally:
            self._adding.discard(spec.id)

    async def remove_stream(self, stream: str, *, purge: bool = False) -> None:
        """Stop ``stream`` and forget it, across restarts too; ``purge`` also deletes its files.

        Without ``purge`` the files stay on disk (not opened again). A purge
        also reaches a stream removed earlier (placement: the first shard).
        """
        try:
            shard = self._runner_shard(stream)
        except UnknownStreamError:
            if not purge:
                raise
            shard = self.shards[0]
        await shard.remove(stream, purge=purge)
        self.registry.mark_removed(stream)
        await self._save_specs()

    def _runner_shard(self, stream: str) -> StreamShard:
        for shard in self.shards:
            if any(spec.id == stream for spec in shard.specs()):
                return shard
        raise UnknownStreamError(f"unknown stream {stream!r}")

    # -------------------------------------------------------------- queries
    async def parse_query(self, msg: QueryMsg | WatchMsg) -> Query:
        """The checked :class:`Query` of a message (image decoded in a thread); QueryError for a
        channel filter naming a channel this service does not index."""
        query = await asyncio.to_thread(to_query, msg, self.settings.query)
        if query.channels:  # names checked against what is indexed: a typo must not go silent
            query.check_channels((await self.model_info())["channels"])
        return query

    async def query(
        self,
        query: Query,
        *,
        budget: float | None = DEFAULT_REFINE_BUDGET_S,
        on_first: Callable[[QueryAnswer], None] | None = None,
    ) -> QueryAnswer:
        """Answer a one-shot query: every shard searches its streams, the answers merge.

        Progressive: ``on_first`` receives the prescreen's anchor-level answer
        (once every shard has given its part); the return value is the answer
        refined for at most ``budget`` seconds (None: no limit).
        """
        owners = await self._owners(query.streams)
        top_k = query.top_k or self.settings.query.top_k
        t0 = time.perf_counter()
        firsts: dict[str, QueryResult] = {}
        first_missing: dict[str, str] = {}
        waiting = len(owners)

        def first_part(part: dict[str, QueryResult]) -> None:
            nonlocal waiting
            firsts.update(part)
            first_missing.update(missing_of(part))
            waiting -= 1
            if waiting == 0:
                self.metrics.first_answer_latency.observe(time.perf_counter() - t0)
                if on_first is not None:
                    on_first(query_answer(firsts, top_k, first_missing))

        try:
            parts = await asyncio.gather(
                *(
                    shard.search(
                        dataclasses.replace(query, streams=names), budget=budget, on_first=first_part
                    )
                    for shard, names in owners
                )
            )
        finally:
            self.metrics.query_latency.observe(time.perf_counter() - t0)
        results: dict[str, QueryResult] = {}
        missing: dict[str, str] = {}
        for part in parts:
            results.update(part)
            missing.update(missing_of(part))
        return query_answer(results, top_k, missing)

    async def _owners(self, streams: list[str] | None) -> list[tuple[StreamShard, list[str] | None]]:
        """Which shard answers which of ``streams`` (all of its own for None); UnknownStreamError."""
        ids = [await shard.stream_ids() for shard in self.shards]
        if streams is None:
            return [(shard, None) for shard in self.shards]
        for name in streams:
            if not any(name in held for held in ids):
                raise UnknownStreamError(f"unknown stream {name!r}")
        owned = [
            (shard, [n for n in streams if n in held]) for shard, held in zip(self.shards, ids, strict=True)
        ]
        return [(shard, names) for shard, names in owned if names]

    async def open_watch(
        self,
        wid: str,
        query: Query,
        emit: Emit,
        *,
        threshold: float | None,
        close_seconds: float | None,
        word_share: float | None = None,
    ) -> Watch:
        """Register a standing query, calibrated on the watched streams' retained anchors.

        A watch restricted to text channels (``speech``, ``ocr``) needs no
        encoder vector and no calibration: it matches new spans by words
        (:mod:`agent.service.watch`).
        """
        await self._owners(query.streams)
        watch = Watch(
            wid,
            np.zeros(0, np.float32),
            streams=query.streams,
            cfg=self.cfg.watch,
            emit=emit,
            wall_of=self._wall_of,
            threshold=threshold,
            close_seconds=close_seconds,
            text=query.text,
            channels=query.channels,
            word_share=self.cfg.watch.word_share if word_share is None else word_share,
        )
        if not (watch.visual or watch.terms):  # e.g. "what was said" on speech: no word to match
            raise QueryError(
                "this watch could never match: its channels search words and the query text has no "
                "search terms (only stop words or channel words such as 'said', 'shown')"
            )
        if watch.visual:
            watch.qvec = await self.shards[0].embed_query(query)
            wanted = None if query.streams is None else set(query.streams)
            scores = await asyncio.gather(
                *(shard.background_scores(watch.qvec, wanted) for shard in self.shards)
            )
            watch.calibrate(np.concatenate(scores) if scores else np.zeros(0, np.float32))
        self.watches[id(watch)] = watch
        return watch

    def close_watch(self, watch: Watch) -> None:
        """Forget ``watch`` (idempotent); its open matches are closed by the caller if wanted."""
        self.watches.pop(id(watch), None)

    def _wall_of(self, stream: str, t: float) -> float | None:
        for shard in self.shards:
            wall = shard.wall_of(stream, t)
            if wall is not None:
                return wall
        return None

    async def thumbnail(self, stream: str, t: float) -> tuple[float, bytes]:
        """(time, JPEG) of the stored frame of ``stream`` nearest ``t``."""
        for shard, _ in await self._owners([stream]):
            return await shard.thumbnail(stream, t)
        raise UnknownStreamError(f"unknown stream {stream!r}")

    # ----------------------------------------------------------------- health
    async def health(self) -> Health:
        """``degraded`` with its reasons when a stream failed, reconnects or has a stale snapshot."""
        streams = await self.list_streams()
        reasons = [f"{s.id}: {reason}" for s in streams for reason in s.reasons]
        return Health(
            status="degraded" if reasons else "ok",
            reasons=reasons,
            protocol=PROTOCOL_VERSION,
            streams=len(streams),
            failed=[s.id for s in streams if s.status == "failed"],
            unloadable={u.id: u.reason for u in self.registry.unloadable},
        )

    async def render_metrics(self, clients: int) -> bytes:
        """Prometheus text: the shards' counters read now, the latency histogram, clients, watches."""
        stats = [await shard.stats() for shard in self.shards]
        return self.metrics.render(stats, clients=clients, watches=len(self.watches))

    def routes(self) -> list[Any]:
        """The shards' ingest routes (WHIP) for the router to mount."""
        return [route for shard in self.shards for route in shard.routes()]
