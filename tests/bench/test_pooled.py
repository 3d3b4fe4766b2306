"""Pooling seeds: Wilson intervals, the paired sign test, pooled rows and the head-to-head."""

from __future__ import annotations

from typing import Any

import pytest

from bench import pooled


def test_wilson_matches_the_textbook_figures() -> None:
    # 18 of 20: Wilson 95 % interval 69.9 .. 97.2 % (Newcombe 1998, method 3).
    assert pooled.wilson(18, 20) == (69.9, 97.2)
    lo, hi = pooled.wilson(20, 20)
    assert hi == 100.0 and lo == pytest.approx(83.9, abs=0.1)
    assert pooled.wilson(0, 20)[0] == 0.0
    assert pooled.wilson(0, 0) == (0.0, 100.0)
    # Three times the queries narrows the interval (about 1/sqrt(3) as wide).
    lo20, hi20 = pooled.wilson(18, 20)
    lo60, hi60 = pooled.wilson(54, 60)
    assert (hi60 - lo60) < 0.7 * (hi20 - lo20)


def test_sign_test_is_exact_and_two_sided() -> None:
    assert pooled.sign_test(0, 0) == 1.0
    assert pooled.sign_test(5, 5) == 1.0
    assert pooled.sign_test(6, 0) == pytest.approx(2 / 64)
    assert pooled.sign_test(0, 6) == pooled.sign_test(6, 0)
    assert pooled.sign_test(8, 2) == pytest.approx(2 * 56 / 1024)


@pytest.mark.parametrize(
    ("lo", "hi", "word"), [(95.0, 99.0, "met"), (80.0, 94.9, "missed"), (90.0, 99.0, "undecided")]
)
def test_verdict_reads_the_interval(lo: float, hi: float, word: str) -> None:
    assert pooled.verdict(lo, hi, 95.0) == word


def _row(
    seed: int, strategy: str, agree: list[int], right: list[int], fraction: float = 0.1
) -> dict[str, Any]:
    return {
        "seed": seed,
        "grid": 1,
        "strategy": strategy,
        "fraction": fraction,
        "budget": 10,
        "tokens": 10,
        "bytes_per_hour": 1000,
        "image": {"agree": agree, "right": right, "fidelity": 100.0 * sum(agree) / len(agree)},
    }


def test_pool_counts_every_seeds_queries() -> None:
    rows = [
        _row(0, "dense", [1, 1, 1], [1, 0, 1], 1.0),
        _row(1, "dense", [1, 1], [0, 1], 1.0),
        _row(1, "a", [1, 0], [0, 0]),
        _row(0, "a", [1, 1, 0], [1, 1, 0]),
    ]
    out = {r["strategy"]: r for r in pooled.pool(rows)}
    a = out["a"]
    assert a["seeds"] == [0, 1] and a["image"]["queries"] == 5
    assert a["image"]["fidelity_hits"] == 3 and a["image"]["fidelity"] == 60.0
    assert a["image"]["fidelity_ci"] == pooled.wilson(3, 5)
    assert a["image"]["R1_hits"] == 2 and a["image"]["fidelity_per_seed"] == [
        pytest.approx(66.67, abs=0.01),
        50.0,
    ]
    # Seed order, then query order: seed 0's three queries first.
    assert a["image"]["agree"] == [1, 1, 0, 1, 0]
    # Dense is right on queries 0, 2 (seed 0) and 4 (seed 1); a agrees on query 0 only.
    assert a["image"]["dense_hits"] == 3 and a["image"]["fidelity_on_dense_hits"] == 33.3


def test_paired_counts_discordant_queries_and_refuses_unpaired_rows() -> None:
    a = pooled.pool([_row(0, "a", [1, 1, 1, 0, 1], [0] * 5)])[0]
    b = pooled.pool([_row(0, "b", [0, 0, 1, 1, 1], [0] * 5)])[0]
    assert pooled.paired(a, b) == {"wins": 2, "losses": 1, "p": 1.0}
    other = pooled.pool([_row(1, "b", [0, 0, 1, 1, 1], [0] * 5)])[0]
    with pytest.raises(ValueError):
        pooled.paired(a, other)


def test_head_to_head_sums_the_budgets_at_or_below_the_limit() -> None:
    rows = []
    for frac, new, old in ((1 / 3, [0] * 8, [1] * 8), (1 / 10, [1] * 8, [0] * 8), (1 / 30, [1] * 8, [1] * 8)):
        rows += [_row(0, "new", new, [0] * 8, frac), _row(0, "old", old, [0] * 8, frac)]
    got = pooled.head_to_head(pooled.pool(rows), "new", "old", grids=[1], max_fraction=1 / 10)
    assert set(got["cells"]) == {"grid 1 1/10", "grid 1 1/30"}  # 1/3 is above the limit
    assert got["total"] == {"wins": 8, "losses": 0, "p": pytest.approx(2 / 256, abs=1e-4)}
    assert got["better"] and not got["worse"]
