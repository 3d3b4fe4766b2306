"""Retrieval: prescreen the memory, refine where the query points, propose moments.

1. **Prescreen**: one matrix product of the query (prescreen encoder) with the
   representatives of all anchors of the stream.
2. **Regions**: the top anchors, widened by ``context_seconds`` and merged.
3. **Refine**: stored frames of those regions are encoded one by one with the
   refine encoder (a stronger model may go here) giving a per-frame
   similarity curve; frame embeddings are cached across queries.
4. **Proposals**: the curve becomes moments (boundary snapping to cheap-index
   scene changes, NMS), the best ``top_k`` returned.

Where a region's stored frames were already evicted, that region's moments
come from anchor scores alone (``answered_by="anchor"``) and the result says so.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from agent.config import QueryConfig
from agent.core.proposals import Proposal, nms, propose
from agent.errors import OversizeQueryError, QueryError
from agent.index.stream_state import StreamState
from agent.models.encoder import Encoder
from agent.types import AnsweredBy, Coverage, Moment, QueryResult, RGBImage


@dataclass(slots=True)
class Query:
    """A text or image query over one or more streams."""

    text: str | None = None
    image: RGBImage | None = None
    streams: list[str] | None = None
    start: float | None = None
    end: float | None = None
    top_k: int | None = None

    def check(self, cfg: QueryConfig) -> None:
        """Reject empty, ambiguous or oversize queries before any encoding."""
        if (self.text is None) == (self.image is None):
            raise QueryError("a query needs exactly one of text or image")
        if self.text is not None:
            if not self.text.strip():
                raise QueryError("empty query text")
            if len(self.text) > cfg.max_text_chars:
                raise OversizeQueryError(
                    f"query text has {len(self.text)} characters; limit {cfg.max_text_chars}"
                )
        if self.image is not None and self.image.nbytes > cfg.max_image_bytes * 4:
            raise OversizeQueryError("query image is too large")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise QueryError("time range end must be after start")


def encode_query(query: Query, encoder: Encoder) -> np.ndarray:
    """The query's (dim,) unit vector under ``encoder``."""
    if query.text is not None:
        return encoder.encode_text([query.text])[0]
    assert query.image is not None
    return encoder.encode_images([query.image])[0]


class FrameEmbeddingCache:
    """LRU of refine-encoder embeddings keyed by (stream, frame time)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, float]) -> np.ndarray | None:
        vec = self._items.get(key)
        if vec is not None:
            self._items.move_to_end(key)
        return vec

    def put(self, key: tuple[str, float], vec: np.ndarray) -> None:
        self._items[key] = vec
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def _clip_range(query: Query, lo: float, hi: float) -> tuple[float, float]:
    start = lo if query.start is None else max(lo, query.start)
    end = hi if query.end is None else min(hi, query.end)
    return start, end


def prescreen(state: StreamState, qvec: np.ndarray, start: float, end: float) -> tuple[np.ndarray, ...]:
    """Scores of the anchors overlapping [start, end]: (starts, ends, scores)."""
    starts, ends, reps = state.memory.matrix()
    keep = (ends > start) & (starts < end)
    return starts[keep], ends[keep], reps[keep] @ qvec


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


def _refine_region(
    state: StreamState,
    qvec: np.ndarray,
    span: tuple[float, float],
    max_frames: int,
    encoder: Encoder,
    cache: FrameEmbeddingCache,
) -> tuple[np.ndarray, np.ndarray] | None:
    if state.store is None:
        return None
    frames = state.store.frames(span[0], span[1], max_frames)
    if not frames:
        return None
    times = np.array([t for t, _ in frames], np.float64)
    vecs: list[np.ndarray | None] = [cache.get((state.stream, float(t))) for t in times]
    missing = [i for i, v in enumerate(vecs) if v is None]
    if missing:
        fresh = encoder.encode_images([frames[i][1] for i in missing])
        for i, v in zip(missing, fresh, strict=True):
            cache.put((state.stream, float(times[i])), v)
            vecs[i] = v
    mat = np.stack([v for v in vecs if v is not None])
    return times, mat @ qvec


def _to_moment(state: StreamState, p: Proposal, answered_by: AnsweredBy) -> Moment:
    return Moment(
        start=p.start,
        end=p.end,
        score=p.score,
        stream=state.stream,
        wall_start=state.wall_of(p.start),
        wall_end=state.wall_of(p.end),
        evidence=[p.peak],
        answered_by=answered_by,
    )


def coverage(state: StreamState, start: float, end: float) -> Coverage:
    """How much of [start, end] the memory and the frame store retain."""
    retained, spt = state.memory.coverage(start, end)
    frames_s = 0.0
    if state.store is not None and state.store.first_time is not None:
        last = state.ingestor.stats.last_time or start
        frames_s = max(0.0, min(end, last) - max(start, state.store.first_time))
    return Coverage(
        start=start, end=end, retained_seconds=retained, seconds_per_token=spt, frames_seconds=frames_s
    )


def search_stream(
    state: StreamState,
    query: Query,
    prescreen_vec: np.ndarray,
    refine_vec: np.ndarray,
    cfg: QueryConfig,
    refine_encoder: Encoder,
    cache: FrameEmbeddingCache,
) -> QueryResult:
    """Answer ``query`` over one stream (call with the query already encoded)."""
    top_k = query.top_k or cfg.top_k
    with state.lock:
        spans = state.memory.spans()
        if not spans:
            return QueryResult([], None, "anchor", notes=["stream has no retained memory yet"])
        lo, hi = _clip_range(query, spans[0][0], spans[-1][1])
        cov = coverage(state, lo, hi)
        if hi <= lo:
            return QueryResult([], cov, "anchor", notes=["time range not in retained memory"])
        starts, ends, scores = prescreen(state, prescreen_vec, lo, hi)
        if len(scores) == 0:
            return QueryResult([], cov, "anchor", notes=["time range not in retained memory"])
        props: list[tuple[Proposal, AnsweredBy]] = []
        notes: list[str] = []
        per_region = max(4, cfg.max_refine_frames // max(1, cfg.candidates))
        for span in regions(starts, ends, scores, cfg, lo, hi):
            curve = (
                _refine_region(state, refine_vec, span, per_region, refine_encoder, cache)
                if cfg.refine
                else None
            )
            if curve is None:
                props.extend((p, "anchor") for p in _anchor_proposals(starts, ends, scores, span))
                if cfg.refine:
                    notes.append(f"frames evicted for {span[0]:.1f}-{span[1]:.1f}s: anchor-level scores")
                continue
            times, sims = curve
            bounds = state.cheap.boundaries(span[0], span[1])
            found = propose(
                times,
                sims,
                top_k=top_k,
                boundaries=bounds,
                nms_iou=cfg.nms_iou,
                frame_seconds=1.0 / state.cfg.fps,
            )
            props.extend((_by_similarity(p), "refine") for p in found)
    kinds = {id(p): k for p, k in props}
    best = nms([p for p, _ in props], cfg.nms_iou, top_k)
    moments = [_to_moment(state, p, kinds[id(p)]) for p in best]
    answered: AnsweredBy = "refine" if any(m.answered_by == "refine" for m in moments) else "anchor"
    return QueryResult(moments, cov, answered, meaningless=refine_encoder.meaningless, notes=notes)


def _anchor_proposals(
    starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, span: tuple[float, float]
) -> list[Proposal]:
    inside = (starts < span[1]) & (ends > span[0])
    return [
        Proposal(float(s), float(e), float(sc), float((s + e) / 2), similarity=float(sc))
        for s, e, sc in zip(starts[inside], ends[inside], scores[inside], strict=True)
    ]


def _by_similarity(p: Proposal) -> Proposal:
    """Rank by mean cosine inside the window: comparable across regions and with anchors.

    propose()'s own score is a within-curve contrast statistic; it chose the
    windows, but curves of different regions are not on one scale.
    """
    sim = p.similarity if p.similarity is not None else p.score
    return Proposal(p.start, p.end, float(sim), p.peak, similarity=sim)
