"""The gateway encodes a query once: real stream actors in this process behind stand-in Ray handles.

No cluster: each :class:`StreamActor` (a real :class:`LocalShard` ingesting a real file) runs on
this test's event loop, and its handle answers ``method.remote(...)`` with a future, as a Ray
actor handle does. What is counted is each actor's query-vector misses: a miss is an encoder pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.channels.retrieval import PRESCREEN, REFINE, Query
from agent.config import EncoderConfig, Settings
from agent.errors import QueryError
from agent.service.cluster import require_ray
from agent.service.cluster.actor import StreamActor
from agent.service.cluster.gateway import RayShard
from agent.service.cluster.placement import Placement
from agent.service.config import RayConfig, ServiceConfig, parse_spec
from agent.types import QueryResult
from tests.agent.service.helpers import NEEDLE, needle_video, tiny_settings

pytestmark = pytest.mark.timeout(120)


class _Method:
    """``handle.method.remote(*args)`` of a Ray actor handle, run on this loop."""

    def __init__(self, fn: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.loop = fn, loop
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        out = self.fn(*args)
        if asyncio.iscoroutine(out):
            fut = asyncio.run_coroutine_threadsafe(out, self.loop)
        else:
            fut = Future()
            fut.set_result(out)
        return type("Ref", (), {"future": lambda _self: fut})()


class _Handle:
    def __init__(self, actor: StreamActor) -> None:
        loop = asyncio.get_running_loop()
        for name in ("search", "first", "query_vectors", "memory"):
            setattr(self, name, _Method(getattr(actor, name), loop))


def _misses(actor: StreamActor) -> int:
    return actor.shard.idx.query_vectors.misses


def _moments(results: dict[str, QueryResult]) -> dict[str, list[tuple[float, float, float]]]:
    return {k: [(m.start, m.end, round(m.score, 6)) for m in r.moments] for k, r in results.items()}


@asynccontextmanager
async def _gateway(tmp_path: Path, settings: Settings) -> AsyncIterator[tuple[RayShard, list[StreamActor]]]:
    """A gateway over two actors, each having ingested its own needle recording to the end."""
    cfg = ServiceConfig(index=tmp_path / "gw", ray=RayConfig(address="auto", deadline_seconds=30.0))
    shard = RayShard(cfg, settings)
    shard._ray = require_ray()  # exception classes only: nothing is started
    actors: list[StreamActor] = []
    try:
        for name in ("cam0", "cam1"):
            video = needle_video(tmp_path / f"{name}.mp4", before=2.0, needle=2.0, after=2.0)
            actor = StreamActor(cfg.model_copy(update={"index": tmp_path / name, "ray": None}), settings, 64)
            actors.append(actor)
            spec = parse_spec({"id": name, "kind": "file", "path": str(video)})
            await actor.start(spec)
            shard.placed[name] = Placement(spec, handle=_Handle(actor))
        deadline = time.monotonic() + 60.0
        # The shard's statuses, not the actor's heartbeat: that asks Ray for its node.
        while [(await a.shard.statuses())[0].status for a in actors] != ["done", "done"]:
            assert time.monotonic() < deadline, "replays did not finish"
            await asyncio.sleep(0.2)
        yield shard, actors
    finally:
        for actor in actors:
            await actor.close()


@pytest.mark.parametrize("other_refine", [False, True], ids=["one-model", "another-refine-model"])
async def test_the_gateway_encodes_once_and_actors_answer_as_if_they_had(
    tmp_path: Path, other_refine: bool
) -> None:
    settings = tiny_settings()
    if other_refine:  # a second encoder instance: its vector is a role of its own, shipped too
        settings = settings.model_copy(
            update={"refine": EncoderConfig(model="tiny-random", allow_random=True)}
        )
    # An image at grid 2: the prescreen's vector is its still shot, the refine role's the photo
    # alone, with one model as with two.
    roles = {PRESCREEN, REFINE}
    async with _gateway(tmp_path, settings) as (shard, actors):
        before = [_misses(a) for a in actors]
        query = Query(image=np.asarray(Image.open(NEEDLE).convert("RGB")), top_k=3)
        results = await shard.search(query, budget=5.0)
        # One actor encoded the query once per role (its still shot, the photo alone); the other
        # received the vectors and encoded nothing.
        assert sorted(m - b for m, b in zip(map(_misses, actors), before, strict=True)) == [0, 2]
        calls = [p.handle.search.calls for p in shard.placed.values()]
        assert [len(c) for c in calls] == [1, 1]
        shipped = calls[0][0][3]
        assert calls[1][0][3] is shipped and set(shipped) == roles
        assert all(v.shape == (actors[0].shard.idx.prescreen.dim,) for v in shipped.values())
        assert set(results) == {"cam0", "cam1"} and all(r.moments for r in results.values())
        for name, actor in zip(("cam0", "cam1"), actors, strict=True):
            # Encoding here instead gives the same vectors and the same answer.
            actor.shard.idx.query_vectors._items.clear()
            own = await actor.query_vectors(query)
            for role in roles:
                np.testing.assert_allclose(own[role], shipped[role], rtol=0, atol=1e-6)
            alone = await actor.search("alone", query, 5.0)
            assert _moments(alone) == _moments({name: results[name]})


async def test_a_query_is_checked_at_the_gateway_before_any_encoding(tmp_path: Path) -> None:
    async with _gateway(tmp_path, tiny_settings()) as (shard, actors):
        before = [_misses(a) for a in actors]
        with pytest.raises(QueryError):
            await shard.search(Query(text="   "))
        assert [_misses(a) for a in actors] == before
        assert all(not p.handle.query_vectors.calls for p in shard.placed.values())
