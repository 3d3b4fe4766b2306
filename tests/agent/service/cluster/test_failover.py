"""A worker node dies: its streams restart on the other from their last snapshot; queries keep answering."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.service.cluster.conftest import on_cluster
from tests.agent.service.helpers import (
    add,
    client,
    metric_samples,
    needle_b64,
    needle_video,
    refined,
    request,
    until,
)

pytestmark = pytest.mark.timeout(300)

STREAMS = ("cam0", "cam1")


def moved(s: dict[str, Any]) -> bool:
    return s["recovery"]["restarts"] == 1 and s["placement"]["moving"] is None and s["frames"] > 0


async def test_killing_a_worker_moves_its_streams_and_queries_keep_answering(
    two_workers: Any, tmp_path: Path
) -> None:
    cluster = two_workers
    # Realtime replays long enough to outlive the node: the needle early, then background.
    videos = {name: needle_video(tmp_path / f"{name}.mp4", 2.0, 2.0, 40.0) for name in STREAMS}
    async with on_cluster(cluster)(tmp_path, snapshot_seconds=1.0) as (_svc, url), client(url) as ws:
        for name, video in videos.items():
            await add(ws, {"id": name, "kind": "file", "path": str(video), "realtime": True})
        for name in STREAMS:  # past the needle, and snapshotted since (every second)
            await until(ws, name, lambda s: s["last_time"] is not None and s["last_time"] > 5.0, limit=120)
        await asyncio.sleep(2.0)
        listed = (await request(ws, {"type": "streams.list", "id": "l"}))["streams"]
        where = {s["id"]: s["placement"]["node"] for s in listed}
        assert len(set(where.values())) == 2, where  # one stream on each worker
        victim = next(n for n in cluster.worker_nodes if n.node_id == where["cam0"])
        lost = {name for name, node in where.items() if node == victim.node_id}
        await asyncio.to_thread(cluster.remove_node, victim)

        # While the stream moves, queries answer with what is up and say what is missing.
        answer = await refined(ws, {"type": "query", "id": "q1", "image": needle_b64(), "top_k": 8})
        assert answer["type"] == "moments.update", answer
        assert set(answer["missing"]) == lost, answer["missing"]
        assert {m["stream"] for m in answer["moments"]} == set(STREAMS) - lost

        status = await until(ws, "cam0", moved, limit=180)
        assert status["placement"]["node"] != victim.node_id
        recovery = status["recovery"]
        assert recovery["lost_seconds"] > 0 and recovery["lost_frames"] >= 0, recovery
        assert recovery["last"]["seconds"] == recovery["lost_seconds"]

        answer = await refined(ws, {"type": "query", "id": "q2", "image": needle_b64(), "top_k": 8})
        assert answer["missing"] == {}
        assert {m["stream"] for m in answer["moments"]} == set(STREAMS)
        best = next(m for m in answer["moments"] if m["stream"] == "cam0")
        assert best["start"] < 4.0 and best["end"] > 2.0, best  # the restored memory kept the needle

        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            samples = metric_samples((await http.get("/metrics")).text)
        assert samples["vmr_stream_restarts_total", (("stream", "cam0"),)] == 1
        assert samples["vmr_stream_lost_seconds_total", (("stream", "cam0"),)] > 0
        assert samples["vmr_shard_events_dropped_total", ()] == 0
