"""Sound-alike term matching: credits for what ASR and OCR misspell, none for other short words."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent.channels import text_fuzzy
from agent.channels.text_fuzzy import FUZZY_FLOOR, FUZZY_MAX_TERMS, FUZZY_MIN, FUZZY_MIN_CHARS, credits
from agent.channels.text_search import (
    TimedText,
    lexical_match,
    query_terms,
    search_spans,
    tokens,
)


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


def _reference_credits(terms: list[str], docs: list[list[str]]) -> tuple[np.ndarray, list[list[set[str]]]]:
    """The per (term, span, piece) loop this module replaced: the scores it must keep."""
    from rapidfuzz import fuzz

    out = np.zeros((len(terms), len(docs)))
    which: list[list[set[str]]] = [[set() for _ in docs] for _ in terms]
    for i, term in enumerate(terms):
        for j, doc in enumerate(docs):
            pieces = [*((t, (t,)) for t in doc), *((a + b, (a, b)) for a, b in itertools.pairwise(doc))]
            if term in doc:
                out[i, j], which[i][j] = 1.0, {term}
            elif len(term) >= FUZZY_MIN_CHARS and pieces:
                sim = [float(np.float32(fuzz.ratio(term, p))) / 100.0 for p, _ in pieces]
                best, parts = max(zip(sim, (pp for _, pp in pieces), strict=True))
                if best >= FUZZY_MIN:
                    out[i, j] = FUZZY_FLOOR + (1.0 - FUZZY_FLOOR) * (best - FUZZY_MIN) / (1.0 - FUZZY_MIN)
                    which[i][j] = set(parts)
    return out, which


def test_credits_equal_the_per_span_loop_they_replaced() -> None:
    said = [
        "please move the fort lift out of may 2",
        "the port lift is charging at gate 4",
        "visit us at reception visitors sign in",
        "the north entrance will clone at six",
        "CLOSE LOSED closed platform plat form",
        "lunch is served in the canteen",
        "",
        "stopped stop stop",
    ]
    docs = [tokens(t) for t in said]
    terms = query_terms("when did the forklift stop at the closed north gate for visitors on platform 9")
    credit, earned = credits(terms, docs)
    want, want_which = _reference_credits(terms, docs)
    assert np.array_equal(credit, want) and (credit > 0).sum() > len(terms)  # fuzzy credit was given
    assert [[set(earned[i].get(j, ())) for j in range(len(docs))] for i in range(len(terms))] == want_which


def test_a_long_query_over_many_spans_scores_distinct_terms_only(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, int(rng.integers(3, 11)))) for _ in range(20_000)]
    spans = [" ".join(rng.choice(words, 12)) for _ in range(5_000)]
    query = " ".join(rng.choice(words, 330))[:2000]
    shapes: list[tuple[int, int]] = []
    real = text_fuzzy._similarities

    def counted(terms: list[str], vocab: list[str]) -> np.ndarray:
        shapes.append((len(terms), len(vocab)))
        return real(terms, vocab)

    monkeypatch.setattr(text_fuzzy, "_similarities", counted)
    docs = [tokens(t) for t in spans]
    terms = query_terms(query)
    assert len(terms) > 4 * FUZZY_MAX_TERMS
    credit, earned = credits(terms, docs)
    pieces = {p for d in docs for p in [*d, *(a + b for a, b in itertools.pairwise(d))]}
    # One similarity matrix: at most FUZZY_MAX_TERMS query terms by the distinct pieces, not by spans.
    assert shapes == [(FUZZY_MAX_TERMS, len(pieces))]
    # Earning terms are kept for credited (term, span) pairs only, not a set per pair.
    assert sum(len(e) for e in earned) == int((credit > 0).sum()) < credit.size // 100
    # The whole lexical rule runs the same way and still finds the spans holding query words.
    match = lexical_match(_spans(*spans), query)
    assert match is not None and len(shapes) == 2 and float(match.share.max()) > 0.0


def test_terms_past_the_cap_match_exactly_only() -> None:
    terms = [f"term{i:03d}x" for i in range(FUZZY_MAX_TERMS)] + ["forklift"]
    credit, _ = credits(terms, [["fort", "lift"], ["forklift"]])
    assert credit[-1].tolist() == [0.0, 1.0]
    assert credits(["forklift"], [["fort", "lift"]])[0][0, 0] > 0.0
