"""The LLM's final answer over CLIP proposals, with a fallback that never loses them.

:func:`answer` asks the LLM to choose and refine moments among the candidate
proposals (with captions and frames when there are any), constrained to the
:class:`~llm_server.protocol.Answer` schema and validated against the video's
duration. When the LLM is unavailable, times out, or answers invalidly, the
proposals come back unchanged with the path that produced them and a note saying
why; nothing the retrieval found is ever dropped by the LLM stage failing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_server.captions import ScoredCaption
from llm_server.client import LLMClient
from llm_server.errors import LLMServerError
from llm_server.prompt import EstimateCounter, FrameImage, ServerCounter, TokenCounter, build_prompt
from llm_server.protocol import MAX_MOMENTS, Answer, AnswerMoment, parse, response_format
from llm_server.types import AnsweredBy, Candidate, StreamCoverage, StreamResult, Usage


@dataclass(frozen=True, slots=True)
class AnswerStats:
    """What one LLM answer cost."""

    usage: Usage
    seconds: float
    prompt_tokens_budgeted: int
    dropped: dict[str, int]


def fallback(
    candidates: Sequence[Candidate],
    reason: str,
    *,
    coverage: StreamCoverage | None = None,
    meaningless: bool = False,
) -> StreamResult:
    """The CLIP proposals unchanged, answered by whichever path made them."""
    moments = list(candidates)
    by: AnsweredBy = moments[0].answered_by if moments else "refine"
    return StreamResult(moments, coverage, by, meaningless, [f"llm fallback: {reason}"])


def to_moments(answer: Answer, candidates: Sequence[Candidate], *, duration: float) -> list[Candidate]:
    """LLM moments as :class:`Candidate`, stream and wall-clock times taken from the candidates."""
    stream = candidates[0].stream if candidates else ""
    return [_to_moment(m, candidates, stream, duration) for m in answer.moments]


def _to_moment(m: AnswerMoment, candidates: Sequence[Candidate], stream: str, duration: float) -> Candidate:
    evidence = [t for t in m.evidence if 0.0 <= t <= duration]
    wall_start, wall_end = _wall(m.start, candidates), _wall(m.end, candidates)
    return Candidate(m.start, m.end, m.confidence, stream, wall_start, wall_end, evidence, "llm")


def _wall(t: float, candidates: Sequence[Candidate]) -> float | None:
    # Live streams run at wall-clock rate, so an offset inside (or next to) a
    # candidate with wall times maps linearly.
    timed = [c for c in candidates if c.wall_start is not None]
    if not timed:
        return None
    near = min(timed, key=lambda c: 0.0 if c.start <= t <= c.end else min(abs(t - c.start), abs(t - c.end)))
    assert near.wall_start is not None
    return near.wall_start + (t - near.start)


def answer_format(top_k: int, json_schema: bool) -> dict[str, Any]:
    """``response_format`` for an answer of at most ``top_k`` moments.

    The item cap matters with grammar-constrained decoding: without it a small
    model keeps listing moments until ``max_tokens`` cuts the JSON short.
    """
    fmt = response_format(Answer, json_schema)
    schema = fmt["json_schema"]["schema"] if json_schema else fmt["schema"]
    schema["properties"]["moments"]["maxItems"] = min(top_k, MAX_MOMENTS)
    return fmt


async def answer_detailed(
    query: str,
    candidates: Sequence[Candidate],
    *,
    duration: float,
    client: LLMClient | None,
    captions: Sequence[ScoredCaption] = (),
    images: Sequence[FrameImage] = (),
    budget_tokens: int = 1024,
    max_tokens: int = 192,
    top_k: int = 5,
    image_tokens: int = 256,
    coverage: StreamCoverage | None = None,
    meaningless: bool = False,
) -> tuple[StreamResult, AnswerStats | None]:
    """:func:`answer` plus what the LLM call cost (None when it fell back before calling)."""
    if not candidates:
        return fallback(
            candidates, "no candidates to answer from", coverage=coverage, meaningless=meaningless
        ), None
    if client is None:
        return fallback(candidates, "no LLM configured", coverage=coverage, meaningless=meaningless), None
    started = time.perf_counter()
    try:
        caps = await client.capabilities()
        counter: TokenCounter = ServerCounter(client) if caps.tokenize_path else EstimateCounter()
        shown = list(images) if caps.vision else []
        built = await build_prompt(
            query,
            candidates,
            duration=duration,
            budget_tokens=budget_tokens,
            counter=counter,
            captions=captions,
            images=shown,
            overhead_tokens=caps.chat_overhead_tokens,
            image_tokens=image_tokens,
            top_k=top_k,
        )
        out = await client.chat(
            built.messages, max_tokens=max_tokens, response_format=answer_format(top_k, caps.json_schema)
        )
        parsed = parse(Answer, out.text, duration=duration)
    except LLMServerError as exc:
        return fallback(
            candidates, f"{type(exc).__name__}: {exc}", coverage=coverage, meaningless=meaningless
        ), None
    usage = out.usage
    if not out.usage_reported:
        # llama-cpp-python streams no usage: report our own (tokenizer-exact) count.
        usage = Usage(built.prompt_tokens, out.usage.completion_tokens)
    stats = AnswerStats(usage, time.perf_counter() - started, built.prompt_tokens, built.dropped)
    if not parsed.moments:
        return fallback(
            candidates, "the LLM returned no moment", coverage=coverage, meaningless=meaningless
        ), stats
    moments = to_moments(parsed, candidates, duration=duration)[:top_k]
    notes = [
        f"llm tokens: prompt={usage.prompt_tokens} completion={usage.completion_tokens}",
        f"llm prompt trimmed: {built.dropped}" if any(built.dropped.values()) else "llm prompt untrimmed",
    ]
    used = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
    return StreamResult(moments, coverage, "llm", meaningless, notes, llm_usage=used), stats


async def answer(query: str, candidates: Sequence[Candidate], **options: Any) -> StreamResult:
    """The final answer: the LLM's moments (``answered_by="llm"``) or the proposals unchanged.

    ``candidates`` are the CLIP proposals, best first; ``options`` are those of
    :func:`answer_detailed` (``duration`` and ``client`` are required). Token
    use is in ``StreamResult.llm_usage`` and the notes.
    """
    result, _ = await answer_detailed(query, candidates, **options)
    return result
