"""The speech lane's bound: windows of sound queue two deep per stream, then the stream's ingest waits."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from agent.channels.base import WorkItem
from agent.channels.speech import SAMPLE_RATE
from agent.service.local_shard import SPEECH_QUEUE, speech_worker

pytestmark = pytest.mark.timeout(30)
WINDOW_S = 2.0  # the bound counts windows; a short one keeps the test light


class Sink:
    """A stream's results: what was committed (in order)."""

    def __init__(self) -> None:
        self.committed: list[float] = []

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        self.committed.append(item.start)

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        raise AssertionError(error)


def window(k: int) -> WorkItem:
    sound = np.zeros(int(WINDOW_S * SAMPLE_RATE), np.float32)
    return WorkItem("cam", "speech", "speech", sound, None, k * WINDOW_S, (k + 1) * WINDOW_S)


async def test_a_stream_queues_two_windows_then_its_ingest_waits() -> None:
    gate, entered = threading.Event(), threading.Event()
    sizes: list[int] = []

    def transcribe(windows: list[np.ndarray]) -> list[np.ndarray]:
        sizes.append(len(windows))
        entered.set()
        gate.wait(10.0)  # whisper busy on the first window
        return [np.zeros(1, np.float32) for _ in windows]

    sink = Sink()
    worker = speech_worker(transcribe)
    worker.open("cam", sink)
    worker.start()
    try:
        await worker.submit("cam", [window(0)])
        assert await asyncio.to_thread(entered.wait, 5.0)  # window 0 is in whisper
        await asyncio.wait_for(worker.submit("cam", [window(1), window(2)]), 5.0)  # two queue
        assert SPEECH_QUEUE == 2 and worker.depth("cam") == 3
        ingest = asyncio.ensure_future(worker.submit("cam", [window(3)]))
        await asyncio.sleep(0.2)
        assert not ingest.done() and worker.depth("cam") == 3  # the fourth waits: backpressure
        gate.set()
        await asyncio.wait_for(ingest, 5.0)
        await asyncio.wait_for(worker.drain("cam"), 10.0)
    finally:
        gate.set()
        await worker.close()
    assert sink.committed == [0.0, 2.0, 4.0, 6.0] and set(sizes) == {1}  # one window a whisper call
