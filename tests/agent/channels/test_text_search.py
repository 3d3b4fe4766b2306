"""Text search over timed spans: the lexical rule, and MiniLM for paraphrases (the real packaged model)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.channels.base import ChannelQuery
from agent.channels.text_search import (
    LEXICAL_KIND,
    SEMANTIC_KIND,
    SEMANTIC_LEXICAL_WEIGHT,
    SENTENCE_ROLE,
    FreshSpans,
    TextSearch,
    TimedText,
    phrase_hits,
    query_terms,
    search_spans,
    searchable,
    semantic_spans,
    tokens,
)
from agent.core.fuse import fuse

SAID = [
    "the forklift is charging in bay two",
    "the truck is waiting at gate 4",
    "lunch is served in the canteen",
    "please keep the fire exits clear",
    "the north entrance closes at six",
    "visitors sign in at reception",
]
SPANS = [
    TimedText(10.0 * i, 10.0 * i + 3.0, t, tuple((10.0 * i, 10.0 * i + 3.0, w) for w in t.split()))
    for i, t in enumerate(SAID)
]


def test_tokens_drop_stop_words_and_spell_numbers_as_digits() -> None:
    assert tokens("When did the driver say Gate FOUR?") == ["driver", "say", "gate", "4"]


def test_lexical_score_is_the_share_of_the_query_matched() -> None:
    full = search_spans(SPANS, "gate four", stream="s", channel="speech", top_k=3)
    assert [(p.start, p.score, p.quote) for p in full] == [(10.0, 1.0, "gate 4")]
    half = search_spans(SPANS, "gate nine", stream="s", channel="speech", top_k=3)
    assert len(half) == 1 and 0.0 < half[0].score < 1.0
    assert search_spans(SPANS, "the of and", stream="s", channel="speech", top_k=3) == []


@pytest.mark.timeout(180)
def test_a_paraphrase_is_found_by_meaning_and_calibrated() -> None:
    pytest.importorskip("sentence_transformers")
    from agent.models.sentences import SentenceEncoder

    enc = SentenceEncoder()
    search = TextSearch(enc.encode)
    text = "the lorry has arrived at the fourth gate"
    q = ChannelQuery(vectors={SENTENCE_ROLE: enc.encode([text])[0]}, text=text, top_k=3)
    answer = search.answer(SPANS, q, stream="s", channel="speech")
    semantic = [p for p in answer.proposals if p.kind == SEMANTIC_KIND]
    assert semantic[0].start == 10.0 and semantic[0].quote == "the truck is waiting at gate 4"
    assert set(answer.calibrations) == {LEXICAL_KIND, SEMANTIC_KIND}
    cals = {("s", "speech", k): c for k, c in answer.calibrations.items()}
    fused = fuse(answer.proposals, cals, top_k=3)
    assert fused.moments[0].start == 10.0 and not fused.moments[0].below_threshold
    # Something never said: the best cosine stays below the threshold.
    other = "a dog is swimming in the lake"
    q2 = ChannelQuery(vectors={SENTENCE_ROLE: enc.encode([other])[0]}, text=other, top_k=3)
    a2 = search.answer(SPANS, q2, stream="s", channel="speech")
    f2 = fuse(a2.proposals, {("s", "speech", k): c for k, c in a2.calibrations.items()}, top_k=3)
    assert f2.abstained
    assert np.isclose(np.linalg.norm(enc.encode(["x"])[0]), 1.0, atol=1e-4)


def test_phrase_hits_share_the_query_terms_equally_and_quote_the_words() -> None:
    terms = query_terms("when was gate four mentioned at the truck")
    assert terms == ["gate", "4", "truck"]  # stop and asking words dropped, numbers as digits
    share, hits = phrase_hits(terms, SPANS[1])
    assert share == 1.0 and [w for _, w in hits] == ["truck", "gate", "4"]
    share, hits = phrase_hits(query_terms("gate seven"), SPANS[1])
    assert share == 0.5 and [w for _, w in hits] == ["gate"]
    assert phrase_hits([], SPANS[1]) == (0.0, [])


def test_fresh_spans_are_bounded_and_drop_the_oldest() -> None:
    fresh = FreshSpans(maxlen=2)
    for span in SPANS[:3]:
        fresh.add(span)
    assert fresh.take() == SPANS[1:3] and fresh.dropped == 1 and fresh.take() == []


def _words(*timed: tuple[float, float, str]) -> tuple[tuple[float, float, str], ...]:
    return tuple(timed)


def test_searchable_cuts_at_pauses_and_joins_lines_shown_together() -> None:
    # Whisper's one segment holding two sentences said 10 s apart.
    merged = TimedText(
        2.9,
        19.6,
        "The truck is waiting at gate or the North entrance will close",
        _words(
            (2.9, 3.4, " The"),
            (3.4, 3.8, " truck"),
            (3.8, 5.3, " waiting"),
            (17.3, 17.6, " North"),
            (17.6, 18.0, " entrance"),
            (18.0, 19.6, " close"),
        ),
    )
    lines = [
        TimedText(40.0, 44.0, "Breaking news: storm", ()),
        TimedText(40.0, 44.0, "warning for the coast", ()),
    ]
    pieces = searchable([merged, *lines])
    assert [(p.start, p.end, p.text) for p in pieces] == [
        (2.9, 5.3, "The truck waiting"),
        (17.3, 19.6, "North entrance close"),
        (40.0, 44.0, "Breaking news: storm warning for the coast"),
    ]
    answer = TextSearch().answer(
        [merged, *lines],
        ChannelQuery(vectors={}, text="when does the north entrance close", top_k=3),
        stream="s",
        channel="speech",
    )
    assert [(p.start, p.end, p.score) for p in answer.proposals] == [(17.3, 19.6, 1.0)]


def test_the_semantic_score_adds_the_lexical_share() -> None:
    spans = SPANS[:4]
    vecs = np.eye(4, 8)
    query = np.zeros(8)
    query[[0, 1]] = [0.6, 0.5]  # span 0 is a little closer in meaning...
    lexical = np.array([0.0, 0.8, 0.0, 0.0])  # ...span 1 holds most of the query's words
    alone, _ = semantic_spans(spans, vecs, query, stream="s", channel="speech", top_k=2)
    both, cal = semantic_spans(spans, vecs, query, stream="s", channel="speech", top_k=2, lexical=lexical)
    assert alone[0].start == SPANS[0].start and both[0].start == SPANS[1].start
    assert both[0].score == pytest.approx(0.5 + SEMANTIC_LEXICAL_WEIGHT * 0.8)
    assert (
        cal is not None and cal.trials == 4 and cal.confidence(both[0].score) > cal.confidence(both[1].score)
    )


@pytest.mark.timeout(180)
def test_minilm_refuses_a_lone_surrogate_with_a_typed_error() -> None:
    pytest.importorskip("sentence_transformers")
    from agent.errors import QueryError
    from agent.models.sentences import SentenceEncoder

    with pytest.raises(QueryError, match="tokenise") as caught:
        SentenceEncoder().encode(["\ud800x"])
    assert isinstance(caught.value.__cause__, TypeError)  # the tokenizer's own error, kept as the cause


def test_full_width_and_accented_words_fold_to_their_plain_terms() -> None:
    from agent.channels.text_search import tokens

    assert tokens("ｆｏｒｋｌｉｆｔ at the café, naïve") == ["forklift", "cafe", "naive"]
    assert tokens("GATE four") == tokens("ｇａｔｅ 4") == ["gate", "4"]
