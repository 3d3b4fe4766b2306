"""The on-screen text channel: what was shown, as text spans (start, end, text), searchable by words (sans-I/O).

Frames in, a few pictures out, lines back::

    Frame --push--> gate (picture change / heartbeat, at most one per min_interval)
          --> WorkItem("ocr", picture) --> Tesseract (agent.models.ocr) --commit(item, lines)-->
    lines (box, confidence, text) --> deduplicated across frames into spans --> search (BM25, quotes)

Rules chosen:

- **Low rate, gated.** A frame is read when at least ``min_interval`` seconds
  (default 2) passed since the last read *and* the picture differs from the
  last *read* picture (some cell of a 16x16 grid of block-mean greys moved by
  more than ``change``, default 12 of 255: a line of text appearing moves the
  cells it covers, which a whole-picture mean would dilute), or
  ``max_interval`` seconds (default 10, the heartbeat) passed: text can change
  on a still background by less than a cell. Keyframes alone do not open the
  gate (``read_keyframes``): on a coarse pass every sampled frame is one. The
  thumbnail is this channel's own cheap index: a channel never reads
  another's state.
- **Lines kept** when Tesseract's confidence reaches ``min_conf`` and they
  hold at least two letters or digits.
- **Deduplicated into spans.** A line seen again in the next read (same
  numbers, and ``difflib`` similarity >= ``same_ratio`` of the normalised
  text: OCR noise on letters is forgiven, a changed number is new text)
  extends its span; a span whose text is missing from a read is closed at
  that read's time (the text was on screen until then at most: a changed
  picture in between need not mean the text went, the background may have
  moved). A span runs
  from its first read to its close; while open, to the latest read or, past
  it, to the last frame the gate skipped as unchanged since that read (static
  text between heartbeats), never past a changed frame.
- **Budget.** Spans kept while their bytes (UTF-8 text + 32 per span) stay
  within ``budget_bytes``; the oldest evicted first. Snapshot:
  ``<stream>/ocr/ocr.json`` (atomic, versioned).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.channels.base import Channel, ChannelAnswer, ChannelQuery, WorkItem
from agent.channels.text_search import Embed, FreshSpans, TextSearch, TimedText
from agent.config import OcrConfig
from agent.errors import IndexStoreError
from agent.models.ocr import LINE_DTYPE
from agent.store.atomic import write_json
from agent.store.versioned import read_versioned
from agent.types import Frame

__all__ = ["OCR_WORKER", "OcrChannel", "OcrConfig", "TextSpan"]

OCR_WORKER = "ocr"
OCR_VERSION = 1
_SPAN_BYTES = 32
_THUMB = 16


@dataclass(slots=True)
class TextSpan:
    """Text on screen from ``start`` to ``end`` (stream seconds), with its last box and best confidence."""

    start: float
    end: float
    text: str
    box: tuple[int, int, int, int]
    conf: float
    open: bool = True


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _numbers(norm: str) -> list[str]:
    return [w for w in norm.split() if w.isdigit()]


def _thumb(image: np.ndarray) -> np.ndarray:
    """(16, 16) block means of the grey picture (edges cropped to whole blocks; tiny pictures repeated)."""
    grey = np.asarray(image, np.float32).mean(axis=2)
    h, w = grey.shape
    if h < _THUMB or w < _THUMB:
        grey = np.repeat(np.repeat(grey, -(-_THUMB // h), axis=0), -(-_THUMB // w), axis=1)
        h, w = grey.shape
    bh, bw = h // _THUMB, w // _THUMB
    return grey[: bh * _THUMB, : bw * _THUMB].reshape(_THUMB, bh, _THUMB, bw).mean(axis=(1, 3))


class OcrChannel(Channel):
    """On-screen text spans of one stream (see the module docstring); not thread-safe."""

    name = "ocr"

    def __init__(self, stream: str, cfg: OcrConfig | None = None, *, embed: Embed | None = None) -> None:
        """``embed``: MiniLM sentence vectors for semantic search (None: lexical only)."""
        super().__init__()
        self.text_search = TextSearch(embed)
        self.stream = stream
        self.cfg = cfg or OcrConfig()
        self.spans: list[TextSpan] = []
        self.reads = 0
        self.evicted = 0
        self._nbytes = 0
        self._last_t: float | None = None
        self._last_thumb: np.ndarray | None = None
        self._latest_read = 0.0
        self._pending: dict[int, float] = {}
        """Work in flight: item id -> stream second it starts at (what the lag waits on)."""
        self._seen: float | None = None
        """Time of the latest frame the gate looked at."""
        self._still: dict[float, float] = {}
        """Read time -> latest frame since it the gate found unchanged (no changed frame between)."""
        self._latest_still = 0.0
        """``_still`` of the latest committed read: where its open spans run to."""
        self._broken = False
        """A changed frame was skipped since the last read (the stretch has ended)."""
        self.fresh = FreshSpans()
        """Spans opened since the service last looked (for the watches)."""

    # ------------------------------------------------------------- ingest
    def push(self, frame: Frame) -> list[WorkItem]:
        """A work item for ``frame`` when the gate opens (rule in the module docstring)."""
        self._seen = frame.t if self._seen is None else max(self._seen, frame.t)
        since = None if self._last_t is None else frame.t - self._last_t
        thumb = _thumb(frame.image)
        changed = (
            self._last_thumb is None or float(np.max(np.abs(thumb - self._last_thumb))) > self.cfg.change
        )
        if since is not None and since < self.cfg.min_interval:
            self._extend(frame.t, changed)
            return []
        due = since is None or since >= self.cfg.max_interval
        if not (changed or due or (frame.keyframe and self.cfg.read_keyframes)):
            self._extend(frame.t, changed)
            return []
        self._last_t, self._last_thumb = frame.t, thumb
        self._still[frame.t], self._broken = frame.t, False
        item = WorkItem(self.stream, self.name, OCR_WORKER, frame.image, None, frame.t, frame.t)
        self._pending[item.id] = item.start
        return [item]

    def _extend(self, t: float, changed: bool) -> None:
        """A skipped frame at ``t``: while unchanged since the last read, it stretches that read's spans."""
        self._broken = self._broken or changed  # never past a change, even if the picture comes back
        if self._broken or self._last_t is None:
            return
        self._still[self._last_t] = max(self._still.get(self._last_t, self._last_t), t)
        if self._last_t == self._latest_read:
            self._latest_still = self._still[self._last_t]

    def flush(self) -> list[WorkItem]:
        return []

    # ------------------------------------------------------------ results
    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        """Take the lines read in the picture of ``item`` (a :data:`~agent.models.ocr.LINE_DTYPE` array)."""
        if item.id not in self._pending:
            raise KeyError(f"ocr item {item.id} is not in flight")
        self._pending.pop(item.id, None)
        lines = np.asarray(result)
        if lines.dtype != LINE_DTYPE:
            raise ValueError(f"ocr results must have LINE_DTYPE, got {lines.dtype}")
        self.reads += 1
        t = item.start
        if t >= self._latest_read:
            self._latest_read, self._latest_still = t, self._still.get(t, t)
        for old in [k for k in self._still if k < self._latest_read]:
            del self._still[old]  # only the latest read's stretch is used
        seen: set[int] = set()
        for row in lines:
            text = str(row["text"]).strip()
            if float(row["conf"]) < self.cfg.min_conf or len(re.findall(r"[A-Za-z0-9]", text)) < 2:
                continue
            box = (int(row["left"]), int(row["top"]), int(row["width"]), int(row["height"]))
            i = self._match(text)
            if i is None:
                self.spans.append(TextSpan(t, t, text, box, float(row["conf"])))
                self._nbytes += _size(self.spans[-1])
                self.fresh.add(_timed(self.spans[-1], t))
                seen.add(len(self.spans) - 1)
                continue
            span = self.spans[i]
            span.end = max(span.end, t)
            span.box = box
            if float(row["conf"]) > span.conf:  # keep the best reading of the words
                self._nbytes += len(text.encode()) - len(span.text.encode())
                span.text, span.conf = text, float(row["conf"])
            seen.add(i)
        for i, span in enumerate(self.spans):
            if span.open and i not in seen and span.start <= t:
                span.open, span.end = False, max(span.end, t)
        self._evict()

    def _match(self, text: str) -> int | None:
        norm = _normal(text)
        numbers = _numbers(norm)
        for i, span in enumerate(self.spans):
            other = _normal(span.text)
            if (
                span.open
                and _numbers(other) == numbers
                and difflib.SequenceMatcher(None, norm, other).ratio() >= self.cfg.same_ratio
            ):
                return i
        return None

    def _evict(self) -> None:
        while self._nbytes > self.cfg.budget_bytes and len(self.spans) > 1:
            self._nbytes -= _size(self.spans.pop(0))
            self.evicted += 1

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        """A failed read is dropped (the next gated frame reads the screen again)."""
        if item.id not in self._pending:
            raise KeyError(f"ocr item {item.id} is not in flight")
        self._pending.pop(item.id, None)
        self.counters.failed += 1
        self.counters.dropped += 1
        return []

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def processed_until(self) -> float | None:
        """Stream second up to which frames are read or passed by the gate; None before any frame.

        The time of the oldest read still with Tesseract, else of the latest
        frame the gate looked at (a frame the gate passes over is done with).
        """
        # A copy in one step: the service reads this without the stream's lock while a worker commits.
        pending = list(self._pending.values())
        return min(pending) if pending else self._seen

    def info(self) -> dict[str, float | int]:
        """Size and work of the channel, for ``vmr info``."""
        return {
            "spans": len(self.spans),
            "bytes": self._nbytes,
            "budget_bytes": self.cfg.budget_bytes,
            "reads": self.reads,
            "evicted": self.evicted,
            "in_flight": len(self._pending),
        }

    @property
    def nbytes(self) -> int:
        """Bytes of the kept spans, as the budget counts them."""
        return self._nbytes

    # ------------------------------------------------------------- search
    def timed(self) -> list[TimedText]:
        """The spans as searchable text (open ones run to the latest read, or past it while unchanged)."""
        until = max(self._latest_read, self._latest_still)
        return [_timed(s, until) for s in self.spans]

    def search(self, query: ChannelQuery) -> ChannelAnswer:
        """Spans matching ``query.text`` by words (BM25) and, with MiniLM, by meaning."""
        return self.searcher(query)()

    def searcher(self, query: ChannelQuery) -> Callable[[], ChannelAnswer]:
        """:meth:`timed` is a fresh list of immutable spans; scoring runs in the call, unlocked."""
        spans = self.timed()
        return lambda: self.text_search.answer(spans, query, stream=self.stream, channel=self.name)

    # ---------------------------------------------------------- snapshots
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / "ocr.json",
            {
                "version": OCR_VERSION,
                "spans": [[s.start, s.end, s.text, list(s.box), s.conf, s.open] for s in self.spans],
                "reads": self.reads,
                "evicted": self.evicted,
                "latest_read": self._latest_read,
                "latest_still": self._latest_still,
                "seen": self._seen,
            },
        )

    def restore(self, folder: Path) -> None:
        data = read_versioned(folder / "ocr.json", OCR_VERSION, what="on-screen text")
        if data is None:
            return
        try:
            spans = [
                TextSpan(float(a), float(b), str(t), (int(x), int(y), int(w), int(h)), float(c), bool(o))
                for a, b, t, (x, y, w, h), c, o in data["spans"]
            ]
            reads, evicted, latest = int(data["reads"]), int(data["evicted"]), float(data["latest_read"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexStoreError(f"{folder / 'ocr.json'}: malformed on-screen text: {exc}") from exc
        self.spans, self.reads, self.evicted, self._latest_read = spans, reads, evicted, latest
        seen = data.get("seen")  # absent in snapshots older than the lag figure
        self._seen = None if seen is None else float(seen)
        self._latest_still = float(data.get("latest_still", latest))  # absent in older snapshots
        self._nbytes = sum(_size(s) for s in spans)

    def close(self) -> None:
        self._last_thumb = None


def _timed(s: TextSpan, latest_read: float) -> TimedText:
    end = max(s.end, latest_read) if s.open else s.end
    end = max(end, s.start + 0.5)  # a span read once still covers its frame
    return TimedText(s.start, end, s.text, tuple((s.start, end, w) for w in s.text.split()))


def _size(s: TextSpan) -> int:
    return len(s.text.encode()) + _SPAN_BYTES
