"""Sound to :class:`~streams.media.AudioChunk`: resampled once, cut into ~1 s pieces.

Every source with ``audio=True`` feeds its decoded ``av.AudioFrame`` objects
to an :class:`AudioChunker`: PyAV's ``AudioResampler`` converts them to mono
float32 at :data:`~streams.media.AUDIO_RATE` Hz, and the samples are cut into
chunks of ``chunk_seconds``. A jump in the source's time (a gap, a
reconnect) ends the current chunk early, so a chunk never spans a hole.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from streams.media import AUDIO_RATE, AudioChunk

_JUMP = 0.25
"""Seconds between where the buffered sound ends and a new frame's time that count as a jump."""


class AudioChunker:
    """Resample and cut one stream's sound; not thread-safe (one producer)."""

    def __init__(self, stream: str, *, rate: int = AUDIO_RATE, chunk_seconds: float = 1.0) -> None:
        if rate <= 0 or chunk_seconds <= 0:
            raise ValueError("rate and chunk_seconds must be positive")
        self.stream = stream
        self.rate = rate
        self._chunk = max(1, round(rate * chunk_seconds))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._parts: list[npt.NDArray[np.float32]] = []
        self._buffered = 0
        self._t: float | None = None  # stream time of the first buffered sample
        self._wall: float | None = None  # wall time of the first buffered sample

    def push(self, frame: av.AudioFrame, t: float | None, wall: float | None = None) -> list[AudioChunk]:
        """Add a decoded frame whose first sample is at stream time ``t`` (None: right after the last)."""
        out: list[AudioChunk] = []
        if t is not None and self._t is not None and abs(t - self._end()) > _JUMP:
            out.extend(self.flush())
        if self._t is None:
            self._t = t if t is not None else 0.0
            self._wall = wall
        for piece in self._resampler.resample(frame):
            samples = piece.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self._parts.append(samples)
            self._buffered += len(samples)
        while self._buffered >= self._chunk:
            out.append(self._cut(self._chunk))
        return out

    def flush(self) -> list[AudioChunk]:
        """The sound still buffered, as one shorter chunk (or nothing)."""
        if self._buffered == 0:
            self._t = self._wall = None
            return []
        chunk = self._cut(self._buffered)
        self._t = self._wall = None
        return [chunk]

    def _end(self) -> float:
        assert self._t is not None
        return self._t + self._buffered / self.rate

    def _cut(self, n: int) -> AudioChunk:
        assert self._t is not None
        joined = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        head, rest = joined[:n], joined[n:]
        chunk = AudioChunk(self.stream, self._t, np.ascontiguousarray(head), self.rate, self._wall)
        self._parts = [rest] if len(rest) else []
        self._buffered = len(rest)
        step = n / self.rate
        self._t += step
        if self._wall is not None:
            self._wall += step
        return chunk
