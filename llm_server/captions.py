"""Query-guided captions and their importance S_q (after SMORE).

For the top candidate regions, when the server accepts images, a QA filter asks
per region (scene) whether the query's objects/actions appear; frames of
relevant regions get a query-aware caption, the others a generic one. Two
operating modes:

* ``latency``: generic captions are made at ingest (:meth:`Captioner.ingest`)
  and kept per anchor in a :class:`CaptionStore` on disk, so a query only
  re-captions the regions the QA filter marks relevant;
* ``storage``: nothing is stored; captions are made on demand per query and
  only kept in a bounded in-memory LRU.

Importance ``S_q = a1 * sim(frame, query) + a2 * agree(frame, caption) * sim(caption, query)``
where ``agree`` is a CLIPScore-like clipped cosine between the caption's text
embedding and the frame's image embedding: a caption that does not describe its
frame cannot lend it relevance.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from llm_server.client import LLMClient
from llm_server.errors import CaptionStoreError
from llm_server.protocol import Caption, PresenceCheck, QueryUnderstanding, parse, response_format
from llm_server.types import Candidate, FrameSource, RGBImage, TextImageEncoder, TextSpanIn, Usage

CaptionMode = Literal["latency", "storage"]


@dataclass(frozen=True, slots=True)
class ScoredCaption:
    """A caption of the frame at stream time ``t`` with its importance ``weight`` (S_q)."""

    t: float
    text: str
    weight: float
    relevant: bool
    """The QA filter said the query appears in this frame's region."""
    source: str = "caption"
    """What the words are: ``caption`` (generated for a frame), ``speech`` (a transcript
    utterance) or ``ocr`` (text shown on screen); the prompt says which."""


def importance(
    frame_vecs: npt.NDArray[np.float32],
    caption_vecs: npt.NDArray[np.float32],
    query_vec: npt.NDArray[np.float32],
    *,
    a1: float = 0.5,
    a2: float = 0.5,
) -> npt.NDArray[np.float32]:
    """S_q per (frame, caption) row pair; all inputs L2-normalised, shapes (n,d),(n,d),(d,)."""
    if frame_vecs.shape != caption_vecs.shape or frame_vecs.shape[-1] != query_vec.shape[-1]:
        raise ValueError(f"shape mismatch {frame_vecs.shape} {caption_vecs.shape} {query_vec.shape}")
    sim_frame = frame_vecs @ query_vec
    sim_caption = caption_vecs @ query_vec
    agree = np.clip(np.sum(frame_vecs * caption_vecs, axis=1), 0.0, None)
    return (a1 * sim_frame + a2 * agree * sim_caption).astype(np.float32)


def text_captions(
    spans: Sequence[TextSpanIn],
    span_vecs: npt.NDArray[np.float32],
    query_vec: npt.NDArray[np.float32],
    *,
    keep: int = 64,
) -> list[ScoredCaption]:
    """Transcript and on-screen text spans as caption tokens, weighted by S_q, in time order.

    S_q of a span is the cosine between its sentence vector and the query's
    (MiniLM: ``span_vecs`` (n, d) and ``query_vec`` (d,), L2-normalised): the
    words carry their own meaning, so there is no frame term. At most ``keep``
    spans, the highest S_q; the prompt budget drops the lowest first.
    """
    if len(spans) != len(span_vecs):
        raise ValueError(f"{len(spans)} spans but {len(span_vecs)} vectors")
    if not spans:
        return []
    weights = np.asarray(span_vecs, np.float32) @ np.asarray(query_vec, np.float32)
    best = sorted(np.argsort(-weights, kind="stable")[:keep].tolist())
    kept = [
        ScoredCaption(spans[i].t, spans[i].text, float(weights[i]), False, spans[i].channel) for i in best
    ]
    return sorted(kept, key=lambda c: c.t)


class CaptionCache:
    """Bounded LRU of captions keyed by (stream, frame time, query); '' is the generic query."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, float, str], str] = OrderedDict()

    @staticmethod
    def key(stream: str, t: float, query: str) -> tuple[str, float, str]:
        # Millisecond rounding: float times from different code paths must meet.
        return (stream, round(t, 3), query)

    def get(self, stream: str, t: float, query: str) -> str | None:
        k = self.key(stream, t, query)
        if k in self._items:
            self._items.move_to_end(k)
            return self._items[k]
        return None

    def put(self, stream: str, t: float, query: str, text: str) -> None:
        self._items[self.key(stream, t, query)] = text
        self._items.move_to_end(self.key(stream, t, query))
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class CaptionStore:
    """Generic captions per (stream, anchor time), persisted as append-only JSON lines.

    An append either lands whole or leaves a torn last line, which loading skips,
    so a crash loses at most the caption being written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._captions: dict[tuple[str, float], str] = {}
        self._times: dict[str, list[float]] = {}
        """Sorted anchor times per stream, for nearest-time lookup by bisection."""
        if path.exists():
            self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CaptionStoreError(f"cannot read caption store {self.path}: {exc}") from exc
        for line in lines:
            try:
                rec = json.loads(line)
                self._remember(str(rec["stream"]), float(rec["t"]), str(rec["caption"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue

    def _remember(self, stream: str, t: float, caption: str) -> None:
        key = (stream, round(t, 3))
        if key not in self._captions:
            bisect.insort(self._times.setdefault(stream, []), key[1])
        self._captions[key] = caption

    def put(self, stream: str, t: float, caption: str) -> None:
        """Store (and persist) the generic caption of the anchor at ``t``."""
        self._remember(stream, t, caption)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"stream": stream, "t": round(t, 3), "caption": caption}) + "\n")

    def nearest(self, stream: str, t: float, tolerance: float) -> str | None:
        """The stored caption closest to ``t`` within ``tolerance`` seconds."""
        times = self._times.get(stream, [])
        i = bisect.bisect_left(times, t)
        near = [times[j] for j in (i - 1, i) if 0 <= j < len(times)]
        if not near:
            return None
        best = min(near, key=lambda ts: abs(ts - t))
        return self._captions[(stream, best)] if abs(best - t) <= tolerance else None

    @property
    def nbytes(self) -> int:
        """Bytes on disk (the storage cost of latency mode)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def __len__(self) -> int:
        return len(self._captions)


def _image_part(jpeg: bytes) -> dict[str, object]:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    return {"type": "image_url", "image_url": {"url": url}}


class Captioner:
    """Makes, caches and scores captions for candidate regions (vision servers only)."""

    def __init__(
        self,
        client: LLMClient,
        encoder: TextImageEncoder,
        *,
        mode: CaptionMode = "storage",
        store: CaptionStore | None = None,
        cache: CaptionCache | None = None,
        a1: float = 0.5,
        a2: float = 0.5,
        max_tokens: int = 48,
        store_tolerance: float = 1.0,
    ) -> None:
        if mode == "latency" and store is None:
            raise ValueError("latency mode needs a CaptionStore")
        self.client, self.encoder, self.mode = client, encoder, mode
        self.store, self.cache = store, cache or CaptionCache()
        self.a1, self.a2, self.max_tokens, self.store_tolerance = a1, a2, max_tokens, store_tolerance
        self.usage = Usage()

    async def _ask_caption(self, jpeg: bytes, instruction: str) -> str:
        caps = await self.client.capabilities()
        out = await self.client.chat(
            [{"role": "user", "content": [_image_part(jpeg), {"type": "text", "text": instruction}]}],
            max_tokens=self.max_tokens,
            response_format=response_format(Caption, caps.json_schema),
        )
        self.usage += out.usage
        return parse(Caption, out.text).caption

    async def generic_caption(self, jpeg: bytes) -> str:
        """A query-independent one-sentence caption of one frame."""
        return await self._ask_caption(jpeg, "Describe this video frame in one short sentence. JSON.")

    async def query_caption(self, jpeg: bytes, query: str) -> str:
        """A caption that says what in the frame bears on ``query``."""
        return await self._ask_caption(
            jpeg, f"In one short sentence, describe what in this frame relates to: {query!r}. JSON."
        )

    async def qa_present(self, jpegs: Sequence[bytes], query: str, u: QueryUnderstanding) -> bool:
        """The QA filter: do these frames (one scene) show the query's objects/actions?"""
        caps = await self.client.capabilities()
        things = ", ".join([*u.objects, *u.actions]) or query
        parts: list[dict[str, object]] = [_image_part(j) for j in jpegs]
        parts.append({"type": "text", "text": f"Do these frames show any of: {things}? JSON."})
        out = await self.client.chat(
            [{"role": "user", "content": parts}],
            max_tokens=12,
            response_format=response_format(PresenceCheck, caps.json_schema),
        )
        self.usage += out.usage
        return parse(PresenceCheck, out.text).present

    async def ingest(self, stream: str, t: float, jpeg: bytes) -> str:
        """Latency mode: caption an anchor's frame at ingest and persist it."""
        if self.store is None:
            raise ValueError("ingest needs a CaptionStore")
        text = await self.generic_caption(jpeg)
        await asyncio.to_thread(self.store.put, stream, t, text)
        return text

    async def _generic(self, stream: str, t: float, jpeg: bytes) -> str:
        cached = self.cache.get(stream, t, "")
        if cached is None and self.store is not None:
            cached = self.store.nearest(stream, t, self.store_tolerance)
        if cached is None:
            cached = await (
                self.ingest(stream, t, jpeg) if self.mode == "latency" else self.generic_caption(jpeg)
            )
        self.cache.put(stream, t, "", cached)
        return cached

    async def _query_aware(self, stream: str, t: float, jpeg: bytes, query: str) -> str:
        cached = self.cache.get(stream, t, query)
        if cached is None:
            cached = await self.query_caption(jpeg, query)
            self.cache.put(stream, t, query, cached)
        return cached

    async def caption_regions(
        self,
        stream: str,
        query: str,
        regions: Sequence[Candidate],
        frames: FrameSource,
        understanding: QueryUnderstanding,
        *,
        frames_per_region: int = 3,
    ) -> list[ScoredCaption]:
        """Captions with S_q for the frames of ``regions``; [] when the server has no vision."""
        if not (await self.client.capabilities()).vision:
            return []
        times: list[float] = []
        images: list[RGBImage] = []
        texts: list[str] = []
        relevant: list[bool] = []
        for region in regions:
            picked = await asyncio.to_thread(frames.frames, region.start, region.end, frames_per_region)
            if not picked:
                continue
            jpegs = [(await asyncio.to_thread(frames.get_jpeg, t))[1] for t, _ in picked]
            present = await self.qa_present(jpegs, query, understanding)
            for (t, image), jpeg in zip(picked, jpegs, strict=True):
                text = await (
                    self._query_aware(stream, t, jpeg, query) if present else self._generic(stream, t, jpeg)
                )
                times.append(t)
                images.append(image)
                texts.append(text)
                relevant.append(present)
        if not times:
            return []
        weights = await asyncio.to_thread(self._weights, images, texts, query)
        return [
            ScoredCaption(t, text, float(w), rel)
            for t, text, w, rel in zip(times, texts, weights, relevant, strict=True)
        ]

    def _weights(self, images: list[RGBImage], texts: list[str], query: str) -> npt.NDArray[np.float32]:
        frame_vecs = self.encoder.encode_images(images)
        vecs = self.encoder.encode_text([*texts, query])
        return importance(frame_vecs, vecs[:-1], vecs[-1], a1=self.a1, a2=self.a2)
