"""A failing encoder inside a running service: failures are reported, retried or dropped, and counted.

Before channels had a failure path, a batch the encoder raised on was dropped
without telling the stream: the head of its FIFO never resolved, the memory
froze and the FIFO grew without bound. These tests run the real service on
a loopback port with a generated file stream, and make the real encoder's
batch function raise.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np

from agent.channels.base import WorkItem
from tests.agent.service.helpers import add, client, metric_samples, needle_video, running, wait_for


async def test_an_encoder_failing_on_one_item_drops_it_and_the_stream_keeps_ingesting(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=8.0, needle=4.0, after=8.0)  # 20 s: 40 sampled frames
    async with running(tmp_path) as (svc, url), client(url) as ws:
        worker = svc.worker
        assert worker is not None
        real = worker.fn
        seen: list[tuple[int, int]] = []  # (lane depth, items in flight in the stream) at every call
        tokens_at_failure: list[int] = []
        lock = threading.Lock()

        def flaky(items: list[WorkItem]) -> np.ndarray:
            state = svc.idx.streams["cam"]
            with lock:
                seen.append((worker.depth("cam"), state.in_flight))
            if any(item.start < 1.0 for item in items):  # the stream's first super-image breaks the encoder
                tokens_at_failure.append(state.memory.tokens)
                raise RuntimeError("encoder fell over")
            return np.asarray(real(items))

        worker.fn = flaky
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        done = await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] != "running")
        assert done["stream"]["status"] == "done", done

        state = svc.idx.streams["cam"]
        visual = state.visual
        # The poisoned super-image failed once in its batch and twice alone, then was dropped;
        # its batchmates were retried alone and went through.
        assert len(tokens_at_failure) == visual.max_attempts
        counters = worker.counters()[("cam", "visual")]
        assert counters.dropped == 1
        assert counters.failed >= visual.max_attempts
        assert counters.retried == counters.failed - 1
        assert visual.counters.dropped == 1 and state.stats.dropped_superimages == 1
        assert worker.errors == visual.max_attempts
        # Ingest went on: frames in, tokens grew after the failure, coverage reaches the end.
        assert done["stream"]["frames"] >= 38
        assert state.memory.tokens > max(tokens_at_failure)
        assert state.memory.spans()[-1][1] >= 19.0
        assert state.memory.spans()[0][0] >= 1.0  # the dropped span is not claimed as retained
        # Bounded throughout and nothing stuck at the end.
        bound = worker.queue_size + worker.batch_size
        assert max(d for d, _ in seen) <= bound
        assert max(f for _, f in seen) <= bound + 2  # + the items of one push awaiting submit
        assert state.in_flight == 0 and worker.depth("cam") == 0

        base = url.replace("ws://", "http://")
        async with httpx.AsyncClient(base_url=base) as http:
            text = (await http.get("/metrics")).text
        samples = metric_samples(text)  # parsed by prometheus_client
        cam_visual = (("channel", "visual"), ("stream", "cam"))
        assert samples["vmr_work_dropped_total", cam_visual] == 1
        assert samples["vmr_work_failed_total", cam_visual] == counters.failed
        assert samples["vmr_encoder_errors_total", ()] == visual.max_attempts


async def test_a_transient_encoder_failure_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=4.0, needle=2.0, after=4.0)
    async with running(tmp_path) as (svc, url), client(url) as ws:
        worker = svc.worker
        assert worker is not None
        real = worker.fn
        calls = [0]

        def once(items: list[WorkItem]) -> np.ndarray:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("transient")
            return np.asarray(real(items))

        worker.fn = once
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        done = await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] != "running")
        assert done["stream"]["status"] == "done", done
        state = svc.idx.streams["cam"]
        counters = worker.counters()[("cam", "visual")]
        assert counters.dropped == 0 and counters.failed >= 1 and counters.retried == counters.failed
        assert state.stats.dropped_superimages == 0
        assert state.memory.spans() and state.memory.spans()[0][0] == 0.0
        assert state.memory.spans()[-1][1] >= 9.5
        assert state.in_flight == 0 and worker.depth("cam") == 0
