"""Holes in a stream's coverage, and the one rule that keeps moments off them.

A *hole* is a stretch of stream time the memory never saw: the time between
two of its coverage intervals, which the memory only opens where media stopped
for longer than its gap threshold (an outage, a missing segment, dropped
super-images). Holes are passed around as an ``(m, 2)`` float array of
``[start, end)`` stream seconds, sorted and disjoint (:func:`as_holes`).

**The rule.** A moment never overlaps a hole. A moment ``[start, end)`` that
does is cut at every hole into *covered pieces*, and the piece that holds its
peak (the best-scoring frame, which was seen, so lies in a covered piece) is
kept with the moment's score; the other pieces are dropped, since nothing says
they hold the evidence. A peak that itself lies inside a hole (a span scored as
a whole, such as an anchor merged across the hole, whose "peak" is its middle)
is moved to the nearest covered edge first. A moment lying wholly inside a hole
is dropped. Where a score belongs to the whole span rather than to a peak (an
anchor), the caller splits it with :func:`covered_pieces` and keeps every piece.

Touching is not overlapping: a moment may end exactly where a hole starts.
Numeric only: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from agent.errors import QueryError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def holes_between(spans: Sequence[tuple[float, float]]) -> FloatArray:
    """The ``(m, 2)`` holes between ordered coverage intervals ``spans`` (``[(start, end), ...]``, seconds)."""
    found = [(a[1], b[0]) for a, b in pairwise(spans) if b[0] > a[1]]
    return np.array(found, dtype=np.float64).reshape(-1, 2)


def as_holes(holes: npt.ArrayLike | None) -> FloatArray:
    """``holes`` as a sorted ``(m, 2)`` float array (None: no holes).

    Raises:
        QueryError: not ``(m, 2)``, not finite, a hole with ``end <= start``, or overlapping holes.
    """
    h = np.zeros((0, 2), dtype=np.float64) if holes is None else np.asarray(holes, dtype=np.float64)
    if h.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != 2:
        raise QueryError(f"holes must be an (m, 2) array of [start, end), got shape {h.shape}")
    if not np.isfinite(h).all() or np.any(h[:, 1] <= h[:, 0]):
        raise QueryError("holes must be finite with end > start")
    h = h[np.argsort(h[:, 0], kind="stable")]
    if np.any(h[1:, 0] < h[:-1, 1]):
        raise QueryError("holes must not overlap")
    return h


def separated(times: FloatArray, holes: FloatArray) -> BoolArray:
    """(n - 1,) whether a hole lies between each pair of consecutive ``times`` (n,) (sorted seconds)."""
    if holes.shape[0] == 0 or times.size < 2:
        return np.zeros(max(times.size - 1, 0), dtype=bool)
    # Holes starting before the later frame, less those ended by the earlier one: those in between.
    started = np.searchsorted(holes[:, 0], times[1:], side="left")
    ended = np.searchsorted(holes[:, 1], times[:-1], side="right")
    return np.asarray(started > ended)


def clip_to_covered(
    starts: npt.ArrayLike, ends: npt.ArrayLike, peaks: npt.ArrayLike, holes: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:
    """Each window ``[start, end)`` cut to the covered piece holding its peak (the module's rule).

    Args:
        starts, ends, peaks: (n,) stream seconds of each window and its best frame.
        holes: (m, 2) sorted, disjoint holes (:func:`as_holes`).

    Returns:
        (starts, ends, peaks, kept), each (n,): the clipped windows, their peaks (moved out of a
        hole to its nearest edge, else unchanged) and whether anything covered is left of each
        window (False: it lay wholly in a hole; its other values are then meaningless).
    """
    s = np.asarray(starts, dtype=np.float64).copy()
    e = np.asarray(ends, dtype=np.float64).copy()
    p = np.asarray(peaks, dtype=np.float64).copy()
    if holes.shape[0] == 0 or s.size == 0:
        return s, e, p, e > s
    lo_h, hi_h = holes[:, 0], holes[:, 1]
    # A peak inside a hole goes to the nearer edge (ties: the earlier, covered, side).
    i = np.searchsorted(lo_h, p, side="right") - 1
    inside = (i >= 0) & (p > lo_h[np.maximum(i, 0)]) & (p < hi_h[np.maximum(i, 0)])
    a, b = lo_h[np.maximum(i, 0)], hi_h[np.maximum(i, 0)]
    p = np.where(inside, np.where(p - a <= b - p, a, b), p)
    # The covered piece around the peak: from the last hole ending at or before it to the first
    # hole starting at or after it.
    j = np.searchsorted(hi_h, p, side="right") - 1
    k = np.searchsorted(lo_h, p, side="left")
    piece_lo = np.where(j >= 0, hi_h[np.maximum(j, 0)], -np.inf)
    piece_hi = np.where(k < lo_h.size, lo_h[np.minimum(k, lo_h.size - 1)], np.inf)
    s = np.maximum(s, piece_lo)
    e = np.minimum(e, piece_hi)
    return s, e, p, e > s


def covered_pieces(start: float, end: float, holes: FloatArray) -> list[tuple[float, float]]:
    """The covered parts of ``[start, end)`` between ``holes`` (m, 2), in time order; [] if none."""
    pieces: list[tuple[float, float]] = []
    cursor = start
    for a, b in holes:
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            pieces.append((cursor, float(a)))
        cursor = max(cursor, float(b))
    if end > cursor:
        pieces.append((cursor, end))
    return pieces
