"""The service as one object: a registry, the shards and the serving façade, started and closed together.

:class:`Service` is the composition root of ``vmr serve`` (and of tests and
benchmarks): it builds the shard (:class:`LocalShard`, in process; with
``service.ray``, :class:`~agent.service.cluster.gateway.RayShard`),
the :class:`StreamRegistry` (persisted stream list, periodic snapshots) and
the :class:`Serving` façade the router calls. :meth:`Service.close`
(idempotent) stops the snapshot loop, closes watches, then the shards
(final snapshot). It also owns the :class:`HeapTrimmer` (``malloc_trim``
every ``heap_trim_seconds``: RSS that would otherwise creep up with freed
allocator pages over a weeks-long run) and, when built, caps glibc's malloc
arenas (``malloc_arenas``, ``malloc_mmap_threshold``: :func:`limit_heap`).

Persistence: the stream list (specs as given by ``streams.add`` or the
config) and the ids of removed streams are kept in
``INDEX/service_streams.json``; each stream's state is snapshotted as one
generation every ``snapshot_seconds`` and at shutdown. On start the service
restores its streams and resumes them; removed ones stay removed (their
files, unless purged, stay on disk unopened). A stream whose snapshot
cannot be loaded starts ``failed`` with a typed error, its bad files moved
to ``streams/<id>/quarantine/``; the other streams and the service start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.config import Settings
from agent.errors import ConfigError
from agent.index.video_index import VideoIndex
from agent.process_memory import limit_heap
from agent.service.batch_worker import BatchWorker
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.heap import HeapTrimmer
from agent.service.llm_handoff import LLMHandoff
from agent.service.local_shard import LocalShard
from agent.service.protocol import StreamStatus
from agent.service.registry import StreamRegistry
from agent.service.serving import Serving
from agent.service.shard import StreamShard
from agent.service.stream_runner import StreamRunner
from agent.service.watch import Watch


class Service:
    """Ingests many streams and answers queries and watches (see the module docstring)."""

    def __init__(self, cfg: ServiceConfig, settings: Settings) -> None:
        # Before the shard starts decoder and worker threads (glibc sizes arenas per thread).
        limit_heap(cfg.malloc_arenas, cfg.malloc_mmap_threshold)
        self.cfg = cfg
        self.settings = settings
        self.shard: StreamShard = make_shard(cfg, settings)
        self.registry = StreamRegistry(cfg.index, snapshot_seconds=cfg.snapshot_seconds)
        self.serving = Serving(cfg, settings, [self.shard], self.registry)
        period = cfg.heap_trim_seconds
        growth = int(cfg.heap_trim_growth_mb * 1024**2)
        self.trimmer = HeapTrimmer(period, growth_bytes=growth) if period is not None else None

    async def start(self, streams: Iterable[StreamSpec] = ()) -> None:
        """Open (or create) the index, start the encoder, restore and start streams."""
        await self.serving.start(list(streams))
        if self.trimmer is not None:
            self.trimmer.start()

    async def close(self) -> None:
        """Stop every stream, flush the encoder, snapshot, close the index (idempotent)."""
        if self.trimmer is not None:
            await self.trimmer.close()
        await self.serving.close()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add_stream(self, spec: StreamSpec | dict[str, Any]) -> StreamStatus:
        """Start a stream (see :meth:`Serving.add_stream`)."""
        return await self.serving.add_stream(spec)

    async def snapshot(self) -> None:
        """Snapshot every stream now (atomic per file; in threads)."""
        await self.registry.snapshot(self.serving.shards)

    # In-process views for tests and benchmarks; the router goes through ``serving`` only.
    @property
    def local(self) -> LocalShard:
        """The in-process shard; ConfigError when the streams run on a Ray cluster."""
        if not isinstance(self.shard, LocalShard):
            raise ConfigError("the streams run on a Ray cluster: no in-process shard")
        return self.shard

    @property
    def idx(self) -> VideoIndex:
        return self.local.idx

    @property
    def runners(self) -> dict[str, StreamRunner]:
        return self.local.runners

    @property
    def worker(self) -> BatchWorker | None:
        return self.local.worker

    @property
    def watches(self) -> dict[int, Watch]:
        return self.serving.watches

    @property
    def llm(self) -> LLMHandoff | None:
        return self.local.llm


def make_shard(cfg: ServiceConfig, settings: Settings) -> StreamShard:
    """The in-process shard, or the Ray gateway's when ``service.ray`` is set (Ray imported then only)."""
    if cfg.ray is None:
        return LocalShard(cfg, settings)
    from agent.service.cluster.gateway import RayShard

    return RayShard(cfg, settings)
