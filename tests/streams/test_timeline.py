"""Stream time: LiveClock (one monotonic timeline per live source), Pacer, and a stream's Timeline."""

from __future__ import annotations

import itertools

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


def feed(clock: LiveClock, frames: list[tuple[float | None, float]]) -> list[float]:
    return [clock.map(raw, arrival) for raw, arrival in frames]


def test_one_stray_timestamp_in_35_moves_nothing() -> None:
    # Issue 16 kind 1: 40 s at 10 fps, every 35th frame stamped an hour away (ahead, then behind).
    clock = LiveClock()
    frames: list[tuple[float | None, float]] = []
    for i in range(400):
        raw = 500.0 + i * 0.1
        if i % 35 == 34:
            raw += 3600.0 if (i // 35) % 2 == 0 else -3600.0
        frames.append((raw, 20.0 + i * 0.1))
    times = feed(clock, frames)
    assert times[-1] == pytest.approx(39.9, abs=1e-6)  # not 18037 s
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(b - a < 0.2 for a, b in itertools.pairwise(times))  # never faster than the footage
    assert clock.clamped == 11 and clock.jumps == 0
    stray = times[34]
    assert stray == pytest.approx(3.4)  # placed by its arrival


def test_a_jump_that_persists_starts_a_new_piece_at_real_elapsed_time() -> None:
    clock = LiveClock()
    before = feed(clock, [(100.0 + i * 0.5, i * 0.5) for i in range(10)])  # 0 .. 4.5
    after = feed(clock, [(9000.0 + i * 0.5, 5.0 + i * 0.5) for i in range(10)])  # sender clock +2 h
    assert before[-1] == pytest.approx(4.5)
    assert after == pytest.approx([5.0 + i * 0.5 for i in range(10)])
    assert clock.jumps == 1 and clock.clamped == clock.persist - 1
    assert clock.gaps == []


def test_clock_restarting_at_zero_keeps_stream_time_going_and_drops_nothing() -> None:
    # Issue 10 kind 1, live half: the sender's clock restarts (same session, or after a reconnect).
    clock = LiveClock()
    first = feed(clock, [(i * 0.5, i * 0.5) for i in range(10)])
    restarted = feed(clock, [(i * 0.5, 5.0 + i * 0.5) for i in range(10)])  # pts below the old maximum
    assert len(first + restarted) == 20
    assert restarted == pytest.approx([5.0 + i * 0.5 for i in range(10)])
    clock.new_session()
    again = feed(clock, [(i * 0.5, 12.0 + i * 0.5) for i in range(4)])  # reconnect after 2.5 s
    assert again == pytest.approx([12.0, 12.5, 13.0, 13.5])
    assert [(g.start, g.end) for g in clock.gaps] == [(pytest.approx(9.5), pytest.approx(12.0))]


def test_stalled_footage_arriving_late_is_kept_on_the_sender_clock() -> None:
    # A stall delivers frames late, then in a burst: running behind arrival is not stray.
    clock = LiveClock()
    frames: list[tuple[float | None, float]] = [(i * 0.5, i * 0.5) for i in range(4)]
    frames += [(2.0 + i * 0.5, 8.0 + i * 0.01) for i in range(6)]  # 6 s late, then all at once
    times = feed(clock, frames)
    assert times == pytest.approx([i * 0.5 for i in range(10)])
    assert clock.clamped == 0 and clock.jumps == 0


def test_slow_camera_without_pts_is_placed_by_arrival() -> None:
    clock = LiveClock()
    times = feed(clock, [(None, 100.0 + i * 10.0) for i in range(4)])  # one frame every 10 s, no pts
    assert times == pytest.approx([0.0, 10.0, 20.0, 30.0])
