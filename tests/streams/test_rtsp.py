"""RTSPSource against a real RTSP server (GStreamer's gst-rtsp-server) on loopback."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator

import pytest

from streams.errors import DisconnectedError, SourceUnavailableError
from streams.media import Frame
from streams.rtsp import RTSPSource, backoff_delay
from tests.streams.servers import RtspServer, free_port, gst_rtsp_available
from tests.videos import VIDEOS

VTEST = VIDEOS / "vtest.avi"

needs_gst = pytest.mark.skipif(
    (why := gst_rtsp_available()) is not None, reason=why or "GStreamer RTSP server unavailable"
)


@pytest.fixture
def server() -> Iterator[RtspServer]:
    srv = RtspServer(VTEST)
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


def source(url: str, **kw: object) -> RTSPSource:
    args: dict[str, object] = {"stream": "cam", "backoff_initial": 0.2, "backoff_max": 1.0}
    args.update(kw)
    return RTSPSource(url, **args)  # type: ignore[arg-type]


async def take(src: RTSPSource, n: int) -> list[Frame]:
    out: list[Frame] = []
    async for frame in src:
        out.append(frame)
        if len(out) == n:
            break
    return out


@needs_gst
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_frames_arrive_with_monotonic_time_and_wall_clock(server: RtspServer, transport: str) -> None:
    async with source(server.url, fps=2.0, transport=transport) as src:
        frames = await asyncio.wait_for(take(src, 6), 60)
        assert src.state == "streaming"
        assert src.frames_in > len(frames)  # 10 fps served, 2 fps kept
        assert src.frames_out == 6
        assert src.wall_source in ("rtcp", "arrival")
    assert src.state == "closed"
    times = [f.t for f in frames]
    assert times[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(times))
    # 2 fps sampling of a 10 fps stream: about half a second apart
    assert all(0.3 < b - a < 0.8 for a, b in itertools.pairwise(times))
    now = time.time()
    for f in frames:
        assert f.stream == "cam"
        assert f.wall is not None and abs(f.wall - now) < 60
        assert min(f.image.shape[:2]) == 224 and f.image.shape[2] == 3
        assert f.image.dtype.name == "uint8" and f.image.std() > 5  # real pedestrians, not a blank
    # wall - t is one offset per session, up to the switch from arrival time to the first RTCP
    # sender report (which moves it back by the frames FFmpeg buffered while probing).
    offsets = [f.wall - f.t for f in frames if f.wall is not None]
    assert max(offsets) - min(offsets) < 3.0


@needs_gst
async def test_reconnects_after_server_restart_and_time_stays_monotonic(server: RtspServer) -> None:
    async with source(server.url) as src:
        before = await asyncio.wait_for(take(src, 3), 60)
        server.kill()
        await asyncio.sleep(0.5)
        server.start()  # same port
        after: list[Frame] = []
        async for frame in src:
            after.append(frame)
            if src.reconnects >= 1 and len(after) >= 4:
                break
        assert src.reconnects >= 1
        assert src.failures >= 1
        assert len(src.gaps) >= 1
        gap = src.gaps[0]
        assert gap.start >= before[-1].t and gap.end > gap.start
    times = [f.t for f in before + after]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert after[-1].t > gap.end - 1e-9


@needs_gst
async def test_no_retries_surfaces_the_disconnect(server: RtspServer) -> None:
    src = source(server.url, retries=0)
    async with src:
        await asyncio.wait_for(take(src, 2), 60)
        server.kill()
        with pytest.raises(DisconnectedError):
            async for _ in src:
                pass


async def test_unreachable_server_with_no_retries_raises() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/test"  # nothing listens there
    async with source(url, retries=0) as src:
        with pytest.raises(DisconnectedError, match="open failed"):
            await asyncio.wait_for(take(src, 1), 30)
        assert src.frames_in == 0


async def test_close_during_backoff_is_prompt_and_idempotent() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/test"
    src = source(url, backoff_initial=30.0, backoff_max=60.0)
    src.start()
    for _ in range(3000):
        if src.state == "backoff":
            break
        await asyncio.sleep(0.01)
    assert src.state == "backoff"
    await asyncio.wait_for(src.close(), 10)  # the backoff wait is interruptible
    await src.close()
    assert src.state == "closed"
    with pytest.raises(StopAsyncIteration):
        await src.__anext__()


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(SourceUnavailableError):
        RTSPSource("http://example/x", stream="a")
    with pytest.raises(SourceUnavailableError):
        RTSPSource("rtsp://127.0.0.1/x", stream="a", transport="sctp")  # type: ignore[arg-type]
    with pytest.raises(SourceUnavailableError):
        RTSPSource("rtsp://127.0.0.1/x", stream="a", retries=-1)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        step = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
