"""Faults and persistence: bad snapshots isolated, removals kept, purge, a full disk survived."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import IndexStoreError, UnknownStreamError
from agent.service.config import ServiceConfig, parse_spec
from agent.service.pipeline import Service
from agent.store import atomic, frame_chunks
from tests.agent.service.helpers import (
    BACKGROUND,
    NEEDLE,
    client,
    metric_samples,
    needle_video,
    request,
    running,
    tiny_settings,
)
from tests.videos import Scene, make_video


@asynccontextmanager
async def _service(tmp_path: Path, specs: list[dict[str, Any]], **cfg: Any) -> AsyncIterator[Service]:
    """A started service whose config file lists ``specs`` (as ``vmr serve`` would start it)."""
    config = ServiceConfig(host="127.0.0.1", port=0, index=tmp_path / "index", token=None, **cfg)
    async with Service(config, tiny_settings()) as svc:
        await svc.start([parse_spec(s) for s in specs])
        yield svc


def _files(video: Path, *ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "kind": "file", "path": str(video)} for i in ids]


async def _until(pred: Callable[[], bool], limit: float = 60.0) -> None:
    async with asyncio.timeout(limit):
        while not pred():  # noqa: ASYNC110 - polls state other tasks and threads change
            await asyncio.sleep(0.1)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_a_bad_snapshot_fails_only_its_stream_and_is_set_aside(tmp_path: Path) -> None:
    # The issue: one corrupt snapshot file of one stream stopped the whole service from starting.
    video = needle_video(tmp_path / "cam.mp4", before=2.0, needle=2.0, after=2.0)
    ids = ["good", "cheap", "state", "short", "mixed"]
    async with _service(tmp_path, _files(video, *ids)) as svc:
        await _until(lambda: all(svc.runners[i].status == "done" for i in ids))
        tokens = svc.runners["good"].state.memory.tokens
        assert tokens > 0
    streams = tmp_path / "index" / "streams"
    mixed_memory = (streams / "mixed" / "memory.npz").read_bytes()
    _flip(streams / "cheap" / "cheap.npz")  # one flipped byte
    state = json.loads((streams / "state" / "state.json").read_text())
    state["clock"] = 5  # a wrong type
    (streams / "state" / "state.json").write_text(json.dumps(state))
    memory = streams / "short" / "memory.npz"
    memory.write_bytes(memory.read_bytes()[: memory.stat().st_size // 2])  # truncated
    (streams / "mixed" / "memory.npz").write_bytes(mixed_memory[:-8] + b"\0" * 8)  # another generation's

    async with _service(tmp_path, _files(video, *ids)) as svc:  # the service starts
        await _until(lambda: svc.runners["good"].status == "done")
        assert svc.runners["good"].state.memory.tokens == tokens and svc.runners["good"].error is None
        for bad in ids[1:]:
            runner = svc.runners[bad]
            assert runner.status == "failed" and runner.error is not None, bad
            assert runner.error.code == "index_store" and "quarantine" in str(runner.error), runner.error
            assert runner.state.memory.tokens == 0  # opened empty, not half-loaded
            assert runner.info()["error"]["code"] == "index_store"
        assert set((await svc.serving.health()).failed) == set(ids[1:])
    for bad, damaged in [("cheap", "cheap.npz"), ("state", "state.json"), ("short", "memory.npz")]:
        (aside,) = (streams / bad / "quarantine").iterdir()  # set aside, not deleted
        assert (aside / damaged).is_file() and (aside / "reason.txt").read_text().strip()
        assert any((streams / bad / "frames").glob("chunk-*.vfs"))  # stored frames stay in place
    assert not (streams / "good" / "quarantine").exists()


async def test_removed_streams_stay_removed_after_a_restart_and_a_purge_deletes_their_files(
    tmp_path: Path,
) -> None:
    # The issue: a removed stream came back after a restart (every folder was loaded), thumbnails too.
    video = needle_video(tmp_path / "cam.mp4", before=2.0, needle=2.0, after=2.0)
    configured = _files(video, "kept", "removed", "purged")
    streams = tmp_path / "index" / "streams"
    async with _service(tmp_path, configured) as svc:
        await _until(lambda: all(r.status == "done" for r in svc.runners.values()))
        assert (await svc.serving.thumbnail("removed", 1.0))[1][:2] == b"\xff\xd8"
        await svc.serving.remove_stream("removed")
        await svc.serving.remove_stream("purged", purge=True)
        assert not (streams / "purged").exists()
        assert any((streams / "removed" / "frames").glob("chunk-*.vfs"))  # kept without purge

    async with _service(tmp_path, configured) as svc:  # the config still lists all three
        assert sorted(svc.runners) == ["kept"]
        assert [s.id for s in await svc.serving.list_streams()] == ["kept"]
        assert sorted(svc.idx.streams) == ["kept"]
        with pytest.raises(UnknownStreamError):
            await svc.serving.thumbnail("removed", 1.0)
        await svc.serving.remove_stream("removed", purge=True)  # a purge reaches it later too
        assert not (streams / "removed").exists()
        with pytest.raises(UnknownStreamError):
            await svc.serving.remove_stream("removed", purge=True)
        await svc.add_stream(_files(video, "purged")[0])  # adding an id again takes it off the list

    async with _service(tmp_path, configured) as svc:
        assert sorted(svc.runners) == ["kept", "purged"]


async def test_streams_remove_with_purge_over_the_websocket(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "cam.mp4", before=1.0, needle=1.0, after=1.0)
    async with running(tmp_path) as (svc, url), client(url) as ws:
        await svc.add_stream(_files(video, "cam")[0])
        await _until(lambda: svc.runners["cam"].status == "done")
        assert (tmp_path / "index" / "streams" / "cam" / "frames").is_dir()
        removed = await request(ws, {"type": "streams.remove", "id": "r", "stream": "cam", "purge": True})
        assert removed["type"] == "stream.removed" and removed["stream"] == "cam"
        assert not (tmp_path / "index" / "streams" / "cam").exists()
        listed = await request(ws, {"type": "streams.list", "id": "l"})
        assert listed["streams"] == []


class _Disk:
    """The write boundary: while ``full``, chunk appends and atomic file writes fail with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real_write = atomic.write_bytes
        disk = self

        def write_bytes(path: Path, data: bytes) -> None:
            if disk.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(path, data)

        class Chunk(io.FileIO):
            def write(self, b: Any) -> int:
                if disk.full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return int(super().write(b))

        monkeypatch.setattr(atomic, "write_bytes", write_bytes)
        monkeypatch.setattr(frame_chunks, "_open_chunk", lambda path: Chunk(path, "xb"))


async def test_a_full_disk_pauses_stored_frames_while_the_memory_keeps_ingesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The issue: disk full marked the stream failed for good although the memory needs no disk,
    # and after one ENOSPC the snapshot loop never snapshotted again.
    disk = _Disk(monkeypatch)
    video = make_video(
        tmp_path / "live.mp4", [Scene(2.0, BACKGROUND[0], True), Scene(2.0, NEEDLE, True)], fps=10
    )
    live = {"id": "cam", "kind": "file", "path": str(video.path), "realtime": True, "loop": True}
    async with _service(tmp_path, [live], snapshot_seconds=0.2) as svc:
        runner = svc.runners["cam"]
        store = runner.state.store
        assert store is not None
        await _until(lambda: len(store) >= 4 and runner.state.last_snapshot is not None)

        caplog.set_level(logging.WARNING, logger="agent")
        disk.full = True
        frames, failures = runner.frames_in, svc.registry.snapshot_failures
        await _until(lambda: store.status().skipped >= 6 and svc.registry.snapshot_failures >= failures + 2)
        assert runner.status == "running" and runner.frames_in > frames
        last_good = runner.state.last_snapshot
        assert runner.state.snapshot_error is not None and "No space left" in runner.state.snapshot_error
        info = runner.info()["store"]
        assert info["writing"] is False and info["error"].startswith("ENOSPC") and info["skipped"] >= 6
        metrics = metric_samples((await svc.serving.render_metrics(0)).decode())
        assert metrics[("vmr_frame_store_writing", (("stream", "cam"),))] == 0.0
        assert metrics[("vmr_frame_store_skipped_frames_total", (("stream", "cam"),))] >= 6
        assert metrics[("vmr_stream_up", (("stream", "cam"),))] == 1.0
        # The memory covers footage the store could not keep.
        await _until(lambda: runner.state.memory.spans()[-1][1] > store.times()[-1])

        disk.full = False  # space again: both resume by themselves (the store retries every 5 s)
        await _until(lambda: store.status().writing and runner.state.last_snapshot != last_good, limit=30)
        assert runner.state.snapshot_error is None and runner.status == "running"
        assert store.times()[-1] > runner.state.memory.spans()[0][0]

        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "agent.service.registry"]

        await _until(lambda: "snapshots succeed again" in logged())
        failed = [m for m in logged() if m.startswith("snapshot failed")]
        assert len(failed) == 1 and "No space left" in failed[0]  # every failure seen, logged once
        disk.full = True  # full again at shutdown: the service still closes cleanly
    with pytest.raises(IndexStoreError, match="closed"):
        store.put(1e6, np.zeros((8, 8, 3), np.uint8))  # the store was closed all the same
