"""Lexical search over timed text (transcripts, on-screen text): BM25 ranks, matched IDF mass scores.

Shared by the text-bearing channels. Each channel keeps :class:`TimedText`
spans; :func:`search_spans` turns a query's words into proposals:

- **Tokens.** Lower-cased words (letters, digits, apostrophes); number words
  up to twenty become digits, so "gate four" matches whisper's "gate 4";
  English stop words are dropped (they carry no evidence of *which* moment);
  in the query, so are the words that name the channel rather than the
  content ("say", "mentioned", "shown", "screen"...: "when was gate four
  mentioned" asks for "gate 4").
- **Rank.** BM25 (``bm25s``, k1 = 1.5, b = 0.75) over the spans picks the
  candidates, best first.
- **Score.** A candidate's score is the share of the query's IDF mass its
  span contains: ``sum(idf(t) for query terms t in the span) / sum(idf(t) for
  all query terms)``, in [0, 1]. Unlike a raw BM25 score it does not depend on
  how many spans the stream holds, so one fixed calibration
  (:data:`LEXICAL_CALIBRATION`) serves every stream: all words matched is
  confident (0.9996), three quarters is at the 0.95 threshold, half is a coin
  toss.
- **Quote.** Each proposal quotes the span's words that matched (``evidence``
  holds their times).

Numeric and pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.core.fuse import Calibration, ChannelProposal
from agent.errors import ConfigError

LEXICAL_KIND = "lexical"
LEXICAL_CALIBRATION = Calibration(center=0.5, scale=0.15, trials=1, samples=0)
"""The fixed calibration of matched IDF mass (see the module docstring)."""

_WORD = re.compile(r"[a-z0-9']+")
_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_STOP = frozenset(
    "a an the and or but of to in on at by for with from is are was were be been it its this that "
    "these those i you he she we they me him her us them my your our their do does did when where "
    "what which who whom how why there here as so not no".split()
)


_ASKING = frozenset(
    "say says said saying mention mentions mentioned talk talks talked speak speaks spoke spoken "
    "hear heard announce announced tell told show shows showed shown display displayed screen "
    "written write wrote read sign".split()
)


def tokens(text: str) -> list[str]:
    """Search terms of ``text`` (rule in the module docstring), in order."""
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.strip("'")
        w = _NUMBERS.get(w, w)
        if w and w not in _STOP:
            out.append(w)
    return out


@dataclass(frozen=True, slots=True)
class TimedText:
    """A span of text with its words' times (stream seconds).

    ``words`` are (start, end, word) in order; ``start``/``end`` bound the span.
    """

    start: float
    end: float
    text: str
    words: tuple[tuple[float, float, str], ...]


def search_spans(
    spans: Sequence[TimedText], query: str, *, stream: str, channel: str, top_k: int
) -> list[ChannelProposal]:
    """Up to ``top_k`` proposals (kind :data:`LEXICAL_KIND`) of the spans sharing a word with ``query``.

    Empty when the query has no search term or nothing matches. Proposal
    ``score`` is the matched IDF share in [0, 1]; ``quote`` the matched words.
    """
    q = [t for t in dict.fromkeys(tokens(query)) if t not in _ASKING]
    if not q or not spans:
        return []
    try:
        import bm25s  # the speech extra; imported here so a visual-only install never needs it
    except ImportError as exc:
        raise ConfigError("text search needs bm25s: pip install -e '.[speech]'") from exc
    docs = [tokens(s.text) for s in spans]
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index([d or [""] for d in docs], show_progress=False)
    bm25 = np.asarray(retriever.get_scores(q), dtype=np.float64)
    n = len(docs)
    df = {t: sum(1 for d in docs if t in d) for t in q}
    # Lucene's IDF, never negative; a term no span holds still weighs in the denominator.
    idf = {t: math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in q}
    total = sum(idf.values())
    out: list[ChannelProposal] = []
    for i in np.argsort(-bm25, kind="stable")[: max(1, top_k)]:
        if bm25[i] <= 0.0:
            break
        span, doc = spans[int(i)], set(docs[int(i)])
        share = sum(idf[t] for t in q if t in doc) / total
        hits = [(s, w) for s, _e, w in span.words if set(tokens(w)) & set(q)]
        out.append(
            ChannelProposal(
                stream=stream,
                channel=channel,
                kind=LEXICAL_KIND,
                start=span.start,
                end=span.end,
                score=float(share),
                peak=hits[0][0] if hits else span.start,
                evidence=tuple(s for s, _ in hits),
                quote=" ".join(w.strip() for _, w in hits),
            )
        )
    return out
