"""A stream's ``state.json`` record (:mod:`agent.index.state_file`): the wall-clock map, and a round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.channels.ingest import IngestStats
from agent.errors import IndexStoreError
from agent.index.state_file import SUMMARY_KEYS, ClockMap, read_state, state_record
from agent.store import snapshot


def test_wall_map_keeps_a_point_whenever_the_offset_moves() -> None:
    # Issue 16 kind 6: a recorder off for 60 s; the next segment starts at stream 8.0, wall 1068.
    clock = ClockMap()
    for t in (0.0, 2.0, 4.0, 6.0):
        clock.note(t, 1000.0 + t)
    clock.note(8.0, 1068.0)
    clock.note(9.0, 1069.0)
    assert clock.wall_of(8.0) == pytest.approx(1068.0)  # was 1008
    assert clock.wall_of(9.5) == pytest.approx(1069.5)
    assert clock.wall_of(3.0) == pytest.approx(1003.0)
    clock.note(9.2, 1069.3)  # jitter below the tolerance: no new point
    assert clock.wall_of(9.2) == pytest.approx(1069.2)
    clock.note(12.0, 1070.0)  # the offset moved back by 2 s (a late first frame re-dated)
    wall_before, wall_at = clock.wall_of(11.5), clock.wall_of(12.0)
    assert wall_before is not None and wall_at == pytest.approx(1070.0)
    assert wall_before <= wall_at  # stays in stream order


def test_a_recording_has_no_wall_time() -> None:
    clock = ClockMap()
    clock.note(1.0, None)
    assert clock.wall_of(1.0) is None and clock.columns() == [[], []]


def _commit(root: Path, record: dict[str, object]) -> None:
    snapshot.commit(root, snapshot.stage(root), record)


def test_record_reads_back(tmp_path: Path) -> None:
    clock = ClockMap([0.0, 5.0], [1000.0, 1005.0])
    stats = IngestStats(frames=7, last_time=5.0)
    record = state_record("cam", generation=3, saved_at=1234.5, stats=stats, clock=clock, meta={"offset": 2})
    _commit(tmp_path, record)
    state = read_state(tmp_path)
    assert state is not None
    assert (state.generation, state.saved_at, state.meta) == (3, 1234.5, {"offset": 2})
    assert ClockMap(*state.clock).wall_of(6.0) == pytest.approx(1006.0)
    summary = (state.model_extra or {})["stats"]  # a summary for readers of the file
    assert set(summary) == set(SUMMARY_KEYS) and (summary["frames"], summary["last_time"]) == (7, 5.0)


def test_nothing_committed_reads_as_none(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None


def test_clock_columns_of_different_lengths_are_a_typed_error(tmp_path: Path) -> None:
    record = state_record("cam", generation=1, saved_at=1.0, stats=IngestStats(), clock=ClockMap(), meta={})
    _commit(tmp_path, {**record, "clock": [[0.0, 5.0], [1000.0]]})
    with pytest.raises(IndexStoreError, match="clock columns differ in length"):
        read_state(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_clock_point_is_a_typed_error(tmp_path: Path, bad: float) -> None:
    # json reads NaN and Infinity: such a point would date every answer after it NaN or inf.
    record = state_record("cam", generation=1, saved_at=1.0, stats=IngestStats(), clock=ClockMap(), meta={})
    _commit(tmp_path, {**record, "clock": [[0.0, 5.0], [1000.0, bad]]})
    with pytest.raises(IndexStoreError, match="clock"):
        read_state(tmp_path)
