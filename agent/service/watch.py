"""Standing queries: match every newly encoded super-image against a query vector.

A watch first answers from retained memory (the ``query`` path, run by the
server) and then keeps matching forward: each embedding the shared encoder
commits is scored against the watch's query vector (one dot product, on the
event loop). Consecutive matches of one stream form a *match*:

* the first matching super-image opens it -> ``moment`` event (``open: true``);
* later matching super-images extend it -> ``moment.update`` (``closed: false``);
* once non-matching samples cover ``close_seconds`` of stream time after the
  match's end — or the stream ends — it closes -> ``moment.update``
  (``closed: true``) with the final end.

Threshold: an absolute cosine when the client gives one; otherwise relative
to the score distribution of the watched streams' retained anchors:
``mean + sigma * std`` (the anchors are mostly "not the needle"). With fewer
than ``min_anchors`` anchors retained, the watch *calibrates* on the first
``min_anchors`` forward scores instead and matches from then on.

**Phrases spoken or shown.** A watch with query text also matches every new
transcript utterance (``speech``) and every new on-screen text span
(``ocr``) its streams keep (:meth:`Watch.on_text_span`), unless its
``channels`` leave those out; ``channels`` without ``visual`` leave the
super-images out (no encoder vector, no calibration). Rule: the span holds
at least ``word_share`` (default 1.0: every one) of the query's search terms
(:func:`~agent.channels.text_search.query_terms`: stop words and "said",
"shown"... dropped; "four" = "4"), every term weighing the same (a lone new
span has no corpus for an IDF). Words, not meaning: a MiniLM cosine would
put a model call on the event loop for every span; the backward scan (the
``query`` path) searches by meaning too. Each matching span is one complete
match, sent as one ``moment`` event with ``closed: true``: the span's times,
``score`` = the share, ``channels`` = [the channel] and ``quotes`` = the
matched words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from agent.channels.text_search import TimedText, phrase_hits, query_terms
from agent.channels.visual import VisualChannel
from agent.core.superimage import SuperImage
from agent.service.answer import MomentOut
from agent.service.config import WatchConfig
from agent.service.protocol import MomentEvent, MomentUpdateEvent, ServerEvent, WatchingEvent
from agent.types import Moment

Emit = Callable[[ServerEvent], None]
WallOf = Callable[[str, float], float | None]


def relative_threshold(scores: np.ndarray, sigma: float) -> float:
    """``mean + sigma * std`` of background scores, capped below 1."""
    return float(min(0.999, float(np.mean(scores)) + sigma * float(np.std(scores))))


@dataclass(slots=True)
class _Match:
    seq: int
    start: float
    end: float
    score: float
    peak: float


class Watch:
    """One standing query over some streams.

    ``streams=None`` watches every stream, including ones added after the watch
    was placed (the service checks explicit ids exist when the watch opens).
    """

    def __init__(
        self,
        wid: str,
        qvec: np.ndarray,
        *,
        streams: Iterable[str] | None,
        cfg: WatchConfig,
        emit: Emit,
        wall_of: WallOf,
        threshold: float | None = None,
        close_seconds: float | None = None,
        text: str | None = None,
        channels: Iterable[str] | None = None,
        word_share: float = 1.0,
    ) -> None:
        """``text``: the query's words (the text path needs them); ``channels``: the channels
        watched (None: all); ``word_share``: the text path's rule (module docstring)."""
        self.id = wid
        self.qvec = np.asarray(qvec, np.float32)
        self.streams = None if streams is None else set(streams)
        self.cfg = cfg
        self.threshold = threshold
        self.close_seconds = close_seconds if close_seconds is not None else cfg.close_seconds
        self._emit = emit
        self._wall_of = wall_of
        self._calibration: list[float] = []
        self._open: dict[str, _Match] = {}
        self._seq = 0
        self.matches = 0
        self.scored = 0
        self.channels = None if channels is None else set(channels)
        self.terms = query_terms(text) if text else []
        self.word_share = word_share

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def watches(self, channel: str) -> bool:
        """Whether ``channel``'s evidence can match (text channels need query words)."""
        if self.channels is not None and channel not in self.channels:
            return False
        return channel == VisualChannel.name or bool(self.terms)

    @property
    def visual(self) -> bool:
        """Whether super-images are scored (the watch needs an encoder vector and a threshold)."""
        return self.watches(VisualChannel.name)

    def calibrate(self, background: np.ndarray) -> None:
        """Set the relative threshold from retained anchors' scores (if there are enough)."""
        if self.threshold is None and len(background) >= self.cfg.min_anchors:
            self.threshold = relative_threshold(background, self.cfg.sigma)

    @property
    def calibrating(self) -> bool:
        return self.visual and self.threshold is None

    # ------------------------------------------------------------ events in
    def on_embedding(self, stream: str, si: SuperImage, vec: np.ndarray) -> None:
        """Score one committed super-image of ``stream``."""
        if not (self.wants(stream) and self.visual):
            return
        score = float(np.dot(vec, self.qvec))
        self.scored += 1
        if self.threshold is None:
            self._calibration.append(score)
            if len(self._calibration) >= self.cfg.min_anchors:
                self.threshold = relative_threshold(np.asarray(self._calibration), self.cfg.sigma)
                self._emit(WatchingEvent(id=self.id, threshold=round(self.threshold, 6), calibrating=False))
            return
        match = self._open.get(stream)
        if score >= self.threshold:
            peak = si.times[len(si.times) // 2]
            if match is None:
                self._seq += 1
                self.matches += 1
                match = _Match(self._seq, si.start, si.end, score, peak)
                self._open[stream] = match
                self._emit(MomentEvent(id=self.id, match=match.seq, moment=self._moment(stream, match)))
                return
            match.end = max(match.end, si.end)
            if score > match.score:
                match.score, match.peak = score, peak
            self._emit(self._update(stream, match, closed=False))
        elif match is not None and si.end - match.end >= self.close_seconds:
            self._close(stream)

    def on_text_span(self, stream: str, channel: str, span: TimedText) -> None:
        """Match one new span of a text channel of ``stream`` (rule in the module docstring)."""
        if not (self.wants(stream) and self.watches(channel)) or channel == VisualChannel.name:
            return
        share, hits = phrase_hits(self.terms, span)
        self.scored += 1
        if share < self.word_share or not hits:
            return
        self._seq += 1
        self.matches += 1
        moment = Moment(
            start=span.start,
            end=span.end,
            score=share,
            stream=stream,
            wall_start=self._wall_of(stream, span.start),
            wall_end=self._wall_of(stream, span.end),
            evidence=[t for t, _ in hits],
            answered_by="anchor",
            channels=[channel],
            quotes={channel: " ".join(w for _, w in hits)},
        )
        self._emit(MomentEvent(id=self.id, match=self._seq, closed=True, moment=MomentOut.of(moment)))

    def on_stream_end(self, stream: str) -> None:
        """The stream ended or was removed: close its open match."""
        if stream in self._open:
            self._close(stream)

    def close_all(self) -> None:
        for stream in list(self._open):
            self._close(stream)

    # ----------------------------------------------------------- events out
    def _close(self, stream: str) -> None:
        match = self._open.pop(stream)
        self._emit(self._update(stream, match, closed=True))

    def _update(self, stream: str, match: _Match, *, closed: bool) -> MomentUpdateEvent:
        return MomentUpdateEvent(
            id=self.id, match=match.seq, closed=closed, moment=self._moment(stream, match)
        )

    def _moment(self, stream: str, match: _Match) -> MomentOut:
        return MomentOut.of(
            Moment(
                start=match.start,
                end=match.end,
                score=match.score,
                stream=stream,
                wall_start=self._wall_of(stream, match.start),
                wall_end=self._wall_of(stream, match.end),
                evidence=[match.peak],
                answered_by="anchor",
            )
        )
