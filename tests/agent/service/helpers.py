"""Shared parts of the service tests: a real service + aiohttp server, a websockets client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from agent.config import EncoderConfig, IndexConfig, Settings
from agent.service.config import ServiceConfig, SourcesConfig
from agent.service.pipeline import Service
from agent.service.server import Server
from tests.videos import Scene, make_video, photos

NEEDLE, BACKGROUND = photos(1)[0], [photos(1, 1)[0], photos(1, 3)[0], photos(1, 4)[0]]
"""Photos 0 and 5 of the sample look alike to the random encoder; these do not."""


def tiny_settings() -> Settings:
    return Settings(
        prescreen=EncoderConfig(model="tiny-random", allow_random=True, batch_size=8, threads=1),
        index=IndexConfig(fps=2.0, grid=2, store_bytes=64 * 1024**2),
    )


def needle_video(path: Path, before: float = 4.0, needle: float = 4.0, after: float = 4.0) -> Path:
    """Background photos, then the needle photo, then background again (10 fps, 160x120, moving)."""
    make_video(
        path,
        # Moving scenes: a static scene is gated after its first frame, and the tiler would then
        # put frames of several scenes into one super-image (see the report on the gate).
        [
            Scene(before / 2, BACKGROUND[0], True),
            Scene(before / 2, BACKGROUND[1], True),
            Scene(needle, NEEDLE, True),
            Scene(after, BACKGROUND[2], True),
        ],
        fps=10,
    )
    return path


def segments_with_a_missing_one(folder: Path) -> Path:
    """A recorder's folder of 2-4 s MPEG-TS segments on one running clock, the one of 8-10 s missing.

    Scenes: background 0-4 s, the needle 4-8 s, (hole), background 10-12 s. The recorder's clock
    jumps over the missing segment: the stream's memory has a 2 s gap there.
    """
    folder.mkdir()
    parts = [
        (0.0, [Scene(2.0, BACKGROUND[0], True), Scene(2.0, BACKGROUND[1], True)]),
        (4.0, [Scene(4.0, NEEDLE, True)]),
        (10.0, [Scene(2.0, BACKGROUND[2], True)]),
    ]
    for k, (start, scenes) in enumerate(parts):
        make_video(folder / f"seg{k if k < 2 else k + 1:03d}.ts", scenes, fps=10, start_pts_seconds=start)
    return folder


def all_segments_in(status: dict[str, Any]) -> bool:
    """Whether a stream of :func:`segments_with_a_missing_one` has all of it in memory.

    Its last super-image committed (coverage reaches 12 s), so the hole is the missing segment's
    8-10 s, not the few instants between a frame read and its super-image committed.
    """
    covered = status.get("covered") or {}
    return bool(covered.get("end", 0.0) >= 12.0 and status["gaps"].get("count", 0) >= 1)


def needle_b64() -> str:
    return base64.b64encode(NEEDLE.read_bytes()).decode()


@asynccontextmanager
async def running(
    tmp_path: Path, settings: Settings | None = None, **service: Any
) -> AsyncIterator[tuple[Service, str]]:
    """A started service and server on a free loopback port; yields (service, ws url).

    ``settings``: the model and index settings (default :func:`tiny_settings`). Clients may add
    files under ``tmp_path`` (its media root) unless ``sources`` says otherwise.
    """
    service.setdefault("sources", SourcesConfig(media_roots=[tmp_path]))
    cfg = ServiceConfig(
        host="127.0.0.1", port=0, index=tmp_path / "index", token=service.pop("token", None), **service
    )
    async with Service(cfg, settings or tiny_settings()) as svc:
        await svc.start()
        server = Server(svc.serving, cfg)
        port = await server.start()
        try:
            yield svc, f"ws://127.0.0.1:{port}"
        finally:
            await server.close()


@asynccontextmanager
async def client(url: str, token: str | None = None, hello: bool = True) -> AsyncIterator[ClientConnection]:
    async with websockets.connect(url + "/ws", max_size=2**26) as ws:
        if hello:
            await ws.send(json.dumps({"type": "hello", "id": "h", "token": token}))
            reply = await wait_for(ws, lambda e: e.get("id") == "h")
            assert reply["type"] == "hello", reply
        yield ws


async def request(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send ``msg`` and return the first event answering its id (broadcasts skipped)."""
    await ws.send(json.dumps(msg))
    return await wait_for(ws, lambda e: e.get("id") == msg.get("id"))


async def refined(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send a ``query`` and return its last event: the refined ``moments.update`` (or an ``error``).

    Its first answer, the ``moments`` event, must come before the update.
    """
    first = await request(ws, msg)
    if first["type"] == "error":
        return first
    assert first["type"] == "moments", first
    return await wait_for(ws, lambda e: e.get("id") == msg.get("id"))


async def wait_for(ws: ClientConnection, pred: Any, limit: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            event = json.loads(await ws.recv())
            if pred(event):
                return dict(event)


async def status(ws: ClientConnection, stream: str) -> dict[str, Any]:
    """The ``streams.list`` entry of ``stream``."""
    listed = await request(ws, {"type": "streams.list", "id": "list"})
    found = [s for s in listed["streams"] if s["id"] == stream]
    assert found, listed
    return dict(found[0])


async def until(
    ws: ClientConnection, stream: str, pred: Callable[[dict[str, Any]], bool], limit: float = 60.0
) -> dict[str, Any]:
    """Poll ``streams.list`` until ``stream``'s status satisfies ``pred``; returns that status."""
    async with asyncio.timeout(limit):
        while True:
            st = await status(ws, stream)
            if pred(st):
                return st
            assert st["status"] in ("starting", "running"), st  # ended before the condition held
            await asyncio.sleep(0.2)


async def add(ws: ClientConnection, spec: dict[str, Any]) -> dict[str, Any]:
    """``streams.add`` of ``spec``; returns the ``stream`` answer (asserting it is one)."""
    added = await request(ws, {"type": "streams.add", "id": f"add-{spec['id']}", "stream": spec})
    assert added["type"] == "stream" and added["stream"]["id"] == spec["id"], added
    return added


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` text parsed by prometheus_client: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
