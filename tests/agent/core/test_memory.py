"""The rolling memory: budget, timeline invariants, merge order, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.anchors import _HEAP_SLACK, ENTRY_BYTES, FOLD_MEMBERS, fold_cost
from agent.core.memory import DEFAULT_REPRESENTATIVE, Memory
from agent.core.scoring import SCORERS, Scorer, score_anchors
from agent.core.svd import (
    MERGE_RULES,
    MergeRule,
    Representative,
    TruncatedSVD,
    batch_svd,
    merge_cost,
    pack_svds,
)
from agent.errors import IndexStoreError, SnapshotVersionError
from agent.store.memory_store import load_memory, memory_from_state, save_memory

DIM = 8
FAST = settings(max_examples=50, deadline=None)
REPRESENTATIVES: tuple[Representative, ...] = ("mean", "smore")
"""Both stay live: the default, and the one every index built before it keeps (FOLLOW_INDEX)."""


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def basis_vector(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def expected_spans(items: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Reference coverage: a new interval whenever an item starts > gap after everything so far."""
    spans: list[list[float]] = []
    for s, e in items:
        if spans and s - spans[-1][1] <= gap:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return [(s, e) for s, e in spans]


def check_timeline(mem: Memory) -> None:
    """Anchors ordered, disjoint, and covering every ingested interval with no extra hole."""
    starts, ends, reps = mem.matrix()
    spans = np.array(mem.spans()).reshape(-1, 2)
    assert len(starts) == mem.tokens <= mem.budget
    assert np.all(ends >= starts) and np.all(starts[1:] >= ends[:-1])
    np.testing.assert_allclose(np.linalg.norm(reps, axis=1), 1.0, rtol=1e-5)
    if mem.tokens == 0:
        assert len(spans) == 0
        return
    assert starts[0] == spans[0, 0] and ends[-1] == spans[-1, 1]
    holes = [(ends[i], starts[i + 1]) for i in range(len(starts) - 1) if ends[i] < starts[i + 1]]
    for lo, hi in holes:
        # A hole between anchors may only sit inside a gap of the input.
        assert not np.any((spans[:, 0] < hi) & (spans[:, 1] > lo)), (lo, hi, spans)


item = st.tuples(
    st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 7.0, 40.0]),  # delay after the previous start
    st.sampled_from([0.0, 0.5, 1.0, 3.0]),  # duration
    st.integers(0, 3),  # which cluster
    st.booleans(),  # followed by a static frame (extend)
)


@FAST
@given(
    items=st.lists(item, min_size=1, max_size=40),
    budget=st.integers(1, 6),
    theta=st.sampled_from([0.5, 0.9, 0.99]),
    rank=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    merge=st.sampled_from(MERGE_RULES),
    rep=st.sampled_from(REPRESENTATIVES),
)
def test_invariants_hold_after_every_add(
    items: list[tuple[float, float, int, bool]],
    budget: int,
    theta: float,
    rank: int,
    seed: int,
    merge: MergeRule,
    rep: Representative,
) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, DIM))
    mem = Memory(DIM, budget=budget, theta=theta, rank=rank, gap_seconds=5.0, merge=merge, representative=rep)
    ingested: list[tuple[float, float]] = []
    t = 0.0
    for delay, dur, cluster, static in items:
        t += delay
        mem.add(t, t + dur, unit(centres[cluster] + 0.1 * rng.standard_normal(DIM)))
        ingested.append((t, t + dur))
        if static:
            mem.extend(t + dur + 1.0)
            ingested.append((t + dur + 1.0, t + dur + 1.0))
        assert mem.tokens <= budget
        check_timeline(mem)
    if mem.forgotten_gap_seconds == 0:
        assert mem.spans() == expected_spans(ingested, 5.0)
    total = sum(e - s for s, e in mem.spans())
    retained, spt = mem.coverage(ingested[0][0], max(e for _, e in ingested))
    assert retained == pytest.approx(total)
    assert spt > 0 or all(s == e for s, e in ingested)


class ScanMemory:
    """Reference: the same policy with a linear scan over adjacent pairs instead of a heap."""

    def __init__(
        self,
        budget: int,
        theta: float,
        rank: int,
        gap: float,
        merge: MergeRule = "cosine",
        rep: Representative = DEFAULT_REPRESENTATIVE,
    ) -> None:
        self.budget, self.theta, self.rank, self.gap, self.merge = budget, theta, rank, gap, merge
        self.rep = rep
        self.anchors: list[list] = []  # [start, end, svd, rep]

    def add(self, start: float, end: float, v: np.ndarray) -> None:
        vec = v.astype(np.float64)
        if self.anchors:
            last = self.anchors[-1]
            gap = start - last[1] > self.gap
            if not gap and float(last[3] @ vec) >= self.theta * np.linalg.norm(vec):
                last[2].update(vec)
                last[3] = last[2].representative(self.rep)
                last[1] = max(last[1], end)
                return
            if not gap:
                last[1] = max(last[1], start)
            start, end = max(start, last[1]), max(end, last[1])
        svd = TruncatedSVD.from_vector(vec, self.rank)
        self.anchors.append([start, end, svd, svd.representative(self.rep)])
        while len(self.anchors) > self.budget:
            keys = [
                (int(a[1] < b[0]), self.cost(i))
                for i, (a, b) in enumerate(zip(self.anchors, self.anchors[1:], strict=False))
            ]
            i = min(range(len(keys)), key=keys.__getitem__)
            a, b = self.anchors[i], self.anchors.pop(i + 1)
            a[2] = a[2].merge(b[2])
            a[3] = a[2].representative(self.rep)
            a[1] = max(a[1], b[1])

    def cost(self, i: int) -> float:
        """The cost of merging anchors i and i + 1, computed afresh."""
        a, b = self.anchors[i], self.anchors[i + 1]
        if self.merge == "cosine":
            return -float(a[3] @ b[3])
        if self.merge != "ward-context":
            return merge_cost(a[2], b[2], self.merge)
        # Context across a gap does not count (a neighbour on the far side is no dissolve partner).
        before = self.anchors[i - 1] if i > 0 and self.anchors[i - 1][1] >= a[0] else None
        after = self.anchors[i + 2] if i + 2 < len(self.anchors) and b[1] >= self.anchors[i + 2][0] else None
        return fold_cost(before and before[2], a[2], b[2], after and after[2])


@FAST
@given(
    n=st.integers(1, 120),
    budget=st.integers(1, 8),
    theta=st.sampled_from([0.6, 0.95]),
    seed=st.integers(0, 2**16),
    merge=st.sampled_from(["cosine", "ward", "ward-context", "dilution"]),
    rep=st.sampled_from(REPRESENTATIVES),
)
def test_heap_merges_match_a_linear_scan(
    n: int, budget: int, theta: float, seed: int, merge: MergeRule, rep: Representative
) -> None:
    # Long random streams (numpy-drawn) so merges keep re-scoring neighbours of merged anchors.
    # (The subspace rule is left out: its many zero-cost ties may be broken in another order.)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, DIM))
    mem = Memory(DIM, budget=budget, theta=theta, rank=2, gap_seconds=5.0, merge=merge, representative=rep)
    ref = ScanMemory(budget, theta, 2, 5.0, merge, rep)
    t = 0.0
    for _ in range(n):
        t += float(rng.choice([0.0, 0.5, 1.0, 2.0, 7.0]))
        dur = float(rng.choice([0.0, 1.0, 3.0]))
        v = unit(centres[rng.integers(4)] + 0.2 * rng.standard_normal(DIM))
        mem.add(t, t + dur, v)
        ref.add(t, t + dur, v)
    starts, ends, reps = mem.matrix()
    np.testing.assert_array_equal(starts, [a[0] for a in ref.anchors])
    np.testing.assert_array_equal(ends, [a[1] for a in ref.anchors])
    np.testing.assert_allclose(reps, np.stack([a[3] for a in ref.anchors]), atol=1e-6)


def test_similar_items_join_and_dissimilar_open_anchors() -> None:
    mem = Memory(DIM, budget=10, theta=0.9)
    mem.add(0.0, 1.0, basis_vector(0))
    mem.add(1.0, 2.0, unit(basis_vector(0) + 0.1 * basis_vector(1)))
    assert mem.tokens == 1
    mem.add(2.5, 3.0, basis_vector(2))
    assert mem.tokens == 2
    starts, ends, reps = mem.matrix()
    # The seam is closed: the first anchor runs to where the second begins.
    np.testing.assert_array_equal(starts, [0.0, 2.5])
    np.testing.assert_array_equal(ends, [2.5, 3.0])
    assert mem.anchors[0].svd.count == 2
    np.testing.assert_allclose(reps[1], basis_vector(2))


def test_budget_merges_the_most_similar_adjacent_pair() -> None:
    mem = Memory(DIM, budget=3, theta=0.999, rank=2, merge="cosine")
    a, b = basis_vector(0), basis_vector(1)
    near_b = unit(basis_vector(1) + 0.2 * basis_vector(2))
    for i, e in enumerate([a, b, near_b, a]):
        mem.add(float(i), float(i) + 1.0, e)
    starts, ends, _ = mem.matrix()
    np.testing.assert_array_equal(starts, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(ends, [1.0, 3.0, 4.0])
    assert [x.svd.count for x in mem.anchors] == [1, 2, 1]


def test_pairs_across_a_gap_merge_last_and_coverage_stays_honest() -> None:
    mem = Memory(DIM, budget=2, theta=0.999, gap_seconds=5.0)
    mem.add(0.0, 1.0, basis_vector(0))
    mem.add(100.0, 101.0, basis_vector(0))  # identical, but after a gap
    mem.add(101.0, 102.0, basis_vector(3))  # unrelated, but contiguous
    starts, ends, _ = mem.matrix()
    np.testing.assert_array_equal(starts, [0.0, 100.0])
    np.testing.assert_array_equal(ends, [1.0, 102.0])
    assert mem.spans() == [(0.0, 1.0), (100.0, 102.0)]
    small = Memory(DIM, budget=1, theta=0.999)
    for s, e, v in [(0.0, 1.0, 0), (100.0, 101.0, 0), (101.0, 102.0, 3)]:
        small.add(s, e, basis_vector(v))
    assert small.tokens == 1
    assert (small.anchors[0].start, small.anchors[0].end) == (0.0, 102.0)
    assert small.spans() == [(0.0, 1.0), (100.0, 102.0)]
    retained, spt = small.coverage(0.0, 102.0)
    assert retained == pytest.approx(3.0) and spt == pytest.approx(102.0)


def test_coverage_of_ranges() -> None:
    mem = Memory(DIM, budget=10, theta=0.999, gap_seconds=5.0)
    for i in range(4):
        mem.add(2.0 * i, 2.0 * i + 2.0, basis_vector(i))
    mem.add(50.0, 52.0, basis_vector(5))
    assert mem.coverage(1.0, 5.0) == pytest.approx((4.0, 2.0))
    assert mem.coverage(6.0, 51.0) == pytest.approx((3.0, 2.0))
    assert mem.coverage(20.0, 30.0) == (0.0, float("inf"))
    assert mem.coverage(3.0, 3.0) == (0.0, pytest.approx(2.0))
    with pytest.raises(ValueError):
        mem.coverage(5.0, 1.0)


def test_extend_stretches_the_newest_anchor_and_records_gaps() -> None:
    mem = Memory(DIM, budget=4, theta=0.9, gap_seconds=5.0)
    with pytest.raises(ValueError, match="before any add"):
        mem.extend(1.0)
    mem.add(0.0, 1.0, basis_vector(0))
    mem.extend(3.0)
    mem.extend(2.0)  # already covered: no change
    assert mem.spans() == [(0.0, 3.0)]
    mem.extend(20.0)  # a static frame after a jump: the anchor spans it, coverage shows the gap
    assert mem.spans() == [(0.0, 3.0), (20.0, 20.0)]
    assert mem.matrix()[1][-1] == 20.0
    with pytest.raises(ValueError):
        mem.extend(-1.0)


def test_bad_input_is_rejected_and_nothing_is_lost() -> None:
    mem = Memory(DIM, budget=4, theta=0.9)
    mem.add(5.0, 6.0, basis_vector(0))
    before = [m.copy() for m in mem.matrix()]
    bad = [
        (4.0, 5.0, basis_vector(1)),  # time goes backwards
        (7.0, 6.5, basis_vector(1)),  # end before start
        (7.0, 8.0, np.ones(DIM + 1)),  # wrong dimension
        (7.0, 8.0, np.full(DIM, np.nan)),  # not finite
        (7.0, 8.0, np.zeros(DIM)),  # no direction
    ]
    for s, e, v in bad:
        with pytest.raises(ValueError):
            mem.add(s, e, v)
    for got, want in zip(mem.matrix(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert mem.spans() == [(5.0, 6.0)]
    with pytest.raises(ValueError):
        Memory(DIM, budget=0, theta=0.9)
    with pytest.raises(ValueError):
        Memory(DIM, budget=4, theta=0.9, representative="median")  # type: ignore[arg-type]


def test_matrix_is_cached_and_read_only() -> None:
    mem = Memory(DIM, budget=4, theta=0.9)
    mem.add(0.0, 1.0, basis_vector(0))
    first = mem.matrix()
    assert mem.matrix()[2] is first[2]
    with pytest.raises(ValueError):
        first[2][0, 0] = 2.0
    mem.add(1.0, 2.0, basis_vector(1))
    assert mem.matrix()[2] is not first[2] and mem.matrix()[2].shape == (2, DIM)


HEAP_BOUND = _HEAP_SLACK * 32 + 64
"""Most pair-heap entries a budget-32 chain holds before it rebuilds its heap."""


def held(mem: Memory) -> tuple[int, int]:
    """(bytes of everything but the pair heap, heap entries): "flat" bounds each part, since
    stale heap entries swing the total until a rebuild (an O(budget) bound of their own)."""
    entries = mem._chain.heap_entries
    return mem.nbytes - ENTRY_BYTES * entries, entries


def feed(mem: Memory, n: int, rng: np.random.Generator, *, t0: float = 0.0, gap_every: int = 0) -> float:
    t = t0
    for i in range(n):
        t += 60.0 if gap_every and i % gap_every == 0 else 1.0
        mem.add(t, t + 1.0, unit(rng.standard_normal(mem.dim)))
    return t


def test_heap_stays_bounded_over_many_adds() -> None:
    rng = np.random.default_rng(0)
    mem = Memory(16, budget=8, theta=0.3, rank=2)
    longest = 0
    for _ in range(40):
        feed(mem, 100, rng, t0=mem.matrix()[1][-1] if mem.tokens else 0.0)
        longest = max(longest, mem.heap_entries)
        assert mem.tokens <= 8
    assert longest <= 4 * 8 + 64 + 2


def test_nbytes_stop_growing_once_the_budget_is_full() -> None:
    rng = np.random.default_rng(1)
    mem = Memory(32, budget=32, theta=0.2, rank=4)
    t = feed(mem, 5 * 32, rng, gap_every=7)
    early = held(mem)[0]
    peak = early
    for _ in range(9):
        t = feed(mem, 5 * 32, rng, t0=t, gap_every=7)
        peak = max(peak, held(mem)[0])
        assert held(mem)[1] <= HEAP_BOUND
    assert mem.tokens == 32
    assert peak <= 1.25 * early
    assert len(mem.spans()) <= 4 * 32
    assert mem.forgotten_gap_seconds > 0  # the interval list hit its bound and says so


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    mem = Memory(DIM, budget=6, theta=0.5, rank=3, representative="mean", gap_seconds=3.0)
    t = feed(mem, 50, rng, gap_every=9)
    mem.extend(t + 2.0)
    path = tmp_path / "memory.npz"
    save_memory(mem, path)
    back = load_memory(path)
    for got, want in zip(back.matrix(), mem.matrix(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert back.spans() == mem.spans()
    assert (back.dim, back.budget, back.rank, back.theta) == (DIM, 6, 3, 0.5)
    assert (back.representative, back.gap_seconds) == ("mean", 3.0)
    # The restored memory carries on exactly like the original.
    for m in (mem, back):
        feed(m, 30, np.random.default_rng(3), t0=t + 2.0)
    (s1, e1, r1), (s2, e2, r2) = back.matrix(), mem.matrix()
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(r1, r2, rtol=1e-6)
    with pytest.raises(ValueError):
        back.add(0.0, 1.0, basis_vector(0))  # time order survives the round trip
    empty = tmp_path / "empty.npz"
    save_memory(Memory(DIM, budget=2, theta=0.5), empty)
    assert load_memory(empty).tokens == 0


def test_broken_snapshots_raise_index_store_error(tmp_path: Path) -> None:
    mem = Memory(DIM, budget=4, theta=0.5)
    feed(mem, 10, np.random.default_rng(4))
    good = tmp_path / "good.npz"
    save_memory(mem, good)
    data = good.read_bytes()
    cases = {
        "missing.npz": None,
        "truncated.npz": data[: len(data) // 2],
        "garbage.npz": b"not a snapshot at all" * 50,
        "empty.npz": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(IndexStoreError):
            load_memory(path)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(IndexStoreError):
        load_memory(tmp_path / "plain.npy")


def test_inconsistent_states_raise_index_store_error() -> None:
    mem = Memory(DIM, budget=4, theta=0.5)
    feed(mem, 10, np.random.default_rng(5))
    state = mem.state_dict()
    broken = [
        {k: v for k, v in state.items() if k != "reps"},
        {**state, "starts": state["starts"][::-1].copy()},
        {**state, "reps": state["reps"][:, :3]},
        {**state, "budget": np.array(2)},
        {**state, "totals": np.full_like(state["totals"], np.inf)},
        {k: v for k, v in state.items() if k != "format_version"},
        {**state, "format_version": np.array(np.inf)},
        # A last start of +inf or NaN would load, then refuse (or misorder) every later frame.
        {**state, "last_start": np.array(np.inf)},
        {**state, "last_start": np.array(np.nan)},
        {**state, "coverage_break": np.array([True, False])},
        {**state, "coverage_break": np.array(0.5)},
    ]
    for bad in broken:
        with pytest.raises(IndexStoreError) as info:
            memory_from_state(bad)
        assert not isinstance(info.value, SnapshotVersionError)


def test_version_mismatch_raises_snapshot_version_error(tmp_path: Path) -> None:
    mem = Memory(DIM, budget=4, theta=0.5)
    feed(mem, 5, np.random.default_rng(6))
    state = mem.state_dict()
    state["format_version"] = np.array(Memory.FORMAT_VERSION + 1)
    path = tmp_path / "future.npz"
    np.savez(path, **state)  # type: ignore[arg-type]
    with pytest.raises(SnapshotVersionError):
        load_memory(path)


def test_failed_save_keeps_the_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    mem = Memory(DIM, budget=4, theta=0.5)
    feed(mem, 10, rng)
    path = tmp_path / "memory.npz"
    save_memory(mem, path)
    saved = mem.matrix()
    feed(mem, 10, rng, t0=100.0)

    def crash(fd: int) -> None:
        raise OSError("disk died mid-write")

    # The new bytes are written to the temporary file, then the crash hits before the rename.
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(IndexStoreError):
        save_memory(mem, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["memory.npz"]
    for got, want in zip(load_memory(path).matrix(), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    save_memory(mem, path)
    np.testing.assert_array_equal(load_memory(path).matrix()[2], mem.matrix()[2])


@pytest.mark.parametrize("merge", MERGE_RULES)
def test_nbytes_stay_flat_under_every_merge_rule(merge: MergeRule) -> None:
    rng = np.random.default_rng(4)
    mem = Memory(32, budget=32, theta=1.01, rank=4, merge=merge)  # theta off: every add merges
    # "Flat": what later hours hold never exceeds what the first full hours held (the heap
    # apart, bounded by its own rebuild).
    t, early = 0.0, 0
    for _ in range(4):
        t = feed(mem, 3 * 32, rng, t0=t, gap_every=7)
        early = max(early, held(mem)[0])
    for _ in range(12):
        t = feed(mem, 3 * 32, rng, t0=t, gap_every=7)
        assert mem.tokens == 32
        assert held(mem)[0] <= 1.1 * early and held(mem)[1] <= HEAP_BOUND


@FAST
@given(seed=st.integers(0, 2**16), budget=st.integers(1, 8), scorer=st.sampled_from(SCORERS))
def test_scores_follow_the_scorer(seed: int, budget: int, scorer: Scorer) -> None:
    rng = np.random.default_rng(seed)
    mem = Memory(DIM, budget=budget, theta=0.9, rank=3, scorer=scorer)
    feed(mem, 30, rng)
    q = unit(rng.standard_normal(DIM)).astype(np.float64)
    got = mem.scores(q)
    _, _, reps = mem.matrix()
    if scorer == "rep":
        want = reps.astype(np.float64) @ q
    else:
        p = pack_svds([a.svd for a in mem.anchors], 3, DIM)
        want = score_anchors(
            q, p["basis"], p["sigma"], p["totals"] / p["counts"][:, None], p["counts"], scorer
        )
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got.shape == (mem.tokens,)
    mem.add(1e6, 1e6 + 1.0, unit(rng.standard_normal(DIM)))  # the cached stack follows changes
    assert mem.scores(q).shape == (mem.tokens,)
    with pytest.raises(ValueError):
        mem.scores(np.ones(DIM + 1))


def test_defaults_are_cosine_merging_of_means_and_energy_scoring() -> None:
    mem = Memory(DIM, budget=4, theta=0.9)
    assert (mem.merge, mem.scorer, mem.representative) == ("cosine", "energy", "mean")
    with pytest.raises(ValueError):
        Memory(DIM, budget=4, theta=0.9, merge="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Memory(DIM, budget=4, theta=0.9, scorer="median")  # type: ignore[arg-type]


def test_a_needle_merged_away_still_ranks_first_when_scoring_what_the_svd_kept() -> None:
    # Issue #15: under budget pressure the prescreen sent refinement to the wrong anchor. A
    # 2-second needle (e0) inside a long e1 scene, next to a scene moderately close to the
    # query; the budget forces the needle into its scene. Scoring the mean token ranks the other
    # scene first; scoring what the SVD kept (RMS, or mean + spread) ranks the needle's first.
    e = np.eye(DIM)
    near = unit(0.2 * e[0] + np.sqrt(1 - 0.2**2) * e[2])
    stream = [e[1]] * 9 + [e[0]] * 2 + [e[1]] * 9 + [near] * 20
    ranked = {}
    for scorer in ("rep", "energy", "peak"):
        mem = Memory(DIM, budget=2, theta=1.01, rank=4, representative="mean", scorer=scorer)  # type: ignore[arg-type]
        for i, v in enumerate(stream):
            mem.add(float(i), float(i + 1), v)
        starts, _, _ = mem.matrix()
        np.testing.assert_array_equal(starts, [0.0, 20.0])  # the needle sits inside anchor 0
        ranked[scorer] = int(np.argmax(mem.scores(e[0])))
    assert ranked == {"rep": 1, "energy": 0, "peak": 0}


def test_dilution_keeps_a_short_distinct_needle_that_ward_folds() -> None:
    # Issue #15's mechanism: scenes B and C (40 s each, cosine 0.86), a long scene A, then a
    # 2-second needle N inside A; three tokens. Ward's cost grows with the shorter side, so it
    # keeps B and C apart and folds the needle into A (its score to the needle drops to 2/82);
    # the worst member's shift is the same for a needle as for a scene, so dilution merges the
    # closest scenes and the needle keeps its own anchor.
    e = np.eye(DIM)
    b, c, a, n = e[2], unit(e[2] + 0.6 * e[3]), e[0], e[1]
    stream = [b] * 40 + [c] * 40 + [a] * 40 + [n] * 2 + [a] * 40
    found = {}
    for merge in ("ward", "dilution"):
        mem = Memory(DIM, budget=3, theta=1.01, rank=2, merge=merge, scorer="average")  # type: ignore[arg-type]
        for i, v in enumerate(stream):
            mem.add(float(i), float(i + 1), v)
        best = int(np.argmax(mem.scores(n)))
        found[merge] = (mem.anchors[best].start, mem.anchors[best].end, round(float(mem.scores(n)[best]), 3))
    assert found["dilution"] == (120.0, 122.0, 1.0)
    assert found["ward"][1] - found["ward"][0] > 80 and found["ward"][2] < 0.05


@pytest.mark.parametrize("merge", MERGE_RULES)
def test_anchor_svds_equal_the_batch_svd_of_their_members(merge: MergeRule) -> None:
    # Members in a rank-4 span and rank 4 kept: every budget merge is exact, so each anchor's
    # SVD is the batch SVD of the items its span covers, whichever pairs the rule merged.
    rng = np.random.default_rng(11)
    span = rng.standard_normal((4, DIM))
    x = np.stack([unit(rng.standard_normal(4) @ span) for _ in range(60)]).astype(np.float64)
    mem = Memory(DIM, budget=6, theta=1.01, rank=4, merge=merge)
    for i, v in enumerate(x):
        mem.add(float(i), float(i + 1), v)
    assert mem.tokens == 6
    for a in mem.anchors:
        members = x[int(a.start) : int(a.end)]
        assert a.svd.count == len(members)
        ref = batch_svd(members, 4)
        np.testing.assert_allclose(a.svd.gram(), ref.gram(), atol=1e-4)
        np.testing.assert_allclose(a.svd.mean(), members.mean(axis=0), atol=1e-6)


def test_ward_context_folds_a_dissolve_and_keeps_a_needle() -> None:
    # Issue #15's transition anchors: scenes A and B (30 s each) with one frame mixing them
    # between, and a one-frame needle N inside B (cosine 0.86 to B, so nearer B than the mix is
    # to either scene); four tokens for five stretches. Ward keeps the mix frame (far from A
    # and from B alone) and folds the needle into B; ward-context folds the mix (it lies near
    # the segment between A and B) and the needle keeps its anchor.
    e = np.eye(DIM)
    a, b, n = e[0], e[1], unit(e[1] + 0.6 * e[2])
    mix = unit(a + b)
    stream = [a] * 30 + [mix] + [b] * 30 + [n] + [b] * 30
    found = {}
    for merge in ("ward", "ward-context"):
        mem = Memory(DIM, budget=4, theta=1.01, rank=2, merge=merge)  # type: ignore[arg-type]
        for i, v in enumerate(stream):
            mem.add(float(i), float(i + 1), v)
        found[merge] = [(x.start, x.end) for x in mem.anchors]
    assert (30.0, 31.0) in found["ward"] and (61.0, 62.0) not in found["ward"]
    assert (30.0, 31.0) not in found["ward-context"] and (61.0, 62.0) in found["ward-context"]


def test_fold_cost_is_ward_without_a_short_side_between_neighbours() -> None:
    rng = np.random.default_rng(7)
    svds = [TruncatedSVD.from_vector(unit(rng.standard_normal(DIM)), 2) for _ in range(3)]
    long_ = svds[0]
    for _ in range(FOLD_MEMBERS):
        long_.update(unit(rng.standard_normal(DIM)).astype(np.float64))
    ward = merge_cost(svds[1], svds[2], "ward")
    assert fold_cost(None, svds[1], svds[2], None) == pytest.approx(ward)
    # Never dearer than Ward: the nearer neighbour's mean lies on the segment.
    assert fold_cost(svds[0], svds[1], svds[2], long_) <= ward + 1e-12
    long_b = TruncatedSVD.from_vector(svds[2].mean(), 2)
    for _ in range(FOLD_MEMBERS):
        long_b.update(svds[2].mean())
    # Both sides long: Ward whatever the neighbours.
    assert fold_cost(svds[0], long_, long_b, svds[1]) == pytest.approx(merge_cost(long_, long_b, "ward"))


def test_merge_rule_and_scorer_survive_a_snapshot(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    mem = Memory(DIM, budget=4, theta=0.5, merge="subspace", scorer="peak")
    feed(mem, 20, rng)
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert (back.merge, back.scorer) == ("subspace", "peak")
    q = unit(rng.standard_normal(DIM))
    np.testing.assert_allclose(back.scores(q), mem.scores(q), atol=1e-6)
    # Snapshots written before these keys existed were built by SMORE's rules.
    state = {k: v for k, v in mem.state_dict().items() if k not in ("merge", "scorer")}
    old = memory_from_state(state)
    assert (old.merge, old.scorer) == ("cosine", "rep")
    bad = {**mem.state_dict(), "merge": np.array("median")}
    with pytest.raises(IndexStoreError):
        memory_from_state(bad)


def test_a_restored_ward_context_memory_merges_as_the_original(tmp_path: Path) -> None:
    # The restored chain re-keys every pair with its neighbours: later merges match exactly.
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((3, DIM))
    stream = [unit(centres[i % 3] + 0.3 * rng.standard_normal(DIM)) for i in range(80)]
    mem = Memory(DIM, budget=6, theta=1.01, rank=2, merge="ward-context")
    for i, v in enumerate(stream[:40]):
        mem.add(float(i), float(i + 1), v)
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.merge == "ward-context"
    for i, v in enumerate(stream[40:], start=40):
        mem.add(float(i), float(i + 1), v)
        back.add(float(i), float(i + 1), v)
    for got, want in zip(back.matrix(), mem.matrix(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


@FAST
@given(
    seed=st.integers(0, 2**16),
    budget=st.integers(1, 6),
    bound=st.integers(0, 4),
    n=st.integers(1, 60),
    rep=st.sampled_from(REPRESENTATIVES),
)
def test_the_finer_level_stays_bounded_and_keeps_the_most_distinctive(
    seed: int, budget: int, bound: int, n: int, rep: Representative
) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, DIM))
    mem = Memory(DIM, budget=budget, theta=0.95, rank=2, detail=bound, representative=rep)
    offered: list[float] = []
    original = mem.detail.offer

    def spy(cost: float, start: float, end: float, svd: TruncatedSVD) -> None:
        offered.append(cost)
        original(cost, start, end, svd)

    mem.detail.offer = spy  # type: ignore[method-assign]
    for i in range(n):
        mem.add(float(i), float(i + 1), unit(centres[rng.integers(4)] + 0.3 * rng.standard_normal(DIM)))
        assert len(mem.detail) <= bound and mem.tokens <= budget
    kept = [s.cost for s in mem.detail.stretches()]
    assert kept == sorted(offered)[len(offered) - len(kept) :] if bound else kept == []
    starts, ends, scores = mem.detail_scores(unit(rng.standard_normal(DIM)))
    assert scores.shape == starts.shape == ends.shape == (len(kept),)
    assert np.all(ends >= starts) and (len(kept) == 0 or (starts[0] >= 0.0 and ends.max() <= n))


def test_a_needle_merged_away_is_kept_at_the_finer_level_and_survives_a_snapshot(tmp_path: Path) -> None:
    e = np.eye(DIM)
    # One coarse token: every needle item is merged into the long scene as it arrives (the
    # shorter side); the finer level keeps the most distinctive of them at its own resolution.
    stream = [e[1]] * 9 + [e[0]] * 2 + [e[1]] * 9
    mem = Memory(DIM, budget=1, theta=0.9, rank=4, detail=1)
    for i, v in enumerate(stream):
        mem.add(float(i), float(i + 1), v)
    starts, ends, scores = mem.detail_scores(e[0])
    assert starts[0] >= 9.0 and ends[0] <= 11.0
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert mem.scores(e[0])[0] < 0.5  # the coarse token alone barely sees it
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.detail.bound == 1
    for got, want in zip(back.detail_scores(e[0]), (starts, ends, scores), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert back.nbytes == mem.nbytes
    broken = {**mem.state_dict(), "detail_spans": np.array([[5.0, 1.0]])}
    with pytest.raises(IndexStoreError):
        memory_from_state(broken)


def test_nbytes_stay_flat_with_a_finer_level() -> None:
    rng = np.random.default_rng(6)
    mem = Memory(32, budget=32, theta=1.01, rank=4, detail=8)
    t, early = 0.0, 0
    for _ in range(4):
        t = feed(mem, 3 * 32, rng, t0=t, gap_every=7)
        early = max(early, held(mem)[0])
    for _ in range(12):
        t = feed(mem, 3 * 32, rng, t0=t, gap_every=7)
        assert len(mem.detail) == 8
        assert held(mem)[0] <= 1.1 * early and held(mem)[1] <= HEAP_BOUND


def test_break_coverage_makes_the_next_span_a_new_interval_and_anchor() -> None:
    mem = Memory(DIM, budget=8, theta=0.5, gap_seconds=5.0)
    mem.break_coverage()  # empty memory: nothing to break
    mem.add(0.0, 2.0, basis_vector(0))
    mem.break_coverage()  # [2, 4) was lost
    mem.add(4.0, 6.0, basis_vector(0))  # similar enough to join, and only 2 s later: still a new interval
    assert mem.spans() == [(0.0, 2.0), (4.0, 6.0)] and mem.tokens == 2
    mem.break_coverage()
    mem.extend(7.0)  # a gated frame after a lost span starts a new interval too
    mem.add(7.0, 8.0, basis_vector(0))
    assert mem.spans() == [(0.0, 2.0), (4.0, 6.0), (7.0, 8.0)]


@pytest.mark.parametrize("then", ["add", "extend"])
def test_a_memory_restored_right_after_a_break_still_breaks(tmp_path: Path, then: str) -> None:
    # A snapshot taken between break_coverage() and the next add must carry the break: the
    # restored memory otherwise joins the lost span's neighbours into one interval and anchor.
    mem = Memory(DIM, budget=8, theta=0.5, gap_seconds=5.0)
    mem.add(0.0, 2.0, basis_vector(0))
    mem.break_coverage()
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.coverage_broken and mem.coverage_broken
    for m in (mem, back):
        if then == "extend":
            m.extend(3.0)
        m.add(4.0, 6.0, basis_vector(0))
        m.add(6.0, 7.0, basis_vector(0))
    assert (
        back.spans()
        == mem.spans()
        == ([(0.0, 2.0), (3.0, 7.0)] if then == "extend" else [(0.0, 2.0), (4.0, 7.0)])
    )
    for got, want in zip(back.matrix(), mem.matrix(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert mem.tokens == (2 if then == "add" else 1) and not back.coverage_broken


def test_a_snapshot_without_the_break_field_reads_as_no_break() -> None:
    # Snapshots written before the break was saved carry no "coverage_break": no break pending.
    mem = Memory(DIM, budget=8, theta=0.5, gap_seconds=5.0)
    mem.add(0.0, 2.0, basis_vector(0))
    mem.break_coverage()
    state = mem.state_dict()
    assert bool(state.pop("coverage_break"))
    old = memory_from_state(state)
    old.add(4.0, 6.0, basis_vector(0))
    assert old.spans() == [(0.0, 6.0)] and old.tokens == 1


@pytest.mark.parametrize("rep", REPRESENTATIVES)
@pytest.mark.parametrize("merge", MERGE_RULES)
def test_a_restored_memory_breaks_cost_ties_as_the_original(merge: MergeRule, rep: Representative) -> None:
    # Repeated identical embeddings (a black screen, a test card) give pairs of equal cost. The
    # restored heap is rebuilt in time order; the original's was pushed in merge order: a tie
    # broken by push order made the two merge different pairs after a restore.
    for seed in (13, 26, 80, 161, 434, 584, 648, 688):
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((3, 16))
        stream = [centres[rng.integers(3)] for _ in range(60)]
        budget, cut, theta = int(rng.integers(1, 9)), int(rng.integers(2, 58)), [0.5, 0.95, 1.01][seed % 3]
        mem = Memory(16, budget=budget, theta=theta, rank=2, merge=merge, representative=rep)
        for i, v in enumerate(stream[:cut]):
            mem.add(float(i), float(i + 1), v)
        back = memory_from_state(mem.state_dict())
        for i, v in enumerate(stream[cut:], start=cut):
            mem.add(float(i), float(i + 1), v)
            back.add(float(i), float(i + 1), v)
        np.testing.assert_array_equal(back.matrix()[0], mem.matrix()[0], err_msg=f"seed {seed}")
