"""The rolling memory of one stream: anchors under a token budget (SMORE, online).

Embeddings arrive in time order. Each joins the newest anchor when it is
similar enough (cosine >= theta) and follows it without a gap; otherwise it
opens a new anchor. Each anchor is one *token* (its representative, the vector
handed to the LLM). Whenever tokens exceed the budget, the adjacent pair that
costs least under the merge rule is merged; queries score anchors by the
scorer (both in :mod:`agent.core.svd`; defaults chosen in issue #15):

* merge ``"ward"``: the least squared error added around the means, so long
  near-identical stretches pool and distinct ones survive (``"cosine"``:
  SMORE's most similar pair; ``"subspace"``: least energy off the rank-k span);
* scorer ``"energy"``: the RMS of the members' cosines to the query, read from
  the retained SVD, so a short stretch matching the query lifts the anchor it
  was merged into (``"rep"``: cosine to the token; ``"peak"``: mean + spread);
* an optional finer level (``detail`` > 0, :mod:`agent.core.detail`) keeps the
  most distinctive stretches that merges folded away.

Bookkeeping that keeps ``add`` at O(d*k + log B): anchors form a doubly
linked list (merges unlink in O(1)); closed adjacent pairs sit in a heap keyed
by (crosses a gap, cost) with lazy invalidation (each node's version is bumped
whenever its right pair changes; stale entries are skipped when popped, and
the heap is rebuilt when they pile up, so it stays O(B)); the pair ending at
the open anchor changes on every join, so it is scored on demand; ingested
coverage (:mod:`agent.core.coverage`) is kept apart from the anchors, so a
merge forced across a gap never claims footage the memory never saw.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.coverage import Coverage
from agent.core.detail import DetailLevel
from agent.core.svd import (
    F32,
    F64,
    MERGE_RULES,
    SCORERS,
    MergeRule,
    Representative,
    Scorer,
    TruncatedSVD,
    merge_cost,
    pack_svds,
    score_anchors,
)

_HEAP_SLACK = 4
"""Rebuild the pair heap when it holds more than this many entries per token."""
_ENTRY_BYTES = 40
"""Payload of one heap entry (five 8-byte numbers), for ``nbytes``."""


@dataclass(eq=False)
class Anchor:
    """A contiguous time span of the memory and its SVD summary."""

    start: float
    end: float
    svd: TruncatedSVD
    rep: F32
    """(d,) unit float32 token; recomputed whenever ``svd`` changes."""

    @property
    def duration(self) -> float:
        return self.end - self.start


class _Node:
    """A linked-list cell around an anchor; ``version`` guards its right pair in the heap."""

    __slots__ = ("alive", "anchor", "next", "prev", "version")

    def __init__(self, anchor: Anchor, prev: _Node | None) -> None:
        self.anchor = anchor
        self.prev = prev
        self.next: _Node | None = None
        self.version = 0
        self.alive = True


_Entry = tuple[int, float, int, int, _Node]
"""(crosses a gap, merge cost, sequence, version of left node, left node)."""
_Views = tuple[list[Anchor], F64, F64, F32]
_Packed = tuple[F32, F32, F64, npt.NDArray[np.int64]]

DEFAULT_MERGE: MergeRule = "ward"
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
        representative: Representative = "smore",
        gap_seconds: float = 5.0,
        merge: MergeRule = DEFAULT_MERGE,
        scorer: Scorer = DEFAULT_SCORER,
        detail: int = 0,
    ) -> None:
        if dim < 1 or budget < 1 or rank < 1:
            raise ValueError("dim, budget and rank must be >= 1")
        if not math.isfinite(theta) or not (gap_seconds > 0 and math.isfinite(gap_seconds)):
            raise ValueError("theta must be finite and gap_seconds positive")
        if representative not in ("smore", "mean"):
            raise ValueError(f"unknown representative {representative!r}")
        if merge not in MERGE_RULES or scorer not in SCORERS:
            raise ValueError(f"unknown merge rule {merge!r} or scorer {scorer!r}")
        self.merge: MergeRule = merge
        self.scorer: Scorer = scorer
        self.detail = DetailLevel(detail)
        """The finer level (:mod:`agent.core.detail`): up to ``detail`` merged-away stretches."""
        self.dim = dim
        self.budget = budget
        self.theta = float(theta)
        self.rank = rank
        self.representative: Representative = representative
        self.gap_seconds = float(gap_seconds)
        self._head: _Node | None = None
        self._tail: _Node | None = None
        self._count = 0
        self._heap: list[_Entry] = []
        self._seq = 0
        self._coverage = Coverage(budget)
        self._last_start = -math.inf
        self._break = False
        """A hole was reported (:meth:`break_coverage`): the next add or extend starts a new interval."""
        self._cache: _Views | None = None
        self._packed: _Packed | None = None

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
        tail = self._tail
        if tail is None:
            self._coverage.cover(start, end, True)
            self._append(start, end, vec)
            return
        last = tail.anchor
        gap = self._break or start - last.end > self.gap_seconds
        self._break = False
        self._coverage.cover(start, end, gap)
        if not gap and float(last.rep @ vec) >= self.theta * norm:
            last.svd.update(vec)
            last.rep = last.svd.representative(self.representative)
            last.end = max(last.end, end)
            return
        if not gap:
            # Close the seam so consecutive anchors leave no hole in time.
            last.end = max(last.end, start)
        self._append(max(start, last.end), max(end, last.end), vec)
        self._enforce_budget()

    def extend(self, t: float) -> None:
        """Stretch the newest anchor to stream time ``t`` (a frame the gate skipped as static)."""
        t = float(t)
        if self._tail is None:
            raise ValueError("extend() before any add()")
        if not math.isfinite(t) or t < self._last_start:
            raise ValueError(f"time {t} precedes the previous start {self._last_start}")
        last = self._tail.anchor
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
        self._break = self._tail is not None

    def _append(self, start: float, end: float, vec: F64) -> None:
        svd = TruncatedSVD.from_vector(vec, self.rank)
        node = _Node(Anchor(start, end, svd, svd.representative(self.representative)), self._tail)
        old_tail, self._tail = self._tail, node
        self._count += 1
        if old_tail is None:
            self._head = node
            return
        old_tail.next = node
        if old_tail.prev is not None:
            # The pair ending at the old tail stops changing now: it can enter the heap.
            self._push(old_tail.prev)

    # ---------------------------------------------------------------- budget

    def _push(self, left: _Node) -> None:
        """(Re)score the pair (left, left.next), invalidating its older entries."""
        left.version += 1
        right = left.next
        if right is None or right is self._tail:
            return
        gap, cost = self._pair_key(left, right)
        self._seq += 1
        heapq.heappush(self._heap, (gap, cost, self._seq, left.version, left))

    def _pair_key(self, left: _Node, right: _Node) -> tuple[int, float]:
        """(crosses a gap, cost): pairs across a gap merge last, then the cheapest first."""
        a, b = left.anchor, right.anchor
        gap = int(a.end < b.start)
        if self.merge == "cosine":
            return gap, -float(a.rep @ b.rep)
        return gap, merge_cost(a.svd, b.svd, self.merge)

    def _valid(self, entry: _Entry) -> bool:
        node = entry[4]
        return (
            node.alive and node.version == entry[3] and node.next is not None and node.next is not self._tail
        )

    def _enforce_budget(self) -> None:
        while self._count > self.budget:
            while self._heap and not self._valid(self._heap[0]):
                heapq.heappop(self._heap)
            left = self._pick()
            self._merge(left)
        if len(self._heap) > _HEAP_SLACK * self.budget + 64:
            self._rebuild_heap()

    def _pick(self) -> _Node:
        """The left node of the best pair: the heap's top or the open pair at the tail."""
        tail = self._tail
        assert tail is not None and tail.prev is not None  # count > budget >= 1
        open_key = self._pair_key(tail.prev, tail)
        if self._heap and self._heap[0][:2] <= open_key:
            return heapq.heappop(self._heap)[4]
        return tail.prev

    def _merge(self, left: _Node) -> None:
        right = left.next
        assert right is not None
        a, b = left.anchor, right.anchor
        if self.detail.bound:
            # The shorter side loses its identity; its SVD is no longer changed after this merge.
            # Distinctiveness is the squared distance of the means, blind to length: Ward's cost
            # (length x distance) is what made the merge cheap, and a needle is short by nature.
            short = a if a.svd.count <= b.svd.count else b
            diff = a.svd.mean() - b.svd.mean()
            self.detail.offer(float(diff @ diff), short.start, short.end, short.svd)
        a.svd = a.svd.merge(b.svd)
        a.rep = a.svd.representative(self.representative)
        a.end = max(a.end, b.end)
        right.alive = False
        left.next = right.next
        if right.next is None:
            self._tail = left
        else:
            right.next.prev = left
        self._count -= 1
        self._push(left)
        if left.prev is not None:
            self._push(left.prev)

    def _rebuild_heap(self) -> None:
        self._heap = []
        node = self._head
        while node is not None:
            self._push(node)
            node = node.next

    # ---------------------------------------------------------------- views

    @property
    def tokens(self) -> int:
        """Number of tokens (== anchors)."""
        return self._count

    @property
    def heap_entries(self) -> int:
        """Entries in the internal pair heap, stale ones included (diagnostic; O(budget))."""
        return len(self._heap)

    @property
    def forgotten_gap_seconds(self) -> float:
        """Seconds of gaps counted as covered because the interval list hit its bound."""
        return self._coverage.forgotten

    def _views(self) -> _Views:
        if self._cache is None:
            self._packed = None
            anchors: list[Anchor] = []
            node = self._head
            while node is not None:
                anchors.append(node.anchor)
                node = node.next
            starts = np.array([a.start for a in anchors], dtype=np.float64)
            ends = np.array([a.end for a in anchors], dtype=np.float64)
            reps = (
                np.stack([a.rep for a in anchors]).astype(np.float32)
                if anchors
                else np.zeros((0, self.dim), np.float32)
            )
            for arr in (starts, ends, reps):
                arr.setflags(write=False)
            self._cache = (anchors, starts, ends, reps)
        return self._cache

    @property
    def anchors(self) -> Sequence[Anchor]:
        """Anchors ordered by time (a snapshot list; do not mutate the anchors)."""
        return tuple(self._views()[0])

    def matrix(self) -> tuple[F64, F64, F32]:
        """(starts (n,), ends (n,), reps (n, d)); read-only, cached until the next change."""
        _, starts, ends, reps = self._views()
        return starts, ends, reps

    def scores(self, query: npt.ArrayLike) -> F64:
        """Scores (n,) of the anchors in time order for a unit query (d,), by ``scorer``.

        ``"rep"``: cosine to each representative token; the others read each
        anchor's retained SVD (:func:`agent.core.svd.score_anchors`). Raises
        ValueError for a query of another shape.
        """
        vec = np.asarray(query, np.float64)
        if vec.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {vec.shape}")
        anchors, _, _, reps = self._views()
        if self.scorer == "rep" or not anchors:
            return np.asarray(reps.astype(np.float64) @ vec, np.float64)
        if self._packed is None:
            packed = pack_svds([a.svd for a in anchors], self.rank, self.dim)
            counts = packed["counts"]
            self._packed = (packed["basis"], packed["sigma"], packed["totals"] / counts[:, None], counts)
        basis, sigma, means, counts = self._packed
        return score_anchors(vec, basis, sigma, means, counts, self.scorer)

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
        total = _ENTRY_BYTES * len(self._heap) + self._coverage.nbytes
        for a in self._views()[0]:
            total += a.svd.nbytes + a.rep.nbytes + 16
        return total + self.detail.nbytes

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
            **(self.detail.state_dict(self.rank, self.dim) if self.detail.bound else {}),
        }

    def restore(
        self, anchors: Sequence[Anchor], spans: list[list[float]], last_start: float, forgotten: float
    ) -> None:
        """Fill an empty memory with validated anchors (used by :mod:`agent.store.memory_store`)."""
        for a in anchors:
            node = _Node(a, self._tail)
            if self._tail is None:
                self._head = node
            else:
                self._tail.next = node
            self._tail = node
        self._count = len(anchors)
        self._coverage.spans = spans
        self._last_start = last_start
        self._coverage.forgotten = forgotten
        self._cache = None
        self._rebuild_heap()
