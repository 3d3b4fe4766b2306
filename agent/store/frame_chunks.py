"""The chunk files of a frame store: recovery on open, appends that roll back, eviction.

Layout of a store's ``root``::

    chunk-00000000.vfs   records appended in time order
    chunk-00000001.vfs   ...

Records are length-framed and checksummed (:mod:`agent.store.frame_records`).
Files are only ever appended to, so a crash (kill -9) can only damage the
tail of the newest chunk; bit rot can hit anywhere. :meth:`ChunkFiles.recover`
scans every chunk with resynchronisation: a damaged record is skipped and the
scan continues at the next valid one, so one flipped byte loses one frame; a
damaged tail is cut so that nothing half-written stays. Appends always go to
a new chunk after an open.

A failed write (any ``OSError``) is rolled back before it is raised, so the
file never keeps half a record; eviction deletes the oldest *whole* chunk.
:class:`~agent.store.frame_store.FrameStore` decides what a failure means
(pause, skip) and serialises every call with its lock.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import re
from pathlib import Path

from agent.errors import IndexStoreError
from agent.store import frame_records
from agent.store.frame_records import RecordIndex

log = logging.getLogger(__name__)

_CHUNK_RE = re.compile(r"^chunk-(\d{8})\.vfs$")


def _open_chunk(path: Path) -> io.FileIO:
    """A new chunk file, unbuffered (the write boundary: tests inject disk faults here)."""
    return io.FileIO(path, "xb")


class ChunkFiles:
    """One store's chunk files, the open (appending) chunk, and the records' index rows.

    ``index`` is the store's :class:`RecordIndex`, kept in step with the files
    (recovery appends to it, eviction drops from it). ``max_bytes`` bounds the
    files, ``chunk_bytes`` one chunk. Not thread-safe: the owning store's lock
    guards every call.
    """

    def __init__(self, root: Path, index: RecordIndex, *, max_bytes: int, chunk_bytes: int) -> None:
        self.root = root
        self.index = index
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.sizes: dict[int, int] = {}
        """Chunk id -> bytes, oldest first."""
        self.writer_id = -1
        self._writer: io.FileIO | None = None  # unbuffered: a failed write can be rolled back

    @property
    def nbytes(self) -> int:
        """Bytes of all chunk files (headers included)."""
        return sum(self.sizes.values())

    def path(self, chunk: int) -> Path:
        return self.root / f"chunk-{chunk:08d}.vfs"

    # ---- opening -------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the index from the chunk files, cutting off a damaged tail (OSError)."""
        ids = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name)))
        for chunk in ids:
            size = self._scan(chunk)
            if size == 0:
                self.path(chunk).unlink()
            else:
                self.sizes[chunk] = size
        self.writer_id = ids[-1] if ids else -1

    def _scan(self, chunk: int) -> int:
        """Index one chunk's valid records, skipping damaged ones; cut a damaged tail. Returns its size."""
        path = self.path(chunk)
        data = path.read_bytes()
        last_t = float(self.index.times()[-1]) if len(self.index) else -math.inf
        found = frame_records.scan(data, last_t)
        for rec in found.records:
            self.index.append(rec.t, rec.wall, chunk, rec.offset, rec.length)
        for start, end in found.holes:
            log.warning("%s: skipped %d damaged bytes at offset %d", path, end - start, start)
        if found.end < len(data):
            log.warning("%s: cut %d damaged bytes at offset %d", path, len(data) - found.end, found.end)
            with path.open("r+b") as fh:
                fh.truncate(found.end)
        return found.end

    # ---- writing -------------------------------------------------------------------------

    def append(self, record: bytes) -> int:
        """Append ``record`` to the open chunk; returns its offset. OSError after rolling back."""
        self.evict(len(record))
        writer = self._writer_for(len(record))
        offset = self.sizes[self.writer_id]
        try:
            view = memoryview(record)
            while view:  # a raw write may be partial
                written = writer.write(view)
                if not written:
                    raise OSError(errno.EIO, "the disk accepted no bytes")
                view = view[written:]
        except OSError:
            self._roll_back(writer, offset)
            raise
        self.sizes[self.writer_id] = offset + len(record)
        return offset

    def _roll_back(self, writer: io.FileIO, offset: int) -> None:
        """Cut a partly written record; if even that fails, seal the chunk (the next open cuts it)."""
        try:
            writer.truncate(offset)
            writer.seek(offset)
        except OSError:
            self.close_writer()

    def _writer_for(self, nbytes: int) -> io.FileIO:
        """The open chunk, rolled over to a new file when this record would overfill it (OSError)."""
        if self._writer is not None and self.sizes[self.writer_id] + nbytes <= self.chunk_bytes:
            return self._writer
        self.close_writer()
        writer = _open_chunk(self.path(self.writer_id + 1))
        self.writer_id += 1
        self._writer = writer
        self.sizes[self.writer_id] = 0
        return self._writer

    def close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError as exc:  # unbuffered: nothing is lost; the next open rescans the chunk
                log.warning("frame store %s: closing a chunk failed: %s", self.root, exc)

    def evict(self, incoming: int) -> None:
        """Delete oldest whole chunks until ``incoming`` more bytes fit under the bound."""
        while self.sizes and sum(self.sizes.values()) + incoming > self.max_bytes:
            oldest = next(iter(self.sizes))
            if oldest == self.writer_id:
                self.close_writer()  # only chunk left and still too big: its records go too
            del self.sizes[oldest]
            self.index.drop_chunk(oldest)
            self.path(oldest).unlink(missing_ok=True)

    def fsync(self) -> None:
        """Push the open chunk's records to the disk (OSError when the disk refuses)."""
        if self._writer is not None:
            os.fsync(self._writer.fileno())

    # ---- reading -------------------------------------------------------------------------

    def read(self, row: int) -> bytes:
        """The JPEG bytes of index row ``row`` (IndexStoreError when the file cannot give them)."""
        chunk, offset, length = (
            int(self.index.chunk[row]),
            int(self.index.offset[row]),
            int(self.index.length[row]),
        )
        try:
            with self.path(chunk).open("rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
        except OSError as exc:
            raise IndexStoreError(f"frame store read failed: {exc}") from exc
        if len(data) != length:
            raise IndexStoreError(f"frame store chunk {chunk} is shorter than its index")
        return data
