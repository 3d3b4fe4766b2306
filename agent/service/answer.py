"""One result model for a query: what ``vmr query --json`` prints and what the ``moments`` event carries.

:func:`query_answer` turns the per-stream :class:`~agent.types.QueryResult`
of a search into a :class:`QueryAnswer`: the best moments over every stream
at top level (confident ones first, by calibrated confidence, the ``deferred`` ones of regions the
refine budget did not reach last; at most ``top_k``), and per stream the
coverage of the asked range, notes, which path answered and the LLM usage.
Times are stream seconds (rounded to ms); ``wall_*`` are ISO 8601 UTC or
null; ``thumbnail`` is the service route of the stored frame nearest the
moment's best evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import Field

from agent.config import Strict
from agent.types import MAX_CURVE_POINTS, AnsweredBy, Coverage, Moment, QueryResult


def iso(wall: float | None) -> str | None:
    """ISO 8601 (UTC, milliseconds) of a Unix time, or None."""
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def thumbnail_url(stream: str, t: float) -> str:
    """Where ``/thumbnails`` serves the stored frame nearest stream second ``t``."""
    return f"/thumbnails/{stream}/{t:.3f}.jpg"


class MomentOut(Strict):
    """One moment: a span of one stream with its score and evidence."""

    stream: str
    start: float
    end: float
    wall_start: str | None = None
    wall_end: str | None = None
    score: float
    evidence: list[float] = Field(default_factory=list)
    """Stream seconds of the frames supporting the moment (best first)."""
    thumbnail: str
    answered_by: AnsweredBy
    confidence: float | None = None
    """Calibrated confidence in [0, 1], comparable across streams and channels; None for LLM moments."""
    channels: list[str] = Field(default_factory=list)
    """Channels whose proposals support the moment (``visual``, ...)."""
    below_threshold: bool = False
    """A best guess listed while the answer abstains, not a match."""
    quotes: dict[str, str] = Field(default_factory=dict)
    """The words matched, by text channel (``{"speech": "gate 4"}``); empty for visual moments."""
    curve: list[tuple[float, float]] | None = Field(default=None, max_length=MAX_CURVE_POINTS)
    """Refined per-frame similarity around the moment: ``[stream seconds, cosine]`` pairs in time
    order, at most 200; None (omitted by clients that do not draw it) where the moment was not refined."""

    @classmethod
    def of(cls, m: Moment) -> MomentOut:
        peak = m.evidence[0] if m.evidence else (m.start + m.end) / 2
        return cls(
            stream=m.stream,
            start=round(m.start, 3),
            end=round(m.end, 3),
            wall_start=iso(m.wall_start),
            wall_end=iso(m.wall_end),
            score=round(float(m.score), 6),
            evidence=[round(float(t), 3) for t in m.evidence],
            thumbnail=thumbnail_url(m.stream, peak),
            answered_by=m.answered_by,
            confidence=None if m.confidence is None else round(float(m.confidence), 6),
            channels=list(m.channels),
            below_threshold=m.below_threshold,
            quotes=dict(m.quotes),
            curve=list(m.curve) or None,
        )


class CoverageOut(Strict):
    """What the memory retains of the asked range; ``in_memory`` false: not in retained memory."""

    start: float
    end: float
    retained_seconds: float
    retained_fraction: float
    seconds_per_token: float | None
    """None where no anchor overlaps the range (infinitely coarse)."""
    frames_seconds: float
    in_memory: bool

    @classmethod
    def of(cls, c: Coverage) -> CoverageOut:
        spt = c.seconds_per_token
        return cls(
            start=round(c.start, 3),
            end=round(c.end, 3),
            retained_seconds=round(c.retained_seconds, 3),
            retained_fraction=round(c.retained_fraction, 4),
            seconds_per_token=None if spt == float("inf") else round(spt, 3),
            frames_seconds=round(c.frames_seconds, 3),
            in_memory=c.retained_seconds > 0,
        )


class StreamAnswer(Strict):
    """Per stream: how it was answered and what its memory covers."""

    answered_by: AnsweredBy
    coverage: CoverageOut | None
    in_memory: bool
    notes: list[str] = Field(default_factory=list)
    llm_usage: dict[str, int] | None = None
    abstained: bool = False
    """No moment of this stream reached the confidence threshold."""


class QueryAnswer(Strict):
    """The answer to one query over one or more streams."""

    moments: list[MomentOut]
    """Best first, over every stream, at most ``top_k``."""
    streams: dict[str, StreamAnswer]
    meaningless: bool
    """True when the encoder has random weights: scores carry no semantics."""
    abstained: bool = False
    """"No confident match": no listed moment reached the confidence threshold (each is
    ``below_threshold``, a best candidate); false when any stream has a confident moment."""
    missing: dict[str, str] = Field(default_factory=dict)
    """Streams asked about that did not answer, by reason (a remote shard past its deadline, a stream
    moving to another node); empty when the answer is complete. Clients that ignore it see a smaller
    answer, never an error."""


def _rank(m: Moment) -> tuple[bool, bool, float]:
    """Deferred moments last; then confident ones first, then by calibrated confidence (the score
    where there is none).

    A deferred moment (its region not reached by the refine budget) has an anchor-level confidence,
    on another scale than the refined moments the prescreen ranked above it: never compared with
    theirs (rule in :mod:`agent.core.fuse`).
    """
    return (m.deferred, m.below_threshold, -(m.confidence if m.confidence is not None else m.score))


def query_answer(
    results: Mapping[str, QueryResult], top_k: int, missing: Mapping[str, str] | None = None
) -> QueryAnswer:
    """The :class:`QueryAnswer` of per-stream results (moments merged, sorted, cut to ``top_k``).

    ``missing``: streams that did not answer, by reason (see :attr:`QueryAnswer.missing`).
    """
    best = sorted((m for r in results.values() for m in r.moments), key=_rank)[:top_k]
    return QueryAnswer(
        moments=[MomentOut.of(m) for m in best],
        streams={
            name: StreamAnswer(
                answered_by=r.answered_by,
                coverage=None if r.coverage is None else CoverageOut.of(r.coverage),
                in_memory=r.coverage is not None and r.coverage.retained_seconds > 0,
                notes=list(r.notes),
                llm_usage=r.llm_usage,
                abstained=r.abstained,
            )
            for name, r in results.items()
        },
        meaningless=any(r.meaningless for r in results.values()),
        abstained=bool(best) and all(m.below_threshold for m in best),
        missing=dict(missing or {}),
    )
