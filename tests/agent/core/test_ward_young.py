"""``ward-young``: Ward's merges, young anchors priced at the memory's members per token.

The defect it fixes: online, plain Ward folds every new frame into the newest anchor once the
memory is compressed enough, so the newest footage pools into one anchor.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.memory import Memory
from agent.core.svd import MergeRule, TruncatedSVD, merge_cost
from agent.store.memory_store import load_memory, save_memory

DIM = 16


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
    """Reference: ward-young by a linear scan over adjacent pairs, floors recomputed from scratch."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.anchors: list[list] = []  # [start, end, svd]

    def floor(self) -> float:
        members = sum(a[2].count for a in self.anchors)
        if members <= self.budget:
            return 1.0
        return float(2.0 ** (math.floor(8.0 * math.log2(members / self.budget)) / 8.0))

    def add(self, start: float, end: float, v: np.ndarray) -> None:
        if self.anchors:
            start, end = max(start, self.anchors[-1][1]), max(end, self.anchors[-1][1])
            self.anchors[-1][1] = max(self.anchors[-1][1], start)
        self.anchors.append([start, end, TruncatedSVD.from_vector(v.astype(np.float64), 2)])
        while len(self.anchors) > self.budget:
            members, floor = sum(a[2].count for a in self.anchors), self.floor()
            first = np.concatenate([[0], np.cumsum([a[2].count for a in self.anchors])[:-1]])
            young = [f + floor > members for f in first]
            costs = [
                merge_cost(a[2], b[2], "ward", floor if young[i] else 1.0, floor if young[i + 1] else 1.0)
                for i, (a, b) in enumerate(zip(self.anchors, self.anchors[1:], strict=False))
            ]
            i = int(np.argmin(costs))
            a, b = self.anchors[i], self.anchors.pop(i + 1)
            a[2], a[1] = a[2].merge(b[2]), max(a[1], b[1])


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
    starts, ends, _ = mem.matrix()
    np.testing.assert_array_equal(starts, [a[0] for a in ref.anchors])
    np.testing.assert_array_equal(ends, [a[1] for a in ref.anchors])


def test_a_restored_memory_merges_as_the_original(tmp_path: Path) -> None:
    # A restored chain recomputes each anchor's first member (a prefix sum) and the floor.
    stream = scenes(30, 9, seed=5)
    mem = Memory(DIM, budget=12, theta=0.97, rank=2, merge="ward-young")
    for i, v in enumerate(stream[:140]):
        mem.add(float(i), float(i + 1), v)
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.merge == "ward-young"
    for i, v in enumerate(stream[140:], start=140):
        mem.add(float(i), float(i + 1), v)
        back.add(float(i), float(i + 1), v)
    for got, want in zip(back.matrix(), mem.matrix(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
