"""Visual retrieval: prescreen the memory, refine where the query points, propose moments.

1. **Prescreen**: the query (prescreen encoder) scored against every anchor of
   the stream by the memory's scorer (:meth:`agent.core.memory.Memory.scores`).
2. **Regions**: the top anchors, widened by ``context_seconds`` and merged.
3. **Refine**: stored frames of those regions are encoded one by one with the
   refine encoder (a stronger model may go here) giving a per-frame
   similarity curve; frame embeddings are cached across queries. Progressive:
   :func:`plan_visual` gives the anchor-level first answer and the plan (under
   the stream's lock, no encoder), :func:`agent.channels.refine.refine_plans`
   refines it by expected gain within a time budget (outside the lock).
4. **Proposals**: the curve becomes candidate windows (boundary snapping to
   cheap-index scene changes, per-curve NMS), scored by their mean cosine.
5. **Background**: the calibration :func:`agent.core.fuse.fuse` judges them
   by - the anchor scores (for anchor proposals) and the refine encoder's
   scores of frames sampled evenly over the stored range (for refined ones).

Where a region's stored frames were already evicted, that region's moments
come from anchor scores alone (kind ``"anchor"``) and the answer says so.
Ranking across regions, channels and streams is :func:`agent.core.fuse.fuse`'s.
:func:`search_visual` and the refinement read the frame store and run the
refine encoder: call them from a worker thread, never on an event loop.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from agent.channels.base import ChannelAnswer, ChannelQuery
from agent.channels.query import (
    PRESCREEN,
    REFINE,
    Query,
    QueryVectors,
    encode_query,
    query_roles,
)
from agent.channels.refine import (
    BACKGROUND_FRAMES,
    FrameEmbeddingCache,
    RegionWork,
    VisualPlan,
    refine_plans,
    spread_order,
)
from agent.config import QueryConfig
from agent.core.cheap_index import CheapIndex
from agent.core.fuse import ChannelProposal, calibrate
from agent.core.gaps import covered_pieces, holes_between
from agent.core.memory import Memory
from agent.models.encoder import Encoder
from agent.store.frame_store import FrameStore
from agent.types import Coverage

__all__ = [  # the query types live in agent.channels.query; importers of this module still find them
    "PRESCREEN",
    "REFINE",
    "FrameEmbeddingCache",
    "Query",
    "QueryVectors",
    "encode_query",
    "plan_visual",
    "query_roles",
    "search_visual",
]


class Retained(Protocol):
    """What visual retrieval reads of a stream (the visual channel offers it)."""

    stream: str
    name: str
    memory: Memory
    cheap: CheapIndex
    store: FrameStore | None

    @property
    def frame_seconds(self) -> float: ...

    @property
    def last_time(self) -> float | None: ...


def _clip_range(query: ChannelQuery, lo: float, hi: float) -> tuple[float, float]:
    start = lo if query.start is None else max(lo, query.start)
    end = hi if query.end is None else min(hi, query.end)
    return start, end


def prescreen(memory: Memory, qvec: np.ndarray, start: float, end: float) -> tuple[np.ndarray, ...]:
    """Scores of the anchors overlapping [start, end]: (starts, ends, scores)."""
    starts, ends = memory.times()  # not matrix(): the tokens would be gathered for nothing
    keep = (ends > start) & (starts < end)
    return starts[keep], ends[keep], memory.scores(qvec)[keep]


def regions(
    starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, cfg: QueryConfig, lo: float, hi: float
) -> list[tuple[float, float]]:
    """Top anchors widened by context and merged into disjoint regions."""
    order = np.argsort(-scores, kind="stable")[: cfg.candidates]
    spans = sorted(
        (max(lo, float(starts[i]) - cfg.context_seconds), min(hi, float(ends[i]) + cfg.context_seconds))
        for i in order
    )
    merged: list[tuple[float, float]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def coverage(r: Retained, start: float, end: float) -> Coverage:
    """How much of [start, end] the memory and the frame store retain.

    Stored frames count from the oldest one kept (older ones were evicted)
    to the stream's last time, less every hole between stored frames longer
    than the memory's gap threshold (an outage is not stored footage).
    """
    retained, spt = r.memory.coverage(start, end)
    frames_s = 0.0
    if r.store is not None and r.store.first_time is not None:
        lo, hi = max(start, r.store.first_time), min(end, r.last_time or start)
        if hi > lo:
            edges = np.concatenate(([lo], r.store.times(lo, hi), [hi]))
            steps = np.diff(edges)
            frames_s = float(hi - lo - steps[steps > r.memory.gap_seconds].sum())
    return Coverage(
        start=start, end=end, retained_seconds=retained, seconds_per_token=spt, frames_seconds=frames_s
    )


def search_visual(
    r: Retained,
    query: ChannelQuery,
    cfg: QueryConfig,
    refine_encoder: Encoder,
    cache: FrameEmbeddingCache,
) -> ChannelAnswer:
    """Visual proposals of one stream for an encoded query, refined without a time limit (blocking)."""
    plan = plan_visual(r, query, cfg)
    return refine_plans({r.stream: plan}, refine_encoder, cache)[r.stream]


def plan_visual(r: Retained, query: ChannelQuery, cfg: QueryConfig) -> VisualPlan:
    """The prescreen's answer and refine plan of one stream (fast: no encoder, no frame decode).

    Reads the memory and the cheap index: call it under the stream's lock.
    The plan then refines outside it (:func:`agent.channels.refine.refine_plans`).
    """
    spans = r.memory.spans()
    if not spans:
        return VisualPlan(
            r.stream, r.name, ChannelAnswer([], {}, None, ["stream has no retained memory yet"])
        )
    lo, hi = _clip_range(query, spans[0][0], spans[-1][1])
    if hi <= lo:  # the asked range lies wholly outside what is retained
        start = lo if query.start is None else query.start
        end = max(start, hi if query.end is None else query.end)
        cov = Coverage(
            start=start, end=end, retained_seconds=0.0, seconds_per_token=math.inf, frames_seconds=0.0
        )
        return VisualPlan(r.stream, r.name, ChannelAnswer([], {}, cov, ["time range not in retained memory"]))
    cov = coverage(r, lo, hi)
    starts, ends, scores = prescreen(r.memory, query.vectors["prescreen"], lo, hi)
    if len(scores) == 0:
        return VisualPlan(r.stream, r.name, ChannelAnswer([], {}, cov, ["time range not in retained memory"]))
    plan = VisualPlan(
        r.stream,
        r.name,
        ChannelAnswer([], {"anchor": calibrate(scores, trials=len(scores), cosine=True)}, cov, []),
        store=r.store,
        rvec=query.vectors["refine"],
        top_k=query.top_k,
        nms_iou=cfg.nms_iou,
        frame_seconds=r.frame_seconds,
        # Frames of the searched range: see refine_plans' calibration note.
        trials=int((hi - lo) / r.frame_seconds) if r.frame_seconds > 0 else 0,
        scores=scores,
        holes=holes_between(spans),
    )
    spans_to_refine = regions(starts, ends, scores, cfg, lo, hi)
    # The refine budget is shared by the regions there are (one wide region gets all of it).
    per_region = max(4, cfg.max_refine_frames // max(1, len(spans_to_refine)))
    for span in spans_to_refine:
        anchors = _anchor_proposals(r, starts, ends, scores, span, plan.holes)
        plan.first.proposals.extend(anchors)
        times = _even(r.store.times(span[0], span[1]), per_region) if cfg.refine and r.store else None
        if times is None or len(times) == 0:
            plan.fixed.extend(anchors)
            if cfg.refine:
                plan.first.notes.append(
                    f"frames evicted for {span[0]:.1f}-{span[1]:.1f}s: anchor-level scores"
                )
            continue
        gain = max((a.score for a in anchors), default=-math.inf)
        plan.regions.append(RegionWork(span, gain, times, r.cheap.boundaries(span[0], span[1]), anchors))
    if plan.regions and r.store is not None:
        bg = _even(r.store.times(lo, hi), BACKGROUND_FRAMES)
        plan.background = bg[spread_order(len(bg))]
    return plan


def _even(times: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``times``, evenly subsampled (the frame store's rule)."""
    if len(times) <= n:
        return times
    return times[np.unique(np.linspace(0, len(times) - 1, n).round().astype(np.int64))]


def _anchor_proposals(
    r: Retained,
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    span: tuple[float, float],
    holes: np.ndarray,
) -> list[ChannelProposal]:
    """One proposal per covered piece of each anchor in ``span`` (peak: the piece's middle).

    An anchor merged across a coverage hole (the budget forces it) scores as a whole, so which
    side holds the match is unknown: every covered piece is proposed with the anchor's score,
    and the hole never is (see :mod:`agent.core.gaps`).
    """
    inside = (starts < span[1]) & (ends > span[0])
    return [
        ChannelProposal(r.stream, r.name, "anchor", a, b, float(sc), (a + b) / 2)
        for s, e, sc in zip(starts[inside], ends[inside], scores[inside], strict=True)
        # A degenerate anchor stays as it was (fuse drops empty spans): only holes change anything.
        for a, b in (covered_pieces(float(s), float(e), holes) if e > s else [(float(s), float(e))])
    ]
