"""Sound-alike term matching: how much of a query term a span holds when ASR or OCR misspelt it.

Whisper hears "forklift" as "fort lift" or "port lift", "visitors" as "visit
us", "close" as "clone"; Tesseract reads a half-hidden "CLOSED" as "CLOSE" or
"LOSED". Exact word matching gives such a span no credit for the term, and a
span elsewhere that shares one common word wins. :func:`credits` gives each
(query term, span) pair a credit in [0, 1]:

- 1.0 when the span holds the term exactly;
- else the best character similarity (``rapidfuzz``'s normalised Indel
  similarity, ``fuzz.ratio / 100``) between the term and one of the span's
  terms or two adjacent ones written together ("fort lift" -> "fortlift"),
  when it reaches :data:`FUZZY_MIN` (tuned on the benchmark's dev split), scaled
  so that :data:`FUZZY_MIN` gives :data:`FUZZY_FLOOR` and an exact spelling 1;
- 0 otherwise, and always for terms shorter than :data:`FUZZY_MIN_CHARS`
  (digits, "bay": a one-letter slip there is another word, not a misspelling),
  and for query terms past the first :data:`FUZZY_MAX_TERMS` distinct ones.

Cost is bounded by distinct terms, not by (query term x span): one
``rapidfuzz.process.cdist`` scores the (at most :data:`FUZZY_MAX_TERMS`)
fuzzy query terms against the stream's distinct pieces (its vocabulary), and
an index from piece to the spans holding it hands each similar piece's credit
to those spans in numpy. Credits and their earning terms are kept sparse.
Numeric and pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.errors import ConfigError

FUZZY_MIN = 0.7
"""Smallest similarity that counts ("forklift" ~ "portlift" is 0.75, "stopped" ~ "stop" 0.73, "desk" ~ "mess" 0.5)."""
FUZZY_FLOOR = 0.5
"""Credit of a similarity of exactly :data:`FUZZY_MIN` (a misspelt term is weaker evidence than a spelt one)."""
FUZZY_MIN_CHARS = 4
"""Shorter query terms match exactly or not at all."""
FUZZY_MAX_TERMS = 32
"""Distinct query terms (in query order) given sound-alike credit; later ones match exactly only.

A question has a handful of content words; a pasted 2000-character text must
not buy (terms x vocabulary) similarity work under a stream's lock.
"""

Earned = list[dict[int, frozenset[str]]]
"""Per query term: span index -> the span terms that earned its credit (only spans with credit)."""


class _Pieces:
    """Every span's pieces (terms, adjacent pairs written together) as flat arrays, and the vocabulary.

    Piece ``k`` is ``docs[doc[k]][pos[k] : pos[k] + width[k]]`` written together; ``piece[k]`` its
    index in ``vocab``.
    """

    def __init__(self, docs: Sequence[Sequence[str]]) -> None:
        self.docs = docs
        flat = [t for d in docs for t in d]
        lens = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        doc = np.repeat(np.arange(len(docs), dtype=np.int64), lens)
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        pair = np.flatnonzero(doc[1:] == doc[:-1]) if len(flat) > 1 else np.zeros(0, np.int64)
        strings = flat + [flat[k] + flat[k + 1] for k in pair.tolist()]
        self.doc = np.concatenate([doc, doc[pair]])
        self.pos = np.concatenate([pos, pos[pair]])
        self.width = np.concatenate([np.ones(len(flat), np.int64), np.full(len(pair), 2, np.int64)])
        vocab, self.piece = np.unique(np.asarray(strings, dtype=str), return_inverse=True)
        self.vocab: list[str] = vocab.tolist()

    def parts(self, k: int) -> tuple[str, ...]:
        """The span terms piece ``k`` is made of."""
        p = int(self.pos[k])
        return tuple(self.docs[int(self.doc[k])][p : p + int(self.width[k])])


def credits(terms: Sequence[str], docs: Sequence[Sequence[str]]) -> tuple[np.ndarray, Earned]:
    """(len(terms), len(docs)) credits in [0, 1] (module docstring), and per term the spans' terms that
    earned them (:data:`Earned`).

    ``terms`` and ``docs`` are already tokenised (``text_search.tokens``).
    Raises ConfigError when ``rapidfuzz`` (the speech extra) is missing.
    """
    out = np.zeros((len(terms), len(docs)), np.float64)
    earned: Earned = [{} for _ in terms]
    fuzzy = list(dict.fromkeys(t for t in terms if len(t) >= FUZZY_MIN_CHARS))[:FUZZY_MAX_TERMS]
    pieces = _Pieces(docs) if fuzzy else None
    if pieces is not None and pieces.vocab:
        sims = _similarities(fuzzy, pieces.vocab)
        row = {t: r for r, t in enumerate(fuzzy)}
        for i, term in enumerate(terms):
            if term in row:
                _fuzzy_row(sims[row[term]], pieces, out[i], earned[i])
    exact: dict[str, list[int]] = {}
    wanted = set(terms)
    for j, doc in enumerate(docs):
        for t in set(doc) & wanted:
            exact.setdefault(t, []).append(j)
    for i, term in enumerate(terms):
        for j in exact.get(term, ()):
            out[i, j] = 1.0  # an exact spelling beats any sound-alike
            earned[i][j] = frozenset((term,))
    return out, earned


def _fuzzy_row(sim: np.ndarray, pieces: _Pieces, out: np.ndarray, earned: dict[int, frozenset[str]]) -> None:
    """Fill one query term's credits (``out``, (n_docs,)) and ``earned`` from its (len(vocab),) similarities."""
    hit = np.flatnonzero(sim[pieces.piece] >= FUZZY_MIN)
    if hit.size == 0:
        return
    s, d = sim[pieces.piece[hit]], pieces.doc[hit]
    best = np.zeros(len(out), np.float64)
    np.maximum.at(best, d, s)
    docs = np.unique(d)
    out[docs] = FUZZY_FLOOR + (1.0 - FUZZY_FLOOR) * (best[docs] - FUZZY_MIN) / (1.0 - FUZZY_MIN)
    # Among a span's equally similar pieces the greatest parts tuple earns the credit (as max() over
    # (similarity, parts) pairs picks); ties are few, so they are settled in Python.
    won: dict[int, tuple[str, ...]] = {}
    for k, j in zip(hit[s == best[d]].tolist(), d[s == best[d]].tolist(), strict=True):
        parts = pieces.parts(k)
        if j not in won or parts > won[j]:
            won[j] = parts
    for j, parts in won.items():
        earned[j] = frozenset(parts)


def _similarities(terms: list[str], vocab: list[str]) -> np.ndarray:
    """(len(terms), len(vocab)) similarities in [0, 1]; those clearly under :data:`FUZZY_MIN` are 0."""
    try:
        from rapidfuzz import fuzz, process
    except ImportError as exc:
        raise ConfigError("sound-alike text search needs rapidfuzz: pip install -e '.[speech]'") from exc
    # The cutoff lets rapidfuzz skip hopeless pairs early; it sits a hair under FUZZY_MIN so a
    # similarity of exactly FUZZY_MIN, rounded either way, is still kept and thresholded below.
    sims = process.cdist(
        terms, vocab, scorer=fuzz.ratio, dtype=np.float32, score_cutoff=100.0 * FUZZY_MIN - 0.01
    )
    return np.asarray(sims, np.float64) / 100.0
