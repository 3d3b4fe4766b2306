"""The gateway's parts without a cluster: deadlines, the event buffer, recovery accounting, config."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.channels.retrieval import Query
from agent.cli.main import build_parser
from agent.cli.serve import serve_config
from agent.errors import ConfigError, ShardUnavailableError
from agent.service.cluster import gateway, require_ray
from agent.service.cluster.actor import EventBuffer, Heartbeat
from agent.service.cluster.gateway import RayShard
from agent.service.cluster.placement import Placement
from agent.service.config import RayConfig, ServiceConfig, parse_spec
from agent.service.protocol import StreamStatus
from agent.service.shard import ShardStats, missing_of
from tests.agent.service.helpers import tiny_settings

pytestmark = pytest.mark.timeout(30)


class _Hung:
    """An actor method whose calls never answer (a stuck actor): a Ray ref that never resolves."""

    class _Ref:
        def future(self) -> Future[Any]:
            return Future()

    def remote(self, *args: Any) -> _Ref:
        return self._Ref()


class _HungActor:
    search = first = heartbeat = query_vectors = _Hung()


def _spec(name: str) -> Any:
    return parse_spec({"id": name, "kind": "file", "path": "/nonexistent.mp4"})


async def test_a_stuck_actor_is_left_out_after_its_deadline_and_named_missing(tmp_path: Path) -> None:
    cfg = ServiceConfig(index=tmp_path, ray=RayConfig(address="auto", deadline_seconds=0.3))
    shard = RayShard(cfg, tiny_settings())
    shard._ray = require_ray()  # exception classes only: nothing is started
    stuck = Placement(_spec("stuck"), handle=_HungActor())
    moving = Placement(_spec("moving"), moving="moving: actor died")
    shard.placed = {"stuck": stuck, "moving": moving}
    firsts: list[dict[str, Any]] = []
    t0 = time.monotonic()
    results = await shard.search(
        Query(image=np.zeros((8, 8, 3), np.uint8)), budget=0.2, on_first=firsts.append
    )
    assert time.monotonic() - t0 < 3.0  # first deadline + budget + deadline, not forever
    assert dict(results) == {}
    assert missing_of(results) == {"stuck": "no answer in 0.5 s", "moving": "moving: actor died"}
    assert missing_of(firsts[0]) == {"stuck": "no answer in 0.3 s", "moving": "moving: actor died"}
    listed = {s.id: s for s in await shard.statuses()}  # from the last known state, within the deadline
    assert listed["moving"].status == "starting" and "moving: actor died" in listed["moving"].reasons


async def test_event_buffer_drops_the_oldest_when_full_and_counts() -> None:
    buf = EventBuffer(16)
    for i in range(20):
        buf.on_stream_end(f"s{i}")
    events = await buf.take(0.0)
    assert [body for _, body in events] == [f"s{i}" for i in range(4, 20)]
    assert buf.dropped == 4
    t0 = time.monotonic()
    assert await buf.take(0.2) == [] and time.monotonic() - t0 >= 0.15  # a long-poll waits when empty
    waiter = asyncio.create_task(buf.take(5.0))
    await asyncio.sleep(0.05)
    buf.on_stream_end("late")
    assert await asyncio.wait_for(waiter, 1.0) == [("end", "late")]  # ... and answers at once


def test_a_death_counts_the_seconds_and_frames_since_the_last_snapshot() -> None:
    p = Placement(_spec("cam"), handle=object(), status={"id": "cam", "kind": "file", "status": "running"})
    now = time.time()
    p.heartbeat = Heartbeat(status={}, node="n1", frames=30, snapshot_wall=now - 5.0, snapshot_frames=20)
    p.died("actor died")
    assert p.handle is None and p.moving == "moving: actor died"
    assert 4.9 < p.lost_seconds < 6.0 and p.lost_frames == 10
    view = StreamStatus.model_validate(p.view())
    assert view.status == "starting" and view.up is False
    extra = view.model_extra or {}
    assert extra["recovery"]["lost_frames"] == 10 and extra["placement"]["moving"] == "moving: actor died"
    p.restarted(object(), {"id": "cam", "kind": "file", "status": "running"})
    assert p.restarts == 1 and p.moving is None and p.stale_stats().restarts == 1


def test_serve_ray_flags_become_the_validated_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--ray", "10.0.0.5:6379", "--ray-storage", str(tmp_path)])
    rc = serve_config(args).service.ray
    assert rc is not None and rc.address == "10.0.0.5:6379" and rc.storage == tmp_path.resolve()
    with pytest.raises(ConfigError, match=r"service\.ray"):
        serve_config(build_parser().parse_args(["serve", "--ray", ""]))
    assert serve_config(build_parser().parse_args(["serve"])).service.ray is None  # the default: in process


def test_a_missing_ray_extra_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match="vmr\\[ray\\]"):
        require_ray()


class _StartingActor:
    start = open = _Hung()  # never answer: the gateway is still waiting when cancelled or past its limit


class _FakeRay:
    """Just enough of ``ray`` to create one :class:`_StartingActor` and to kill it."""

    exceptions = require_ray().exceptions

    def __init__(self) -> None:
        self.actor = _StartingActor()
        self.killed: list[Any] = []

    def remote(self, *args: Any) -> Any:  # ray.remote(cls) and ActorClass.remote(...) alike
        return self if args and isinstance(args[0], type) else self.actor

    def options(self, **kwargs: Any) -> _FakeRay:
        return self

    def kill(self, handle: Any) -> None:
        self.killed.append(handle)


async def test_a_stream_removed_while_its_actor_starts_leaves_no_actor(tmp_path: Path) -> None:
    """Cancelling a start (``streams.remove``, the gateway closing, a client gone) kills the new actor."""
    shard = RayShard(ServiceConfig(index=tmp_path, ray=RayConfig(address="auto")), tiny_settings())
    shard._ray = fake = _FakeRay()
    placing = asyncio.create_task(shard._place(Placement(_spec("s"))))
    await asyncio.sleep(0.05)  # the actor exists and its start is in flight
    placing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await placing
    assert fake.killed == [fake.actor]


class _Failing:
    """An actor method every call of which fails at once with a transient Ray error (GCS hiccup)."""

    def __init__(self) -> None:
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1
        ref: Future[Any] = Future()
        ref.set_exception(require_ray().exceptions.RaySystemError("gcs unavailable"))
        return type("Ref", (), {"future": lambda _: ref})()


async def test_an_unavailable_actor_is_polled_at_the_poll_period_not_in_a_spin(tmp_path: Path) -> None:
    rc = RayConfig(address="auto", poll_seconds=0.1)
    shard = RayShard(ServiceConfig(index=tmp_path, ray=rc), tiny_settings())
    shard._ray = require_ray()  # exception classes only
    poll = _Failing()
    p = Placement(_spec("s"), handle=type("Actor", (), {"poll": poll})())
    task = asyncio.create_task(shard._poll(p))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 1 <= poll.calls <= 8, poll.calls  # about one per 0.1 s; a spin makes thousands


async def test_a_probe_actor_that_does_not_open_is_killed(tmp_path: Path, monkeypatch: Any) -> None:
    """With no stream running, each ``hello`` asks a probe actor: a stuck one must not pile up."""
    monkeypatch.setattr(gateway, "START_SECONDS", 0.2)
    shard = RayShard(ServiceConfig(index=tmp_path, ray=RayConfig(address="auto")), tiny_settings())
    shard._ray = fake = _FakeRay()
    for _ in range(2):
        with pytest.raises(ShardUnavailableError):
            await shard.model_info()
    assert fake.killed == [fake.actor, fake.actor] and shard._probe is None


class _Answers:
    """An actor method whose one call answers when the test says (``ref`` set by hand)."""

    def __init__(self) -> None:
        self.ref: Future[Any] = Future()

    def remote(self, *args: Any) -> Any:
        return type("Ref", (), {"future": lambda _: self.ref})()


async def test_a_stream_removed_before_its_actor_answered_leaves_no_actor(tmp_path: Path) -> None:
    """``streams.remove`` while ``streams.add`` waits for the actor: the actor that then answers is killed."""
    shard = RayShard(ServiceConfig(index=tmp_path, ray=RayConfig(address="auto")), tiny_settings())
    shard._ray = fake = _FakeRay()
    fake.actor.start = start = _Answers()  # type: ignore[assignment]
    placing = asyncio.create_task(shard._place(Placement(_spec("s"))))
    await asyncio.sleep(0.05)
    await shard.remove("s")
    start.ref.set_result({"id": "s", "kind": "file", "status": "running"})
    with pytest.raises(ShardUnavailableError, match="removed"):
        await placing
    assert fake.killed == [fake.actor] and not shard.placed


@pytest.mark.parametrize("address", ["auto", "ray://127.0.0.1:10001"])
async def test_actor_calls_are_submitted_off_the_event_loop_under_ray_client(
    tmp_path: Path, address: str
) -> None:
    # Under Ray Client, `.remote()` is a blocking round trip to the client server.
    loop_thread = threading.get_ident()
    threads: list[int] = []

    class _Stats:
        def remote(self) -> Any:
            threads.append(threading.get_ident())
            fut: Future[Any] = Future()
            fut.set_result(ShardStats(encoder_images=3))
            return SimpleNamespace(future=lambda: fut)

    cfg = ServiceConfig(index=tmp_path, ray=RayConfig(address=address, deadline_seconds=5.0))
    shard = RayShard(cfg, tiny_settings())
    shard._ray = require_ray()  # exception classes only: nothing is started
    shard.placed = {"cam": Placement(_spec("cam"), handle=SimpleNamespace(stats=_Stats()))}
    assert (await shard.stats()).encoder_images == 3
    assert len(threads) == 1
    assert (threads[0] != loop_thread) == address.startswith("ray://")
