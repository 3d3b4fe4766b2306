"""The thread-to-loop Bridge: latest-wins (drops counted) and block (backpressure) policies."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streams.bridge import Bridge, BridgeClosed
from streams.errors import DisconnectedError


async def test_latest_drops_the_oldest_and_counts() -> None:
    q: Bridge[int] = Bridge(3, "latest")
    assert all(q.put(i) for i in range(10))  # never blocks, never refuses while open
    assert q.dropped == 7 and len(q) == 3
    assert [await q.get() for _ in range(3)] == [7, 8, 9]  # the newest survive, in order


async def test_get_waits_for_an_item_and_finish_drains_first() -> None:
    q: Bridge[str] = Bridge(2, "latest")
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put("a")
    assert await waiter == "a"
    q.put("b")
    q.finish()
    q.finish()  # idempotent
    assert q.put("late") is False and len(q) == 1  # refused after the end
    assert await q.get() == "b"
    with pytest.raises(BridgeClosed):
        await q.get()


async def test_finish_with_error_reaches_the_consumer_after_the_items() -> None:
    q: Bridge[int] = Bridge(4, "latest")
    q.put(1)
    q.finish(DisconnectedError("gone"))
    assert await q.get() == 1
    with pytest.raises(DisconnectedError):
        await q.get()


async def test_latest_from_threads_never_blocks_and_every_item_is_delivered_or_counted() -> None:
    q: Bridge[tuple[int, int]] = Bridge(5, "latest")
    q.bind()
    n, producers = 2000, 3

    def produce(k: int) -> None:
        for i in range(n):
            assert q.put((k, i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for th in threads:
        th.start()
    got: list[tuple[int, int]] = []

    async def consume() -> None:
        while True:
            try:
                got.append(await q.get())
            except BridgeClosed:
                return

    consumer = asyncio.ensure_future(consume())
    for th in threads:
        await asyncio.to_thread(th.join)
    q.finish()
    await consumer
    assert len(got) + q.dropped == n * producers
    for k in range(producers):  # per producer, order is kept
        mine = [i for kk, i in got if kk == k]
        assert mine == sorted(mine)
    assert got[-1][1] == n - 1  # the last item always survives


async def test_block_applies_backpressure_and_loses_nothing() -> None:
    q: Bridge[int] = Bridge(2, "block")
    q.bind()
    n = 500
    high = [0]

    def produce() -> None:
        for i in range(n):
            assert q.put(i)
            high[0] = max(high[0], len(q))
        q.finish()

    th = threading.Thread(target=produce)
    th.start()
    got: list[int] = []
    while True:
        try:
            got.append(await q.get())
        except BridgeClosed:
            break
        if len(got) % 50 == 0:
            await asyncio.sleep(0.001)  # a slow consumer now and then
    await asyncio.to_thread(th.join)
    assert got == list(range(n)) and q.dropped == 0
    assert high[0] <= 2  # bounded: the producer waited


async def test_block_producer_is_released_by_close() -> None:
    q: Bridge[int] = Bridge(1, "block", recheck=0.01)
    q.bind()
    results: list[bool] = []
    first_in = threading.Event()

    def produce() -> None:
        results.append(q.put(1))
        first_in.set()
        results.append(q.put(2))  # waits: the queue is full

    th = threading.Thread(target=produce)
    th.start()
    await asyncio.to_thread(first_in.wait)
    q.close(drop=True)
    q.close(drop=True)  # idempotent
    await asyncio.to_thread(th.join)
    assert results == [True, False]  # the blocked put gave up: nobody will read it
    assert len(q) == 0
    with pytest.raises(BridgeClosed):
        await q.get()


async def test_block_cannot_be_fed_from_its_own_loop() -> None:
    q: Bridge[int] = Bridge(1, "block")
    q.bind()
    with pytest.raises(RuntimeError):
        q.put(1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Bridge(0, "latest")
    with pytest.raises(ValueError):
        Bridge(1, "sometimes")  # type: ignore[arg-type]
