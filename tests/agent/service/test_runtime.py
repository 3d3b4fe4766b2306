"""Run-time behaviour of the service: streams come and go, watches over future streams,
the CLI client, resuming a replay by seeking, and a clean shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from agent.cli.main import main as vmr
from streams.errors import SourceUnavailableError
from streams.file import FileSource
from tests.agent.service.helpers import (
    BACKGROUND,
    NEEDLE,
    add,
    client,
    needle_b64,
    needle_video,
    request,
    running,
    until,
    wait_for,
)
from tests.videos import Scene, make_video


def _ours(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before`` that are still alive.

    The event loop's default executor (``asyncio_N`` workers behind
    ``asyncio.to_thread``) belongs to the loop, which shuts it down when it
    closes; every other thread must be gone once the service is closed.
    """
    return [t.name for t in threading.enumerate() if t not in before and not t.name.startswith("asyncio_")]


async def test_adding_and_removing_streams_does_not_disturb_a_running_one(tmp_path: Path) -> None:
    # 20 s: longer than the test, so its decoder thread is alive (held by backpressure) throughout.
    steady_video = make_video(tmp_path / "steady.mp4", [Scene(20.0, BACKGROUND[0], True)], fps=10).path
    extra_video = needle_video(tmp_path / "extra.mp4", before=2.0, needle=2.0, after=2.0)
    before = set(threading.enumerate())
    async with running(tmp_path) as (svc, url), client(url) as ws:
        await add(
            ws, {"id": "steady", "kind": "file", "path": str(steady_video), "realtime": True, "loop": True}
        )
        seen = [await until(ws, "steady", lambda s: s["frames"] >= 3)]
        assert "decode-steady" in _ours(before)  # the check below would see a leaked decoder

        await add(ws, {"id": "extra", "kind": "file", "path": str(extra_video)})
        await until(ws, "extra", lambda s: s["frames"] >= 4, limit=30)
        seen.append(await until(ws, "steady", lambda s: s["frames"] > seen[-1]["frames"] + 2))

        removed = await request(ws, {"type": "streams.remove", "id": "r", "stream": "extra"})
        assert removed["type"] == "stream.removed"
        seen.append(await until(ws, "steady", lambda s: s["frames"] > seen[-1]["frames"] + 2))

        # A stream added and removed at once (still opening its source) is harmless too.
        await add(ws, {"id": "brief", "kind": "file", "path": str(extra_video), "realtime": True})
        await request(ws, {"type": "streams.remove", "id": "r2", "stream": "brief"})
        seen.append(await until(ws, "steady", lambda s: s["frames"] > seen[-1]["frames"] + 2))

        assert all(s["status"] == "running" and s["error"] is None for s in seen)
        times = [s["last_time"] for s in seen]
        assert times == sorted(times) and len(set(times)) == len(times)  # its timeline kept advancing
        listed = await request(ws, {"type": "streams.list", "id": "l"})
        assert [s["id"] for s in listed["streams"]] == ["steady"]
        assert set(svc.worker.depths() if svc.worker else {}) <= {"steady"}  # removed lanes are gone
    # Service.close() has stopped every source: no decoder thread, no stream task left behind.
    assert svc.runners["steady"].status == "stopped"
    assert all(r._task is not None and r._task.done() for r in svc.runners.values())
    assert _ours(before) == []


async def test_cli_query_against_a_running_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        capsys.readouterr()
        # main() runs its own event loop (asyncio.run): give it a thread, as a shell would a process.
        rc = await asyncio.to_thread(vmr, ["query", "--url", url, "a photo", "--json", "--top-k", "2"])
        out = capsys.readouterr().out
        assert rc == 0
        reply = json.loads(out)
        assert reply["type"] == "moments.update" and reply["meaningless"] is True  # the refined answer
        assert 1 <= len(reply["moments"]) <= 2
        assert {m["stream"] for m in reply["moments"]} == {"cam"}
        assert reply["streams"]["cam"]["coverage"]["in_memory"]

        rc = await asyncio.to_thread(vmr, ["query", "--url", url, "a photo", "--json", "--fast"])
        fast = json.loads(capsys.readouterr().out)
        assert rc == 0 and fast["type"] == "moments"  # --fast: the first, anchor-level answer
        assert {m["answered_by"] for m in fast["moments"]} == {"anchor"}

        rc = await asyncio.to_thread(vmr, ["query", "--url", url, "a photo", "--stream", "ghost"])
        captured = capsys.readouterr()
        assert rc == 2 and "unknown_stream" in captured.err and captured.out == ""


async def test_watch_without_streams_covers_streams_added_later(tmp_path: Path) -> None:
    first = make_video(tmp_path / "first.mp4", [Scene(4.0, BACKGROUND[0], True)], fps=10).path
    later = needle_video(tmp_path / "later.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "first", "kind": "file", "path": str(first)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")

        # Named streams must exist: a typo would make a watch that never fires.
        err = await request(ws, {"type": "watch", "id": "w0", "image": needle_b64(), "streams": ["later"]})
        assert (err["type"], err["code"]) == ("error", "unknown_stream")

        watching = await request(ws, {"type": "watch", "id": "w", "image": needle_b64(), "threshold": 0.93})
        assert watching["type"] == "watching"
        await wait_for(ws, lambda e: e.get("id") == "w" and e["type"] == "moments")
        await add(ws, {"id": "later", "kind": "file", "path": str(later)})
        opened = await wait_for(ws, lambda e: e["type"] == "moment" and e["id"] == "w")
        m = opened["moment"]
        assert m["stream"] == "later" and m["start"] < 4.0 and m["end"] > 2.0, m
        closed = await wait_for(ws, lambda e: e["type"] == "moment.update" and e["closed"])
        assert closed["match"] == opened["match"] and closed["moment"]["stream"] == "later"


async def test_file_source_start_seeks_past_earlier_footage(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "v.mp4", [Scene(3.0, BACKGROUND[0], True), Scene(3.0, NEEDLE, True)], fps=10)
    async with FileSource(spec.path, fps=2.0, start=3.2) as src:
        frames = [f async for f in src]
    assert frames and frames[0].t >= 3.2
    assert len(frames) <= 6  # only [3.2, 6) at 2 fps was decoded and delivered
    assert src.progress == 1.0
    with pytest.raises(SourceUnavailableError):
        FileSource(spec.path, start=-1.0)


async def test_resumed_replay_seeks_instead_of_decoding_from_the_start(tmp_path: Path) -> None:
    video = make_video(
        tmp_path / "v.mp4", [Scene(3.0, BACKGROUND[0], True), Scene(3.0, BACKGROUND[1], True)], fps=10
    )
    spec = {"id": "cam", "kind": "file", "path": str(video.path), "realtime": True}
    async with running(tmp_path) as (svc, url), client(url) as ws:
        await add(ws, spec)
        await until(ws, "cam", lambda s: (s["last_time"] or 0.0) >= 2.0, limit=30)
    resume = svc.runners["cam"].state.stats.last_time  # final snapshot at close
    assert resume is not None and 2.0 <= resume < 5.5

    async with running(tmp_path) as (svc, url), client(url) as ws:  # same index: restores "cam"
        cam = await until(ws, "cam", lambda s: s["status"] not in ("starting", "running"), limit=30)
        assert cam["status"] == "done", cam
        runner = svc.runners["cam"]
        source = runner.source
        assert isinstance(source, FileSource)
        assert source.start == pytest.approx(resume)
        # The source delivered only footage from the resume point on (the frame at exactly the
        # resume point, already stored, is the one the runner may skip).
        assert 1 <= runner.frames_in <= source.frames_out <= runner.frames_in + 1
        assert cam["last_time"] > resume
        assert runner.frames_in <= (6.0 - resume) * 2 + 1
