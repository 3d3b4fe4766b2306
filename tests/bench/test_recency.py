"""Fidelity split by where the needle sits: the last quarter of the video against the rest."""

from __future__ import annotations

from bench import pooled, recency


def test_the_late_mask_follows_the_needle_start() -> None:
    gt = [{"relevant_windows": [[10.0, 20.0]]}, {"relevant_windows": [[2700.0, 2710.0]]}]
    assert recency.late_mask(gt, 3600.0) == [0, 1]


def test_pooled_rows_split_fidelity_early_and_late() -> None:
    def row(seed: int, agree: list[int], late: list[int]) -> dict:
        return {
            "seed": seed,
            "grid": 2,
            "strategy": "svd-ward-young-energy-fill",
            "fraction": 1 / 30,
            "budget": 60,
            "tokens": 60,
            "bytes_per_hour": 1.0,
            "image": {"agree": agree, "right": agree, "fidelity": 0.0, "late": late},
        }

    (cell,) = pooled.pool([row(0, [1, 1, 0], [0, 0, 1]), row(1, [0, 1, 1], [0, 1, 1])])
    assert cell["image"]["late"] == [0, 0, 1, 0, 1, 1]
    assert recency.split(cell) == {"early": 66.7, "late": 66.7, "late_queries": 3}
    table = recency.lines([cell], "svd-ward-young-energy-fill")
    assert "| 2 | **svd-ward-young-energy-fill** | 66.7 / 66.7 |" in table
    # Rows pooled from runs without the mask have no split, and no table.
    old = row(0, [1], [0])
    del old["image"]["late"]
    (bare,) = pooled.pool([old])
    assert recency.split(bare) is None and recency.lines([bare], "x") == []
    # A haystack with no needle in its last quarter reports "-" there, not "None".
    (early_only,) = pooled.pool([row(0, [1, 0], [0, 0])])
    assert "| 2 | x | 50.0 / - |" in recency.lines([{**early_only, "strategy": "x"}], "y")
