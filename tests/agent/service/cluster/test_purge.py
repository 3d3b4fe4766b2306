"""``remove(purge=True)`` of a stream whose actor is still starting deletes what that actor creates.

No cluster: the gateway's actor is a stand-in whose start answers when the test says, creating the
stream's folder as a real actor does (its snapshot); Ray's kill is recorded, not called.
"""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.service.cluster import require_ray
from agent.service.cluster.gateway import RayShard
from agent.service.cluster.placement import Placement, shard_dir
from agent.service.config import RayConfig, ServiceConfig, parse_spec
from tests.agent.service.helpers import tiny_settings

pytestmark = pytest.mark.timeout(30)


def _ref(fut: Future[Any]) -> Any:
    return SimpleNamespace(future=lambda: fut)


class _SlowActor:
    """Starts when :meth:`release` is called; ``close(purge)`` deletes its folder as LocalShard does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: Future[Any] = Future()
        self.closed: list[bool] = []
        self.start = SimpleNamespace(remote=lambda spec: _ref(self.started))
        self.poll = SimpleNamespace(remote=lambda wait: _ref(Future()))  # never answers
        self.close = SimpleNamespace(remote=self._close)

    def release(self) -> None:
        (self.folder / "streams").mkdir(parents=True)
        self.started.set_result({"id": "cam", "kind": "file", "status": "running"})

    def _close(self, purge: bool) -> Any:
        self.closed.append(purge)
        if purge:
            shutil.rmtree(self.folder)
        done: Future[Any] = Future()
        done.set_result(None)
        return _ref(done)


async def test_a_purge_while_the_actor_starts_waits_for_it_and_deletes_its_files(tmp_path: Path) -> None:
    cfg = ServiceConfig(index=tmp_path, ray=RayConfig(address="auto", deadline_seconds=1.0))
    shard = RayShard(cfg, tiny_settings())
    killed: list[Any] = []
    shard._ray = SimpleNamespace(exceptions=require_ray().exceptions, kill=killed.append)
    folder = shard_dir(cfg, "cam")
    actor = _SlowActor(folder)
    shard._new_actor = lambda stream: actor  # type: ignore[method-assign]
    spec = parse_spec({"id": "cam", "kind": "file", "path": "/nonexistent.mp4"})
    adding = asyncio.create_task(shard._place(Placement(spec)))
    await asyncio.sleep(0.1)
    removing = asyncio.create_task(shard.remove("cam", purge=True))
    await asyncio.sleep(0.2)
    assert not removing.done()  # the purge waits for the actor that creates the files
    actor.release()
    status = await asyncio.wait_for(adding, 5.0)
    await asyncio.wait_for(removing, 5.0)
    assert status.status == "running"
    assert actor.closed == [True] and killed == [actor]
    assert not folder.exists() and "cam" not in shard.placed


async def test_a_purge_of_a_stream_without_an_actor_deletes_its_files_from_the_gateway(
    tmp_path: Path,
) -> None:
    cfg = ServiceConfig(index=tmp_path, ray=RayConfig(address="auto"))
    shard = RayShard(cfg, tiny_settings())
    folder = shard_dir(cfg, "cam")
    (folder / "streams").mkdir(parents=True)  # what its last actor left before it died
    spec = parse_spec({"id": "cam", "kind": "file", "path": "/nonexistent.mp4"})
    shard.placed["cam"] = Placement(spec, moving="moving: actor died")
    await shard.remove("cam", purge=True)
    assert not folder.exists() and "cam" not in shard.placed
