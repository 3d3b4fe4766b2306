"""The pool's batching without Ray: concurrent requests of several streams share passes of a counting encoder."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from agent.errors import EncodingError
from agent.service.cluster.batcher import Batcher
from agent.types import RGBImage

pytestmark = pytest.mark.timeout(30)
DIM = 4


class CountingEncoder:
    """Row i of a pass is the image's first pixel value repeated; every call's size is recorded.

    ``gate``: when set, each pass waits for it (holds the encoder busy while requests queue).
    """

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.gate = gate
        self.fail = fail

    def __call__(self, images: list[RGBImage]) -> np.ndarray:
        self.calls.append(len(images))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5.0)
        if self.fail:
            raise RuntimeError("device lost")
        return np.stack([np.full(DIM, float(img[0, 0, 0]), np.float32) for img in images])


def _images(*values: int) -> list[RGBImage]:
    return [np.full((2, 2, 3), v, np.uint8) for v in values]


async def test_concurrent_requests_of_two_streams_share_one_pass_and_get_their_own_rows() -> None:
    enc = CountingEncoder()
    batcher = Batcher(enc, batch_size=8, max_wait=0.5)
    try:
        a, b, c = await asyncio.gather(
            batcher.encode(_images(1, 2), "cam0"),
            batcher.encode(_images(3), "cam1"),
            batcher.encode(_images(4, 5, 6), "cam0"),
        )
    finally:
        await batcher.close()
    assert enc.calls == [6]
    assert a[:, 0].tolist() == [1, 2] and b[:, 0].tolist() == [3] and c[:, 0].tolist() == [4, 5, 6]
    s = batcher.stats
    assert (s.passes, s.images, s.requests, s.max_streams, s.mixed_passes) == (1, 6, 3, 2, 1)
    assert s.streams == {"cam0": 5, "cam1": 1}


async def test_a_pass_closes_at_batch_size_without_waiting_for_max_wait() -> None:
    enc = CountingEncoder()
    batcher = Batcher(enc, batch_size=2, max_wait=30.0)  # a full batch never waits 30 s
    try:
        rows = await asyncio.wait_for(
            asyncio.gather(*(batcher.encode(_images(v), f"cam{v % 2}") for v in range(4))), 10.0
        )
    finally:
        await batcher.close()
    assert enc.calls == [2, 2]
    assert [r[0, 0] for r in rows] == [0, 1, 2, 3]


async def test_requests_queued_during_a_pass_fill_the_next_one() -> None:
    gate = threading.Event()
    enc = CountingEncoder(gate)
    batcher = Batcher(enc, batch_size=16, max_wait=0.0)  # no waiting: only a busy encoder batches
    try:
        first = asyncio.ensure_future(batcher.encode(_images(9), "cam0"))
        assert await asyncio.to_thread(enc.entered.wait, 5.0)  # the first pass runs, held by the gate
        later = [asyncio.ensure_future(batcher.encode(_images(v), f"cam{v}")) for v in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 10.0)
    finally:
        await batcher.close()
    assert enc.calls == [1, 3]
    assert batcher.stats.max_streams == 3


async def test_a_failed_pass_fails_its_requests_typed_and_the_batcher_goes_on() -> None:
    enc = CountingEncoder(fail=True)
    batcher = Batcher(enc, batch_size=4, max_wait=0.2)
    try:
        out = await asyncio.gather(
            batcher.encode(_images(1), "cam0"), batcher.encode(_images(2), "cam1"), return_exceptions=True
        )
        assert all(isinstance(e, EncodingError) for e in out)
        assert "device lost" in str(out[0])
        enc.fail = False
        assert (await batcher.encode(_images(7), "cam0"))[0, 0] == 7
    finally:
        await batcher.close()
    assert batcher.stats.errors == 1 and batcher.stats.passes == 1


async def test_close_is_idempotent_and_refuses_later_requests() -> None:
    batcher = Batcher(CountingEncoder(), batch_size=4, max_wait=0.0)
    assert (await batcher.encode(_images(3), "cam0")).shape == (1, DIM)
    await batcher.close()
    await batcher.close()
    with pytest.raises(EncodingError):
        await batcher.encode(_images(1), "cam0")


async def test_close_answers_callers_blocked_on_a_full_queue() -> None:
    # The repro: one pass runs (held), one request queued, two callers blocked in put. close() must
    # answer all four; before the fix, the two woken putters queued into a queue nobody read.
    gate = threading.Event()
    enc = CountingEncoder(gate)
    batcher = Batcher(enc, batch_size=1, max_wait=0.0, queue_size=1)
    calls = [asyncio.ensure_future(batcher.encode(_images(v), f"cam{v}")) for v in range(4)]
    try:
        assert await asyncio.to_thread(enc.entered.wait, 5.0)
        await asyncio.sleep(0.05)  # the other three are queued or blocked in put
        await asyncio.wait_for(batcher.close(), 5.0)
        out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
    finally:
        gate.set()
    assert all(isinstance(e, EncodingError) for e in out), out


async def test_a_failed_pass_chains_the_encoder_exception() -> None:
    batcher = Batcher(CountingEncoder(fail=True), batch_size=1, max_wait=0.0)
    try:
        with pytest.raises(EncodingError) as info:
            await asyncio.wait_for(batcher.encode(_images(1), "cam0"), 5.0)
    finally:
        await batcher.close()
    assert isinstance(info.value.__cause__, RuntimeError) and "device lost" in str(info.value.__cause__)
