"""The hand-off to the LLM stage, built once: the service and the CLI both call it.

``llm_server`` is a library that knows nothing of vmr. This module is the one
boundary between them:

* values: :class:`~agent.types.Moment`, :class:`~agent.types.Coverage` and
  :class:`~agent.types.QueryResult` go out as llm_server's
  :class:`~llm_server.types.Candidate`, :class:`~llm_server.types.StreamCoverage`
  and :class:`~llm_server.types.StreamResult` and come back unchanged in shape;
  :class:`~agent.config.LLMConfig` (user-facing) becomes a
  :class:`~llm_server.types.StageConfig`;
* errors: every :class:`~llm_server.errors.LLMServerError` becomes the vmr
  error with the same meaning (``raise ... from exc``), so clients keep their
  error codes (``llm_unavailable``, ``llm_timeout``, ``llm_bad_answer``...);
* inputs: :class:`LLMHandoff` gathers what the stage needs of each searched
  stream (its frame store and last retained time) from the index, and the
  words said or shown within :data:`TEXT_PAD` seconds of its candidates
  (transcript and on-screen text spans) as caption tokens weighted by S_q:
  the MiniLM cosine to the query (:func:`~llm_server.captions.text_captions`),
  or, when no text channel searches by meaning (no MiniLM loaded), the
  share of the query's words the span holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType

from agent.channels.text_search import phrase_hits, query_terms
from agent.config import LLMConfig
from agent.errors import (
    ConfigError,
    IndexStoreError,
    LLMAnswerError,
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    OversizeQueryError,
    VmrError,
)
from agent.index.video_index import VideoIndex
from agent.types import Coverage, Moment, QueryResult
from llm_server.captions import ScoredCaption, text_captions
from llm_server.errors import (
    BadAnswerError,
    CaptionStoreError,
    LLMConfigError,
    LLMServerError,
    PromptBudgetError,
    ServerTimeoutError,
    ServerUnavailableError,
)
from llm_server.stage import LLMStage
from llm_server.types import Candidate, StageConfig, StreamCoverage, StreamResult, TextSpanIn

TEXT_PAD = 10.0
"""Seconds around a candidate within which words said or shown go into its prompt."""

ERROR_MAP: tuple[tuple[type[LLMServerError], type[VmrError]], ...] = (
    (ServerUnavailableError, LLMUnavailableError),
    (ServerTimeoutError, LLMTimeoutError),
    (BadAnswerError, LLMAnswerError),
    (LLMConfigError, ConfigError),
    (PromptBudgetError, OversizeQueryError),
    (CaptionStoreError, IndexStoreError),
)
"""llm_server error -> vmr error; anything else under LLMServerError is an LLMError."""


def agent_error(exc: LLMServerError) -> VmrError:
    """The vmr error for an llm_server error, with the same message (not raised here)."""
    for theirs, ours in ERROR_MAP:
        if isinstance(exc, theirs):
            return ours(str(exc))
    return LLMError(str(exc))


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise llm_server errors inside the block as vmr errors (``from`` the original)."""
    try:
        yield
    except LLMServerError as exc:
        raise agent_error(exc) from exc


# ----------------------------------------------------------------- values


def stage_config(cfg: LLMConfig) -> StageConfig:
    """The stage's own config from the user-facing one (same fields, same limits)."""
    return StageConfig(
        url=cfg.url,
        model=cfg.model,
        api_key=cfg.api_key,
        timeout=cfg.timeout,
        budget_tokens=cfg.budget_tokens,
        max_tokens=cfg.max_tokens,
        a1=cfg.a1,
        a2=cfg.a2,
        caption_mode=cfg.caption_mode,
        frames_per_region=cfg.frames_per_region,
    )


def to_candidate(m: Moment) -> Candidate:
    """A vmr moment as an llm_server candidate (evidence list copied)."""
    return Candidate(
        m.start, m.end, m.score, m.stream, m.wall_start, m.wall_end, list(m.evidence), m.answered_by
    )


def from_candidate(c: Candidate) -> Moment:
    """An llm_server candidate as a vmr moment (evidence list copied)."""
    return Moment(
        c.start, c.end, c.score, c.stream, c.wall_start, c.wall_end, list(c.evidence), c.answered_by
    )


def to_stream_coverage(c: Coverage | None) -> StreamCoverage | None:
    """vmr coverage as the stage carries it."""
    if c is None:
        return None
    return StreamCoverage(c.start, c.end, c.retained_seconds, c.seconds_per_token, c.frames_seconds)


def from_stream_coverage(c: StreamCoverage | None) -> Coverage | None:
    """The stage's coverage back as vmr's."""
    if c is None:
        return None
    return Coverage(c.start, c.end, c.retained_seconds, c.seconds_per_token, c.frames_seconds)


def to_stream_result(r: QueryResult) -> StreamResult:
    """One stream's vmr result as the stage's input (no list shared with ``r``)."""
    return StreamResult(
        [to_candidate(m) for m in r.moments],
        to_stream_coverage(r.coverage),
        r.answered_by,
        r.meaningless,
        list(r.notes),
        None if r.llm_usage is None else dict(r.llm_usage),
    )


def from_stream_result(r: StreamResult) -> QueryResult:
    """The stage's answer for one stream as a vmr result (no list shared with ``r``)."""
    return QueryResult(
        [from_candidate(c) for c in r.moments],
        from_stream_coverage(r.coverage),
        r.answered_by,
        r.meaningless,
        list(r.notes),
        None if r.llm_usage is None else dict(r.llm_usage),
    )


# ---------------------------------------------------------------- hand-off


class LLMHandoff:
    """The LLM stage over one index: ``async with LLMHandoff(cfg, index) as llm``.

    Owns one :class:`~llm_server.stage.LLMStage` (one HTTP client). The service
    keeps one for its lifetime; the CLI opens one per query
    (:func:`refine_once`). Raises ConfigError when ``cfg.url`` is not set.
    """

    def __init__(self, cfg: LLMConfig, index: VideoIndex) -> None:
        self.index = index
        with translated():
            self._stage = LLMStage(stage_config(cfg), index.refine)

    async def __aenter__(self) -> LLMHandoff:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the stage's HTTP client (idempotent)."""
        with translated():
            await self._stage.close()

    async def refine(
        self, text: str, results: Mapping[str, QueryResult], top_k: int
    ) -> dict[str, QueryResult]:
        """The LLM's answer per stream of ``results`` (keyed by stream name), at most ``top_k`` moments each.

        A stream whose answer fails keeps its CLIP result, with an
        ``llm fallback: ...`` note. Raises KeyError for a stream the index
        does not hold (the caller has checked the names).
        """
        streams = {name: self.index.streams[name] for name in results}
        stores = {name: st.store for name, st in streams.items()}
        # The last retained time bounds the moments the LLM may state.
        ends = {name: (st.memory.spans() or [(0.0, 0.0)])[-1][1] for name, st in streams.items()}
        inputs = {name: to_stream_result(r) for name, r in results.items()}
        texts = await asyncio.to_thread(self.text_tokens, text, results)  # MiniLM: off the loop
        with translated():
            answered = await self._stage.refine(text, inputs, stores, ends, top_k, texts)
        return {name: from_stream_result(r) for name, r in answered.items()}

    def text_tokens(self, query: str, results: Mapping[str, QueryResult]) -> dict[str, list[ScoredCaption]]:
        """Per stream, the transcript and on-screen text spans near its candidates, weighted (blocking)."""
        out: dict[str, list[ScoredCaption]] = {}
        for name, r in results.items():
            near = self.index.streams[name].text_near([(m.start, m.end) for m in r.moments], TEXT_PAD)
            if not r.moments or not near:
                continue
            spans = [TextSpanIn(s.start, s.end, s.text, channel) for channel, s in near]
            if self.index.sentences is not None:
                vecs = self.index.sentences.encode([query, *(s.text for s in spans)])
                out[name] = text_captions(spans, vecs[1:], vecs[0])
            else:
                terms = query_terms(query)
                out[name] = [
                    ScoredCaption(s.t, s.text, phrase_hits(terms, span)[0], False, s.channel)
                    for s, (_, span) in zip(spans, near, strict=True)
                ]
        return out


async def refine_once(
    cfg: LLMConfig, index: VideoIndex, text: str, results: Mapping[str, QueryResult], top_k: int
) -> dict[str, QueryResult]:
    """Open a hand-off, answer one query with it, close it (the CLI's ``--llm`` path)."""
    async with LLMHandoff(cfg, index) as handoff:
        return await handoff.refine(text, results, top_k)
