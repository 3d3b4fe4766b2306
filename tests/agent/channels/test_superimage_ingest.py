"""Super-image tiling and the ingest FIFO (no encoder, no event loop)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.channels.ingest import StreamIngestor
from agent.config import IndexConfig
from agent.core.cheap_index import CheapIndex
from agent.core.memory import Memory
from agent.core.superimage import Tiler, tile
from agent.types import Frame


def solid(rgb: tuple[int, int, int], h: int = 60, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


def test_tile_places_frames_row_major_and_pads_with_last() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = tile([solid(c) for c in colours], grid=2, size=64)
    assert out.shape == (64, 64, 3)
    assert tuple(out[8, 8]) == (255, 0, 0)
    assert tuple(out[8, 56]) == (0, 255, 0)
    assert tuple(out[56, 8]) == (0, 0, 255)
    assert tuple(out[56, 56]) == (0, 0, 255)  # padding repeats the last tile


def test_tiler_emits_full_grids_and_flushes_partial() -> None:
    tiler = Tiler("s", grid=2, size=64, period=0.5)
    out = [tiler.push(t * 0.5, solid((t * 10, 0, 0))) for t in range(6)]
    emitted = [si for si in out if si is not None]
    assert len(emitted) == 1 and emitted[0].times == (0.0, 0.5, 1.0, 1.5)
    assert emitted[0].start == 0.0 and emitted[0].end == 2.0
    last = tiler.flush()
    assert last is not None and last.times == (2.0, 2.5) and last.end == pytest.approx(3.0)
    assert tiler.flush() is None


def make_ingestor(tmp: Path | None = None, *, grid: int = 2, gate: bool = False) -> StreamIngestor:
    cfg = IndexConfig(grid=grid, fps=2.0, budget=64, theta=0.99, gate=gate, store_bytes=0)
    mem = Memory(3, budget=cfg.budget, theta=cfg.theta, rank=cfg.rank, gap_seconds=cfg.gap_seconds)
    return StreamIngestor("s", cfg, memory=mem, cheap=CheapIndex(1000), store=None, image_size=64)


@settings(max_examples=40, deadline=None)
@given(rnd=st.randoms(use_true_random=False), grid=st.integers(1, 3))
def test_out_of_order_commits_reach_memory_in_stream_order(rnd: random.Random, grid: int) -> None:
    ing = make_ingestor(grid=grid)
    pending = []
    for k in range(4 * grid * grid):
        pending += ing.push(Frame("s", k * 0.5, solid((k * 7 % 255, 0, 0))))
    pending += ing.flush()
    rng = np.random.default_rng(0)
    vecs = {id(si): rng.normal(size=3).astype(np.float32) for si in pending}
    order = list(range(len(pending)))
    rnd.shuffle(order)
    for i in order:
        ing.commit(pending[i], vecs[id(pending[i])])
    starts, ends, _ = ing.memory.matrix()
    assert np.all(np.diff(starts) > 0)
    assert np.all(starts[1:] >= ends[:-1] - 1e-9)
    assert ing.in_flight == 0
    assert ing.memory.spans()[-1][1] == pytest.approx(4 * grid * grid * 0.5)


def test_gated_static_frames_extend_coverage_without_encoding() -> None:
    ing = make_ingestor(grid=1, gate=True)
    frame = solid((90, 90, 90), 64, 64)
    emitted = []
    for k in range(40):  # 20 s of a perfectly static picture
        for si in ing.push(Frame("s", k * 0.5, frame)):
            emitted.append(si)
            ing.commit(si, np.array([1.0, 0.0, 0.0], np.float32))
    assert ing.stats.gated_frames > 20
    assert len(emitted) < 10
    assert ing.memory.spans()[-1][1] == pytest.approx(20.0)


def test_scene_cut_and_static_stretch_close_the_grid() -> None:
    ing = make_ingestor(grid=2, gate=True)
    emitted = []
    red, blue = solid((200, 20, 20), 64, 64), solid((20, 20, 200), 64, 64)
    frames = [red] * 2 + [blue] * 10  # a cut after two frames, then a static blue scene
    for k, img in enumerate(frames):
        for si in ing.push(Frame("s", k * 0.5, img)):
            emitted.append(si)
            ing.commit(si, np.array([1.0, 0.0, 0.0], np.float32))
    emitted += ing.flush()
    # No super-image mixes the red scene (t < 1) with the blue one (t >= 1).
    assert all((si.times[0] < 1.0) == (si.times[-1] < 1.0) for si in emitted)
    assert all(si.times[-1] - si.times[0] <= 1.5 for si in emitted)  # consecutive frames only
    assert ing.memory.spans()[-1][1] == pytest.approx(6.0)


def test_commit_of_foreign_superimage_is_rejected() -> None:
    a, b = make_ingestor(grid=1), make_ingestor(grid=1)
    (si,) = b.push(Frame("s", 0.0, solid((1, 2, 3))))
    with pytest.raises(KeyError):
        a.commit(si, np.ones(3, np.float32))


def test_older_frame_is_dropped_not_merged() -> None:
    ing = make_ingestor(grid=1)
    assert ing.push(Frame("s", 5.0, solid((1, 2, 3))))
    assert ing.push(Frame("s", 4.0, solid((3, 2, 1)))) == []
    assert ing.stats.frames == 1
    assert ing.stats.out_of_order == 1  # counted, never silent


def test_held_frame_is_sampled_at_every_instant_it_covers() -> None:
    """A picture shown 10 s (a screen recording) stands for 20 samples at 2 fps; coverage 0-10 s."""
    ing = make_ingestor(grid=2, gate=True)
    emitted = ing.push(Frame("s", 0.0, solid((200, 30, 30)), duration=10.0))
    emitted += ing.flush()
    for si in emitted:
        ing.commit(si, np.ones(3, np.float32))
    assert (ing.stats.frames, ing.stats.held_samples, ing.stats.last_time) == (20, 19, 9.5)
    assert ing.memory.spans() == [(0.0, 10.0)]


def test_frame_without_duration_stands_for_one_period() -> None:
    """No duration (a TS clock jump, a live frame): no repeat, the jump stays a gap."""
    ing = make_ingestor(grid=1)
    ing.push(Frame("s", 0.0, solid((200, 30, 30))))
    ing.push(Frame("s", 0.0 + 600.0, solid((30, 30, 200)), duration=0.1))
    assert (ing.stats.frames, ing.stats.held_samples) == (2, 0)


def test_tiler_refuses_a_tile_across_a_gap() -> None:
    tiler = Tiler("s", grid=2, size=64, period=0.5, max_gap=5.0)
    assert tiler.push(0.0, solid((1, 2, 3))) is None
    assert not tiler.breaks(5.0) and tiler.breaks(5.01)
    with pytest.raises(ValueError, match="flush first"):
        tiler.push(25.0, solid((1, 2, 3)))
    assert tiler.pending == 1  # the refused frame was not taken


@pytest.mark.parametrize("gate", [False, True])
def test_no_grid_and_no_coverage_span_a_time_jump(gate: bool) -> None:
    """A 20 s outage (gap threshold 5 s): no super-image spans it; coverage shows the hole."""
    ing = make_ingestor(grid=2, gate=gate)
    rng = np.random.default_rng(1)
    times = [k * 0.5 for k in range(7)] + [23.0 + k * 0.5 for k in range(7)]  # 3.0 -> 23.0
    emitted = []
    for t in times:
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # every frame differs: none gated
        emitted += ing.push(Frame("s", t, img))
    emitted += ing.flush()
    for si in emitted:
        ing.commit(si, rng.normal(size=3).astype(np.float32))
    assert all(not (si.start < 3.0 + 1e-9 and si.end > 23.0) for si in emitted)
    assert all(np.all(np.diff(si.times) <= ing.cfg.gap_seconds) for si in emitted)
    retained, _ = ing.memory.coverage(0.0, 26.5)
    assert retained == pytest.approx(26.5 - 19.5)  # [0, 3.5) and [23, 26.5): the 19.5 s hole is a gap
    assert len(ing.memory.spans()) == 2


def test_a_dropped_superimage_is_a_gap_in_coverage_however_short() -> None:
    ing = make_ingestor(grid=2)
    rng = np.random.default_rng(2)
    emitted = []
    for k in range(12):  # three super-images of 2 s each: [0, 2), [2, 4), [4, 6)
        emitted += ing.push(Frame("s", k * 0.5, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    assert [si.start for si in emitted] == [0.0, 2.0, 4.0]
    ing.commit(emitted[0], rng.normal(size=3).astype(np.float32))
    ing.drop(emitted[1])  # its encoding was given up
    ing.commit(emitted[2], rng.normal(size=3).astype(np.float32))
    assert ing.memory.spans() == [(0.0, 2.0), (4.0, 6.0)]
    assert ing.memory.coverage(0.0, 6.0)[0] == pytest.approx(4.0)


def moving_square(k: int) -> np.ndarray:
    """A grey picture with a bright square at a position set by ``k``: motion, no scene cut."""
    img = solid((90, 90, 90), 64, 64)
    x = 4 + 8 * (k % 6)
    img[20:36, x : x + 16] = 230
    return img


def test_keyframe_pass_grid_waits_across_static_keyframes_coverage_unbroken() -> None:
    """Keyframes 2 s apart, each moving picture followed by three static copies: full grids.

    The static run inside a grid is counted in samples (3 <= MAX_TILE_GAP), not in 0.5 s
    sampling periods, so grids do not close at every second static keyframe; the 8 s
    between tiles is no outage (every 2 s a frame was seen), so coverage has no hole.
    """
    ing = make_ingestor(grid=2, gate=True)
    emitted = []
    for k in range(32):  # 64 s: tiles at 0, 8, 16, ...
        emitted += ing.push(Frame("s", 2.0 * k, moving_square(k // 4), keyframe=True))
    emitted += ing.flush()
    for si in emitted:
        ing.commit(si, np.array([1.0, 0.0, 0.0], np.float32))
    assert (ing.stats.encoded_frames, ing.stats.gated_frames) == (8, 24)
    assert [len(si.times) for si in emitted] == [4, 4]  # was eight one-tile passes
    assert emitted[0].times == (0.0, 8.0, 16.0, 24.0)
    assert ing.memory.spans() == [(0.0, 62.5)]  # the last static keyframe (62 s) plus one period


def test_static_run_longer_than_the_gap_after_the_last_tile_stays_covered() -> None:
    """Four static keyframes (8 s) after a tile, then a cut: the grid closes, coverage reaches the cut."""
    ing = make_ingestor(grid=2, gate=True)
    red = solid((200, 20, 20), 64, 64)
    emitted = []
    frames = [moving_square(0)] + [moving_square(0)] * 4 + [red]  # t = 0, 2..8 static, 10 a cut
    for k, img in enumerate(frames):
        emitted += ing.push(Frame("s", 2.0 * k, img, keyframe=True))
    emitted += ing.flush()
    for si in emitted:
        ing.commit(si, np.array([1.0, 0.0, 0.0], np.float32) if si.start < 10 else np.ones(3, np.float32))
    assert [si.times for si in emitted] == [(0.0,), (10.0,)]
    assert len(ing.memory.spans()) == 1  # the 8 s static run after the tile is no outage
    assert ing.memory.spans()[0][1] == pytest.approx(10.5)


def test_gated_frames_after_a_dropped_superimage_do_not_stretch_an_anchor_over_it() -> None:
    # The pending break of the memory (kept in its snapshots) is what stops them.
    ing = make_ingestor(grid=1, gate=True)
    (first,) = ing.push(Frame("s", 0.0, solid((200, 30, 30), 64, 64)))
    ing.commit(first, np.array([1.0, 0.0, 0.0], np.float32))
    (lost,) = ing.push(Frame("s", 0.5, solid((30, 30, 200), 64, 64)))
    for k in range(2, 6):  # the same picture again: gated, their extends queue behind the lost one
        assert ing.push(Frame("s", k * 0.5, solid((30, 30, 200), 64, 64))) == []
    ing.drop(lost)
    assert ing.memory.coverage_broken
    assert ing.memory.spans() == [(0.0, 0.5)] and ing.memory.anchors[-1].end == 0.5
