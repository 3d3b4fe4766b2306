"""The batch worker with real stream states and a numpy batch function (one event loop, no model)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

from agent.channels.base import WorkItem
from agent.config import IndexConfig
from agent.index.stream_state import StreamState
from agent.service.batch_worker import BatchWorker
from agent.types import Frame

DIM = 8


def state(tmp_path: Path, name: str) -> StreamState:
    cfg = IndexConfig(fps=2.0, grid=1, gate=False, theta=0.999, store_bytes=0)
    return StreamState(tmp_path / name, name, cfg, dim=DIM, image_size=16)


def frame(stream: str, k: int) -> Frame:
    return Frame(stream, k * 0.5, np.full((16, 16, 3), k * 13 % 255, np.uint8))


def embed(items: list[WorkItem]) -> np.ndarray:
    """A distinct vector per item (seeded by its time): no two items merge into one anchor."""
    return np.stack([np.random.default_rng(int(i.start * 10)).normal(size=DIM) for i in items]).astype(
        np.float32
    )


async def test_batches_are_shared_round_robin_between_streams(tmp_path: Path) -> None:
    a, b = state(tmp_path, "a"), state(tmp_path, "b")
    batches: list[list[str]] = []

    def record(items: list[WorkItem]) -> np.ndarray:
        batches.append([i.stream for i in items])
        return embed(items)

    worker = BatchWorker("image", record, batch_size=4, queue_size=8)
    worker.open("a", a)
    worker.open("b", b)
    for k in range(8):  # queued before the worker runs: the first batch sees both lanes full
        await worker.submit("a", a.push(frame("a", k)))
    for k in range(2):
        await worker.submit("b", b.push(frame("b", k)))
    async with worker:
        await worker.drain("a")
        await worker.drain("b")
    assert sorted(batches[0]) == ["a", "a", "b", "b"]  # b's two items are not starved by a's eight
    assert a.memory.tokens == 8 and b.memory.tokens == 2
    assert worker.depths() == {"a": 0, "b": 0} and a.in_flight == b.in_flight == 0
    a.close()
    b.close()


async def test_under_a_backlog_every_lane_is_served_in_turn(tmp_path: Path) -> None:
    """More busy lanes than a batch holds: batches continue after the last lane served, so the
    lanes take strict turns (no lane sits out ``lanes - batch_size`` batches in a row)."""
    names = ["a", "b", "c", "d", "e"]
    states = {n: state(tmp_path, n) for n in names}
    batches: list[list[str]] = []

    def record(items: list[WorkItem]) -> np.ndarray:
        batches.append([i.stream for i in items])
        return embed(items)

    worker = BatchWorker("image", record, batch_size=2, queue_size=4)
    for n in names:
        worker.open(n, states[n])
        for k in range(4):  # queued before the worker runs: every lane full
            await worker.submit(n, states[n].push(frame(n, k)))
    async with worker:
        for n in names:
            await worker.drain(n)
    assert [s for b in batches for s in b] == names * 4  # 10 batches of 2, in turn
    assert all(len(b) == 2 for b in batches)
    for st in states.values():
        assert st.memory.tokens == 4
        st.close()


async def test_a_poisoned_item_fails_alone_and_its_batchmates_go_through(tmp_path: Path) -> None:
    s = state(tmp_path, "s")
    sizes: list[int] = []

    def poisoned(items: list[WorkItem]) -> np.ndarray:
        sizes.append(len(items))
        if any(i.start == 1.0 for i in items):
            raise RuntimeError("bad input")
        return embed(items)

    worker = BatchWorker("image", poisoned, batch_size=4, queue_size=8)
    worker.open("s", s)
    for k in range(4):
        await worker.submit("s", s.push(frame("s", k)))
    async with worker:
        await worker.drain("s")
        forgotten = asyncio.create_task(worker.drain("nobody"))
        await forgotten
    attempts = s.visual.max_attempts
    assert sizes[0] == 4 and all(n == 1 for n in sizes[1:])  # retries run alone
    c = worker.counters()[("s", "visual")]
    assert c.dropped == 1 and c.failed == 4 + attempts - 1 and worker.errors == attempts
    assert s.memory.tokens == 3 and s.in_flight == 0 and worker.depth("s") == 0
    await worker.close()  # idempotent
    s.close()


async def test_busy_seconds_cover_the_batch_function(tmp_path: Path) -> None:
    """The duty-cycle figure of bench/service_load: at least the time the batch function blocked."""
    a = state(tmp_path, "a")
    pause = 0.05

    def slow(items: list[WorkItem]) -> np.ndarray:
        threading.Event().wait(pause)  # blocking, as an encoder forward is (worker thread)
        return embed(items)

    worker = BatchWorker("image", slow, batch_size=2, queue_size=8)
    worker.open("a", a)
    assert worker.busy_seconds == 0.0
    async with worker:
        for k in range(4):
            await worker.submit("a", a.push(frame("a", k)))
        await asyncio.wait_for(worker.drain("a"), timeout=30)
    assert worker.passes >= 2 and worker.busy_seconds >= worker.passes * pause
    a.close()


async def test_removing_a_stream_does_not_skip_the_lane_next_in_turn(tmp_path: Path) -> None:
    """A lane before the round-robin cursor is forgotten mid-batch: the next batch still starts
    with the lane after the last one served (the cursor follows the order's shift)."""
    names = ["a", "b", "c", "d"]
    states = {n: state(tmp_path, n) for n in names}
    batches: list[list[str]] = []
    first_taken, go_on = threading.Event(), threading.Event()

    def record(items: list[WorkItem]) -> np.ndarray:
        batches.append([i.stream for i in items])
        first_taken.set()
        go_on.wait(10)
        return embed(items)

    worker = BatchWorker("image", record, batch_size=2, queue_size=2)
    for n in names:
        worker.open(n, states[n])
        for k in range(2):
            await worker.submit(n, states[n].push(frame(n, k)))
    async with worker:
        assert await asyncio.to_thread(first_taken.wait, 10)
        worker.forget("a")  # removed while its second item is queued, before the cursor (at c)
        go_on.set()
        for n in names[1:]:
            await worker.drain(n)
    assert batches[0] == ["a", "b"]
    assert batches[1] == ["c", "d"]  # was ["d", "b"]: c, next in turn, sat out a batch
    for st in states.values():
        st.close()
