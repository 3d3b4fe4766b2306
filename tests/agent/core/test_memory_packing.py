"""The memory's slot stacks: what a query scores is the anchors' own storage, never a second copy."""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.anchors import Anchor
from agent.core.memory import Memory
from agent.core.scoring import SCORERS, Scorer, score_anchors
from agent.core.svd import Representative, pack_svds

FAST = settings(max_examples=30, deadline=None)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_a_query_does_not_copy_what_the_anchors_hold() -> None:
    rng = np.random.default_rng(0)
    q = unit(rng.standard_normal(256)).astype(np.float64)
    tracemalloc.start()  # before the anchors exist: freeing what was traced counts too
    try:
        mem = Memory(256, budget=64, theta=0.99, rank=4)
        for i in range(400):  # random members: every anchor fills its rank, no padding in the stack
            mem.add(float(i), float(i + 1), unit(rng.standard_normal(256)))
        mem.matrix()
        before = tracemalloc.get_traced_memory()[0]
        scores = mem.scores(q)  # reads the slots the anchors already live in
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert scores.shape == (64,)
    # A copy beside the anchors' own arrays was ~1.4 x nbytes (bases, sums and a means array);
    # a stack built per query then freed every anchor's own arrays (-nbytes, left as heap holes).
    assert abs(grown) < 0.1 * mem.nbytes, (grown, mem.nbytes)


def test_anchors_live_in_their_slots_and_slots_are_reused() -> None:
    # Every change is copied into the anchor's slot as it happens (no own arrays wait for a
    # query to stack them), and merged-away anchors hand their slots on: the stacks stop at
    # budget + 1 slots rounded up to a chunk however long the stream.
    from agent.core.slots import CHUNK

    rng = np.random.default_rng(1)
    budget = 300
    mem = Memory(32, budget=budget, theta=0.95, rank=4, detail=5)
    slots = mem._chain.slots
    for i in range(3000):
        mem.add(float(i), float(i + 1), unit(rng.standard_normal(32)))
        if i == budget:
            full = slots.nbytes
    assert mem.tokens == budget
    assert slots.capacity == -(-(budget + 1) // CHUNK) * CHUNK and slots.nbytes == full == mem.slot_bytes
    seen = set()
    for a in mem.anchors:
        c, row = divmod(a.slot, CHUNK)
        assert a.svd.basis.base is slots.basis[c] and a.svd.total.base is slots.totals[c]
        assert a.rep.base is slots.reps[c] and slots.counts[c][row] == a.svd.count
        seen.add(a.slot)
    assert len(seen) == budget


def test_slots_are_padded_to_at_most_dim_rows_whatever_the_rank() -> None:
    # An SVD of d-dim members has at most d rows: a rank above d (a hostile or careless
    # snapshot, rank 10**6) must not pad each slot to rank x d (64 MB a row at d 16).
    from agent.core.slots import CHUNK
    from agent.store.memory_store import memory_from_state

    state = Memory(16, budget=4, theta=0.9, rank=2).state_dict()
    rank = 10**6
    state |= {
        "rank": np.array(rank),
        "basis": np.zeros((0, rank, 16), np.float32),
        "sigma": np.zeros((0, rank), np.float32),
    }
    mem, at_dim = memory_from_state(state), Memory(16, budget=4, theta=0.9, rank=16)
    rng = np.random.default_rng(3)
    for i in range(8):
        vec = unit(rng.standard_normal(16))
        mem.add(float(i), float(i) + 0.5, vec)
        at_dim.add(float(i), float(i) + 0.5, vec)
    assert mem.rank == rank and mem.tokens == 4
    assert mem.slot_bytes <= CHUNK * (16 * 16 * 4 + 16 * 4 + 16 * 8 + 8 + 16 * 4)
    q = unit(rng.standard_normal(16))
    assert np.array_equal(mem.scores(q), at_dim.scores(q))  # what rank 16 = d keeps, bit for bit


@FAST
@given(
    seed=st.integers(0, 2**16),
    budget=st.integers(1, 8),
    detail=st.integers(0, 3),
    every=st.integers(1, 5),
    scorer=st.sampled_from(SCORERS),
    rep=st.sampled_from(["mean", "smore"]),
)
def test_queries_never_change_what_the_memory_keeps(
    seed: int, budget: int, detail: int, every: int, scorer: Scorer, rep: Representative
) -> None:
    # Two memories fed the same members, one queried every few adds: anchors that share the
    # stack, then change (joins, merges, re-orthonormalisation), must leave it and the twin equal.
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 8))
    queried, quiet = (
        Memory(8, budget=budget, theta=0.9, rank=3, detail=detail, scorer=scorer, representative=rep)
        for _ in "ab"
    )
    q = unit(rng.standard_normal(8)).astype(np.float64)
    for i in range(80):
        v = unit(centres[rng.integers(3)] + 0.2 * rng.standard_normal(8))
        queried.add(float(i), float(i + 1), v)
        quiet.add(float(i), float(i + 1), v)
        if i % every == 0:
            got = queried.scores(q)
            if scorer == "rep":
                want = quiet.matrix()[2].astype(np.float64) @ q
            else:
                p = pack_svds([a.svd for a in quiet.anchors], 3, 8)
                means = p["totals"] / p["counts"][:, None]
                want = score_anchors(q, p["basis"], p["sigma"], means, p["counts"], scorer)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    a, b = queried.state_dict(), quiet.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for stretch in queried.detail.stretches():  # kept apart: owns its arrays, pins no stack
        assert stretch.svd.basis.base is None and stretch.svd.total.base is None


def test_anchors_merged_away_are_freed_while_stale_heap_entries_remain() -> None:
    # A stale pair-heap entry names the node it was pushed for; a node that died in a merge must
    # not keep its anchor's bases, sums and token (~14 KB at d 512) alive until a heap rebuild.
    rng = np.random.default_rng(3)
    twins = [v for v in (unit(rng.standard_normal(64)) for _ in range(20)) for _ in range(2)]
    fresh = [unit(rng.standard_normal(64)) for _ in range(20)]
    mem = Memory(64, budget=40, theta=1.01, rank=4)  # nothing joins: one anchor per add
    seen: list[weakref.ref[Anchor]] = []
    for i, v in enumerate(twins + fresh):  # each fresh add merges a pair of twins, inside the chain
        mem.add(float(i), float(i + 1), v + (1e-3 * rng.standard_normal(64)).astype(np.float32))
        seen.append(weakref.ref(mem.anchors[-1]))
    mem.matrix()  # the views cached before the last add are rebuilt: only live anchors remain
    alive = len({id(a) for ref in seen if (a := ref()) is not None})
    assert mem.tokens == 40 and mem.heap_entries > mem.tokens  # stale entries exist ...
    assert alive == mem.tokens  # ... and pin no dead anchor


@FAST
@given(seed=st.integers(0, 2**16), budget=st.integers(1, 6), cut=st.integers(1, 60))
def test_a_snapshot_of_a_queried_memory_continues_as_a_never_queried_one(
    seed: int, budget: int, cut: int
) -> None:
    # Anchors hold views of the packed stack when the snapshot is taken; the restored memory
    # (queried again, with sub-runs and a finer level) must go on exactly as the quiet twin.
    from agent.store.memory_store import memory_from_state

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 8))
    members = [unit(centres[rng.integers(3)] + 0.2 * rng.standard_normal(8)) for _ in range(80)]
    q = unit(rng.standard_normal(8)).astype(np.float64)

    def fresh() -> Memory:
        return Memory(8, budget=budget, theta=0.9, rank=3, detail=2, scorer="peak", runs=3)

    queried, quiet = fresh(), fresh()
    for i, v in enumerate(members[:cut]):
        queried.add(float(i), float(i + 1), v)
        quiet.add(float(i), float(i + 1), v)
        queried.scores(q)
        queried.run_scores(q)
    restored = memory_from_state(queried.state_dict())
    for i, v in enumerate(members[cut:], start=cut):
        for mem in (queried, restored, quiet):
            mem.add(float(i), float(i + 1), v)
        restored.scores(q)
        queried.run_scores(q)
    want = quiet.state_dict()
    for mem in (queried, restored):
        got = mem.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_array_equal(mem.scores(q), quiet.scores(q))
