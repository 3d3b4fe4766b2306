"""Turn a per-frame query-similarity curve into scored moment proposals (training-free).

Method, in order:

1. **Segments.** Sampled frames are split into segments wherever consecutive times are more than
   ``GAP_FACTOR`` (3) times the median spacing apart, and wherever one of the caller's coverage
   ``holes`` lies between them: a moment never bridges a hole in the record (dropped frames, an
   outage, a missing segment, evicted memory).
2. **Smoothing.** An optional centred moving average of ``smooth`` frames, computed inside each
   segment with edge values repeated, so one noisy frame cannot split or create a moment.
3. **Multi-threshold grouping** (a watershed seen from above). With the median of the curve as
   baseline ``b`` and its maximum ``m``, every level ``b + f * (m - b)`` for
   ``f = 0.0, 0.1, ..., 0.9`` cuts the curve; each contiguous run of frames at or above a level,
   inside one segment, is a candidate. Low levels give wide windows around a bump, high levels its
   core, so every plausible extent of every bump is offered.
4. **Scoring by contrast.** A candidate's contrast is the mean (smoothed) similarity inside it
   minus the mean of its *brighter* side context: up to half its own length of frames just before
   it or just after it, within the segment (a candidate filling its segment is compared with the
   baseline ``b`` instead). The score is that contrast as a two-sample z statistic,
   ``contrast / (sigma * sqrt(1/n_in + 1/n_side))``, with ``sigma`` a robust estimate of the
   per-frame noise (MAD of first differences). A window that exactly covers a bump stands out on
   both sides and so beats a fragment of the bump (bump on at least one side: contrast near 0), a
   wider window (its inside diluted by background), and a lone noisy frame (one sample).
   Scores are unitless, any sign, and comparable across curves of similar noise.
5. **Extent.** A window runs from its first frame's time to its last frame's time plus
   ``frame_seconds`` (the frame's own duration). Each end is then snapped to the nearest scene
   change in ``boundaries`` within ``snap_seconds``, when that keeps ``start < end`` — but a
   start never moves past the window's first frame and an end never before its last frame:
   snapping may widen a window to a cut or trim the empty tail of its last frame, never cut off
   evidence, so the peak always lies inside the moment. Last, a window is clipped to the covered
   piece between ``holes`` that holds its peak (:func:`agent.core.gaps.clip_to_covered`): neither
   a frame's tail nor a snap to a cut beyond a hole may claim time that was never seen. Its frames
   all lie in that piece (step 1), so no evidence is cut off.
6. **Temporal NMS.** Candidates are taken by score (ties: earlier, then shorter first); any with
   IoU above ``nms_iou`` to one already kept is dropped, until ``top_k`` are kept.

Everything is deterministic and vectorised except the final greedy NMS (``O(candidates * top_k)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.gaps import as_holes, clip_to_covered, separated
from agent.core.qvh import temporal_iou
from agent.errors import QueryError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GAP_FACTOR = 3.0
LEVEL_FRACTIONS: FloatArray = np.round(np.arange(0.0, 1.0, 0.1), 1)
DEFAULT_FRAME_SECONDS = 1.0
"""Frame duration when it cannot be inferred (a single frame, or all frames at one time)."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A candidate moment in stream seconds.

    ``score`` ranks proposals of one curve (for :func:`propose`, the z statistic of step 4);
    ``peak`` is the time of the highest (smoothed) frame inside; ``similarity`` is the mean raw
    similarity of the frames inside, in the curve's own units, for callers that rank proposals
    from different curves or mix them with other similarity scores (None when not computed).
    """

    start: float
    end: float
    score: float
    peak: float
    similarity: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


def propose(
    times: np.ndarray,
    scores: np.ndarray,
    *,
    top_k: int = 5,
    boundaries: np.ndarray | None = None,
    snap_seconds: float = 2.0,
    nms_iou: float = 0.5,
    frame_seconds: float | None = None,
    smooth: int = 1,
    holes: npt.ArrayLike | None = None,
) -> list[Proposal]:
    """Propose up to ``top_k`` moments from a similarity curve (method in the module docstring).

    Args:
        times: (n,) sorted stream seconds of the sampled frames; gaps are allowed.
        scores: (n,) similarity of each frame to the query, any range.
        top_k: maximum number of proposals returned.
        boundaries: scene-change times that window ends may snap to.
        snap_seconds: maximum distance a window end moves when snapping.
        nms_iou: a proposal overlapping a better one by more than this IoU is dropped.
        frame_seconds: duration of one frame; default the median spacing of ``times``.
        smooth: width in frames of the moving average applied first (1 = none).
        holes: (m, 2) ``[start, end)`` stream seconds the record does not cover (the memory's
            coverage gaps); no proposal overlaps one (steps 1 and 5). None: no holes.

    Returns:
        Proposals sorted by score, best first.

    Raises:
        QueryError: mismatched, unsorted or non-finite inputs, or out-of-range parameters.
    """
    t, s = _validate(times, scores, top_k=top_k, nms_iou=nms_iou, smooth=smooth, snap=snap_seconds)
    gaps = as_holes(holes)
    if t.size == 0:
        return []
    spacing = _median_spacing(t)
    if frame_seconds is None:
        frame_seconds = spacing if spacing > 0 else DEFAULT_FRAME_SECONDS
    elif not (np.isfinite(frame_seconds) and frame_seconds > 0):
        raise QueryError(f"frame_seconds must be positive, got {frame_seconds}")
    segment = _segment_ids(t, spacing, gaps)
    curve = _smooth(s, segment, smooth)
    baseline = float(np.median(curve))
    first, last = _candidate_runs(curve, segment, baseline)
    noise = _noise_sigma(s, segment)
    score = _contrast(curve, segment, first, last, baseline=baseline, noise=noise)
    starts = t[first]
    ends = t[last] + frame_seconds
    if boundaries is not None:
        starts, ends = _snap(
            starts,
            ends,
            boundaries,
            snap_seconds,
            lo=t[0],
            hi=t[-1] + frame_seconds,
            first=t[first],
            last=t[last],
        )
    peaks = t[_peak_index(curve, first, last)]
    starts, ends, peaks, kept = clip_to_covered(starts, ends, peaks, gaps)
    raw_sum = np.concatenate([[0.0], np.cumsum(s)])
    mean_raw = (raw_sum[last + 1] - raw_sum[first]) / (last - first + 1)
    cands = [
        Proposal(float(a), float(b), float(c), float(p), float(m))
        for a, b, c, p, m, k in zip(starts, ends, score, peaks, mean_raw, kept, strict=True)
        if k
    ]
    return nms(cands, nms_iou, top_k)


def nms(props: Sequence[Proposal], iou: float, top_k: int) -> list[Proposal]:
    """Greedy temporal non-maximum suppression.

    Proposals are visited by descending score (ties: earlier start, then shorter, first); one is
    kept unless its IoU with an already kept proposal exceeds ``iou``. Stops at ``top_k`` kept.
    """
    if top_k < 1 or not props:
        return []
    order = sorted(props, key=lambda p: (-p.score, p.start, p.end))
    kept: list[Proposal] = []
    kept_spans = np.zeros((0, 2), dtype=np.float64)
    for prop in order:
        span = np.array([[prop.start, prop.end]], dtype=np.float64)
        if kept and temporal_iou(span, kept_spans).max() > iou:
            continue
        kept.append(prop)
        kept_spans = np.vstack([kept_spans, span])
        if len(kept) == top_k:
            break
    return kept


def _validate(
    times: np.ndarray, scores: np.ndarray, *, top_k: int, nms_iou: float, smooth: int, snap: float
) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(times, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim != 1 or s.ndim != 1 or t.shape != s.shape:
        raise QueryError(f"times and scores must be 1-D of equal length, got {t.shape} and {s.shape}")
    if not (np.isfinite(t).all() and np.isfinite(s).all()):
        raise QueryError("times and scores must be finite")
    if t.size > 1 and np.any(np.diff(t) < 0):
        raise QueryError("times must be sorted ascending")
    if top_k < 1:
        raise QueryError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 < nms_iou <= 1.0:
        raise QueryError(f"nms_iou must be in (0, 1], got {nms_iou}")
    if smooth < 1:
        raise QueryError(f"smooth must be >= 1, got {smooth}")
    if snap < 0:
        raise QueryError(f"snap_seconds must be >= 0, got {snap}")
    return t, s


def _median_spacing(t: FloatArray) -> float:
    steps = np.diff(t)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 0.0


def _segment_ids(t: FloatArray, spacing: float, holes: FloatArray) -> IntArray:
    """Segment index of every frame; a new segment starts after each gap or hole."""
    gap = separated(t, holes)
    if spacing > 0:
        gap |= np.diff(t) > GAP_FACTOR * spacing
    return np.concatenate([[0], np.cumsum(gap)]).astype(np.int64)


def _smooth(s: FloatArray, segment: IntArray, width: int) -> FloatArray:
    if width <= 1:
        return s.copy()
    out = np.empty_like(s)
    left, right = (width - 1) // 2, width // 2
    kernel = np.full(width, 1.0 / width)
    for seg in np.unique(segment):
        idx = np.flatnonzero(segment == seg)
        padded = np.pad(s[idx], (left, right), mode="edge")
        out[idx] = np.convolve(padded, kernel, mode="valid")
    return out


def _candidate_runs(curve: FloatArray, segment: IntArray, baseline: float) -> tuple[IntArray, IntArray]:
    """First and last frame index of every distinct run above any level (see step 3)."""
    top = float(curve.max())
    levels = np.unique(baseline + LEVEL_FRACTIONS * max(top - baseline, 0.0))
    above = curve[None, :] >= levels[:, None]  # (L, n)
    new_seg = np.concatenate([[True], segment[1:] != segment[:-1]])
    end_seg = np.concatenate([segment[1:] != segment[:-1], [True]])
    prev = np.concatenate([np.zeros((len(levels), 1), dtype=bool), above[:, :-1]], axis=1)
    nxt = np.concatenate([above[:, 1:], np.zeros((len(levels), 1), dtype=bool)], axis=1)
    starts = above & (~prev | new_seg[None, :])
    ends = above & (~nxt | end_seg[None, :])
    # Runs appear in the same order in both masks, level by level, so they pair up row-wise.
    first = np.nonzero(starts)[1]
    last = np.nonzero(ends)[1]
    pairs = np.unique(np.stack([first, last], axis=1), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def _contrast(
    curve: FloatArray,
    segment: IntArray,
    first: IntArray,
    last: IntArray,
    *,
    baseline: float,
    noise: float,
) -> FloatArray:
    """Two-sample z statistic of each run against its in-segment context (see step 4)."""
    csum = np.concatenate([[0.0], np.cumsum(curve)])
    seg_lo = np.searchsorted(segment, segment, side="left")[first]
    seg_hi = np.searchsorted(segment, segment, side="right")[first]  # exclusive
    length = last - first + 1
    inside = (csum[last + 1] - csum[first]) / length
    reach = np.maximum(1, (length + 1) // 2)
    left_lo = np.maximum(seg_lo, first - reach)
    right_hi = np.minimum(seg_hi, last + 1 + reach)
    n_left, n_right = first - left_lo, right_hi - last - 1
    left = _safe_mean(csum[first] - csum[left_lo], n_left)
    right = _safe_mean(csum[right_hi] - csum[last + 1], n_right)
    # The brighter side is the one the run must beat: a fragment of a bump has bump on one side.
    use_left = left >= right
    context = np.where(use_left, left, right)
    n_ctx = np.where(use_left, n_left, n_right)
    # Without context the baseline stands in, taken as exact: only the inside mean is uncertain.
    context = np.where(n_ctx > 0, context, baseline)
    inv_ctx = np.divide(1.0, n_ctx, out=np.zeros(inside.shape), where=n_ctx > 0)
    result: FloatArray = (inside - context) / (noise * np.sqrt(1.0 / length + inv_ctx))
    return result


def _safe_mean(total: FloatArray, count: IntArray) -> FloatArray:
    """``total / count``, and -inf where ``count`` is 0 so an empty side never wins a max."""
    out: FloatArray = np.divide(total, count, out=np.full(total.shape, -np.inf), where=count > 0)
    return out


def _noise_sigma(s: FloatArray, segment: IntArray) -> float:
    """Robust per-frame noise level: MAD of within-segment first differences, over sqrt(2).

    Differences cancel slow structure (the bumps themselves), so this measures frame-to-frame
    jitter; the floor keeps a noiseless curve from dividing by zero.
    """
    same = segment[1:] == segment[:-1]
    d = np.diff(s)[same]
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0) if d.size else 0.0
    span = float(np.ptp(s)) if s.size else 0.0
    return max(sigma, 1e-3 * span, 1e-12)


def _peak_index(curve: FloatArray, first: IntArray, last: IntArray) -> IntArray:
    """Index of the first maximum of ``curve`` within each [first, last] run."""
    peaks = np.empty(first.size, dtype=np.int64)
    for i, (a, b) in enumerate(zip(first, last, strict=True)):
        peaks[i] = a + int(np.argmax(curve[a : b + 1]))
    return peaks


def _snap(
    starts: FloatArray,
    ends: FloatArray,
    boundaries: np.ndarray,
    radius: float,
    *,
    lo: float,
    hi: float,
    first: FloatArray,
    last: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Move each end to the nearest boundary within ``radius`` if the window stays valid.

    ``first``/``last``: times of each window's first and last frame. A start is never moved
    after its first frame nor an end before its last frame (no evidence is cut off).
    """
    b = np.asarray(boundaries, dtype=np.float64).ravel()
    b = np.sort(b[np.isfinite(b) & (b >= lo) & (b <= hi)])
    if b.size == 0 or radius <= 0:
        return starts, ends
    new_starts = np.minimum(_nearest(starts, b, radius), first)
    new_ends = np.maximum(_nearest(ends, b, radius), last)
    both = new_starts < new_ends
    only_start = ~both & (new_starts < ends)
    only_end = ~both & ~only_start & (starts < new_ends)
    out_starts = np.where(both | only_start, new_starts, starts)
    out_ends = np.where(both | only_end, new_ends, ends)
    return out_starts, out_ends


def _nearest(x: FloatArray, sorted_b: FloatArray, radius: float) -> FloatArray:
    pos = np.clip(np.searchsorted(sorted_b, x), 1, sorted_b.size - 1) if sorted_b.size > 1 else None
    if pos is None:
        best = np.full(x.shape, sorted_b[0])
    else:
        left, right = sorted_b[pos - 1], sorted_b[pos]
        best = np.where(np.abs(x - left) <= np.abs(right - x), left, right)
    return np.where(np.abs(best - x) <= radius, best, x)
