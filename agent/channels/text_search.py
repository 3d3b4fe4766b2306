"""Search over timed text (transcripts, on-screen text): matched IDF share, sound-alike terms, MiniLM.

Shared by the text-bearing channels. Each channel keeps :class:`TimedText`
spans; :class:`TextSearch` first makes them :func:`searchable` (cut at pauses
between words, joined where several lines share their time), then:

- **Tokens.** Lower-cased words (letters, digits, apostrophes); number words
  up to twenty and ordinals ("fourth", "4th") become digits, so "gate four"
  and "the fourth gate" match whisper's "gate 4"; English stop words and
  modal verbs are dropped (they carry no evidence of *which* moment); in the
  query, so are the words that name the channel rather than the content
  ("say", "mentioned", "shown", "screen"...: "when was gate four mentioned"
  asks for "gate 4").
- **Match.** Each query term earns a span a credit in [0, 1]: 1 when the span holds it, part
  for a sound-alike (:mod:`agent.channels.text_fuzzy`: whisper's "fort lift" for "forklift").
- **Score.** A span's score is the share of the query's IDF mass it matched:
  ``sum(idf(t) * credit(t)) / sum(idf(t))`` over the query terms, in [0, 1].
  Unlike a raw BM25 score it does not depend on how many spans the stream holds, so one fixed
  calibration (:data:`LEXICAL_CALIBRATION`) serves every stream: all words matched is
  confident (0.9996), three quarters is at the 0.95 threshold, half is a coin toss.
- **Rank.** By score; BM25 (``bm25s``, k1 = 1.5, b = 0.75) orders equal scores. **Quote.** Each
  proposal quotes the span's matched words (``evidence``: their times).

**Semantic** (optional, :func:`semantic_spans`): MiniLM cosines between the query and each
span (a paraphrase, a question) plus :data:`SEMANTIC_LEXICAL_WEIGHT` times its lexical score, so words that
matched in part (a misheard sentence that still says "platform 9") count
with the meaning instead of losing to a wrong span's slightly higher cosine.
Calibrated per query against the stream's own spans other than the proposed
ones (a match must not be its own background): ``center`` = their median
score (:data:`SEMANTIC_PRIOR_CENTER` when a stream holds one span), ``scale``
= their MAD as a sigma, floored at :data:`SEMANTIC_MIN_SCALE` (MiniLM's
spread for unrelated sentences, so a handful of spans cannot make every score
look extreme), ``trials`` = the number of spans (the best of many is no match).
Numeric and pure: no I/O (vectors come in computed).
"""

from __future__ import annotations

import itertools
import re
import threading
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.channels.base import ChannelAnswer, ChannelQuery
from agent.channels.text_fuzzy import Earned, credits
from agent.core.fuse import MAD_TO_SIGMA, Calibration, ChannelProposal
from agent.errors import ConfigError

LEXICAL_KIND = "lexical"
LEXICAL_CALIBRATION = Calibration(center=0.5, scale=0.15, trials=1, samples=0)
"""The fixed calibration of matched IDF mass (see the module docstring)."""

SEMANTIC_KIND = "semantic"
SEMANTIC_MIN_SCALE = 0.15
"""Floor of the semantic score's spread (see the module docstring)."""
SEMANTIC_LEXICAL_WEIGHT = 0.5
"""Weight of the matched IDF share added to the cosine (tuned on the benchmark's dev split)."""
SEMANTIC_PRIOR_CENTER = 0.1
"""MiniLM cosine of unrelated English sentences, typically 0..0.2 (the background of a lone span)."""

_WORD = re.compile(r"[a-z0-9']+")
_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ORDINALS = {
    w: str(i + 1)
    for i, w in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
        "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split()
    )
}
_ORDINAL_DIGITS = re.compile(r"^(\d+)(?:st|nd|rd|th)$")
_STOP = frozenset(
    "a an the and or but of to in on at by for with from is are was were be been it its this that "
    "these those i you he she we they me him her us them my your our their do does did when where "
    "what which who whom how why there here as so not no am have has had "
    # modal verbs: a question's "should", "can" say nothing about which moment
    "should must can could will would shall may might".split()
)
_ASKING = frozenset(
    "say says said saying mention mentions mentioned talk talks talked speak speaks spoke spoken "
    "hear heard announce announced tell told show shows showed shown display displayed screen "
    "written write wrote read sign".split()
)


def _fold(text: str) -> str:  # NFKD, combining marks dropped
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Search terms of ``text`` (module docstring), in order; NFKD-folded: "ｇａｔｅ", "naïve" -> "gate", "naive"."""
    out, folded = [], text if text.isascii() else _fold(text)  # every span, every query: ASCII skips it
    for w in _WORD.findall(folded.lower()):
        w = w.strip("'")
        w = _NUMBERS.get(w) or _ORDINALS.get(w) or _ORDINAL_DIGITS.sub(r"\1", w)
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


def query_terms(query: str) -> list[str]:
    """The search terms of a query: :func:`tokens` without repeats and without the words that
    name the channel rather than the content ("said", "shown"...)."""
    return [t for t in dict.fromkeys(tokens(query)) if t not in _ASKING]


def phrase_hits(terms: Sequence[str], span: TimedText) -> tuple[float, list[tuple[float, str]]]:
    """(share of ``terms`` that ``span`` holds, in [0, 1]; the span's matched (time, word) pairs).

    Every term weighs the same: a span arriving alone (a watch's forward
    match) has no corpus to take an IDF from. 0.0 when ``terms`` is empty.
    """
    if not terms:
        return 0.0, []
    held = set(tokens(span.text))
    wanted = set(terms)
    hits = [(s, w.strip()) for s, _e, w in span.words if set(tokens(w)) & wanted]
    return sum(1 for t in terms if t in held) / len(terms), hits


FRESH_MAX = 256
"""New spans a text channel holds for the watches before the oldest is dropped."""


class FreshSpans:
    """Spans a channel kept since the last :meth:`take`, for the watches (bounded, oldest dropped).

    Filled by the channel's ``commit`` (a worker thread) and emptied by the
    service on the event loop: ``deque`` appends and pops are atomic, so no
    lock is taken (a reader never waits behind a stream's lock). The service
    drains it after every committed result, so it holds one window's spans;
    without a service (``vmr ingest``) it simply keeps the latest ``maxlen``.
    """

    def __init__(self, maxlen: int = FRESH_MAX) -> None:
        self._spans: deque[TimedText] = deque(maxlen=maxlen)
        self.dropped = 0
        """Spans pushed out unread (nobody drained)."""

    def add(self, span: TimedText) -> None:
        if len(self._spans) == self._spans.maxlen:
            self.dropped += 1
        self._spans.append(span)

    def take(self) -> list[TimedText]:
        """Every span added since the last call, oldest first."""
        out: list[TimedText] = []
        while True:
            try:
                out.append(self._spans.popleft())
            except IndexError:
                return out


@dataclass(frozen=True, slots=True)
class LexicalMatch:
    """How much of a query each span holds: ``share`` (n,) matched IDF share in [0, 1], ``bm25`` (n,),
    and per query term the span's terms that matched it (``earned[t][span]``; spans with no credit absent)."""

    terms: list[str]
    share: np.ndarray
    bm25: np.ndarray
    earned: Earned


def lexical_match(spans: Sequence[TimedText], query: str) -> LexicalMatch | None:
    """The lexical rule of the module docstring over ``spans``; None when the query has no term or no spans."""
    q = query_terms(query)
    if not q or not spans:
        return None
    try:
        import bm25s  # the speech extra; imported here so a visual-only install never needs it
    except ImportError as exc:
        raise ConfigError("text search needs bm25s: pip install -e '.[speech]'") from exc
    docs = [tokens(s.text) for s in spans]
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index([d or [""] for d in docs], show_progress=False)
    bm25 = np.asarray(retriever.get_scores(q), dtype=np.float64)
    credit, earned = credits(q, docs)  # (terms, spans)
    n = len(docs)
    df = (credit > 0).sum(axis=1)
    # Lucene's IDF, never negative; a term no span holds still weighs in the denominator.
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    return LexicalMatch(q, idf @ credit / idf.sum(), bm25, earned)


def search_spans(
    spans: Sequence[TimedText],
    query: str,
    *,
    stream: str,
    channel: str,
    top_k: int,
    match: LexicalMatch | None = None,
) -> list[ChannelProposal]:
    """Up to ``top_k`` proposals (kind :data:`LEXICAL_KIND`) of the spans holding some of ``query``'s terms.

    Empty when the query has no search term or nothing matches. Proposal
    ``score`` is the matched IDF share in [0, 1] (sound-alike matches in part);
    ``quote`` the matched words. ``match``: :func:`lexical_match` of the same
    spans and query, when the caller already has it.
    """
    m = match if match is not None else lexical_match(spans, query)
    if m is None:
        return []
    out: list[ChannelProposal] = []
    # Share first (the calibrated score), BM25 among equal shares (repeats, shorter spans).
    for i in np.lexsort((-m.bm25, -m.share))[: max(1, top_k)]:
        if m.share[i] <= 0.0:
            break
        span = spans[int(i)]
        matched = set().union(*(m.earned[t].get(int(i), ()) for t in range(len(m.terms))))
        hits = [(s, w) for s, _e, w in span.words if set(tokens(w)) & matched]
        out.append(
            ChannelProposal(
                stream=stream,
                channel=channel,
                kind=LEXICAL_KIND,
                start=span.start,
                end=span.end,
                score=float(m.share[i]),
                peak=hits[0][0] if hits else span.start,
                evidence=tuple(s for s, _ in hits),
                quote=" ".join(w.strip() for _, w in hits),
            )
        )
    return out


def semantic_spans(
    spans: Sequence[TimedText],
    span_vecs: np.ndarray,
    query_vec: np.ndarray,
    *,
    stream: str,
    channel: str,
    top_k: int,
    lexical: np.ndarray | None = None,
) -> tuple[list[ChannelProposal], Calibration | None]:
    """Up to ``top_k`` proposals (kind :data:`SEMANTIC_KIND`) by cosine, and their calibration.

    ``span_vecs`` (n, d) and ``query_vec`` (d,) are unit vectors; none when
    there are no spans. ``lexical`` (n,): the spans' matched IDF shares, added
    with weight :data:`SEMANTIC_LEXICAL_WEIGHT` before ranking and calibrating
    (module docstring).
    """
    if not spans:
        return [], None
    score = np.asarray(span_vecs, np.float64) @ np.asarray(query_vec, np.float64)
    if lexical is not None:
        score = score + SEMANTIC_LEXICAL_WEIGHT * np.asarray(lexical, np.float64)
    order = np.argsort(-score, kind="stable")
    background = (
        score[order[min(max(1, top_k), len(score) - 1) :]]
        if len(score) > 1
        else np.array([SEMANTIC_PRIOR_CENTER])
    )
    center = float(np.median(background))
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(background - center))), SEMANTIC_MIN_SCALE)
    cal = Calibration(center, scale, trials=len(spans), samples=len(spans))
    out = [
        ChannelProposal(
            stream=stream,
            channel=channel,
            kind=SEMANTIC_KIND,
            start=spans[int(i)].start,
            end=spans[int(i)].end,
            score=float(score[i]),
            peak=spans[int(i)].start,
            evidence=(spans[int(i)].start,),
            quote=spans[int(i)].text,
        )
        for i in order[: max(1, top_k)]
    ]
    return out, cal


PAUSE_SPLIT = 1.5
"""Seconds of silence between two words that cut a span in two for search (tuned on the benchmark's dev split)."""


def searchable(spans: Sequence[TimedText]) -> list[TimedText]:
    """``spans`` as searched: cut at pauses, and joined where they share their time.

    - **Cut** where consecutive words are :data:`PAUSE_SPLIT` s or more apart:
      whisper writes two sentences said 10 s apart as one segment ("The truck
      is waiting at gate or the North entrance will close at 6pm.", 2.9-19.6 s),
      and a moment as long as both would miss either by IoU. A piece runs from
      its first word's start to its last word's end.
    - **Joined** where spans have the same start and end: the lines of one
      caption, read as separate lines, are one text (a paraphrase matches the
      whole caption, not a line of it).

    Order by start is kept; spans without words are never cut.
    """
    pieces: list[TimedText] = []
    for span in spans:
        pieces += _cut(span)
    joined: dict[tuple[float, float], TimedText] = {}
    for p in pieces:
        key = (round(p.start, 3), round(p.end, 3))
        had = joined.get(key)
        joined[key] = (
            p if had is None else TimedText(had.start, had.end, f"{had.text} {p.text}", had.words + p.words)
        )
    return list(joined.values())


def _cut(span: TimedText) -> list[TimedText]:
    words = span.words
    cuts = [i for i in range(1, len(words)) if words[i][0] - words[i - 1][1] >= PAUSE_SPLIT]
    if not cuts:
        return [span]
    out = []
    for a, b in itertools.pairwise([0, *cuts, len(words)]):
        part = words[a:b]
        out.append(TimedText(part[0][0], part[-1][1], "".join(w for _s, _e, w in part).strip(), part))
    return out


SENTENCE_ROLE = "sentence"
"""Key of the query's MiniLM vector in :attr:`ChannelQuery.vectors`."""
Embed = Callable[[list[str]], np.ndarray]
"""Texts -> (n, d) unit vectors (``agent.models.sentences.SentenceEncoder.encode``)."""


class TextSearch:
    """What a text channel searches with: BM25 always, MiniLM when given ``embed`` (vectors cached by text).

    Thread-safe (queries score outside their stream's lock): the vector cache has a lock of its own.
    """

    def __init__(self, embed: Embed | None = None, cache_size: int = 50_000) -> None:
        self.embed = embed
        self._vecs: dict[str, np.ndarray] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def answer(
        self, spans: Sequence[TimedText], query: ChannelQuery, *, stream: str, channel: str
    ) -> ChannelAnswer:
        """Lexical proposals, plus semantic ones when the query has a sentence vector and ``embed`` is set."""
        spans = [
            s
            for s in searchable(spans)
            if (query.start is None or s.end >= query.start) and (query.end is None or s.start <= query.end)
        ]
        match = lexical_match(spans, query.text)
        found = search_spans(
            spans, query.text, stream=stream, channel=channel, top_k=query.top_k, match=match
        )
        cals = {LEXICAL_KIND: LEXICAL_CALIBRATION}
        qvec = query.vectors.get(SENTENCE_ROLE)
        if self.embed is not None and qvec is not None and spans:
            more, cal = semantic_spans(
                spans,
                self._vectors([s.text for s in spans]),
                qvec,
                stream=stream,
                channel=channel,
                top_k=query.top_k,
                lexical=None if match is None else match.share,
            )
            found += more
            if cal is not None:
                cals[SEMANTIC_KIND] = cal
        return ChannelAnswer(found, cals)

    def _vectors(self, texts: list[str]) -> np.ndarray:
        assert self.embed is not None
        with self._lock:  # one query's clear() must not pull vectors from under another's stack()
            missing = list(dict.fromkeys(t for t in texts if t not in self._vecs))
            if missing:
                if len(self._vecs) + len(missing) > self._cache_size:
                    self._vecs.clear()  # evicted spans leave stale entries; start over rather than track them
                self._vecs.update(zip(missing, self.embed(missing), strict=True))
            return np.stack([self._vecs[t] for t in texts])
