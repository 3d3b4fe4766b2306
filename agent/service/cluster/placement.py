"""Where a stream runs on the cluster, and what its moves cost.

:class:`Placement` is the gateway's record of one stream: its spec, the
handle of the actor that runs it (None while it moves), the latest
:class:`~agent.service.cluster.actor.Heartbeat` and the recovery accounting
— restarts, wall seconds and frames lost between the last snapshot and a
death. :func:`actor_options` turns ``[service.ray]`` into Ray's placement
options (resources, node affinity or spreading).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.channels.base import WorkCounters
from agent.errors import ShardUnavailableError, VmrError
from agent.service.cluster.actor import Heartbeat
from agent.service.config import RayConfig, ServiceConfig, StreamSpec
from agent.service.shard import ShardStats, StreamStats
from agent.types import QueryResult

_T = TypeVar("_T")

SHARDS_DIR = "shards"
"""Under the shared storage: one folder per stream actor (``shards/<id>/``), its own index."""


def storage_of(cfg: ServiceConfig) -> Path:
    """The folder every node reads: ``ray.storage``, else the service's index."""
    assert cfg.ray is not None
    return cfg.ray.storage if cfg.ray.storage is not None else cfg.index


def shard_dir(cfg: ServiceConfig, stream: str) -> Path:
    """Where ``stream``'s actor keeps its index (snapshots, frames): the same folder on every node."""
    return storage_of(cfg) / SHARDS_DIR / stream


def actor_options(rc: RayConfig) -> dict[str, Any]:
    """``ray.remote(...).options`` of a stream actor: resources, then a preferred node or spreading."""
    options: dict[str, Any] = {
        "num_cpus": rc.num_cpus,
        "num_gpus": rc.num_gpus,
        "max_restarts": 0,  # the gateway restarts it itself, from the snapshot, and counts the loss
        "max_concurrency": 64,  # queries, polls and snapshots of one stream interleave on its loop
    }
    if rc.resources:
        options["resources"] = dict(rc.resources)
    if rc.node is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(rc.node, soft=True)
    else:
        options["scheduling_strategy"] = "SPREAD"  # streams over nodes, not packed on the first
    return options


class Unreachable(Exception):
    """An actor did not answer: dead (``died``), past its deadline, or not placed."""

    def __init__(self, reason: str, *, died: bool = False) -> None:
        super().__init__(reason)
        self.died = died


async def submit(method: Any, *args: Any, client: bool) -> Any:
    """``method.remote(*args)``: the Ray object ref of an actor call.

    Under Ray Client (``ray://``, ``client``) submitting a call is a blocking
    round trip to the client server: it runs in a thread, off the event loop.
    """
    if client:
        return await asyncio.to_thread(method.remote, *args)
    return method.remote(*args)


async def await_ref(ray: Any, ref: Any, limit: float) -> Any:
    """Await the Ray object ``ref`` for at most ``limit`` s; the one place Ray's errors are mapped.

    The actor's own VmrError is re-raised as is; a crash inside the actor is
    ShardUnavailableError; dead, late or briefly unavailable actors are
    :class:`Unreachable` (``died`` for a dead process or node).
    """
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), limit)
    except TimeoutError as exc:
        raise Unreachable(f"no answer in {limit:.1f} s") from exc
    except ray.exceptions.RayActorError as exc:  # the process or its node died
        raise Unreachable("actor died", died=True) from exc
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, VmrError):
            raise exc.cause from exc
        raise ShardUnavailableError(f"stream actor failed: {type(exc.cause).__name__}") from exc
    except ray.exceptions.RayError as exc:  # unavailable for now (node draining, GCS hiccup)
        raise Unreachable(type(exc).__name__) from exc


@dataclass
class Placement:
    """One stream on the cluster (see the module docstring)."""

    spec: StreamSpec
    handle: Any = None
    """The actor's handle; None while the stream moves (or never started)."""
    status: dict[str, Any] = field(default_factory=dict)
    """Latest :class:`~agent.service.protocol.StreamStatus` fields seen."""
    heartbeat: Heartbeat | None = None
    started: float = field(default_factory=time.time)
    """Unix time this placement's actor started (the recovery point before its first snapshot)."""
    moving: str | None = None
    """Why the stream has no actor now (``moving: node died``), None while it runs."""
    restarts: int = 0
    lost_seconds: float = 0.0
    lost_frames: int = 0
    last_loss: dict[str, float] = field(default_factory=dict)
    poll: asyncio.Task[None] | None = None
    dropped_before: int = 0
    """Events dropped by earlier actors of this stream."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Clear while an actor of this stream is being started."""

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def node(self) -> str | None:
        return None if self.heartbeat is None else self.heartbeat.node

    @property
    def dropped_events(self) -> int:
        return self.dropped_before + (0 if self.heartbeat is None else self.heartbeat.dropped_events)

    def died(self, reason: str) -> None:
        """The actor is gone: count what its last snapshot does not hold, and mark the stream moving."""
        now = time.time()
        hb = self.heartbeat
        since = self.started if hb is None or hb.snapshot_wall is None else hb.snapshot_wall
        frames = 0 if hb is None else max(0, hb.frames - hb.snapshot_frames)
        # The last heartbeat is at most one poll old: frames after it are not counted.
        self.last_loss = {"seconds": round(now - since, 3), "frames": frames, "at": round(now, 3)}
        self.lost_seconds += now - since
        self.lost_frames += frames
        self.dropped_before = self.dropped_events
        self.handle, self.heartbeat, self.moving = None, None, f"moving: {reason}"

    def restarted(self, handle: Any, status: dict[str, Any]) -> None:
        self.handle, self.status, self.moving = handle, status, None
        self.started = time.time()
        self.restarts += 1

    def view(self) -> dict[str, Any]:
        """The stream's status with where it runs and what its moves lost (extra fields)."""
        status = dict(self.status) or {"id": self.id, "kind": self.spec.kind, "status": "starting"}
        if self.moving is not None and status.get("status") in ("running", "starting"):
            status["status"] = "starting"
            status["up"] = False
            status["reasons"] = [*status.get("reasons", []), self.moving]
        status["placement"] = {"node": self.node, "restarts": self.restarts, "moving": self.moving}
        status["recovery"] = {
            "restarts": self.restarts,
            "lost_seconds": round(self.lost_seconds, 3),
            "lost_frames": self.lost_frames,
            "last": dict(self.last_loss),
        }
        return status

    def stale_stats(self) -> StreamStats:
        """Counters of a stream whose actor did not answer: the last heartbeat's, marked down."""
        hb = self.heartbeat
        return StreamStats(
            frames=0 if hb is None else hb.frames,
            dropped=0,
            reconnects=0,
            up=False,
            tokens=int(self.status.get("tokens", 0)),
            encoder_queue=0,
            restarts=self.restarts,
            lost_seconds=self.lost_seconds,
            lost_frames=self.lost_frames,
        )

    def wall_of(self, t: float) -> float | None:
        """Wall time of stream second ``t`` from the latest (second, wall) pair seen (live streams)."""
        hb = self.heartbeat
        if hb is None or not hb.walls:
            return None
        t_ref, wall_ref = hb.walls[-1]
        return wall_ref + (t - t_ref)


def merge_stats(placed: dict[str, Placement], answers: dict[str, ShardStats]) -> ShardStats:
    """The gateway's statistics: each answering actor's, with its recovery counts; the others' stale."""
    streams: dict[str, StreamStats] = {}
    work: dict[tuple[str, str], WorkCounters] = {}
    for name, p in list(placed.items()):
        part = answers.get(name)
        if part is None:
            streams[name] = p.stale_stats()
            continue
        for sname, s in part.streams.items():
            streams[sname] = dataclasses.replace(
                s, restarts=p.restarts, lost_seconds=p.lost_seconds, lost_frames=p.lost_frames
            )
        work.update(part.work)
    parts = list(answers.values())
    return ShardStats(
        streams=streams,
        encoder_passes=sum(a.encoder_passes for a in parts),
        encoder_images=sum(a.encoder_images for a in parts),
        encoder_errors=sum(a.encoder_errors for a in parts),
        work=work,
        events_dropped=sum(p.dropped_events for p in placed.values()),
    )


def merge_results(parts: dict[str, dict[str, QueryResult]]) -> dict[str, QueryResult]:
    """One dict of per-stream results from the actors' answers (stream ids are unique)."""
    out: dict[str, QueryResult] = {}
    for part in parts.values():
        out.update(part)
    return out


async def each_stream(calls: dict[str, Awaitable[_T]]) -> tuple[dict[str, _T], dict[str, str]]:
    """Every call's answer by stream, and the streams that could not answer (:class:`Unreachable`), by reason.

    Any other exception (a typed VmrError of the actor) is raised.
    """
    names = list(calls)
    done = await asyncio.gather(*calls.values(), return_exceptions=True)
    answers: dict[str, _T] = {}
    missing: dict[str, str] = {}
    for name, out in zip(names, done, strict=True):
        if isinstance(out, Unreachable):
            missing[name] = str(out)
        elif isinstance(out, BaseException):
            raise out
        else:
            answers[name] = out
    return answers, missing
