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

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.channels.base import ChannelAnswer, ChannelQuery
from agent.channels.refine import (
    BACKGROUND_FRAMES,
    FrameEmbeddingCache,
    RegionWork,
    VisualPlan,
    refine_plans,
    spread_order,
)
from agent.config import MAX_TOP_K, QueryConfig
from agent.core.cheap_index import CheapIndex
from agent.core.fuse import ChannelProposal, calibrate
from agent.core.gaps import covered_pieces, holes_between
from agent.core.memory import Memory
from agent.core.superimage import still_shot
from agent.errors import ConfigError, OversizeQueryError, QueryError
from agent.models.encoder import Encoder
from agent.store.frame_store import FrameStore
from agent.types import Coverage, RGBImage


@dataclass(slots=True)
class Query:
    """A text or image query over one or more streams."""

    text: str | None = None
    image: RGBImage | None = None
    streams: list[str] | None = None
    start: float | None = None
    end: float | None = None
    top_k: int | None = None
    channels: list[str] | None = None
    """Only these channels answer (``["speech"]``); None or empty: every channel."""

    def check(self, cfg: QueryConfig) -> None:
        """Reject empty, ambiguous, non-Unicode (a lone surrogate) or oversize queries before any encoding."""
        if (self.text is None) == (self.image is None):
            raise QueryError("a query needs exactly one of text or image")
        if self.text is not None:
            if not self.text.strip():
                raise QueryError("empty query text")
            try:
                # JSON can escape a lone UTF-16 surrogate ("\\ud800"), which no tokenizer takes.
                self.text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise QueryError(f"query text is not valid Unicode at character {exc.start}") from exc
            if len(self.text) > cfg.max_text_chars:
                raise OversizeQueryError(
                    f"query text has {len(self.text)} characters; limit {cfg.max_text_chars}"
                )
        if self.image is not None and self.image.nbytes > cfg.max_image_bytes * 4:
            raise OversizeQueryError("query image is too large")
        for name, value in (("start", self.start), ("end", self.end)):
            if value is not None and not math.isfinite(value):
                raise QueryError(f"time range {name} must be a finite number of stream seconds")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise QueryError("time range end must be after start")
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k must be between 1 and {MAX_TOP_K}")

    def check_channels(self, offered: Collection[str]) -> None:
        """Reject a channel filter naming a channel the service does not index (``offered``), or
        only text channels for an image query: either would give a watch that never fires, or an
        answer that is empty for a typo. QueryError."""
        if not self.channels:
            return
        unknown = sorted(set(self.channels) - set(offered))
        if unknown:
            raise QueryError(
                f"unknown channel(s) {', '.join(map(repr, unknown[:3]))[:200]}; "
                f"the channels indexed here are {sorted(offered)}"
            )
        if self.text is None and "visual" not in self.channels:
            raise QueryError("an image query needs the visual channel (speech and ocr match words)")

    def __post_init__(self) -> None:
        if self.streams is not None and not self.streams:
            self.streams = None  # an empty list means every stream, as the protocol has always said


def encode_query(query: Query, encoder: Encoder, grid: int = 1) -> np.ndarray:
    """The query's (dim,) unit vector under ``encoder``.

    ``grid`` > 1: an image query is encoded as the super-image a still shot of it makes at
    that grid (:func:`agent.core.superimage.still_shot`), the picture layout of the anchors
    it is scored against. Text has no layout: ``grid`` is ignored.
    """
    if query.text is not None:
        return encoder.encode_text([query.text])[0]
    assert query.image is not None
    image = still_shot(query.image, grid, encoder.image_size) if grid > 1 else query.image
    return encoder.encode_images([image])[0]


QueryKey = tuple[str, str, str]


def _query_key(query: Query, encoder: Encoder, grid: int = 1) -> QueryKey:
    """(encoder, kind, content): the same query under the same encoder gives the same vector.

    An image is keyed with its grid (a tiled picture is another encoder input); text is one
    vector whatever the grid (:func:`encode_query` ignores it).
    """
    backend = getattr(getattr(encoder, "backend", None), "name", "")
    who = f"{encoder.name}@{backend}"
    if query.text is not None:
        return (who, "text", query.text)
    assert query.image is not None
    img = np.ascontiguousarray(query.image)
    digest = hashlib.blake2b(img.data, digest_size=16).hexdigest()  # ~0.1 ms for a 256 px picture
    tiled = f"|grid{grid}" if grid > 1 else ""
    return (who, "image", f"{img.shape}|{img.dtype}|{digest}{tiled}")


class QueryVectors:
    """Query vectors by encoder and query content: a repeated query skips its encoding.

    An encoder is deterministic, so a kept vector is the one encoding again
    would give: answers do not change, a repeated query (a client asking
    again, a watch re-armed, the same picture sent twice) costs a hash instead
    of an encoder pass. Bounded: at most ``size`` vectors (a few KB each),
    the least recently used dropped first. Vectors are read-only. Thread-safe;
    encoding runs outside the lock (two threads missing on one query both
    encode, the same vector).
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[QueryKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, query: Query, encoder: Encoder, grid: int = 1) -> np.ndarray:
        """The (dim,) unit vector of ``query`` under ``encoder`` at ``grid`` (:func:`encode_query`),
        kept or encoded."""
        key = _query_key(query, encoder, grid)
        with self._lock:
            vec = self._items.get(key)
            if vec is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return vec
            self.misses += 1
        vec = encode_query(query, encoder, grid)
        vec.setflags(write=False)  # shared by every later query that repeats this one
        self.put(query, encoder, vec, grid)
        return vec

    def put(self, query: Query, encoder: Encoder, vec: np.ndarray, grid: int = 1) -> None:
        """Keep ``vec`` as ``query``'s (dim,) unit vector under ``encoder`` at ``grid``, encoded elsewhere.

        The Ray gateway encodes a query once and ships the vector to every
        stream actor, which puts it here: its search then finds it instead of
        encoding. Only a vector of this very encoder (same model, weights and
        backend on another process) may be put: answers must not change.
        """
        if vec.shape != (encoder.dim,):
            raise ConfigError(f"query vector of shape {vec.shape}; {encoder.name} gives ({encoder.dim},)")
        if vec.flags.writeable:
            vec = vec.copy()
            vec.setflags(write=False)
        key = _query_key(query, encoder, grid)
        with self._lock:
            self._items[key] = vec
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


PRESCREEN, REFINE = "prescreen", "refine"
"""Roles of a query's vectors: one per encoder that scores it."""


def query_roles(
    query: Query, vectors: QueryVectors, prescreen: Encoder, refine: Encoder, grid: int = 1
) -> dict[str, np.ndarray]:
    """``query``'s (dim,) vectors by role: prescreen's at ``grid``, and refine's (the photo alone).

    PRESCREEN scores anchors, so an image is tiled at ``grid`` (:func:`encode_query`). REFINE
    scores stored frames one by one, so it is the photo alone (grid 1); it is there when refine
    is another model, or when the query is an image at ``grid`` > 1 (the tiled vector would
    not do). Text with one model has no REFINE entry: the prescreen vector serves both.
    What :meth:`agent.index.video_index.VideoIndex.start_query` encodes; blocking (an encoder
    pass per missing vector unless kept in ``vectors``).
    """
    out = {PRESCREEN: vectors.get(query, prescreen, grid)}
    if refine is not prescreen or (query.image is not None and grid > 1):
        out[REFINE] = vectors.get(query, refine)
    return out


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
