"""Deadlines that learn a live camera's frame and keyframe intervals (streams.liveness), sans I/O."""

from __future__ import annotations

import pytest

from streams.liveness import Deadlines


def test_before_anything_is_seen_the_floors_decide() -> None:
    d = Deadlines(open_timeout=10.0, read_timeout=5.0)
    assert (d.open_timeout, d.frame_timeout, d.socket_timeout) == (10.0, 15.0, 5.0)
    assert d.picture_timeout == 25.0  # frame deadline + open timeout while no keyframe was seen


def test_a_slow_camera_raises_the_deadlines_to_its_intervals() -> None:
    # One intra frame every 10 s (issue 16 kind 5): dropped ~25 s after each connect on main.
    d = Deadlines(open_timeout=10.0, read_timeout=5.0)
    d.new_session()
    for i in range(4):
        d.frame(100.0 + 10.0 * i, keyframe=True)
    assert d.frame_timeout == pytest.approx(30.0)
    assert d.socket_timeout == pytest.approx(15.0)
    assert d.open_timeout == pytest.approx(25.0)  # two keyframe intervals + read floor
    assert d.picture_timeout == pytest.approx(40.0)


def test_a_fast_camera_keeps_the_floor() -> None:
    d = Deadlines(open_timeout=10.0, read_timeout=5.0)
    for i in range(50):
        d.frame(i * 0.1, keyframe=i % 10 == 0)
    assert d.frame_timeout == 5.0 and d.socket_timeout == 5.0 and d.open_timeout == 10.0


def test_timeouts_double_up_to_the_cap_and_intervals_never_span_a_reconnect() -> None:
    d = Deadlines(open_timeout=10.0, read_timeout=5.0, cap=60.0)
    for expected in (20.0, 40.0, 60.0, 60.0):
        d.open_timed_out()
        assert d.open_timeout == expected
    d.read_timed_out()
    assert d.frame_timeout == 30.0 and d.socket_timeout == 10.0
    d.frame(0.0, keyframe=False)
    d.new_session()
    d.frame(500.0, keyframe=False)  # the next session's first frame: no 500 s interval
    assert d.frame_timeout == 30.0


def test_bad_floors_are_refused() -> None:
    with pytest.raises(ValueError):
        Deadlines(open_timeout=0.0, read_timeout=5.0)
