"""The in-process shard: one VideoIndex, one shared encoder worker, one runner per stream.

:class:`LocalShard` owns every task it starts — the stream runners and the
encoder worker — and :meth:`LocalShard.close` (idempotent) cancels the
sources, lets the encoder finish what was submitted, takes a final snapshot
and closes the index. Streams can be added and removed while others run;
each has its own task, source and encoder lane, so one stream's failure or
removal does not touch the others. Blocking work (opening the index,
snapshots, JPEG reads) runs in threads; queries (encoding, prescreen,
refinement) run on the shard's own query executor, so a burst of queries
never queues ingest's work behind it, and refinement holds no stream lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from agent.channels.base import WorkItem
from agent.channels.ocr import OCR_WORKER
from agent.channels.retrieval import Query, query_roles
from agent.channels.speech import SPEECH_WORKER
from agent.channels.visual import IMAGE_WORKER, images_of
from agent.config import Settings
from agent.core.superimage import SuperImage
from agent.errors import ConfigError, IndexStoreError, UnknownStreamError, VmrError, from_stream_error
from agent.index.stream_state import StreamState
from agent.index.video_index import VideoIndex
from agent.service.batch_worker import BatchWorker
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.llm_handoff import LLMHandoff
from agent.service.protocol import StreamStatus, parse_event
from agent.service.shard import (
    FirstAnswer,
    ShardListener,
    ShardStats,
    StreamShard,
    StreamStats,
    source_events,
)
from agent.service.stream_runner import StreamRunner
from agent.service.workers import Workers
from agent.types import QueryResult
from streams.errors import StreamError
from streams.registry import HUB_WHIP

log = logging.getLogger(__name__)

OPEN_WAIT = 10.0
"""Seconds ``add`` waits for a new stream's source to open before answering anyway."""
_T = TypeVar("_T")

QUERY_THREADS = 2
"""Threads of the query executor: queries run concurrently with each other, never in ingest's pool."""

SPEECH_QUEUE = 2
"""Speech windows queued per stream, not ``encoder_queue``: a recorded window is 300 x 16 000 x
4 B = 19.2 MB of sound. A third waits in ``submit``, holding the stream's ingest (backpressure on
its decode, as for a replay's frames). With 1 in whisper and 1 filling in the channel, a recorded
stream buffers <= 4 windows (~77 MB; ~2.5 GB at 32 streams, where 8 queued allowed ~6 GB)."""


def speech_worker(transcribe: Callable[[list[np.ndarray]], Any]) -> BatchWorker:
    """The speech lane's worker: one window a batch (whisper gains nothing from batching windows on
    a CPU; its VAD chunks of a window are batched inside ``transcribe``), ``SPEECH_QUEUE`` queued.

    ``transcribe``: blocking, float32 16 kHz windows -> one result per window.
    """
    return BatchWorker(
        SPEECH_WORKER,
        lambda items: transcribe([np.asarray(i.payload) for i in items]),
        batch_size=1,
        queue_size=SPEECH_QUEUE,
    )


class LocalShard(StreamShard):
    """Streams ingested in this process into one index directory."""

    def __init__(self, cfg: ServiceConfig, settings: Settings) -> None:
        self.cfg = cfg
        self.settings = settings
        self.index: VideoIndex | None = None
        self.workers: Workers | None = None
        self.runners: dict[str, StreamRunner] = {}
        self.whip: Any = None
        self.llm: LLMHandoff | None = None
        """The LLM stage when ``cfg.llm.url`` is set."""
        self._listener: ShardListener | None = None
        self._queries = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="vmr-query")
        """Queries' blocking work (encode, prescreen, refine): apart from ingest's default executor."""
        self._closed = False

    @property
    def worker(self) -> BatchWorker | None:
        """The image (prescreen encoder) worker, once started."""
        return None if self.workers is None else self.workers[IMAGE_WORKER]

    @property
    def idx(self) -> VideoIndex:
        if self.index is None:
            raise IndexStoreError("the shard is not started")
        return self.index

    # ------------------------------------------------------------ lifecycle
    async def start(
        self, specs: Iterable[StreamSpec], listener: ShardListener, *, removed: Collection[str] = ()
    ) -> None:
        self._listener = listener
        self.index = await asyncio.to_thread(
            lambda: VideoIndex.create(self.cfg.index, self.settings, skip=removed, isolate=True)
        )
        enc = self.index.prescreen
        image = BatchWorker(
            IMAGE_WORKER,
            lambda items: enc.encode_images(images_of(items)),
            batch_size=enc.batch_size,
            queue_size=self.cfg.encoder_queue,
        )
        image.listeners.append(self._on_result)
        # One entry per kind of work the channels hand out (speech, OCR: one more line each).
        kinds = {IMAGE_WORKER: image}
        transcriber = self.index.transcriber
        if transcriber is not None:
            kinds[SPEECH_WORKER] = speech_worker(transcriber.transcribe_batch)
            kinds[SPEECH_WORKER].listeners.append(self._on_text)
        reader = self.index.reader
        if reader is not None:
            kinds[OCR_WORKER] = BatchWorker(
                OCR_WORKER,
                lambda items: reader.read_batch([np.asarray(i.payload) for i in items]),
                batch_size=1,
                queue_size=self.cfg.encoder_queue,
            )
            kinds[OCR_WORKER].listeners.append(self._on_text)
        self.workers = Workers(kinds)
        self.workers.start()
        self.whip = self._make_whip()
        if self.cfg.llm.url:
            self.llm = LLMHandoff(self.cfg.llm, self.index)
        for spec in specs:
            self._start_runner(spec, await asyncio.to_thread(self.idx.stream, spec.id))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        if self.workers is not None:
            for name in list(self.runners):
                await self.workers.drain(name)
            await self.workers.close()
        if self.whip is not None:
            await self.whip.close()
        if self.llm is not None:
            await self.llm.close()
        # Queries still running finish before the final snapshot (their refine reads the frame store).
        await asyncio.to_thread(self._queries.shutdown, wait=True, cancel_futures=True)
        if self.index is not None:
            await asyncio.to_thread(self._final_snapshot, self.index)

    def _final_snapshot(self, index: VideoIndex) -> None:
        for runner in self.runners.values():
            try:
                runner.snapshot()
            except IndexStoreError as exc:  # disk full at shutdown: the previous generation stays
                log.error("final snapshot of %s failed: %s", runner.id, exc)
        try:
            index.close()
        except (IndexStoreError, OSError) as exc:  # the streams are closed all the same
            log.error("final save of the index failed: %s", exc)

    # -------------------------------------------------------------- streams
    async def add(self, spec: StreamSpec) -> StreamStatus:
        if spec.id in self.runners:
            raise ConfigError(f"stream {spec.id!r} already exists")
        try:
            await asyncio.to_thread(spec.check_input)
        except StreamError as exc:
            raise from_stream_error(exc) from exc
        # Opening the state reads its snapshot (memory, cheap index, frame store): off the loop.
        state = await asyncio.to_thread(self.idx.stream, spec.id)
        runner = self._start_runner(spec, state)
        # Answer once the source is open, so that what the answer promises exists (a WHIP
        # stream's endpoint: a publisher may POST right after it). Bounded: opening never blocks
        # (live sources connect in their own thread), but a slow snapshot restore must not hang
        # the client.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.opened.wait(), OPEN_WAIT)
        return StreamStatus.model_validate(runner.info())

    async def remove(self, stream: str, *, purge: bool = False) -> None:
        runner = self.runners.get(stream)
        if runner is None:
            if not purge:
                raise UnknownStreamError(f"unknown stream {stream!r}")
            await asyncio.to_thread(lambda: self.idx.remove(stream, purge=True))
            return
        await runner.stop()
        if self.workers is not None:
            await self.workers.drain(stream)
            self.workers.forget(stream)
        del self.runners[stream]
        if not purge:
            try:
                await asyncio.to_thread(runner.snapshot)
            except IndexStoreError as exc:  # removed all the same; the previous generation stays
                log.error("stream %s removed without a final snapshot: %s", stream, exc)
        await asyncio.to_thread(lambda: self.idx.remove(stream, purge=purge))

    async def statuses(self) -> list[StreamStatus]:
        return [StreamStatus.model_validate(r.info()) for r in self.runners.values()]

    def specs(self) -> list[StreamSpec]:
        return [r.spec for r in self.runners.values()]

    async def stream_ids(self) -> set[str]:
        return set(self.idx.streams)

    def _start_runner(self, spec: StreamSpec, state: StreamState) -> StreamRunner:
        assert self.workers is not None and self._listener is not None
        runner = StreamRunner(
            spec,
            state,
            self.workers,
            self.cfg,
            fps=self.settings.index.fps,
            emit=self._emit,
            on_end=self._listener.on_stream_end,
            hubs={} if self.whip is None else {HUB_WHIP: self.whip},
        )
        self.workers.open(spec.id, state)
        self.runners[spec.id] = runner
        bad_snapshot = self.idx.load_errors.pop(spec.id, None)
        if bad_snapshot is None:
            runner.start()
        else:  # isolation: this stream starts failed (its files set aside), the others run
            runner.status, runner.error = "failed", bad_snapshot
            runner.opened.set()  # nothing will open
        return runner

    def _emit(self, event: dict[str, Any]) -> None:
        """Runner events arrive as dicts: validated into event models here, at the seam."""
        assert self._listener is not None
        try:
            self._listener.on_event(parse_event(event))
        except VmrError:  # a runner event outside the protocol is a bug: log it, keep ingesting
            log.exception("dropped a malformed stream event %r", event.get("type"))

    def _on_result(self, item: WorkItem, vec: np.ndarray) -> None:
        """Encoded super-images go on to the watches (other channels' results do not)."""
        if isinstance(item.ref, SuperImage) and self._listener is not None:
            self._listener.on_embedding(item.stream, item.ref, vec)

    def _on_text(self, item: WorkItem, result: np.ndarray) -> None:
        """A transcript window or an OCR read was committed: its new spans go on to the watches."""
        runner = self.runners.get(item.stream)
        if runner is None or self._listener is None:
            return
        for span in runner.state.fresh_text(item.channel):
            self._listener.on_text_span(item.stream, item.channel, span)

    def _make_whip(self) -> Any:
        try:
            from streams.whip import WhipIngest
        except ImportError as exc:  # aiortc missing: everything but WHIP still works
            log.warning("WHIP ingest unavailable: %s", exc)
            return None
        return WhipIngest(fps=self.settings.index.fps, queue_size=self.cfg.source_queue)

    def routes(self) -> list[web.RouteDef]:
        if self.whip is None:
            return []
        from streams.whip import whip_routes

        return whip_routes(self.whip, token=self.cfg.token)

    # -------------------------------------------------------------- queries
    async def _in_query_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on the query executor: ingest (the default executor) never queues behind it."""
        return await asyncio.get_running_loop().run_in_executor(self._queries, fn, *args)

    async def search(
        self, query: Query, *, budget: float | None = None, on_first: FirstAnswer | None = None
    ) -> dict[str, QueryResult]:
        try:
            pending = await self._in_query_thread(self.idx.start_query, query)
        except KeyError as exc:  # removed between the caller's check and the search
            raise UnknownStreamError(f"unknown stream {exc}") from exc
        if on_first is not None:
            on_first(pending.first)
        results = await self._in_query_thread(pending.refine, budget)
        if self.llm is not None and query.text is not None:
            results = await self._llm_answer(query, results)
        return results

    async def _llm_answer(self, query: Query, results: dict[str, QueryResult]) -> dict[str, QueryResult]:
        assert query.text is not None and self.llm is not None
        return await self.llm.refine(query.text, results, query.top_k or self.settings.query.top_k)

    async def embed_query(self, query: Query) -> np.ndarray:
        """``query``'s prescreen (dim,) vector (a watch scores anchors with it: at the query grid)."""
        idx = self.idx
        grid = idx.settings.query_grid
        return await self._in_query_thread(idx.query_vectors.get, query, idx.prescreen, grid)

    async def query_vectors(self, query: Query) -> dict[str, np.ndarray]:
        """``query``'s (dim,) vectors by encoder role (:func:`query_roles`), on the query executor."""
        idx = self.idx
        grid = idx.settings.query_grid
        return await self._in_query_thread(
            query_roles, query, idx.query_vectors, idx.prescreen, idx.refine, grid
        )

    async def background_scores(self, qvec: np.ndarray, streams: set[str] | None) -> np.ndarray:
        return await self._in_query_thread(self._background_scores, qvec, streams)

    def _background_scores(self, qvec: np.ndarray, streams: set[str] | None) -> np.ndarray:
        scores = []
        for name, st in list(self.idx.streams.items()):
            if streams is None or name in streams:
                scores.append(st.background(qvec))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def wall_of(self, stream: str, t: float) -> float | None:
        st = self.idx.streams.get(stream)
        return None if st is None else st.wall_of(t)

    async def thumbnail(self, stream: str, t: float) -> tuple[float, bytes]:
        st = self.idx.streams.get(stream)
        if st is None or st.store is None or len(st.store) == 0:
            raise UnknownStreamError(f"no stored frames for stream {stream!r}")
        return await asyncio.to_thread(st.store.get_jpeg, t)

    # ----------------------------------------------------- state and health
    async def snapshot(self) -> None:
        failed = []
        for runner in list(self.runners.values()):
            try:
                await asyncio.to_thread(runner.snapshot)
            except Exception as exc:  # every stream is tried; the caller logs (rate-limited)
                failed.append(f"{runner.id}: {exc}")
        if failed:
            raise IndexStoreError(f"snapshot failed for {len(failed)} stream(s): " + "; ".join(failed))

    async def stats(self) -> ShardStats:
        w = self.worker
        depths = w.depths() if w else {}
        return ShardStats(
            streams={name: self._stream_stats(r, depths.get(name, 0)) for name, r in self.runners.items()},
            encoder_passes=w.passes if w else 0,
            encoder_images=w.images if w else 0,
            encoder_errors=w.errors if w else 0,
            work=self.workers.counters() if self.workers else {},
        )

    @staticmethod
    def _stream_stats(r: StreamRunner, encoder_queue: int) -> StreamStats:
        health = r.health()
        store = r.state.store.status() if r.state.store is not None else None
        return StreamStats(
            frames=r.frames_in,
            dropped=r.dropped,
            reconnects=r.reconnects,
            up=health.up,
            tokens=r.state.memory.tokens,
            encoder_queue=encoder_queue,
            source_events=source_events(r.source_info()),
            gaps=health.gaps,
            gap_seconds=health.gap_seconds,
            snapshot_age=health.snapshot_age,
            errors=dict(r.errors),
            store_writing=store.writing if store is not None else True,
            store_skipped=store.skipped if store is not None else 0,
            channels=r.state.text_sizes(),
        )

    async def model_info(self) -> dict[str, Any]:
        idx = self.idx  # encoder identity only: VideoIndex.info() would walk the whole directory
        return {
            "model": {"prescreen": idx.prescreen.name, "refine": idx.refine.name, "dim": idx.prescreen.dim},
            "meaningless": idx.prescreen.meaningless or idx.refine.meaningless,
            "channels": idx.channel_names,
        }
