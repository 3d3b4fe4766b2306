"""Compression strategies: budget, time coverage, scene retention, determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from bench.strategies import STRATEGIES, Items, avgpool, check, dense, selection, uniform

HAVE_MEMORY = importlib.util.find_spec("agent.core.memory") is not None
needs_memory = pytest.mark.skipif(not HAVE_MEMORY, reason="agent.core.memory not written yet")
NAMES = [n for n in STRATEGIES if HAVE_MEMORY or not n.startswith("svd")]
NOT_UNIFORM = [n for n in NAMES if n != "uniform"]


def scenes_stream(
    lengths: list[int], dim: int = 64, noise: float = 0.3, seed: int = 0
) -> tuple[Items, list[int]]:
    """K scenes, each a noisy cluster around its own random unit vector, one item per second."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(lengths), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(lengths)), lengths)
    embs = centres[labels] + noise * rng.normal(size=(labels.size, dim)) / np.sqrt(dim)
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    t = np.arange(labels.size, dtype=np.float64)
    return Items(t, t + 1.0, embs.astype(np.float32)), list(labels)


def represented(memory: Items, stream: Items, labels: list[int], min_cos: float = 0.8) -> set[int]:
    """Scenes for which some token overlapping the scene in time points at the scene's centre."""
    lab = np.asarray(labels)
    found = set()
    for k in np.unique(lab):
        centre = stream.embs[lab == k].mean(axis=0)
        centre /= np.linalg.norm(centre)
        s0, s1 = stream.starts[lab == k][0], stream.ends[lab == k][-1]
        overlap = (memory.starts < s1) & (memory.ends > s0)
        if overlap.any() and float(np.max(memory.embs[overlap] @ centre)) >= min_cos:
            found.add(int(k))
    return found


def assert_tiles(memory: Items, stream: Items) -> None:
    assert memory.starts[0] == stream.starts[0] and memory.ends[-1] == stream.ends[-1]
    assert np.array_equal(memory.starts[1:], memory.ends[:-1])  # contiguous, no overlap
    assert np.all(memory.ends > memory.starts)


# Long scenes interleaved with a few very short ones (the needles uniform sampling misses).
LENGTHS = [120, 4, 200, 90, 5, 300, 60, 150, 4, 80, 250, 110]


@pytest.mark.parametrize("name", NOT_UNIFORM)
def test_every_scene_survives_at_two_tokens_per_scene(name: str) -> None:
    stream, labels = scenes_stream(LENGTHS)
    memory = STRATEGIES[name](stream, 2 * len(LENGTHS))
    assert memory.starts.shape[0] <= (stream.starts.shape[0] if name == "dense" else 2 * len(LENGTHS))
    assert represented(memory, stream, labels) == set(range(len(LENGTHS)))
    assert_tiles(memory, stream)


def test_uniform_misses_short_scenes_at_the_same_budget() -> None:
    stream, labels = scenes_stream(LENGTHS)
    memory = uniform(stream, 2 * len(LENGTHS))
    assert memory.starts.shape[0] == 2 * len(LENGTHS)
    assert_tiles(memory, stream)
    missing = set(range(len(LENGTHS))) - represented(memory, stream, labels)
    assert missing and missing <= {i for i, n in enumerate(LENGTHS) if n <= 5}


def test_dense_returns_everything() -> None:
    stream, _ = scenes_stream([30, 40], seed=1)
    memory = dense(stream)
    for field in Items._fields:
        assert np.allclose(getattr(memory, field), getattr(stream, field), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    budget=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_budget_and_tiling_hold_on_any_stream(lengths: list[int], budget: int, seed: int) -> None:
    stream, _ = scenes_stream(lengths, dim=16, noise=1.0, seed=seed)
    for name in NAMES:
        memory = STRATEGIES[name](stream, budget)
        n = memory.starts.shape[0]
        assert n == stream.starts.shape[0] if name == "dense" else 1 <= n <= budget
        assert memory.embs.shape == (n, 16)
        assert np.allclose(np.linalg.norm(memory.embs, axis=1), 1.0, atol=1e-5)
        assert_tiles(memory, stream)


@pytest.mark.parametrize("name", NAMES)
def test_strategies_are_deterministic(name: str) -> None:
    a = STRATEGIES[name](scenes_stream(LENGTHS, seed=5)[0], 10)
    b = STRATEGIES[name](scenes_stream(LENGTHS, seed=5)[0], 10)
    c = STRATEGIES[name](scenes_stream(LENGTHS, seed=6)[0], 10)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in Items._fields)
    assert not all(np.array_equal(getattr(a, f), getattr(c, f)) for f in Items._fields)


def test_thresholds_use_the_budget() -> None:
    """Bisection lands on (or next to) the budget instead of collapsing to one run."""
    stream, _ = scenes_stream(LENGTHS, noise=0.6)
    for fn in (selection, avgpool):
        n = fn(stream, 40).starts.shape[0]
        assert 30 <= n <= 40


def test_items_of_collects_tuples_and_rejects_bad_streams() -> None:
    v = np.eye(3, dtype=np.float32)
    items = Items.of([(0.0, 1.0, v[0]), (1.0, 2.0, v[1])])
    assert items.embs.shape == (2, 3) and items.starts.tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError):
        Items.of([])
    with pytest.raises(ConfigError, match="increase"):
        Items.of([(1.0, 2.0, v[0]), (0.5, 1.0, v[1])])
    with pytest.raises(ConfigError, match="non-finite"):
        check(Items(np.array([0.0]), np.array([1.0]), np.full((1, 3), np.nan, np.float32)))
    with pytest.raises(ConfigError, match="budget"):
        uniform(items, 0)


@needs_memory
def test_svd_rejects_unknown_representative() -> None:
    from bench.strategies import svd

    with pytest.raises(ConfigError):
        svd(scenes_stream([5])[0], 2, "median")  # type: ignore[arg-type]
