"""The shared encoder pool: two streams on two workers encode in one pool actor's passes.

Checked on a real cluster (the package's head and two workers): the pool
actor's passes hold super-images of both streams; the stream actors loaded no
model; the pool's vectors are the local encoder's (same tiny-random weights),
and the clips' answer is the one stream actors with their own encoders give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.channels.retrieval import PRESCREEN, REFINE, Query
from agent.core.superimage import still_shot
from agent.models.encoder import load_encoder
from agent.service.cluster.gateway import RayShard
from agent.service.config import SourcesConfig
from tests.agent.service.cluster.conftest import on_cluster
from tests.agent.service.helpers import (
    NEEDLE,
    add,
    client,
    needle_b64,
    needle_video,
    refined,
    tiny_settings,
    until,
)

pytestmark = pytest.mark.timeout(240)

STREAMS = ("cam0", "cam1")


def _moments(answer: dict[str, Any]) -> dict[tuple[str, float, float], float]:
    """Score by (stream, start, end): moments of equal score may come in either order."""
    return {(m["stream"], m["start"], m["end"]): m["score"] for m in answer["moments"]}


async def _ingest_and_ask(url: str, videos: dict[str, Path]) -> dict[str, Any]:
    async with client(url) as ws:
        for name, video in videos.items():
            await add(ws, {"id": name, "kind": "file", "path": str(video)})
        for name in videos:
            done = await until(ws, name, lambda s: s["status"] == "done", limit=120)
            assert done["frames"] >= 10, done
        # A budget the refinement never reaches: both modes refine every region (no timing in it).
        query = {"type": "query", "id": "q", "image": needle_b64(), "top_k": 12, "budget": 30.0}
        return await refined(ws, query)


async def test_two_streams_share_one_pool_actor_and_answer_as_local_encoders_do(
    cluster: object, tmp_path: Path
) -> None:
    # Long clips (many super-images) and a 100-ms window: the two replays overlap in the pool.
    videos = {name: needle_video(tmp_path / f"{name}.mp4", 2.0, 2.0, 8.0) for name in STREAMS}
    pooled = on_cluster(cluster, encoders=1, encoder_max_wait_ms=100.0)
    media = SourcesConfig(media_roots=[tmp_path])
    async with pooled(tmp_path / "ray", sources=media) as (svc, url):
        shard = svc.shard
        assert isinstance(shard, RayShard) and shard.pool is not None
        answer = await _ingest_and_ask(url, videos)
        [stats] = await shard.pool.stats(10.0)
        placed = list(shard.placed.values())
        memories = [await shard._call(p.handle.memory, limit=10.0) for p in placed]
        nodes = {p.node for p in placed}
        image = np.asarray(Image.open(NEEDLE).convert("RGB"))
        pool_vecs = await shard.pool.query_vectors(Query(image=image))
        counted = await shard.stats()

    assert len(nodes) == 2, nodes  # one stream on each worker, one pool actor for both
    # The streams' super-images, and the query the gateway encoded once (an image: a pool pass too).
    assert set(stats["streams"]) == {*STREAMS, "gateway"}, stats
    assert stats["mixed_passes"] >= 1 and stats["max_streams"] == 2, stats
    # Every super-image the actors encoded went through the pool, and nothing failed.
    assert (
        stats["images"] - stats["streams"]["gateway"] >= counted.encoder_images > 0 and stats["errors"] == 0
    ), (stats, counted)
    assert [m["encoders_loaded"] for m in memories] == [0.0, 0.0], memories

    # As a stream actor would encode it: tiled at the index's grid to score anchors, the photo alone
    # to refine.
    local = load_encoder(tiny_settings().prescreen)
    grid = tiny_settings().query_grid
    assert set(pool_vecs) == {PRESCREEN, REFINE} and grid == 2
    tiled = local.encode_images([still_shot(image, grid, local.image_size)])[0]
    np.testing.assert_allclose(pool_vecs[PRESCREEN], tiled, atol=1e-5)
    np.testing.assert_allclose(pool_vecs[REFINE], local.encode_images([image])[0], atol=1e-5)

    # The same clips with an encoder in each stream actor (encoders = 0, the mode before the pool).
    async with on_cluster(cluster, encoders=0)(tmp_path / "local", sources=media) as (svc, url):
        assert isinstance(svc.shard, RayShard) and svc.shard.pool is None
        expected = await _ingest_and_ask(url, videos)
    assert answer["type"] == expected["type"] == "moments.update", (answer, expected)
    assert answer["missing"] == {}
    got, want = _moments(answer), _moments(expected)
    assert set(got) == set(want), (got, want)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
