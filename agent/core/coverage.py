"""Ingested coverage of one stream: the time intervals the memory saw, kept apart from its anchors.

Anchors may be merged across a gap (the budget forces it); the memory must
still never claim footage it never saw, so ingested time is recorded here as
ordered, disjoint intervals. The list is bounded: past ``max(16, 4 * budget)``
intervals the shortest gap is counted as covered and its seconds are reported
(:attr:`Coverage.forgotten`) instead of hidden.
"""

from __future__ import annotations

import numpy as np

_SPAN_SLACK = 4
"""Keep at most this many coverage intervals per token."""


class Coverage:
    """Ordered, disjoint ``[start, end]`` intervals of ingested stream time, bounded in count."""

    def __init__(self, budget: int) -> None:
        self.limit = max(16, _SPAN_SLACK * budget)
        self.spans: list[list[float]] = []
        self.forgotten = 0.0
        """Seconds of gaps counted as covered because the interval list hit its bound."""

    def __len__(self) -> int:
        return len(self.spans)

    def cover(self, start: float, end: float, gap: bool) -> None:
        """Record ingested time: a new interval after a gap (or the first), else stretch the last one."""
        if gap or not self.spans:
            self.spans.append([start, end])
            if len(self.spans) > self.limit:
                self._forget_shortest_gap()
        else:
            self.spans[-1][1] = max(self.spans[-1][1], end)

    def _forget_shortest_gap(self) -> None:
        arr = np.asarray(self.spans)
        i = int(np.argmin(arr[1:, 0] - arr[:-1, 1]))
        self.forgotten += float(arr[i + 1, 0] - arr[i, 1])
        self.spans[i][1] = self.spans[i + 1][1]
        del self.spans[i + 1]

    def retained(self, start: float, end: float) -> float:
        """Ingested seconds inside [start, end]."""
        if not self.spans:
            return 0.0
        spans = np.asarray(self.spans, dtype=np.float64)
        overlap = np.minimum(spans[:, 1], end) - np.maximum(spans[:, 0], start)
        return float(np.clip(overlap, 0.0, None).sum())

    @property
    def nbytes(self) -> int:
        return 16 * len(self.spans)
