"""Cheap index: scene cuts, motion, the encoder gate, the bounded ring buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.core.cheap_index import BYTES_PER_FRAME, CheapIndex, Gate, color_hist, hist_distance
from agent.errors import IndexStoreError
from agent.types import Frame
from streams.file import decode_frames
from tests.videos import Scene, SceneLike, VideoSpec, make_video, photos

SAMPLE_FPS = 4.0
SAMPLE = 1 / SAMPLE_FPS


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[VideoSpec, list[Frame]]:
    """Red 3 s, a 20 s static blue stretch, a moving photo, the photo mirrored
    (same colours: only motion reveals that cut), then green."""
    photo = photos(1, 5)[0]
    mirrored = np.asarray(Image.open(photo).convert("RGB"))[:, ::-1].copy()
    scenes: list[SceneLike] = [
        (3.0, (200, 40, 40)),
        (20.0, (40, 40, 200)),
        Scene(3.0, photo, moving=True),
        (3.0, mirrored),
        (3.0, (40, 200, 40)),
    ]
    spec = make_video(tmp_path_factory.mktemp("cheap") / "cuts.mp4", scenes, fps=10, gop=25)
    return spec, list(decode_frames(spec.path, fps=SAMPLE_FPS))


def _index(frames: list[Frame]) -> CheapIndex:
    index = CheapIndex()
    for f in frames:
        index.add(f.t, f.image)
    return index


def test_boundaries_find_hard_cuts(cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    spec, frames = cut_video
    found = _index(frames).boundaries(0.0, 1e9)
    assert len(found) == len(spec.cut_times) == 4
    np.testing.assert_allclose(found, spec.cut_times, atol=SAMPLE + 1e-6)


def test_boundaries_respect_the_window(cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    _, frames = cut_video
    index = _index(frames)
    assert index.boundaries(5.0, 20.0).size == 0
    np.testing.assert_allclose(index.boundaries(20.0, 27.0), [23.0, 26.0], atol=SAMPLE)
    # Without the motion spike only the colour cuts remain.
    assert len(index.boundaries(0.0, 1e9, motion_threshold=2.0)) == 3


def test_motion_is_high_only_where_things_move(cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    _, frames = cut_video
    times, motion = _index(frames).motion(0.0, 1e9)
    assert len(times) == len(frames) and np.all(np.diff(times) > 0)
    static = motion[(times > 4.0) & (times < 22.0)]
    moving = motion[(times > 23.2) & (times < 25.9)]
    assert static.max() < 0.004
    assert moving.min() > 5 * static.max() and moving.mean() > 0.01


def test_gate_skips_static_frames_and_keeps_every_cut(cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    spec, frames = cut_video
    index = CheapIndex()
    gate = Gate(motion=0.004, hist=0.02, max_seconds=30.0)
    encoded = [f.t for f in frames if gate.should_encode(index.add(f.t, f.image))]
    static = [f.t for f in frames if 3.5 < f.t < 23.0]
    assert len([t for t in encoded if 3.5 < t < 23.0]) <= 0.05 * len(static)
    for cut in spec.cut_times:
        assert any(abs(t - cut) <= SAMPLE for t in encoded), cut
    assert gate.skipped > 3 * gate.encoded
    assert gate.encoded + gate.skipped == len(frames)


def test_gate_encodes_at_least_every_max_seconds(cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    _, frames = cut_video
    index = CheapIndex()
    gate = Gate(motion=0.004, hist=0.02, max_seconds=5.0)
    encoded = np.array([f.t for f in frames if gate.should_encode(index.add(f.t, f.image))])
    assert np.max(np.diff(encoded)) <= 5.0 + SAMPLE
    assert len(encoded[(encoded > 3.5) & (encoded < 23.0)]) >= 3


def test_gate_catches_slow_drift() -> None:
    """Each step is tiny, but the distance to the last *encoded* frame grows."""
    index = CheapIndex()
    gate = Gate(motion=0.5, hist=0.1, max_seconds=1e9)
    decisions = []
    for i in range(60):
        img = np.full((32, 32, 3), 4 * i, np.uint8)
        decisions.append(gate.should_encode(index.add(float(i), img)))
    assert decisions[0] and 2 <= sum(decisions) < 60


def test_histogram_is_fractions() -> None:
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 250
    h = color_hist(red)
    assert h.dtype == np.uint8 and h.shape == (24,)
    assert h[7] == 255 and h[8] == 255 and h[16] == 255 and h.sum() == 3 * 255
    half = red.copy()
    half[:20] = 0
    # Half the red mass moves to bin 0; green and blue stay: L1 = 1 of a possible 6.
    assert hist_distance(color_hist(red), color_hist(half)) == pytest.approx(1 / 6, abs=0.01)
    assert hist_distance(h, h) == 0.0


def test_ring_buffer_is_bounded_and_ordered() -> None:
    rng = np.random.default_rng(1)
    index = CheapIndex(capacity=16)
    for i in range(40):
        index.add(i * 0.5, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert len(index) == 16
    assert index.nbytes == 16 * BYTES_PER_FRAME == 16 * 40
    times, motion = index.motion(-1.0, 100.0)
    np.testing.assert_allclose(times, np.arange(24, 40) * 0.5)
    assert np.all(motion > 0.05)  # random pictures differ a lot
    np.testing.assert_allclose(index.motion(14.0, 15.0)[0], [14.0, 14.5, 15.0])
    with pytest.raises(IndexStoreError):
        index.add(1.0, np.zeros((8, 8, 3), np.uint8))


def test_state_round_trip_through_npz(tmp_path: Path, cut_video: tuple[VideoSpec, list[Frame]]) -> None:
    _, frames = cut_video
    index = CheapIndex(capacity=64)
    for f in frames[:100]:
        index.add(f.t, f.image)
    np.savez(tmp_path / "cheap.npz", **index.state_dict())  # type: ignore[arg-type]  # numpy stub quirk
    with np.load(tmp_path / "cheap.npz") as data:
        back = CheapIndex.from_state(dict(data))
    assert len(back) == len(index) == 64 and back.capacity == 64
    for a, b in zip(index.motion(0, 1e9), back.motion(0, 1e9), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.boundaries(0, 1e9), back.boundaries(0, 1e9))
    # Continuing after a restore compares with the last frame before the snapshot.
    nxt = frames[100]
    assert back.add(nxt.t, nxt.image).motion == index.add(nxt.t, nxt.image).motion


def test_invalid_state_is_a_typed_error() -> None:
    with pytest.raises(IndexStoreError):
        CheapIndex.from_state({"t": np.zeros(3)})
    bad = CheapIndex(capacity=8).state_dict()
    bad["t"] = np.array([2.0, 1.0])
    bad["hist"] = np.zeros((2, 24), np.uint8)
    bad["motion"] = bad["hist_change"] = np.zeros(2, np.float32)
    with pytest.raises(IndexStoreError):
        CheapIndex.from_state(bad)
