"""From channel answers to per-stream query results: fuse once, then split by stream.

:func:`answer` is the only path from proposals to :class:`~agent.types.QueryResult`
(the CLI, the service and the benchmarks all come through
:meth:`agent.index.video_index.VideoIndex.query` or
:meth:`~agent.index.video_index.VideoIndex.start_query`): every channel of every
searched stream is calibrated and ranked together by
:func:`agent.core.fuse.fuse`, so a moment's ``confidence`` means the same on
every stream and channel, and a stream with no confident moment abstains.

A :class:`PendingQuery` is a query answered progressively: its ``first``
results come from the prescreen alone (anchor-level moments, milliseconds),
:meth:`PendingQuery.refine` then re-encodes stored frames within a time
budget and answers again (see :mod:`agent.channels.refine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.channels.base import ChannelAnswer, ChannelQuery
from agent.channels.refine import VisualPlan
from agent.channels.retrieval import Query
from agent.config import QueryConfig
from agent.core.fuse import Calibration, ChannelProposal, FusedMoment, fuse
from agent.types import MAX_CURVE_POINTS, AnsweredBy, Coverage, Moment, QueryResult

MERGE_IOU = 0.5
"""Proposals of two channels overlapping this much are one moment."""
CURVE_MARGIN = 0.5
"""Curve kept around a moment, as a share of its duration on each side (at least 1 s): the rise and fall."""


class Clocked(Protocol):
    """A stream that maps stream seconds to wall-clock time (a StreamState)."""

    def wall_of(self, t: float) -> float | None: ...


def channel_query(
    query: Query, cfg: QueryConfig, *, prescreen: np.ndarray, refine: np.ndarray
) -> ChannelQuery:
    """The encoded form of ``query`` that channels search."""
    return ChannelQuery(
        {"prescreen": prescreen, "refine": refine},
        start=query.start,
        end=query.end,
        top_k=query.top_k or cfg.top_k,
        cfg=cfg,
        text=query.text or "",
        channels=frozenset(query.channels) if query.channels else None,
    )


def answer(
    found: Mapping[str, Mapping[str, ChannelAnswer]],
    states: Mapping[str, Clocked],
    query: ChannelQuery,
    *,
    meaningless: bool = False,
    holes: Mapping[str, np.ndarray] | None = None,
) -> dict[str, QueryResult]:
    """Fuse every stream's channel answers; one result per stream, moments best first.

    ``found`` maps stream -> channel -> answer. ``holes``: stream -> (m, 2) holes in its
    coverage, stream seconds; no moment overlaps one, whichever channel proposed it (see
    :mod:`agent.core.gaps`). A stream's result abstains when none of its moments reaches
    ``query.cfg.min_confidence``.
    """
    proposals: list[ChannelProposal] = []
    cals: dict[tuple[str, str, str], Calibration] = {}
    for stream, channels in found.items():
        for channel, ans in channels.items():
            proposals.extend(ans.proposals)
            cals.update({(stream, channel, kind): cal for kind, cal in ans.calibrations.items()})
    fused = fuse(
        proposals,
        cals,
        top_k=query.top_k,
        nms_iou=query.cfg.nms_iou,
        merge_iou=MERGE_IOU,
        threshold=query.cfg.min_confidence,
        holes=holes,
    )
    out: dict[str, QueryResult] = {}
    for stream, channels in found.items():
        curves = [ans.curve for ans in channels.values() if ans.curve is not None]
        moments = [_moment(m, states[stream], curves) for m in fused.for_stream(stream)]
        notes = [n for ans in channels.values() for n in ans.notes]
        coverage = _coverage(channels)
        if not moments:
            out[stream] = QueryResult([], coverage, "anchor", meaningless, notes)
            continue
        abstained = all(m.below_threshold for m in moments)
        if abstained:
            best = moments[0].confidence or 0.0
            notes.append(f"no confident match: best confidence {best:.3f} < {query.cfg.min_confidence:g}")
        by: AnsweredBy = "refine" if any(m.answered_by == "refine" for m in moments) else "anchor"
        out[stream] = QueryResult(moments, coverage, by, meaningless, notes, abstained=abstained)
    return out


Refiner = Callable[[dict[str, VisualPlan], float | None], dict[str, ChannelAnswer]]
"""Refines the plans of several streams until a deadline (time.monotonic seconds; None: no limit)."""


@dataclass(slots=True)
class PendingQuery:
    """A query with its first (prescreen) answer, whose refinement is still to run.

    ``others``: stream -> the other channels' answers (already final);
    ``plans``: stream -> the visual channel's prescreen plan. Every refine
    plan goes through ``refiner`` at once, so the refine order (expected
    gain) spans every searched stream.
    """

    query: ChannelQuery
    states: Mapping[str, Clocked]
    others: dict[str, dict[str, ChannelAnswer]]
    plans: dict[str, VisualPlan]
    refiner: Refiner
    meaningless: bool = False
    refine_vector: Callable[[], np.ndarray] | None = None
    """Encodes the query's refine vector when it differs from the prescreen one (first_vectors):
    called once, when refinement starts; the plans hold an empty vector until then."""
    first: dict[str, QueryResult] = field(init=False)
    """Per stream, the anchor-level answer (computed at construction)."""

    def __post_init__(self) -> None:
        self.first = answer(
            self._found({n: p.first for n, p in self.plans.items()}),
            self.states,
            self.query,
            meaningless=self.meaningless,
            holes=self._holes(),
        )

    @property
    def refinable(self) -> bool:
        """Whether refining may change the answer (some region has stored frames to re-encode)."""
        return any(p.regions and self._asked(p.channel) for p in self.plans.values())

    def refine(self, budget: float | None = None) -> dict[str, QueryResult]:
        """The answer after refining for at most ``budget`` seconds (None: everything planned).

        Blocking (frame reads, refine encoder): run it in a worker thread.
        An encoder call starts only when its frames are expected to fit in
        what is left of the budget (see :mod:`agent.channels.refine`).
        """
        if not self.refinable:
            return self.first
        deadline = None if budget is None else time.monotonic() + budget
        if self.refine_vector is not None:
            vec, self.refine_vector = self.refine_vector(), None
            self.query.vectors["refine"] = vec
            for plan in self.plans.values():
                plan.rvec = vec
        refined = self.refiner(self.plans, deadline)
        return answer(
            self._found(refined), self.states, self.query, meaningless=self.meaningless, holes=self._holes()
        )

    def _holes(self) -> dict[str, np.ndarray]:
        # The visual plan read the memory's holes; they bound every channel, asked or not.
        return {stream: plan.holes for stream, plan in self.plans.items()}

    def _found(self, visual: Mapping[str, ChannelAnswer]) -> dict[str, dict[str, ChannelAnswer]]:
        found: dict[str, dict[str, ChannelAnswer]] = {}
        for stream, plan in self.plans.items():
            mine = {plan.channel: visual[stream]} if self._asked(plan.channel) else {}
            found[stream] = {**mine, **self.others.get(stream, {})}
        return found

    def _asked(self, channel: str) -> bool:
        return self.query.channels is None or channel in self.query.channels


def _coverage(channels: Mapping[str, ChannelAnswer]) -> Coverage | None:
    # The visual channel's coverage is the stream's (other channels follow the same frames).
    for ans in channels.values():
        if ans.coverage is not None:
            return ans.coverage
    return None


def curve_around(
    times: np.ndarray, scores: np.ndarray, start: float, end: float, limit: int = MAX_CURVE_POINTS
) -> list[tuple[float, float]]:
    """The (time, score) points of a curve over [start, end] widened by :data:`CURVE_MARGIN`.

    ``times`` (n,) ascending stream seconds, ``scores`` (n,); at most ``limit`` points, evenly
    thinned (first and last kept), rounded to ms and 1e-4.
    """
    pad = max(1.0, CURVE_MARGIN * (end - start))
    inside = np.flatnonzero((times >= start - pad) & (times <= end + pad))
    if len(inside) > limit:
        inside = inside[np.unique(np.linspace(0, len(inside) - 1, limit).round().astype(np.int64))]
    return [(round(float(times[i]), 3), round(float(scores[i]), 4)) for i in inside]


def _moment(m: FusedMoment, state: Clocked, curves: list[tuple[np.ndarray, np.ndarray]]) -> Moment:
    by: AnsweredBy = "refine" if m.kind == "refine" else "anchor"
    # The refined curve is shown for refined moments only: an anchor-level one has no frames scored.
    curve = [p for t, s in curves for p in curve_around(t, s, m.start, m.end)] if by == "refine" else []
    return Moment(
        start=m.start,
        end=m.end,
        score=m.score,
        stream=m.stream,
        wall_start=state.wall_of(m.start),
        wall_end=state.wall_of(m.end),
        evidence=list(m.evidence),
        answered_by=by,
        confidence=m.confidence,
        channels=list(m.channels),
        below_threshold=m.below_threshold,
        quotes=dict(m.quotes),
        curve=sorted(curve)[:MAX_CURVE_POINTS],
        deferred=m.deferred,
    )
