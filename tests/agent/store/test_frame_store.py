"""Frame store: JPEG round trip, byte bound with oldest-first eviction, crash recovery."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.errors import ConfigError, IndexStoreError
from agent.store.frame_store import HEADER, FrameStore
from tests.videos import photos


def _photo(i: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    with Image.open(photos(1, i)[0]) as img:
        return np.asarray(img.convert("RGB").resize(size), dtype=np.uint8).copy()


def _noise(i: int, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    # Random pixels barely compress: every record is large and eviction kicks in early.
    return np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _chunks(root: Path) -> list[Path]:
    return sorted(root.glob("chunk-*.vfs"))


def test_round_trip_and_nearest_lookup(tmp_path: Path) -> None:
    with FrameStore(tmp_path / "fs", max_bytes=10 * 1024**2) as store:
        pics = {t: _photo(i) for i, t in enumerate([0.0, 0.5, 1.0, 1.5, 4.0])}
        for t, pic in pics.items():
            store.put(t, pic, wall=1_700_000_000.0 + t)
        np.testing.assert_array_equal(store.times(), list(pics))
        np.testing.assert_array_equal(store.times(0.5, 1.5), [0.5, 1.0, 1.5])
        for query, expected in [(0.1, 0.0), (0.74, 0.5), (2.0, 1.5), (3.0, 4.0), (99.0, 4.0), (-5.0, 0.0)]:
            t, img = store.get(query)
            assert t == expected
            assert img.shape == (120, 160, 3)
            assert np.abs(img.astype(int) - pics[t].astype(int)).mean() < 12  # JPEG, not another frame
        t, jpeg = store.get_jpeg(1.0)
        assert t == 1.0 and jpeg[:2] == b"\xff\xd8"
        np.testing.assert_allclose(store.walls(0.0, 1.0), [1_700_000_000.0, 1_700_000_000.5, 1_700_000_001.0])
        assert store.first_time == 0.0 and len(store) == 5


def test_large_pictures_are_downscaled_small_ones_kept(tmp_path: Path) -> None:
    with FrameStore(tmp_path, max_bytes=10**7, size=128) as store:
        store.put(0.0, _photo(0, (640, 480)))
        store.put(1.0, _photo(1, (100, 60)))
        assert store.get(0.0)[1].shape == (96, 128, 3)
        assert store.get(1.0)[1].shape == (60, 100, 3)


def test_frames_are_evenly_subsampled(tmp_path: Path) -> None:
    with FrameStore(tmp_path, max_bytes=10**7) as store:
        for i in range(50):
            store.put(i * 0.5, np.full((32, 32, 3), i * 5, np.uint8))
        got = store.frames(5.0, 15.0, max_frames=5)
        assert [t for t, _ in got] == [5.0, 7.5, 10.0, 12.5, 15.0]
        assert all(abs(int(img.mean()) - int(t * 10)) <= 2 for t, img in got)
        assert len(store.frames(5.0, 6.0, max_frames=100)) == 3
        assert store.frames(100.0, 200.0, max_frames=4) == []


@pytest.mark.parametrize("bound", [400 * 1024, 60 * 1024])
def test_eviction_keeps_the_bound_and_the_newest(tmp_path: Path, bound: int) -> None:
    with FrameStore(tmp_path, max_bytes=bound, chunk_bytes=64 * 1024) as store:
        for i in range(300):
            store.put(float(i), _noise(i))
            assert store.nbytes <= bound
            assert sum(p.stat().st_size for p in _chunks(tmp_path)) <= bound
        times = store.times()
        assert times[-1] == 299.0
        np.testing.assert_array_equal(times, np.arange(times[0], 300.0))  # a contiguous newest suffix
        assert store.first_time == times[0] > 100  # the oldest went first
        assert store.nbytes > bound * 0.6  # eviction frees in small steps
        assert np.array_equal(store.get(299.0)[1].shape, (96, 96, 3))
        assert store.get(0.0)[0] == times[0]  # evicted: the nearest retained frame answers


def test_reopen_rebuilds_the_index(tmp_path: Path) -> None:
    with FrameStore(tmp_path, max_bytes=10**7, chunk_bytes=64 * 1024) as store:
        for i in range(40):
            store.put(i * 0.25, _photo(i % 5))
        before = store.times()
        jpeg = store.get_jpeg(5.0)
    assert len(_chunks(tmp_path)) > 1
    with FrameStore(tmp_path, max_bytes=10**7, chunk_bytes=64 * 1024) as store:
        np.testing.assert_array_equal(store.times(), before)
        assert store.get_jpeg(5.0) == jpeg
        with pytest.raises(IndexStoreError):
            store.put(1.0, _photo(0))  # time going backwards across a restart
        store.put(10.0, _photo(0))
        assert store.times()[-1] == 10.0
    # Reopening with a smaller bound evicts down to it.
    with FrameStore(tmp_path, max_bytes=150 * 1024, chunk_bytes=16 * 1024) as store:
        assert 0 < store.nbytes <= 150 * 1024
        assert store.times()[-1] == 10.0 and store.first_time is not None and store.first_time > 0


@pytest.mark.parametrize("damage", ["cut_body", "cut_header", "flip_byte", "garbage_tail"])
def test_damaged_tail_is_cut_and_earlier_records_survive(tmp_path: Path, damage: str) -> None:
    with FrameStore(tmp_path, max_bytes=10**7) as store:
        for i in range(10):
            store.put(float(i), _photo(i))
        good = [store.get_jpeg(float(i)) for i in range(9)]
        newest = store.get_jpeg(9.0)[1]
    last = _chunks(tmp_path)[-1]
    data = bytearray(last.read_bytes())
    last_start = len(data) - HEADER.size - len(newest)
    assert last_start > 0
    if damage == "cut_body":
        data = data[: len(data) - 100]
    elif damage == "cut_header":
        data = data[: last_start + 10]
    elif damage == "flip_byte":
        data[len(data) - 50] ^= 0xFF
    else:
        data += b"\x00garbage from a killed writer"
    last.write_bytes(bytes(data))
    with FrameStore(tmp_path, max_bytes=10**7) as store:
        expected = list(range(10)) if damage == "garbage_tail" else list(range(9))
        np.testing.assert_array_equal(store.times(), expected)
        assert [store.get_jpeg(float(i)) for i in range(9)] == good
        store.put(20.0, _photo(3))
        assert store.get(20.0)[0] == 20.0
    if damage != "garbage_tail":
        assert last.stat().st_size == last_start  # truncated to the last good record


def test_bad_use_gives_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FrameStore(tmp_path, max_bytes=0)
    store = FrameStore(tmp_path, max_bytes=10**6)
    with pytest.raises(IndexStoreError, match="empty"):
        store.get(0.0)
    with pytest.raises(IndexStoreError):
        store.put(0.0, np.zeros((8, 8), np.uint8))
    store.put(1.0, _photo(0))
    with pytest.raises(IndexStoreError):
        store.put(0.5, _photo(0))
    store.close()
    store.close()  # idempotent
    with pytest.raises(IndexStoreError, match="closed"):
        store.put(2.0, _photo(0))
    assert store.get(1.0)[0] == 1.0  # what is stored stays readable


def test_concurrent_put_and_queries(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, max_bytes=300 * 1024, chunk_bytes=32 * 1024)
    errors: list[BaseException] = []
    done = threading.Event()

    def ingest() -> None:
        try:
            for i in range(200):
                store.put(i * 0.5, _noise(i, (48, 48)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def query() -> None:
        seen = 0
        try:
            while not done.is_set() or seen == 0:
                if len(store):
                    _, img = store.get(50.0)
                    frames = store.frames(0.0, 1e9, max_frames=8)
                    assert img.shape == (48, 48, 3) and len(frames) <= 8
                    assert all(a[0] < b[0] for a, b in itertools.pairwise(frames))
                    seen += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest), threading.Thread(target=query)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    store.close()
    assert not errors, errors
    assert store.times()[-1] == 99.5 and store.nbytes <= 300 * 1024
