"""One stream's task: source -> ingest (thread) -> shared encoder -> memory.

The runner owns its source and its task. It opens the source through the
registry of ``streams`` (no branch on the kind: the spec says whether the
stream is paced or repeats, the source declares its queue policy and
whether its clock restarts), asks the stream's
:class:`~streams.timeline.Timeline` for each frame's ``(t, wall)`` and
pushes the frame through :meth:`StreamState.push` in a worker thread
(every channel: cheap index, gate, JPEG frame store, tiler); the work items
it returns are submitted to the batch worker
each names (:class:`~agent.service.workers.Workers`), which commits their
results (or reports their failure) back to this stream's channels. Audio chunks
(specs with ``audio=true``) are counted; the visual path does not use them.

Queue policy per source: live sources (RTSP, WHIP) keep a small latest-wins
queue and count the frames they drop when ingest falls behind; file replays
and segment folders apply backpressure and never drop. A source error
(corrupt file, RTSP retries exhausted) is translated once
(:func:`agent.errors.from_stream_error`) and marks the stream ``failed``
with the typed error; what it had stored stays queryable.

Status: :meth:`StreamRunner.info` is what ``streams.list`` shows, with the
source's own statistics (state, last error, queue policy, damaged packets,
the kind's extras) under ``source``, and the stream's health
(:mod:`agent.service.health`): ``up`` (false while a live source
reconnects), ``source_state``/``source_error``, coverage ``gaps``, the age
of the last good snapshot and the ``reasons`` it degrades the service.

A stream that ingested frames but whose every super-image's encoding
failed (in this run: a restored memory does not hide it) does not end
``done``: it ends ``failed`` with :class:`~agent.errors.EncodingError` and
the last failure's reason.

Resume after a restart: the task first finds, in a thread (it takes the
stream's lock, which query threads hold while they refine), the latest time
the snapshot stored; then the snapshot keeps the source's resume token (a
file's last second, a segment folder's position) and the timeline's offset;
a new source of the same spec continues from the token (a file seeks:
decoding resumes at the keyframe before it), frames at or before the last
stored time are skipped by the timeline, and a live source's fresh clock is
re-anchored after the stored timeline, leaving the real gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

from agent.channels.base import WorkItem
from agent.errors import EncodingError, IndexStoreError, VmrError, from_stream_error
from agent.index.stream_state import StreamState
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.health import StreamHealth, assess, covered_span, gap_totals
from agent.service.workers import Workers
from agent.types import AudioChunk, Frame
from streams.errors import StreamError
from streams.registry import OpenContext, open_source
from streams.source import Source
from streams.timeline import Timeline

log = logging.getLogger(__name__)

Status = Literal["starting", "running", "done", "failed", "stopped"]
Emit = Callable[[dict[str, Any]], None]

SHORT_SIDE = 224
"""Pixels of a sampled frame's short side (the encoder's input)."""


def resume_time(state: StreamState) -> float | None:
    """Latest stream time any part of the snapshot has seen (frames at or before it are skipped)."""
    return state.resume_time()


def saved_token(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The source resume token of a snapshot (``segments_position`` in snapshots before tokens)."""
    token = meta.get("resume", meta.get("segments_position"))
    return token if isinstance(token, dict) else None


class StreamRunner:
    """Runs one stream until it ends, fails or is stopped."""

    def __init__(
        self,
        spec: StreamSpec,
        state: StreamState,
        worker: Workers,
        cfg: ServiceConfig,
        *,
        fps: float,
        emit: Emit,
        on_end: Callable[[str], None],
        hubs: Mapping[str, object] | None = None,
    ) -> None:
        self.spec = spec
        self.state = state
        # Live sound in short speech windows (latency), a replay at ingest speed in long ones; a
        # followed segment folder counts as a replay (see SpeechConfig.recorded_window_seconds).
        state.set_recorded(not (spec.live or spec.paced))
        self.worker = worker
        self.cfg = cfg
        self.fps = spec.fps or fps
        self._emit = emit
        self._on_end = on_end
        self._hubs: Mapping[str, object] = hubs or {}
        self.status: Status = "starting"
        self.error: VmrError | None = None
        self.frames_in = 0
        self.audio_chunks = 0
        """Audio chunks received (specs with ``audio=true``); the visual path ignores them."""
        self.audio_seconds = 0.0
        self.source: Source | None = None
        self._dropped_before = 0  # drops of sources replaced by a loop restart
        self._reconnects_before = 0
        self._task: asyncio.Task[None] | None = None
        # The resume point needs the stream's lock (held by query threads during
        # refinement): the task finds it in a thread (:meth:`_resume`) before the
        # first source opens. Until then the timeline knows only the stored offset.
        self.timeline = self._timeline(None)
        self._token = saved_token(state.meta)
        self._progress_at = 0.0
        self._stopping = False
        self.opened = asyncio.Event()
        """Set once the first source is open (or the run ended without one): a WHIP stream's
        endpoint exists from then on, so ``streams.add`` answers only after it (see LocalShard.add)."""
        self.stop_grace = 15.0
        self.started_at = time.time()
        self.snapshot_at: float | None = None
        """Wall time of the last good snapshot (None: none yet in this process)."""
        self._superimages_before = state.stats.superimages  # a restored snapshot's count
        self.errors: Counter[str] = Counter()
        """Failures of this stream by error code: the stream's own and its snapshots'."""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def dropped(self) -> int:
        """Frames the live source discarded because ingest fell behind."""
        now = 0 if self.source is None else self.source.stats().drops
        return self._dropped_before + now

    @property
    def reconnects(self) -> int:
        """Sessions of a live source after its first (RTSP reconnects, WHIP republishes)."""
        now = 0 if self.source is None else self.source.stats().reconnects
        return self._reconnects_before + now

    @property
    def progress(self) -> float | None:
        """Share of a finite source delivered so far (:attr:`SourceStats.progress`).

        None for sources without an end, except once the stream ended well
        (``done``: everything there was is ingested, 1.0).
        """
        value = None if self.source is None else self.source.stats().progress
        if value is None:
            return 1.0 if self.status == "done" else None
        return float(value)

    def source_info(self) -> dict[str, Any] | None:
        """The current source's statistics and queue policy (None before a source opened).

        ``state``, ``last_error``, ``frames``, ``drops``, ``reconnects``,
        ``audio_chunks``, ``progress``, ``damaged_packets``, ``queue_policy``
        and the kind's extras (:meth:`SourceStats.to_dict`).
        """
        if self.source is None:
            return None
        return {**self.source.stats().to_dict(), "queue_policy": self.source.queue_policy}

    def health(self) -> StreamHealth:
        """Up, reconnecting, gaps, snapshot age and reasons now (:func:`agent.service.health.assess`)."""
        source = None if self.source is None else self.source.stats()
        return assess(
            self.status,
            None if self.error is None else self.error.code,
            source,
            live=self.source is not None and self.source.queue_policy == "latest",
            snapshot_age=time.time() - (self.snapshot_at or self.started_at),
            snapshot_seconds=self.cfg.snapshot_seconds,
            gaps=gap_totals(self.state.gaps(), self.state.memory.forgotten_gap_seconds),
        )

    def info(self) -> dict[str, Any]:
        """JSON-able status for ``streams.list`` and events (``source``: :meth:`source_info`)."""
        where = self.spec.location()
        health = self.health()
        source = None if self.source is None else self.source.stats()
        return {
            "id": self.id,
            "kind": self.spec.kind,
            "url": where["url"],
            "path": where["path"],
            "status": self.status,
            "error": None if self.error is None else {"code": self.error.code, "message": str(self.error)},
            "frames": self.frames_in,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "last_time": self.state.stats.last_time,
            "progress": self.progress,
            "tokens": self.state.memory.tokens,
            "source": self.source_info(),
            # Frame store: writing or paused after a write failure (disk full), frames skipped.
            "store": None if self.state.store is None else self.state.store.status().to_dict(),
            "up": health.up,
            "source_state": None if source is None else source.state,
            "source_error": None if source is None else source.last_error,
            "gaps": {"count": health.gaps, "seconds": round(health.gap_seconds, 3)},
            "covered": covered_span(self.state.memory.spans(), self.state.gaps()),
            "snapshot_age": round(health.snapshot_age, 3),
            "reasons": list(health.reasons),
        }

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"stream-{self.id}")

    async def stop(self) -> None:
        """End the stream gracefully (idempotent): close the source, flush, wait for the encoder.

        Closing the source ends its iteration, so the task encodes the last
        partial grid and commits everything in flight; only when that takes
        longer than :attr:`stop_grace` seconds is the task cancelled.
        """
        self._stopping = True
        if self.source is not None:
            await self.source.close()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def snapshot(self) -> None:
        """Atomic snapshot of the stream's state (blocking: call in a thread).

        A success sets :attr:`snapshot_at`; a failure is counted in
        :attr:`errors` by its code (``index_store`` for an OSError) and raised.
        """
        token = self._token if self.source is None else self.source.resume_token()
        self.state.meta.pop("segments_position", None)  # superseded by the resume token
        try:
            self.state.save({"offset": self.timeline.offset, "resume": token})
        except Exception as exc:
            self.errors[exc.code if isinstance(exc, VmrError) else IndexStoreError.code] += 1
            raise
        self.snapshot_at = time.time()

    def _timeline(self, resume: float | None) -> Timeline:
        return Timeline(
            resume=resume,
            offset=float(self.state.meta.get("offset", 0.0)),
            last_wall=self.state.stats.last_wall,
            wall_origin=self.spec.wall_origin(),
            realtime=self.spec.paced,
        )

    async def _resume(self) -> None:
        """Place the timeline after what the snapshot holds (the lock-taking part in a thread)."""
        self.timeline = self._timeline(await asyncio.to_thread(resume_time, self.state))

    async def _run(self) -> None:
        self.status = "running"
        try:
            await self._resume()
            while not self._stopping:
                await self._pass()
                if not self.spec.repeats:
                    break
                self.timeline.next_pass(1.0 / self.fps)
                self._token = None
            await self._finish()
            self._check_retained()
            self.status = "stopped" if self._stopping else "done"
        except asyncio.CancelledError:
            self.status = "stopped"
            raise
        except VmrError as exc:
            log.warning("stream %s failed: %s", self.id, exc)
            self.status, self.error = "failed", exc
            self.errors[exc.code] += 1
            await self._finish()
        except Exception as exc:  # a bug: keep the service (and other streams) running
            log.exception("stream %s crashed", self.id)
            self.status, self.error = "failed", VmrError(f"internal error: {type(exc).__name__}")
            self.errors[self.error.code] += 1
            await self._finish()
        finally:
            self.opened.set()
            self._on_end(self.id)
            self._emit({"type": "stream", "stream": self.info()})

    def _check_retained(self) -> None:
        """EncodingError when frames came in and every super-image of this run was given up."""
        # Lock-free reads of counters (the stream lock may be held by a refining query thread).
        dropped = self.state.visual.counters.dropped
        emitted = self.state.stats.superimages - self._superimages_before
        if not self._stopping and self.frames_in and dropped and dropped >= emitted:
            reason = self.state.last_work_error or "unknown"
            raise EncodingError(f"every batch of this stream failed; nothing retained (last: {reason})")

    async def _finish(self) -> None:
        """Encode the last partial grid and wait for the encoder to commit it."""
        sis = await asyncio.to_thread(self._flush)
        await self.worker.submit(self.id, sis)
        await self.worker.drain(self.id)

    async def _pass(self) -> None:
        """One source from open to end; the streams library's errors become vmr's here."""
        try:
            await self._consume(self._open())
        except StreamError as exc:
            raise from_stream_error(exc) from exc

    def _open(self) -> Source:
        """The source of this stream's kind (StreamError when it cannot be opened)."""
        context = OpenContext(
            fps=self.fps,
            short_side=SHORT_SIDE,
            queue_size=self.cfg.source_queue,
            resume_token=self._token,
            resume_at=self.timeline.source_start(),
            hubs=self._hubs,
        )
        source = open_source(self.spec, context)
        self.timeline.open_source(restarts_clock=source.restarts_clock)
        self.opened.set()
        return source

    async def _consume(self, source: Source) -> None:
        if self.source is not None:  # the previous pass of a loop
            stats = self.source.stats()
            self._dropped_before += stats.drops
            self._reconnects_before += stats.reconnects
        self.source = source
        if self._stopping:
            await source.close()
            return
        loop = asyncio.get_running_loop()
        try:
            async for item in source:
                if isinstance(item, AudioChunk):
                    await self._audio(item)
                    continue
                stamped = await self.timeline.stamp(item.t, item.wall)
                if stamped is None:
                    continue  # stored before a restart
                frame = replace(item, t=stamped[0], wall=stamped[1])
                sis = await asyncio.to_thread(self._push, frame)
                self.frames_in += 1
                await self.worker.submit(self.id, sis)
                self._maybe_progress(loop.time())
        finally:
            await source.close()

    async def _audio(self, chunk: AudioChunk) -> None:
        """Place an audio chunk on the stream's timeline and hand it to the channels that take audio."""
        self.audio_chunks += 1
        self.audio_seconds += chunk.duration
        placed = self.timeline.place(chunk.t, chunk.wall)
        if placed is None:
            return  # stored before a restart
        items = await asyncio.to_thread(self.state.push_audio, replace(chunk, t=placed[0], wall=placed[1]))
        if items:
            await self.worker.submit(self.id, items)

    def _push(self, frame: Frame) -> list[WorkItem]:
        return self.state.push(frame)

    def _flush(self) -> list[WorkItem]:
        return self.state.flush()

    def _maybe_progress(self, now: float) -> None:
        if now - self._progress_at < self.cfg.progress_seconds:
            return
        progress = self.progress
        if progress is None:
            return
        self._progress_at = now
        self._emit(
            {
                "type": "progress",
                "stream": self.id,
                "progress": round(progress, 4),
                "t": self.state.stats.last_time,
                "frames": self.frames_in,
            }
        )
