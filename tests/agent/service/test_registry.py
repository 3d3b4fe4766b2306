"""The registry's persistence of removals and its snapshot loop under failures."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from agent.errors import IndexStoreError
from agent.service.config import parse_spec
from agent.service.registry import STREAMS_FILE, StreamRegistry
from agent.service.shard import StreamShard


def test_removed_streams_are_persisted_and_configured_ones_stay_removed(tmp_path: Path) -> None:
    reg = StreamRegistry(tmp_path, snapshot_seconds=30.0)
    cam = parse_spec({"id": "cam", "kind": "rtsp", "url": "rtsp://127.0.0.1:1/x"})
    door = parse_spec({"id": "door", "kind": "rtsp", "url": "rtsp://127.0.0.1:1/y"})
    assert reg.restore([cam, door]) == [cam, door]
    reg.mark_removed("door")
    reg.save([cam])
    assert json.loads((tmp_path / STREAMS_FILE).read_text())["removed"] == ["door"]

    again = StreamRegistry(tmp_path, snapshot_seconds=30.0)
    assert again.restore([cam, door]) == [cam]  # the config still lists door: it stays removed
    assert again.removed == {"door"}
    again.save([cam, door])  # door added again
    assert StreamRegistry(tmp_path, snapshot_seconds=30.0).restore([]) == [cam, door]

    # A stream list from before removals were kept has none; a malformed one is a typed error.
    (tmp_path / STREAMS_FILE).write_text(json.dumps({"version": 1, "streams": []}))
    assert StreamRegistry(tmp_path, snapshot_seconds=30.0).restore([door]) == [door]
    (tmp_path / STREAMS_FILE).write_text(json.dumps({"version": 1, "streams": [], "removed": "door"}))
    with pytest.raises(IndexStoreError, match="removed"):
        StreamRegistry(tmp_path, snapshot_seconds=30.0).restore()


class _FlakyShard:
    """A shard whose snapshots fail with whatever ``errors`` holds, then succeed."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        self.calls = 0

    async def snapshot(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


async def test_the_snapshot_loop_survives_every_failure_and_logs_a_run_of_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.service.registry")
    flaky = _FlakyShard([OSError(28, "No space left on device"), RuntimeError("a bug"), IndexStoreError("x")])
    steady = _FlakyShard([])
    reg = StreamRegistry(tmp_path, snapshot_seconds=0.01)
    reg.start_snapshots(cast(list[StreamShard], [flaky, steady]))
    try:
        async with asyncio.timeout(30):
            while flaky.calls < 6:  # noqa: ASYNC110 - polls the loop's progress
                await asyncio.sleep(0.01)
    finally:
        await reg.close()
        await reg.close()  # idempotent
    assert steady.calls >= 6  # a failing shard never stops the others
    assert reg.snapshot_failures == 3 and reg.snapshots_taken >= 6
    messages: list[Any] = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("snapshot failed")]) == 1
    assert messages[-1] == "snapshots succeed again"
