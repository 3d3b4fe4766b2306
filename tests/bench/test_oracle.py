"""The oracle partitions: the dynamic programme against brute force, what they keep, the report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.main import main
from bench import oracle
from bench.haystack import DEFAULT_DATA
from bench.strategies import Items

needs_data = pytest.mark.skipif(not (DEFAULT_DATA / "coco").is_dir(), reason="shared data folder missing")


def _kept_weight(lengths: np.ndarray, weights: np.ndarray, firsts: tuple[int, ...]) -> float:
    bounds = [*firsts, len(lengths)]
    total = 0.0
    for a, b in itertools.pairwise(bounds):
        span = lengths[a:b].sum()
        total += float(weights[a:b][2 * lengths[a:b] >= span].sum())
    return total


@pytest.mark.parametrize("seed", range(12))
def test_best_groups_match_every_partition_tried(seed: int) -> None:
    rng = np.random.default_rng(seed)
    u = int(rng.integers(1, 8))
    lengths = rng.integers(1, 6, size=u)
    weights = rng.choice([1.0, 9.0], size=u)
    for budget in range(1, u + 2):
        got = oracle.best_groups(lengths, weights, budget)
        k = min(budget, u)
        assert got.shape == (k,) and got[0] == 0 and np.all(np.diff(got) > 0)
        best = max(
            _kept_weight(lengths, weights, (0, *cuts)) for cuts in itertools.combinations(range(1, u), k - 1)
        )
        assert _kept_weight(lengths, weights, tuple(int(x) for x in got)) == best


def _stream(lengths: list[int], step: float = 1.0) -> tuple[Items, np.ndarray]:
    n = sum(lengths)
    starts = np.arange(n) * step
    embs = np.repeat(np.eye(len(lengths), 4, dtype=np.float32), lengths, axis=0)
    scene_starts = np.cumsum([0, *lengths[:-1]]) * step
    return Items(starts, starts + step, embs), scene_starts.astype(np.float64)


def test_one_anchor_keeps_one_scene_unless_its_neighbour_is_as_long() -> None:
    items, starts = _stream([10, 2, 10])
    every, needle = np.ones(3), np.array([False, True, False])
    assert oracle.kept(items, 2, starts, every, needle) == {
        "scenes": 2,
        "needles": 0,
        "of_scenes": 3,
        "of_needles": 1,
    }
    # Two scenes of equal length share an anchor at IoU exactly 0.5: both kept.
    items, starts = _stream([6, 6])
    assert oracle.kept(items, 1, starts, np.ones(2), np.array([False, False]))["scenes"] == 2


def test_the_needle_oracle_keeps_a_short_needle_the_agnostic_one_may_give_up() -> None:
    items, starts = _stream([10, 12, 4])
    scenes = [{"start": float(s), "needle": 0 if i == 2 else None} for i, s in enumerate(starts)]
    got = oracle.ceilings(items, 2, scenes)
    assert got["oracle-needles"]["needles"] == 1 and got["oracle-needles"]["scenes"] == 2
    assert got["oracle-cuts"]["scenes"] == 2  # either way one scene shares an anchor
    mem = oracle.strategies(scenes)["oracle-needles"](items, 2)
    # The memory tiles the stream, one unit token per group, the needle alone in the last.
    assert mem.starts.tolist() == [0.0, 22.0] and mem.ends.tolist() == [22.0, 26.0]
    assert np.allclose(np.linalg.norm(mem.embs, axis=1), 1.0)
    assert np.allclose(mem.embs[1], np.eye(3, 4)[2])


def test_with_a_token_per_scene_every_scene_has_its_own_anchor() -> None:
    items, starts = _stream([3, 1, 5, 2])
    scenes = [{"start": float(s), "needle": None} for s in starts]
    mem = oracle.strategies(scenes)["oracle-cuts"](items, 9)
    assert mem.starts.tolist() == starts.tolist()
    assert oracle.ceilings(items, 9, scenes)["oracle-cuts"]["scenes"] == 4


@needs_data
def test_compression_run_reports_the_ceilings(tmp_path: Path) -> None:
    argv = ["bench", "compression", "--duration", "2m", "--needles", "3", "--model", "classical-hog"]
    argv += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--grids", "1"]
    argv += ["--fractions", "1/10,1/30", "--strategies", "avgpool,svd-ward-young-energy-fill,oracle-cuts"]
    assert main(argv) == 0
    (js,) = (tmp_path / "out").glob("*.json")
    rep: dict[str, Any] = json.loads(js.read_text())
    assert rep["name"].endswith("-classical-hog-still-shot-oracles")
    ceil = rep["haystack"]["builds"]["0"]["ceilings"]["1"]
    assert set(ceil) == {"1/10", "1/30"}
    for c in ceil.values():
        cuts = c["oracle-cuts"]
        assert 0 <= cuts["needles"] <= cuts["of_needles"] == 3 and cuts["scenes"] <= cuts["of_scenes"]
    oracle_rows = [r for r in rep["rows"] if r["strategy"] == "oracle-cuts"]
    assert oracle_rows and all(r["tokens"] <= r["budget"] for r in oracle_rows)
    assert "## Ceilings" in js.with_suffix(".md").read_text()
