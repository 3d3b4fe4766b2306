"""fuse: calibration, confidence, merging across channels, NMS and abstention (no event loop)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.fuse import DEFAULT_THRESHOLD, Calibration, ChannelProposal, calibrate, fuse
from agent.core.qvh import temporal_iou
from agent.errors import QueryError

NOISE = calibrate(np.random.default_rng(0).normal(0.2, 0.01, size=500), trials=50)


def prop(
    start: float, end: float, score: float, *, stream: str = "s", channel: str = "visual"
) -> ChannelProposal:
    return ChannelProposal(stream, channel, "refine", start, end, score, (start + end) / 2)


def cals(*keys: tuple[str, str], cal: Calibration = NOISE) -> dict[tuple[str, str, str], Calibration]:
    return {(s, c, "refine"): cal for s, c in keys}


def test_calibrate_is_robust_to_the_match_inside_the_background() -> None:
    rng = np.random.default_rng(1)
    background = rng.normal(0.5, 0.02, size=200)
    with_match = np.concatenate([background, [0.95, 0.96, 0.97]])  # the needle's own tokens
    a, b = calibrate(background, trials=10), calibrate(with_match, trials=10)
    assert a.center == pytest.approx(0.5, abs=0.01) and a.scale == pytest.approx(0.02, rel=0.2)
    assert b.center == pytest.approx(a.center, abs=0.002) and b.scale == pytest.approx(a.scale, rel=0.1)
    with pytest.raises(QueryError):
        calibrate(np.array([np.nan]), trials=1)


def test_a_constant_background_does_not_divide_by_zero() -> None:
    cal = calibrate(np.full(20, 0.7), trials=5)
    assert cal.scale > 0 and math.isfinite(cal.z(0.9))
    assert cal.confidence(0.7) < 0.1 < 0.99 < cal.confidence(0.9)


def test_confidence_accounts_for_how_many_candidates_were_searched() -> None:
    few, many = Calibration(0.0, 1.0, 1, 100), Calibration(0.0, 1.0, 1000, 100)
    assert few.confidence(3.0) > 0.99  # one draw reaching 3 sigma is rare
    assert many.confidence(3.0) < 0.5  # the best of 1000 draws reaches 3 sigma half the time
    assert many.confidence(5.0) > DEFAULT_THRESHOLD


@settings(max_examples=60, deadline=None)
@given(
    center=st.floats(-1, 1),
    scale=st.floats(1e-3, 1),
    trials=st.integers(1, 5000),
    scores=st.lists(st.floats(-2, 2), min_size=2, max_size=20),
)
def test_confidence_is_monotone_in_score_within_a_channel(
    center: float, scale: float, trials: int, scores: list[float]
) -> None:
    cal = Calibration(center, scale, trials, 10)
    confs = [cal.confidence(s) for s in sorted(scores)]
    assert all(0.0 <= c <= 1.0 for c in confs)
    assert all(a <= b for a, b in itertools.pairwise(confs))
    # ... and fuse ranks one channel's moments of one stream in score order.
    props = [prop(10.0 * i, 10.0 * i + 5.0, s) for i, s in enumerate(scores)]
    fused = fuse(props, {("s", "visual", "refine"): cal}, top_k=len(props), nms_iou=0.5)
    ms = fused.moments
    assert all(a.score >= b.score for a, b in itertools.pairwise(ms) if a.confidence > b.confidence)
    assert [m.score for m in ms] == sorted((m.score for m in ms), reverse=True)


spans = st.tuples(st.floats(0, 100), st.floats(0.5, 20), st.floats(0.15, 0.35))


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["visual", "speech"]), spans), max_size=25
    ),
    iou=st.floats(0.1, 0.9),
    top_k=st.integers(1, 6),
    threshold=st.floats(0.0, 1.0),
)
def test_nms_invariant_top_k_and_abstention_iff_nothing_passes(
    items: list[tuple[str, str, tuple[float, float, float]]], iou: float, top_k: int, threshold: float
) -> None:
    props = [prop(s, s + d, sc, stream=stream, channel=ch) for stream, ch, (s, d, sc) in items]
    fused = fuse(
        props,
        cals(("a", "visual"), ("a", "speech"), ("b", "visual"), ("b", "speech")),
        top_k=top_k,
        nms_iou=iou,
        threshold=threshold,
    )
    for stream in ("a", "b"):
        kept = fused.for_stream(stream)
        assert len(kept) <= top_k
        if len(kept) > 1:
            spans_ = np.array([[m.start, m.end] for m in kept])
            ious = temporal_iou(spans_, spans_)
            np.fill_diagonal(ious, 0.0)
            assert ious.max() <= iou + 1e-9  # no two kept moments of a stream overlap more than nms_iou
    confs = [m.confidence for m in fused.moments]
    assert confs == sorted(confs, reverse=True)  # one ranking, best first
    assert all(m.below_threshold == (m.confidence < threshold) for m in fused.moments)
    assert fused.abstained == (not any(c >= threshold for c in confs))
    if fused.abstained:
        assert any("no confident match" in n for n in fused.notes)


def test_channels_that_agree_are_merged_into_one_moment() -> None:
    visual = prop(10.0, 20.0, 0.30, channel="visual")
    speech = prop(11.0, 20.0, 0.25, channel="speech")
    elsewhere = prop(50.0, 60.0, 0.26, channel="speech")
    fused = fuse([visual, speech, elsewhere], cals(("s", "visual"), ("s", "speech")), top_k=5)
    best = fused.moments[0]
    assert (best.start, best.end) == (10.0, 20.0) and best.channels == ["visual", "speech"]
    assert len(fused.moments) == 2 and fused.moments[1].channels == ["speech"]
    assert not fused.abstained


def test_no_fused_moment_overlaps_a_hole_of_its_stream() -> None:
    # Whatever a channel proposes, fuse keeps the covered side of the peak: here a speech span
    # across the hole 8-10 s (peak before it), one wholly inside it, and another stream's moment
    # at the same times (that stream has no hole: unchanged).
    across = ChannelProposal("s", "speech", "refine", 4.0, 12.0, 0.30, 5.0, evidence=(5.0, 11.0))
    inside = prop(8.5, 9.5, 0.40)
    other = prop(4.0, 12.0, 0.30, stream="t")
    keys = cals(("s", "speech"), ("s", "visual"), ("t", "visual"))
    fused = fuse([across, inside, other], keys, top_k=5, holes={"s": np.array([[8.0, 10.0]])})
    spans = {(m.stream, m.start, m.end) for m in fused.moments}
    assert spans == {("s", 4.0, 8.0), ("t", 4.0, 12.0)}
    assert fused.for_stream("s")[0].evidence == [5.0]
    with pytest.raises(QueryError):
        fuse([across], keys, top_k=5, holes={"s": np.array([[10.0, 8.0]])})


def test_noise_abstains_and_lists_the_best_candidates_below_threshold() -> None:
    # Scores spread like the background up to 2.5 sigma: the best of 50 draws does that often.
    z = np.linspace(-2.5, 2.5, 30)
    noise = [prop(10.0 * i, 10.0 * i + 5, NOISE.center + NOISE.scale * float(v)) for i, v in enumerate(z)]
    fused = fuse(noise, cals(("s", "visual")), top_k=5)
    assert fused.abstained and len(fused.moments) == 5
    assert all(m.below_threshold for m in fused.moments)
    match = prop(400.0, 405.0, NOISE.center + 8 * NOISE.scale)  # 8 sigma above the background
    fused = fuse([*noise, match], cals(("s", "visual")), top_k=5)
    assert not fused.abstained and fused.moments[0].start == 400.0
    assert not fused.moments[0].below_threshold and all(m.below_threshold for m in fused.moments[1:])


def test_confidence_is_comparable_across_streams() -> None:
    # Stream "loud" scores everything high; "quiet" has one real outlier. Raw scores would rank
    # loud's noise first; calibrated confidence ranks quiet's outlier first.
    loud = calibrate(np.random.default_rng(4).normal(0.8, 0.05, 300), trials=20)
    quiet = calibrate(np.random.default_rng(5).normal(0.2, 0.01, 300), trials=20)
    props = [prop(0, 5, 0.85, stream="loud"), prop(0, 5, 0.28, stream="quiet")]
    fused = fuse(props, {("loud", "visual", "refine"): loud, ("quiet", "visual", "refine"): quiet}, top_k=3)
    assert [m.stream for m in fused.moments] == ["quiet", "loud"]
    assert fused.moments[0].confidence > DEFAULT_THRESHOLD > fused.moments[1].confidence


def test_bad_arguments_are_query_errors() -> None:
    with pytest.raises(QueryError):
        fuse([], {}, top_k=0)
    with pytest.raises(QueryError):
        fuse([], {}, top_k=1, threshold=1.5)
    empty = fuse([], {}, top_k=1)
    assert empty.abstained and empty.moments == []


def test_cosines_near_their_ceiling_are_calibrated_on_the_distance_scale() -> None:
    # Image-to-image cosines as a random ViT gives them: spread over 0.6-0.99, piled against 1.
    rng = np.random.default_rng(6)
    bg = 1 - np.exp(rng.normal(np.log(0.08), 0.8, 300))
    raw, cos = calibrate(bg, trials=50), calibrate(bg, trials=50, cosine=True)
    exact = 0.9999  # a near-copy of the query
    assert raw.confidence(exact) < 0.5  # on the raw scale the ceiling hides it
    assert cos.confidence(exact) > DEFAULT_THRESHOLD
    assert cos.confidence(float(np.median(bg))) < 0.01
    scores = np.linspace(0.5, 0.999999, 50)
    confs = [cos.confidence(float(s)) for s in scores]
    assert all(a <= b for a, b in itertools.pairwise(confs))


def test_deferred_proposals_rank_below_every_refined_one_whatever_their_confidence() -> None:
    """A budget cut: refined confidences and deferred anchor-level ones are not compared."""
    anchor_cal = calibrate(np.random.default_rng(6).normal(0.5, 0.05, 300), trials=20)
    refined = prop(0.0, 5.0, NOISE.center)  # refinement judged it noise: confidence near 0
    deferred = dataclasses.replace(prop(600.0, 605.0, 0.9), kind="anchor", deferred=True)
    other = ChannelProposal("t", "visual", "anchor", 0.0, 5.0, 0.7, 2.5, deferred=True)
    calibrations = {
        **cals(("s", "visual")),
        ("s", "visual", "anchor"): anchor_cal,
        ("t", "visual", "anchor"): anchor_cal,
    }
    fused = fuse([deferred, other, refined], calibrations, top_k=5)
    assert [(m.stream, m.start, m.deferred) for m in fused.moments] == [
        ("s", 0.0, False),
        ("s", 600.0, True),  # the deferred keep their own order (confidence) below the refined
        ("t", 0.0, True),
    ]
    assert fused.moments[1].confidence > fused.moments[2].confidence > fused.moments[0].confidence
    # Nothing deferred (a full refinement): the order is by confidence alone, as before.
    plain = [dataclasses.replace(p, deferred=False) for p in (deferred, other, refined)]
    assert [m.start for m in fuse(plain, calibrations, top_k=5).moments] == [600.0, 0.0, 0.0]
