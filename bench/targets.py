"""Issue #15's targets checked on pooled compression cells, and per-strategy means over the grids.

Reads the pooled rows of :func:`bench.pooled.pool` (one per grid, strategy and budget); shared by
``vmr bench compression`` and the analyses that re-read its JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import pooled

PEERS = ("avgpool", "selection")
"""What the chosen method must beat at every budget <= 1/10 (issue #15)."""
SUMMARY_FRACTIONS = (1 / 10, 1 / 30)
"""The budgets the per-strategy means cover (the issue's two targets); 1/100 is reported apart."""


def at(rows: Sequence[dict[str, Any]], grid: int, name: str, fraction: float) -> dict[str, Any] | None:
    for r in rows:
        if r["grid"] == grid and r["strategy"] == name and abs(r["fraction"] - fraction) < 1e-9:
            return r
    return None


def targets(rows: Sequence[dict[str, Any]], chosen: str) -> dict[str, Any]:
    """Issue #15's targets per grid for ``chosen``: fidelity >= 95 % at 1/10 and >= 85 % at 1/30,
    ahead of (>=) avgpool and selection at every budget <= 1/10, R1@0.5 at 1/30 >= 90 % of dense.

    ``*_met`` compares the point figures; on pooled rows (with intervals) ``*_verdict`` says
    whether the 95 % interval decides it (:func:`bench.pooled.verdict`)."""
    out: dict[str, Any] = {}
    for grid in sorted({r["grid"] for r in rows}):
        dense = at(rows, grid, "dense", 1.0)
        f10, f30 = at(rows, grid, chosen, 1 / 10), at(rows, grid, chosen, 1 / 30)
        if dense is None or f10 is None or f30 is None:
            continue
        ahead: list[bool] = []
        unmeasured = False  # a peer missing from the run: the target is not judged (None)
        for r in rows:
            if r["grid"] == grid and r["strategy"] == chosen and r["fraction"] <= 1 / 10 + 1e-9:
                peers = [at(rows, grid, p, r["fraction"]) for p in PEERS]
                unmeasured |= any(p is None for p in peers)
                best = max((p["image"]["fidelity"] for p in peers if p is not None), default=0.0)
                ahead.append(r["image"]["fidelity"] >= best)
        dense_r1 = dense["image"]["R1@0.5"]
        got: dict[str, Any] = {
            "fidelity_1/10": f10["image"]["fidelity"],
            "fidelity_1/10_met": f10["image"]["fidelity"] >= 95.0,
            "fidelity_1/30": f30["image"]["fidelity"],
            "fidelity_1/30_met": f30["image"]["fidelity"] >= 85.0,
            "ahead_of_avgpool_and_selection_met": None if unmeasured else bool(ahead) and all(ahead),
            "dense_R1@0.5": dense_r1,
            "R1@0.5_1/30": f30["image"]["R1@0.5"],
            "R1_within_10pct_met": f30["image"]["R1@0.5"] >= 0.9 * dense_r1,
        }
        for label, row, goal in (("1/10", f10, 95.0), ("1/30", f30, 85.0)):
            ci = row["image"].get("fidelity_ci")
            if ci is not None:
                got[f"fidelity_{label}_ci"] = list(ci)
                got[f"fidelity_{label}_verdict"] = pooled.verdict(ci[0], ci[1], goal)
        out[str(grid)] = got
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(sum(kept) / len(kept), 1) if kept else None


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per strategy, means over every grid: fidelity and fidelity on dense hits at 1/10 and 1/30
    (:data:`SUMMARY_FRACTIONS`), fidelity at 1/100; None where no row (or no dense hit) exists."""
    out: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "dense"):
        mine = [r for r in rows if r["strategy"] == name]
        mid = [r for r in mine if any(abs(r["fraction"] - f) < 1e-9 for f in SUMMARY_FRACTIONS)]
        low = [r for r in mine if abs(r["fraction"] - 1 / 100) < 1e-9]
        out[name] = {
            "fidelity": _mean([r["image"]["fidelity"] for r in mid]),
            "fidelity_on_dense_hits": _mean([r["image"]["fidelity_on_dense_hits"] for r in mid]),
            "fidelity_1/100": _mean([r["image"]["fidelity"] for r in low]),
        }
    return out
