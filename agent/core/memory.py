"""The rolling memory of one stream: anchors under a token budget (SMORE, online).

Embeddings arrive in time order. Each joins the newest anchor when it is
similar enough (cosine >= theta) and follows it without a gap; otherwise it
opens a new anchor. Each anchor is one *token* (its representative, the vector
handed to the LLM). Whenever tokens exceed the budget, the adjacent pair that
costs least under the merge rule is merged; queries score anchors by the
scorer (:mod:`agent.core.svd` and :mod:`agent.core.scoring`; defaults chosen in issue #15):

* merge ``"cosine"`` of ``"mean"`` representatives: SMORE's most similar
  adjacent pair, size-blind, so a short distinct stretch is as dear to merge
  as a long one (chosen by a pre-registered replication on fresh haystacks;
  ``"ward-young"``: Ward's least squared error added around the means, with an
  anchor begun within the last ``m`` members (``m`` = members per token) priced
  at least at ``m``, :mod:`agent.core.anchors`; plain ``"ward"`` folds every
  new frame into the newest anchor once the memory is compressed enough, so
  the newest footage pools into one anchor; ``"ward-context"``: Ward, but a
  short anchor that lies between its neighbours, a dissolve, folds at its
  distance from them, :func:`agent.core.anchors.fold_cost`; ``"dilution"``:
  the worst member's mean shift; ``"subspace"``: least energy off the rank-k
  span);
* scorer ``"energy"``: the RMS of the members' cosines to the query, read from
  the retained SVD, so a short stretch matching the query lifts the anchor it
  was merged into (``"rep"``: cosine to the token; ``"peak"``: mean + spread;
  ``"average"``: the mean member cosine);
* an optional finer level (``detail`` > 0, :mod:`agent.core.detail`) keeps the
  most distinctive stretches that merges folded away;
* optional sub-runs (``runs`` > 0, :mod:`agent.core.runs`): each anchor keeps up
  to ``runs`` consecutive runs of its members as k coefficients on its own basis,
  so :meth:`Memory.run_scores` says where inside an anchor a query matches.

The anchors and the budget merges among them live in :mod:`agent.core.anchors`
(``add`` stays O(d*k + log B)), their arrays in slots of the stacks queries score
(:mod:`agent.core.slots`); ingested coverage (:mod:`agent.core.coverage`)
is kept apart from the anchors, so a merge forced across a gap never claims
footage the memory never saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.core.anchors import ENTRY_BYTES, Anchor, AnchorChain
from agent.core.coverage import Coverage
from agent.core.detail import DetailLevel
from agent.core.runs import Runs, pack_runs, paint
from agent.core.scoring import SCORERS, Scorer
from agent.core.svd import (
    F32,
    F64,
    MERGE_RULES,
    MergeRule,
    Representative,
    pack_svds,
)

_Views = tuple[list[Anchor], F64, F64, npt.NDArray[np.int64]]

DEFAULT_MERGE: MergeRule = "cosine"
DEFAULT_REPRESENTATIVE: Representative = "mean"
DEFAULT_SCORER: Scorer = "energy"


class Memory:
    """Bounded memory of one stream: at most ``budget`` anchors (tokens)."""

    FORMAT_VERSION = 1

    def __init__(
        self,
        dim: int,
        *,
        budget: int,
        theta: float,
        rank: int = 4,
        representative: Representative = DEFAULT_REPRESENTATIVE,
        gap_seconds: float = 5.0,
        merge: MergeRule = DEFAULT_MERGE,
        scorer: Scorer = DEFAULT_SCORER,
        detail: int = 0,
        runs: int = 0,
    ) -> None:
        if dim < 1 or budget < 1 or rank < 1:
            raise ValueError("dim, budget and rank must be >= 1")
        if not math.isfinite(theta) or not (gap_seconds > 0 and math.isfinite(gap_seconds)):
            raise ValueError("theta must be finite and gap_seconds positive")
        if representative not in ("smore", "mean"):
            raise ValueError(f"unknown representative {representative!r}")
        if runs < 0:
            raise ValueError("runs must be >= 0")
        if merge not in MERGE_RULES or scorer not in SCORERS:
            raise ValueError(f"unknown merge rule {merge!r} or scorer {scorer!r}")
        self.merge: MergeRule = merge
        self.scorer: Scorer = scorer
        self.dim = dim
        self.budget = budget
        self.theta = float(theta)
        self.rank = rank
        self.representative: Representative = representative
        self.gap_seconds = float(gap_seconds)
        self._chain = AnchorChain(budget, rank, merge, representative, DetailLevel(detail), runs, dim=dim)
        self._coverage = Coverage(budget)
        self._last_start = -math.inf
        self._break = False
        """A hole was reported (:meth:`break_coverage`): the next add or extend starts a new interval."""
        self._cache: _Views | None = None
        self._reps: tuple[npt.NDArray[np.int64], F32] | None = None
        """(the views' slots, their tokens (n, d) in time order), gathered on demand (:meth:`matrix`)."""

    # ---------------------------------------------------------------- ingest

    def add(self, start: float, end: float, embedding: npt.ArrayLike) -> None:
        """Fold one embedding covering stream times [start, end] into the memory.

        Raises ValueError for times that go backwards (``start`` before the
        previous ``start``), ``end < start``, or an embedding that is not a
        finite, non-zero vector of length ``dim``; the memory is unchanged then.
        """
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"bad time span [{start}, {end}]")
        if start < self._last_start:
            raise ValueError(f"start {start} precedes the previous start {self._last_start}")
        vec = np.asarray(embedding, dtype=np.float64)
        if vec.shape != (self.dim,) or not np.all(np.isfinite(vec)):
            raise ValueError(f"embedding must be a finite vector of shape ({self.dim},), got {vec.shape}")
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            raise ValueError("embedding is the zero vector")
        self._last_start = start
        self._cache = None
        last = self._chain.newest
        if last is None:
            self._coverage.cover(start, end, True)
            self._chain.append(start, end, vec)
            return
        gap = self._break or start - last.end > self.gap_seconds
        self._break = False
        self._coverage.cover(start, end, gap)
        if not gap and float(last.rep @ vec) >= self.theta * norm:
            last.update(start, vec, self.representative, self._chain.runs)
            self._chain.refresh(last)
            self._chain.joined()
            last.end = max(last.end, end)
            return
        if not gap:
            # Close the seam so consecutive anchors leave no hole in time.
            last.end = max(last.end, start)
        self._chain.append(max(start, last.end), max(end, last.end), vec)
        self._chain.enforce_budget()

    def extend(self, t: float) -> None:
        """Stretch the newest anchor to stream time ``t`` (a frame the gate skipped as static)."""
        t = float(t)
        last = self._chain.newest
        if last is None:
            raise ValueError("extend() before any add()")
        if not math.isfinite(t) or t < self._last_start:
            raise ValueError(f"time {t} precedes the previous start {self._last_start}")
        if t <= last.end:
            return
        self._cache = None
        self._coverage.cover(t, t, self._break or t - last.end > self.gap_seconds)
        self._break = False
        last.end = t

    def break_coverage(self) -> None:
        """The footage after the newest add was not retained (its encoding was given up).

        The next :meth:`add` or :meth:`extend` then starts a new coverage
        interval and a new anchor, however short the hole: a lost span is a
        gap in coverage, never counted as retained. No-op on an empty memory.
        """
        self._break = self._chain.newest is not None

    @property
    def coverage_broken(self) -> bool:
        """A :meth:`break_coverage` is pending: no add or extend since (saved in snapshots)."""
        return self._break

    @property
    def detail(self) -> DetailLevel:
        """The finer level (:mod:`agent.core.detail`): up to ``detail`` merged-away stretches."""
        return self._chain.detail

    @detail.setter
    def detail(self, level: DetailLevel) -> None:
        self._chain.detail = level

    # ---------------------------------------------------------------- views

    @property
    def tokens(self) -> int:
        """Number of tokens (== anchors)."""
        return len(self._chain)

    @property
    def heap_entries(self) -> int:
        """Entries in the internal pair heap, stale ones included (diagnostic; O(budget))."""
        return self._chain.heap_entries

    @property
    def forgotten_gap_seconds(self) -> float:
        """Seconds of gaps counted as covered because the interval list hit its bound."""
        return self._coverage.forgotten

    def _views(self) -> _Views:
        cache = self._cache
        if cache is None:
            anchors = list(self._chain)
            starts = np.array([a.start for a in anchors], dtype=np.float64)
            ends = np.array([a.end for a in anchors], dtype=np.float64)
            slots = np.array([a.slot for a in anchors], dtype=np.int64)
            for arr in (starts, ends, slots):
                arr.setflags(write=False)
            cache = self._cache = (anchors, starts, ends, slots)
        return cache

    @property
    def anchors(self) -> Sequence[Anchor]:
        """Anchors ordered by time (a snapshot list; do not mutate the anchors)."""
        return tuple(self._views()[0])

    def times(self) -> tuple[F64, F64]:
        """(starts (n,), ends (n,)) of the anchors in time order; read-only, cached until the next change."""
        _, starts, ends, _ = self._views()
        return starts, ends

    def matrix(self) -> tuple[F64, F64, F32]:
        """(starts (n,), ends (n,), reps (n, d)); read-only, cached until the next change.

        The tokens are gathered from the slots on the first call after a change (a copy of
        ``n * d`` float32): callers that need only the times use :meth:`times`.
        """
        _, starts, ends, slots = self._views()
        held = self._reps
        if held is not None and held[0] is slots:
            return starts, ends, held[1]
        reps = self._chain.slots.gather_reps(slots)
        reps.setflags(write=False)
        self._reps = (slots, reps)
        return starts, ends, reps

    def scores(self, query: npt.ArrayLike) -> F64:
        """Scores (n,) of the anchors in time order for a unit query (d,), by ``scorer``.

        ``"rep"``: cosine to each representative token; the others read each
        anchor's retained SVD (:func:`agent.core.scoring.score_anchors`). Raises
        ValueError for a query of another shape.
        """
        vec = np.asarray(query, np.float64)
        if vec.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {vec.shape}")
        anchors, _, _, slots = self._views()
        if self.scorer == "rep" or not anchors:
            return np.asarray(self.matrix()[2].astype(np.float64) @ vec, np.float64)
        # Every anchor's SVD already sits in its slot of the stacks (kept there on every change,
        # :mod:`agent.core.slots`): nothing is stacked or copied per query.
        return self._chain.slots.scores(vec, slots, self.scorer)

    def run_scores(self, query: npt.ArrayLike) -> tuple[F64, F64, F64]:
        """(starts, ends, scores) of every anchor's sub-runs (:mod:`agent.core.runs`), in time order.

        Each run scores its anchor's score (:meth:`scores`) less how far its
        mean cosine falls below the anchor's best run, so an anchor's best run
        carries its score and the anchor ranking is that of :meth:`scores`.
        Empty arrays when the memory keeps no runs.
        """
        vec = np.asarray(query, np.float64)
        anchor_scores = self.scores(vec)
        starts: list[F64] = []
        ends: list[F64] = []
        painted: list[F64] = []
        for a, score in zip(self._views()[0], anchor_scores, strict=True):
            if a.runs is None:
                continue
            proj = a.svd.basis.astype(np.float64) @ vec
            starts.append(a.runs.starts)
            ends.append(np.append(a.runs.starts[1:], a.end))
            painted.append(paint(float(score), a.runs.scores(proj)))
        if not starts:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return np.concatenate(starts), np.concatenate(ends), np.concatenate(painted)

    def detail_scores(self, query: npt.ArrayLike) -> tuple[F64, F64, F64]:
        """(starts, ends, scores) of the finer level's stretches by ``scorer``, least distinctive first."""
        return self.detail.scores(query, self.scorer, self.representative, self.rank)

    def spans(self) -> list[tuple[float, float]]:
        """Ingested coverage intervals in time order; the holes between them are gaps."""
        return [(s, e) for s, e in self._coverage.spans]

    def coverage(self, start: float, end: float) -> tuple[float, float]:
        """(retained seconds of [start, end], mean seconds per token of the anchors overlapping it).

        Retained seconds count only ingested intervals (never a gap an anchor
        was stretched over). The resolution is the mean duration of the
        anchors overlapping the range (a zero-length range overlaps the
        anchors containing its instant); ``inf`` when no anchor overlaps it.
        """
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"bad time range [{start}, {end}]")
        retained = self._coverage.retained(start, end)
        _, starts, ends, _ = self._views()
        if end > start:
            hit = (starts < end) & (ends > start)
        else:
            hit = (starts <= start) & (ends >= start)
        if not np.any(hit):
            return retained, math.inf
        return retained, float(np.mean(ends[hit] - starts[hit]))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: every anchor's SVD and token, the heap, the spans, the finer level."""
        total = ENTRY_BYTES * self._chain.heap_entries + self._coverage.nbytes
        for a in self._views()[0]:
            total += a.svd.nbytes + a.rep.nbytes + 16 + (0 if a.runs is None else a.runs.nbytes)
        return total + self.detail.nbytes

    @property
    def slot_bytes(self) -> int:
        """Bytes the slot stacks reserve: every allocated slot, padded to ``rank`` (diagnostic)."""
        return self._chain.slots.nbytes

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays (bases zero-padded to ``rank`` rows), config and FORMAT_VERSION."""
        anchors = self._views()[0]
        starts, ends, reps = self.matrix()
        return {
            "format_version": np.array(self.FORMAT_VERSION, np.int64),
            "dim": np.array(self.dim, np.int64),
            "budget": np.array(self.budget, np.int64),
            "rank": np.array(self.rank, np.int64),
            "theta": np.array(self.theta, np.float64),
            "gap_seconds": np.array(self.gap_seconds, np.float64),
            "representative": np.array(self.representative),
            "merge": np.array(self.merge),
            "scorer": np.array(self.scorer),
            "starts": starts.copy(),
            "ends": ends.copy(),
            "reps": reps.copy(),
            **pack_svds([a.svd for a in anchors], self.rank, self.dim),
            "spans": np.asarray(self._coverage.spans, np.float64).reshape(-1, 2),
            "last_start": np.array(self._last_start, np.float64),
            "forgotten_gap_seconds": np.array(self._coverage.forgotten, np.float64),
            "coverage_break": np.array(self._break, np.bool_),
            **(self.detail.state_dict(self.rank, self.dim) if self.detail.bound else {}),
            **(pack_runs(self._runs(anchors), self.runs, self.rank) if self.runs else {}),
        }

    @property
    def runs(self) -> int:
        """Sub-runs kept per anchor (:mod:`agent.core.runs`; 0: none)."""
        return self._chain.runs

    @staticmethod
    def _runs(anchors: Sequence[Anchor]) -> list[Runs]:
        return [a.runs for a in anchors if a.runs is not None]

    def restore(
        self,
        anchors: Sequence[Anchor],
        spans: list[list[float]],
        last_start: float,
        forgotten: float,
        coverage_break: bool = False,
    ) -> None:
        """Fill an empty memory with validated anchors (used by :mod:`agent.store.memory_store`).

        ``coverage_break``: a :meth:`break_coverage` was pending when the state was saved.
        """
        self._chain.restore(anchors)
        self._coverage.spans = spans
        self._last_start = last_start
        self._coverage.forgotten = forgotten
        self._break = coverage_break and bool(anchors)
        self._cache = None
