"""Low-resolution JPEGs of sampled frames on disk, indexed by stream time.

Used by refinement (re-scoring frames of a candidate region), thumbnails and
captions. The files are chunks of length-framed, checksummed records
(:mod:`agent.store.frame_chunks`: layout, recovery on open, appends that roll
back, eviction; :mod:`agent.store.frame_records`: the record format).

The store is bounded in bytes: when the files would exceed ``max_bytes`` the
oldest *whole* chunk is deleted. A chunk holds at most ``chunk_bytes`` and
about ``max_bytes / 8``, so eviction frees space in small steps and the
files never exceed ``max_bytes``.

A failing disk never stops ingest: when a write fails (``ENOSPC``, ``EDQUOT``,
``EIO``: any ``OSError``), the partial record is rolled back and the store
*pauses* — :meth:`FrameStore.put` skips frames (counted in
:meth:`FrameStore.status`) and tries again every ``retry_seconds``. It does
not evict its own history to make room: the disk may be full because of
another writer, and deleting frames would not fix that. The memory (RAM)
keeps ingesting meanwhile; thumbnails and refinement miss the skipped frames.

``put`` may run in one ingest thread while other threads query: a lock
guards the index and the files.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
from PIL import Image

from agent.errors import ConfigError, IndexStoreError
from agent.store import frame_records
from agent.store.frame_chunks import ChunkFiles
from agent.store.frame_records import HEADER, MAGIC, RecordIndex
from agent.types import RGBImage

log = logging.getLogger(__name__)

__all__ = ["HEADER", "MAGIC", "FrameStore", "FrameStoreStatus", "decode_jpeg"]


@dataclass(frozen=True, slots=True)
class FrameStoreStatus:
    """Whether the store is writing, and what it lost to write failures (see the module docstring).

    ``writing``: False while paused after a failed write; ``error``: the
    last write failure (``"ENOSPC: No space left on device"``), None once a
    write succeeds again; ``skipped``: frames not stored because of write
    failures, since the store opened; ``failures``: failed write attempts.
    """

    writing: bool
    error: str | None
    skipped: int
    failures: int

    def to_dict(self) -> dict[str, object]:
        return {
            "writing": self.writing,
            "error": self.error,
            "skipped": self.skipped,
            "failures": self.failures,
        }


class FrameStore:
    """Byte-bounded on-disk JPEG store of frames, nearest-time lookup.

    ``size`` bounds the longest side of stored pictures (larger ones are
    downscaled, smaller ones kept as they are); ``quality`` is the JPEG
    quality; ``retry_seconds`` is the pause after a failed write (``clock``:
    monotonic seconds, injectable for tests). Use as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        size: int = 224,
        quality: int = 80,
        chunk_bytes: int = 32 * 1024**2,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ConfigError("frame store max_bytes must be positive")
        if not 1 <= quality <= 100 or size < 8:
            raise ConfigError("frame store needs 1 <= quality <= 100 and size >= 8")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.size = size
        self.quality = quality
        # Small chunks relative to the bound: eviction then frees ~1/8 at a time.
        self.chunk_bytes = max(1, min(chunk_bytes, max_bytes // 8))
        self._lock = threading.RLock()
        self._index = RecordIndex()
        self._files = ChunkFiles(self.root, self._index, max_bytes=max_bytes, chunk_bytes=self.chunk_bytes)
        self._closed = False
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._retry_at: float | None = None  # set while paused
        self._error: str | None = None
        self._skipped = 0
        self._failures = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._files.recover()
        except OSError as exc:
            raise IndexStoreError(f"frame store {self.root}: {exc}") from exc
        self._files.evict(0)

    # ---- writing -------------------------------------------------------------------------

    def encode(self, image: RGBImage) -> bytes:
        """JPEG bytes of ``image`` scaled so its longest side is at most :attr:`size`."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise IndexStoreError(
                f"frame store takes (H, W, 3) uint8 images, got {image.shape} {image.dtype}"
            )
        pic = Image.fromarray(image)
        if max(pic.size) > self.size:
            pic.thumbnail((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        buf = io.BytesIO()
        pic.save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()

    def put(self, t: float, image: RGBImage, wall: float | None = None) -> bool:
        """Store the frame at stream time ``t`` (times must not decrease).

        Returns False when the frame was skipped because the store is paused
        after a write failure (see :meth:`status`); raises IndexStoreError
        for a bad image, a time going back, a frame over the bound or a
        closed store.
        """
        jpeg = self.encode(image)  # outside the lock: the slow part
        record = frame_records.pack(t, math.nan if wall is None else wall, jpeg)
        if len(record) > self.max_bytes:
            raise IndexStoreError(f"one frame ({len(record)} B) exceeds the store bound {self.max_bytes} B")
        with self._lock:
            self._check_open()
            times = self._index.times()
            if len(times) and t < times[-1]:
                raise IndexStoreError(f"frame store times must not decrease ({t:.3f} after {times[-1]:.3f})")
            if self._retry_at is not None and self._clock() < self._retry_at:
                self._skipped += 1
                return False
            try:
                offset = self._files.append(record)
            except OSError as exc:
                self._pause(exc)
                self._skipped += 1
                return False
            self._index.append(
                t, math.nan if wall is None else wall, self._files.writer_id, offset + HEADER.size, len(jpeg)
            )
            if self._retry_at is not None:
                log.warning("frame store %s writes again (%d frames skipped)", self.root, self._skipped)
                self._retry_at, self._error = None, None
            return True

    def status(self) -> FrameStoreStatus:
        """Writing or paused, the last write error and the frames lost to write failures."""
        with self._lock:
            return FrameStoreStatus(self._retry_at is None, self._error, self._skipped, self._failures)

    def _pause(self, exc: OSError) -> None:
        """Stop writing for ``retry_seconds``; log once per pause (not once per skipped frame)."""
        name = errno.errorcode.get(exc.errno or 0, "OSError")
        self._failures += 1
        if self._retry_at is None:
            log.error(
                "frame store %s cannot write (%s): frames are skipped, retrying every %.1f s; "
                "the memory keeps ingesting",
                self.root,
                exc,
                self.retry_seconds,
            )
        self._error = f"{name}: {exc.strerror or exc}"
        self._retry_at = self._clock() + self.retry_seconds

    def flush(self) -> None:
        """Push written records to the disk (IndexStoreError when the disk refuses)."""
        with self._lock:
            try:
                self._files.fsync()
            except OSError as exc:
                raise IndexStoreError(f"frame store {self.root}: fsync failed: {exc}") from exc

    def close(self) -> None:
        """Flush and close the open chunk; idempotent, and closes even when the flush fails."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.flush()
            except IndexStoreError as exc:
                log.warning("%s", exc)
            self._files.close_writer()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"frame store {self.root} is closed")

    # ---- reading -------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of all chunk files (headers included); never above ``max_bytes``."""
        with self._lock:
            return self._files.nbytes

    @property
    def first_time(self) -> float | None:
        """Oldest retained time: everything before it was evicted (or never stored)."""
        with self._lock:
            times = self._index.times()
            return float(times[0]) if len(times) else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def times(self, start: float = -math.inf, end: float = math.inf) -> npt.NDArray[np.float64]:
        """Stored times in ``[start, end]``, ascending."""
        with self._lock:
            times = self._index.times()
            lo = int(np.searchsorted(times, start, "left"))
            hi = int(np.searchsorted(times, end, "right"))
            return times[lo:hi].copy()

    def walls(self, start: float = -math.inf, end: float = math.inf) -> npt.NDArray[np.float64]:
        """Wall-clock times aligned with :meth:`times` (NaN where none was given)."""
        with self._lock:
            times = self._index.times()
            lo = int(np.searchsorted(times, start, "left")) + self._index.lo
            hi = int(np.searchsorted(times, end, "right")) + self._index.lo
            return self._index.wall[lo:hi].copy()

    def _nearest_row(self, t: float) -> int:
        times = self._index.times()
        if not len(times):
            raise IndexStoreError(f"frame store {self.root} is empty")
        i = int(np.searchsorted(times, t))
        if i == len(times) or (i > 0 and t - times[i - 1] <= times[i] - t):
            i -= 1
        return self._index.lo + i

    def get_jpeg(self, t: float) -> tuple[float, bytes]:
        """(time, JPEG bytes) of the stored frame nearest to ``t``."""
        with self._lock:
            row = self._nearest_row(t)
            return float(self._index.t[row]), self._files.read(row)

    def get(self, t: float) -> tuple[float, RGBImage]:
        """(time, RGB picture) of the stored frame nearest to ``t``."""
        found, jpeg = self.get_jpeg(t)
        return found, decode_jpeg(jpeg)

    def frames(self, start: float, end: float, max_frames: int) -> list[tuple[float, RGBImage]]:
        """Stored frames in ``[start, end]``, evenly subsampled to at most ``max_frames``."""
        if max_frames <= 0:
            return []
        with self._lock:
            times = self._index.times()
            lo = int(np.searchsorted(times, start, "left"))
            hi = int(np.searchsorted(times, end, "right"))
            rows = np.arange(lo, hi) + self._index.lo
            if len(rows) > max_frames:
                rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_frames).round().astype(np.int64))]
            found = [(float(self._index.t[r]), self._files.read(int(r))) for r in rows]
        return [(t, decode_jpeg(jpeg)) for t, jpeg in found]


def decode_jpeg(data: bytes) -> RGBImage:
    """RGB array of JPEG bytes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise IndexStoreError(f"stored frame is not a readable JPEG: {exc}") from exc
