"""The heap trimmer (periodic malloc_trim in a thread, owned task, idempotent close) and glibc heap limits."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import EncoderConfig, Settings
from agent.process_memory import limit_heap
from agent.service import pipeline
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_limit_heap_is_accepted_by_glibc() -> None:
    assert limit_heap(2, 128 * 1024)  # the service's defaults
    assert limit_heap(None, None)  # nothing asked, nothing changed


def test_config_caps_arenas_by_default_and_none_leaves_glibc_alone() -> None:
    cfg = ServiceConfig()
    assert (cfg.malloc_arenas, cfg.malloc_mmap_threshold) == (2, 128 * 1024)
    off = ServiceConfig(malloc_arenas=None, malloc_mmap_threshold=None)
    assert (off.malloc_arenas, off.malloc_mmap_threshold) == (None, None)
    for bad in ({"malloc_arenas": 0}, {"malloc_mmap_threshold": -1}, {"malloc_mmap_threshold": 64 * 1024**2}):
        with pytest.raises(ValidationError):
            ServiceConfig(**bad)  # type: ignore[arg-type]


def test_the_service_applies_its_heap_limits_when_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[int | None, int | None]] = []

    def spy(arenas: int | None, mmap_threshold: int | None) -> bool:
        calls.append((arenas, mmap_threshold))
        return True

    monkeypatch.setattr(pipeline, "limit_heap", spy)
    settings = Settings(prescreen=EncoderConfig(model="tiny-random", allow_random=True))
    pipeline.Service(ServiceConfig(index=tmp_path, malloc_arenas=4, malloc_mmap_threshold=None), settings)
    assert calls == [(4, None)]
