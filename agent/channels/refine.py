"""Refinement within a time budget: re-encode stored frames where the prescreen points, best first.

A query answers in two steps. The prescreen (:func:`agent.channels.retrieval.plan_visual`,
a matrix product over the anchors, run under the stream's lock) gives the
first, anchor-level answer and a :class:`VisualPlan`: the regions worth
re-encoding, each with its stored frame times and an expected gain. Then
:func:`refine_plans` — outside every stream lock, so ingest never waits for
it — re-encodes those frames with the refine encoder until a deadline, and
returns the refined answer of each stream.

Rules chosen:

- **Expected gain** of a region = the best anchor score inside it (the
  prescreen's own estimate of where the answer is). Regions of every
  searched stream are refined in one order, highest gain first. A region's
  frames are encoded coarse to fine (every prefix evenly spread), so one the
  budget cuts short still gets a coarser curve over its whole span (from
  :data:`MIN_REGION_FRAMES` frames; never a curve over part of the span,
  which would bias its proposals); regions not reached keep their
  anchor-level proposals.
- **Order after a budget cut**: once some region was refined, the regions
  not reached (on every searched stream) keep their anchor-level proposals
  marked ``deferred``, and the fused answer ranks them below every refined
  one (:mod:`agent.core.fuse`, step 4). The prescreen ranked each refined
  region above each deferred one, and refined and anchor-level confidences
  are on different scales, so refinement reorders only among what it
  refined. When nothing was refined the answer is the prescreen's own, and
  with no budget every region is refined: neither has a deferred proposal.
- **Calibration first**: refined scores are judged against the stream's
  own frames (:data:`BACKGROUND_FRAMES` spread evenly over the range). The
  first :data:`MIN_BACKGROUND` of them (an evenly spread prefix) are encoded
  before a stream's first region; the rest after every region, budget
  permitting. Warm queries find them in the cache.
- **Budget**: an encoder call is started only for as many frames (at most
  :data:`REFINE_BATCH`) as are expected to fit before the deadline, at the
  seconds per frame this query's previous call took (its first call takes
  one frame), so a loaded machine shrinks the calls instead of overrunning.
- **Cache**: refine embeddings are kept across queries in a
  :class:`FrameEmbeddingCache` bounded in bytes (LRU).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from agent.channels.base import ChannelAnswer
from agent.core.fuse import Calibration, ChannelProposal, calibrate
from agent.core.proposals import Proposal, propose

if TYPE_CHECKING:  # types only: the CLI reads this module's defaults without loading torch or PIL
    from agent.models.encoder import Encoder
    from agent.store.frame_store import FrameStore

BACKGROUND_FRAMES = 64
"""Stored frames sampled evenly over the range to calibrate refined scores (cached embeddings)."""
MIN_BACKGROUND = 16
"""Background frames encoded before a stream's first refined region (an evenly spread prefix)."""
REFINE_BATCH = 8
"""Most frames per refine encoder call under a budget (smaller when less time is left)."""
MIN_REGION_FRAMES = 4
"""Fewest frames (evenly spread over the region) a region cut short by the budget is refined with."""
"""Frames per refine encoder call: the budget is checked between calls."""
DEFAULT_CACHE_BYTES = 64 * 1024**2
"""Refine embeddings kept across queries: 64 MiB is ~28 000 frames of a 512-d encoder (with overhead)."""
ENTRY_OVERHEAD = 320
"""Bytes one cache entry costs besides its vector (ndarray header, key tuple and float, dict slot;
measured with tracemalloc: 1343 bytes per 256-d float32 entry). Counted, so that ``max_bytes``
bounds what the cache really holds, not only its vectors' data."""
DEFAULT_REFINE_BUDGET_S = 1.0
"""Seconds a query may spend refining after its first answer (CLI and service default)."""
MAX_REFINE_BUDGET_S = 60.0
"""Most refine seconds one query may ask for (protocol and CLI)."""

Key = tuple[str, float]


class FrameEmbeddingCache:
    """LRU of refine-encoder embeddings keyed by (stream, frame time), bounded in bytes (thread-safe).

    Policy: least recently used out once the entries' cost (vector bytes plus
    :data:`ENTRY_OVERHEAD` each) passes ``max_bytes``. A stored vector is a
    compact copy: a row view of the encoder's (batch, d) output would keep the
    whole batch alive after its siblings are evicted (up to ``REFINE_BATCH``
    times the counted bytes).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> np.ndarray | None:
        with self._lock:
            vec = self._items.get(key)
            if vec is not None:
                self._items.move_to_end(key)
            return vec

    @staticmethod
    def cost(vec: np.ndarray) -> int:
        """Bytes an entry holding ``vec`` counts against ``max_bytes``."""
        return int(vec.nbytes) + ENTRY_OVERHEAD

    def put(self, key: Key, vec: np.ndarray) -> None:
        """Keep a compact copy of ``vec`` (d,) under ``key``; evicts the least recently used beyond the bound."""
        vec = np.array(vec, copy=True, order="C")  # owns its data: no encoder batch pinned behind a row
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= self.cost(old)
            self._items[key] = vec
            self.nbytes += self.cost(vec)
            while self.nbytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= self.cost(dropped)


@dataclass(slots=True)
class RegionWork:
    """One region to refine: its span, expected gain, frame times and first-answer proposals."""

    span: tuple[float, float]
    gain: float
    """Best anchor score inside the span (the ordering key)."""
    times: np.ndarray
    """Stored frame times to re-encode (evenly subsampled), stream seconds."""
    boundaries: np.ndarray
    """Cheap-index scene changes in the span (read under the stream lock, at planning)."""
    anchors: list[ChannelProposal]
    """The region's anchor-level proposals: kept when it is not refined."""


@dataclass(slots=True)
class VisualPlan:
    """The prescreen's answer of one stream's visual channel and the refinement it asks for."""

    stream: str
    channel: str
    first: ChannelAnswer
    """The anchor-level answer (every region's anchor proposals)."""
    store: FrameStore | None = None
    rvec: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """The query under the refine encoder, (dim,) unit vector."""
    regions: list[RegionWork] = field(default_factory=list)
    """Regions with stored frames to refine, in time order."""
    fixed: list[ChannelProposal] = field(default_factory=list)
    """Anchor-level proposals of regions that cannot be refined (frames evicted, refine off)."""
    background: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    """Calibration frame times, ordered so that every prefix is spread evenly over the range."""
    top_k: int = 5
    nms_iou: float = 0.5
    frame_seconds: float = 0.5
    trials: int = 0
    """Frames of the searched range: the trial count of the best refined frame."""
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """Prescreen scores of the range's anchors: the refine calibration when no background frame exists."""
    holes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    """(m, 2) holes in the memory's coverage, stream seconds (read at planning): no moment overlaps one."""


def spread_order(n: int) -> np.ndarray:
    """Indices 0..n-1 ordered so that every prefix is spread evenly (bit-reversal order)."""
    if n <= 1:
        return np.arange(n)
    bits = int(np.ceil(np.log2(n)))
    rev = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)]
    return np.array([i for i in rev if i < n], np.int64)


class _Encoded:
    """Refine embeddings of one query's frames, through the shared cache, under a deadline."""

    def __init__(
        self, encoder: Encoder, cache: FrameEmbeddingCache, deadline: float | None, clock: Callable[[], float]
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.deadline = deadline
        self.clock = clock
        self.encoded = 0
        """Frames re-encoded by this query (cache misses)."""
        self.per_frame: float | None = None
        """Seconds per frame (read and encode) of this query's last call: sizes the next one."""

    def _room(self) -> int:
        """Frames the next call may take: as many as are expected to fit before the deadline."""
        if self.deadline is None:
            return 1 << 30  # no budget: one call for everything, the encoder batches it
        left = self.deadline - self.clock()
        if left <= 0:
            return 0
        if self.per_frame is None:
            return 1  # the first call measures the cost of one frame on this machine, now
        if self.per_frame <= 0:
            return REFINE_BATCH
        return min(REFINE_BATCH, int(left / self.per_frame))

    def vectors(self, plan: VisualPlan, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``times`` that have an embedding, their (m, dim) embeddings).

        Every index unless the deadline came first; frames are encoded in the
        order given, so a prefix of ``times`` is what a short budget gets.
        """
        vecs: list[np.ndarray | None] = [self.cache.get((plan.stream, float(t))) for t in times]
        missing = [i for i, v in enumerate(vecs) if v is None]
        while missing:
            room = self._room()
            if room <= 0:
                break
            part, missing = missing[:room], missing[room:]
            assert plan.store is not None
            t0 = self.clock()
            pics = [plan.store.get(float(times[i]))[1] for i in part]
            for i, v in zip(part, self.encoder.encode_images(pics), strict=True):
                self.cache.put((plan.stream, float(times[i])), v)
                vecs[i] = v
            self.per_frame = max(self.clock() - t0, 0.0) / len(part)
            self.encoded += len(part)
        done = [i for i, v in enumerate(vecs) if v is not None]
        if not done:
            return np.zeros(0, np.int64), np.zeros((0, len(plan.rvec)), np.float32)
        return np.array(done, np.int64), np.stack([v for v in vecs if v is not None])


@dataclass(slots=True)
class _Progress:
    """What refinement got done for one stream."""

    curves: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Region index -> (times, scores), in time order."""
    background: dict[float, float] = field(default_factory=dict)
    """Calibration frame time -> refine score."""


def refine_plans(
    plans: Mapping[str, VisualPlan],
    encoder: Encoder,
    cache: FrameEmbeddingCache,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, ChannelAnswer]:
    """The refined answer of each plan's stream, refining until ``deadline`` (``clock`` seconds).

    ``deadline`` None: refine everything planned (the result is then the
    full search's). Blocking (frame reads, encoder): run it in a worker
    thread. Regions left when the deadline passes keep their anchor-level
    proposals and the answer says so in a note.
    """
    enc = _Encoded(encoder, cache, deadline, clock)
    done = {name: _Progress() for name in plans}
    units = sorted(
        ((p.regions[i].gain, name, i) for name, p in plans.items() for i in range(len(p.regions))),
        key=lambda u: -u[0],
    )
    for _, name, i in units:
        plan, prog = plans[name], done[name]
        if not _background(enc, plan, prog, MIN_BACKGROUND):
            break
        # Coarse to fine: a region the budget cuts short keeps an evenly spread, coarser curve.
        times = plan.regions[i].times
        times = times[spread_order(len(times))]
        got, vecs = enc.vectors(plan, times)
        if len(got) >= min(MIN_REGION_FRAMES, len(times)):
            order = np.argsort(times[got], kind="stable")
            prog.curves[i] = (times[got][order], (vecs @ plan.rvec)[order])
        if len(got) < len(times):
            break  # the deadline came
    for name, prog in done.items():  # the rest of each calibration, budget permitting
        if prog.curves:
            _background(enc, plans[name], prog, BACKGROUND_FRAMES)
    # Regions are visited in one order over every stream: one refined anywhere defers the rest.
    defer = any(prog.curves for prog in done.values())
    return {name: _answer(plans[name], done[name], defer=defer) for name in plans}


def _background(enc: _Encoded, plan: VisualPlan, prog: _Progress, upto: int) -> bool:
    """Encode background frames up to the first ``upto``; False when the deadline came first."""
    want = plan.background[:upto]
    got, vecs = enc.vectors(plan, want)
    prog.background.update(zip(want[got].tolist(), (vecs @ plan.rvec).tolist(), strict=True))
    return len(got) == len(want)


def _answer(plan: VisualPlan, prog: _Progress, *, defer: bool) -> ChannelAnswer:
    """The stream's refined answer; ``defer``: regions not refined rank below the refined."""
    if not prog.curves:
        first = plan.first
        notes = list(first.notes)
        if not plan.regions:
            return ChannelAnswer(list(first.proposals), dict(first.calibrations), first.coverage, notes)
        notes.append(
            f"refine budget spent: 0 of {len(plan.regions)} regions refined (anchor-level"
            + (", ranked below the refined regions of other streams)" if defer else ")")
        )
        props = list(first.proposals)
        if defer:
            props = list(plan.fixed) + [_deferred(a) for r in plan.regions for a in r.anchors]
        return ChannelAnswer(props, dict(first.calibrations), first.coverage, notes)
    props = list(plan.fixed)
    refined_frames = 0
    for i, region in enumerate(plan.regions):
        curve = prog.curves.get(i)
        if curve is None:
            props.extend(_deferred(a) for a in region.anchors)
            continue
        times, sims = curve
        refined_frames += len(times)
        found = propose(
            times,
            sims,
            top_k=plan.top_k,
            boundaries=region.boundaries,
            nms_iou=plan.nms_iou,
            frame_seconds=plan.frame_seconds,
            holes=plan.holes,
        )
        props.extend(_refined(plan, p) for p in found)
    notes = list(plan.first.notes)
    if len(prog.curves) < len(plan.regions):
        notes.append(
            f"refine budget spent: {len(prog.curves)} of {len(plan.regions)} regions refined "
            "(the others anchor-level, ranked below the refined)"
        )
    cals: dict[str, Calibration] = dict(plan.first.calibrations)
    bg = np.fromiter(prog.background.values(), np.float32, len(prog.background))
    # Judged against the stream's own frames. The prescreen chose where to refine from the whole
    # range, so the best refined frame is in effect the best of every frame in it: that is the
    # trial count (counting only the refined frames let ~40 % of absent photos pass at 0.95).
    cals["refine"] = calibrate(
        bg if len(bg) else plan.scores, trials=max(refined_frames, plan.trials), cosine=True
    )
    return ChannelAnswer(props, cals, plan.first.coverage, notes, _curve(prog))


def _curve(prog: _Progress) -> tuple[np.ndarray, np.ndarray]:
    """Every refined region's (times, scores), joined in time order (what the page draws)."""
    times = np.concatenate([t for t, _ in prog.curves.values()]).astype(np.float64)
    sims = np.concatenate([s for _, s in prog.curves.values()]).astype(np.float64)
    order = np.argsort(times, kind="stable")
    return times[order], sims[order]


def _deferred(p: ChannelProposal) -> ChannelProposal:
    """An anchor-level proposal of a region the budget did not reach (ranked below the refined)."""
    return replace(p, deferred=True)


def _refined(plan: VisualPlan, p: Proposal) -> ChannelProposal:
    """Scored by mean cosine inside the window: on the scale of the frame background.

    propose()'s own score is a within-curve contrast statistic; it chose the
    windows, but curves of different regions are not on one scale.
    """
    sim = p.similarity if p.similarity is not None else p.score
    return ChannelProposal(plan.stream, plan.channel, "refine", p.start, p.end, float(sim), p.peak)
