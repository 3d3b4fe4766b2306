"""Text search over timed spans: the lexical rule, and MiniLM for paraphrases (the real packaged model)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.channels.base import ChannelQuery
from agent.channels.text_search import (
    LEXICAL_KIND,
    SEMANTIC_KIND,
    SENTENCE_ROLE,
    FreshSpans,
    TextSearch,
    TimedText,
    phrase_hits,
    query_terms,
    search_spans,
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
