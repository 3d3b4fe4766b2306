"""The speech channel: what was said, as timed words, searchable by the query's words (sans-I/O).

Audio in, windows out, words back::

    AudioChunk (16 kHz mono) --push_audio--> window buffer --(30 s or a gap)--> WorkItem("speech")
    "speech" batch worker (agent.models.whisper, VAD + word timestamps) --commit(item, words)--> guards
    guards --> utterances (start, end, text, words) under a byte budget --> search (BM25, quotes)

Rules chosen:

- **Resampled once.** ``streams`` already delivers 16 kHz mono; a chunk at
  another rate is resampled here (linear interpolation), never twice.
- **Windows.** ``window_seconds`` of sound per whisper call from a live
  source: 30 s (whisper's context), for latency. From a recorded source
  (:attr:`SpeechChannel.recorded`, set by its owner) ``recorded_window_seconds``
  (300 s): whisper encodes 30 s of mel whatever a window holds, and the VAD
  packs a long window's sparse speech into fewer of those passes. A jump in the chunk times (a gap, a
  reconnect) ends the window early so no window spans a hole; ``flush`` sends
  the rest. A word straddling a window edge may be cut (whisper's own
  behaviour on long audio).
- **Hallucination guards**, per segment: dropped when ``no_speech_prob`` >
  ``max_no_speech_prob`` and ``avg_logprob`` < ``min_avg_logprob`` (whisper's
  own silence rule), when its gzip ``compression_ratio`` > ``max_compression_ratio``
  (a looping decoder), when its mean word probability < ``min_word_prob``,
  or when its text repeats one of the last ``repeat_memory`` kept utterances
  (the classic "Thank you." every window of noise). The worker's VAD already
  keeps most noise from the model; the guards catch what slips through.
- **Budget.** Utterances are kept while their bytes (UTF-8 text plus 12 bytes
  per word time) stay within ``budget_bytes``; the oldest are evicted first.
- **Snapshot.** ``<stream>/speech/speech.json`` (atomic, versioned). Audio
  still buffered is not saved: a restart loses at most one window.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.base import AudioMedia, Channel, ChannelAnswer, ChannelQuery, WorkItem
from agent.channels.text_search import Embed, FreshSpans, TextSearch, TimedText
from agent.config import SpeechConfig
from agent.errors import IndexStoreError
from agent.models.whisper import SAMPLE_RATE, WORD_DTYPE
from agent.store.atomic import write_json
from agent.store.versioned import read_versioned
from agent.types import Frame

__all__ = ["SpeechChannel", "SpeechConfig", "guarded_segments"]

SPEECH_WORKER = "speech"
SPEECH_VERSION = 1
_JUMP = 0.25
"""Seconds between the buffer's end and a chunk's time that count as a gap."""
_WORD_TIME_BYTES = 12


@dataclass(slots=True)
class SpeechCounters:
    windows: int = 0
    seconds: float = 0.0
    segments_dropped: int = 0
    """Segments rejected by the hallucination guards."""
    evicted: int = 0
    """Utterances evicted by the byte budget."""


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def guarded_segments(words: np.ndarray, cfg: SpeechConfig) -> list[np.ndarray]:
    """The segments of a window's :data:`~agent.models.whisper.WORD_DTYPE` rows that pass the guards.

    Each returned array holds one segment's words in time order; repeated-text
    suppression across windows is the channel's (it needs the kept history).
    """
    out = []
    for seg in np.unique(words["segment"]):
        rows = words[words["segment"] == seg]
        head = rows[0]
        silent = head["no_speech_prob"] > cfg.max_no_speech_prob and head["avg_logprob"] < cfg.min_avg_logprob
        looping = head["compression_ratio"] > cfg.max_compression_ratio
        unsure = float(np.mean(rows["prob"])) < cfg.min_word_prob
        if not (silent or looping or unsure):
            out.append(rows)
    return out


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples
    n = max(1, round(len(samples) * SAMPLE_RATE / rate))
    return np.interp(np.arange(n) * (rate / SAMPLE_RATE), np.arange(len(samples)), samples).astype(np.float32)


class SpeechChannel(Channel):
    """Timed transcripts of one stream's sound (see the module docstring); not thread-safe."""

    name = "speech"

    def __init__(self, stream: str, cfg: SpeechConfig | None = None, *, embed: Embed | None = None) -> None:
        """``embed``: MiniLM sentence vectors for semantic search (None: lexical only)."""
        super().__init__()
        self.text_search = TextSearch(embed)
        self.stream = stream
        self.cfg = cfg or SpeechConfig()
        self.speech = SpeechCounters()
        self.utterances: list[TimedText] = []
        self._nbytes = 0
        self._parts: list[np.ndarray] = []
        self._n = 0
        self._t: float | None = None
        self._pending: dict[int, float] = {}
        """Work in flight: item id -> stream second it starts at (what the lag waits on)."""
        self._done = 0.0
        """End of the latest window committed or dropped (stream seconds)."""
        self.fresh = FreshSpans()
        """Utterances kept since the service last looked (for the watches)."""
        self.recorded = False
        """The sound comes from a recording (ingested faster than it plays): long windows."""

    @property
    def window_seconds(self) -> float:
        """Seconds of sound per whisper call now (see the module docstring)."""
        return self.cfg.recorded_window_seconds if self.recorded else self.cfg.window_seconds

    # ------------------------------------------------------------- ingest
    def push(self, frame: Frame) -> list[WorkItem]:
        return []

    def push_audio(self, chunk: AudioMedia) -> list[WorkItem]:
        """Buffer a chunk (``samples``, ``sample_rate`` as on ``streams.media.AudioChunk``); full windows out."""
        raw: Any = getattr(chunk, "samples", None)
        if raw is None:
            return []
        samples = _resample(
            np.asarray(raw, np.float32).reshape(-1), int(getattr(chunk, "sample_rate", SAMPLE_RATE))
        )
        out: list[WorkItem] = []
        if self._t is not None and abs(chunk.t - (self._t + self._n / SAMPLE_RATE)) > _JUMP:
            out += self.flush()
        if self._t is None:
            self._t = float(chunk.t)
        self._parts.append(samples)
        self._n += len(samples)
        window = round(self.window_seconds * SAMPLE_RATE)
        while self._n >= window:
            out.append(self._cut(window))
        return out

    def flush(self) -> list[WorkItem]:
        if self._n == 0:
            self._t = None
            return []
        item = self._cut(self._n)
        self._t = None
        return [item]

    def _cut(self, n: int) -> WorkItem:
        assert self._t is not None
        joined = np.concatenate(self._parts)
        head, rest = joined[:n], joined[n:]
        self._parts, self._n = ([rest] if len(rest) else []), len(rest)
        start = self._t
        self._t += n / SAMPLE_RATE
        item = WorkItem(
            self.stream, self.name, SPEECH_WORKER, np.ascontiguousarray(head), None, start, self._t
        )
        self._pending[item.id] = item.start
        return item

    # ------------------------------------------------------------ results
    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        """Take a window's words (a :data:`~agent.models.whisper.WORD_DTYPE` array, window seconds)."""
        if item.id not in self._pending:
            raise KeyError(f"speech item {item.id} is not in flight")
        self._pending.pop(item.id, None)
        words = np.asarray(result)
        if words.dtype != WORD_DTYPE:
            raise ValueError(f"speech results must have WORD_DTYPE, got {words.dtype}")
        self.speech.windows += 1
        self.speech.seconds += item.end - item.start
        self._done = max(self._done, item.end)
        segments = guarded_segments(words, self.cfg) if len(words) else []
        self.speech.segments_dropped += len(np.unique(words["segment"])) - len(segments) if len(words) else 0
        for rows in segments:
            self._keep(item.start, rows)

    def _keep(self, offset: float, rows: np.ndarray) -> None:
        text = "".join(str(w) for w in rows["word"]).strip()
        recent = (
            {_normal(u.text) for u in self.utterances[-self.cfg.repeat_memory :]}
            if self.cfg.repeat_memory
            else set()
        )
        if not text or _normal(text) in recent:
            self.speech.segments_dropped += 1
            return
        words = tuple(
            (round(offset + float(r["start"]), 3), round(offset + float(r["end"]), 3), str(r["word"]))
            for r in rows
        )
        utt = TimedText(words[0][0], max(words[-1][1], words[0][0] + 0.01), text, words)
        self.utterances.append(utt)
        self.fresh.add(utt)
        self.utterances.sort(key=lambda u: u.start)
        self._nbytes += _size(utt)
        while self._nbytes > self.cfg.budget_bytes and len(self.utterances) > 1:
            self._nbytes -= _size(self.utterances.pop(0))
            self.speech.evicted += 1

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        if item.id not in self._pending:
            raise KeyError(f"speech item {item.id} is not in flight")
        self.counters.failed += 1
        self._pending.pop(item.id, None)
        if item.attempt < self.cfg.retries:
            self.counters.retried += 1
            again = WorkItem(
                item.stream,
                item.channel,
                item.worker,
                item.payload,
                item.ref,
                item.start,
                item.end,
                item.attempt + 1,
            )
            self._pending[again.id] = again.start
            return [again]
        self.counters.dropped += 1
        self._done = max(self._done, item.end)
        return []

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def processed_until(self) -> float | None:
        """Stream second up to which the sound is transcribed (or given up); None before any sound.

        The start of the oldest window still with whisper, else the start of
        the sound still buffered (not yet a window), else the end of the
        last window: the lag of a phrase becoming searchable includes the
        buffering.
        """
        # A copy in one step: the service reads this without the stream's lock while a worker commits.
        pending = list(self._pending.values())
        if pending:
            return min(pending)
        if self._t is not None:
            return self._t
        return self._done if self.speech.windows or self.counters.dropped else None

    def info(self) -> dict[str, float | int]:
        """Size and work of the channel, for ``vmr info`` and metrics."""
        return {
            "utterances": len(self.utterances),
            "bytes": self._nbytes,
            "budget_bytes": self.cfg.budget_bytes,
            "windows": self.speech.windows,
            "audio_seconds": round(self.speech.seconds, 3),
            "segments_dropped": self.speech.segments_dropped,
            "evicted": self.speech.evicted,
            "last_said": round(self.utterances[-1].end, 3) if self.utterances else 0.0,
            "in_flight": len(self._pending),
        }

    @property
    def nbytes(self) -> int:
        """Bytes of the kept utterances, as the budget counts them."""
        return self._nbytes

    # ------------------------------------------------------------- search
    def search(self, query: ChannelQuery) -> ChannelAnswer:
        """Utterances matching ``query.text`` by words (BM25) and, with MiniLM, by meaning."""
        return self.searcher(query)()

    def searcher(self, query: ChannelQuery) -> Callable[[], ChannelAnswer]:
        """The utterance list is copied (its spans are immutable); scoring runs in the call, unlocked."""
        spans = list(self.utterances)
        return lambda: self.text_search.answer(spans, query, stream=self.stream, channel=self.name)

    # ---------------------------------------------------------- snapshots
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / "speech.json",
            {
                "version": SPEECH_VERSION,
                "utterances": [[u.start, u.end, u.text, [list(w) for w in u.words]] for u in self.utterances],
                "counters": [
                    self.speech.windows,
                    self.speech.seconds,
                    self.speech.segments_dropped,
                    self.speech.evicted,
                ],
                "done": self._done,
            },
        )

    def restore(self, folder: Path) -> None:
        data = read_versioned(folder / "speech.json", SPEECH_VERSION, what="speech transcript")
        if data is None:
            return
        try:
            utterances = [
                TimedText(float(s), float(e), str(t), tuple((float(a), float(b), str(w)) for a, b, w in ws))
                for s, e, t, ws in data["utterances"]
            ]
            windows, seconds, dropped, evicted = data["counters"]
            counters = SpeechCounters(int(windows), float(seconds), int(dropped), int(evicted))
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexStoreError(f"{folder / 'speech.json'}: malformed speech transcript: {exc}") from exc
        self.utterances, self.speech = utterances, counters
        self._done = float(data.get("done", 0.0))  # absent in snapshots older than the lag figure
        self._nbytes = sum(_size(u) for u in self.utterances)

    def close(self) -> None:
        self._parts, self._n, self._t = [], 0, None


def _size(u: TimedText) -> int:
    return len(u.text.encode()) + _WORD_TIME_BYTES * len(u.words)
