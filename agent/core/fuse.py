"""Fuse: the one place that ranks moments, with calibrated confidence and abstention.

Input: every channel's proposals for every searched stream, each with the
background its scores are judged against. Steps:

0. **Off the holes.** Each proposal is first clipped to the covered piece of its
   stream that holds its peak (``holes``: the memory's coverage gaps; the rule is
   :mod:`agent.core.gaps`'s), and its evidence times to that piece: whatever a
   channel proposed, no moment claims time the stream never saw.
1. **Calibrate.** A proposal's raw score (a cosine, or any channel's own unit)
   is turned into a robust z-score against its own stream's and channel's
   background for *this* query: ``z = (score - median) / (1.4826 * MAD)`` of the
   background scores (the visual channel's anchor scores, or the refine
   encoder's scores of frames sampled across the stream). The median and MAD
   ignore the few background items that match the query. Cosines are first
   mapped to ``-log(1 - cos)`` (``cosine=True``): near 1 - image-to-image
   similarity - a cosine is squeezed against its ceiling and a left-skewed
   background would make every z small; the map is monotone and nearly the
   identity for the low cosines of text queries.
2. **Confidence.** ``z`` becomes the probability that the best of ``trials``
   background draws stays below the score, under a normal null:
   ``confidence = Phi(z) ** trials`` (Sidak). ``trials`` is how many scores the
   proposal was chosen among, so a maximum over many candidates is not taken
   for a match. Confidence is in [0, 1], monotone in the score for a fixed
   background, and comparable across streams and channels.
3. **Merge.** Within a stream, proposals of different channels that overlap
   by temporal IoU >= ``merge_iou`` are one moment: the first-ranked one's
   span and confidence (step 4's order), every supporting channel listed, and each text
   channel's quote of the words it matched. Text channels (speech, on-screen
   text) bring their own fixed calibration of matched-word share (see
   ``agent.channels.text_search``), so their confidences sit on the visual
   scale without a per-query background.
4. **NMS and rank.** Greedy temporal NMS per stream, then one ranking of every
   stream's moments by confidence (ties: raw score), after one rule: a
   *deferred* proposal (``ChannelProposal.deferred``: a region refinement
   planned but did not reach before its budget ran out) ranks below every
   moment that is not. Refinement visits regions best prescreen region first
   across every searched stream, so each refined region was ranked above each
   deferred one by the prescreen; a refined confidence and an anchor-level one
   are on different scales (refined frames of one scene can all score alike and
   collapse to 0), so they are never compared to rank: refinement reorders only
   what it refined, and the deferred keep their prescreen order below it.
   Without a budget cut nothing is deferred and the order is by confidence alone.
5. **Abstain.** A moment passes when its confidence reaches ``threshold``. An
   answer with no passing moment abstains: it still lists the best candidates,
   each marked ``below_threshold``, and says "no confident match".

Default threshold 0.95: a moment is confident when the best of its stream's
own background scores would reach it with probability below 5 % (a family-wise
false-alarm rate of 5 % per channel and stream). It follows from the
calibration, not from any benchmark answer.

Numeric only: no I/O, no asyncio, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.core.gaps import as_holes, clip_to_covered
from agent.core.qvh import temporal_iou
from agent.errors import QueryError

DEFAULT_THRESHOLD = 0.95
"""Family-wise confidence a moment needs (see the module docstring)."""
MAD_TO_SIGMA = 1.4826
MIN_SCALE = 1e-4
"""Floor of the background's spread (a constant background would divide by zero)."""
NO_MATCH = "no confident match"
COS_FLOOR = 1e-6
"""Smallest ``1 - cos`` told apart (float32 embeddings resolve about this much)."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """A background score distribution, summarised: where noise sits for one query.

    ``center`` and ``scale`` are in the raw score's units; ``trials`` is the
    number of candidates a proposal of this kind was the best of (>= 1).
    """

    center: float
    scale: float
    trials: int
    samples: int
    """Background scores the summary was computed from."""
    cosine: bool = False
    """``center`` and ``scale`` are of ``-log(1 - cos)``, not of the raw score."""

    def z(self, score: float) -> float:
        x = _cos_distance(score) if self.cosine else score
        return (x - self.center) / self.scale

    def confidence(self, score: float) -> float:
        """``Phi(z) ** trials`` in [0, 1]; monotone non-decreasing in ``score``."""
        z = self.z(score)
        # log Phi(z) via erfc keeps precision in both tails.
        log_phi = math.log(max(0.5 * math.erfc(-z / math.sqrt(2.0)), 1e-300))
        return math.exp(self.trials * log_phi)


def _cos_distance(score: float | np.ndarray) -> Any:
    """``-log(1 - cos)``, cosines clipped below 1 (monotone increasing)."""
    return -np.log(np.maximum(1.0 - np.asarray(score, dtype=np.float64), COS_FLOOR))


def calibrate(background: np.ndarray, *, trials: int, cosine: bool = False) -> Calibration:
    """Robust summary of (n,) background scores (QueryError if there are none).

    ``cosine``: the scores are cosines; summarise ``-log(1 - cos)`` instead.

    The scale is the MAD scaled to a normal sigma; where more than half the
    items tie exactly (MAD below ``MIN_SCALE``) the standard deviation stands
    in, floored at ``MIN_SCALE``, so z-scores stay finite.
    """
    b = np.asarray(background, dtype=np.float64).ravel()
    b = b[np.isfinite(b)]
    if b.size == 0:
        raise QueryError("calibration needs at least one background score")
    if cosine:
        b = _cos_distance(b)
    center = float(np.median(b))
    mad = MAD_TO_SIGMA * float(np.median(np.abs(b - center)))
    scale = mad if mad >= MIN_SCALE else max(float(np.std(b)), MIN_SCALE)
    return Calibration(center, scale, max(1, int(trials)), int(b.size), cosine)


@dataclass(frozen=True, slots=True)
class ChannelProposal:
    """A candidate moment from one channel of one stream, with its raw score.

    ``kind`` says how the channel scored it (visual: ``"refine"`` on stored
    frames or ``"anchor"`` on memory tokens) and selects its calibration.
    """

    stream: str
    channel: str
    kind: str
    start: float
    end: float
    score: float
    peak: float
    evidence: tuple[float, ...] = ()
    quote: str = ""
    """Text channels: the words of the span that matched the query (empty for visual)."""
    deferred: bool = False
    """The refine budget ran out before this anchor-level proposal's region: ranked below every
    proposal that is not deferred (rule in the module docstring)."""


@dataclass(slots=True)
class FusedMoment:
    """A ranked moment: span, raw score, calibrated confidence, supporting channels."""

    stream: str
    start: float
    end: float
    score: float
    confidence: float
    peak: float
    kind: str
    channels: list[str]
    evidence: list[float] = field(default_factory=list)
    below_threshold: bool = False
    quotes: dict[str, str] = field(default_factory=dict)
    """Matched words by supporting text channel (``"speech"``: the transcript's words)."""
    deferred: bool = False
    """Anchor-level because the refine budget ran out first: ranked after every moment that is not."""


@dataclass(slots=True)
class Fusion:
    """The fused answer: moments ranked by confidence, best first."""

    moments: list[FusedMoment]
    abstained: bool
    threshold: float
    notes: list[str] = field(default_factory=list)

    def for_stream(self, stream: str) -> list[FusedMoment]:
        return [m for m in self.moments if m.stream == stream]


def fuse(
    proposals: Sequence[ChannelProposal],
    calibrations: dict[tuple[str, str, str], Calibration],
    *,
    top_k: int,
    nms_iou: float = 0.5,
    merge_iou: float = 0.5,
    threshold: float = DEFAULT_THRESHOLD,
    holes: Mapping[str, np.ndarray] | None = None,
) -> Fusion:
    """Calibrate, merge, suppress and rank ``proposals`` (method in the module docstring).

    Args:
        proposals: candidates of every channel of every stream.
        calibrations: by (stream, channel, kind); a proposal without one is skipped.
        top_k: moments kept per stream.
        nms_iou: a moment overlapping a more confident one of its stream by more is dropped.
        merge_iou: proposals of different channels overlapping by at least this are merged.
        threshold: confidence a moment needs to pass.
        holes: by stream, (m, 2) coverage holes ``[start, end)`` in stream seconds (step 0);
            a stream not in it has none.

    Returns:
        A :class:`Fusion`, moments ranked non-deferred first, then by confidence;
        ``abstained`` iff no kept moment reaches ``threshold``.

    Raises:
        QueryError: ``top_k < 1``, an IoU / threshold outside [0, 1], or malformed holes.
    """
    if top_k < 1:
        raise QueryError(f"top_k must be >= 1, got {top_k}")
    for name, v in (("nms_iou", nms_iou), ("merge_iou", merge_iou), ("threshold", threshold)):
        if not 0.0 <= v <= 1.0:
            raise QueryError(f"{name} must be in [0, 1], got {v}")
    gaps = {stream: as_holes(h) for stream, h in (holes or {}).items()}
    by_stream: dict[str, list[FusedMoment]] = {}
    for original in proposals:
        cal = calibrations.get((original.stream, original.channel, original.kind))
        p = _off_holes(original, gaps.get(original.stream))
        if cal is None or p is None or not (math.isfinite(p.score) and p.end > p.start):
            continue
        by_stream.setdefault(p.stream, []).append(_scored(p, cal, threshold))
    kept: list[FusedMoment] = []
    for moments in by_stream.values():
        kept += _nms(_merge(moments, merge_iou), nms_iou, top_k)
    kept.sort(key=_rank_key)
    abstained = not any(not m.below_threshold for m in kept)
    notes = []
    if abstained and kept:
        notes.append(f"{NO_MATCH}: best confidence {kept[0].confidence:.3f} < {threshold:g}")
    elif abstained:
        notes.append(f"{NO_MATCH}: no candidates")
    return Fusion(kept, abstained, threshold, notes)


def _off_holes(p: ChannelProposal, holes: np.ndarray | None) -> ChannelProposal | None:
    """``p`` clipped to the covered piece holding its peak, evidence kept inside; None if nothing is left."""
    if holes is None or len(holes) == 0:
        return p
    starts, ends, peaks, kept = clip_to_covered([p.start], [p.end], [p.peak], holes)
    if not kept[0]:
        return None
    start, end, peak = float(starts[0]), float(ends[0]), float(peaks[0])
    if (start, end, peak) == (p.start, p.end, p.peak):
        return p
    evidence = tuple(t for t in p.evidence if start <= t <= end)
    return dataclasses.replace(p, start=start, end=end, peak=peak, evidence=evidence)


def _scored(p: ChannelProposal, cal: Calibration, threshold: float) -> FusedMoment:
    conf = cal.confidence(p.score)
    return FusedMoment(
        stream=p.stream,
        start=p.start,
        end=p.end,
        score=p.score,
        confidence=conf,
        peak=p.peak,
        kind=p.kind,
        channels=[p.channel],
        evidence=list(p.evidence) or [p.peak],
        below_threshold=conf < threshold,
        quotes={p.channel: p.quote} if p.quote else {},
        deferred=p.deferred,
    )


def _rank_key(m: FusedMoment) -> tuple[bool, float, float, float, float]:
    # Deferred last whatever their confidence: it is on another scale (module docstring, step 4).
    return (m.deferred, -m.confidence, -m.score, m.start, m.end)


def _merge(moments: list[FusedMoment], iou: float) -> list[FusedMoment]:
    """Fold each moment into a more confident one of *another* channel it overlaps enough."""
    out: list[FusedMoment] = []
    for m in sorted(moments, key=_rank_key):
        host = next((h for h in out if m.channels[0] not in h.channels and _overlaps(h, m, iou)), None)
        if host is None:
            out.append(m)
            continue
        for ch in m.channels:
            if ch not in host.channels:
                host.channels.append(ch)
        host.evidence.extend(t for t in m.evidence if t not in host.evidence)
        for ch, quote in m.quotes.items():
            host.quotes.setdefault(ch, quote)
    return out


def _overlaps(a: FusedMoment, b: FusedMoment, iou: float) -> bool:
    overlap = _iou(a, b)
    return overlap > 0.0 and overlap >= iou


def _iou(a: FusedMoment, b: FusedMoment) -> float:
    return float(temporal_iou(np.array([[a.start, a.end]]), np.array([[b.start, b.end]]))[0, 0])


def _nms(moments: list[FusedMoment], iou: float, top_k: int) -> list[FusedMoment]:
    kept: list[FusedMoment] = []
    for m in sorted(moments, key=_rank_key):
        if any(_iou(k, m) > iou for k in kept):
            continue
        kept.append(m)
        if len(kept) == top_k:
            break
    return kept
