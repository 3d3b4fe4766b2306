"""The answer prompt: candidates with timestamps interleaved with S_q-weighted captions.

The prompt never exceeds a token budget. Tokens are counted with the server's
tokenizer when it has one; otherwise with :func:`estimate_tokens`, which is
conservative for Qwen/Llama-style BPE (every digit a token, other text at three
characters per token). Under pressure the lowest-S_q captions go first, then the
lowest-weight frames, then the lowest-scored candidates (one always stays).

Caption tokens are generated frame captions and, from the text channels, what
was said (transcript utterances) and what was shown (on-screen text), each
weighted by its S_q (:func:`llm_server.captions.text_captions`) and listed in
time order under its candidate; one budget and one drop order serve them all.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_server.captions import ScoredCaption
from llm_server.client import LLMClient
from llm_server.errors import PromptBudgetError
from llm_server.types import Candidate

SYSTEM = (
    "You find moments in a video that match a search query. You are given candidate moments "
    "found by a search, with their times in seconds, a match score, captions of frames, and "
    "words said or shown on screen at given times. Answer with JSON only."
)


class TokenCounter(Protocol):
    """Counts tokens of prompt text."""

    exact: bool

    async def count(self, text: str) -> int: ...


def estimate_tokens(text: str) -> int:
    """Conservative token estimate: digits one each, the rest three characters per token."""
    digits = sum(ch.isdigit() for ch in text)
    return digits + math.ceil((len(text) - digits) / 3) + text.count("\n")


class EstimateCounter:
    """:func:`estimate_tokens` behind the TokenCounter protocol."""

    exact = False

    async def count(self, text: str) -> int:
        return estimate_tokens(text)


class ServerCounter:
    """The server's tokenizer; falls back to the estimate when it has none."""

    def __init__(self, client: LLMClient) -> None:
        self.client = client
        self.exact = True

    async def count(self, text: str) -> int:
        n = await self.client.count_tokens(text)
        if n is None:
            self.exact = False
            return estimate_tokens(text)
        return n


@dataclass(frozen=True, slots=True)
class FrameImage:
    """A frame to show a vision model: time, JPEG bytes, importance."""

    t: float
    jpeg: bytes
    weight: float = 0.0


@dataclass(slots=True)
class BuiltPrompt:
    """Messages ready to send and what the budget did to them."""

    messages: list[dict[str, Any]]
    prompt_tokens: int
    """Counted tokens, chat-template overhead and image allowance included."""
    candidates: list[Candidate]
    captions: list[ScoredCaption]
    images: list[FrameImage]
    dropped: dict[str, int] = field(default_factory=dict)
    exact: bool = False


def _fmt(t: float) -> str:
    return f"{t:.1f}"


_SAYS = {"speech": "said", "ocr": "shown on screen"}


def caption_line(cap: ScoredCaption) -> str:
    """One caption token as a prompt line: a frame caption, or words said or shown (quoted)."""
    head = f"  at {_fmt(cap.t)} s (importance {cap.weight:.2f})"
    says = _SAYS.get(cap.source)
    return f"{head}: {cap.text}" if says is None else f"{head} {says}: {cap.text!r}"


def render_lines(
    query: str,
    candidates: Sequence[Candidate],
    captions: Sequence[ScoredCaption],
    *,
    duration: float,
    top_k: int,
) -> list[tuple[str, float | None]]:
    """The user message as lines; caption lines carry their S_q, the others None.

    Candidates come best first, each followed by its captions in time order, so
    timestamps and captions interleave as in SMORE.
    """
    lines: list[tuple[str, float | None]] = [
        (f"Video length: {_fmt(duration)} s.", None),
        (f"Query: {query!r}", None),
        ("Candidates:", None),
    ]
    owner = _assign(candidates, captions)
    for i, cand in enumerate(candidates):
        lines.append((f"C{i + 1} {_fmt(cand.start)}-{_fmt(cand.end)} s, score {cand.score:.3f}", None))
        for cap in sorted(owner.get(i, []), key=lambda c: c.t):
            lines.append((caption_line(cap), cap.weight))
    instruction = (
        f"Return at most {top_k} moments, best first, as "
        '{"moments": [{"start": s, "end": s, "confidence": 0..1, "evidence": [times]}]}. '
        f"Times are seconds in [0, {_fmt(duration)}] with start < end. Prefer the candidates; "
        "change their boundaries only where captions justify it."
    )
    lines.append((instruction, None))
    return lines


def render_text(
    query: str,
    candidates: Sequence[Candidate],
    captions: Sequence[ScoredCaption],
    *,
    duration: float,
    top_k: int,
) -> str:
    """The user message as one string (see :func:`render_lines`)."""
    lines = render_lines(query, candidates, captions, duration=duration, top_k=top_k)
    return "\n".join(text for text, _ in lines)


def _assign(
    candidates: Sequence[Candidate], captions: Sequence[ScoredCaption]
) -> dict[int, list[ScoredCaption]]:
    """Each caption under the candidate that contains its time, else the nearest one."""
    owner: dict[int, list[ScoredCaption]] = {}
    if not candidates:
        return owner
    for cap in captions:
        gaps = [
            0.0 if c.start <= cap.t <= c.end else min(abs(cap.t - c.start), abs(cap.t - c.end))
            for c in candidates
        ]
        owner.setdefault(gaps.index(min(gaps)), []).append(cap)
    return owner


def _messages(text: str, images: Sequence[FrameImage]) -> list[dict[str, Any]]:
    if not images:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    parts: list[dict[str, Any]] = []
    for img in sorted(images, key=lambda f: f.t):
        parts.append({"type": "text", "text": f"Frame at {_fmt(img.t)} s:"})
        url = "data:image/jpeg;base64," + base64.b64encode(img.jpeg).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    parts.append({"type": "text", "text": text})
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": parts}]


async def build_prompt(
    query: str,
    candidates: Sequence[Candidate],
    *,
    duration: float,
    budget_tokens: int,
    counter: TokenCounter,
    captions: Sequence[ScoredCaption] = (),
    images: Sequence[FrameImage] = (),
    overhead_tokens: int = 16,
    image_tokens: int = 256,
    top_k: int = 5,
) -> BuiltPrompt:
    """Render the prompt and trim it to ``budget_tokens``.

    Raises PromptBudgetError when even one candidate without captions does not fit.
    """
    if not candidates:
        raise ValueError("build_prompt needs at least one candidate")
    cands = sorted(candidates, key=lambda m: -m.score)
    caps = sorted(captions, key=lambda c: -c.weight)
    imgs = sorted(images, key=lambda f: -f.weight)
    dropped = {"captions": 0, "images": 0, "candidates": 0}
    fixed = overhead_tokens + await counter.count(SYSTEM)

    async def total() -> int:
        text = render_text(query, cands, caps, duration=duration, top_k=top_k)
        return fixed + await counter.count(text) + image_tokens * len(imgs)

    # Cheap first pass: per-caption costs, so one exact recount usually suffices.
    used = await total()
    if used > budget_tokens and caps:
        costs = await asyncio.gather(
            *(
                counter.count(caption_line(ScoredCaption(100.0, c.text, 0.0, c.relevant, c.source)) + "\n")
                for c in caps
            )
        )
        excess = used - budget_tokens
        while caps and excess > 0:
            caps.pop()
            excess -= costs[len(caps)]
            dropped["captions"] += 1
        used = await total()
    while used > budget_tokens:
        if caps:
            caps.pop()
            dropped["captions"] += 1
        elif imgs:
            imgs.pop()
            dropped["images"] += 1
        elif len(cands) > 1:
            cands.pop()
            dropped["candidates"] += 1
        else:
            raise PromptBudgetError(
                f"the prompt needs {used} tokens with one candidate; the budget is {budget_tokens}"
            )
        used = await total()
    text = render_text(query, cands, caps, duration=duration, top_k=top_k)
    return BuiltPrompt(_messages(text, imgs), used, cands, caps, imgs, dropped, counter.exact)
