"""What runs inside one Ray actor: one stream, as a :class:`LocalShard` of one.

:class:`StreamActor` is a plain class (no ``ray`` import here); the gateway
wraps it with ``ray.remote`` when it places a stream (see
:mod:`agent.service.cluster.gateway`). Ray runs an async actor's methods on
one event loop in the actor process, so the wrapped shard keeps the
single-process service's rules: blocking work in threads, every task owned
and closed by :meth:`StreamActor.close`.

Events the shard tells its listener (status, encoded super-images for the
gateway's watches, stream end) go into an :class:`EventBuffer` that the
gateway drains by long-poll (:meth:`StreamActor.poll`). The buffer is
bounded; when full the *oldest* event is dropped and counted: a stale status
is superseded by the next anyway, and a gateway that stopped polling must
not grow the actor's memory. Under normal load the gateway polls
continuously, so nothing is dropped (the counter says otherwise if it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.channels.retrieval import PRESCREEN, REFINE, Query
from agent.channels.text_search import TimedText
from agent.config import Settings
from agent.core.superimage import SuperImage
from agent.models.encoder import loaded_encoders, provide_encoder
from agent.process_memory import process_memory
from agent.service.cluster.encoder_pool import PoolRef, RemoteEncoder
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.local_shard import LocalShard
from agent.service.protocol import ServerEvent
from agent.service.shard import ShardStats
from agent.types import QueryResult

_NO_PIXELS = np.zeros((1, 1, 3), np.uint8)
"""Watches read a super-image's times only: its pixels never cross to the gateway."""

FIRST_KEEP_S = 60.0
"""A query's prescreen part is kept this long after its search ends, for a late ``first`` call."""

QueryVecs = dict[str, np.ndarray]
"""A query's (dim,) unit vectors by encoder role (``"prescreen"``, ``"refine"`` when another model)."""

Event = tuple[str, Any]
"""``("event", ServerEvent)``, ``("embedding", (stream, SuperImage, vec))``,
``("text", (stream, channel, TimedText))`` or ``("end", stream)``."""


class EventBuffer:
    """The actor's :class:`~agent.service.shard.ShardListener`: a bounded queue, oldest dropped when full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: deque[Event] = deque()
        self.dropped = 0
        self._ready = asyncio.Event()

    def _put(self, item: Event) -> None:
        if len(self.items) >= self.size:
            self.items.popleft()
            self.dropped += 1
        self.items.append(item)
        self._ready.set()

    def on_event(self, event: ServerEvent) -> None:
        self._put(("event", event))

    def on_embedding(self, stream: str, si: SuperImage, vec: np.ndarray) -> None:
        self._put(("embedding", (stream, dataclasses.replace(si, image=_NO_PIXELS), vec)))

    def on_text_span(self, stream: str, channel: str, span: TimedText) -> None:
        self._put(("text", (stream, channel, span)))

    def on_stream_end(self, stream: str) -> None:
        self._put(("end", stream))

    async def take(self, wait: float) -> list[Event]:
        """Every buffered event, waiting up to ``wait`` seconds for the first."""
        if not self.items:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        out = list(self.items)
        self.items.clear()
        self._ready.clear()
        return out


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What the gateway learns of a stream with every poll (its recovery accounting reads it)."""

    status: dict[str, Any]
    """The stream's :class:`~agent.service.protocol.StreamStatus` fields."""
    node: str
    """Ray node id the actor runs on."""
    frames: int
    """Frames ingested by this actor."""
    snapshot_wall: float | None
    """Unix time of the last good snapshot taken by this actor (None before the first)."""
    snapshot_frames: int
    """``frames`` at that snapshot."""
    walls: list[tuple[float, float]] = field(default_factory=list)
    """(stream second, Unix time) pairs of the latest super-images: the gateway's ``wall_of``."""
    dropped_events: int = 0


class StreamActor:
    """One stream in a Ray worker process; the gateway calls every method remotely."""

    def __init__(
        self, cfg: ServiceConfig, settings: Settings, queue: int, pool: PoolRef | None = None
    ) -> None:
        """``pool``: the cluster's encoder pool (this actor then loads no model); None: its own."""
        self.remote = None if pool is None else RemoteEncoder(pool)
        if self.remote is not None:  # the index this shard opens encodes through the pool
            provide_encoder(settings.prescreen, self.remote)
        self.shard = LocalShard(cfg, settings)
        self.events = EventBuffer(queue)
        self.stream = ""
        self.started = time.time()
        self.snapshot_wall: float | None = None
        self.snapshot_frames = 0
        self._firsts: dict[str, asyncio.Future[dict[str, QueryResult]]] = {}

    async def start(self, spec: StreamSpec) -> dict[str, Any]:
        """Open the stream's state (restoring its snapshot) and start it; returns its status."""
        self.stream = spec.id
        if self.remote is not None:
            self.remote.stream = spec.id
        await self.shard.start([spec], self.events)
        return (await self.shard.statuses())[0].model_dump(mode="json")

    async def open(self) -> None:
        """Open a stream-less shard (the gateway's model probe)."""
        await self.shard.start([], self.events)

    async def close(self, purge: bool = False) -> None:
        """Stop the stream with a final snapshot (or delete its files when ``purge``); idempotent."""
        if purge and self.stream in self.shard.runners:
            await self.shard.remove(self.stream, purge=True)
        await self.shard.close()

    def node(self) -> str:
        import ray  # only ever called inside a Ray worker

        return str(ray.get_runtime_context().get_node_id())

    async def poll(self, wait: float) -> tuple[list[Event], Heartbeat]:
        """Buffered events (waiting up to ``wait`` s for one) and the stream's heartbeat."""
        events = await self.events.take(wait)
        return events, await self.heartbeat()

    async def heartbeat(self) -> Heartbeat:
        statuses = await self.shard.statuses()
        runner = self.shard.runners.get(self.stream)
        st = None if self.shard.index is None else self.shard.index.streams.get(self.stream)
        walls = []
        if st is not None and st.stats.last_time is not None:
            wall = st.wall_of(st.stats.last_time)
            if wall is not None:
                walls.append((float(st.stats.last_time), wall))
        return Heartbeat(
            status=statuses[0].model_dump(mode="json") if statuses else {},
            node=self.node(),
            frames=0 if runner is None else runner.frames_in,
            snapshot_wall=self.snapshot_wall,
            snapshot_frames=self.snapshot_frames,
            walls=walls,
            dropped_events=self.events.dropped,
        )

    # ---------------------------------------------------------------- queries
    async def search(
        self, qid: str, query: Query, budget: float | None, vectors: QueryVecs | None = None
    ) -> dict[str, QueryResult]:
        """The refined results of ``query``; its prescreen part waits for :meth:`first` under ``qid``.

        ``vectors``: the query's (dim,) vectors by role, encoded once by the gateway
        (:meth:`query_vectors` of one actor): kept as this actor's own, so its search encodes
        nothing for them. None: the search encodes the query here.
        """
        first = self._firsts.setdefault(qid, asyncio.get_running_loop().create_future())
        try:
            if vectors:
                self._keep(query, vectors)
            return dict(await self.shard.search(query, budget=budget, on_first=_resolve(first)))
        except BaseException as exc:
            if not first.done():
                first.set_exception(exc)
            raise
        finally:
            # The gateway asks for the first part at once, or has given up on it by then.
            asyncio.get_running_loop().call_later(FIRST_KEEP_S, self._firsts.pop, qid, None)

    async def first(self, qid: str) -> dict[str, QueryResult]:
        """The prescreen results of the search running under ``qid`` (as soon as they exist)."""
        fut = self._firsts.setdefault(qid, asyncio.get_running_loop().create_future())
        return await asyncio.shield(fut)

    def _keep(self, query: Query, vectors: QueryVecs) -> None:
        """Put the shipped vectors where :func:`query_roles` looks: PRESCREEN at the query grid,
        REFINE (the photo alone) at grid 1."""
        idx = self.shard.idx
        where = {PRESCREEN: (idx.prescreen, idx.settings.query_grid), REFINE: (idx.refine, 1)}
        for role, vec in vectors.items():
            encoder, grid = where[role]
            idx.query_vectors.put(query, encoder, vec, grid)

    async def query_vectors(self, query: Query) -> QueryVecs:
        """``query``'s (dim,) vectors by encoder role, for the gateway to ship to every actor."""
        return await self.shard.query_vectors(query)

    def memory(self) -> dict[str, float]:
        """:func:`process_memory`, and how many models this process loaded (``encoders_loaded``)."""
        return {**process_memory(), "encoders_loaded": float(len(loaded_encoders()))}

    async def embed_query(self, query: Query) -> np.ndarray:
        return await self.shard.embed_query(query)

    async def background_scores(self, qvec: np.ndarray) -> np.ndarray:
        return await self.shard.background_scores(qvec, None)

    async def thumbnail(self, t: float) -> tuple[float, bytes]:
        return await self.shard.thumbnail(self.stream, t)

    # ------------------------------------------------------- state and health
    async def snapshot(self) -> None:
        """Snapshot now; the time and frame count of a good one are the recovery point."""
        runner = self.shard.runners.get(self.stream)
        frames = 0 if runner is None else runner.frames_in
        await self.shard.snapshot()
        self.snapshot_wall, self.snapshot_frames = time.time(), frames

    async def stats(self) -> ShardStats:
        return await self.shard.stats()

    async def model_info(self) -> dict[str, Any]:
        return await self.shard.model_info()


def _resolve(fut: asyncio.Future[dict[str, QueryResult]]) -> Any:
    def on_first(part: dict[str, QueryResult]) -> None:
        if not fut.done():
            fut.set_result(dict(part))

    return on_first
