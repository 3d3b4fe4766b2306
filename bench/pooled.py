"""Several haystack seeds pooled into one figure per cell, with its 95 % interval.

With 20 queries a fidelity cell moves in 5-point steps and its 95 % interval is about +-20
points, so one seed cannot tell 90 % from 95 %. ``vmr bench compression --seeds 0,1,2`` runs
the same comparison on several haystacks (different photos, needles, scene lengths); this
module pools them:

* each (grid, strategy, budget) cell counts the queries of every seed: ``k`` of ``n`` agree with
  dense (fidelity) or are right (R1@0.5); the cell is ``100 k / n`` with a Wilson score
  interval (:func:`wilson`), which stays inside [0, 100] and is honest at 0 or n hits;
* two strategies are compared *paired*, query by query on the same haystacks
  (:func:`paired`): only discordant queries (one agrees with dense, the other not) carry
  information, and an exact two-sided sign test on them says whether the difference is noise;
* a target is ``met`` when the interval's lower end reaches it, ``missed`` when its upper end
  stays below, ``undecided`` otherwise (:func:`verdict`).

Pooled rows keep the shape of one seed's rows (``row["image"]["fidelity"]``, ``["R1@0.5"]``),
so the tables, the plot and the targets of :mod:`bench.compression` read them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Z95 = 1.959964
"""Two-sided 95 % normal quantile."""
ALPHA = 0.05
"""Significance level of the paired sign test."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials, in percent (lo, hi); (0, 100) for n = 0."""
    if n <= 0:
        return 0.0, 100.0
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return round(100.0 * max(0.0, mid - half), 1), round(100.0 * min(1.0, mid + half), 1)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value of ``wins`` against ``losses`` (ties dropped); 1.0 when none."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def verdict(lo: float, hi: float, target: float) -> str:
    """``met`` (lower end >= target), ``missed`` (upper end < target) or ``undecided``."""
    if lo >= target:
        return "met"
    return "missed" if hi < target else "undecided"


def _key(r: Mapping[str, Any]) -> tuple[int, str, float]:
    return int(r["grid"]), str(r["strategy"]), round(float(r["fraction"]), 9)


def pool(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (grid, strategy, fraction) over every seed's rows (each with ``seed``).

    ``image`` holds the pooled ``fidelity`` and ``R1@0.5`` (percent), their Wilson intervals
    (``*_ci``), the counts, the per-seed fidelities and the per-query ``agree``/``right`` lists
    concatenated in seed order (for :func:`paired`); ``bytes_per_hour`` and ``tokens`` are means.
    """
    groups: dict[tuple[int, str, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (grid, strategy, _), group in groups.items():
        group = sorted(group, key=lambda r: int(r["seed"]))
        agree = [a for r in group for a in r["image"]["agree"]]
        right = [h for r in group for h in r["image"]["right"]]
        n, fid, r1 = len(agree), sum(agree), sum(right)
        row: dict[str, Any] = {
            "grid": grid,
            "strategy": strategy,
            "fraction": float(group[0]["fraction"]),
            "seeds": [int(r["seed"]) for r in group],
            "budget": [int(r["budget"]) for r in group],
            "tokens": round(sum(int(r["tokens"]) for r in group) / len(group), 1),
            "bytes_per_hour": round(sum(float(r["bytes_per_hour"]) for r in group) / len(group)),
            "image": {
                "queries": n,
                "fidelity_hits": fid,
                "fidelity": round(100.0 * fid / n, 1) if n else 0.0,
                "fidelity_ci": wilson(fid, n),
                "R1_hits": r1,
                "R1@0.5": round(100.0 * r1 / n, 1) if n else 0.0,
                "R1@0.5_ci": wilson(r1, n),
                "fidelity_per_seed": [r["image"]["fidelity"] for r in group],
                "agree": agree,
                "right": right,
            },
        }
        if all("late" in r["image"] for r in group):
            # Where each query's needle sits (bench.recency), concatenated like ``agree``.
            row["image"]["late"] = [x for r in group for x in r["image"]["late"]]
        fine = [r["detail_bytes_per_hour"] for r in group if "detail_bytes_per_hour" in r]
        if fine:
            row["detail_bytes_per_hour"] = round(sum(fine) / len(fine))
        out.append(row)
    dense = {r["grid"]: r["image"]["right"] for r in out if r["strategy"] == "dense"}
    for r in out:
        hits = dense.get(r["grid"])
        if hits is not None and len(hits) == len(r["image"]["agree"]):
            # Where dense is right, agreeing with it means being right (see bench.fidelity).
            on = [a for a, h in zip(r["image"]["agree"], hits, strict=True) if h]
            r["image"]["dense_hits"] = len(on)
            r["image"]["fidelity_on_dense_hits"] = round(100.0 * sum(on) / len(on), 1) if on else None
    return out


def paired(a: Mapping[str, Any], b: Mapping[str, Any], field: str = "agree") -> dict[str, Any]:
    """``a`` against ``b`` query by query (same seeds, same order): wins, losses, sign-test p."""
    xa, xb = a["image"][field], b["image"][field]
    if len(xa) != len(xb) or a.get("seeds") != b.get("seeds"):
        raise ValueError("paired rows must cover the same seeds and queries")
    wins = sum(1 for x, y in zip(xa, xb, strict=True) if x and not y)
    losses = sum(1 for x, y in zip(xa, xb, strict=True) if y and not x)
    return {"wins": wins, "losses": losses, "p": round(sign_test(wins, losses), 4)}


def head_to_head(
    rows: Sequence[Mapping[str, Any]], candidate: str, default: str, grids: Sequence[int], max_fraction: float
) -> dict[str, Any]:
    """``candidate`` against ``default`` on fidelity at every budget <= ``max_fraction`` of ``grids``.

    Per cell: the paired counts; ``total``: the discordant queries of all those cells summed
    and one sign test on the sums (the cells share queries, so read its p as indicative);
    ``better`` / ``worse``: the total is significant (p < :data:`ALPHA`) one way or the other.
    """
    by = {_key(r): r for r in rows}
    cells: dict[str, Any] = {}
    wins = losses = 0
    for (grid, name, frac), r in sorted(by.items()):
        if name != candidate or grid not in grids or frac > max_fraction + 1e-9:
            continue
        ref = by.get((grid, default, frac))
        if ref is None:
            continue
        cell = paired(r, ref)
        cells[f"grid {grid} 1/{round(1 / frac)}"] = cell
        wins, losses = wins + cell["wins"], losses + cell["losses"]
    p = sign_test(wins, losses)
    return {
        "candidate": candidate,
        "default": default,
        "cells": cells,
        "total": {"wins": wins, "losses": losses, "p": round(p, 4)},
        "better": wins > losses and p < ALPHA,
        "worse": losses > wins and p < ALPHA,
    }


def head_to_head_lines(h2h: Mapping[str, Mapping[str, Any]], title: str, role: str) -> list[str]:
    """Markdown lines of :func:`head_to_head` results (fidelity, budgets <= 1/10), one row each;
    ``role`` names the first column (``variant``, ``peer``)."""
    if not h2h:
        return []
    lines = [
        "",
        f"## Paired: {title} (fidelity, budgets <= 1/10)",
        "",
        "wins: queries where the first agrees with dense and the second does not; losses: the "
        "reverse; summed over the grids and budgets; p: exact two-sided sign test on the sums "
        "(cells share queries, so indicative).",
        "",
        f"| {role} | wins | losses | p | verdict | per cell (wins-losses) |",
        "|---|---|---|---|---|---|",
    ]
    for name, h in h2h.items():
        t = h["total"]
        word = "better" if h["better"] else "worse" if h["worse"] else "no significant difference"
        cells = ", ".join(f"{k}: {c['wins']}-{c['losses']}" for k, c in h["cells"].items())
        lines.append(f"| {name} | {t['wins']} | {t['losses']} | {t['p']:.3f} | {word} | {cells} |")
    return lines
