"""The heap trimmer: periodic malloc_trim in a thread, owned task, idempotent close, config."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from pydantic import ValidationError

from agent.service.config import ServiceConfig
from agent.service.heap import HeapTrimmer, rss_bytes, trim_heap


class CountingTrim:
    """A stand-in for malloc_trim: counts calls, notes the thread, wakes a waiter after ``wake`` calls."""

    def __init__(self, wake: int, fail_first: bool = False) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.wake = wake
        self.fail_first = fail_first
        self.enough = threading.Event()

    def __call__(self) -> bool:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.calls >= self.wake:
            self.enough.set()
        if self.fail_first and self.calls == 1:
            raise OSError("boom")
        return True


async def test_trims_periodically_off_the_loop_and_stops_on_close() -> None:
    trim = CountingTrim(wake=3)
    trimmer = HeapTrimmer(0.01, trim)
    trimmer.start()
    trimmer.start()  # once: a second start does not add a task
    async with asyncio.timeout(30):
        await asyncio.to_thread(trim.enough.wait)
    assert trimmer.running
    await trimmer.close()
    await trimmer.close()  # idempotent
    assert not trimmer.running
    calls = trim.calls
    assert calls >= 3 and trimmer.stats.trims == calls
    assert threading.get_ident() not in trim.threads  # never on the event loop's thread
    await asyncio.sleep(0.05)
    assert trim.calls == calls  # the task is gone: no trim after close
    trimmer.start()
    assert not trimmer.running  # closed stays closed


async def test_a_failing_trim_is_logged_and_the_next_period_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trim = CountingTrim(wake=2, fail_first=True)
    trimmer = HeapTrimmer(0.01, trim)
    trimmer.start()
    async with asyncio.timeout(30):
        await asyncio.to_thread(trim.enough.wait)
    await trimmer.close()
    assert trim.calls >= 2 and "malloc_trim failed" in caplog.text


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HeapTrimmer(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_real_trim_returns_a_bool_and_rss_is_read() -> None:
    blocks = [bytearray(64 * 1024) for _ in range(256)]  # 16 MiB in small blocks, then freed
    del blocks
    assert isinstance(trim_heap(), bool)
    assert rss_bytes() > 0


def test_config_takes_a_period_or_none() -> None:
    assert ServiceConfig().heap_trim_seconds == 30.0
    assert ServiceConfig(heap_trim_seconds=None).heap_trim_seconds is None
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValidationError):
            ServiceConfig(heap_trim_seconds=bad)
