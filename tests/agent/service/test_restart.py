"""Restart: `vmr serve` as a subprocess, killed with SIGKILL mid-replay, started again."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.agent.service.helpers import BACKGROUND, NEEDLE, client, needle_b64, refined, request
from tests.videos import Scene, make_video

ROOT = Path(__file__).resolve().parents[3]


async def _serve(config: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli.main",
        "serve",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "vmr serve exited before listening"
            found = re.search(r"ws://([\d.]+):(\d+)/ws", line)
            if found:
                return proc, f"ws://{found[1]}:{found[2]}"


def _snapshot_time(index: Path) -> float:
    state = index / "streams" / "cam" / "state.json"
    if not state.exists():
        return -1.0
    try:
        return float(json.loads(state.read_text())["stats"]["last_time"] or -1.0)
    except ValueError:  # never half-written (atomic rename); guard anyway
        return -1.0


@pytest.mark.slow  # two cold starts of a subprocess (torch import): ~20 s CPU
async def test_kill_9_then_restart_resumes_and_keeps_memory(tmp_path: Path) -> None:
    video = tmp_path / "cam.mp4"
    make_video(
        video,
        [Scene(3.0, NEEDLE, True), Scene(5.0, BACKGROUND[0], True), Scene(6.0, BACKGROUND[1], True)],
        fps=10,
    )
    index = tmp_path / "index"
    config = tmp_path / "vmr.json"
    config.write_text(
        json.dumps(
            {
                "service": {"port": 0, "index": str(index), "snapshot_seconds": 0.5},
                "settings": {
                    "prescreen": {"model": "tiny-random", "allow_random": True, "batch_size": 8, "threads": 1}
                },
                "streams": [{"id": "cam", "kind": "file", "path": str(video), "realtime": True}],
            }
        )
    )

    proc, _url = await _serve(config)
    try:
        async with asyncio.timeout(60):
            while _snapshot_time(index) < 4.5:  # noqa: ASYNC110 - polls a file another process writes
                await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    before = _snapshot_time(index)
    assert 4.5 <= before < 13.0  # killed mid-replay

    proc, url = await _serve(config)
    try:
        async with client(url) as ws:
            listed = await request(ws, {"type": "streams.list", "id": "l"})
            assert [s["id"] for s in listed["streams"]] == ["cam"]  # the stream list was restored
            answer = await refined(
                ws, {"type": "query", "id": "q", "image": needle_b64(), "streams": ["cam"]}
            )
            best = answer["moments"][0]
            assert best["start"] < 3.0 and best["end"] > 0.0, best  # earlier footage found in the snapshot
            async with asyncio.timeout(30):  # the replay resumes where the snapshot ended, not from 0
                while True:
                    cam = (await request(ws, {"type": "streams.list", "id": "l2"}))["streams"][0]
                    if cam["last_time"] is not None and cam["last_time"] > before + 1.0:
                        break
                    await asyncio.sleep(0.3)
            assert (
                cam["frames"] < 2 * 14 - 2 * before + 4
            )  # frames before the snapshot were not decoded again
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await proc.wait()
    assert rc == 0  # SIGTERM: final snapshot, clean exit
    assert _snapshot_time(index) > before
