"""The channel contract: one kind of evidence of one stream, sans-I/O.

A stream's evidence comes from channels (visual today; speech and on-screen
text next). A channel never does I/O, never blocks on a model and never
starts a thread: like the websockets protocol core it only turns inputs into
outputs, and a thin shell (:class:`~agent.index.stream_state.StreamState` and
a batch worker) moves the bytes::

    media (Frame, audio chunk) --push--> channel --> [WorkItem, ...]  --> batch worker
    batch worker --commit(item, result) / fail(item, error)--> channel
    query vectors --search--> ChannelAnswer(proposals, calibration)   --> agent.core.fuse

Rules every channel keeps:

- every work item it returns is later answered exactly once per attempt by
  :meth:`Channel.commit` or :meth:`Channel.fail`;
- :meth:`Channel.fail` decides: it returns the items to try again (up to the
  channel's retry limit) or drops them; a dropped item never blocks anything
  that comes after it (its span is simply not retained);
- a channel is not thread-safe; its owner serialises calls (one lock per
  stream in :class:`~agent.index.stream_state.StreamState`).

Snapshots: a channel saves and restores itself, in its own folder (the
stream's folder / the channel's name) unless it declares
:attr:`Channel.keeps_root` (the visual channel, whose files predate
channels, keeps the stream folder's top level). The owner builds a channel
fresh, calls :meth:`Channel.restore` with that folder once before any media
(nothing there: the fresh state stays), and :meth:`Channel.save` with the
same folder at every snapshot; the stream's ``state.json`` is written after
every channel saved.

Adding a channel = one module here implementing :class:`Channel`, and one
line where the stream's channels are built (``agent.index.stream_state``);
a new kind of work (whisper, OCR) also needs its batch function registered
with the service's batch workers.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import numpy as np

from agent.config import QueryConfig
from agent.core.fuse import Calibration, ChannelProposal
from agent.errors import ConfigError
from agent.types import Coverage, Frame

_ids = itertools.count(1)


class AudioMedia(Protocol):
    """What a channel may rely on in an audio chunk (``streams`` media carry more)."""

    @property
    def stream(self) -> str: ...

    @property
    def t(self) -> float:
        """Stream seconds of the chunk's first sample."""
        ...


@dataclass(eq=False, slots=True)
class WorkItem:
    """One unit of work a channel hands to a batch worker.

    ``payload`` is the batch function's input (an (S, S, 3) uint8 super-image
    for the image encoder); ``ref`` is the channel's own handle for the item
    (the :class:`~agent.core.superimage.SuperImage` for the visual channel),
    opaque to the worker. Identity is the object itself (``eq=False``).
    """

    stream: str
    channel: str
    worker: str
    """Which batch worker serves it (``"image"``: the prescreen encoder)."""
    payload: object
    ref: object
    start: float
    end: float
    """Stream seconds the item covers."""
    attempt: int = 0
    """0 for the first try, then 1, 2... for retries."""
    id: int = field(default_factory=lambda: next(_ids))


_E = TypeVar("_E")


def group_by_worker(
    entries: Iterable[_E], item_of: Callable[[_E], WorkItem], known: Collection[str], *, runner: str
) -> dict[str, list[_E]]:
    """``entries`` grouped by the worker their work item names, order kept within a group.

    An item naming a worker that ``runner`` (e.g. "this service") does not run is a
    configuration bug: :class:`~agent.errors.ConfigError` before anything is grouped out,
    never work queued for nobody.
    """
    groups: dict[str, list[_E]] = {}
    for entry in entries:
        item = item_of(entry)
        if item.worker not in known:
            raise ConfigError(
                f"channel {item.channel!r} of stream {item.stream!r} needs a {item.worker!r} worker; "
                f"{runner} runs {sorted(known)}"
            )
        groups.setdefault(item.worker, []).append(entry)
    return groups


@dataclass(frozen=True, slots=True)
class ChannelSize:
    """What a text channel of one stream retains and how far it trails the stream, at one instant."""

    spans: int
    """Utterances (speech) or text spans (on-screen text) retained."""
    bytes: int
    """Their bytes, as the channel's budget counts them."""
    lag_seconds: float
    """Stream seconds ingested minus the channel's processed time (>= 0)."""


@dataclass(slots=True)
class WorkCounters:
    """Failure accounting of one channel (exposed as metrics)."""

    failed: int = 0
    """Item attempts reported failed (a batch failure counts each of its items)."""
    retried: int = 0
    """Failed items handed back for another attempt."""
    dropped: int = 0
    """Items given up after the last attempt (their span is not retained)."""


@dataclass(frozen=True, slots=True)
class ChannelQuery:
    """A query as channels see it: already encoded, range already clipped.

    ``vectors`` maps an encoder role to the query's (dim,) unit vector:
    ``"prescreen"`` and ``"refine"`` for the visual channel (the same vector
    when one encoder does both). Times are stream seconds; None = open end.
    """

    vectors: dict[str, np.ndarray]
    start: float | None = None
    end: float | None = None
    top_k: int = 5
    cfg: QueryConfig = field(default_factory=QueryConfig)
    """Search settings (candidates, refinement, NMS within a channel)."""
    text: str = ""
    """The query's words, for channels that search text (speech, on-screen text); empty: none."""
    channels: frozenset[str] | None = None
    """Only these channels answer (None: every channel of the stream)."""


@dataclass(slots=True)
class ChannelAnswer:
    """What one channel of one stream found for a query.

    ``proposals`` are unranked candidates with raw scores; ``calibrations``
    gives, for each proposal ``kind``, the background the scores are judged
    against (see :func:`agent.core.fuse.calibrate`). ``fuse`` ranks.
    """

    proposals: list[ChannelProposal]
    calibrations: dict[str, Calibration]
    coverage: Coverage | None = None
    notes: list[str] = field(default_factory=list)
    curve: tuple[np.ndarray, np.ndarray] | None = None
    """Per-frame similarity where the channel refined: (times (n,) stream seconds, ascending;
    scores (n,) cosine); None where it did not (anchor-level answers, text channels)."""


class Channel(ABC):
    """One kind of evidence of one stream (see the module docstring for the rules)."""

    name: str
    """Unique within a stream; used in metrics, proposals and folder names."""

    keeps_root: ClassVar[bool] = False
    """True: the channel's files live at the top of the stream's folder (the
    visual channel's historical layout); False: in ``<stream folder>/<name>/``."""

    def __init__(self) -> None:
        self.counters = WorkCounters()

    @abstractmethod
    def push(self, frame: Frame) -> list[WorkItem]:
        """Take one sampled frame; return the work it creates (maybe none)."""

    def push_audio(self, chunk: AudioMedia) -> list[WorkItem]:
        """Take one audio chunk; channels without an audio path ignore it."""
        return []

    @abstractmethod
    def flush(self) -> list[WorkItem]:
        """End of stream (or a pause): return the work still held back."""

    @abstractmethod
    def commit(self, item: WorkItem, result: np.ndarray) -> None:
        """Take the worker's result for ``item`` (KeyError for an item not its own)."""

    @abstractmethod
    def fail(self, item: WorkItem, error: str) -> list[WorkItem]:
        """``item``'s attempt failed: return items to retry, or [] when it is dropped."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Work items handed out and not yet committed or dropped."""

    @abstractmethod
    def search(self, query: ChannelQuery) -> ChannelAnswer:
        """Scored proposals of this channel for an encoded query (no ranking across channels)."""

    def searcher(self, query: ChannelQuery) -> Callable[[], ChannelAnswer]:
        """Called under the stream's lock: :meth:`search` as a call to make after the lock is released.

        A channel whose search state is cheap to copy copies it here and scores in the call, so ingest
        never waits behind a query's scoring; by default the search runs now, under the lock.
        """
        answer = self.search(query)
        return lambda: answer

    def background(self, vector: np.ndarray) -> np.ndarray:
        """(n,) scores of the channel's retained tokens for a prescreen query vector.

        The distribution a watch calibrates this channel's scores against;
        channels whose tokens a prescreen vector does not score have none (0,).
        """
        return np.zeros(0, np.float32)

    def resume_time(self) -> float | None:
        """Latest stream second whose media this channel has stored, or None (nothing, or no notion of it).

        The stream resumes after the latest of its channels' times.
        """
        return None

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Snapshot the channel's state under ``folder`` (each file atomic; the folder may not exist yet)."""

    @abstractmethod
    def restore(self, folder: Path) -> None:
        """Load the state a :meth:`save` left under ``folder`` into this fresh channel.

        Called once, before any media; a missing folder or file means a new
        stream (the fresh state stays). Unreadable files raise
        :class:`~agent.errors.IndexStoreError`.
        """

    @abstractmethod
    def close(self) -> None:
        """Release files (idempotent)."""
