"""Media value types that sources yield: pictures and sound.

Times are in *stream seconds* (``(pts - stream.start_time) * time_base`` for
recordings, a monotonic timeline for live sources) unless the name says
``wall`` (Unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

RGBImage = npt.NDArray[np.uint8]
"""An (H, W, 3) uint8 RGB picture."""

AUDIO_RATE = 16_000
"""Sample rate (Hz) of every :class:`AudioChunk`: what speech models take."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded, sampled picture of a stream."""

    stream: str
    t: float
    image: RGBImage
    wall: float | None = None
    keyframe: bool = False
    duration: float | None = None
    """Seconds the picture stays on screen from ``t`` (None: unknown, one sampling period).

    Recordings state it: a screen recording holds a picture for seconds; the
    picture lasts until the next one or its own container duration, clipped
    to the end of the stream (see :mod:`streams.decode`). A consumer covers
    ``[t, t + max(duration, its sampling period))`` with the sample.
    """


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """About one second of a stream's sound, mono float32 in [-1, 1].

    ``t`` is the stream time of the first sample; ``samples`` has shape (n,)
    at ``sample_rate`` Hz, so the chunk lasts ``n / sample_rate`` seconds.
    """

    stream: str
    t: float
    samples: npt.NDArray[np.float32]
    sample_rate: int = AUDIO_RATE
    wall: float | None = None

    @property
    def duration(self) -> float:
        """Seconds of sound in the chunk."""
        return len(self.samples) / self.sample_rate


Media: TypeAlias = Frame | AudioChunk
"""What a source yields."""
