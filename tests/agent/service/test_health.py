"""Honest health: a dead source, a failing encoder and failing snapshots are visible, and outages are gaps.

Real parts throughout: the service on a loopback port, GStreamer's RTSP
server killed and restarted, a generated file stream, ``/metrics`` parsed by
prometheus_client and ``/healthz`` over HTTP. The failures are injected at
their boundary: the encoder's batch function, one stream's snapshot write.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.channels.base import WorkItem
from agent.config import EncoderConfig, IndexConfig, Settings
from agent.errors import IndexStoreError
from agent.service.health import STALE_PERIODS, assess, covered_span, gap_totals
from streams.source import SourceStats
from tests.agent.service.helpers import (
    add,
    client,
    metric_samples,
    needle_video,
    request,
    running,
    status,
    until,
    wait_for,
)
from tests.streams.servers import RtspServer, gst_rtsp_available
from tests.videos import VIDEOS

needs_gst = pytest.mark.skipif(
    (why_gst := gst_rtsp_available()) is not None, reason=why_gst or "GStreamer RTSP server unavailable"
)

GAP = 1.5
"""Gap threshold of the RTSP test (seconds); the outage lasts well over it."""


def gap_settings() -> Settings:
    return Settings(
        prescreen=EncoderConfig(model="tiny-random", allow_random=True, batch_size=8, threads=1),
        index=IndexConfig(fps=2.0, grid=2, store_bytes=64 * 1024**2, gap_seconds=GAP),
    )


async def scrape(http: httpx.AsyncClient) -> tuple[dict[str, Any], dict[Any, float]]:
    """(``/healthz`` JSON, ``/metrics`` samples) read now."""
    health = (await http.get("/healthz")).json()
    return health, metric_samples((await http.get("/metrics")).text)


@needs_gst
async def test_dead_rtsp_source_is_reconnecting_down_degraded_and_its_outage_is_a_gap(tmp_path: Path) -> None:
    server = RtspServer(VIDEOS / "vtest.avi")
    await asyncio.to_thread(server.start)
    try:
        async with (
            running(tmp_path, gap_settings()) as (svc, url),
            client(url) as ws,
            httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http,
        ):
            await add(ws, {"id": "cam", "kind": "rtsp", "url": server.url})
            cam = await until(ws, "cam", lambda s: s["frames"] >= 6)
            assert cam["up"] and cam["source_state"] == "streaming" and cam["reasons"] == []
            health, samples = await scrape(http)
            assert health["status"] == "ok" and samples["vmr_stream_up", (("stream", "cam"),)] == 1

            await asyncio.to_thread(server.kill)
            down = await until(ws, "cam", lambda s: not s["up"], limit=30)
            assert down["status"] == "running" and down["source_state"] in ("backoff", "connecting")
            assert down["source_error"] and down["reasons"] == ["reconnecting"]
            health, samples = await scrape(http)
            assert samples["vmr_stream_up", (("stream", "cam"),)] == 0
            assert health["status"] == "degraded" and health["reasons"] == ["cam: reconnecting"]
            assert server.url not in str(health)  # reasons name codes, never URLs or paths
            frames_down = down["frames"]
            await asyncio.sleep(3 * GAP)  # the outage: longer than the gap threshold

            await asyncio.to_thread(server.start)  # same port: the camera comes back
            back = await until(ws, "cam", lambda s: s["up"] and s["frames"] >= frames_down + 6, limit=60)
            assert back["reconnects"] >= 1 and back["reasons"] == []
            assert back["gaps"]["count"] >= 1 and back["gaps"]["seconds"] >= 2 * GAP
            health, samples = await scrape(http)
            assert health["status"] == "ok" and samples["vmr_stream_up", (("stream", "cam"),)] == 1
            assert samples["vmr_coverage_gaps", (("stream", "cam"),)] >= 1
            assert samples["vmr_coverage_gap_seconds", (("stream", "cam"),)] >= 2 * GAP

            # The hole is not retained: coverage below 1, and no super-image was tiled across it
            # (a grid spanning it would have made the memory's coverage continuous).
            answer = await request(ws, {"type": "query", "id": "q", "text": "people", "streams": ["cam"]})
            coverage = answer["streams"]["cam"]["coverage"]
            assert answer["type"] == "moments" and coverage["retained_fraction"] < 1.0, answer
            # Nor are stored frames claimed across it (frames are stored up to the outage and after it).
            assert coverage["frames_seconds"] <= coverage["end"] - coverage["start"] - 2 * GAP, coverage
            holes = svc.idx.streams["cam"].gaps()
            assert any(end - start >= 2 * GAP for start, end in holes), holes
    finally:
        await asyncio.to_thread(server.kill)


async def test_a_stream_whose_every_batch_failed_ends_failed_with_the_reason(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with (
        running(tmp_path) as (svc, url),
        client(url) as ws,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http,
    ):
        worker = svc.worker
        assert worker is not None

        def broken(items: list[WorkItem]) -> np.ndarray:
            raise RuntimeError("CUDA error: device lost")

        worker.fn = broken
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        end = await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] != "running")
        stream = end["stream"]
        assert stream["status"] == "failed" and stream["tokens"] == 0 and stream["frames"] > 0, stream
        assert stream["error"]["code"] == "encoding_failed"
        assert "device lost" in stream["error"]["message"]
        health, samples = await scrape(http)
        assert health["status"] == "degraded" and health["reasons"] == ["cam: failed: encoding_failed"]
        assert samples["vmr_errors_total", (("code", "encoding_failed"), ("scope", "stream"))] == 1
        assert samples["vmr_stream_up", (("stream", "cam"),)] == 0


async def test_failing_snapshots_make_a_stream_stale_and_are_counted(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=20.0, needle=2.0, after=20.0)
    period = 0.4
    async with (
        running(tmp_path, snapshot_seconds=period) as (svc, url),
        client(url) as ws,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http,
    ):
        for sid in ("good", "bad"):
            await add(ws, {"id": sid, "kind": "file", "path": str(video), "realtime": True, "loop": True})
        bad = svc.runners["bad"].state

        def disk_full(meta: dict[str, Any] | None = None) -> None:
            raise IndexStoreError("No space left on device")  # what the store raises at its boundary

        bad.save = disk_full  # type: ignore[method-assign]
        stale = await until(ws, "bad", lambda s: "snapshot stale" in s["reasons"], limit=60)
        assert stale["snapshot_age"] > STALE_PERIODS * period
        health, samples = await scrape(http)
        assert health["status"] == "degraded" and "bad: snapshot stale" in health["reasons"]
        assert samples["vmr_errors_total", (("code", "index_store"), ("scope", "stream"))] >= 1
        good_age = samples["vmr_snapshot_age_seconds", (("stream", "good"),)]
        assert good_age < samples["vmr_snapshot_age_seconds", (("stream", "bad"),)]
        assert (await status(ws, "good"))["up"]
        del bad.save  # the disk has room again: the final snapshot at close goes through


async def test_error_events_are_counted_by_code(tmp_path: Path) -> None:
    async with (
        running(tmp_path) as (_svc, url),
        client(url) as ws,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http,
    ):
        for k in range(3):
            answer = await request(ws, {"type": "streams.remove", "id": f"r{k}", "stream": "nope"})
            assert answer["type"] == "error" and answer["code"] == "unknown_stream"
        await ws.send("{not json")
        await wait_for(ws, lambda e: e["type"] == "error" and e["code"] == "bad_message")
        _, samples = await scrape(http)
        assert samples["vmr_errors_total", (("code", "unknown_stream"), ("scope", "request"))] == 3
        assert samples["vmr_errors_total", (("code", "bad_message"), ("scope", "request"))] == 1


def live(state: str, error: str | None = None) -> SourceStats:
    return SourceStats(state, last_error=error)  # type: ignore[arg-type]


def test_a_waiting_segment_folder_is_not_reconnecting() -> None:
    waiting = live("connecting", "segment 3 corrupt")
    h = assess("running", None, waiting, live=False, snapshot_age=0.0, snapshot_seconds=10.0, gaps=(0, 0.0))
    assert h.up and not h.reconnecting and h.reasons == ()


@pytest.mark.parametrize(
    ("status", "source", "age", "up", "reasons"),
    [
        ("running", live("streaming"), 0.0, True, ()),
        ("running", live("backoff", "read failed"), 0.0, False, ("reconnecting",)),
        ("running", live("connecting", "open failed"), 0.0, False, ("reconnecting",)),
        ("running", live("connecting"), 0.0, True, ()),  # first session, nothing failed yet
        ("starting", None, 0.0, True, ()),
        ("running", live("streaming"), 31.0, True, ("snapshot stale",)),
        ("done", live("done"), 99.0, False, ()),  # an ended stream is not snapshotted any more
        ("failed", live("done", "corrupt"), 0.0, False, ("failed: corrupt_video",)),
    ],
)
def test_health_rules(
    status: str, source: SourceStats | None, age: float, up: bool, reasons: tuple[str, ...]
) -> None:
    code = "corrupt_video" if status == "failed" else None
    h = assess(status, code, source, snapshot_age=age, snapshot_seconds=10.0, gaps=(0, 0.0))
    assert h.up is up and h.reasons == reasons


def test_gap_totals_count_holes_and_merged_seconds() -> None:
    assert gap_totals([(3.5, 23.0), (30.0, 31.0)], forgotten=2.0) == (2, 22.5)
    assert gap_totals([]) == (0, 0.0)


def test_covered_span_lists_the_longest_holes_in_time_order_and_stays_bounded() -> None:
    assert covered_span([], []) is None
    spans = [(float(2 * i), float(2 * i + 1)) for i in range(100)]  # 99 holes of 1 s each ...
    holes = [(spans[i][1], spans[i + 1][0]) for i in range(99)]
    holes[40] = (81.0, 86.0)  # ... one of them 5 s long
    out = covered_span(spans, holes, limit=8)
    assert out is not None and out["start"] == 0.0 and out["end"] == 199.0
    listed = out["holes"]
    assert isinstance(listed, list) and len(listed) == 8 and [81.0, 86.0] in listed
    assert listed == sorted(listed)
