"""Sound-alike term matching: credits for what ASR and OCR misspell, none for other short words."""

from __future__ import annotations

import numpy as np

from agent.channels.text_fuzzy import FUZZY_FLOOR, FUZZY_MIN, credits
from agent.channels.text_search import TimedText, search_spans, tokens


def _spans(*said: str) -> list[TimedText]:
    return [
        TimedText(
            10.0 * i,
            10.0 * i + 3.0,
            t,
            tuple((10.0 * i + 0.1 * k, 10.0 * i + 3.0, w) for k, w in enumerate(t.split())),
        )
        for i, t in enumerate(said)
    ]


def test_credits_exact_split_and_unrelated_terms() -> None:
    docs = [tokens("please move the fort lift out of May 2"), tokens("lunch in the canteen")]
    credit, earned = credits(["forklift", "bay", "canteen"], docs)
    # "fort" + "lift" written together is "fortlift": 0.875 similar to "forklift".
    assert FUZZY_FLOOR < credit[0, 0] < 1.0 and earned[0][0] == {"fort", "lift"}
    assert credit[0, 1] == 0.0
    # Three letters: "may" is another word, not a misspelt "bay".
    assert credit[1].tolist() == [0.0, 0.0]
    assert credit[2].tolist() == [0.0, 1.0] and earned[2][1] == {"canteen"}


def test_credit_grows_with_similarity_from_the_floor() -> None:
    credit, _ = credits(["visitors"], [["visitor"], ["visit"], ["visas"]])
    assert credit[0, 0] > credit[0, 1] >= FUZZY_FLOOR  # one letter off beats three
    assert credit[0, 2] == 0.0  # "visas" ~ "visitors" (0.62) is below FUZZY_MIN
    assert FUZZY_MIN < 1.0 and np.all((credit >= 0.0) & (credit <= 1.0))


def test_tokens_write_ordinals_as_digits() -> None:
    assert tokens("the fourth gate, the 2nd bay and the 21st row") == ["4", "gate", "2", "bay", "21", "row"]
    assert tokens("which bay should the forklift leave") == ["bay", "forklift", "leave"]


def test_a_misheard_phrase_outranks_a_span_sharing_one_common_word() -> None:
    spans = _spans(
        "the truck went out at noon",
        "Please move the port lift out of May 2.",
        "lunch is served in the canteen",
    )
    found = search_spans(
        spans, "please move the forklift out of bay two", stream="s", channel="speech", top_k=3
    )
    assert found[0].start == 10.0 and found[0].score > found[1].score
    assert "port lift" in found[0].quote and found[0].score < 1.0  # misspelt: partly credited
    # The exact words still score 1.
    exact = search_spans(spans, "lunch canteen", stream="s", channel="speech", top_k=3)
    assert exact[0].start == 20.0 and exact[0].score == 1.0
