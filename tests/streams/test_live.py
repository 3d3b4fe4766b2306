"""LatestQueue (latest wins, counted drops) and LiveClock (one monotonic timeline)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from streams.live import LatestQueue, LiveClock, QueueClosed

from agent.errors import StreamDisconnectedError


async def test_full_queue_drops_the_oldest_and_counts() -> None:
    q: LatestQueue[int] = LatestQueue(3)
    kept = [q.put_nowait(i) for i in range(10)]
    assert kept == [True] * 3 + [False] * 7
    assert q.dropped == 7 and len(q) == 3
    assert [await q.get() for _ in range(3)] == [7, 8, 9]  # the newest survive, in order


async def test_get_waits_for_an_item_and_close_drains_first() -> None:
    q: LatestQueue[str] = LatestQueue(2)
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put_nowait("a")
    assert await waiter == "a"
    q.put_nowait("b")
    q.close()
    q.close()  # idempotent
    assert q.put_nowait("late") is True and len(q) == 1  # ignored after close
    assert await q.get() == "b"
    with pytest.raises(QueueClosed):
        await q.get()


async def test_close_with_error_reaches_the_consumer_after_the_items() -> None:
    q: LatestQueue[int] = LatestQueue(4)
    q.put_nowait(1)
    q.close(StreamDisconnectedError("gone"))
    assert await q.get() == 1
    with pytest.raises(StreamDisconnectedError):
        await q.get()


async def test_threadsafe_producers_never_block_and_every_item_is_delivered_or_counted() -> None:
    loop = asyncio.get_running_loop()
    q: LatestQueue[tuple[int, int]] = LatestQueue(5)
    n, producers = 2000, 3

    def produce(k: int) -> None:
        for i in range(n):
            assert q.put_threadsafe(loop, (k, i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for th in threads:
        th.start()
    got: list[tuple[int, int]] = []

    async def consume() -> None:
        while True:
            try:
                got.append(await q.get())
            except QueueClosed:
                return

    consumer = asyncio.ensure_future(consume())
    for th in threads:
        await asyncio.to_thread(th.join)
    q.close_threadsafe(loop)
    await consumer
    assert len(got) + q.dropped == n * producers
    for k in range(producers):  # per producer, order is kept and the last item always survives
        mine = [i for kk, i in got if kk == k]
        assert mine == sorted(mine)
    assert got[-1][1] == n - 1


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LatestQueue(0)


def test_clock_starts_at_zero_and_follows_raw_times() -> None:
    clock = LiveClock()
    assert clock.map(100.0, arrival=50.0) == 0.0
    assert clock.map(100.5, arrival=50.6) == pytest.approx(0.5)
    assert clock.map(101.0, arrival=50.9) == pytest.approx(1.0)
    assert clock.gaps == []


def test_clock_places_frames_without_pts_by_arrival() -> None:
    clock = LiveClock()
    assert clock.map(None, arrival=10.0) == 0.0  # GStreamer's first RTSP frame
    t1 = clock.map(5.0, arrival=10.1)
    assert t1 == pytest.approx(0.1)
    assert clock.map(5.2, arrival=10.3) == pytest.approx(0.3)
    assert clock.map(None, arrival=10.5) == pytest.approx(0.5)


def test_reconnect_continues_after_the_last_time_with_the_real_gap() -> None:
    clock = LiveClock()
    for i in range(5):
        clock.map(1000.0 + i * 0.1, arrival=i * 0.1)
    last = clock.last_t
    assert last is not None and last == pytest.approx(0.4)
    clock.new_session()
    t = clock.map(3.0, arrival=0.4 + 4.0)  # new session, raw clock restarted, 4 s later
    assert t == pytest.approx(last + 4.0)
    assert clock.map(3.1, arrival=4.5) == pytest.approx(t + 0.1)
    assert len(clock.gaps) == 1 and clock.gaps[0].start == last and clock.gaps[0].end == t


def test_raw_clock_going_backwards_inside_a_session_stays_monotonic() -> None:
    clock = LiveClock()
    times = [clock.map(raw, arrival=a) for raw, a in [(10.0, 0.0), (10.5, 0.5), (0.2, 1.0), (0.7, 1.5)]]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])  # e.g. an RTP timestamp wrap
    same = [clock.map(0.7, arrival=1.5), clock.map(0.7, arrival=1.5)]
    assert same[0] > times[-1] and same[1] > same[0]  # strictly increasing even for duplicates
