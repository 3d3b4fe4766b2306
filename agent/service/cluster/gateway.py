"""The gateway's shard: every stream a Ray actor, every call a deadline.

:class:`RayShard` is the :class:`~agent.service.shard.StreamShard` of
``vmr serve --ray``. It places one :class:`StreamActor` per stream
(:mod:`agent.service.cluster.placement`), fans queries out to them
concurrently — each stream's part bounded by ``ray.deadline_seconds`` past
when it was due, so a slow or dead actor never blocks a query; the answer
then lists it under ``missing`` — and long-polls each actor for its events
(one owned task per stream). When an actor dies (its process or its node),
the poll sees it and the gateway starts the stream again on a live node from
its last snapshot on the shared storage, counting the loss
(:meth:`Placement.died`). Typed errors an actor raises (a bad query) reach
the client as in the single-process service; Ray's own errors become
``missing`` parts or :class:`ShardUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import uuid
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

from agent.channels.retrieval import Query
from agent.config import Settings
from agent.errors import (
    ConfigError,
    IndexStoreError,
    ShardUnavailableError,
    UnknownStreamError,
    VmrError,
    from_stream_error,
)
from agent.service.cluster import connect, disconnect, require_ray
from agent.service.cluster.actor import QueryVecs, StreamActor
from agent.service.cluster.encoder_pool import EncoderPool
from agent.service.cluster.placement import (
    Placement,
    Unreachable,
    actor_options,
    await_ref,
    each_stream,
    merge_results,
    merge_stats,
    shard_dir,
    submit,
)
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.protocol import StreamStatus
from agent.service.shard import FirstAnswer, ShardListener, ShardResults, ShardStats, StreamShard
from agent.types import QueryResult
from streams.errors import StreamError

log = logging.getLogger(__name__)
START_SECONDS = 300.0
"""A new actor may take this long to start (a cold node imports torch and loads the encoder)."""
PROBE = "_model"
"""Folder (under the shards') of the stream-less actor that reports the model when no stream runs."""
UNBOUNDED_REFINE_S = 60.0
"""Deadline of a query without a refinement budget (a dead actor fails fast; a hung one waits this)."""


class RayShard(StreamShard):
    """Streams as Ray actors behind the shard seam; see the module docstring."""

    def __init__(self, cfg: ServiceConfig, settings: Settings) -> None:
        if cfg.ray is None:
            raise ConfigError("RayShard needs service.ray")
        self.cfg, self.settings, self.rc = cfg, settings, cfg.ray
        self.placed: dict[str, Placement] = {}
        self._listener: ShardListener | None = None
        self._ray: Any = None
        self._owns_ray = False
        self._info: dict[str, Any] | None = None
        self._probe: Any = None
        """Stream-less actor answering model and query-encoding calls while no stream runs."""
        self._probe_lock = asyncio.Lock()
        self._turn = 0  # which live actor encodes the next query (round robin)
        self.pool: EncoderPool | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    async def start(
        self, specs: Iterable[StreamSpec], listener: ShardListener, *, removed: Collection[str] = ()
    ) -> None:
        self._listener = listener
        self._ray = require_ray()
        self._owns_ray = await asyncio.to_thread(connect, self._ray, self.rc)
        if self.rc.encoders > 0:  # before any stream: each is handed the pool's handles
            grid = self.settings.query_grid
            self.pool = EncoderPool(self._ray, self.rc, self.settings.prescreen, query_grid=grid)
            await self.pool.start(START_SECONDS)
        started = [Placement(spec) for spec in specs if spec.id not in removed]
        outcomes = await asyncio.gather(*(self._place(p) for p in started), return_exceptions=True)
        for p, out in zip(started, outcomes, strict=True):
            if isinstance(out, BaseException):  # isolation: this stream is listed failed, the others run
                log.error("stream %s did not start on the cluster: %s", p.id, out)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        placements = list(self.placed.values())
        for p in placements:
            if p.poll is not None:
                p.poll.cancel()
        await asyncio.gather(*(p.poll for p in placements if p.poll is not None), return_exceptions=True)
        await asyncio.gather(*(self._stop(p) for p in placements), return_exceptions=True)
        if self._probe is not None:
            await asyncio.to_thread(self._ray.kill, self._probe)
        if self.pool is not None:
            await self.pool.close()
        if self._owns_ray and self._ray is not None:
            await asyncio.to_thread(disconnect, self._ray)

    async def _stop(self, p: Placement, *, purge: bool = False) -> None:
        """Final snapshot (or purge) in the actor, then end its process."""
        handle, p.handle = p.handle, None
        if handle is None:
            return
        try:
            await self._call(handle.close, purge, limit=START_SECONDS)
        except (Unreachable, VmrError) as exc:  # gone already: its last periodic snapshot stands
            log.warning("stream %s closed without a final snapshot: %s", p.id, exc)
        await asyncio.to_thread(self._ray.kill, handle)

    # ------------------------------------------------------------ placement
    def _new_actor(self, stream: str) -> Any:
        cfg = self.cfg.model_copy(update={"index": shard_dir(self.cfg, stream), "ray": None})
        cls = self._ray.remote(StreamActor).options(**actor_options(self.rc))
        return cls.remote(cfg, self.settings, self.rc.event_queue, self.pool and self.pool.ref)

    async def _place(self, p: Placement) -> StreamStatus:
        """Start ``p``'s actor (restoring its snapshot) and its event poll; the status it starts with."""
        self.placed[p.id] = p
        p.idle.clear()  # a purge waits for the start: the actor creates the stream's files
        try:
            return await self._start_actor(p)
        finally:
            p.idle.set()

    async def _start_actor(self, p: Placement) -> StreamStatus:
        # Creating an actor is blocking in the driver (the class is pickled and exported to
        # the GCS on first use, the runtime env resolved): under load that held the event
        # loop past the clients' 20-s keepalive.
        handle = await asyncio.to_thread(self._new_actor, p.id)
        try:
            status = await self._call(handle.start, p.spec, limit=START_SECONDS)
        except (Unreachable, VmrError) as exc:
            await asyncio.to_thread(self._ray.kill, handle)
            error = exc if isinstance(exc, VmrError) else ShardUnavailableError(str(exc))
            p.status = {"id": p.id, "kind": p.spec.kind, "status": "failed"}
            p.status["error"] = {"code": error.code, "message": str(error)}
            raise error from exc
        except asyncio.CancelledError:  # removed, or the gateway closing, mid-start: no orphan actor
            await asyncio.shield(asyncio.to_thread(self._ray.kill, handle))
            raise
        if self._closed or self.placed.get(p.id) is not p:  # removed (or closing) while it started
            await asyncio.to_thread(self._ray.kill, handle)
            raise ShardUnavailableError(f"stream {p.id!r} was removed while it started")
        if p.moving is None:
            p.handle, p.status = handle, status
        else:
            p.restarted(handle, status)
        p.poll = asyncio.create_task(self._poll(p), name=f"ray-poll-{p.id}")
        return StreamStatus.model_validate(p.view())

    async def _poll(self, p: Placement) -> None:
        """Forward ``p``'s events until the shard closes; move the stream when its actor dies."""
        while not self._closed and p.handle is not None:
            try:
                events, hb = await self._call(
                    p.handle.poll, self.rc.poll_seconds, limit=self.rc.poll_seconds + self.rc.deadline_seconds
                )
            except Unreachable as exc:
                if exc.died:
                    p.died(str(exc))
                    await self._move(p)
                    return  # the new actor has its own poll
                # Slow or briefly unavailable, not dead: ask again, after a pause (a GCS hiccup
                # fails every call at once: without it this loop would spin on the event loop).
                await asyncio.sleep(self.rc.poll_seconds)
                continue
            p.heartbeat, p.status = hb, hb.status or p.status
            self._deliver(events)

    def _deliver(self, events: list[tuple[str, Any]]) -> None:
        assert self._listener is not None
        for kind, body in events:
            if kind == "event":
                self._listener.on_event(body)
            elif kind == "embedding":
                self._listener.on_embedding(*body)
            elif kind == "text":
                self._listener.on_text_span(*body)
            else:
                self._listener.on_stream_end(body)

    async def _move(self, p: Placement) -> None:
        """Start ``p`` again on a live node from its last snapshot (``restart_attempts`` tries)."""
        log.warning("stream %s lost its actor (%s); restarting from its last snapshot", p.id, p.moving)
        for attempt in range(self.rc.restart_attempts + 1):
            if self._closed or self.placed.get(p.id) is not p:
                return
            try:
                await self._place(p)
                return
            except VmrError as exc:
                log.warning("restart %d of stream %s failed: %s", attempt + 1, p.id, exc)
                await asyncio.sleep(min(2.0**attempt, 10.0))
        p.moving = None  # given up: the status says failed (set by the last attempt)

    async def _call(self, method: Any, *args: Any, limit: float) -> Any:
        """Call the actor method ``method`` and await it (errors mapped by :func:`await_ref`)."""
        return await await_ref(self._ray, await self._submit(method, *args), limit)

    async def _submit(self, method: Any, *args: Any) -> Any:
        """``method.remote(*args)``; in a thread under Ray Client (``ray://``), where it is a blocking RPC."""
        return await submit(method, *args, client=self.rc.address.startswith("ray://"))

    def _live(self, names: Iterable[str]) -> tuple[list[Placement], dict[str, str]]:
        """The placements of ``names`` that have an actor now, and why the others have none."""
        live, missing = [], {}
        for name in names:
            p = self.placed.get(name)
            if p is None:
                raise UnknownStreamError(f"unknown stream {name!r}")
            if p.handle is None:
                missing[name] = p.moving or "not running"
            else:
                live.append(p)
        return live, missing

    # -------------------------------------------------------------- streams
    async def add(self, spec: StreamSpec) -> StreamStatus:
        if spec.id in self.placed:
            raise ConfigError(f"stream {spec.id!r} already exists")
        try:  # here, before a process starts: the shared storage shows the gateway what nodes see
            await asyncio.to_thread(spec.check_input)
        except StreamError as exc:
            raise from_stream_error(exc) from exc
        return await self._place(Placement(spec))

    async def remove(self, stream: str, *, purge: bool = False) -> None:
        starting = self.placed.get(stream)
        if purge and starting is not None and not starting.idle.is_set():
            with contextlib.suppress(TimeoutError):  # then purged through its actor, as any other
                await asyncio.wait_for(starting.idle.wait(), START_SECONDS)
        p = self.placed.pop(stream, None)
        if p is None:
            if not purge:
                raise UnknownStreamError(f"unknown stream {stream!r}")
            await asyncio.to_thread(shutil.rmtree, shard_dir(self.cfg, stream), ignore_errors=True)
            return
        if p.poll is not None:
            p.poll.cancel()
            await asyncio.gather(p.poll, return_exceptions=True)
        actor = p.handle is not None
        await self._stop(p, purge=purge)
        if purge and not actor:  # failed, or between restarts: no actor deletes its files
            await asyncio.to_thread(shutil.rmtree, shard_dir(self.cfg, stream), ignore_errors=True)

    async def statuses(self) -> list[StreamStatus]:
        live, _ = self._live(list(self.placed))
        beats, _ = await each_stream(
            {p.id: self._call(p.handle.heartbeat, limit=self.rc.deadline_seconds) for p in live}
        )
        for name, hb in beats.items():  # fresher than the last poll's
            p = self.placed.get(name)
            if p is not None and p.handle is not None:
                p.heartbeat, p.status = hb, hb.status or p.status
        return [StreamStatus.model_validate(p.view()) for p in list(self.placed.values())]

    def specs(self) -> list[StreamSpec]:
        return [p.spec for p in self.placed.values()]

    async def stream_ids(self) -> set[str]:
        return set(self.placed)

    # -------------------------------------------------------------- queries
    async def search(
        self, query: Query, *, budget: float | None = None, on_first: FirstAnswer | None = None
    ) -> dict[str, QueryResult]:
        live, missing = self._live(query.streams if query.streams is not None else list(self.placed))
        query.check(self.settings.query)  # before any encoding, as in one process
        qid = uuid.uuid4().hex
        one = dataclasses.replace(query, streams=None)  # an actor holds its one stream
        vectors = await self._encode_once(one, live)
        finals = {p.id: await self._submit(p.handle.search, qid, one, budget, vectors) for p in live}
        firsts, first_missing = await each_stream(
            {p.id: self._call(p.handle.first, qid, limit=self.rc.deadline_seconds) for p in live}
        )
        if on_first is not None:
            on_first(ShardResults(merge_results(firsts), {**missing, **first_missing}))
        wait = (UNBOUNDED_REFINE_S if budget is None else budget) + self.rc.deadline_seconds
        parts, late = await each_stream(
            {name: await_ref(self._ray, ref, wait) for name, ref in finals.items()}
        )
        missing.update(late)
        results = merge_results(parts)
        return ShardResults(results, missing) if missing else results

    async def _encode_once(self, query: Query, live: list[Placement]) -> QueryVecs | None:
        """``query``'s vectors from one of ``live`` (the next each query): one encoder pass per query,
        not one per actor, which keep them as their own (same model and weights). None when that
        actor does not answer in the deadline: each actor then encodes for itself, as before."""
        if not live:
            return None
        if self.pool is not None and self.settings.refine is None:  # the pool's model is every role
            return await self.pool.query_vectors(query)
        p = live[self._turn % len(live)]
        self._turn += 1
        try:
            vectors: QueryVecs = await self._call(
                p.handle.query_vectors, query, limit=self.rc.deadline_seconds
            )
        except Unreachable as exc:
            log.warning("stream %s could not encode a query (%s): every actor encodes it", p.id, exc)
            return None
        return vectors

    async def embed_query(self, query: Query) -> np.ndarray:
        return np.asarray(await self._ask_encoder("embed_query", query))

    async def background_scores(self, qvec: np.ndarray, streams: set[str] | None) -> np.ndarray:
        live, _ = self._live([n for n in self.placed if streams is None or n in streams])
        scores, _ = await each_stream(
            {p.id: self._call(p.handle.background_scores, qvec, limit=self.rc.deadline_seconds) for p in live}
        )
        return np.concatenate(list(scores.values())) if scores else np.zeros(0, np.float32)

    def wall_of(self, stream: str, t: float) -> float | None:
        p = self.placed.get(stream)
        return None if p is None else p.wall_of(t)

    async def thumbnail(self, stream: str, t: float) -> tuple[float, bytes]:
        live, missing = self._live([stream])
        if not live:
            raise ShardUnavailableError(f"stream {stream!r}: {missing[stream]}")
        try:
            out: tuple[float, bytes] = await self._call(
                live[0].handle.thumbnail, t, limit=self.rc.deadline_seconds
            )
        except Unreachable as exc:
            raise ShardUnavailableError(f"stream {stream!r}: {exc}") from exc
        return out

    # ----------------------------------------------------- state and health
    async def snapshot(self) -> None:
        # A stream starting or moving has nothing newer than its last snapshot: not a failure.
        live, _ = self._live(list(self.placed))
        _, failed = await each_stream(
            {p.id: self._call(p.handle.snapshot, limit=START_SECONDS) for p in live}
        )
        if failed:
            raise IndexStoreError(
                f"snapshot failed for {len(failed)} stream(s): "
                + "; ".join(f"{k}: {v}" for k, v in failed.items())
            )

    async def stats(self) -> ShardStats:
        live, _ = self._live(list(self.placed))
        answers, _ = await each_stream(
            {p.id: self._call(p.handle.stats, limit=self.rc.deadline_seconds) for p in live}
        )
        return merge_stats(self.placed, answers)

    async def model_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = dict(await self._ask_encoder("model_info"))
        return dict(self._info)

    async def _ask_encoder(self, method: str, *args: Any) -> Any:
        """Call ``method`` of any running actor (they share one model); with none, of a stream-less
        actor started for the purpose (and kept: watches and ``hello`` may come before any stream)."""
        for p in self._live(list(self.placed))[0]:
            with contextlib.suppress(Unreachable):
                return await self._call(getattr(p.handle, method), *args, limit=self.rc.deadline_seconds)
        try:
            async with self._probe_lock:
                if self._probe is None:
                    probe = await asyncio.to_thread(self._new_actor, PROBE)
                    try:
                        await self._call(probe.open, limit=START_SECONDS)
                    except BaseException:  # a probe that did not open is ended: one model each
                        await asyncio.shield(asyncio.to_thread(self._ray.kill, probe))
                        raise
                    self._probe = probe
            return await self._call(getattr(self._probe, method), *args, limit=START_SECONDS)
        except Unreachable as exc:
            stale, self._probe = self._probe, None  # dead or stuck: the next call starts another
            if stale is not None:
                await asyncio.to_thread(self._ray.kill, stale)
            raise ShardUnavailableError(f"no actor could encode: {exc}") from exc
