"""Per-stage timestamps of the needle stream in ``bench.service_load`` (a bench-only hook).

The service has no tracing on its hot path; this module wraps, on one
running service instance only, the three seams a needle frame crosses:

* the needle runner's ``_push`` (in the ingest thread): when each sampled
  frame was released by the pacing clock (its ``wall``), when the channel
  push started and ended, and which super-images it emitted (tiler and
  cheap-index gate decide that);
* the image batch worker's batch function: when the batch holding a needle
  super-image started and finished encoding (the wait before it is the
  encoder queue);
* the shard listener's ``on_embedding`` (on the event loop, after the commit
  to memory): when the watches scored the super-image.

:func:`breakdown` then takes each ``moment`` the client received, finds the
super-image that opened it (the first needle super-image at or after the
needle's due time whose score crossed the threshold) and splits arrival - due
into stages, in seconds: ``release`` (due -> first needle frame released by
the pacer), ``sample`` (-> its channel push returned: decoded and sampled
frames reach the push in order), ``fill`` (-> the super-image holding it was
emitted: the tiler waits for its grid or a gated run to end), ``queue``
(-> its encoder batch started), ``encode`` (batch time), ``commit`` (-> watch
scored it), ``send`` (-> the client received the ``moment``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.channels.base import WorkItem
from agent.core.superimage import SuperImage
from agent.service.pipeline import Service
from agent.types import Frame

STAGES = ("release", "sample", "fill", "queue", "encode", "commit", "send")


def _key(si: SuperImage) -> tuple[float, float]:
    return (si.start, si.end)


@dataclass(slots=True)
class SiTrace:
    """Stream span of one needle super-image and the wall times it crossed each seam."""

    start: float
    end: float
    emitted: float
    batch_start: float | None = None
    batch_end: float | None = None
    scored: float | None = None
    vec: np.ndarray | None = None
    """The embedding the watches scored (the watch's vector is known only later)."""


@dataclass
class NeedleTrace:
    """Timestamps (``time.time()``) of the needle stream's frames and super-images."""

    stream: str
    frames: list[tuple[float, float, float, float]] = field(default_factory=list)
    """(stream t, released wall, push start, push end) per sampled frame."""
    sis: dict[tuple[float, float], SiTrace] = field(default_factory=dict)
    """By (start, end) stream seconds: ids of freed super-images are reused by later ones."""

    def attach(self, svc: Service) -> None:
        """Wrap the seams of ``svc`` (its needle runner must exist; call once, before the watch opens)."""
        shard: Any = svc.shard
        runner = shard.runners[self.stream]
        push: Callable[[Frame], list[WorkItem]] = runner._push

        def traced_push(frame: Frame) -> list[WorkItem]:
            t0 = time.time()
            items = push(frame)
            t1 = time.time()
            self.frames.append((frame.t, frame.wall or t0, t0, t1))
            for item in items:
                if isinstance(item.ref, SuperImage):
                    self.sis[_key(item.ref)] = SiTrace(item.ref.start, item.ref.end, t1)
            return items

        runner._push = traced_push
        worker = svc.worker
        assert worker is not None
        fn = worker.fn

        def traced_fn(items: list[WorkItem]) -> Sequence[np.ndarray] | np.ndarray:
            t0 = time.time()
            out = fn(items)
            t1 = time.time()
            for item in items:
                si = self._of(item.stream, item.ref)
                if si is not None and si.batch_end is None:
                    si.batch_start, si.batch_end = t0, t1
            return out

        worker.fn = traced_fn
        listener = shard._listener
        on_embedding = listener.on_embedding

        def traced_on_embedding(stream: str, si: SuperImage, vec: np.ndarray) -> None:
            on_embedding(stream, si, vec)
            trace = self._of(stream, si)
            if trace is not None and trace.scored is None:
                trace.scored, trace.vec = time.time(), np.array(vec, np.float32)

        listener.on_embedding = traced_on_embedding

    def _of(self, stream: str, ref: object) -> SiTrace | None:
        if stream != self.stream or not isinstance(ref, SuperImage):
            return None
        return self.sis.get(_key(ref))

    def breakdown(
        self,
        dues: Sequence[float],
        arrivals: Sequence[float],
        *,
        wall0: float,
        qvec: np.ndarray,
        threshold: float,
    ) -> dict[str, Any]:
        """Stage seconds per matched needle (module docstring) and their medians.

        ``dues``: wall time each needle was due on the pacing clock, whose stream second 0 is
        at wall ``wall0``; ``arrivals``: when the client received each ``moment``; ``qvec`` and
        ``threshold``: the watch's vector and threshold (which super-image opened the match).
        """
        rows = []
        for due, arrival in zip(dues, arrivals, strict=True):
            first = next((f for f in self.frames if f[0] >= due - wall0 - 1e-3), None)
            hit = min(
                (
                    s
                    for s in self.sis.values()
                    if s.scored is not None and s.scored <= arrival and s.emitted >= due
                    if s.vec is not None and float(np.dot(s.vec, qvec)) >= threshold
                ),
                key=lambda s: s.scored or 0.0,
                default=None,
            )
            if first is None or hit is None:
                continue
            marks = [
                due,
                first[1],
                first[3],
                hit.emitted,
                hit.batch_start,
                hit.batch_end,
                hit.scored,
                arrival,
            ]
            if any(m is None for m in marks):
                continue  # scored without a traced batch (cannot happen: the batch precedes the commit)
            times = [float(m) for m in marks if m is not None]
            stages = {name: round(b - a, 3) for name, a, b in zip(STAGES, times, times[1:], strict=False)}
            rows.append({**stages, "total": round(arrival - due, 3), "si_span": [hit.start, hit.end]})
        return summarise(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and 95th percentile of each stage (and the total) over ``rows``, with ``n``.

    ``rows``: the ``needles`` of one or more :meth:`NeedleTrace.breakdown` answers (several
    needle streams pool theirs). The p95 of a stage is that stage's own percentile, not the
    stage of the p95 needle (they need not add up to the total's p95).
    """

    def stat(q: float) -> dict[str, float]:
        return {
            name: round(float(np.percentile([r[name] for r in rows], q)), 3) for name in (*STAGES, "total")
        }

    return {
        "stages": list(STAGES),
        "n": len(rows),
        "median_s": stat(50) if rows else {},
        "p95_s": stat(95) if rows else {},
        "needles": rows,
    }
