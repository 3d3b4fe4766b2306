"""Plain data types shared by sources, the numeric core and the service.

Times are in *stream seconds* (``(pts - stream.start_time) * time_base``)
unless the name says ``wall`` (Unix seconds, live sources only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from streams.media import AudioChunk, Frame, RGBImage

__all__ = ["AudioChunk", "Coverage", "Frame", "Moment", "QueryResult", "RGBImage", "Vector"]

Vector = npt.NDArray[np.float32]


MAX_CURVE_POINTS = 200
"""Most similarity-curve points one moment carries (:attr:`Moment.curve`; evenly thinned beyond)."""

AnsweredBy = Literal["refine", "anchor", "llm"]
"""Which path produced a moment: per-frame refinement, anchor-level
prescreen scores (stored frames evicted), or the LLM stage."""


@dataclass(slots=True)
class Moment:
    """A retrieved moment: a time span of one stream with a score."""

    start: float
    end: float
    score: float
    stream: str = ""
    wall_start: float | None = None
    wall_end: float | None = None
    evidence: list[float] = field(default_factory=list)
    """Stream times of the frames that support the moment (thumbnails)."""
    answered_by: AnsweredBy = "refine"
    confidence: float | None = None
    """Calibrated confidence in [0, 1], comparable across streams and channels
    (agent.core.fuse); None where no calibration applies (LLM moments)."""
    channels: list[str] = field(default_factory=list)
    """Channels whose proposals support the moment (``visual``, later ``speech``...)."""
    below_threshold: bool = False
    """The confidence is below the query's threshold: a best guess, not a match."""
    quotes: dict[str, str] = field(default_factory=dict)
    """Words the moment matched, by text channel (``{"speech": "gate 4"}``); empty for visual ones."""
    curve: list[tuple[float, float]] = field(default_factory=list)
    """Refined per-frame (stream seconds, cosine) around the moment, time order, bounded; empty
    where the moment was not refined."""
    deferred: bool = False
    """Anchor-level because the refine budget ran out before its region: ranked after every moment
    that is not deferred, whatever its confidence (another scale; see :mod:`agent.core.fuse`)."""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Coverage:
    """What the memory retains of a time range."""

    start: float
    end: float
    retained_seconds: float
    """Seconds of [start, end] that the memory covers with anchors."""
    seconds_per_token: float
    """Mean temporal resolution of the anchors overlapping the range."""
    frames_seconds: float
    """Seconds of [start, end] for which stored frames still exist."""

    @property
    def retained_fraction(self) -> float:
        span = self.end - self.start
        return 0.0 if span <= 0 else min(1.0, self.retained_seconds / span)


@dataclass(slots=True)
class QueryResult:
    """The answer to one query over one stream's memory."""

    moments: list[Moment]
    coverage: Coverage | None
    answered_by: AnsweredBy
    meaningless: bool = False
    """True when the encoder has random weights: scores carry no semantics."""
    notes: list[str] = field(default_factory=list)
    llm_usage: dict[str, int] | None = None
    """Tokens the LLM stage used (prompt, completion), when it ran."""
    abstained: bool = False
    """No moment reached the confidence threshold ("no confident match"); the
    moments listed are the best candidates, each ``below_threshold``."""
