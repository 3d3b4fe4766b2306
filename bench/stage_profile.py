"""Per-stage CPU profile of one ingest pass: where an archive pass spends its seconds.

:func:`profile_ingest` runs ``VideoIndex.ingest`` serially (decode and encoding alternate in
one Python thread) with timers around the ingest path's stages, so each stage's seconds are
its own and the CPU of every thread (FFmpeg's decode threads and the encoder's pool included:
``time.process_time``) that ran meanwhile is charged to it. Stages, each exclusive of the
stages nested in it:

* ``demux_decode``: pulling the next sampled frame from :func:`streams.file.decode_frames`
  (demux, H.264 decode, the sampler), minus ``convert_scale``;
* ``convert_scale``: :func:`streams.sampler.to_rgb` (swscale: YUV to RGB and the resize in one call);
* ``cheap_index``: :meth:`CheapIndex.add` (histogram, grey thumbnail, motion);
* ``frame_store``: :meth:`FrameStore.put` (JPEG encode and append);
* ``tiling``: :func:`agent.core.superimage.tile` (the super-image's resizes);
* ``encoder_pixels``: the encoder's resize and normalisation (``ClipEncoder._pixels``);
* ``encoder_forward``: the rest of ``ClipEncoder.encode_images`` (the forward passes);
* ``memory``: :meth:`Memory.add` and :meth:`Memory.extend`;
* ``other``: the pass's seconds outside every stage (the ingest loop, gate, bookkeeping).

Caveat: FFmpeg's frame threads may still be decoding while the next stage runs (they decode
ahead of the packet handed in), so a little decode CPU lands on the stages after it. The
overlapped pass (decode in its own thread) is timed by :mod:`bench.archive_pass`; this one
says what each part costs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = (
    "demux_decode",
    "convert_scale",
    "cheap_index",
    "frame_store",
    "tiling",
    "encoder_pixels",
    "encoder_forward",
    "memory",
)


@dataclass
class _Open:
    name: str
    wall0: float
    cpu0: float
    child_wall: float = 0.0
    child_cpu: float = 0.0


@dataclass
class StageClock:
    """Exclusive wall and process-CPU seconds per stage, for stages entered from one thread."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _stack: list[_Open] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the time inside to ``name``, minus the stages nested in it."""
        self._stack.append(_Open(name, time.perf_counter(), time.process_time()))
        try:
            yield
        finally:
            top = self._stack.pop()
            wall = time.perf_counter() - top.wall0
            cpu = time.process_time() - top.cpu0
            self.wall[name] = self.wall.get(name, 0.0) + wall - top.child_wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu - top.child_cpu
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1].child_wall += wall
                self._stack[-1].child_cpu += cpu

    def wrap(self, owner: Any, attr: str, name: str) -> ExitStack:
        """Patch ``owner.attr`` (a function or method) to run inside :meth:`stage`; undone on exit."""
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return original(*args, **kwargs)

        undo = ExitStack()
        setattr(owner, attr, timed)
        undo.callback(setattr, owner, attr, original)
        return undo

    def iterate(self, items: Iterator[Any], name: str) -> Iterator[Any]:
        """Yield ``items``, charging each ``next()`` to ``name``."""
        while True:
            with self.stage(name):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item

    def table(self, total_wall: float, total_cpu: float) -> dict[str, dict[str, Any]]:
        """Per stage: wall and CPU seconds, share of the pass's wall time, cores busy, calls."""
        rows: dict[str, dict[str, Any]] = {}
        for name in (*STAGES, "other"):
            if name == "other":
                wall = total_wall - sum(self.wall.values())
                cpu = total_cpu - sum(self.cpu.values())
                calls = None
            else:
                wall, cpu, calls = self.wall.get(name, 0.0), self.cpu.get(name, 0.0), self.calls.get(name, 0)
            rows[name] = {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "wall_share": round(wall / total_wall, 3) if total_wall else None,
                "cores_busy": round(cpu / wall, 2) if wall > 0 else None,
                "calls": calls,
            }
        return rows


def _patches(clock: StageClock) -> ExitStack:
    import agent.core.superimage as superimage
    import streams.file as file
    from agent.core.cheap_index import CheapIndex
    from agent.core.memory import Memory
    from agent.models.encoder import ClipEncoder
    from agent.store.frame_store import FrameStore

    stack = ExitStack()
    targets: list[tuple[Any, str, str]] = [
        (file, "to_rgb", "convert_scale"),
        (CheapIndex, "add", "cheap_index"),
        (FrameStore, "put", "frame_store"),
        (superimage, "tile", "tiling"),
        (ClipEncoder, "encode_images", "encoder_forward"),
        (ClipEncoder, "_pixels", "encoder_pixels"),
        (Memory, "add", "memory"),
        (Memory, "extend", "memory"),
    ]
    for owner, attr, name in targets:
        stack.enter_context(clock.wrap(owner, attr, name))
    return stack


def profile_ingest(
    video: Path,
    settings: Any,
    *,
    keyframes_only: bool,
    stream: str = "bench",
    decode_threads: int = 0,
) -> dict[str, Any]:
    """Ingest ``video`` serially into a fresh index with the stage timers on; the breakdown.

    ``settings``: :class:`agent.config.Settings` (its encoders load before the timed part:
    ``load_encoder`` keeps loaded models); ``decode_threads``: FFmpeg decoder threads (0: its choice).
    Returns ``{"mode", "wall_s", "cpu_s", "frames", "encoder_passes", "stages": {...}}``.
    """
    from agent.index.video_index import VideoIndex
    from streams.file import decode_frames

    settings = settings.model_copy(
        update={"index": settings.index.model_copy(update={"keyframes_only": keyframes_only})}
    )
    clock = StageClock()
    with tempfile.TemporaryDirectory(prefix="vmr-profile-") as tmp:
        idx = VideoIndex.create(Path(tmp), settings)
        idx.encode_in_thread = False  # one thread: every stage's seconds are its own
        try:
            frames = decode_frames(
                video,
                stream=stream,
                fps=settings.index.fps,
                keyframes_only=keyframes_only,
                short_side=idx.prescreen.image_size,
                thread_count=decode_threads,
            )
            with _patches(clock):
                c0, t0 = time.process_time(), time.perf_counter()
                idx.ingest(clock.iterate(iter(frames), "demux_decode"))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            info = idx.info()["streams"][stream]
        finally:
            idx.close()
    return {
        "mode": "keyframes" if keyframes_only else "full",
        "serial": True,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "frames": info["frames"],
        "encoder_passes": info["encoder_passes"],
        "stages": clock.table(wall, cpu),
    }


def top_stages(profile: dict[str, Any], n: int = 3) -> list[str]:
    """The ``n`` stages with the most CPU seconds, most first."""
    stages: dict[str, dict[str, Any]] = profile["stages"]
    return sorted(stages, key=lambda s: -float(stages[s]["cpu_s"]))[:n]
