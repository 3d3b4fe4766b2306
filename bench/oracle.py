"""Oracle partitions: what one token per anchor can keep at a budget, knowing the scene plan.

Not methods (a live memory knows neither scene cuts nor needles): ceilings that the compression
bench scores through the very same answer path as every strategy, to tell a rule's shortfall
from the budget's.

A memory of contiguous anchors answers a query with a moment made of anchors. An anchor that
covers a whole scene of ``l`` items and ``L`` items in all overlaps that scene at IoU ``l / L``,
so it *keeps* the scene (IoU >= 0.5, the fidelity threshold) only if ``2 l >= L``. One anchor
therefore keeps at most one scene (two only when they are exactly equal), and with ``B`` anchors
for ``S > B`` scenes at least ``S - B`` scenes share an anchor with a longer neighbour.

* ``oracle-cuts`` knows where every scene begins, not which scenes are needles (query-agnostic):
  it splits the stream into ``min(B, S)`` groups of whole scenes that keep the most scenes.
  No rule that does not know the queries can expect to keep a larger share of scenes.
* ``oracle-needles`` knows which scenes are needles too: it keeps the most needles (then the
  most scenes): a ceiling for any memory of ``B`` contiguous mean-pooled anchors.

Both pool each group's items by their normalised mean (as ``avgpool``). Scene cuts are snapped to
the item grid (an item belongs to the scene holding its midpoint); a scene with no item of its
own cannot be kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ConfigError
from bench.fidelity import budgets_for
from bench.strategies import Compressed, Items, check, pooled_runs, unit_rows

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

ORACLES = ("oracle-cuts", "oracle-needles")
"""The names the compression bench accepts when the haystack's scene plan is at hand."""


def units(items: Items, scene_starts: F64) -> tuple[I64, I64]:
    """(first item (U,), scene index (U,)) of each scene that holds at least one item's midpoint."""
    mids = (items.starts + items.ends) / 2.0
    owner = np.clip(np.searchsorted(scene_starts, mids, side="right") - 1, 0, scene_starts.shape[0] - 1)
    firsts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return firsts.astype(np.int64), owner[firsts].astype(np.int64)


def _gains(lengths: I64, weights: F64) -> F64:
    """(U + 1, U + 1): ``g[i, j]`` the weight of units ``i .. j - 1`` one anchor over them keeps."""
    u = lengths.shape[0]
    g = np.zeros((u + 1, u + 1))
    for i in range(u):
        span = np.cumsum(lengths[i:])  # L of the group i .. i + t
        for t in range(u - i):
            kept = 2 * lengths[i : i + t + 1] >= span[t]
            g[i, i + t + 1] = float(weights[i : i + t + 1][kept].sum())
    return g


def best_groups(lengths: I64, weights: F64, budget: int) -> I64:
    """First unit of each of ``min(budget, U)`` contiguous groups keeping the most weight.

    ``lengths`` (U,) items per unit, ``weights`` (U,) what keeping each unit is worth. Splitting a
    group never loses a kept unit (its span only shrinks), so exactly ``min(budget, U)`` groups
    is optimal. Dynamic programming, O(U^2 (U + budget)).
    """
    u = int(lengths.shape[0])
    if budget < 1:
        raise ConfigError(f"budget must be a positive integer, got {budget!r}")
    k = min(int(budget), u)
    if k == u:
        return np.arange(u, dtype=np.int64)
    g = _gains(lengths, weights)
    best = np.full((k + 1, u + 1), -np.inf)
    arg = np.zeros((k + 1, u + 1), np.int64)
    best[0, 0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, u - (k - m) + 1):
            cand = best[m - 1, m - 1 : j] + g[m - 1 : j, j]
            at = int(np.argmax(cand))
            best[m, j], arg[m, j] = cand[at], m - 1 + at
    firsts, j = [], u
    for m in range(k, 0, -1):
        j = int(arg[m, j])
        firsts.append(j)
    return np.array(firsts[::-1], np.int64)


def _groups(items: Items, budget: int, scene_starts: F64, weights: F64) -> tuple[I64, I64, I64, I64]:
    """(group first items, unit first items, unit scene indices, unit first group) of the best groups."""
    check(items)
    firsts, owner = units(items, scene_starts)
    lengths = np.diff(np.append(firsts, items.starts.shape[0]))
    chosen = best_groups(lengths, weights[owner], budget)
    return firsts[chosen], firsts, owner, chosen


def partition(items: Items, budget: int, scene_starts: F64, weights: F64) -> Items:
    """The mean-pooled memory of the best groups of whole scenes (``weights`` per scene), as avgpool pools."""
    groups = _groups(items, budget, scene_starts, weights)[0]
    return pooled_runs(
        items, groups, np.add.reduceat(unit_rows(items.embs).astype(np.float64), groups, axis=0)
    )


def kept(
    items: Items, budget: int, scene_starts: F64, weights: F64, needle: npt.NDArray[np.bool_]
) -> dict[str, int]:
    """How many scenes (and needles) the best groups keep, one anchor each at IoU >= 0.5.

    The encoder-free part of the ceiling: a kept scene can still be missed by the encoder.
    """
    _, firsts, owner, chosen = _groups(items, budget, scene_starts, weights)
    n = items.starts.shape[0]
    lengths = np.diff(np.append(firsts, n))
    bounds = np.append(chosen, firsts.shape[0])
    hold = np.zeros(firsts.shape[0], bool)
    for a, b in itertools.pairwise(bounds):
        hold[a:b] = 2 * lengths[a:b] >= lengths[a:b].sum()
    return {
        "scenes": int(hold.sum()),
        "needles": int(needle[owner][hold].sum()),
        "of_scenes": int(scene_starts.shape[0]),
        "of_needles": int(needle.sum()),
    }


def _plan(scenes: Sequence[Mapping[str, Any]]) -> tuple[F64, npt.NDArray[np.bool_], F64, F64]:
    starts = np.array([float(s["start"]) for s in scenes], np.float64)
    needle = np.array([s.get("needle") is not None for s in scenes], bool)
    # Needles first, then as many other scenes as that allows.
    return starts, needle, np.ones(starts.shape[0]), np.where(needle, float(starts.shape[0] + 1), 1.0)


def ceilings(items: Items, budget: int, scenes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """:func:`kept` counts of both oracles for one stream and budget."""
    starts, needle, every, needles_first = _plan(scenes)
    return {
        "oracle-cuts": kept(items, budget, starts, every, needle),
        "oracle-needles": kept(items, budget, starts, needles_first, needle),
    }


def ceilings_by_grid(
    items_by_grid: Mapping[int, Items], fractions: Sequence[float], scenes: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """:func:`ceilings` per grid (str) and budget (``"1/30"``), the budgets the bench compares."""
    return {
        str(grid): {
            f"1/{round(1 / f)}": ceilings(items, budget, scenes)
            for f, budget in budgets_for(int(items.starts.shape[0]), fractions)
        }
        for grid, items in sorted(items_by_grid.items())
    }


def _share(builds: Mapping[str, Any], grid: int, label: str, name: str, what: str) -> str:
    got = [b["ceilings"][str(grid)][label][name] for b in builds.values() if "ceilings" in b]
    got = [g for g in got if g]
    if not got:
        return "-"
    return f"{100.0 * sum(g[what] for g in got) / sum(g['of_' + what] for g in got):.0f}"


def _first(budget: int | Sequence[int]) -> int:
    # Pooled rows list each seed's budget; the seeds share the item count, so they agree.
    return budget if isinstance(budget, int) else budget[0]


def lines(rows: Sequence[Mapping[str, Any]], builds: Mapping[str, Any], chosen: str) -> list[str]:
    """The report's ceilings section (empty when the run had no oracle rows)."""
    names = [n for n in ORACLES if any(r["strategy"] == n for r in rows)]
    if not names or not any("ceilings" in b for b in builds.values()):
        return []
    out = [
        "",
        "## Ceilings: what one token per anchor can keep (bench.oracle)",
        "",
        "Oracle partitions into whole scenes, mean-pooled: `oracle-cuts` knows the scene cuts "
        "(query-agnostic), `oracle-needles` also knows the needles. *Kept*: scenes whose anchor "
        "overlaps them at IoU >= 0.5 (so at most about one scene per token), pooled over the "
        "seeds; no encoder involved. Then fidelity and R1@0.5 of the chosen rule and the oracles "
        "through the same answer path.",
        "",
        "| grid | budget | tokens | scenes kept, cuts | needles kept, cuts | needles kept, needles "
        f"| fidelity {chosen} / cuts / needles | R1@0.5 same |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["strategy"] != chosen:
            continue
        grid, f = r["grid"], r["fraction"]
        label = f"1/{round(1 / f)}"
        peers = [
            next((o for o in rows if o["grid"] == grid and o["strategy"] == n and o["fraction"] == f), None)
            for n in ORACLES
        ]
        fid = " / ".join("-" if p is None else f"{p['image']['fidelity']:.0f}" for p in (r, *peers))
        r1 = " / ".join("-" if p is None else f"{p['image']['R1@0.5']:.0f}" for p in (r, *peers))
        out.append(
            f"| {grid} | {label} | {_first(r['budget'])} | {_share(builds, grid, label, 'oracle-cuts', 'scenes')} % "
            f"| {_share(builds, grid, label, 'oracle-cuts', 'needles')} % "
            f"| {_share(builds, grid, label, 'oracle-needles', 'needles')} % | {fid} | {r1} |"
        )
    return out


def strategies(scenes: Sequence[Mapping[str, Any]]) -> dict[str, Callable[[Items, int], Compressed]]:
    """The oracles for one haystack, from its manifest's ``scenes`` (start seconds, needle or None)."""
    starts, _, every, needles_first = _plan(scenes)
    return {
        "oracle-cuts": lambda items, budget: partition(items, budget, starts, every),
        "oracle-needles": lambda items, budget: partition(items, budget, starts, needles_first),
    }
