"""``ward-young``: Ward's merges, young anchors priced at the memory's members per token.

The defect it fixes: online, plain Ward folds every new frame into the newest anchor once the
memory is compressed enough, so the newest footage pools into one anchor.
"""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.anchors import _HEAP_SLACK, Anchor, _Node
from agent.core.memory import Memory
from agent.core.svd import MergeRule, Representative, TruncatedSVD, merge_cost
from agent.store.memory_store import load_memory, memory_from_state, save_memory

DIM = 16
REPRESENTATIVES: tuple[Representative, ...] = ("smore", "mean")
"""ward-young indexes were built with SMORE's token (the default then) and keep it; mean is today's."""


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def scenes(n_scenes: int, frames: int, seed: int) -> list[np.ndarray]:
    """``n_scenes`` distinct scenes of ``frames`` noisy frames each (a new random direction per scene)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_scenes):
        centre = rng.standard_normal(DIM)
        out += [unit(centre + 0.15 * rng.standard_normal(DIM)) for _ in range(frames)]
    return out


def spans_after(stream: list[np.ndarray], budget: int, merge: MergeRule) -> np.ndarray:
    mem = Memory(DIM, budget=budget, theta=1.01, rank=2, merge=merge)
    for i, v in enumerate(stream):
        mem.add(float(i), float(i + 1), v)
    starts, ends, _ = mem.matrix()
    return ends - starts


def test_the_newest_footage_does_not_pool_into_one_anchor() -> None:
    # 60 scenes of 20 frames, 40 tokens (1/30 of the frames, under one token per scene).
    stream = scenes(60, 20, seed=3)
    ward, young = spans_after(stream, 40, "ward"), spans_after(stream, 40, "ward-young")
    # Plain Ward keeps the first 39 scenes one by one and pools the last 21 into one anchor.
    assert ward[-1] >= 20 * 20 and ward[:-1].max() <= 20
    # ward-young spreads the merges over the whole stream: no anchor over 5 scenes, the newest
    # at most 2.
    assert young.max() <= 5 * 20 and young[-1] <= 2 * 20
    # Tokens are spread over time: the last quarter holds about its share.
    mem = Memory(DIM, budget=40, theta=1.01, rank=2, merge="ward-young")
    for i, v in enumerate(stream):
        mem.add(float(i), float(i + 1), v)
    starts, _, _ = mem.matrix()
    assert int((starts >= 0.75 * len(stream)).sum()) >= 40 // 4 - 3


class Scan:
    """Reference: ``Memory.add`` under ward-young by a linear scan over adjacent pairs, every
    anchor's first member and the floor recomputed from scratch (joins and gaps included)."""

    def __init__(
        self, budget: int, theta: float = 1.01, gap_seconds: float = 5.0, rep: Representative = "mean"
    ) -> None:
        self.budget, self.theta, self.gap_seconds, self.rep = budget, theta, gap_seconds, rep
        self.anchors: list[Anchor] = []

    def floor(self) -> float:
        members = sum(a.svd.count for a in self.anchors)
        if members <= self.budget:
            return 1.0
        return float(2.0 ** (math.floor(8.0 * math.log2(members / self.budget)) / 8.0))

    def add(self, start: float, end: float, v: np.ndarray) -> None:
        vec = np.asarray(v, np.float64)
        if self.anchors:
            last = self.anchors[-1]
            gap = start - last.end > self.gap_seconds
            if not gap and float(last.rep @ vec) >= self.theta * float(np.linalg.norm(vec)):
                last.update(start, vec, self.rep, 0)
                last.end = max(last.end, end)
                return
            if not gap:
                last.end = max(last.end, start)
            start, end = max(start, last.end), max(end, last.end)
        svd = TruncatedSVD.from_vector(vec, 2)
        self.anchors.append(Anchor(start, end, svd, svd.representative(self.rep)))
        while len(self.anchors) > self.budget:
            members, floor = sum(a.svd.count for a in self.anchors), self.floor()
            first = np.concatenate([[0], np.cumsum([a.svd.count for a in self.anchors])[:-1]])
            young = [f + floor > members for f in first]
            keys = [
                (
                    int(a.end < b.start),
                    merge_cost(
                        a.svd, b.svd, "ward", floor if young[i] else 1.0, floor if young[i + 1] else 1.0
                    ),
                )
                for i, (a, b) in enumerate(zip(self.anchors, self.anchors[1:], strict=False))
            ]
            i = min(range(len(keys)), key=keys.__getitem__)
            a, b = self.anchors[i], self.anchors.pop(i + 1)
            a.svd, a.end = a.svd.merge(b.svd), max(a.end, b.end)
            a.rep = a.svd.representative(self.rep)


def stream_with_gaps(n: int, seed: int) -> list[tuple[float, float, np.ndarray]]:
    """``n`` (start, end, vector) from 5 noisy scenes; about one step in 12 jumps past the 5 s gap."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, DIM))
    out, t, scene = [], 0.0, 0
    for _ in range(n):
        t += 20.0 if rng.random() < 1 / 12 else 1.0
        if rng.random() < 0.2:
            scene = int(rng.integers(5))
        out.append((t, t + 1.0, unit(centres[scene] + 0.2 * rng.standard_normal(DIM))))
    return out


def assert_same(mem: Memory, ref_starts: list[float], ref_ends: list[float]) -> None:
    starts, ends, _ = mem.matrix()
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_array_equal(ends, ref_ends)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), budget=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_heap_merges_match_a_linear_scan(n: int, budget: int, seed: int) -> None:
    # Young anchors settle, and the floor doubles, while the heap keeps lazily invalidated keys.
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, DIM))
    mem = Memory(DIM, budget=budget, theta=1.01, rank=2, merge="ward-young")
    ref = Scan(budget)
    for i in range(n):
        v = unit(centres[rng.integers(5)] + 0.2 * rng.standard_normal(DIM))
        mem.add(float(i), float(i + 1), v)
        ref.add(float(i), float(i + 1), v)
    assert_same(mem, [a.start for a in ref.anchors], [a.end for a in ref.anchors])


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 200),
    budget=st.integers(1, 8),
    theta=st.sampled_from([0.5, 0.95, 1.01]),
    seed=st.integers(0, 2**16),
    rep=st.sampled_from(REPRESENTATIVES),
)
def test_heap_merges_match_a_linear_scan_with_joins_and_gaps(
    n: int, budget: int, theta: float, seed: int, rep: Representative
) -> None:
    # Joins grow the members (and settle young anchors) without adding one; gaps key pairs last.
    # The token decides joins: the reference must use the memory's.
    mem = Memory(DIM, budget=budget, theta=theta, rank=2, merge="ward-young", representative=rep)
    ref = Scan(budget, theta, rep=rep)
    for start, end, v in stream_with_gaps(n, seed):
        mem.add(start, end, v)
        ref.add(start, end, v)
    assert_same(mem, [a.start for a in ref.anchors], [a.end for a in ref.anchors])


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 240),
    cut=st.floats(0.0, 1.0),
    budget=st.integers(1, 8),
    theta=st.sampled_from([0.5, 0.95, 1.01]),
    detail=st.sampled_from([0, 3]),
    runs=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**16),
    rep=st.sampled_from(REPRESENTATIVES),
)
def test_a_memory_restored_mid_stream_continues_exactly_as_the_original(
    n: int, cut: float, budget: int, theta: float, detail: int, runs: int, seed: int, rep: Representative
) -> None:
    stream = stream_with_gaps(n, seed)
    k = int(cut * n)
    mem = Memory(
        DIM,
        budget=budget,
        theta=theta,
        rank=2,
        merge="ward-young",
        detail=detail,
        runs=runs,
        representative=rep,
    )
    for start, end, v in stream[:k]:
        mem.add(start, end, v)
    back = memory_from_state(mem.state_dict())
    for i, (start, end, v) in enumerate(stream[k:]):
        for m in (mem, back):
            m.add(start, end, v)
            if i % 5 == 2:
                m.extend(end + 0.5)
    starts, ends, reps = mem.matrix()
    assert_same(back, list(starts), list(ends))
    np.testing.assert_array_equal(back.matrix()[2], reps)
    for got, want in zip(back.detail_scores(reps[-1]), mem.detail_scores(reps[-1]), strict=True):
        np.testing.assert_array_equal(got, want)


def live_nodes() -> int:
    gc.collect()
    return sum(type(o) is _Node for o in gc.get_objects())  # type(): no proxy object is asked


@pytest.mark.parametrize("theta", [0.5, 1.01])
def test_the_young_bookkeeping_holds_o_budget_nodes_however_long_the_stream(theta: float) -> None:
    # The floor (members per token) grows with the stream: the chain must not keep a node per
    # anchor begun within the last ``floor`` members (the merged-away ones included), or a day
    # of footage would hold thousands of dead nodes the flat-bytes accounting never sees.
    budget, rng = 8, np.random.default_rng(7)
    centres = rng.standard_normal((20, DIM))
    mem = Memory(DIM, budget=budget, theta=theta, rank=2, merge="ward-young")
    before = live_nodes()
    for i in range(6000):
        mem.add(float(i), float(i + 1), unit(centres[(i // 3) % 20] + 0.3 * rng.standard_normal(DIM)))
    assert mem._chain.floor >= 64  # far past the budget: the floor is many anchors long
    # Live anchors, plus dead ones named by stale heap entries until the heap is rebuilt.
    assert live_nodes() - before <= budget + 1 + _HEAP_SLACK * budget + 64 + 2


def test_settling_on_joins_keeps_the_heap_within_its_rebuild_bound() -> None:
    # Joins settle young anchors (and push their pairs) without a merge: the rebuild bound
    # must hold after them too, not only after a budget merge.
    budget, rng = 16, np.random.default_rng(0)
    centres = rng.standard_normal((50, DIM))
    mem = Memory(DIM, budget=budget, theta=0.9, rank=2, merge="ward-young")
    scene, worst = 0, 0
    for i in range(8000):
        if rng.random() < 0.05:
            scene = int(rng.integers(50))
        mem.add(float(i), float(i + 1), centres[scene] + 0.3 * rng.standard_normal(DIM))
        worst = max(worst, mem.heap_entries)
    assert worst <= _HEAP_SLACK * budget + 64


def assert_heap_keys_current(mem: Memory) -> None:
    """Every closed pair has a live heap entry, and every live entry holds the pair's key now."""
    chain = mem._chain
    live = {id(e[4]): e for e in chain._heap if chain._valid(e)}
    node, closed = chain._head, 0
    while node is not None and node.next is not None and node.next is not chain._tail:
        closed += 1
        assert id(node) in live and live[id(node)][:2] == chain._pair_key(node, node.next)
        node = node.next
    assert len(live) == closed
    assert chain._young is chain._oldest_young()


@pytest.mark.parametrize("theta", [0.5, 0.95, 1.01])
def test_heap_keys_stay_current_through_settles_merges_floor_steps_gaps_and_extends(theta: float) -> None:
    for seed in range(12):
        mem = Memory(DIM, budget=4, theta=theta, rank=2, merge="ward-young")
        for i, (start, end, v) in enumerate(stream_with_gaps(160, seed)):
            mem.add(start, end, v)
            if i % 7 == 3:  # the gate's static frames stretch the open anchor, across a gap too
                mem.extend(end + (8.0 if i % 2 else 0.5))
            assert_heap_keys_current(mem)


def test_a_plain_ward_snapshot_stays_plain_ward(tmp_path: Path) -> None:
    # Snapshots written before ward-young became the default keep their rule: no silent switch.
    stream = stream_with_gaps(120, seed=9)
    mem = Memory(DIM, budget=6, theta=0.95, rank=2, merge="ward")
    for start, end, v in stream[:70]:
        mem.add(start, end, v)
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.merge == "ward" and back._chain.floor == 1.0
    for start, end, v in stream[70:]:
        mem.add(start, end, v)
        back.add(start, end, v)
    for got, want in zip(back.matrix(), mem.matrix(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_floor_steps_rebuild_the_heap_o_log_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rebuild is O(B log B): the floor's steps of 2^(1/8) must come O(log(n / B)) times in a
    # stream of n adds, not once per add; the stale-entry trims are amortised O(1) per push.
    from agent.core.anchors import AnchorChain

    calls: list[str] = []
    rebuild = AnchorChain._rebuild_heap

    def counted(chain: AnchorChain) -> None:
        calls.append(sys._getframe(1).f_code.co_name)  # _grown: a floor step; _trim_heap: stale entries
        rebuild(chain)

    monkeypatch.setattr(AnchorChain, "_rebuild_heap", counted)
    n, budget, rng = 20_000, 8, np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM))
    mem = Memory(DIM, budget=budget, theta=0.9, rank=2, merge="ward-young")
    floors = {mem._chain.floor}
    for i in range(n):
        mem.add(float(i), float(i + 1), centres[(i // 4) % 40] + 0.3 * rng.standard_normal(DIM))
        floors.add(mem._chain.floor)
    steps = math.floor(8 * math.log2(n / budget)) + 1
    assert len(floors) <= steps + 1 and calls.count("_grown") == len(floors) - 1 <= steps
    assert calls.count("_trim_heap") <= n // budget  # a trim drops >= 3 B stale entries
    assert set(calls) <= {"_grown", "_trim_heap"}
