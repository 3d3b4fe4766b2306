"""Words said or shown as caption tokens: weighted by S_q, in time order, lowest weight dropped first."""

from __future__ import annotations

import numpy as np
import pytest

from llm_server.captions import ScoredCaption, text_captions
from llm_server.prompt import EstimateCounter, build_prompt, render_text
from llm_server.types import Candidate, TextSpanIn

CANDS = [Candidate(0.0, 20.0, 0.3, "s"), Candidate(40.0, 60.0, 0.2, "s")]
SPANS = [
    TextSpanIn(12.0, 14.0, "the truck is waiting at gate 4", "speech"),
    TextSpanIn(3.0, 3.5, "GATE 4", "ocr"),
    TextSpanIn(45.0, 47.0, "lunch is served in the canteen", "speech"),
    TextSpanIn(50.0, 50.5, "EXIT ONLY", "ocr"),
]


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


def test_spans_are_weighted_by_cosine_to_the_query_and_kept_in_time_order() -> None:
    query = _unit(1, 0, 0)
    vecs = np.stack([_unit(1, 0.2, 0), _unit(1, 1, 0), _unit(0, 1, 0), _unit(0.1, 0, 1)])
    caps = text_captions(SPANS, vecs, query)
    assert [c.t for c in caps] == [3.0, 12.0, 45.0, 50.0]  # time order, whatever the weight
    assert [c.source for c in caps] == ["ocr", "speech", "speech", "ocr"]
    assert caps[1].weight == pytest.approx(float(vecs[0] @ query)) and caps[2].weight == pytest.approx(0.0)
    # Bounded: the highest S_q are kept, still in time order.
    assert [c.t for c in text_captions(SPANS, vecs, query, keep=2)] == [3.0, 12.0]
    with pytest.raises(ValueError):
        text_captions(SPANS, vecs[:2], query)


def test_the_prompt_says_what_was_said_and_shown_under_its_candidate() -> None:
    caps = [ScoredCaption(s.t, s.text, 0.5, False, s.channel) for s in SPANS]
    caps.append(ScoredCaption(8.0, "a lorry at a gate", 0.4, True))  # a generated frame caption
    text = render_text("when was gate four mentioned", CANDS, caps, duration=60, top_k=3)
    assert "at 12.0 s (importance 0.50) said: 'the truck is waiting at gate 4'" in text
    assert "at 3.0 s (importance 0.50) shown on screen: 'GATE 4'" in text
    assert "at 8.0 s (importance 0.40): a lorry at a gate" in text
    first = text[text.index("C1 ") : text.index("C2 ")]
    # Under C1, in time order: shown at 3 s, captioned at 8 s, said at 12 s.
    assert first.index("GATE 4") < first.index("a lorry") < first.index("truck")
    assert "canteen" in text[text.index("C2 ") :]


async def test_budget_drops_the_lowest_weight_words_first() -> None:
    caps = [
        ScoredCaption(s.t, s.text + " again" * 6, w, False, s.channel)
        for s, w in zip(SPANS, (0.9, 0.1, 0.5, 0.3), strict=True)
    ]
    full = await build_prompt(
        "gate four", CANDS, duration=60, budget_tokens=10_000, counter=EstimateCounter(), captions=caps
    )
    assert full.dropped["captions"] == 0
    budget = full.prompt_tokens - 20
    built = await build_prompt(
        "gate four", CANDS, duration=60, budget_tokens=budget, counter=EstimateCounter(), captions=caps
    )
    assert built.prompt_tokens <= budget and built.dropped == {"captions": 1, "images": 0, "candidates": 0}
    assert sorted(c.weight for c in built.captions) == [0.3, 0.5, 0.9]  # the 0.1 one (shown, GATE 4) went
