"""The visual channel as a sans-I/O channel: work out, results and failures in, state saved.

No encoder and no event loop: embeddings are made with numpy, as a worker would return them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import ChannelQuery, WorkItem
from agent.channels.visual import IMAGE_WORKER, VisualChannel, images_of
from agent.config import IndexConfig, QueryConfig
from agent.index.stream_state import StreamState
from agent.types import Frame

DIM = 8


def solid(k: int) -> np.ndarray:
    return np.full((48, 64, 3), (k * 37 % 255, k * 11 % 255, 90), np.uint8)


def vec(k: int) -> np.ndarray:
    v = np.random.default_rng(k).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def channel(tmp_path: Path, **cfg: object) -> VisualChannel:
    index = IndexConfig(fps=2.0, grid=1, gate=False, theta=0.999, store_bytes=0, **cfg)  # type: ignore[arg-type]
    return VisualChannel(tmp_path / "cam", "cam", index, dim=DIM, image_size=32)


def test_work_items_carry_the_superimage_for_the_image_worker(tmp_path: Path) -> None:
    ch = channel(tmp_path)
    items = [item for k in range(3) for item in ch.push(Frame("cam", k * 0.5, solid(k)))]
    assert len(items) == 3 and ch.in_flight == 3
    assert all(i.worker == IMAGE_WORKER and i.channel == "visual" and i.stream == "cam" for i in items)
    assert [i.start for i in items] == [0.0, 0.5, 1.0] and items[0].end == pytest.approx(0.5)
    assert [im.shape for im in images_of(items)] == [(32, 32, 3)] * 3
    assert ch.push_audio(Frame("cam", 0.0, solid(0))) == []  # no audio path: ignored


def test_a_failed_item_is_retried_then_dropped_and_never_blocks_what_follows(tmp_path: Path) -> None:
    ch = channel(tmp_path)
    items = [item for k in range(6) for item in ch.push(Frame("cam", k * 0.5, solid(k)))]
    head, rest = items[0], items[1:]
    for k, item in enumerate(rest):  # results arrive while the head is still failing
        ch.commit(item, vec(k + 1))
    assert ch.memory.tokens == 0  # stream order: everything waits behind the unresolved head
    attempt = head
    for n in range(1, ch.max_attempts):
        (attempt,) = ch.fail(attempt, "RuntimeError: boom")
        assert attempt.attempt == n and attempt.ref is head.ref
        assert ch.memory.tokens == 0 and ch.in_flight == 1
    assert ch.fail(attempt, "RuntimeError: boom") == []  # the last attempt: dropped
    assert ch.in_flight == 0
    assert ch.memory.tokens == 5  # the FIFO drained past the dropped head
    assert ch.memory.spans()[0][0] == 0.5  # its span is not claimed as retained
    c = ch.counters
    assert (c.failed, c.retried, c.dropped) == (ch.max_attempts, ch.max_attempts - 1, 1)
    assert ch.stats.dropped_superimages == 1
    with pytest.raises(KeyError):
        ch.fail(attempt, "again")  # already dropped
    with pytest.raises(KeyError):
        ch.commit(head, vec(0))


def test_a_retry_that_succeeds_keeps_stream_order(tmp_path: Path) -> None:
    ch = channel(tmp_path)
    items = [item for k in range(4) for item in ch.push(Frame("cam", k * 0.5, solid(k)))]
    (retry,) = ch.fail(items[1], "transient")
    for k in (0, 2, 3):
        ch.commit(items[k], vec(k))
    assert ch.memory.tokens == 1  # item 2 and 3 wait behind the retry
    ch.commit(retry, vec(1))
    starts, _, _ = ch.memory.matrix()
    assert list(starts) == [0.0, 0.5, 1.0, 1.5] and ch.in_flight == 0


def test_items_of_another_channel_or_stream_are_refused(tmp_path: Path) -> None:
    ch = channel(tmp_path)
    (item,) = ch.push(Frame("cam", 0.0, solid(0)))
    foreign = WorkItem("cam", "speech", "whisper", b"", None, 0.0, 1.0)
    with pytest.raises(KeyError):
        ch.commit(foreign, vec(0))
    state = StreamState(tmp_path / "other", "other", IndexConfig(store_bytes=0), dim=DIM, image_size=32)
    with pytest.raises(KeyError):
        state.commit(item, vec(0))  # a work item of stream "cam"
    state.close()


def test_stream_state_routes_work_and_saves_and_loads_its_channels(tmp_path: Path) -> None:
    cfg = IndexConfig(fps=2.0, grid=1, gate=False, theta=0.999, store_bytes=1 << 20)
    state = StreamState(tmp_path / "cam", "cam", cfg, dim=DIM, image_size=32)
    assert list(state.channels) == ["visual"]
    items = []
    for k in range(8):
        items += state.push(Frame("cam", k * 0.5, solid(k), wall=1000.0 + k * 0.5))
    items += state.flush()
    (retry,) = state.fail(items[0], "transient")
    for k, item in enumerate([retry, *items[1:]]):
        state.commit(item, vec(k))
    assert state.in_flight == 0 and state.memory.tokens == 8
    assert state.counters()["visual"].retried == 1
    assert state.wall_of(2.0) == pytest.approx(1002.0)
    state.save({"offset": 3.0})
    state.close()
    state.close()  # idempotent

    again = StreamState(tmp_path / "cam", "cam", cfg, dim=DIM, image_size=32)
    assert again.memory.tokens == 8 and again.meta["offset"] == 3.0
    assert again.stats.frames == 8 and again.resume_time() == pytest.approx(3.5)
    assert len(again.store or []) == 8
    assert again.background(vec(3)).shape == (8,)
    again.close()


def test_search_returns_proposals_with_their_calibrations(tmp_path: Path) -> None:
    from agent.config import EncoderConfig
    from agent.models.encoder import load_encoder

    enc = load_encoder(EncoderConfig(model="tiny-random", allow_random=True, threads=1))
    cfg = IndexConfig(fps=2.0, grid=1, gate=False, store_bytes=1 << 22)
    state = StreamState(tmp_path / "cam", "cam", cfg, dim=enc.dim, image_size=enc.image_size, refine=enc)
    frames = [Frame("cam", k * 0.5, solid(k // 6)) for k in range(36)]  # six 3-second scenes
    for f in frames:
        items = state.push(f)
        for item, v in zip(items, enc.encode_images(images_of(items)), strict=True):
            state.commit(item, v)
    for item, v in zip(
        flushed := state.flush(), enc.encode_images(images_of(flushed)) if flushed else [], strict=True
    ):
        state.commit(item, v)
    q = enc.encode_images([solid(3)])[0]
    found = state.search(ChannelQuery({"prescreen": q, "refine": q}, top_k=3, cfg=QueryConfig()))
    answer = found["visual"]
    assert answer.proposals and {p.channel for p in answer.proposals} == {"visual"}
    assert {p.kind for p in answer.proposals} <= set(answer.calibrations)
    assert answer.calibrations["refine"].samples > 1 and answer.coverage is not None
    state.close()
