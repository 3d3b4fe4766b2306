"""Ingest speed against the decode limit, memory and RSS at hour marks, query latency.

Everything here runs in the calling thread on purpose: the benchmark measures the synchronous
engine (:class:`agent.index.video_index.VideoIndex`), not the service around it.

* **Decode-only** passes time :func:`streams.file.decode_frames` over the same file with the same
  sampling and conversion the ingest uses, so ``ingest / decode`` isolates the engine's cost.
* **Ingest** passes (full decode, or keyframes only: the coarse pass) go through
  ``VideoIndex.ingest``; its ``on_frame`` callback samples tokens, memory bytes and RSS when the
  stream time passes each hour mark, and may run timed queries there. Query time is excluded
  from the ingest wall time.
* **RSS** comes from ``/proc/self/status`` (VmRSS now, VmHWM peak); the peak is reset through
  ``/proc/self/clear_refs`` before each pass where the kernel allows it, so a pass is not
  charged for what an earlier one held.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.retrieval import Query
from agent.config import QueryConfig, Settings
from agent.index.video_index import VideoIndex
from agent.types import Frame, RGBImage
from streams.file import decode_frames

STREAM = "haystack"
HOUR = 3600.0
HOUR_MARKS = (1, 2, 4, 8)


def rss_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set of this process, MiB; empty if unknown."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        return {}
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def decode_only(video: Path, *, fps: float, keyframes_only: bool, short_side: int) -> dict[str, Any]:
    """Time a decode + sample + convert pass with nothing downstream."""
    t0 = time.perf_counter()
    frames, last = 0, 0.0
    for frame in decode_frames(
        video, stream=STREAM, fps=fps, keyframes_only=keyframes_only, short_side=short_side
    ):
        frames += 1
        last = frame.t
    took = time.perf_counter() - t0
    return {
        "mode": "keyframes" if keyframes_only else "full",
        "seconds": round(took, 2),
        "frames": frames,
        "stream_seconds": round(last, 2),
        "fps_decoded": round(frames / took, 1) if took else None,
    }


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """p50 / p95 / max in milliseconds."""
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "max_ms": round(float(arr.max()), 1),
    }


def timed_queries(idx: VideoIndex, images: Sequence[RGBImage], refine: bool) -> tuple[list[float], list[Any]]:
    """Answer every image query with refinement on or off; (seconds each, moments each).

    ``VideoIndex.query`` reads ``idx.settings.query``: the toggle swaps in a copy for the
    duration of the calls and restores the original (the manifest keeps the real settings).
    """
    original = idx.settings
    idx.settings = original.model_copy(update={"query": original.query.model_copy(update={"refine": refine})})
    took: list[float] = []
    answers: list[Any] = []
    try:
        for img in images:
            t0 = time.perf_counter()
            result = idx.query(Query(image=img, streams=[STREAM]))[STREAM]
            took.append(time.perf_counter() - t0)
            answers.append(result.moments)
    finally:
        idx.settings = original
    return took, answers


@dataclass
class _Marks:
    """Samples the index at each hour mark (and optionally times queries there)."""

    idx: VideoIndex
    marks: list[float]
    images: Sequence[RGBImage]
    paused: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, list[Any]] = field(default_factory=dict)
    """Moments of each query at the latest mark, by mode (prescreen / refine)."""

    def on_frame(self, frame: Frame) -> None:
        while self.marks and frame.t >= self.marks[0]:
            self.sample(self.marks.pop(0))

    def sample(self, mark: float) -> None:
        self.idx.settle()  # commit the batches in flight: the memory reaches the mark, the encoder idles
        st = self.idx.streams[STREAM]  # on_frame runs in the ingest thread: nothing moves meanwhile
        row: dict[str, Any] = {
            "hours": round(mark / HOUR, 3),
            "tokens": st.memory.tokens,
            "memory_bytes": st.memory.nbytes,
            "encoder_passes": st.stats.superimages,
            "store_bytes": st.store.nbytes if st.store is not None else 0,
        }
        if self.images:
            t0 = time.perf_counter()
            for refine in (False, True):
                mode = "refine" if refine else "prescreen"
                took, self.answers[mode] = timed_queries(self.idx, self.images, refine)
                row[f"latency_{mode}"] = percentiles(took)
            self.paused += time.perf_counter() - t0
        # After this mark's queries: each mark's RSS then includes the query-side
        # working set (refine batches, frame-embedding cache), not only the first's.
        row.update(rss_mb())
        self.rows.append(row)


def ingest_pass(
    video: Path,
    settings: Settings,
    *,
    duration: float,
    keyframes_only: bool,
    latency_images: Sequence[RGBImage] = (),
    work_dir: Path | None = None,
    overlap: bool = True,
    decode_threads: int = 0,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Ingest the whole video into a fresh index.

    ``overlap`` decodes and encodes in worker threads as ``vmr ingest`` does
    (``agent.cli.options.prefetch``, ``VideoIndex.encode_in_thread``); without it decode,
    push and encoding alternate in one thread. ``decode_threads``: FFmpeg decoder threads
    (0: FFmpeg's choice).

    ``waits`` in the figures says which stage waited for which (wall seconds, the hour-mark
    pauses included): ``decode_to_ingest`` (:class:`agent.cli.options.PrefetchWaits`: the
    decoder blocked on a full queue, the pushing thread on an empty one) and ``encoder``
    (:class:`agent.index.encode_pipeline.PipelineWaits`: encoding, and the pushing thread
    blocked on it).

    Returns the figures (speed, hour marks, latency, final info) and the moments the engine
    answered for each latency query at full length, by mode (empty when no queries ran).
    """
    from agent.cli.options import PrefetchWaits, prefetch

    fps = settings.index.fps
    settings = settings.model_copy(
        update={"index": settings.index.model_copy(update={"keyframes_only": keyframes_only})}
    )
    marks = [h * HOUR for h in HOUR_MARKS if h * HOUR < duration]
    with tempfile.TemporaryDirectory(prefix="vmr-bench-", dir=work_dir) as tmp:
        idx = VideoIndex.create(Path(tmp), settings)
        idx.encode_in_thread = overlap
        try:
            peak_reset = reset_peak_rss()
            sampler = _Marks(idx, marks, latency_images)
            frames = decode_frames(
                video,
                stream=STREAM,
                fps=fps,
                keyframes_only=keyframes_only,
                short_side=idx.prescreen.image_size,
                thread_count=decode_threads,
            )
            handoff = PrefetchWaits()
            t0 = time.perf_counter()
            idx.ingest(prefetch(frames, waits=handoff) if overlap else frames, on_frame=sampler.on_frame)
            took = time.perf_counter() - t0 - sampler.paused
            waits = {"decode_to_ingest": handoff.as_dict(), "encoder": idx.ingest_waits.as_dict()}
            prio = idx.ingest_priority
            priority = {
                "encoder_nice": prio.nice,
                "encoder_sched": prio.policy,
                "threads_lowered": len(prio.applied),
                "refused": prio.refused,
            }
            sampler.marks = []
            sampler.sample(duration)  # the full length, queries included
            info = idx.info()["streams"][STREAM]
        finally:
            idx.close()
    hours = duration / HOUR
    figures = {
        "mode": "keyframes" if keyframes_only else "full",
        "grid": settings.index.grid,
        "budget": settings.index.budget,
        "gate": settings.index.gate,
        "decode_in_thread": overlap,
        "seconds": round(took, 2),
        "x_realtime": round(duration / took, 1),
        "frames": info["frames"],
        "gated_frames": info["gated_frames"],
        "encoder_passes": info["encoder_passes"],
        "encoder_passes_per_hour": round(info["encoder_passes"] / hours, 1),
        "tokens": info["tokens"],
        "anchors": info["anchors"],
        "memory_bytes": info["memory_bytes"],
        "store_bytes": info["store_bytes"],
        "peak_reset": peak_reset,
        "marks": sampler.rows,
        "waits": waits,
        "encoder_priority": priority,
        "max_tokens_seen": max(r["tokens"] for r in sampler.rows),
    }
    return figures, sampler.answers


def query_config_note(cfg: QueryConfig) -> dict[str, Any]:
    """The query settings that drive latency, for the report."""
    return {
        "candidates": cfg.candidates,
        "context_seconds": cfg.context_seconds,
        "max_refine_frames": cfg.max_refine_frames,
        "top_k": cfg.top_k,
    }
