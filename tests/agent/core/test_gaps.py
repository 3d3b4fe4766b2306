"""agent.core.gaps: holes between coverage intervals, and moments cut to the covered side."""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.gaps import as_holes, clip_to_covered, covered_pieces, holes_between, separated
from agent.errors import QueryError

HOLES = np.array([[8.0, 10.0], [20.0, 25.0]])


def test_holes_are_the_time_between_coverage_intervals() -> None:
    spans = [(0.0, 8.0), (10.0, 20.0), (25.0, 30.0)]
    np.testing.assert_array_equal(holes_between(spans), HOLES)
    assert holes_between([(0.0, 5.0)]).shape == (0, 2) and holes_between([]).shape == (0, 2)


def test_a_window_keeps_the_covered_piece_that_holds_its_peak() -> None:
    starts, ends, peaks, kept = clip_to_covered(
        [4.0, 6.0, 12.0, 0.0, 11.0], [10.0, 22.0, 18.0, 30.0, 12.0], [5.0, 15.0, 14.0, 26.0, 11.5], HOLES
    )
    assert kept.all()
    assert list(zip(starts, ends, strict=True)) == [
        (4.0, 8.0),
        (10.0, 20.0),
        (12.0, 18.0),
        (25.0, 30.0),
        (11.0, 12.0),
    ]
    np.testing.assert_array_equal(peaks, [5.0, 15.0, 14.0, 26.0, 11.5])


def test_a_peak_inside_a_hole_goes_to_its_nearer_edge_and_a_window_inside_a_hole_goes() -> None:
    starts, ends, peaks, kept = clip_to_covered([4.0, 4.0, 21.0], [14.0, 14.0, 24.0], [8.5, 9.5, 22.0], HOLES)
    assert (starts[0], ends[0], peaks[0]) == (4.0, 8.0, 8.0)
    assert (starts[1], ends[1], peaks[1]) == (10.0, 14.0, 10.0)
    assert list(kept) == [True, True, False]


def test_touching_a_hole_is_not_overlapping_it() -> None:
    starts, ends, _, kept = clip_to_covered([4.0, 10.0], [8.0, 12.0], [6.0, 11.0], HOLES)
    assert kept.all() and list(starts) == [4.0, 10.0] and list(ends) == [8.0, 12.0]


def test_covered_pieces_and_separated_frames() -> None:
    assert covered_pieces(5.0, 27.0, HOLES) == [(5.0, 8.0), (10.0, 20.0), (25.0, 27.0)]
    assert covered_pieces(8.5, 9.5, HOLES) == []
    assert covered_pieces(11.0, 12.0, HOLES) == [(11.0, 12.0)]
    times = np.array([7.0, 7.5, 10.0, 19.5, 26.0])
    assert list(separated(times, HOLES)) == [False, True, False, True]
    assert list(separated(times, as_holes(None))) == [False] * 4


@pytest.mark.parametrize(
    "bad",
    [np.array([1.0, 2.0, 3.0]), np.array([[2.0, 1.0]]), np.array([[0.0, np.inf]]), [[0.0, 5.0], [4.0, 6.0]]],
)
def test_malformed_holes_are_query_errors(bad: object) -> None:
    with pytest.raises(QueryError):
        as_holes(bad)  # type: ignore[arg-type]


def test_holes_are_sorted() -> None:
    np.testing.assert_array_equal(as_holes([[20.0, 25.0], [8.0, 10.0]]), HOLES)
