"""One stream's task: source -> ingest (thread) -> shared encoder -> memory.

The runner owns its source and its task. Frames go through
:meth:`StreamState.push` in a worker thread (every channel: cheap index, gate,
JPEG frame store, tiler); the work items it returns are submitted to the
shared :class:`~agent.service.batch_worker.BatchWorker`, which commits
their results (or reports their failure) back to this stream's channels.

Queue policy per source kind: live sources (RTSP, WHIP, a realtime file
replay) keep a small latest-wins queue and count the frames they drop when
ingest falls behind; file replays and segment folders apply backpressure and
never drop. A source error (corrupt file, RTSP retries exhausted) marks the
stream ``failed`` with the typed error; what it had stored stays queryable.

Resume after a restart: the stream's last ingested time is read back from its
snapshot; a file replay seeks to it (``FileSource(start=...)``: decoding
resumes at the keyframe before it, and frames up to it are not delivered
again), a segment folder resumes from its saved position,
and a live source's fresh timeline is shifted to continue after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.channels.base import WorkItem
from agent.errors import SourceError, VmrError
from agent.index.stream_state import StreamState
from agent.service.batch_worker import BatchWorker
from agent.service.config import ServiceConfig, StreamSpec
from agent.types import Frame

log = logging.getLogger(__name__)

Status = Literal["starting", "running", "done", "failed", "stopped"]
Emit = Callable[[dict[str, Any]], None]


class Source(Protocol):
    """What every source in ``streams/`` offers."""

    def __aiter__(self) -> AsyncIterator[Frame]: ...

    async def close(self) -> None: ...


def resume_time(state: StreamState) -> float | None:
    """Latest stream time any part of the snapshot has seen (frames at or before it are skipped)."""
    return state.resume_time()


class StreamRunner:
    """Runs one stream until it ends, fails or is stopped."""

    def __init__(
        self,
        spec: StreamSpec,
        state: StreamState,
        worker: BatchWorker,
        cfg: ServiceConfig,
        *,
        fps: float,
        emit: Emit,
        on_end: Callable[[str], None],
        whip: Callable[[str], Source] | None = None,
    ) -> None:
        self.spec = spec
        self.state = state
        self.worker = worker
        self.cfg = cfg
        self.fps = spec.fps or fps
        self._emit = emit
        self._on_end = on_end
        self._whip = whip
        self.status: Status = "starting"
        self.error: VmrError | None = None
        self.frames_in = 0
        self.source: Any = None
        self._dropped_before = 0  # drops of sources replaced by a loop restart
        self._reconnects_before = 0
        self._task: asyncio.Task[None] | None = None
        self._resume = resume_time(state)
        self._offset = float(state.meta.get("offset", 0.0))
        self._progress_at = 0.0
        self._stopping = False
        self.stop_grace = 15.0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def dropped(self) -> int:
        """Frames the live source discarded because ingest fell behind."""
        return self._dropped_before + int(getattr(self.source, "dropped", 0) or 0)

    @property
    def reconnects(self) -> int:
        """Sessions of a live source after its first (RTSP reconnects, WHIP republishes)."""
        return self._reconnects_before + int(getattr(self.source, "reconnects", 0) or 0)

    @property
    def progress(self) -> float | None:
        """Share of a file replay decoded so far (None for other kinds)."""
        if self.spec.kind != "file" or self.source is None:
            return 1.0 if self.status == "done" else None
        return float(self.source.progress)

    def info(self) -> dict[str, Any]:
        """JSON-able status for ``streams.list`` and events."""
        return {
            "id": self.id,
            "kind": self.spec.kind,
            "url": self.spec.url,
            "path": self.spec.path,
            "status": self.status,
            "error": None if self.error is None else {"code": self.error.code, "message": str(self.error)},
            "frames": self.frames_in,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "last_time": self.state.stats.last_time,
            "progress": self.progress,
            "tokens": self.state.memory.tokens,
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
        """Atomic snapshot of the stream's state (blocking: call in a thread)."""
        meta: dict[str, Any] = {"offset": self._offset}
        position = getattr(self.source, "position", None)
        if position is not None and hasattr(position, "to_dict"):
            meta["segments_position"] = position.to_dict()
        self.state.save(meta)

    async def _run(self) -> None:
        self.status = "running"
        try:
            while not self._stopping:
                await self._consume(self._open())
                if not (self.spec.kind == "file" and self.spec.loop):
                    break
                last = self.state.stats.last_time or 0.0
                self._offset = last + 1.0 / self.fps
                self._resume = None
            await self._finish()
            self.status = "stopped" if self._stopping else "done"
        except asyncio.CancelledError:
            self.status = "stopped"
            raise
        except VmrError as exc:
            log.warning("stream %s failed: %s", self.id, exc)
            self.status, self.error = "failed", exc
            await self._finish()
        except Exception as exc:  # a bug: keep the service (and other streams) running
            log.exception("stream %s crashed", self.id)
            self.status, self.error = "failed", VmrError(f"internal error: {type(exc).__name__}")
            await self._finish()
        finally:
            self._on_end(self.id)
            self._emit({"type": "stream", "stream": self.info()})

    async def _finish(self) -> None:
        """Encode the last partial grid and wait for the encoder to commit it."""
        sis = await asyncio.to_thread(self._flush)
        await self.worker.submit(self.id, sis)
        await self.worker.drain(self.id)

    async def _consume(self, source: Any) -> None:
        self.source = source
        if self._stopping:
            await source.close()
            return
        pace: tuple[float, float] | None = None
        loop = asyncio.get_running_loop()
        try:
            async for frame in source:
                t = frame.t + self._offset
                if self._resume is not None and t <= self._resume:
                    continue
                wall = frame.wall
                if self.spec.kind == "file":
                    if self.spec.realtime:
                        # Paced here, not in FileSource: skipped (resumed) footage costs no waiting.
                        pace = pace or (loop.time(), t)
                        delay = pace[0] + (t - pace[1]) - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    origin = self.spec.wall_origin()
                    wall = origin + t if origin is not None else (time.time() if self.spec.realtime else None)
                frame = replace(frame, t=t, wall=wall)
                sis = await asyncio.to_thread(self._push, frame)
                self.frames_in += 1
                await self.worker.submit(self.id, sis)
                self._maybe_progress(loop.time())
        finally:
            self._dropped_before += int(getattr(source, "dropped", 0) or 0)
            self._reconnects_before += int(getattr(source, "reconnects", 0) or 0)
            self.source = None if self.spec.kind != "file" else self.source
            await source.close()

    def _push(self, frame: Frame) -> list[WorkItem]:
        return self.state.push(frame)

    def _flush(self) -> list[WorkItem]:
        return self.state.flush()

    def _maybe_progress(self, now: float) -> None:
        if self.spec.kind != "file" or now - self._progress_at < self.cfg.progress_seconds:
            return
        self._progress_at = now
        self._emit(
            {
                "type": "progress",
                "stream": self.id,
                "progress": round(self.progress or 0.0, 4),
                "t": self.state.stats.last_time,
                "frames": self.frames_in,
            }
        )

    # -------------------------------------------------------------- sources
    def _open(self) -> Source:
        """Build the source of this stream's kind (fails with a typed error)."""
        spec, short = self.spec, 224
        if spec.kind == "file":
            from streams.file import FileSource

            path = Path(spec.path or "")
            if not path.is_file():
                raise SourceError(f"{path}: no such file")
            return FileSource(
                path,
                stream=self.id,
                fps=self.fps,
                short_side=short,
                queue_size=self.cfg.source_queue,
                start=self._file_start(),
            )
        if spec.kind == "rtsp":
            from streams.rtsp import RTSPSource

            self._shift_live_clock()
            return RTSPSource(
                spec.url or "",
                stream=self.id,
                fps=self.fps,
                short_side=short,
                transport=spec.transport,
                queue_size=self.cfg.source_queue,
            )
        if spec.kind == "segments":
            from streams.segments import SegmentFolderSource, SegmentPosition

            saved = self.state.meta.get("segments_position")
            position = SegmentPosition.from_dict(saved) if isinstance(saved, dict) else None
            self._resume = None  # the saved position already skips delivered footage
            return SegmentFolderSource(Path(spec.path or ""), stream=self.id, fps=self.fps, position=position)
        if self._whip is None:
            raise SourceError("WHIP ingest is not available in this service")
        self._shift_live_clock()
        return self._whip(self.id)

    def _file_start(self) -> float:
        """Where a resumed replay seeks to, in the file's own seconds (0 without a resume point)."""
        if self._resume is None:
            return 0.0
        return max(0.0, self._resume - self._offset)

    def _shift_live_clock(self) -> None:
        """A live source restarts at t=0: continue after the stored timeline, leaving the real gap."""
        if self._resume is None:
            return
        last_wall = self.state.stats.last_wall
        gap = max(1.0, time.time() - last_wall) if last_wall else 1.0
        self._offset = self._resume + gap
        self._resume = None
