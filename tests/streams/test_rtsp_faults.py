"""RTSPSource against a fault-injecting RTSP server (tests.streams.servers.fault_rtsp) on loopback.

Each case is a camera behaviour from issue 16; the server's intervals are
scaled down (the rules depend on ratios), and every wait is bounded by a
timeout, never asserted on.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from streams.errors import DisconnectedError
from streams.media import Frame
from streams.rtsp import RTSPSource, RTSPSpec
from tests.streams.servers.fault_rtsp import FaultRtspServer, Faults


def source(url: str, **kw: object) -> RTSPSource:
    args: dict[str, object] = {"stream": "cam", "backoff_initial": 0.2, "backoff_max": 1.0, "fps": 5.0}
    args.update(kw)
    return RTSPSource(url, **args)  # type: ignore[arg-type]


async def take(src: RTSPSource, n: int, limit: float = 60.0) -> list[Frame]:
    out: list[Frame] = []

    async def run() -> None:
        async for frame in src:
            out.append(frame)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), limit)
    return out


async def test_one_stray_timestamp_in_35_is_clamped_and_moves_nothing() -> None:
    # 20 fps, every 35th frame stamped an hour ahead: on main, the stream jumped by an hour.
    with FaultRtspServer(Faults(fps=20, stray_every=35)) as srv:
        async with source(srv.url) as src:
            start = time.monotonic()
            frames = await take(src, 25)
            elapsed = time.monotonic() - start
            stats = src.stats().to_dict()
    times = [f.t for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] < elapsed + 1.0  # stream time never runs ahead of the footage
    assert stats["clock_clamped"] >= 2 and stats["clock_jumps"] == 0
    offsets = [f.wall - f.t for f in frames if f.wall is not None]
    assert max(offsets) - min(offsets) < 2.0  # no wall an hour away either


async def test_a_sender_clock_jump_that_persists_continues_at_real_elapsed_time() -> None:
    with FaultRtspServer(Faults(fps=20, jump_after=30, jump=7200.0)) as srv:
        async with source(srv.url) as src:
            start = time.monotonic()
            frames = await take(src, 20)
            elapsed = time.monotonic() - start
            stats = src.stats().to_dict()
    times = [f.t for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(b - a < 1.0 for a, b in itertools.pairwise(times))
    assert times[-1] < elapsed + 1.0
    assert stats["clock_jumps"] == 1


async def test_slow_camera_is_not_dropped_by_a_read_timeout_shorter_than_its_frame_interval() -> None:
    # One frame every 0.3 s with a 0.15 s read timeout (a 10 s camera with 5 s, scaled): RTCP keeps
    # the socket alive, the frame deadline learns the interval. On main: a reconnect loop.
    with FaultRtspServer(Faults(fps=1 / 0.3, gop=2, frames=8, rtcp_interval=0.05)) as srv:
        async with source(srv.url, read_timeout=0.15, fps=10.0) as src:
            frames = await take(src, 16)
            stats = src.stats().to_dict()
    assert src.reconnects == 0 and src.failures == 0, stats["last_error"]
    assert stats["frame_timeout"] >= 0.45
    gaps = [b.t - a.t for a, b in itertools.pairwise(frames)]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.3, abs=0.05)  # placed by pts, 0.3 s apart


async def test_a_source_that_gives_up_says_why() -> None:
    # Joined mid-GOP, no SPS/PPS in the SDP and no keyframe for 30 s: no decodable picture.
    faults = Faults(sprop=False, gop=300, frames=300, start_frame=5)
    with FaultRtspServer(faults) as srv:
        async with source(srv.url, read_timeout=0.2, open_timeout=0.5, retries=1) as src:
            with pytest.raises(DisconnectedError, match="gave up after 2 failed attempt"):
                await take(src, 50)
            error = src.stats().last_error
    assert error is not None and "no decodable picture" in error


async def test_stream_joined_between_keyframes_without_sps_pps_in_the_sdp_decodes_from_the_next_keyframe() -> (
    None
):
    # On main: avcodec_send_packet fails on the first P-frame, the session ends, and every
    # reconnect joins mid-GOP again: no frame ever.
    faults = Faults(sprop=False, gop=20, frames=40, start_frame=5)
    with FaultRtspServer(faults) as srv:
        async with source(srv.url, open_timeout=1.0) as src:
            frames = await take(src, 6)
            stats = src.stats()
    assert src.reconnects == 0
    assert stats.damaged_packets > 0  # the P-frames before the keyframe, skipped and counted
    assert frames[0].keyframe


@pytest.mark.parametrize(
    ("skew", "rtcp_delay", "expected"),
    [(30.0, 0.0, "rtcp"), (600.0, 0.0, "arrival"), (30.0, 3.0, "arrival")],
)
async def test_one_wall_clock_per_session(skew: float, rtcp_delay: float, expected: str) -> None:
    # A camera 30 s ahead: its reports are plausible (within max_clock_skew) and date the whole
    # session; 600 s off is not. Reports that start after the first frame: arrival for the
    # whole session (on main: arrival for the first frames, the camera's clock afterwards).
    with FaultRtspServer(Faults(fps=10, skew=skew, rtcp_delay=rtcp_delay, rtcp_interval=0.5)) as srv:
        async with source(srv.url, max_clock_skew=120.0) as src:
            frames = await take(src, 25)
            stats = src.stats().to_dict()
    assert stats["wall_source"] == expected
    offsets = [f.wall - f.t for f in frames if f.wall is not None]
    assert max(offsets) - min(offsets) < 2.0  # one clock, up to the probing burst
    lead = frames[-1].wall - time.time() if frames[-1].wall is not None else None
    assert lead is not None
    assert lead == pytest.approx(skew if expected == "rtcp" else 0.0, abs=3.0)


def test_spec_carries_per_stream_timeouts() -> None:
    spec = RTSPSpec(id="cam", kind="rtsp", url="rtsp://127.0.0.1/x", open_timeout=30, read_timeout=12)
    assert (spec.open_timeout, spec.read_timeout) == (30, 12)
    with pytest.raises(ValueError):
        RTSPSpec(id="cam", kind="rtsp", url="rtsp://127.0.0.1/x", read_timeout=0)
