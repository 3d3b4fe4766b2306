"""The service core: an index, one shared encoder worker, one runner per stream.

:class:`Service` owns every task it starts — the stream runners, the encoder
worker, the snapshot loop — and :meth:`Service.close` (idempotent) cancels
the sources, lets the encoder finish what was submitted, takes a final
snapshot and closes the index. Streams can be added and removed while others
run; each has its own task, source and encoder lane, so one stream's failure
or removal does not touch the others.

Persistence: the stream list (specs as given by ``streams.add`` or the
config) is kept in ``INDEX/service_streams.json`` (atomic JSON); each
stream's memory is snapshotted every ``snapshot_seconds`` and at shutdown.
On start the service restores its streams and resumes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.base import WorkItem
from agent.channels.retrieval import Query, encode_query
from agent.channels.visual import images_of
from agent.config import Settings
from agent.core.superimage import SuperImage
from agent.errors import ConfigError, IndexStoreError, UnknownStreamError, from_stream_error
from agent.index.video_index import VideoIndex
from agent.service.batch_worker import BatchWorker
from agent.service.config import ServiceConfig, StreamSpec, load_spec
from agent.service.llm_handoff import LLMHandoff
from agent.service.metrics import Exposition, Histogram
from agent.service.stream_runner import StreamRunner
from agent.service.watch import Emit, Watch
from agent.store.atomic import write_json
from agent.types import QueryResult
from streams.errors import StreamError
from streams.registry import HUB_WHIP

log = logging.getLogger(__name__)

STREAMS_FILE = "service_streams.json"
STREAMS_VERSION = 1


class Service:
    """Ingests many streams into one index and answers queries and watches."""

    def __init__(self, cfg: ServiceConfig, settings: Settings) -> None:
        self.cfg = cfg
        self.settings = settings
        self.index: VideoIndex | None = None
        self.worker: BatchWorker | None = None
        self.runners: dict[str, StreamRunner] = {}
        self.watches: dict[int, Watch] = {}
        self.subscribers: set[Callable[[dict[str, Any]], None]] = set()
        """Receive broadcast events (``progress``, ``stream``)."""
        self.query_latency = Histogram()
        self.whip: Any = None
        self.llm: LLMHandoff | None = None
        """The LLM stage when ``cfg.llm.url`` is set."""
        self._snapshots: asyncio.Task[None] | None = None
        self._started = time.time()
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    async def start(self, streams: Iterable[StreamSpec] = ()) -> None:
        """Open (or create) the index, start the encoder, restore and start streams."""
        self.index = await asyncio.to_thread(VideoIndex.create, self.cfg.index, self.settings)
        enc = self.index.prescreen
        self.worker = BatchWorker(
            "image",
            lambda items: enc.encode_images(images_of(items)),
            batch_size=enc.batch_size,
            queue_size=self.cfg.encoder_queue,
        )
        self.worker.listeners.append(self._on_embedding)
        self.worker.start()
        self.whip = self._make_whip()
        if self.cfg.llm.url:
            self.llm = LLMHandoff(self.cfg.llm, self.index)
        restored = self._read_specs()
        for spec in [*restored, *(s for s in streams if s.id not in {r.id for r in restored})]:
            self._start_runner(spec)
        self._write_specs()
        self._snapshots = asyncio.create_task(self._snapshot_loop(), name="snapshots")

    async def close(self) -> None:
        """Stop every stream, flush the encoder, snapshot, close the index (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._snapshots is not None:
            self._snapshots.cancel()
            await asyncio.gather(self._snapshots, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        for watch in self.watches.values():
            watch.close_all()
        if self.worker is not None:
            for name in list(self.runners):
                await self.worker.drain(name)
            await self.worker.close()
        if self.whip is not None:
            await self.whip.close()
        if self.llm is not None:
            await self.llm.close()
        if self.index is not None:
            await asyncio.to_thread(self._final_snapshot, self.index)

    def _final_snapshot(self, index: VideoIndex) -> None:
        for runner in self.runners.values():
            runner.snapshot()
        index.close()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def idx(self) -> VideoIndex:
        if self.index is None:
            raise IndexStoreError("the service is not started")
        return self.index

    # -------------------------------------------------------------- streams
    async def add_stream(self, spec: StreamSpec) -> dict[str, Any]:
        """Start a new stream (ConfigError if the id is taken, SourceError if the input is missing)."""
        if spec.id in self.runners:
            raise ConfigError(f"stream {spec.id!r} already exists")
        try:
            await asyncio.to_thread(spec.check_input)
        except StreamError as exc:
            raise from_stream_error(exc) from exc
        runner = self._start_runner(spec)
        self._write_specs()
        return runner.info()

    async def remove_stream(self, stream: str) -> None:
        """Stop ``stream`` and forget it here; its stored files stay on disk."""
        runner = self.runners.get(stream)
        if runner is None:
            raise UnknownStreamError(f"unknown stream {stream!r}")
        await runner.stop()
        if self.worker is not None:
            await self.worker.drain(stream)
            self.worker.forget(stream)
        del self.runners[stream]
        self._write_specs()
        await asyncio.to_thread(runner.snapshot)
        await asyncio.to_thread(self.idx.remove, stream)

    def list_streams(self) -> list[dict[str, Any]]:
        return [r.info() for r in self.runners.values()]

    def _start_runner(self, spec: StreamSpec) -> StreamRunner:
        assert self.worker is not None
        state = self.idx.stream(spec.id)
        runner = StreamRunner(
            spec,
            state,
            self.worker,
            self.cfg,
            fps=self.settings.index.fps,
            emit=self.broadcast,
            on_end=self._on_stream_end,
            hubs={} if self.whip is None else {HUB_WHIP: self.whip},
        )
        self.worker.open(spec.id, state)
        self.runners[spec.id] = runner
        runner.start()
        return runner

    def _make_whip(self) -> Any:
        try:
            from streams.whip import WhipIngest
        except ImportError as exc:  # aiortc missing: everything but WHIP still works
            log.warning("WHIP ingest unavailable: %s", exc)
            return None
        return WhipIngest(fps=self.settings.index.fps, queue_size=self.cfg.source_queue)

    def _on_stream_end(self, stream: str) -> None:
        for watch in self.watches.values():
            watch.on_stream_end(stream)

    # -------------------------------------------------------------- queries
    def _check_streams(self, names: list[str] | None) -> None:
        for name in names or []:
            if name not in self.idx.streams:
                raise UnknownStreamError(f"unknown stream {name!r}")

    async def query(self, query: Query) -> dict[str, QueryResult]:
        """Answer a one-shot query (CLIP in a worker thread, then the LLM stage if any)."""
        self._check_streams(query.streams)
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.idx.query, query)
            if self.llm is not None and query.text is not None:
                results = await self._llm_answer(query, results)
            return results
        except KeyError as exc:  # removed between the check and the search
            raise UnknownStreamError(f"unknown stream {exc}") from exc
        finally:
            self.query_latency.observe(time.perf_counter() - t0)

    async def _llm_answer(self, query: Query, results: dict[str, QueryResult]) -> dict[str, QueryResult]:
        assert query.text is not None and self.llm is not None
        return await self.llm.refine(query.text, results, query.top_k or self.settings.query.top_k)

    async def open_watch(
        self, wid: str, query: Query, emit: Emit, *, threshold: float | None, close_seconds: float | None
    ) -> Watch:
        """Register a standing query; calibrated on the watched streams' retained anchors."""
        self._check_streams(query.streams)
        qvec = await asyncio.to_thread(encode_query, query, self.idx.prescreen)
        watch = Watch(
            wid,
            qvec,
            streams=query.streams,
            cfg=self.cfg.watch,
            emit=emit,
            wall_of=self._wall_of,
            threshold=threshold,
            close_seconds=close_seconds,
        )
        watch.calibrate(await asyncio.to_thread(self._background_scores, qvec, query.streams))
        self.watches[id(watch)] = watch
        return watch

    def close_watch(self, watch: Watch) -> None:
        self.watches.pop(id(watch), None)

    def _background_scores(self, qvec: np.ndarray, streams: list[str] | None) -> np.ndarray:
        scores = []
        for name, st in list(self.idx.streams.items()):
            if streams is None or name in streams:
                scores.append(st.background(qvec))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def _wall_of(self, stream: str, t: float) -> float | None:
        st = self.idx.streams.get(stream)
        return None if st is None else st.wall_of(t)

    def _on_embedding(self, item: WorkItem, vec: np.ndarray) -> None:
        if not isinstance(item.ref, SuperImage):
            return
        for watch in list(self.watches.values()):
            try:
                watch.on_embedding(item.stream, item.ref, vec)
            except Exception:  # one broken watch must not stop the encoder worker
                log.exception("watch %s failed", watch.id)

    def broadcast(self, event: dict[str, Any]) -> None:
        for send in list(self.subscribers):
            send(event)

    # ---------------------------------------------------------- persistence
    def _specs_path(self) -> Path:
        return Path(self.cfg.index) / STREAMS_FILE

    def _read_specs(self) -> list[StreamSpec]:
        path = self._specs_path()
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STREAMS_VERSION:
                raise IndexStoreError(f"{path}: version {data.get('version')} != {STREAMS_VERSION}")
            return [load_spec(s) for s in data["streams"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexStoreError(f"{path}: unreadable stream list: {exc}") from exc

    def _write_specs(self) -> None:
        specs = [r.spec.model_dump(mode="json", exclude_defaults=True) for r in self.runners.values()]
        write_json(self._specs_path(), {"version": STREAMS_VERSION, "streams": specs})

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.snapshot_seconds)
            await self.snapshot()

    async def snapshot(self) -> None:
        """Snapshot every running stream now (atomic per file; in a thread)."""
        for runner in list(self.runners.values()):
            try:
                await asyncio.to_thread(runner.snapshot)
            except IndexStoreError:
                log.exception("snapshot of %s failed; the previous one stays", runner.id)

    # -------------------------------------------------------------- metrics
    def metrics(self, clients: int) -> str:
        """Prometheus text of the service's counters."""
        ex = Exposition()
        rs = self.runners
        ex.per_stream(
            "vmr_frames_total", "counter", "Sampled frames ingested.", {k: r.frames_in for k, r in rs.items()}
        )
        ex.per_stream(
            "vmr_frames_dropped_total",
            "counter",
            "Live frames dropped (latest wins).",
            {k: r.dropped for k, r in rs.items()},
        )
        ex.per_stream(
            "vmr_stream_reconnects_total",
            "counter",
            "Live source sessions after the first (RTSP reconnects, WHIP republishes).",
            {k: r.reconnects for k, r in rs.items()},
        )
        ex.per_stream(
            "vmr_stream_up",
            "gauge",
            "1 while the stream runs, 0 when done, failed or stopped.",
            {k: float(r.status in ("starting", "running")) for k, r in rs.items()},
        )
        ex.per_stream(
            "vmr_memory_tokens",
            "gauge",
            "Tokens retained in memory.",
            {k: r.state.memory.tokens for k, r in rs.items()},
        )
        w = self.worker
        ex.per_stream(
            "vmr_encoder_queue_depth",
            "gauge",
            "Super-images waiting for or in the encoder.",
            w.depths() if w else {},
        )
        ex.scalar(
            "vmr_encoder_passes_total", "counter", "Encoder forward passes (batches).", w.passes if w else 0
        )
        ex.scalar("vmr_encoder_images_total", "counter", "Super-images encoded.", w.images if w else 0)
        ex.scalar("vmr_encoder_errors_total", "counter", "Failed encoder passes.", w.errors if w else 0)
        work = w.counters() if w else {}
        for name, field, text in _WORK_FAMILIES:
            ex.family(name, "counter", text)
            for (stream, channel), c in sorted(work.items()):
                ex.sample(name, getattr(c, field), {"stream": stream, "channel": channel})
        ex.scalar("vmr_clients", "gauge", "Connected websocket clients.", clients)
        ex.scalar("vmr_watches", "gauge", "Active standing queries.", len(self.watches))
        ex.scalar(
            "vmr_uptime_seconds", "gauge", "Seconds since the service started.", time.time() - self._started
        )
        ex.histogram("vmr_query_latency_seconds", "One-shot query latency.", self.query_latency)
        return ex.render()


_WORK_FAMILIES = (
    ("vmr_work_failed_total", "failed", "Work item attempts that failed (a failed batch counts each item)."),
    ("vmr_work_retried_total", "retried", "Failed work items handed back for another attempt."),
    (
        "vmr_work_dropped_total",
        "dropped",
        "Work items given up after their last attempt (span not retained).",
    ),
)
