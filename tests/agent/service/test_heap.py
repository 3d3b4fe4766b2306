"""The heap trimmer (periodic malloc_trim in a thread, owned task, idempotent close) and glibc heap limits."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import EncoderConfig, Settings
from agent.process_memory import limit_heap, plan_heap
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
    with pytest.raises(ValueError):
        HeapTrimmer(1.0, growth_bytes=-1)


def test_trims_only_when_rss_grew_past_the_last_trims_level() -> None:
    """Steady churn is left alone; a creep of ``growth_bytes`` is cut back; 0 trims every period."""
    mib = 1024**2
    rss = [1000 * mib]
    trim = CountingTrim(wake=99)

    def trim_and_release() -> bool:
        rss[0] -= 10 * mib  # what the trim gives back
        return trim()

    trimmer = HeapTrimmer(30.0, trim_and_release, growth_bytes=64 * mib, rss=lambda: rss[0])
    assert trimmer.tick()  # the first period trims: it sets the floor (990 MiB)
    rss[0] = 1040 * mib
    assert not trimmer.tick()  # +50 MiB: churn within the slack
    rss[0] = 980 * mib
    assert not trimmer.tick()  # lower than the floor: the floor follows it down
    rss[0] = 1044 * mib
    assert trimmer.tick()  # +64 MiB over 980: a creep, trimmed
    assert (trim.calls, trimmer.stats.trims, trimmer.stats.skipped) == (2, 2, 2)
    assert trimmer.stats.released_bytes == 20 * mib
    every = HeapTrimmer(30.0, trim_and_release, rss=lambda: rss[0])
    assert every.tick() and every.tick() and every.stats.skipped == 0


def test_the_service_trims_on_growth_by_default() -> None:
    assert ServiceConfig().heap_trim_growth_mb == 64.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            ServiceConfig(heap_trim_growth_mb=bad)


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
def test_limit_heap_is_accepted_by_glibc(caplog: pytest.LogCaptureFixture) -> None:
    # The service's defaults (what every Service built by the suite applies anyway).
    with caplog.at_level(logging.INFO, logger="agent.process_memory"):
        assert limit_heap(2, 128 * 1024, environ={})
    assert "arenas 2 (config), mmap threshold 131072 (config)" in caplog.text
    assert limit_heap(0, 0, environ={})  # nothing asked, nothing changed


def test_zero_leaves_glibc_alone() -> None:
    plan = plan_heap(0, 0, {})
    assert (plan.arenas, plan.mmap_threshold) == (None, None)
    assert plan.summary == "glibc heap: arenas glibc's default, mmap threshold glibc's default"
    assert (plan_heap(2, 131072, {}).arenas, plan_heap(2, 131072, {}).mmap_threshold) == (2, 131072)


def test_the_operators_environment_wins_over_the_config() -> None:
    plan = plan_heap(2, 131072, {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert (plan.arenas, plan.mmap_threshold) == (None, None)
    assert "MALLOC_ARENA_MAX=4; config's 2 not applied" in plan.summary
    assert "MALLOC_MMAP_THRESHOLD_=65536; config's 131072 not applied" in plan.summary
    # glibc's tunables say the same; an unrelated tunable or an empty variable does not count.
    tun = plan_heap(2, 131072, {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1"})
    assert (tun.arenas, tun.mmap_threshold) == (None, 131072)
    assert "GLIBC_TUNABLES glibc.malloc.arena_max=1" in tun.summary
    assert plan_heap(2, 131072, {"MALLOC_ARENA_MAX": " "}).arenas == 2


def test_config_caps_arenas_by_default_and_zero_leaves_glibc_alone() -> None:
    cfg = ServiceConfig()
    assert (cfg.malloc_arenas, cfg.malloc_mmap_threshold) == (2, 128 * 1024)
    off = ServiceConfig(malloc_arenas=0, malloc_mmap_threshold=0)
    assert (off.malloc_arenas, off.malloc_mmap_threshold) == (0, 0)
    edges = ServiceConfig(malloc_mmap_threshold=4096), ServiceConfig(malloc_mmap_threshold=32 * 1024**2)
    assert [c.malloc_mmap_threshold for c in edges] == [4096, 32 * 1024**2]
    bad_values: list[dict[str, int | None]] = [
        {"malloc_arenas": -1},
        {"malloc_arenas": None},  # TOML has no null: 0 is the way to say "glibc's default"
        {"malloc_mmap_threshold": -1},
        {"malloc_mmap_threshold": 1},  # every small allocation a syscall
        {"malloc_mmap_threshold": 4095},
        {"malloc_mmap_threshold": 32 * 1024**2 + 1},
    ]
    for bad in bad_values:
        with pytest.raises(ValidationError):
            ServiceConfig(**bad)  # type: ignore[arg-type]


def test_the_service_applies_its_heap_limits_when_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []

    def spy(arenas: int, mmap_threshold: int) -> bool:
        calls.append((arenas, mmap_threshold))
        return True

    monkeypatch.setattr(pipeline, "limit_heap", spy)
    settings = Settings(prescreen=EncoderConfig(model="tiny-random", allow_random=True))
    pipeline.Service(ServiceConfig(index=tmp_path, malloc_arenas=4, malloc_mmap_threshold=0), settings)
    assert calls == [(4, 0)]
