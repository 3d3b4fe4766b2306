"""The memory's optional finer level: the most distinctive stretches that budget merges folded away.

A memory at its budget keeps one coarse anchor per stretch. When a merge folds
a shorter anchor into its neighbour, that anchor's own SVD is *offered* here
with its distinctiveness (the squared error the merge adds around the means,
Ward's cost, :func:`agent.core.svd.merge_cost`). The level keeps the ``bound``
most distinctive offers in a min-heap, so an offer costs O(log bound) and the
level's bytes are bounded: the memory stays flat once full. Queries score these
stretches like anchors; where one scores, it speaks for its span instead of the
coarse anchor that absorbed it. Stretches never merge again, and one may lie
inside another (an anchor offered, then the anchor that absorbed it).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.scoring import Scorer, score_totals
from agent.core.svd import F64, Representative, TruncatedSVD, pack_svds, unpack_svds


@dataclass(frozen=True)
class Stretch:
    """One finer-level entry: a span, its SVD when it was merged away, its distinctiveness."""

    cost: float
    start: float
    end: float
    svd: TruncatedSVD


class DetailLevel:
    """At most ``bound`` stretches, the most distinctive kept (``bound`` 0: the level is off)."""

    def __init__(self, bound: int) -> None:
        if bound < 0:
            raise ValueError("the detail bound must be >= 0")
        self.bound = bound
        self._heap: list[tuple[float, int, Stretch]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def offer(self, cost: float, start: float, end: float, svd: TruncatedSVD) -> None:
        """Keep the stretch if it is among the ``bound`` most distinctive offered (O(log bound)).

        ``svd`` is kept by reference (made to own its arrays): the caller hands over an SVD it
        no longer changes.
        """
        if self.bound == 0:
            return
        self._seq += 1
        key = (float(cost), self._seq)
        if len(self._heap) >= self.bound and key <= self._heap[0][:2]:
            return
        svd.own()  # kept: the memory reuses the slot its views read (agent.core.slots)
        entry = (*key, Stretch(float(cost), float(start), float(end), svd))
        if len(self._heap) < self.bound:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def stretches(self) -> list[Stretch]:
        """Kept stretches, least distinctive first (so the most distinctive is painted last)."""
        return [e[2] for e in sorted(self._heap, key=lambda e: e[:2])]

    @property
    def nbytes(self) -> int:
        """Bytes of the SVDs and spans held (24 per entry for cost, start, end)."""
        return sum(e[2].svd.nbytes + 24 for e in self._heap)

    def state_dict(self, rank: int, dim: int) -> dict[str, np.ndarray]:
        """Flat arrays under ``detail_*`` keys (SVDs packed as :func:`pack_svds` does)."""
        kept = self.stretches()
        arrays: dict[str, np.ndarray] = {
            "detail_bound": np.array(self.bound, np.int64),
            "detail_costs": np.array([s.cost for s in kept], np.float64),
            "detail_spans": np.array([[s.start, s.end] for s in kept], np.float64).reshape(-1, 2),
        }
        arrays.update({f"detail_{k}": v for k, v in pack_svds([s.svd for s in kept], rank, dim).items()})
        return arrays

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], rank: int, dim: int) -> DetailLevel:
        """Inverse of :meth:`state_dict`; a state without ``detail_bound`` is a level that is off.

        Raises ValueError (or KeyError) when arrays are missing or inconsistent.
        """
        if "detail_bound" not in state:
            return cls(0)
        level = cls(int(np.asarray(state["detail_bound"])))
        costs = np.asarray(state["detail_costs"], np.float64)
        spans = np.asarray(state["detail_spans"], np.float64)
        n = costs.shape[0]
        if costs.ndim != 1 or spans.shape != (n, 2) or n > level.bound:
            raise ValueError("detail level arrays are inconsistent")
        if not (
            np.all(np.isfinite(costs)) and np.all(np.isfinite(spans)) and np.all(spans[:, 1] >= spans[:, 0])
        ):
            raise ValueError("detail level has non-finite values or backward spans")
        svds = unpack_svds(
            {k[len("detail_") :]: v for k, v in state.items() if k.startswith("detail_")}, n, rank, dim
        )
        for cost, (start, end), svd in zip(costs, spans, svds, strict=True):
            level.offer(float(cost), float(start), float(end), svd)
        return level

    def scores(
        self, query: npt.ArrayLike, scorer: Scorer, representative: Representative, rank: int
    ) -> tuple[F64, F64, F64]:
        """(starts, ends, scores) of the kept stretches for a unit query, least distinctive first."""
        vec = np.asarray(query, np.float64)
        kept = self.stretches()
        starts, ends = self.spans()
        if not kept:
            return starts, ends, np.zeros(0, np.float64)
        if scorer == "rep":
            reps = np.stack([s.svd.representative(representative) for s in kept]).astype(np.float64)
            return starts, ends, np.asarray(reps @ vec, np.float64)
        p = pack_svds([s.svd for s in kept], rank, vec.shape[0])
        return starts, ends, score_totals(vec, p["basis"], p["sigma"], p["totals"], p["counts"], scorer)

    def spans(self) -> tuple[F64, F64]:
        """(starts, ends) of the kept stretches, in :meth:`stretches` order."""
        kept = self.stretches()
        return (
            np.array([s.start for s in kept], np.float64),
            np.array([s.end for s in kept], np.float64),
        )
