from __future__ import annotations

from typing import Any

from bench import targets
from bench.compression import CHOSEN


def _row(strategy: str, fraction: float, fid: float, r1: float) -> dict[str, Any]:
    return {"grid": 1, "strategy": strategy, "fraction": fraction, "image": {"fidelity": fid, "R1@0.5": r1}}


def test_targets_follow_the_issue() -> None:
    rows = [_row("dense", 1.0, 100.0, 50.0)]
    for f, fid in ((1 / 10, 95.0), (1 / 30, 85.0), (1 / 100, 40.0)):
        rows += [_row(CHOSEN, f, fid, 45.0), _row("avgpool", f, fid - 5, 40.0)]
        rows.append(_row("selection", f, 90.0 if f < 0.02 else 50.0, 40.0))
    got = targets.targets(rows, CHOSEN)["1"]
    assert got["fidelity_1/10_met"] and got["fidelity_1/30_met"] and got["R1_within_10pct_met"]
    assert not got["ahead_of_avgpool_and_selection_met"]  # selection is ahead at 1/100


def test_summary_means_every_grid_at_the_target_budgets() -> None:
    rows = []
    for grid, fids in ((1, (90.0, 70.0, 30.0)), (2, (50.0, 30.0, 10.0))):
        for f, fid in zip((1 / 10, 1 / 30, 1 / 100), fids, strict=True):
            row = {**_row(CHOSEN, f, fid, 0.0), "grid": grid}
            row["image"]["fidelity_on_dense_hits"] = None if grid == 2 else fid
            rows.append(row)
    got = targets.summary(rows)[CHOSEN]
    assert got == {"fidelity": 60.0, "fidelity_on_dense_hits": 80.0, "fidelity_1/100": 20.0}


def test_the_peer_target_is_not_judged_when_a_peer_did_not_run() -> None:
    rows = [_row("dense", 1.0, 100.0, 50.0)]
    for f in (1 / 10, 1 / 30):
        rows += [_row(CHOSEN, f, 95.0, 45.0), _row("avgpool", f, 90.0, 40.0)]
    assert targets.targets(rows, CHOSEN)["1"]["ahead_of_avgpool_and_selection_met"] is None
