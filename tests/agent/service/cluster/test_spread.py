"""Streams spread over the worker nodes; one query merges moments from all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.service.cluster.conftest import on_cluster
from tests.agent.service.helpers import add, client, needle_b64, needle_video, refined, request, until

pytestmark = pytest.mark.timeout(240)

STREAMS = ("cam0", "cam1")


async def test_streams_spread_over_workers_and_one_query_merges_them(cluster: object, tmp_path: Path) -> None:
    videos = {name: needle_video(tmp_path / f"{name}.mp4", 2.0, 2.0, 2.0) for name in STREAMS}
    async with on_cluster(cluster)(tmp_path) as (_svc, url), client(url) as ws:
        for name, video in videos.items():
            await add(ws, {"id": name, "kind": "file", "path": str(video)})
        for name in STREAMS:
            done = await until(ws, name, lambda s: s["status"] == "done", limit=120)
            assert done["frames"] >= 10, done
        listed = await request(ws, {"type": "streams.list", "id": "l"})
        nodes = {s["placement"]["node"] for s in listed["streams"]}
        assert len(nodes) == 2 and None not in nodes, listed  # both workers, never the head

        answer = await refined(ws, {"type": "query", "id": "q", "image": needle_b64(), "top_k": 12})
        assert answer["type"] == "moments.update", answer
        assert answer["missing"] == {}
        assert set(answer["streams"]) == set(STREAMS)
        assert {m["stream"] for m in answer["moments"]} == set(STREAMS)
        for name in STREAMS:  # each stream's best moment is its needle scene [2, 4)
            best = next(m for m in answer["moments"] if m["stream"] == name)
            assert best["start"] < 4.0 and best["end"] > 2.0, best
