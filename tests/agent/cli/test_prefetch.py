"""prefetch: order, errors, and which side waited for the other."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.cli.options import PrefetchWaits, prefetch


def slow(n: int, pause: float) -> Iterator[int]:
    for k in range(n):
        time.sleep(pause)
        yield k


def test_a_slow_producer_makes_the_consumer_wait() -> None:
    waits = PrefetchWaits()
    assert list(prefetch(slow(5, 0.03), waits=waits)) == list(range(5))
    assert waits.consumer_blocked_s >= 0.1  # five items 30 ms apart, consumed at once
    assert waits.producer_blocked_s < 0.1  # a queue of 64 never filled


def test_a_slow_consumer_blocks_the_producer_on_the_full_queue() -> None:
    waits = PrefetchWaits()
    got = []
    for item in prefetch(range(6), maxsize=1, waits=waits):
        time.sleep(0.03)
        got.append(item)
    assert got == list(range(6))
    assert waits.producer_blocked_s >= 0.05  # one slot: the producer waited on most puts
    assert set(waits.as_dict()) == {"producer_blocked_s", "consumer_blocked_s"}


def test_a_producer_error_reaches_the_consumer_after_the_good_items() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("bad input")

    got = []
    with pytest.raises(ValueError, match="bad input"):
        for item in prefetch(broken()):
            got.append(item)
    assert got == [1]
