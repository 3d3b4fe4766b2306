"""Everything one stream keeps: its channels, clock map and meta.

Layout under the stream's folder::

    memory.npz    visual channel: anchors (SVD bases, representatives) - atomic snapshot
    cheap.npz     visual channel: cheap-index ring buffer               - atomic snapshot
    ingest.json   visual channel: ingest counters                       - atomic snapshot
    frames/       visual channel: frame-store chunk files (append-only, self-healing)
    <channel>/    any other channel's files (its own folder)
    state.json    clock map, meta (resume token, offset), a counter summary, version,
                  generation, saved_at and the manifest of the generation's files
                  (agent.index.state_file)
    quarantine/   snapshots that failed to load, set aside (see agent.store.snapshot)

Each channel saves and restores itself (:meth:`Channel.save`,
:meth:`Channel.restore`) in its own folder, or at the top level when it
declares :attr:`Channel.keeps_root` (the visual channel, whose layout
predates channels). A snapshot is one *generation* of all these files,
staged and committed by one rename (:mod:`agent.store.snapshot`): a crash
(``kill -9``) leaves the previous generation or the new one, never a mix;
on load every file is checked against the manifest in ``state.json``, and
a bad file, a wrong type in ``state.json`` or an unreadable channel
snapshot is an :class:`~agent.errors.IndexStoreError`.

A :class:`StreamState` is the thin shell around its sans-I/O channels: it
fans media out to every channel, routes worker results and failures back to
the channel that owns the work item, and serialises every mutation and
search with its own lock, so callers (the CLI's inline encoder, the
service's batch workers and query threads) never lock anything themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.base import (
    AudioMedia,
    Channel,
    ChannelAnswer,
    ChannelQuery,
    ChannelSize,
    WorkCounters,
    WorkItem,
)
from agent.channels.ingest import IngestStats
from agent.channels.ocr import OcrChannel
from agent.channels.refine import VisualPlan
from agent.channels.retrieval import FrameEmbeddingCache
from agent.channels.speech import SpeechChannel
from agent.channels.text_search import TimedText
from agent.channels.visual import VisualChannel
from agent.config import IndexConfig
from agent.core.memory import Memory
from agent.errors import IndexStoreError, VmrError
from agent.index.state_file import ClockMap, read_state, state_record
from agent.models.encoder import Encoder
from agent.store import snapshot
from agent.store.frame_store import FrameStore
from agent.types import Frame

_ERROR_CHARS = 200


class StreamState:
    """One stream's channels, clock map and counters (thread-safe facade)."""

    def __init__(
        self,
        root: Path,
        stream: str,
        cfg: IndexConfig,
        *,
        dim: int,
        image_size: int,
        refine: Encoder | None = None,
        cache: FrameEmbeddingCache | None = None,
        channels: Sequence[Channel] = (),
    ) -> None:
        """``channels``: more channels besides the visual one (fresh; each is restored here).

        Raises IndexStoreError / SnapshotVersionError for an unreadable
        snapshot, ValueError for two channels of one name.
        """
        self.root = Path(root)
        self.stream = stream
        self.cfg = cfg
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.channels: dict[str, Channel] = {}
        self.clock = ClockMap()
        """(stream time, wall clock) pairs of a live stream (noted under the lock, read without it)."""
        self.meta: dict[str, Any] = {}
        self.generation = 0
        """Generation of the last snapshot committed (0: none yet)."""
        self.last_snapshot: float | None = None
        """Unix time of the last good snapshot (from ``state.json`` after a restart); None: never."""
        self.snapshot_error: str | None = None
        """Why the last snapshot failed; None after a good one."""
        self.last_work_error: str | None = None
        """The latest failed work item's error (trimmed), for a stream that ends with nothing retained."""
        self.ingested_until: float | None = None
        """Latest stream second of media pushed (a frame's time, an audio chunk's start); None: none yet."""
        self._load_state()
        # One line per channel: the speech and text channels are added here.
        self._visual = VisualChannel(
            self.root, stream, cfg, dim=dim, image_size=image_size, refine=refine, cache=cache
        )
        try:
            self.add_channel(self._visual)
            for channel in channels:
                self.add_channel(channel)
        except BaseException:  # an unreadable snapshot: release the files opened so far
            self._visual.close()
            self.close()
            raise

    def add_channel(self, channel: Channel) -> None:
        """Restore a fresh ``channel`` from its folder and let it take the stream's media from now on."""
        with self._lock:
            if channel.name in self.channels:
                raise ValueError(f"stream {self.stream!r} already has a channel {channel.name!r}")
            try:
                channel.restore(self.folder_of(channel))
            except VmrError:
                raise
            except Exception as exc:  # a damaged file a channel did not translate: still typed
                raise IndexStoreError(
                    f"stream {self.stream!r}: channel {channel.name!r} cannot read its snapshot: {exc!r}"
                ) from exc
            self.channels[channel.name] = channel

    def folder_of(self, channel: Channel) -> Path:
        """Where ``channel`` keeps its files: the stream's folder, or its own sub-folder."""
        return self.root if channel.keeps_root else self.root / channel.name

    # -------------------------------------------------- the visual channel
    @property
    def visual(self) -> VisualChannel:
        """Every stream's first channel: frames, memory and stored frames (thumbnails, captions)."""
        return self._visual

    @property
    def memory(self) -> Memory:
        """The visual channel's memory (read-only use: tokens, spans, info)."""
        return self.visual.memory

    @property
    def store(self) -> FrameStore | None:
        """The stream's stored frames (thumbnails, refinement, captions); None when disabled."""
        return self.visual.store

    @property
    def stats(self) -> IngestStats:
        """Frames, times and encoder passes of the stream: the visual channel's ingest counters.

        Every stream has a visual channel and it sees every frame, so its
        frame counts and times are the stream's; other channels keep their
        own counters (:meth:`counters` for work failures).
        """
        return self.visual.stats

    # ---------------------------------------------------------------- ingest
    def push(self, frame: Frame) -> list[WorkItem]:
        """Fan one frame out to every channel; returns their work (blocking: JPEG store)."""
        with self._lock:
            self.clock.note(frame.t, frame.wall)
            self._ingested(frame.t)
            return [item for ch in self.channels.values() for item in ch.push(frame)]

    def push_audio(self, chunk: AudioMedia) -> list[WorkItem]:
        """Fan one audio chunk out to every channel (channels without audio ignore it)."""
        with self._lock:
            self._ingested(chunk.t)
            return [item for ch in self.channels.values() for item in ch.push_audio(chunk)]

    def set_recorded(self, recorded: bool) -> None:
        """Tell the audio channels whether the sound is a recording (speech: longer windows)."""
        with self._lock:
            for ch in self.channels.values():
                if isinstance(ch, SpeechChannel):
                    ch.recorded = recorded

    def _ingested(self, t: float) -> None:
        self.ingested_until = t if self.ingested_until is None else max(self.ingested_until, t)

    def text_sizes(self) -> dict[str, ChannelSize]:
        """Spans, bytes and lag of each text channel (speech, on-screen text), read without the lock.

        Lag: stream seconds ingested minus the channel's processed time
        (:meth:`SpeechChannel.processed_until`, :meth:`OcrChannel.processed_until`), floored at 0;
        0 before the channel saw media. Read lock-free (metrics and status must not wait behind a
        query's lock): the figures are plain attributes, an instant old at worst.
        """
        out = {}
        # After a restart (or offline, ``vmr info``) nothing was pushed yet: the visual channel's last time.
        ingested = self.ingested_until if self.ingested_until is not None else self.stats.last_time
        for name, ch in list(self.channels.items()):
            if isinstance(ch, SpeechChannel):
                spans, nbytes = len(ch.utterances), ch.nbytes
            elif isinstance(ch, OcrChannel):
                spans, nbytes = len(ch.spans), ch.nbytes
            else:
                continue
            done = ch.processed_until()
            lag = 0.0 if ingested is None or done is None else max(0.0, ingested - done)
            out[name] = ChannelSize(spans=spans, bytes=nbytes, lag_seconds=round(lag, 3))
        return out

    def text_near(self, ranges: Sequence[tuple[float, float]], pad: float) -> list[tuple[str, TimedText]]:
        """(channel, span) of every transcript and on-screen text span within ``pad`` seconds of a range.

        In time order; what the LLM stage shows as words said or shown near its candidates.
        """
        with self._lock:
            out: list[tuple[str, TimedText]] = []
            for name, ch in self.channels.items():
                if isinstance(ch, SpeechChannel):
                    spans = list(ch.utterances)
                elif isinstance(ch, OcrChannel):
                    spans = ch.timed()
                else:
                    continue
                out += [
                    (name, s)
                    for s in spans
                    if any(s.end >= a - pad and s.start <= b + pad for a, b in ranges)
                ]
        return sorted(out, key=lambda cs: cs[1].start)

    def fresh_text(self, channel: str) -> list[TimedText]:
        """Spans ``channel`` kept since the last call (oldest first; empty for a non-text channel).

        Lock-free (see :class:`~agent.channels.text_search.FreshSpans`): called on the event loop.
        """
        ch = self.channels.get(channel)
        return ch.fresh.take() if isinstance(ch, SpeechChannel | OcrChannel) else []

    def flush(self) -> list[WorkItem]:
        """End of stream or pause: every channel's held-back work."""
        with self._lock:
            return [item for ch in self.channels.values() for item in ch.flush()]

    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        """Hand a worker's result to the channel that owns ``item`` (KeyError if none does)."""
        with self._lock:
            self._channel(item).commit(item, result)

    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        """``item``'s attempt failed: its channel retries (returned items) or drops it."""
        with self._lock:
            self.last_work_error = error[:_ERROR_CHARS]
            return self._channel(item).fail(item, error)

    @property
    def in_flight(self) -> int:
        """Work items handed out and not yet committed or dropped, all channels."""
        with self._lock:
            return sum(ch.in_flight for ch in self.channels.values())

    def counters(self) -> dict[str, WorkCounters]:
        """Failure counters by channel name (copies)."""
        with self._lock:
            return {
                n: WorkCounters(c.counters.failed, c.counters.retried, c.counters.dropped)
                for n, c in self.channels.items()
            }

    def gaps(self) -> list[tuple[float, float]]:
        """Holes ``(start, end)`` in the visual memory's coverage, in time order.

        Read without the stream's lock (query threads hold it while they
        refine; a status read must not wait behind them): the memory appends
        and stretches its intervals in place, so a concurrent read sees the
        intervals of an instant ago at worst.
        """
        spans = self.memory.spans()
        return [(a[1], b[0]) for a, b in pairwise(spans) if b[0] > a[1]]

    def _channel(self, item: WorkItem) -> Channel:
        channel = self.channels.get(item.channel)
        if channel is None or item.stream != self.stream:
            raise KeyError(f"work item of {item.stream}/{item.channel} does not belong to {self.stream}")
        return channel

    # ---------------------------------------------------------------- search
    def search(self, query: ChannelQuery) -> dict[str, ChannelAnswer]:
        """Every channel's proposals for an encoded query, fully refined (blocking: refine encoder, frame reads).

        The prescreen runs under the stream's lock; refinement does not, so
        ingest never waits for a query's encoder work.
        """
        answers, plan = self.plan(query)
        answers[self.visual.name] = self.visual.refine_plans({self.stream: plan})[self.stream]
        return answers

    def plan(self, query: ChannelQuery) -> tuple[dict[str, ChannelAnswer], VisualPlan]:
        """Every other channel's answer, and the visual channel's prescreen and refine plan.

        Under the lock: the prescreen, and a copy of each other channel's search state
        (:meth:`Channel.searcher`); the text channels score their copies after it is released.

        The plan holds no reference to mutable channel state but the frame
        store (thread-safe): refine it with :meth:`VisualChannel.refine_plans`
        without this lock. ``query.channels`` restricts which other channels
        answer (a name the stream lacks is not an error: other streams may
        have it); the visual answer is dropped later, where it is assembled.
        """
        with self._lock:
            searchers = {
                name: ch.searcher(query)
                for name, ch in self.channels.items()
                if ch is not self.visual and (query.channels is None or name in query.channels)
            }
            plan = self.visual.plan(query)
        return {name: run() for name, run in searchers.items()}, plan

    def background(self, vector: np.ndarray, channel: str = VisualChannel.name) -> np.ndarray:
        """(n,) scores of one channel's retained tokens for a prescreen query vector (watch calibration).

        Per channel: score distributions of different channels are not
        comparable, so they are never pooled (:meth:`backgrounds` gives each).
        KeyError for a channel the stream does not have.
        """
        with self._lock:
            return self.channels[channel].background(vector)

    def backgrounds(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Every channel's background scores for a prescreen query vector, by channel name."""
        with self._lock:
            return {name: ch.background(vector) for name, ch in self.channels.items()}

    def resume_time(self) -> float | None:
        """Latest stream time any channel has stored (frames at or before it are skipped); None: nothing."""
        with self._lock:
            known = [t for ch in self.channels.values() if (t := ch.resume_time()) is not None]
            return max(known) if known else None

    # ----------------------------------------------------------------- clock
    def wall_of(self, t: float) -> float | None:
        """Wall-clock time of stream time ``t`` (None for recordings; :meth:`ClockMap.wall_of`)."""
        return self.clock.wall_of(t)

    # ------------------------------------------------------------ snapshots
    def save(self, meta: dict[str, Any] | None = None) -> None:
        """Snapshot every channel, counters and clock as one new generation (``meta`` merged first).

        Raises IndexStoreError when the disk refuses (the previous generation
        stays whole); :attr:`snapshot_error` then says why, until a snapshot
        succeeds again and sets :attr:`last_snapshot`.
        """
        with self._lock:
            if meta:
                self.meta.update(meta)
            saved_at = time.time()
            try:
                staged = snapshot.stage(self.root)
                for ch in self.channels.values():
                    ch.save(staged if ch.keeps_root else staged / ch.name)
                record = state_record(
                    self.stream,
                    generation=self.generation + 1,
                    saved_at=saved_at,
                    stats=self.stats,
                    clock=self.clock,
                    meta=self.meta,
                )
                snapshot.commit(self.root, staged, record)
            except (OSError, IndexStoreError) as exc:
                self.snapshot_error = str(exc)
                if isinstance(exc, IndexStoreError):
                    raise
                raise IndexStoreError(f"snapshot of stream {self.stream!r} failed: {exc}") from exc
            self.generation += 1
            self.last_snapshot, self.snapshot_error = saved_at, None

    def close(self) -> None:
        """Close every channel (idempotent)."""
        with self._lock:
            for ch in self.channels.values():
                ch.close()

    def _load_state(self) -> None:
        state = read_state(self.root)
        if state is None:
            return
        # "stats" is a summary; the channels restore their own counters (old snapshots: from it).
        self.clock = ClockMap(*state.clock)
        self.meta = dict(state.meta)
        self.generation, self.last_snapshot = state.generation, state.saved_at
