"""Sub-runs inside anchors (agent.core.runs): bounded, carried across bases, localising a needle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.memory import Memory
from agent.core.runs import Runs, paint
from agent.core.svd import Representative, batch_svd
from agent.errors import IndexStoreError
from agent.store.memory_store import load_memory, memory_from_state, save_memory

DIM = 12


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def check_runs(mem: Memory, cap: int) -> None:
    """Every anchor's runs: at most ``cap``, start at the anchor, in order, counting its members."""
    for a in mem.anchors:
        assert a.runs is not None
        assert 1 <= len(a.runs) <= cap
        assert a.runs.starts[0] == a.start
        assert np.all(np.diff(a.runs.starts) > 0) and a.runs.starts[-1] <= a.end
        assert int(a.runs.counts.sum()) == a.svd.count
        assert a.runs.coefs.shape == (len(a.runs), a.svd.basis.shape[0])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    budget=st.integers(1, 6),
    cap=st.integers(1, 5),
    theta=st.sampled_from([0.2, 0.6, 1.01]),
    rep=st.sampled_from(["mean", "smore"]),
)
def test_runs_stay_bounded_ordered_and_complete(
    seed: int, budget: int, cap: int, theta: float, rep: Representative
) -> None:
    rng = np.random.default_rng(seed)
    mem = Memory(DIM, budget=budget, theta=theta, rank=3, runs=cap, representative=rep)
    for i in range(60):
        mem.add(float(i), float(i + 1), unit(rng.standard_normal(DIM)))
        assert mem.tokens <= budget
        check_runs(mem, cap)
    starts, ends, scores = mem.run_scores(unit(rng.standard_normal(DIM)))
    # The runs tile the anchors: contiguous, from the first anchor's start to the last's end.
    np.testing.assert_array_equal(starts[1:], ends[:-1])
    m_starts, m_ends, _ = mem.matrix()
    assert starts[0] == m_starts[0] and ends[-1] == m_ends[-1]
    assert np.all(np.isfinite(scores))


def test_runs_leave_the_svd_equal_to_the_batch_svd() -> None:
    # Members in a rank-4 span: the incremental SVD is exact, with or without runs.
    rng = np.random.default_rng(3)
    span = rng.standard_normal((4, DIM))
    x = np.stack([unit(rng.standard_normal(4) @ span) for _ in range(30)])
    grams = []
    for runs in (0, 3):
        mem = Memory(DIM, budget=1, theta=-1.0, rank=4, runs=runs)
        for i, v in enumerate(x):
            mem.add(float(i), float(i + 1), v)
        grams.append(mem.anchors[0].svd.gram())
    np.testing.assert_allclose(grams[1], batch_svd(x, 4).gram(), atol=1e-4)
    np.testing.assert_array_equal(grams[0], grams[1])


def test_rebasing_keeps_a_run_mean_that_lies_in_both_spans() -> None:
    rng = np.random.default_rng(5)
    old = np.linalg.qr(rng.standard_normal((DIM, 3)))[0].T.astype(np.float32)  # (3, d)
    turn = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    new = (turn @ old.astype(np.float64)).astype(np.float32)  # the same span, other axes
    mean = 0.3 * old[0] - 0.5 * old[2]
    runs = Runs.single(0.0, mean.astype(np.float64), old)
    moved = runs.rebased(old, new)
    np.testing.assert_allclose(moved.coefs[0] @ new, mean, atol=1e-5)


def test_capping_merges_the_most_alike_neighbours_first() -> None:
    coefs = np.array([[1.0, 0.0], [0.98, 0.02], [0.0, 1.0], [0.5, 0.5]], np.float32)
    runs = Runs(np.arange(4.0), np.ones(4, np.int64), coefs).capped(3)
    np.testing.assert_array_equal(runs.starts, [0.0, 2.0, 3.0])
    np.testing.assert_array_equal(runs.counts, [2, 1, 1])
    np.testing.assert_allclose(runs.coefs[0], [0.99, 0.01], atol=1e-6)


def test_paint_keeps_the_anchor_score_on_its_best_run() -> None:
    painted = paint(0.7, np.array([0.1, 0.4, 0.25]))
    np.testing.assert_allclose(painted, [0.4, 0.7, 0.55])


def test_a_needle_folded_into_a_long_anchor_is_localised_by_its_run() -> None:
    # A 3-second needle inside a 40-second scene; one token for the whole stream. The anchor's
    # span is the scene, but its best run for the needle's query is the needle's 3 seconds.
    e = np.eye(DIM)
    stream = [unit(e[1] + 0.05 * e[2])] * 20 + [e[0]] * 3 + [unit(e[1] - 0.05 * e[2])] * 20
    mem = Memory(DIM, budget=1, theta=1.01, rank=4, representative="mean", runs=4)
    for i, v in enumerate(stream):
        mem.add(float(i), float(i + 1), v)
    starts, ends, scores = mem.run_scores(e[0])
    best = int(np.argmax(scores))
    assert (starts[best], ends[best]) == (20.0, 23.0)
    assert scores[best] == pytest.approx(float(mem.scores(e[0])[0]))


def test_nbytes_stay_flat_with_runs() -> None:
    rng = np.random.default_rng(7)
    mem = Memory(32, budget=16, theta=0.2, rank=4, runs=4)
    t = 0.0
    sizes = []
    for _ in range(8):
        for _ in range(80):
            t += 1.0
            mem.add(t, t + 1.0, unit(rng.standard_normal(32)))
        sizes.append(mem.nbytes)
    assert max(sizes[1:]) <= 1.1 * sizes[1]


def test_runs_off_by_default_and_negative_rejected() -> None:
    mem = Memory(DIM, budget=2, theta=0.5)
    mem.add(0.0, 1.0, np.eye(DIM)[0])
    assert mem.anchors[0].runs is None
    assert mem.run_scores(np.eye(DIM)[0])[2].shape == (0,)
    with pytest.raises(ValueError):
        Memory(DIM, budget=2, theta=0.5, runs=-1)


def test_runs_survive_a_snapshot_and_bad_runs_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    mem = Memory(DIM, budget=4, theta=0.3, rank=3, runs=3)
    for i in range(40):
        mem.add(float(i), float(i + 1), unit(rng.standard_normal(DIM)))
    save_memory(mem, tmp_path / "m.npz")
    back = load_memory(tmp_path / "m.npz")
    assert back.runs == 3
    q = unit(rng.standard_normal(DIM))
    for got, want in zip(back.run_scores(q), mem.run_scores(q), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    state = mem.state_dict()
    state["runs_counts"] = state["runs_counts"] + 1
    with pytest.raises(IndexStoreError):
        memory_from_state(state)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("runs_cap", np.array(np.inf)),
        ("runs_cap", np.array(np.nan)),
        ("runs_cap", np.array(1e30)),
        ("runs_cap", np.array(2.5)),
        ("runs_cap", np.array([3, 3])),
        ("runs_cap", np.array(-1)),
        ("runs_cap", np.array(2**63 + 5, np.uint64)),
        ("dim", np.array(np.inf)),
    ],
)
def test_hostile_snapshot_counts_are_a_typed_error(key: str, value: np.ndarray) -> None:
    """A run cap (or dimension) that is not a non-negative int64 is refused at load, as an
    IndexStoreError: not an OverflowError traceback, nor a cap that fails the next save."""
    rng = np.random.default_rng(3)
    mem = Memory(DIM, budget=4, theta=0.3, rank=3, runs=3)
    for i in range(10):
        mem.add(float(i), float(i + 1), unit(rng.standard_normal(DIM)))
    state = {**mem.state_dict(), key: value}
    with pytest.raises(IndexStoreError):
        memory_from_state(state)
