"""Progressive answers over the websocket, and queries that never hold up ingestion."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.store.frame_store import FrameStore
from tests.agent.service.helpers import add, client, needle_b64, needle_video, running, wait_for


async def _events_of(ws: Any, rid: str, last: str = "moments.update") -> list[dict[str, Any]]:
    """Every event answering ``rid`` up to and including the first of type ``last`` (or an error)."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] not in (last, "error"):
        seen.append(await wait_for(ws, lambda e: e.get("id") == rid))
    return seen


async def test_a_query_answers_first_from_the_prescreen_then_with_the_refined_update(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4")
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        # Budget 0 on a cold cache: nothing is re-encoded; the update repeats the first answer, says why.
        await ws.send(
            json.dumps({"type": "query", "id": "z", "image": needle_b64(), "top_k": 3, "budget": 0})
        )
        first, update = await _events_of(ws, "z")
        assert [m["start"] for m in update["moments"]] == [m["start"] for m in first["moments"]]
        assert {m["answered_by"] for m in update["moments"]} == {"anchor"}
        assert any("refine budget spent" in n for n in update["streams"]["cam"]["notes"]), update

        await ws.send(
            json.dumps({"type": "query", "id": "q", "image": needle_b64(), "top_k": 3, "budget": 60})
        )
        first, update = await _events_of(ws, "q")
        assert first["type"] == "moments" and update["type"] == "moments.update", (first, update)
        assert first["moments"] and {m["answered_by"] for m in first["moments"]} == {"anchor"}
        assert update["streams"]["cam"]["answered_by"] == "refine"
        best = update["moments"][0]
        assert best["answered_by"] == "refine" and best["start"] < 8.0 and best["end"] > 4.0, best

        await ws.send(json.dumps({"type": "query", "id": "b", "text": "a photo", "budget": 1e6}))
        (refused,) = await _events_of(ws, "b")
        assert (refused["type"], refused["code"]) == ("error", "bad_message")


@pytest.fixture
def blocked_refinement(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every read of a stored frame for refinement waits until released (ingest never reads them)."""
    entered, release = threading.Event(), threading.Event()
    get, frames = FrameStore.get, FrameStore.frames

    def slow_get(self: FrameStore, t: float) -> Any:
        entered.set()
        release.wait(60)
        return get(self, t)

    def slow_frames(self: FrameStore, start: float, end: float, max_frames: int) -> Any:
        entered.set()
        release.wait(60)
        return frames(self, start, end, max_frames)

    monkeypatch.setattr(FrameStore, "get", slow_get)
    monkeypatch.setattr(FrameStore, "frames", slow_frames)
    yield entered, release
    release.set()


async def test_ingest_goes_on_while_many_queries_are_stuck_refining(
    tmp_path: Path, blocked_refinement: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = blocked_refinement
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    later = needle_video(tmp_path / "later.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path, max_in_flight=16) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        try:
            for i in range(12):  # more queries than the default executor has threads
                await ws.send(json.dumps({"type": "query", "id": f"q{i}", "image": needle_b64()}))
            # Polled, not awaited in a thread: on a starved executor that thread would never run.
            async with asyncio.timeout(30):
                while not entered.is_set():  # noqa: ASYNC110 - a threading.Event, set by a worker thread
                    await asyncio.sleep(0.05)
            # A new stream is checked, decoded, encoded and committed while the queries wait.
            await add(ws, {"id": "later", "kind": "file", "path": str(later)})
            done = await wait_for(
                ws,
                lambda e: (
                    e["type"] == "stream"
                    and e["stream"]["id"] == "later"
                    and e["stream"]["status"] != "running"
                ),
                limit=60,
            )
            assert done["stream"]["status"] == "done" and done["stream"]["tokens"] >= 1, done
        finally:
            release.set()
        finals: dict[str, str] = {}
        while len(finals) < 12:
            event = await wait_for(ws, lambda e: str(e.get("id")).startswith("q") and e["type"] != "moments")
            finals[event["id"]] = event["type"]
        assert set(finals.values()) == {"moments.update"}, finals
