"""The plain values llm_server takes and gives, and what it needs from its caller.

llm_server is a library: it imports nothing of the application that uses it.
The caller hands it candidate moments per stream (:class:`StreamResult` of
:class:`Candidate`), a frame source and an image/text encoder (the
:class:`FrameSource` and :class:`TextImageEncoder` protocols), and a
:class:`StageConfig`; it gets :class:`StreamResult` values back.

Times are in *stream seconds* unless the name says ``wall`` (Unix seconds,
live streams only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

RGBImage = npt.NDArray[np.uint8]
"""An (H, W, 3) uint8 RGB picture."""

AnsweredBy = Literal["refine", "anchor", "llm"]
"""Which path produced a moment: per-frame refinement, anchor-level scores
(stored frames evicted), or the LLM."""


@dataclass(frozen=True, slots=True)
class TextSpanIn:
    """Words said (a transcript utterance) or shown (an on-screen text line) from ``t`` to ``end``.

    Plain data from the caller's text channels; ``channel`` names where the
    words come from (``"speech"``, ``"ocr"``), which the prompt says.
    """

    t: float
    end: float
    text: str
    channel: str


@dataclass(slots=True)
class Candidate:
    """A moment the stage receives (from visual search) or returns (from the LLM).

    ``score`` is the visual match score for received candidates and the LLM's
    confidence in [0, 1] for returned ones.
    """

    start: float
    end: float
    score: float
    stream: str = ""
    wall_start: float | None = None
    wall_end: float | None = None
    evidence: list[float] = field(default_factory=list)
    """Stream times of the frames that support the moment."""
    answered_by: AnsweredBy = "refine"


@dataclass(slots=True)
class StreamCoverage:
    """What the caller's memory retains of the searched range (carried through untouched)."""

    start: float
    end: float
    retained_seconds: float
    seconds_per_token: float
    frames_seconds: float


@dataclass(slots=True)
class StreamResult:
    """One stream's moments, best first, with what the caller knows about them.

    As input: the visual search's candidates. As output: the LLM's moments
    (``answered_by="llm"``) or, on any failure, the candidates unchanged with a
    note starting ``llm fallback:``.
    """

    moments: list[Candidate]
    coverage: StreamCoverage | None
    answered_by: AnsweredBy
    meaningless: bool = False
    """The caller's scores carry no semantics (a random-weight encoder)."""
    notes: list[str] = field(default_factory=list)
    llm_usage: dict[str, int] | None = None
    """Tokens the LLM used (``prompt_tokens``, ``completion_tokens``), when it answered."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used, as the server reported them (or counted)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """The text of one answer with its token usage."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    usage_reported: bool = True
    """False when the server sent no usage and completion tokens were counted from chunks."""


class TextImageEncoder(Protocol):
    """What S_q needs of a CLIP-like encoder: L2-normalised rows in one space."""

    def encode_images(self, images: Sequence[RGBImage]) -> npt.NDArray[np.float32]:
        """(n, d) float32 embeddings of n pictures."""
        ...

    def encode_text(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(n, d) float32 embeddings of n texts."""
        ...


class FrameSource(Protocol):
    """What captions and evidence need of a stream's stored frames."""

    def frames(self, start: float, end: float, max_frames: int) -> list[tuple[float, RGBImage]]:
        """Up to ``max_frames`` (time, picture) pairs spread over [start, end]."""
        ...

    def get_jpeg(self, t: float) -> tuple[float, bytes]:
        """The stored frame nearest ``t``: (its time, JPEG bytes)."""
        ...


class StageConfig(BaseModel):
    """How the LLM stage talks to its server and builds prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    """Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000."""
    model: str | None = None
    """Served model id; None picks the server's first."""
    api_key: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    """Seconds for one whole request, retries included."""
    budget_tokens: int = Field(default=1024, ge=128)
    """Prompt budget; low-importance captions are dropped first to fit."""
    max_tokens: int = Field(default=192, ge=16)
    a1: float = Field(default=0.5, ge=0)
    """Weight of sim(frame, query) in S_q."""
    a2: float = Field(default=0.5, ge=0)
    """Weight of sim(caption, query), scaled by frame-caption agreement, in S_q."""
    caption_mode: Literal["storage", "latency"] = "storage"
    frames_per_region: int = Field(default=3, ge=1, le=16)
