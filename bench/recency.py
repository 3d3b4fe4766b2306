"""Where in the hour a needle sits: fidelity on the last quarter against the first three.

An online memory under a fixed budget decides each merge as footage arrives; a rule can look
good on average by keeping the past at a fine resolution and pooling the newest footage (plain
Ward does: :mod:`agent.core.anchors`, ``"ward-young"``). The haystack's needles are spread over
the hour, so the average hides it; this splits every pooled cell by whether the needle starts
in the last quarter of the video (``late``), the footage a live camera's users ask about first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LATE_FROM = 0.75
"""A needle is *late* when it starts at or after this fraction of the video."""


def late_mask(gt: Sequence[Mapping[str, Any]], duration: float) -> list[int]:
    """Per query, in GT order: 1 when its first relevant window starts in the last quarter."""
    return [int(float(r["relevant_windows"][0][0]) >= LATE_FROM * duration) for r in gt]


def split(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """Fidelity (percent) on early and on late needles of one pooled row; None without a mask."""
    img = row["image"]
    late, agree = img.get("late"), img["agree"]
    if late is None or len(late) != len(agree):
        return None
    early_hits = [a for a, x in zip(agree, late, strict=True) if not x]
    late_hits = [a for a, x in zip(agree, late, strict=True) if x]

    def pct(v: list[int]) -> float | None:
        return round(100.0 * sum(v) / len(v), 1) if v else None

    return {"early": pct(early_hits), "late": pct(late_hits), "late_queries": len(late_hits)}


def lines(rows: Sequence[Mapping[str, Any]], chosen: str, max_fraction: float = 1 / 10) -> list[str]:
    """Markdown: per grid and budget <= ``max_fraction``, each strategy's fidelity early / late."""
    cells: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    for r in rows:
        s = split(r) if r["strategy"] != "dense" and r["fraction"] <= max_fraction + 1e-9 else None
        if s is not None:
            cells.append((r, s))
    if not cells:
        return []
    n_late = cells[0][1]["late_queries"]
    fractions = sorted({r["fraction"] for r, _ in cells}, reverse=True)
    out = [
        "",
        "## Where the needle sits: fidelity on the first three quarters / the last quarter",
        "",
        f"{n_late} of the queries have their needle in the last quarter of the video "
        f"(starts at >= {LATE_FROM:g} of it; `bench.recency`).",
        "",
        "| grid | strategy | " + " | ".join(f"1/{round(1 / f)}" for f in fractions) + " |",
        "|---|---" + "|---" * len(fractions) + "|",
    ]
    for grid in sorted({r["grid"] for r, _ in cells}):
        for name in dict.fromkeys(r["strategy"] for r, _ in cells if r["grid"] == grid):
            vals = []
            for f in fractions:
                hit = [
                    s
                    for r, s in cells
                    if r["grid"] == grid and r["strategy"] == name and abs(r["fraction"] - f) < 1e-9
                ]
                vals.append("-" if not hit else f"{_pct(hit[0]['early'])} / {_pct(hit[0]['late'])}")
            bold = "**" if name == chosen else ""
            out.append(f"| {grid} | {bold}{name}{bold} | " + " | ".join(vals) + " |")
    return out


def _pct(value: float | None) -> str:
    # No needle in that part of the video (a short haystack): nothing to report, not "None".
    return "-" if value is None else f"{value}"
