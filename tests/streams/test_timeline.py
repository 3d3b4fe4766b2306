"""Stream time: LiveClock (one monotonic timeline per live source), Pacer, and a stream's Timeline."""

from __future__ import annotations

import pytest

from streams.timeline import MIN_RESTART_GAP, LiveClock, Pacer, Timeline


def test_clock_starts_at_zero_and_follows_raw_times() -> None:
    clock = LiveClock()
    assert clock.map(100.0, arrival=50.0) == 0.0
    assert clock.map(100.5, arrival=50.6) == pytest.approx(0.5)
    assert clock.map(101.0, arrival=50.9) == pytest.approx(1.0)
    assert clock.gaps == []


def test_clock_places_frames_without_pts_by_arrival() -> None:
    clock = LiveClock()
    assert clock.map(None, arrival=10.0) == 0.0  # GStreamer's first RTSP frame
    t1 = clock.map(5.0, arrival=10.1)
    assert t1 == pytest.approx(0.1)
    assert clock.map(5.2, arrival=10.3) == pytest.approx(0.3)
    assert clock.map(None, arrival=10.5) == pytest.approx(0.5)


def test_reconnect_continues_after_the_last_time_with_the_real_gap() -> None:
    clock = LiveClock()
    for i in range(5):
        clock.map(1000.0 + i * 0.1, arrival=i * 0.1)
    last = clock.last_t
    assert last is not None and last == pytest.approx(0.4)
    clock.new_session()
    t = clock.map(3.0, arrival=0.4 + 4.0)  # new session, raw clock restarted, 4 s later
    assert t == pytest.approx(last + 4.0)
    assert clock.map(3.1, arrival=4.5) == pytest.approx(t + 0.1)
    assert len(clock.gaps) == 1 and clock.gaps[0].start == last and clock.gaps[0].end == t


def test_raw_clock_going_backwards_inside_a_session_stays_monotonic() -> None:
    clock = LiveClock()
    times = [clock.map(raw, arrival=a) for raw, a in [(10.0, 0.0), (10.5, 0.5), (0.2, 1.0), (0.7, 1.5)]]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])  # e.g. an RTP timestamp wrap
    same = [clock.map(0.7, arrival=1.5), clock.map(0.7, arrival=1.5)]
    assert same[0] > times[-1] and same[1] > same[0]  # strictly increasing even for duplicates


class FakeClock:
    """A clock the test moves by hand (no timed assertions)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_pacer_releases_each_frame_at_its_stream_time() -> None:
    clock = FakeClock(50.0)
    pacer = Pacer(clock)
    assert pacer.delay(3.0) == 0.0  # the first frame fixes the origin
    assert pacer.delay(3.5) == pytest.approx(0.5)
    clock.now = 50.4
    assert pacer.delay(3.5) == pytest.approx(0.1)
    clock.now = 52.0
    assert pacer.delay(4.0) == 0.0  # late frames go at once


async def test_resume_skips_what_is_stored_and_tells_a_replay_where_to_seek() -> None:
    tl = Timeline(resume=4.0, offset=1.5)
    assert tl.source_start() == pytest.approx(2.5)  # the source's own second
    assert await tl.stamp(2.0, None) is None  # 3.5 <= 4.0: stored before the restart
    assert await tl.stamp(2.5, None) is None  # exactly the resume point: stored too
    assert await tl.stamp(3.0, None) == (pytest.approx(4.5), None)
    tl.open_source(restarts_clock=False)  # a replay keeps its own times
    assert tl.offset == 1.5
    assert Timeline().source_start() is None


async def test_live_source_restart_is_re_anchored_after_the_stored_timeline_with_the_real_gap() -> None:
    wall = FakeClock(10_000.0)
    tl = Timeline(resume=100.0, last_wall=10_000.0 - 7.0, now=wall)
    tl.open_source(restarts_clock=True)
    assert tl.offset == pytest.approx(107.0)  # 7 s passed since the last stored frame
    assert tl.resume is None
    assert await tl.stamp(0.0, 42.0) == (pytest.approx(107.0), 42.0)  # a live source's wall passes through
    tl.open_source(restarts_clock=True)  # only the first open after a restart shifts
    assert tl.offset == pytest.approx(107.0)
    quick = Timeline(resume=5.0, last_wall=wall.now, now=wall)
    quick.open_source(restarts_clock=True)
    assert quick.offset == pytest.approx(5.0 + MIN_RESTART_GAP)


async def test_loop_pass_continues_one_period_after_the_last_frame() -> None:
    tl = Timeline()
    for t in (0.0, 0.5, 1.0):
        await tl.stamp(t, None)
    tl.next_pass(0.5)
    assert tl.offset == pytest.approx(1.5)
    assert await tl.stamp(0.0, None) == (pytest.approx(1.5), None)
    assert await tl.stamp(1.0, None) == (pytest.approx(2.5), None)
    tl.next_pass(0.5)
    assert tl.offset == pytest.approx(3.0)


async def test_wall_from_the_recording_origin_or_the_release_time_of_a_paced_replay() -> None:
    recorded = Timeline(wall_origin=1_700_000_000.0, offset=2.0)
    assert await recorded.stamp(1.0, None) == (pytest.approx(3.0), pytest.approx(1_700_000_003.0))
    wall = FakeClock(5.0)
    paced = Timeline(realtime=True, now=wall, pace_clock=FakeClock(0.0))
    assert await paced.stamp(0.0, None) == (0.0, 5.0)
    plain = Timeline()
    assert await plain.stamp(1.0, 77.0) == (1.0, 77.0)


async def test_audio_is_placed_like_frames_without_pacing_or_moving_the_clock() -> None:
    tl = Timeline(resume=4.0, offset=1.5, wall_origin=1000.0, realtime=True, pace_clock=lambda: 0.0)
    assert tl.place(2.0, None) is None  # stored before the restart, like a frame
    assert tl.place(3.0, 5.0) == (pytest.approx(4.5), pytest.approx(1004.5))  # the recording's wall rule
    assert tl.last_t == 4.0  # frames own the clock: audio does not move it
    live = Timeline(now=lambda: 50.0)
    assert live.place(1.0, 7.0) == (pytest.approx(1.0), 7.0)  # a live source's own wall time is kept
