"""Work items reach the batch worker they name; an unknown worker is a typed error, not a stuck item."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import WorkItem
from agent.errors import ConfigError
from agent.service.batch_worker import BatchWorker
from agent.service.workers import Workers
from tests.agent.service.test_batch_worker import embed, frame, state


async def test_items_go_to_the_worker_they_name_and_counters_add_up(tmp_path: Path) -> None:
    cam = state(tmp_path, "cam")
    seen: dict[str, int] = {"image": 0, "other": 0}

    def counting(name: str):  # type: ignore[no-untyped-def]
        def run(items: list[WorkItem]) -> np.ndarray:
            seen[name] += len(items)
            return embed(items)

        return run

    workers = Workers(
        {name: BatchWorker(name, counting(name), batch_size=4, queue_size=8) for name in ("image", "other")}
    )
    workers.open("cam", cam)
    items = [item for k in range(6) for item in cam.push(frame("cam", k))]
    assert items and all(i.worker == "image" for i in items)  # the visual channel asks for the image worker
    workers.start()
    try:
        await workers.submit("cam", items)
        await workers.drain("cam")
    finally:
        await workers.close()
        await workers.close()  # idempotent
    assert seen == {"image": len(items), "other": 0}
    assert cam.memory.tokens == len(items) and cam.in_flight == 0
    assert workers.depths() == {"cam": 0}
    assert all(c.failed == 0 for c in workers.counters().values())
    cam.close()


async def test_an_item_for_a_worker_the_service_does_not_run_is_a_config_error(tmp_path: Path) -> None:
    cam = state(tmp_path, "cam")
    workers = Workers({"image": BatchWorker("image", embed, batch_size=4)})
    workers.open("cam", cam)
    item = cam.push(frame("cam", 0))[0]
    with pytest.raises(ConfigError, match="'speech' worker"):
        await workers.submit("cam", [replace(item, worker="speech")])
    assert workers.depths() == {"cam": 0}  # nothing was queued for nobody
    await workers.close()
    cam.close()


def test_a_service_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        Workers({})
