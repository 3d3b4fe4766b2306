"""An index directory: settings, encoders and the state of each stream.

Layout::

    DIR/index.json          format version, settings, encoder identity, streams
    DIR/streams/<id>/...    one StreamState per stream (see agent.index.stream_state)

The same object backs the CLI (one stream per ingested file) and the service
(many live streams). :meth:`VideoIndex.ingest` encodes in its own worker
thread (:mod:`agent.index.encode_pipeline`); the service hands each stream's
work items to shared batch workers instead.
Queries search every channel of every requested stream and rank once, in
:func:`agent.core.fuse.fuse` (:func:`agent.index.answers.answer`).

Isolation (the service opens its index with ``isolate=True``): a stream
whose snapshot cannot be loaded does not stop the others. Its bad files are
moved to ``streams/<id>/quarantine/<time>/`` (never deleted; the frame store
stays, it heals itself), the stream opens empty, and the typed error is kept
in :attr:`VideoIndex.load_errors` for its owner to report the stream as
failed. Without ``isolate`` (the CLI) the error is raised as it is.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.base import Channel, ChannelAnswer, WorkItem
from agent.channels.ocr import OCR_WORKER, OcrChannel
from agent.channels.query import Query, QueryVectors, first_vectors
from agent.channels.refine import FrameEmbeddingCache, VisualPlan, refine_plans
from agent.channels.speech import SPEECH_WORKER, SpeechChannel
from agent.channels.text_search import SENTENCE_ROLE
from agent.channels.visual import IMAGE_WORKER, images_of
from agent.config import Settings
from agent.errors import ConfigError, IndexStoreError, UnknownStreamError
from agent.index.answers import PendingQuery, channel_query
from agent.index.encode_pipeline import EncodePipeline, Entry, PipelineWaits
from agent.index.info import index_info
from agent.index.manifest import (
    INDEX_VERSION,
    STREAM_ID,
    check_stream_id,
    differences,
    follow_index,
    manifest_settings,
    read_manifest,
    stored,
    stream_ids,
)
from agent.index.stream_state import StreamState
from agent.models.encoder import Encoder, encoder_for
from agent.models.ocr import TesseractReader
from agent.models.sentences import SentenceEncoder
from agent.models.whisper import WhisperSettings, WhisperTranscriber
from agent.store.atomic import write_json
from agent.store.snapshot import quarantine
from agent.thread_priority import COMPUTE_THREADS, EncoderPriority
from agent.types import AudioChunk, Frame, QueryResult

log = logging.getLogger(__name__)

_UNSET = np.zeros(0, np.float32)
"""The refine vector of a query until refinement encodes it (:func:`first_vectors`)."""


class VideoIndex:
    """Settings, encoders and per-stream state under one directory."""

    def __init__(self, root: Path, settings: Settings, *, isolate: bool = False) -> None:
        self.root = Path(root)
        self.settings = settings
        self.isolate = isolate
        """Set bad snapshots aside and open their streams empty (see the module docstring)."""
        self.load_errors: dict[str, IndexStoreError] = {}
        """Why a stream's snapshot was set aside, by stream (``isolate`` only)."""
        self.prescreen: Encoder = encoder_for(settings.prescreen)  # a cluster's pool, or loaded here
        self.refine: Encoder = encoder_for(settings.refine) if settings.refine else self.prescreen
        self.streams: dict[str, StreamState] = {}
        self.cache, self.query_vectors = FrameEmbeddingCache(), QueryVectors()
        self._workers: dict[str, Callable[[list[WorkItem]], list[np.ndarray]]] = {
            IMAGE_WORKER: self._encode_images
        }
        """Inline batch functions by worker name (:attr:`WorkItem.worker`)."""
        self._pipe: EncodePipeline | None = None  # the encoder stage of the ingest in progress
        self.encode_in_thread = True  # False: ingest() encodes inline (the serial baseline, the profile)
        self.ingest_waits = PipelineWaits()
        """The encoder stage's busy and caller-blocked seconds of the latest :meth:`ingest`."""
        self.ingest_priority = EncoderPriority()
        """What the latest :meth:`ingest` did to the encoder's threads (``index.encoder_nice``)."""
        self.transcriber: WhisperTranscriber | None = None
        sp, oc = settings.speech, settings.ocr
        if sp.enabled:
            # Loaded on the first window (assembly and model load take seconds).
            threads = settings.prescreen.threads
            whisper = WhisperSettings(sp.model, sp.language, threads=threads, batch_size=sp.batch_size)
            self.transcriber = WhisperTranscriber(whisper)
            self._workers[SPEECH_WORKER] = self._transcribe
        # One MiniLM for every text channel that searches by meaning; loaded on the first query.
        self.sentences = (
            SentenceEncoder() if (sp.enabled and sp.semantic) or (oc.enabled and oc.semantic) else None
        )
        self.reader: TesseractReader | None = None
        if settings.ocr.enabled:
            self.reader = TesseractReader(settings.ocr.language, min_short_side=settings.ocr.min_short_side)
            self._workers[OCR_WORKER] = self._read_text
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls, root: Path, settings: Settings, *, skip: Collection[str] = (), isolate: bool = False
    ) -> VideoIndex:
        """Open ``root`` for writing, creating it; existing streams are kept.

        ``skip``: stream folders not to open (streams the service removed:
        their files stay until purged); ``isolate``: see the module docstring.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise IndexStoreError(f"{root} is not a directory: an index is a folder (use a new --index path)")
        if (root / "index.json").exists():
            # Through the model: an index written before a settings field existed has its default.
            known = manifest_settings(root, cls.read_manifest(root))
            settings = follow_index(settings, known)
            if stored(known) != stored(settings):
                diff = "; ".join(differences(stored(known), stored(settings)))
                raise ConfigError(
                    f"{root} was built with other settings ({diff}); use a new --index directory"
                )
        idx = cls(root, settings, isolate=isolate)
        idx._open_streams(skip)
        idx.write_manifest()
        return idx

    @classmethod
    def open(cls, root: Path) -> VideoIndex:
        """Open an existing index with the settings it was built with."""
        settings = manifest_settings(Path(root), cls.read_manifest(Path(root)))
        idx = cls(Path(root), settings)
        idx._open_streams()
        return idx

    read_manifest = staticmethod(read_manifest)

    def write_manifest(self) -> None:
        write_json(
            self.root / "index.json",
            {
                "version": INDEX_VERSION,
                "settings": self.settings.model_dump(mode="json"),
                "encoder": {
                    "prescreen": self.prescreen.name,
                    "refine": self.refine.name,
                    "dim": self.prescreen.dim,
                    "meaningless": self.prescreen.meaningless or self.refine.meaningless,
                },
                "streams": sorted(self.streams),
            },
        )

    def _open_streams(self, skip: Collection[str] = ()) -> None:
        for stream in stream_ids(self.root):
            if stream not in skip:
                self.stream(stream, create=False)

    def stream(self, stream: str, *, create: bool = True) -> StreamState:
        """The state of ``stream``, created on first use when ``create``."""
        with self._lock:
            st = self.streams.get(stream)
            if st is None:
                if not create and not (self.root / "streams" / stream).is_dir():
                    raise UnknownStreamError(f"unknown stream {stream!r}")
                check_stream_id(stream)
                st = self._open_state(stream) if self.isolate else self._new_state(stream)
                self.streams[stream] = st
            return st

    def _new_state(self, stream: str) -> StreamState:
        return StreamState(
            self.root / "streams" / stream,
            stream,
            self.settings.index,
            dim=self.prescreen.dim,
            image_size=self.prescreen.image_size,
            refine=self.refine,
            cache=self.cache,
            channels=self._extra_channels(stream),
        )

    def _open_state(self, stream: str) -> StreamState:
        """The stream's state; a bad snapshot is set aside and the stream opens empty (isolate)."""
        folder = self.root / "streams" / stream
        # First the snapshot files only; should the stream still not open, its frames too.
        for keep in (("frames",), ()):
            try:
                return self._new_state(stream)
            except IndexStoreError as exc:
                where = quarantine(folder, f"{type(exc).__name__}: {exc}", keep=keep)
                log.error("stream %s: bad snapshot set aside in %s: %s", stream, where, exc)
                self.load_errors[stream] = type(exc)(
                    f"stream {stream!r}: its snapshot could not be loaded ({exc}); "
                    f"the files were set aside in {where.relative_to(folder)}"
                )
        return self._new_state(stream)

    def _extra_channels(self, stream: str) -> list[Channel]:
        """The channels a stream has besides the visual one, as the settings ask."""
        sp, oc = self.settings.speech, self.settings.ocr
        embed = self.sentences.encode if self.sentences is not None else None
        more: list[Channel] = []
        if sp.enabled:
            more.append(SpeechChannel(stream, sp, embed=embed if sp.semantic else None))
        if oc.enabled:
            more.append(OcrChannel(stream, oc, embed=embed if oc.semantic else None))
        return more

    def remove(self, stream: str, *, purge: bool = False) -> None:
        """Forget a stream in this process; its files stay on disk unless ``purge``.

        ``purge`` deletes the stream's folder — snapshots, stored frames
        (thumbnails), quarantined files — and also works for a stream not
        open here (one removed earlier). UnknownStreamError when there is
        nothing to remove; IndexStoreError when the disk refuses.
        """
        with self._lock:
            st = self.streams.pop(stream, None)
            self.load_errors.pop(stream, None)
        folder = self.root / "streams" / stream
        if st is None and not (purge and STREAM_ID.match(stream) and folder.is_dir()):
            raise UnknownStreamError(f"unknown stream {stream!r}")
        if st is not None:
            st.close()
        if purge:
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise IndexStoreError(f"cannot purge stream {stream!r}: {exc}") from exc

    def save(self) -> None:
        """Snapshot every stream, then the manifest."""
        for st in list(self.streams.values()):
            st.save()
        self.write_manifest()

    def close(self) -> None:
        """Save and close (idempotent); the streams are closed even when saving fails (then raised)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.save()
        finally:
            for st in self.streams.values():
                st.close()

    def __enter__(self) -> VideoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- ingest
    def ingest(
        self,
        frames: Iterable[Frame | AudioChunk],
        *,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        """Encode and store ``frames``, batched by the encoder batch size.

        Batches are encoded in a worker thread while the next frames are pushed and
        committed here in order (:mod:`agent.index.encode_pipeline`), all by the return;
        ``on_frame`` runs after each push (the memory may lag: :meth:`settle`). The
        encoder's threads run at ``index.encoder_nice``/``encoder_sched`` until the return
        (:mod:`agent.thread_priority`; threaded encoding only).
        """
        batch: list[Entry] = []
        bs, touched = self.prescreen.batch_size, set[str]()
        cfg = self.settings.index
        prio = EncoderPriority(cfg.encoder_nice, cfg.encoder_sched)
        self.ingest_priority = prio
        threaded = self.encode_in_thread
        on_start = prio.lower_current if threaded and prio.active else None
        with EncodePipeline(self._workers, runner="this index", threaded=threaded, on_start=on_start) as pipe:
            self._pipe = pipe
            self.ingest_waits = pipe.waits
            if on_start is not None:
                prio.lower(COMPUTE_THREADS.live())
            try:
                for frame in frames:
                    st = self.stream(frame.stream)
                    if frame.stream not in touched:
                        st.set_recorded(True)  # inline ingest reads files: no one waits on a window
                    touched.add(frame.stream)
                    if isinstance(frame, AudioChunk):
                        batch.extend((st, item) for item in st.push_audio(frame))
                        continue
                    batch.extend((st, item) for item in st.push(frame))
                    if len(batch) >= bs:
                        pipe.submit(batch)
                        batch = []
                    pipe.poll()
                    if on_frame is not None:
                        on_frame(frame)
            finally:
                # Also on a corrupt tail or Ctrl-C: what was decoded is kept.
                self._pipe = None
                for name in touched:
                    st = self.streams[name]
                    batch.extend((st, item) for item in st.flush())
                try:
                    pipe.submit(batch)
                    pipe.drain()
                finally:
                    prio.restore()

    def settle(self) -> None:
        """Commit every batch an :meth:`ingest` in progress has in flight (from its ``on_frame``)."""
        if self._pipe is not None:
            self._pipe.drain()

    def _transcribe(self, items: list[WorkItem]) -> list[np.ndarray]:
        assert self.transcriber is not None
        return self.transcriber.transcribe_batch([np.asarray(item.payload) for item in items])

    def _read_text(self, items: list[WorkItem]) -> list[np.ndarray]:
        assert self.reader is not None
        return self.reader.read_batch([np.asarray(item.payload) for item in items])

    def _encode_images(self, items: list[WorkItem]) -> list[np.ndarray]:
        return list(self.prescreen.encode_images(images_of(items)))

    # ----------------------------------------------------------------- query
    def query(self, query: Query) -> dict[str, QueryResult]:
        """Answer ``query`` on each requested stream (all streams by default), fully refined."""
        return self.start_query(query).refine(None)

    @property
    def channel_names(self) -> list[str]:
        """What a query's channel filter may name: ``visual`` always, ``speech`` and ``ocr`` when on."""
        return ["visual"] + ["speech"] * (self.transcriber is not None) + ["ocr"] * (self.reader is not None)

    def start_query(self, query: Query) -> PendingQuery:
        """Check and encode ``query`` and prescreen every requested stream (each under its own lock).

        QueryError for a channel filter naming a channel not indexed here (:attr:`channel_names`).

        The returned query's ``first`` is the anchor-level answer;
        :meth:`PendingQuery.refine` refines it outside every stream lock.
        """
        query.check(self.settings.query)
        query.check_channels(self.channel_names)
        names = query.streams or sorted(self.streams)
        for name in names:
            if name not in self.streams:
                raise UnknownStreamError(f"unknown stream {name!r}")
        grid = self.settings.query_grid
        pvec, later = first_vectors(query, self.query_vectors, self.prescreen, self.refine, grid)
        cq = channel_query(
            query, self.settings.query, prescreen=pvec, refine=pvec if later is None else _UNSET
        )
        if self.sentences is not None and query.text is not None:
            cq.vectors[SENTENCE_ROLE] = self.sentences.encode([query.text])[0]
        states = {name: self.streams[name] for name in names}
        others: dict[str, dict[str, ChannelAnswer]] = {}
        plans = {}
        for name, st in states.items():
            others[name], plans[name] = st.plan(cq)
        return PendingQuery(cq, states, others, plans, self._refine_plans, self.refine.meaningless, later)

    def _refine_plans(self, plans: dict[str, VisualPlan], deadline: float | None) -> dict[str, ChannelAnswer]:
        return refine_plans(plans, self.refine, self.cache, deadline=deadline)

    def info(self) -> dict[str, Any]:
        """Anchors, tokens, budget, covered seconds, bytes on disk, model (see :mod:`agent.index.info`)."""
        model = {"prescreen": self.prescreen.name, "refine": self.refine.name, "dim": self.prescreen.dim}
        return index_info(
            self.root, model, self.prescreen.meaningless or self.refine.meaningless, self.streams
        )
