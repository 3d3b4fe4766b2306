"""Progressive answers: a prescreen answer first, then refinement ordered by gain, stopped at a budget."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.channels.base import ChannelQuery
from agent.channels.refine import (
    ENTRY_OVERHEAD,
    MIN_BACKGROUND,
    MIN_REGION_FRAMES,
    REFINE_BATCH,
    FrameEmbeddingCache,
    refine_plans,
    spread_order,
)
from agent.channels.retrieval import Query, plan_visual
from agent.cli.main import main
from agent.config import QueryConfig
from agent.index.answers import CURVE_MARGIN, PendingQuery, curve_around
from agent.index.video_index import VideoIndex
from agent.models.encoder import Encoder
from agent.models.images import decode_image
from agent.service.answer import query_answer
from agent.types import MAX_CURVE_POINTS, Frame, RGBImage
from streams.file import decode_frames
from tests.agent.index.test_index import ingest, settings
from tests.streams import corpus
from tests.videos import make_video, photos


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Six photo scenes of 8 s each; scene k spans [8k, 8k + 8)."""
    pics = photos(6, offset=40)
    path = tmp_path_factory.mktemp("vid") / "scenes.mp4"
    make_video(path, [(8.0, p) for p in pics], fps=10, size=(320, 240))
    return path, pics


@pytest.fixture
def index(tmp_path: Path, scenes: tuple[Path, list[Path]]) -> Iterator[VideoIndex]:
    idx = ingest(tmp_path / "idx", scenes[0], settings(grid=2, budget=16, fps=2.0))
    yield idx
    idx.close()


def _photo(path: Path) -> RGBImage:
    return np.asarray(Image.open(path).convert("RGB"))


class CountingEncoder:
    """The refine encoder, counting the frames it encodes; ``tick(n)`` is called after each call of n."""

    def __init__(self, inner: Encoder, tick: object = None) -> None:
        self.inner = inner
        self.frames = 0
        self.calls: list[int] = []
        self.tick = tick

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        self.frames += len(images)
        self.calls.append(len(images))
        out = self.inner.encode_images(images)
        if callable(self.tick):
            self.tick(len(images))
        return out

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_text(texts)


def _plan(idx: VideoIndex, image: RGBImage, stream: str = "cam") -> object:
    vec = idx.prescreen.encode_images([image])[0]
    query = ChannelQuery({"prescreen": vec, "refine": vec}, top_k=3, cfg=QueryConfig())
    return plan_visual(idx.streams[stream].visual, query, query.cfg)


def test_the_cache_is_bounded_in_bytes_and_keeps_the_recent() -> None:
    vec = np.zeros(512, np.float32)  # 2 KiB each, plus the entry's overhead
    each = FrameEmbeddingCache.cost(vec)
    assert each == vec.nbytes + ENTRY_OVERHEAD
    cache = FrameEmbeddingCache(max_bytes=10 * each)
    for t in range(25):
        cache.put(("cam", float(t)), vec.copy())
        cache.get(("cam", 0.0))  # used again and again: never the least recent
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 10 and cache.nbytes == 10 * each
    assert cache.get(("cam", 0.0)) is not None and cache.get(("cam", 24.0)) is not None
    assert cache.get(("cam", 1.0)) is None
    cache.put(("cam", 24.0), np.zeros(256, np.float32))  # replacing an entry counts its new size
    assert cache.nbytes == 9 * each + 1024 + ENTRY_OVERHEAD


def test_the_cache_stays_bounded_over_many_puts_and_pins_no_encoder_batch() -> None:
    """A long run's worth of refined frames: entries and live bytes stop at the bound (policy: LRU)."""
    cache = FrameEmbeddingCache(max_bytes=200 * FrameEmbeddingCache.cost(np.zeros(256, np.float32)))
    batches = []
    for b in range(1000):  # 8000 frames of 8 streams, as the refiner stores them: rows of (8, 256) batches
        batch = np.full((8, 256), b, np.float32)
        for i in range(len(batch)):
            cache.put((f"cam{i}", float(b)), batch[i])
        batches.append(weakref.ref(batch))
        del batch
    assert len(cache) == 200 and cache.nbytes <= cache.max_bytes
    held = [cache.get((f"cam{i}", float(b))) for b in range(975, 1000) for i in range(8)]
    assert all(v is not None and v.base is None and v.flags.c_contiguous for v in held)
    assert sum(ref() is not None for ref in batches) == 0  # rows were copied: no batch kept alive


@pytest.mark.parametrize("n", [0, 1, 2, 5, 16, 64, 100])
def test_spread_order_is_a_permutation_whose_prefixes_are_spread(n: int) -> None:
    order = spread_order(n)
    assert sorted(order.tolist()) == list(range(n))
    if n >= 16:  # any prefix of 4 covers each quarter of the range once
        assert sorted(int(i) * 4 // n for i in order[:4]) == [0, 1, 2, 3]


def test_first_answer_is_anchor_level_and_the_refined_one_matches_the_full_search(
    index: VideoIndex, scenes: tuple[Path, list[Path]]
) -> None:
    query = Query(image=_photo(scenes[1][3]), top_k=3)
    pending = index.start_query(query)
    first = pending.first["cam"]
    assert first.moments and {m.answered_by for m in first.moments} == {"anchor"}
    assert first.answered_by == "anchor" and pending.refinable
    refined = pending.refine(None)["cam"]
    assert refined.answered_by == "refine"
    full = index.query(query)["cam"]  # the one-shot path: the same answer
    assert [(m.start, m.end, m.score) for m in refined.moments] == [
        (m.start, m.end, m.score) for m in full.moments
    ]
    top = refined.moments[0]
    assert top.start < 32.0 and top.end > 24.0, refined.moments  # scene 3 spans [24, 32)
    # The refined moment carries its per-frame curve (what the page draws), the first answer none.
    assert all(not m.curve for m in first.moments)
    times = [t for t, _ in top.curve]
    assert 4 <= len(top.curve) <= MAX_CURVE_POINTS and times == sorted(times), top.curve
    pad = max(1.0, CURVE_MARGIN * (top.end - top.start))
    assert top.start - pad <= times[0] and times[-1] <= top.end + pad, (top, times)
    peak = max(top.curve, key=lambda p: p[1])[0]
    assert 24.0 <= peak < 32.0, top.curve  # the needle's frames score highest


def test_curve_around_keeps_the_moment_and_its_margin_thinned_to_the_bound() -> None:
    times = np.arange(0.0, 1000.0, 0.5)
    scores = np.cos(times)
    out = curve_around(times, scores, 100.0, 104.0, limit=MAX_CURVE_POINTS)
    assert [t for t, _ in out] == [float(t) for t in np.arange(98.0, 106.5, 0.5)]  # 2 s each side
    wide = curve_around(times, scores, 10.0, 900.0)
    assert len(wide) == MAX_CURVE_POINTS and wide[0][0] == 0.0 and wide[-1][0] == 999.5
    assert curve_around(times, scores, 2000.0, 2001.0) == []


def test_a_spent_budget_keeps_the_first_answer_and_says_so(
    index: VideoIndex, scenes: tuple[Path, list[Path]]
) -> None:
    plan = _plan(index, _photo(scenes[1][3]))
    enc = CountingEncoder(index.refine)
    out = refine_plans({"cam": plan}, enc, FrameEmbeddingCache(), deadline=0.0, clock=lambda: 1.0)  # type: ignore[dict-item]
    assert enc.frames == 0
    answer = out["cam"]
    assert [p.kind for p in answer.proposals] == ["anchor"] * len(answer.proposals)
    assert answer.proposals == plan.first.proposals  # type: ignore[attr-defined]
    assert any("refine budget spent: 0 of" in n for n in answer.notes), answer.notes


def test_refinement_goes_by_expected_gain_and_stops_at_the_deadline(
    tmp_path: Path, index: VideoIndex, scenes: tuple[Path, list[Path]]
) -> None:
    other = tmp_path / "other.mp4"
    make_video(other, [(8.0, p) for p in photos(3, offset=80)], fps=10, size=(320, 240))
    index.ingest(decode_frames(other, stream="other", fps=2.0, short_side=index.prescreen.image_size))
    image = _photo(scenes[1][3])
    plans = {name: _plan(index, image, stream=name) for name in ("cam", "other")}
    gains = {name: max(r.gain for r in p.regions) for name, p in plans.items()}  # type: ignore[attr-defined]
    assert gains["cam"] > gains["other"]  # the query's own photo is in "cam"
    best = max(plans["cam"].regions, key=lambda r: r.gain)  # type: ignore[attr-defined]
    cache = FrameEmbeddingCache()
    _warm_backgrounds(index, {"cam": plans["cam"]}, cache)  # "other" would need its calibration first
    fresh = [t for t in best.times if cache.get(("cam", float(t))) is None]
    assert fresh
    # The clock moves 10 ms per frame encoded: the deadline falls just after the best region's
    # frames (its calibration is cached), so exactly that region is refined, nothing of "other".
    now = [0.0]
    enc = CountingEncoder(index.refine, tick=lambda n: now.__setitem__(0, now[0] + 0.01 * n))
    out = refine_plans(
        plans,  # type: ignore[arg-type]
        enc,
        cache,
        deadline=0.01 * len(fresh) + 0.005,
        clock=lambda: now[0],
    )
    assert enc.frames == len(fresh)
    assert enc.calls[0] == 1 and max(enc.calls) <= REFINE_BATCH  # the first call measures one frame
    cam = out["cam"]
    refined = [p for p in cam.proposals if p.kind == "refine"]
    assert refined and all(best.span[0] <= p.start and p.end <= best.span[1] for p in refined)
    assert "refine" in cam.calibrations
    assert {p.kind for p in out["other"].proposals} == {"anchor"}  # its region's turn never came
    assert any("refine budget spent: 0 of" in n for n in out["other"].notes), out["other"].notes


def _warm_backgrounds(index: VideoIndex, plans: dict[str, Any], cache: FrameEmbeddingCache) -> None:
    """Cut calibrations to their first MIN_BACKGROUND frames and put those in ``cache``.

    A test's budget then goes to regions only (on these short clips the full calibration
    would hold most of a region's frames).
    """
    for name, plan in plans.items():
        plan.background = plan.background[:MIN_BACKGROUND]
        store = index.streams[name].store
        assert store is not None
        for t in plan.background:
            cache.put((name, float(t)), index.refine.encode_images([store.get(float(t))[1]])[0])


def test_warm_queries_reencode_nothing(index: VideoIndex, scenes: tuple[Path, list[Path]]) -> None:
    plan = _plan(index, _photo(scenes[1][2]))
    cache = FrameEmbeddingCache()
    enc = CountingEncoder(index.refine)
    refine_plans({"cam": plan}, enc, cache)  # type: ignore[dict-item]
    cold = enc.frames
    assert cold > 0
    refine_plans({"cam": plan}, enc, cache)  # type: ignore[dict-item]
    assert enc.frames == cold


def test_ingest_is_not_held_up_by_a_query_refining_the_same_stream(
    tmp_path: Path, scenes: tuple[Path, list[Path]]
) -> None:
    idx = ingest(tmp_path / "idx", scenes[0], settings(grid=2, budget=16, fps=2.0))
    state = idx.streams["cam"]
    inside, release = threading.Event(), threading.Event()
    original = idx.refine.encode_images

    def blocking(images: Sequence[RGBImage]) -> np.ndarray:
        if threading.current_thread().name == "query":
            inside.set()
            release.wait(30)
        return original(images)

    idx.refine.encode_images = blocking  # type: ignore[method-assign]
    query = threading.Thread(
        target=idx.query, args=(Query(image=_photo(scenes[1][0])),), name="query", daemon=True
    )
    try:
        query.start()
        assert inside.wait(30), "the query never reached its refine encoder"
        frame = next(iter(decode_frames(scenes[0], stream="cam", fps=2.0, short_side=64)))
        late = Frame("cam", 100.0, frame.image)
        pushed = threading.Thread(target=state.push, args=(late,), daemon=True)
        pushed.start()
        pushed.join(10)  # the query is still inside its refinement: ingest must not wait for it
        assert not pushed.is_alive(), "ingest waited for a query's refinement (stream lock held)"
    finally:
        release.set()
        query.join(30)
        idx.refine.encode_images = original  # type: ignore[method-assign]
        idx.close()


def test_a_region_cut_short_keeps_a_coarser_curve_over_its_whole_span(
    index: VideoIndex, scenes: tuple[Path, list[Path]]
) -> None:
    plan = _plan(index, _photo(scenes[1][3]))
    region = max(plan.regions, key=lambda r: r.gain)  # type: ignore[attr-defined]
    assert len(region.times) >= 2 * MIN_REGION_FRAMES
    cache = FrameEmbeddingCache()
    _warm_backgrounds(index, {"cam": plan}, cache)
    before = {t for t in region.times if cache.get(("cam", float(t))) is not None}
    fresh = len(region.times) - len(before)
    assert fresh > MIN_REGION_FRAMES + 1
    now = [0.0]
    enc = CountingEncoder(index.refine, tick=lambda n: now.__setitem__(0, now[0] + 0.01 * n))
    # Room for MIN_REGION_FRAMES + 1 of the region's frames only.
    deadline = 0.01 * (MIN_REGION_FRAMES + 1) + 0.005
    answer = refine_plans({"cam": plan}, enc, cache, deadline=deadline, clock=lambda: now[0])["cam"]  # type: ignore[dict-item]
    assert enc.frames == MIN_REGION_FRAMES + 1
    assert [p for p in answer.proposals if p.kind == "refine"], answer.proposals
    got = [t for t in region.times if t not in before and cache.get(("cam", float(t))) is not None]
    assert len(got) == MIN_REGION_FRAMES + 1
    # Coarse to fine: the frames encoded reach both halves of the region, not only its start.
    mid = (region.times[0] + region.times[-1]) / 2
    assert min(got) < mid < max(got)


def _cut_when(index: VideoIndex, pending: PendingQuery, spent: Callable[[FrameEmbeddingCache], bool]) -> None:
    """Refine ``pending`` through ``index``'s encoder until ``spent(cache)`` (a frame cap, no timing).

    The clock reads 0 until the query's cache satisfies ``spent``, then 1: past the deadline of 0.5.
    """
    cache = FrameEmbeddingCache()

    def clock() -> float:
        return 1.0 if spent(cache) else 0.0

    pending.refiner = lambda plans, _: refine_plans(plans, index.refine, cache, deadline=0.5, clock=clock)


def _has(stream: str, times: np.ndarray) -> Callable[[FrameEmbeddingCache], bool]:
    return lambda cache: all(cache.get((stream, float(t))) is not None for t in times)


def test_a_budget_cut_after_the_best_region_keeps_every_refined_moment_first(
    tmp_path: Path, index: VideoIndex, scenes: tuple[Path, list[Path]]
) -> None:
    """Refinement goes by gain over every stream: the cut after "cam"'s region defers "other"'s."""
    other = tmp_path / "other.mp4"
    make_video(other, [(8.0, p) for p in photos(3, offset=80)], fps=10, size=(320, 240))
    index.ingest(decode_frames(other, stream="other", fps=2.0, short_side=index.prescreen.image_size))
    pending = index.start_query(Query(image=_photo(scenes[1][3]), top_k=5))
    assert pending.plans["other"].regions  # something is left for the cut to defer
    best = max(pending.plans["cam"].regions, key=lambda r: r.gain)
    _cut_when(index, pending, _has("cam", best.times))  # the deadline passes once its frames are in
    results = pending.refine(1.0)
    assert {m.answered_by for m in results["cam"].moments} == {"refine"}
    assert [m.deferred for m in results["other"].moments] == [True] * len(results["other"].moments)
    assert results["other"].moments and results["other"].answered_by == "anchor"
    assert any("ranked below the refined" in n for n in results["other"].notes), results["other"].notes
    # The answer clients get (CLI table, service `moments`): every refined moment before every deferred.
    moments = query_answer(results, top_k=10).moments
    kinds = [m.answered_by for m in moments]
    assert "anchor" in kinds and kinds == sorted(kinds, key=lambda k: k != "refine"), kinds
    top = moments[0]
    assert top.stream == "cam" and best.span[0] <= top.start and top.end <= best.span[1], (best.span, top)


def test_a_deferred_region_of_higher_anchor_confidence_stays_below_the_refined_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clock-jump clip with tiny-random: A's refined frames all score ~0.999, so its refined
    confidence collapses to 0, while B's unrefined region keeps an anchor-level 0.06. Ranked by
    confidence, B came first after a budget cut after A (`vmr query --budget 1` under load)."""
    built = corpus.clock_jump(tmp_path)
    where = tmp_path / "index"
    # f32: the scenario rests on tiny-random's near-tied ~0.999 scores, which bf16's rounding reorders.
    argv = ["ingest", str(built.path), "--index", str(where), "--model", "tiny-random", "--quiet"]
    assert main([*argv, "--precision", "f32"]) == 0, capsys.readouterr().err
    photo = decode_image(built.queries["A"].read_bytes(), max_bytes=10**8)
    with VideoIndex.open(where) as idx:
        pending = idx.start_query(Query(image=photo, top_k=3))
        plan = pending.plans["jump"]
        best = max(plan.regions, key=lambda r: r.gain)
        assert best.span[0] < 5.0 and best.span[1] < 605.0  # around A (0-5 s), not B (605-610 s)
        # Cut once the calibration's first frames are in (16 of the clip's 20): A is refined from
        # what is cached, its missing frames stop the refinement, B's turn never comes.
        _cut_when(idx, pending, _has("jump", plan.background[:MIN_BACKGROUND]))
        result = pending.refine(1.0)["jump"]
    top, deferred = result.moments[0], [m for m in result.moments if m.deferred]
    assert top.answered_by == "refine" and top.end <= 5.0, result.moments
    assert deferred and all(m.start >= 605.0 for m in deferred), result.moments
    assert top.confidence is not None and deferred[0].confidence is not None
    assert deferred[0].confidence > top.confidence  # the scales differ: never compared to rank
