"""Frame store under damage and disk faults: one bad byte costs one record, a full disk pauses."""

from __future__ import annotations

import errno
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from agent.store import frame_chunks, frame_store
from agent.store.frame_records import HEADER, MAGIC_V1, pack, scan
from agent.store.frame_store import FrameStore


def _pic(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)


def _record_starts(data: bytes) -> list[int]:
    return [r.offset - HEADER.size for r in scan(data).records]


@pytest.mark.parametrize("where", ["jpeg", "time", "length", "magic"])
def test_one_flipped_byte_loses_only_that_record(tmp_path: Path, where: str) -> None:
    # The issue: one flipped byte in a chunk deleted the ~2400 frames after it.
    n = 2400
    with FrameStore(tmp_path, max_bytes=10**8, chunk_bytes=10**8, size=16) as store:
        for i in range(n):
            store.put(i * 0.5, _pic(i % 7))
    (chunk,) = sorted(tmp_path.glob("chunk-*.vfs"))
    data = bytearray(chunk.read_bytes())
    victim = _record_starts(bytes(data))[100]
    at = {"jpeg": victim + HEADER.size + 40, "time": victim + 6, "length": victim + 21, "magic": victim}[
        where
    ]
    data[at] ^= 0x10
    chunk.write_bytes(bytes(data))
    with FrameStore(tmp_path, max_bytes=10**8, chunk_bytes=10**8, size=16) as store:
        expected = np.delete(np.arange(n) * 0.5, 100)
        np.testing.assert_array_equal(store.times(), expected)
        assert store.get(50.5)[0] == 50.5 and store.get(200.0)[0] == 200.0
        store.put(n * 0.5, _pic(0))  # appends go on (to a new chunk)
        assert store.times()[-1] == n * 0.5


def test_a_damaged_run_in_the_middle_is_skipped_and_reported(tmp_path: Path) -> None:
    records = [pack(float(i), math.nan, bytes([i]) * 50) for i in range(20)]
    data = bytearray(b"".join(records))
    start = sum(len(r) for r in records[:5])
    end = sum(len(r) for r in records[:8])
    data[start:end] = b"\x00" * (end - start)  # three records zeroed
    found = scan(bytes(data))
    assert [r.t for r in found.records] == [float(i) for i in range(20) if not 5 <= i < 8]
    assert found.holes == [(start, end)] and found.end == len(data)


def test_records_of_older_stores_are_still_read(tmp_path: Path) -> None:
    with FrameStore(tmp_path, max_bytes=10**7) as store:
        jpeg = store.encode(_pic(1))
    old = struct.pack("<4sddII", MAGIC_V1, 3.0, math.nan, len(jpeg), zlib.crc32(jpeg)) + jpeg
    (tmp_path / "chunk-00000000.vfs").write_bytes(old)
    with FrameStore(tmp_path, max_bytes=10**7) as store:
        assert store.get_jpeg(3.0) == (3.0, jpeg)
        store.put(4.0, _pic(2))
        np.testing.assert_array_equal(store.times(), [3.0, 4.0])


class _Disk:
    """The write boundary: chunk files whose writes fail with ENOSPC (after half a record) while full."""

    def __init__(self) -> None:
        self.full = False

    def open(self, path: Path) -> io.FileIO:
        disk = self

        class Chunk(io.FileIO):
            def write(self, b: object) -> int:
                if disk.full:
                    view = memoryview(b)  # type: ignore[arg-type]
                    super().write(view[: len(view) // 2])  # what a real full disk leaves behind
                    raise OSError(errno.ENOSPC, "No space left on device")
                return int(super().write(b))  # type: ignore[arg-type]

        return Chunk(path, "xb")


def test_disk_full_pauses_writes_rolls_back_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _Disk()
    monkeypatch.setattr(frame_chunks, "_open_chunk", disk.open)
    now = [0.0]
    store = FrameStore(tmp_path, max_bytes=10**7, retry_seconds=5.0, clock=lambda: now[0])
    for i in range(5):
        assert store.put(float(i), _pic(i))
    size = store.nbytes
    disk.full = True
    assert not store.put(5.0, _pic(5))  # fails: rolled back, paused
    status = store.status()
    assert not status.writing and status.error is not None and status.error.startswith("ENOSPC")
    assert (status.skipped, status.failures) == (1, 1)
    assert not store.put(6.0, _pic(6))  # paused: not even tried
    assert store.status().failures == 1 and store.status().skipped == 2
    assert store.nbytes == size == sum(p.stat().st_size for p in tmp_path.glob("chunk-*.vfs"))
    disk.full = False
    now[0] = 5.0
    assert store.put(7.0, _pic(7))  # retried after the pause: writes again
    assert store.status() == frame_store.FrameStoreStatus(True, None, 2, 1)
    store.close()
    with FrameStore(tmp_path, max_bytes=10**7) as reopened:  # no half record was left in the file
        np.testing.assert_array_equal(reopened.times(), [0.0, 1.0, 2.0, 3.0, 4.0, 7.0])
