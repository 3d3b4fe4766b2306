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
  (digits, "bay": a one-letter slip there is another word, not a misspelling).

The similarity is computed once per distinct span term (the stream's
vocabulary), not per span, so a query costs one ``rapidfuzz.process.cdist``
over the vocabulary. Numeric and pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from agent.errors import ConfigError

FUZZY_MIN = 0.7
"""Smallest similarity that counts ("forklift" ~ "portlift" is 0.75, "stopped" ~ "stop" 0.73, "desk" ~ "mess" 0.5)."""
FUZZY_FLOOR = 0.5
"""Credit of a similarity of exactly :data:`FUZZY_MIN` (a misspelt term is weaker evidence than a spelt one)."""
FUZZY_MIN_CHARS = 4
"""Shorter query terms match exactly or not at all."""


def _pieces(doc: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """A span's terms and each adjacent pair written together, each with the terms it is made of."""
    return [*((t, (t,)) for t in doc), *((a + b, (a, b)) for a, b in itertools.pairwise(doc))]


def credits(terms: Sequence[str], docs: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[list[set[str]]]]:
    """(len(terms), len(docs)) credits in [0, 1] (module docstring), and per term and doc the span terms
    that earned it.

    ``terms`` and ``docs`` are already tokenised (``text_search.tokens``).
    Raises ConfigError when ``rapidfuzz`` (the speech extra) is missing.
    """
    out = np.zeros((len(terms), len(docs)), np.float64)
    which: list[list[set[str]]] = [[set() for _ in docs] for _ in terms]
    pieces = [_pieces(d) for d in docs]
    vocab = {p: k for k, p in enumerate(sorted({p for ps in pieces for p, _ in ps}))}
    fuzzy = [i for i, t in enumerate(terms) if len(t) >= FUZZY_MIN_CHARS]
    sims = _similarities([terms[i] for i in fuzzy], list(vocab)) if fuzzy and vocab else None
    for i, term in enumerate(terms):
        row = fuzzy.index(i) if i in fuzzy else None
        for j, doc in enumerate(docs):
            if term in doc:
                out[i, j], which[i][j] = 1.0, {term}
            elif sims is not None and row is not None and pieces[j]:
                best, parts = max((float(sims[row, vocab[p]]), parts) for p, parts in pieces[j])
                if best >= FUZZY_MIN:
                    out[i, j] = FUZZY_FLOOR + (1.0 - FUZZY_FLOOR) * (best - FUZZY_MIN) / (1.0 - FUZZY_MIN)
                    which[i][j] = set(parts)
    return out, which


def _similarities(terms: list[str], vocab: list[str]) -> np.ndarray:
    """(len(terms), len(vocab)) similarities in [0, 1]."""
    try:
        from rapidfuzz import fuzz, process
    except ImportError as exc:
        raise ConfigError("sound-alike text search needs rapidfuzz: pip install -e '.[speech]'") from exc
    return np.asarray(process.cdist(terms, vocab, scorer=fuzz.ratio, dtype=np.float32), np.float64) / 100.0
