"""The ingest's encoder stage in its own thread: order, backpressure, errors, and the same memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import WorkItem
from agent.config import EncoderConfig, IndexConfig, Settings
from agent.errors import ConfigError
from agent.index.encode_pipeline import EncodePipeline, Entry, run_by_worker
from agent.index.video_index import VideoIndex
from streams.file import decode_frames
from tests.videos import make_video, photos

TINY = EncoderConfig(model="tiny-random", allow_random=True)


class Recorder:
    """An owner that records what was committed to it, and from which thread."""

    def __init__(self) -> None:
        self.got: list[tuple[float, float]] = []
        self.threads: set[int] = set()

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        self.got.append((item.start, float(result[0])))
        self.threads.add(threading.get_ident())


def items(owner: Recorder, times: list[float], worker: str = "image") -> list[Entry]:
    return [(owner, WorkItem("s", "visual", worker, None, None, t, t + 1.0)) for t in times]


def slow_double(batch: list[WorkItem]) -> list[np.ndarray]:
    time.sleep(0.02 * (len(batch) % 3))  # uneven batches finish at uneven times
    return [np.array([2.0 * item.start]) for item in batch]


def test_results_are_committed_in_submission_order_on_the_callers_thread() -> None:
    owner = Recorder()
    with EncodePipeline({"image": slow_double}, runner="test", depth=1) as pipe:
        for k in range(6):
            pipe.submit(items(owner, [float(10 * k + j) for j in range(k % 3 + 1)]))
            pipe.poll()
            assert pipe.in_flight <= 2  # the running batch and ``depth`` queued behind it
        pipe.drain()
        assert pipe.in_flight == 0
    starts = [s for s, _ in owner.got]
    assert starts == sorted(starts) and len(starts) == sum(k % 3 + 1 for k in range(6))
    assert all(v == 2.0 * s for s, v in owner.got)
    assert owner.threads == {threading.get_ident()}


def test_a_worker_error_reaches_the_caller_and_close_joins_the_thread() -> None:
    def broken(batch: list[WorkItem]) -> list[np.ndarray]:
        raise RuntimeError("encoder exploded")

    pipe = EncodePipeline({"image": broken}, runner="test")
    pipe.submit(items(Recorder(), [0.0]))
    with pytest.raises(RuntimeError, match="exploded"):
        pipe.drain()
    pipe.close()
    pipe.close()  # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith("vmr-encode")]
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(items(Recorder(), [1.0]))


def test_an_item_for_an_unknown_worker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a 'speech' worker"):
        run_by_worker(items(Recorder(), [0.0], worker="speech"), {"image": slow_double}, runner="test")


def inline_ingest(idx: VideoIndex, video: Path) -> None:
    """The ingest as it was before the pipeline: push, and encode each full batch at once, inline."""
    batch: list[Entry] = []
    fps, size = idx.settings.index.fps, idx.prescreen.image_size
    for frame in decode_frames(video, stream="cam", fps=fps, short_side=size):
        st = idx.stream(frame.stream)
        batch.extend((st, item) for item in st.push(frame))
        if len(batch) >= idx.prescreen.batch_size:
            for (owner, item), vec in zip(batch, run_by_worker(batch, idx._workers, runner="t"), strict=True):
                owner.commit(item, vec)
            batch = []
    st = idx.streams["cam"]
    batch.extend((st, item) for item in st.flush())
    for (owner, item), vec in zip(batch, run_by_worker(batch, idx._workers, runner="t"), strict=True):
        owner.commit(item, vec)


def test_pipelined_ingest_builds_the_same_memory_as_inline_encoding(tmp_path: Path) -> None:
    video = tmp_path / "scenes.mp4"
    make_video(video, [(6.0, p) for p in photos(5, offset=10)], fps=10, size=(320, 240))
    # No gate: every frame is tiled, 30 super-images in two encoder batches of 16.
    settings = Settings(prescreen=TINY, index=IndexConfig(fps=4.0, budget=8, grid=2, gate=False))
    memories = []
    for name in ("inline", "pipelined"):
        with VideoIndex.create(tmp_path / name, settings) as idx:
            if name == "inline":
                inline_ingest(idx, video)
            else:
                idx.ingest(decode_frames(video, stream="cam", fps=4.0, short_side=idx.prescreen.image_size))
            st = idx.streams["cam"]
            memories.append((st.memory.matrix(), st.memory.spans(), st.stats.superimages))
    (a, spans_a, n_a), (b, spans_b, n_b) = memories
    assert n_a == n_b == 30 and spans_a == spans_b
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # same batches, same order: bit-identical


def test_unthreaded_pipeline_commits_inside_submit_without_a_thread() -> None:
    owner = Recorder()
    with EncodePipeline({"image": slow_double}, runner="test", threaded=False) as pipe:
        pipe.submit(items(owner, [3.0, 4.0]))
        assert owner.got == [(3.0, 6.0), (4.0, 8.0)] and pipe.in_flight == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("vmr-encode")]


def test_waits_count_encoding_and_the_caller_blocked_on_it() -> None:
    def sleepy(batch: list[WorkItem]) -> list[np.ndarray]:
        time.sleep(0.05)
        return [np.array([item.start]) for item in batch]

    owner = Recorder()
    with EncodePipeline({"image": sleepy}, runner="test", depth=0) as pipe:
        assert pipe.waits.as_dict() == {"encoding_s": 0.0, "caller_blocked_s": 0.0, "batches": 0}
        for k in range(3):
            pipe.submit(items(owner, [float(k)]))  # depth 0: each submit waits for the one before
        pipe.drain()
    waits = pipe.waits
    assert waits.batches == 3 and len(owner.got) == 3
    assert waits.encoding_s >= 3 * 0.05 * 0.9  # sleep() may end a hair early on some clocks
    assert waits.caller_blocked_s > 0.05  # the caller waited for at least the last batch
    assert waits.caller_blocked_s <= waits.encoding_s + 0.05
