"""Tests of agent.core.proposals on synthetic similarity curves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.core.proposals import Proposal, nms, propose
from agent.core.qvh import temporal_iou
from agent.errors import QueryError


def _iou(p: Proposal, start: float, end: float) -> float:
    return float(temporal_iou(np.array([[p.start, p.end]]), np.array([[start, end]]))[0, 0])


def _noisy_curve(seed: int, step: float = 0.5, length: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, length, step)
    return t, 0.2 + 0.03 * rng.standard_normal(t.size)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("smooth", [1, 3])
def test_bump_is_found(seed: int, smooth: int) -> None:
    t, s = _noisy_curve(seed)
    s[(t >= 40) & (t < 60)] += 0.15
    props = propose(t, s, smooth=smooth)
    assert _iou(props[0], 40, 60) >= 0.7
    assert props[0].start <= props[0].peak < props[0].end
    # Mean raw similarity inside: about the bump's level (0.35), far above the background (0.2).
    assert props[0].similarity is not None
    assert 0.3 < props[0].similarity < 0.4


@pytest.mark.parametrize("seed", range(5))
def test_two_bumps_higher_first(seed: int) -> None:
    t, s = _noisy_curve(seed)
    s[(t >= 80) & (t < 90)] += 0.10
    s[(t >= 20) & (t < 35)] += 0.20
    props = propose(t, s, top_k=5)
    assert _iou(props[0], 20, 35) >= 0.7
    assert _iou(props[1], 80, 90) >= 0.7
    assert props[0].score > props[1].score


def test_gap_splits_moments() -> None:
    # Two recorded stretches, 0-20 s and 40-60 s, both fully relevant: never one window over the gap.
    t = np.concatenate([np.arange(0.0, 20.0, 0.5), np.arange(40.0, 60.0, 0.5)])
    s = np.ones(t.size)
    props = propose(t, s, top_k=5)
    spans = sorted((p.start, p.end) for p in props)
    assert spans == [(0.0, 20.0), (40.0, 60.0)]


def test_gap_splits_a_bump() -> None:
    t = np.concatenate([np.arange(0.0, 30.0, 1.0), np.arange(50.0, 100.0, 1.0)])
    s = np.where((t >= 20) & (t < 60), 1.0, 0.0)
    for p in propose(t, s, top_k=10):
        assert p.end <= 30.0 or p.start >= 50.0, p


def test_a_moment_never_spans_a_coverage_hole() -> None:
    # The missing-segment case: frames at 2 fps over 0-8 s and 10-12 s, the needle at 4-8 s, a
    # scene change where footage resumes (10 s). Snapping used to carry the needle's end across
    # the hole to that cut: 4.0-10.0 s, claiming two seconds nobody saw.
    t = np.concatenate([np.arange(0.0, 8.0, 0.5), np.arange(10.0, 12.0, 0.5)])
    s = 0.2 + 0.03 * np.random.default_rng(0).standard_normal(t.size)
    s[(t >= 4.0) & (t < 8.0)] += 0.5
    cuts = np.array([4.0, 10.0])
    bridged = propose(t, s, top_k=1, boundaries=cuts, frame_seconds=0.5)[0]
    assert (bridged.start, bridged.end) == (4.0, 10.0)  # what happens without the holes
    props = propose(t, s, top_k=5, boundaries=cuts, frame_seconds=0.5, holes=np.array([[8.0, 10.0]]))
    assert (props[0].start, props[0].end) == (4.0, 8.0)
    for p in props:
        assert p.end <= 8.0 or p.start >= 10.0, p


def test_a_hole_splits_frames_too_close_for_the_spacing_rule() -> None:
    # Frames 1 s apart with 3 s between 9 and 12: not a gap by spacing (3 x median), but the
    # memory's coverage says 10-12 s was never seen. Relevant on both sides: two moments.
    t = np.concatenate([np.arange(0.0, 10.0, 1.0), np.arange(12.0, 21.0, 1.0)])
    s = np.ones(t.size)
    assert [(p.start, p.end) for p in propose(t, s, top_k=1)] == [(0.0, 21.0)]  # bridged without holes
    props = propose(t, s, top_k=5, holes=np.array([[10.0, 12.0]]))
    assert sorted((p.start, p.end) for p in props) == [(0.0, 10.0), (12.0, 21.0)]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=2, max_value=40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=st.floats(0.05, 2.0)),
            hnp.arrays(np.float64, n, elements=st.floats(-1.0, 1.0)),
            st.lists(st.integers(0, n - 2), max_size=4, unique=True),
            st.lists(st.floats(0.0, 80.0), max_size=6),
            st.floats(0.05, 3.0),
        )
    )
)
def test_no_proposal_overlaps_a_hole(
    case: tuple[np.ndarray, np.ndarray, list[int], list[float], float],
) -> None:
    steps, scores, after, cuts, frame = case
    times = np.cumsum(steps)
    # A hole after frame i: from just past it to just before frame i + 1 (time never seen).
    holes = np.array(
        [[times[i] + 0.25 * steps[i + 1], times[i] + 0.75 * steps[i + 1]] for i in sorted(after)]
    ).reshape(-1, 2)
    props = propose(times, scores, top_k=5, boundaries=np.array(cuts), frame_seconds=frame, holes=holes)
    assert props
    for p in props:
        assert p.start <= p.peak <= p.end and p.start < p.end
        assert not np.any((p.start < holes[:, 1]) & (p.end > holes[:, 0])), (p, holes)


def test_snapping_moves_to_near_boundary_only() -> None:
    t = np.arange(0.0, 100.0, 0.5)
    s = np.where((t >= 40) & (t < 60), 1.0, 0.0)
    plain = propose(t, s, top_k=1)[0]
    assert (plain.start, plain.end) == (40.0, 60.0)
    snapped = propose(t, s, top_k=1, boundaries=np.array([10.0, 38.5, 66.0]), snap_seconds=2.0)[0]
    assert snapped.start == 38.5  # 1.5 s away: snapped (widened to the cut)
    assert snapped.end == 60.0  # nearest boundary 6 s away: left alone
    inside = propose(t, s, top_k=1, boundaries=np.array([41.5]), snap_seconds=2.0)[0]
    assert inside.start == 40.0  # a cut after the first frame would cut off evidence: not taken
    assert snapped.score == plain.score


def test_snapping_never_inverts_a_window() -> None:
    t = np.arange(0.0, 20.0, 1.0)
    s = np.where(t == 10, 1.0, 0.0)  # one frame: window [10, 11]
    p = propose(t, s, top_k=1, boundaries=np.array([10.6]), snap_seconds=1.0)[0]
    assert p.start < p.end
    assert (p.start, p.end) == (10.0, 10.6)  # the start may not pass the frame; the end may trim its tail


def test_nms_removes_overlaps() -> None:
    props = [
        Proposal(0.0, 10.0, 0.9, 5.0),
        Proposal(1.0, 11.0, 0.8, 5.0),  # IoU 9/11 with the first: dropped
        Proposal(8.0, 20.0, 0.7, 15.0),  # IoU 2/20: kept
        Proposal(30.0, 40.0, 0.95, 35.0),
    ]
    kept = nms(props, iou=0.5, top_k=10)
    assert [(p.start, p.end) for p in kept] == [(30.0, 40.0), (0.0, 10.0), (8.0, 20.0)]
    assert nms(props, iou=0.5, top_k=2) == kept[:2]
    assert nms(props, iou=1.0, top_k=10) == sorted(props, key=lambda p: -p.score)
    assert nms([], iou=0.5, top_k=3) == []


def test_edge_cases() -> None:
    assert propose(np.array([]), np.array([])) == []
    single = propose(np.array([5.0]), np.array([0.3]))
    assert single == [Proposal(5.0, 6.0, 0.0, 5.0, 0.3)]
    assert propose(np.array([5.0]), np.array([0.3]), frame_seconds=0.25)[0].end == 5.25
    flat = propose(np.arange(0.0, 30.0, 2.0), np.full(15, 0.4))
    assert [(p.start, p.end) for p in flat] == [(0.0, 30.0)]


def test_deterministic() -> None:
    t, s = _noisy_curve(3)
    assert propose(t, s, top_k=5, smooth=3) == propose(t.copy(), s.copy(), top_k=5, smooth=3)


@pytest.mark.parametrize(
    ("times", "scores", "kwargs", "match"),
    [
        ([0.0, 1.0], [0.1], {}, "equal length"),
        ([1.0, 0.0], [0.1, 0.2], {}, "sorted"),
        ([0.0, 1.0], [0.1, float("nan")], {}, "finite"),
        ([0.0, 1.0], [0.1, 0.2], {"top_k": 0}, "top_k"),
        ([0.0, 1.0], [0.1, 0.2], {"nms_iou": 0.0}, "nms_iou"),
        ([0.0, 1.0], [0.1, 0.2], {"smooth": 0}, "smooth"),
        ([0.0, 1.0], [0.1, 0.2], {"frame_seconds": -1.0}, "frame_seconds"),
    ],
)
def test_bad_input_raises(
    times: list[float], scores: list[float], kwargs: dict[str, float], match: str
) -> None:
    with pytest.raises(QueryError, match=match):
        propose(np.array(times), np.array(scores), **kwargs)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    steps=hnp.arrays(
        np.float64, st.integers(1, 60), elements=st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, 7.0])
    ),
    data=st.data(),
    top_k=st.integers(1, 6),
    smooth=st.integers(1, 4),
    with_boundaries=st.booleans(),
)
def test_proposal_properties(
    steps: np.ndarray, data: st.DataObject, top_k: int, smooth: int, with_boundaries: bool
) -> None:
    t = 3.0 + np.cumsum(steps)
    s = data.draw(hnp.arrays(np.float64, t.size, elements=st.floats(-1, 1)))
    fs = data.draw(st.sampled_from([None, 0.5, 2.0]))
    bounds = np.linspace(t[0] - 5, t[-1] + 5, 9) if with_boundaries else None
    props = propose(t, s, top_k=top_k, smooth=smooth, frame_seconds=fs, boundaries=bounds)
    frame = fs if fs is not None else (float(np.median(np.diff(t)[np.diff(t) > 0])) if np.ptp(t) > 0 else 1.0)
    assert 1 <= len(props) <= top_k
    assert [p.score for p in props] == sorted((p.score for p in props), reverse=True)
    for p in props:
        assert t[0] <= p.start < p.end <= t[-1] + frame + 1e-9
        assert t[0] <= p.peak <= t[-1]
    spans = np.array([[p.start, p.end] for p in props])
    overlap = temporal_iou(spans, spans) - np.eye(len(props))
    assert (overlap <= 0.5 + 1e-12).all()


def test_snapping_never_moves_a_start_past_its_first_and_best_frame() -> None:
    # The reproduction of issue 16: a cut at 12.0 used to move the start of a window whose first
    # (and best) frame is 11.6 to 12.0, giving a moment [12.0, 12.1] with its peak outside it.
    times = np.array([11.6, 12.0, 12.5, 13.0, 13.5, 14.0, 14.5, 15.0])
    scores = np.array([1.0, 0.1, 0.12, 0.1, 0.11, 0.1, 0.12, 0.1])
    best = propose(times, scores, top_k=1, boundaries=np.array([12.0]), frame_seconds=0.5)[0]
    assert best.start <= 11.6 <= best.end and best.start <= best.peak <= best.end


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=2, max_value=40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=st.floats(0.01, 2.0)),
            hnp.arrays(np.float64, n, elements=st.floats(-1.0, 1.0)),
            st.lists(st.floats(0.0, 100.0), max_size=8),
            st.floats(0.05, 3.0),
        )
    )
)
def test_the_peak_always_lies_inside_its_snapped_moment(
    case: tuple[np.ndarray, np.ndarray, list[float], float],
) -> None:
    steps, scores, cuts, frame = case
    times = np.cumsum(steps)
    for p in propose(
        times, scores, top_k=5, boundaries=np.array(cuts), frame_seconds=frame, snap_seconds=2.0
    ):
        # The peak (a frame of the window, which runs from its first to its last frame) is
        # inside: snapping moved no start past the window's first frame, no end before its last.
        assert p.start <= p.peak <= p.end and p.start < p.end
        assert np.isclose(times, p.peak).any()
