"""Training-free per-frame features: colour histogram and motion energy.

Inspired by SpotVMR's cheap first pass: every sampled frame, encoded or not,
leaves a few bytes that locate scene changes and static stretches without
touching the neural encoder. Per frame (:data:`BYTES_PER_FRAME` = 40 bytes):

* ``t``: float64 stream seconds (8 bytes);
* ``hist``: 8 bins per RGB channel, each channel's bin fractions quantised
  to uint8 (x / 255), 24 bytes;
* ``motion``: float32 mean absolute difference of 32x32 grey thumbnails of
  this and the previous frame, in [0, 1] (4 bytes);
* ``hist_change``: float32 L1/2 distance to the previous frame's histogram,
  in [0, 1] (4 bytes).

The index is a ring buffer: once ``capacity`` entries are held the oldest is
overwritten, so its memory is bounded. :class:`Gate` uses the entries to
skip encoder passes on static footage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from agent.errors import IndexStoreError
from agent.types import RGBImage

BINS = 8
"""Histogram bins per RGB channel."""
HIST_LEN = 3 * BINS
THUMB = 32
"""Side of the grey thumbnail that motion energy compares."""
BYTES_PER_FRAME = 8 + HIST_LEN + 4 + 4
"""Bytes one entry takes in the index (t, hist, motion, hist_change)."""

_SHIFT = 8 - int(np.log2(BINS))
_SUBSAMPLE_TO = 64  # pixels along the long side used for the histogram: enough for 8 bins


@dataclass(frozen=True, slots=True)
class CheapEntry:
    """The cheap features of one frame."""

    t: float
    hist: npt.NDArray[np.uint8]
    """(24,) uint8: per-channel bin fractions times 255."""
    motion: float
    """Mean absolute grey difference to the previous frame, in [0, 1]."""
    hist_change: float
    """L1/2 histogram distance to the previous frame, in [0, 1]."""


def color_hist(image: RGBImage) -> npt.NDArray[np.uint8]:
    """8-bin-per-channel RGB histogram as uint8 fractions (a 24-vector)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    step = max(1, max(image.shape[:2]) // _SUBSAMPLE_TO)
    px = image[::step, ::step].reshape(-1, 3) >> _SHIFT
    counts = np.stack([np.bincount(px[:, c], minlength=BINS) for c in range(3)]).astype(np.float64)
    counts /= px.shape[0]
    return np.rint(counts.reshape(-1) * 255).astype(np.uint8)


def hist_distance(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """L1/2 distance of two :func:`color_hist` vectors, in [0, 1]."""
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32)).sum()
    return float(diff) / (2.0 * 3 * 255)


def grey_thumb(image: RGBImage) -> npt.NDArray[np.float32]:
    """32x32 grey thumbnail in [0, 1] (box filter: averages sensor noise away)."""
    small = Image.fromarray(image).convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


class CheapIndex:
    """Ring buffer of :class:`CheapEntry` rows in time order.

    Arrays grow by doubling up to ``capacity`` rows; after that the oldest
    row is overwritten. Times must not decrease (one stream per index).
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        size = min(capacity, 1024)
        self._t = np.zeros(size, np.float64)
        self._hist = np.zeros((size, HIST_LEN), np.uint8)
        self._motion = np.zeros(size, np.float32)
        self._change = np.zeros(size, np.float32)
        self._head = 0  # physical row of the oldest entry
        self._count = 0
        self._prev_thumb: npt.NDArray[np.float32] | None = None
        self._prev_hist: npt.NDArray[np.uint8] | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold (allocated rows, at most 2x the entries until capacity)."""
        return int(self._t.nbytes + self._hist.nbytes + self._motion.nbytes + self._change.nbytes)

    @property
    def last_time(self) -> float | None:
        """Time of the newest entry."""
        return None if self._count == 0 else float(self._t[self._phys(self._count - 1)])

    def _phys(self, logical: int) -> int:
        return (self._head + logical) % len(self._t)

    def _grow(self) -> None:
        order = self._order()
        size = min(self.capacity, 2 * len(self._t))
        for name in ("_t", "_hist", "_motion", "_change"):
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), old.dtype)
            new[: self._count] = old[order]
            setattr(self, name, new)
        self._head = 0

    def _order(self) -> npt.NDArray[np.int64]:
        """Physical rows of every entry, oldest first."""
        return (self._head + np.arange(self._count, dtype=np.int64)) % len(self._t)

    def add(self, t: float, image: RGBImage) -> CheapEntry:
        """Compute and append the features of the frame at stream time ``t``."""
        last = self.last_time
        if last is not None and t < last:
            raise IndexStoreError(f"cheap index times must not decrease ({t:.3f} after {last:.3f})")
        hist = color_hist(image)
        thumb = grey_thumb(image)
        motion = 0.0 if self._prev_thumb is None else float(np.abs(thumb - self._prev_thumb).mean())
        change = 0.0 if self._prev_hist is None else hist_distance(hist, self._prev_hist)
        self._prev_thumb, self._prev_hist = thumb, hist
        if self._count == len(self._t) and len(self._t) < self.capacity:
            self._grow()
        if self._count < len(self._t):
            row = self._phys(self._count)
            self._count += 1
        else:  # full: overwrite the oldest
            row = self._head
            self._head = (self._head + 1) % len(self._t)
        self._t[row], self._hist[row] = t, hist
        self._motion[row], self._change[row] = motion, change
        return CheapEntry(t=t, hist=hist, motion=motion, hist_change=change)

    def _span(self, start: float, end: float) -> npt.NDArray[np.int64]:
        """Physical rows with ``start <= t <= end``, oldest first."""
        if self._count < len(self._t):
            segments = [(0, self._count)]
        else:  # wrapped: two sorted runs, [head, size) is older than [0, head)
            segments = [(self._head, len(self._t)), (0, self._head)]
        parts = []
        for a, b in segments:
            times = self._t[a:b]
            lo = int(np.searchsorted(times, start, side="left"))
            hi = int(np.searchsorted(times, end, side="right"))
            parts.append(np.arange(a + lo, a + hi, dtype=np.int64))
        return np.concatenate(parts)

    def motion(self, start: float, end: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """(times, motion energy) of the entries in ``[start, end]``."""
        rows = self._span(start, end)
        return self._t[rows].copy(), self._motion[rows].copy()

    def hist_changes(
        self, start: float, end: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """(times, histogram change) of the entries in ``[start, end]``."""
        rows = self._span(start, end)
        return self._t[rows].copy(), self._change[rows].copy()

    def boundaries(
        self,
        start: float,
        end: float,
        *,
        threshold: float = 0.25,
        motion_threshold: float = 0.12,
        spike_ratio: float = 3.0,
    ) -> npt.NDArray[np.float64]:
        """Scene-change times in ``[start, end]``.

        A frame starts a new scene when its histogram moved by at least
        ``threshold`` from the previous frame, or on a motion spike: motion
        energy at least ``motion_threshold`` *and* ``spike_ratio`` times the
        median of the preceding 8 frames (a cut between two scenes of similar
        colours, but not steady camera motion).
        """
        rows = self._span(start, end)
        change, motion = self._change[rows], self._motion[rows].astype(np.float64)
        hit = change >= threshold
        if len(motion):
            hit |= (motion >= motion_threshold) & (motion >= spike_ratio * _preceding_median(motion, 8))
        return self._t[rows][hit].copy()

    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Arrays (oldest first) for ``np.savez``; restores with :meth:`from_state`."""
        order = self._order()
        state: dict[str, npt.NDArray[np.generic]] = {
            "t": self._t[order],
            "hist": self._hist[order],
            "motion": self._motion[order],
            "hist_change": self._change[order],
            "capacity": np.array(self.capacity, np.int64),
        }
        if self._prev_thumb is not None and self._prev_hist is not None:
            state["prev_thumb"] = self._prev_thumb
            state["prev_hist"] = self._prev_hist
        return state

    @classmethod
    def from_state(cls, state: dict[str, npt.NDArray[np.generic]]) -> CheapIndex:
        """Rebuild an index saved by :meth:`state_dict`."""
        try:
            t = np.asarray(state["t"], np.float64)
            hist = np.asarray(state["hist"], np.uint8).reshape(-1, HIST_LEN)
            motion = np.asarray(state["motion"], np.float32)
            change = np.asarray(state["hist_change"], np.float32)
            capacity = int(np.asarray(state["capacity"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise IndexStoreError(f"invalid cheap index state: {exc}") from exc
        n = len(t)
        if not (len(hist) == len(motion) == len(change) == n) or n > capacity or np.any(np.diff(t) < 0):
            raise IndexStoreError("invalid cheap index state: inconsistent arrays")
        index = cls(capacity)
        size = min(capacity, max(1024, n))
        index._t, index._hist = np.zeros(size, np.float64), np.zeros((size, HIST_LEN), np.uint8)
        index._motion, index._change = np.zeros(size, np.float32), np.zeros(size, np.float32)
        index._t[:n], index._hist[:n], index._motion[:n], index._change[:n] = t, hist, motion, change
        index._count = n
        if "prev_thumb" in state and "prev_hist" in state:
            index._prev_thumb = np.asarray(state["prev_thumb"], np.float32).reshape(THUMB, THUMB)
            index._prev_hist = np.asarray(state["prev_hist"], np.uint8).reshape(HIST_LEN)
        return index


def _preceding_median(values: npt.NDArray[np.float64], window: int) -> npt.NDArray[np.float64]:
    """Median of the ``window`` values before each position (padded with the first value)."""
    padded = np.concatenate([np.full(window, values[0]), values])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded[:-1], window), axis=1)


class Gate:
    """Decides whether a frame needs an encoder pass.

    A frame is skipped when the picture is static: its motion energy is
    below ``motion`` *and* its histogram is within ``hist`` of the last
    frame that *was* encoded (so slow drift accumulates and eventually
    triggers). At least one frame per ``max_seconds`` is encoded regardless,
    so the memory covers static footage too.
    """

    def __init__(self, motion: float, hist: float, max_seconds: float) -> None:
        if motion < 0 or hist < 0 or max_seconds <= 0:
            raise ValueError("gate thresholds must be >= 0 and max_seconds > 0")
        self.motion = motion
        self.hist = hist
        self.max_seconds = max_seconds
        self._last_t: float | None = None
        self._last_hist: npt.NDArray[np.uint8] | None = None
        self.encoded = 0
        self.skipped = 0

    def should_encode(self, entry: CheapEntry) -> bool:
        """True when ``entry``'s frame must go to the encoder (and records it as encoded)."""
        encode = (
            self._last_t is None
            or self._last_hist is None
            or entry.t - self._last_t >= self.max_seconds
            or entry.t < self._last_t  # clock reset: start over
            or entry.motion >= self.motion
            or hist_distance(entry.hist, self._last_hist) >= self.hist
        )
        if encode:
            self._last_t, self._last_hist = entry.t, entry.hist
            self.encoded += 1
        else:
            self.skipped += 1
        return encode
