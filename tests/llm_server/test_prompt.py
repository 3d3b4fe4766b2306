"""Prompt building under a token budget."""

from __future__ import annotations

import pytest

from llm_server.captions import ScoredCaption
from llm_server.errors import PromptBudgetError
from llm_server.prompt import EstimateCounter, FrameImage, build_prompt, estimate_tokens, render_text
from llm_server.types import Candidate

CANDS = [Candidate(10.0 * i, 10.0 * i + 5, 0.2 + 0.01 * i, "s") for i in range(5)]
CAPS = [
    ScoredCaption(10.0 * i + 1, f"caption number {i} " + "word " * 10, 0.1 * i, i % 2 == 0) for i in range(10)
]


def _text(messages: list[dict[str, object]]) -> str:
    return "\n".join(str(m["content"]) for m in messages)


def test_estimate_is_conservative_for_digits() -> None:
    assert estimate_tokens("12.5") >= 4
    assert estimate_tokens("hello world") >= len("hello world") // 4


async def test_everything_fits_a_large_budget() -> None:
    built = await build_prompt(
        "a red car", CANDS, duration=60, budget_tokens=10_000, counter=EstimateCounter(), captions=CAPS
    )
    text = _text(built.messages)
    assert all(f"C{i + 1} " in text for i in range(5))
    assert all(c.text in text for c in CAPS)
    assert built.dropped == {"captions": 0, "images": 0, "candidates": 0}
    assert text.index("C1 40.0-45.0") < text.index("C5 0.0-5.0")  # best candidate first


async def test_budget_drops_lowest_weight_captions_first() -> None:
    full = await build_prompt(
        "a red car", CANDS, duration=60, budget_tokens=10_000, counter=EstimateCounter(), captions=CAPS
    )
    budget = full.prompt_tokens - 30
    built = await build_prompt(
        "a red car", CANDS, duration=60, budget_tokens=budget, counter=EstimateCounter(), captions=CAPS
    )
    assert built.prompt_tokens <= budget
    assert built.dropped["captions"] >= 1 and built.dropped["candidates"] == 0
    kept = {c.weight for c in built.captions}
    lost = {c.weight for c in CAPS} - kept
    assert max(lost) <= min(kept)


async def test_tight_budget_keeps_one_candidate() -> None:
    one = render_text("a red car", CANDS[-1:], [], duration=60, top_k=5)
    budget = estimate_tokens(one) + estimate_tokens("x" * 400) + 16
    built = await build_prompt(
        "a red car", CANDS, duration=60, budget_tokens=budget, counter=EstimateCounter(), captions=CAPS
    )
    assert built.prompt_tokens <= budget
    assert len(built.candidates) >= 1 and not built.captions
    assert built.candidates[0].score == max(c.score for c in CANDS)


async def test_impossible_budget_raises() -> None:
    with pytest.raises(PromptBudgetError):
        await build_prompt("a red car", CANDS, duration=60, budget_tokens=20, counter=EstimateCounter())


async def test_images_become_data_uris_and_count() -> None:
    imgs = [FrameImage(11.0, b"\xff\xd8jpeg", 0.9), FrameImage(21.0, b"\xff\xd8jpeg2", 0.1)]
    built = await build_prompt(
        "a red car",
        CANDS,
        duration=60,
        budget_tokens=10_000,
        counter=EstimateCounter(),
        images=imgs,
        image_tokens=300,
    )
    parts = built.messages[1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    assert built.prompt_tokens >= 600
    small = await build_prompt(
        "a red car",
        CANDS,
        duration=60,
        budget_tokens=built.prompt_tokens - 100,
        counter=EstimateCounter(),
        images=imgs,
        image_tokens=300,
    )
    assert [i.t for i in small.images] == [11.0]  # the low-weight frame went
