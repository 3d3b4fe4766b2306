"""What a query is, and the vectors it is scored with (by encoder, role and grid).

A :class:`Query` is text or a photo over some streams and a time range. The visual channel
scores it with one vector per encoder *role*: ``prescreen`` (against the memory's anchors,
super-images of N x N frames, so a photo is encoded as the still shot it would make at the
index's grid: :func:`encode_query`) and ``refine`` (against stored frames one by one, so the
photo alone). :class:`QueryVectors` keeps them so that a repeated query costs a hash.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from agent.config import MAX_TOP_K, QueryConfig
from agent.core.superimage import still_shot
from agent.errors import ConfigError, OversizeQueryError, QueryError
from agent.models.encoder import Encoder
from agent.types import RGBImage


@dataclass(slots=True)
class Query:
    """A text or image query over one or more streams."""

    text: str | None = None
    image: RGBImage | None = None
    streams: list[str] | None = None
    start: float | None = None
    end: float | None = None
    top_k: int | None = None
    channels: list[str] | None = None
    """Only these channels answer (``["speech"]``); None or empty: every channel."""

    def check(self, cfg: QueryConfig) -> None:
        """Reject empty, ambiguous, non-Unicode (a lone surrogate) or oversize queries before any encoding."""
        if (self.text is None) == (self.image is None):
            raise QueryError("a query needs exactly one of text or image")
        if self.text is not None:
            if not self.text.strip():
                raise QueryError("empty query text")
            try:
                # JSON can escape a lone UTF-16 surrogate ("\\ud800"), which no tokenizer takes.
                self.text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise QueryError(f"query text is not valid Unicode at character {exc.start}") from exc
            if len(self.text) > cfg.max_text_chars:
                raise OversizeQueryError(
                    f"query text has {len(self.text)} characters; limit {cfg.max_text_chars}"
                )
        if self.image is not None:
            img = self.image
            # Decoded pictures are (H, W, 3) uint8 (agent.models.images); one built in Python may
            # not be, and would fail late: a broadcast error when tiled at grid > 1, zeros when cast.
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.size == 0:
                raise QueryError(
                    f"query image must be an (H, W, 3) uint8 RGB array, not {img.dtype} {img.shape}"
                )
            if img.nbytes > cfg.max_image_bytes * 4:
                raise OversizeQueryError("query image is too large")
        for name, value in (("start", self.start), ("end", self.end)):
            if value is not None and not math.isfinite(value):
                raise QueryError(f"time range {name} must be a finite number of stream seconds")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise QueryError("time range end must be after start")
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k must be between 1 and {MAX_TOP_K}")

    def check_channels(self, offered: Collection[str]) -> None:
        """Reject a channel filter naming a channel the service does not index (``offered``), or
        only text channels for an image query: either would give a watch that never fires, or an
        answer that is empty for a typo. QueryError."""
        if not self.channels:
            return
        unknown = sorted(set(self.channels) - set(offered))
        if unknown:
            raise QueryError(
                f"unknown channel(s) {', '.join(map(repr, unknown[:3]))[:200]}; "
                f"the channels indexed here are {sorted(offered)}"
            )
        if self.text is None and "visual" not in self.channels:
            raise QueryError("an image query needs the visual channel (speech and ocr match words)")

    def __post_init__(self) -> None:
        if self.streams is not None and not self.streams:
            self.streams = None  # an empty list means every stream, as the protocol has always said


def encode_query(query: Query, encoder: Encoder, grid: int = 1) -> np.ndarray:
    """The query's (dim,) unit vector under ``encoder``.

    ``grid`` > 1: an image query is encoded as the super-image a still shot of it makes at
    that grid (:func:`agent.core.superimage.still_shot`), the picture layout of the anchors
    it is scored against. Text has no layout: ``grid`` is ignored.
    """
    if query.text is not None:
        return encoder.encode_text([query.text])[0]
    assert query.image is not None
    image = still_shot(query.image, grid, encoder.image_size) if grid > 1 else query.image
    return encoder.encode_images([image])[0]


QueryKey = tuple[str, str, str]


def _query_key(query: Query, encoder: Encoder, grid: int = 1) -> QueryKey:
    """(encoder, kind, content): the same query under the same encoder gives the same vector.

    An image is keyed with its grid (a tiled picture is another encoder input); text is one
    vector whatever the grid (:func:`encode_query` ignores it).
    """
    backend = getattr(getattr(encoder, "backend", None), "name", "")
    who = f"{encoder.name}@{backend}"
    if query.text is not None:
        return (who, "text", query.text)
    assert query.image is not None
    img = np.ascontiguousarray(query.image)
    digest = hashlib.blake2b(img.data, digest_size=16).hexdigest()  # ~0.1 ms for a 256 px picture
    tiled = f"|grid{grid}" if grid > 1 else ""
    return (who, "image", f"{img.shape}|{img.dtype}|{digest}{tiled}")


class QueryVectors:
    """Query vectors by encoder and query content: a repeated query skips its encoding.

    An encoder is deterministic, so a kept vector is the one encoding again
    would give: answers do not change, a repeated query (a client asking
    again, a watch re-armed, the same picture sent twice) costs a hash instead
    of an encoder pass. Bounded: at most ``size`` vectors (a few KB each),
    the least recently used dropped first. Vectors are read-only. Thread-safe;
    encoding runs outside the lock (two threads missing on one query both
    encode, the same vector).
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[QueryKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, query: Query, encoder: Encoder, grid: int = 1) -> np.ndarray:
        """The (dim,) unit vector of ``query`` under ``encoder`` at ``grid`` (:func:`encode_query`),
        kept or encoded."""
        key = _query_key(query, encoder, grid)
        with self._lock:
            vec = self._items.get(key)
            if vec is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return vec
            self.misses += 1
        vec = encode_query(query, encoder, grid)
        vec.setflags(write=False)  # shared by every later query that repeats this one
        self.put(query, encoder, vec, grid)
        return vec

    def put(self, query: Query, encoder: Encoder, vec: np.ndarray, grid: int = 1) -> None:
        """Keep ``vec`` as ``query``'s (dim,) unit vector under ``encoder`` at ``grid``, encoded elsewhere.

        The Ray gateway encodes a query once and ships the vector to every
        stream actor, which puts it here: its search then finds it instead of
        encoding. Only a vector of this very encoder (same model, weights and
        backend on another process) may be put: answers must not change.
        """
        if vec.shape != (encoder.dim,):
            raise ConfigError(f"query vector of shape {vec.shape}; {encoder.name} gives ({encoder.dim},)")
        if vec.flags.writeable:
            vec = vec.copy()
            vec.setflags(write=False)
        key = _query_key(query, encoder, grid)
        with self._lock:
            self._items[key] = vec
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


PRESCREEN, REFINE = "prescreen", "refine"
"""Roles of a query's vectors: one per encoder that scores it."""


def first_vectors(
    query: Query, vectors: QueryVectors, prescreen: Encoder, refine: Encoder, grid: int = 1
) -> tuple[np.ndarray, Callable[[], np.ndarray] | None]:
    """The PRESCREEN vector now, and how to get the REFINE one later (None: the same vector).

    The first answer reads the prescreen vector only. The refine vector, when it differs
    (another model, or the photo alone for an image at ``grid`` > 1), is an encoder pass that
    only refinement needs, so it is encoded when refinement starts
    (:meth:`agent.index.answers.PendingQuery.refine`), not before the first answer.
    """
    pvec = vectors.get(query, prescreen, grid)
    if refine is not prescreen or (query.image is not None and grid > 1):
        return pvec, lambda: vectors.get(query, refine)
    return pvec, None


def query_roles(
    query: Query, vectors: QueryVectors, prescreen: Encoder, refine: Encoder, grid: int = 1
) -> dict[str, np.ndarray]:
    """``query``'s (dim,) vectors by role: prescreen's at ``grid``, and refine's (the photo alone).

    PRESCREEN scores anchors, so an image is tiled at ``grid`` (:func:`encode_query`). REFINE
    scores stored frames one by one, so it is the photo alone (grid 1); it is there when refine
    is another model, or when the query is an image at ``grid`` > 1 (the tiled vector would
    not do). Text with one model has no REFINE entry: the prescreen vector serves both.
    Both at once (:func:`first_vectors` defers REFINE): what a Ray gateway ships to its stream
    actors; blocking (an encoder pass per missing vector unless kept in ``vectors``).
    """
    pvec, later = first_vectors(query, vectors, prescreen, refine, grid)
    return {PRESCREEN: pvec} if later is None else {PRESCREEN: pvec, REFINE: later()}
