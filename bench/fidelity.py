"""Strategies at an equal token budget: one moment procedure for all, scored against GT and dense.

Steps (synchronous numpy; the only I/O is one decode pass and the embedding cache):

1. **Dense items and queries per grid** (:mod:`bench.dense_inputs`): every sampled frame encoded
   once per super-image grid (cached next to the build); image queries encoded as the still shot
   of their photo at each grid (the engine's prescreen rule), or as the photo alone.
2. **Compression.** Every strategy of :data:`bench.strategies.STRATEGIES` turns a grid's items
   into a memory of at most ``budget`` tokens; budgets are fractions of that grid's dense count.
   Two more variants run SVD merging with SMORE's online theta rule off (``*-fill``), so they
   spend the whole budget like the other strategies do.
3. **Moments, identical for every strategy.** A query's cosine with each token is spread over the
   token's time span on a regular grid of the sampling period (a point takes the token whose
   span starts last at or before it); :func:`agent.core.proposals.propose` offers up to
   ``CANDIDATES`` windows on that curve, which are re-ranked by their mean similarity and
   thinned by temporal NMS (IoU 0.5): top-1 for R1 and fidelity, top-5 for R5 and mAP. The
   re-ranking is what the engine's refine path does too (``retrieval._by_similarity``):
   ``propose``'s own contrast z-score alone never ranked a needle first here (0 of 20 on the
   1 h haystack), because on piecewise-constant curves its noise estimate collapses and long
   bright plateaus win.
4. **Scores.** R1@0.5, R1@0.7, mAP, mIoU via :func:`agent.core.qvh.qvh_metrics`, and *fidelity*:
   the share of queries whose top-1 window overlaps the dense strategy's top-1 (same grid) at
   IoU >= 0.5; also *fidelity on dense hits*, the same share over the queries whose dense top-1
   is right (IoU >= 0.5 with the GT), where agreeing with dense means being right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import Representative
from agent.core.proposals import Proposal, nms, propose
from agent.core.qvh import qvh_metrics, temporal_iou
from agent.core.scoring import Scorer
from agent.core.svd import MergeRule
from agent.errors import ConfigError
from bench.dense_inputs import QuerySet
from bench.strategies import STRATEGIES, Compressed, Items, svd

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Windows = list[list[float]]

TOP_K = 5
CANDIDATES = 50
NMS_IOU = 0.5
FIDELITY_IOU = 0.5


def _svd_fill(
    representative: Representative,
    merge: MergeRule = "cosine",
    scorer: Scorer = "rep",
    detail: int = 0,
    runs: int = 0,
    theta: float = 1.01,
) -> Callable[[Items, int], Compressed]:
    # theta above 1 means no embedding ever joins online: every merge is a budget merge of the
    # cheapest adjacent pair, so the memory always fills its budget (SMORE's theta rule off);
    # the engine's own theta (0.95) lets near-copies join first and may leave budget unused.
    # ``detail`` = 8 gives the finer level budget // 8 of the tokens (at least 1 left coarse).
    def run(items: Items, budget: int) -> Compressed:
        fine = min(budget // detail, budget - 1) if detail else 0
        return svd(
            items, budget, representative, theta=theta, merge=merge, scorer=scorer, detail=fine, runs=runs
        )

    return run


ALL_STRATEGIES: dict[str, Callable[[Items, int], Compressed]] = {
    **STRATEGIES,
    "svd-smore-fill": _svd_fill("smore"),
    "svd-mean-fill": _svd_fill("mean"),
    # Scoring what the SVD kept, with SMORE's most-similar-pair merging.
    "svd-mean-peak-fill": _svd_fill("mean", scorer="peak"),
    "svd-mean-energy-fill": _svd_fill("mean", scorer="energy"),
    "svd-smore-energy-fill": _svd_fill("smore", scorer="energy"),
    # The default with the engine's online joins on (IndexConfig.theta 0.95), not only budget merges.
    "svd-mean-energy-theta95": _svd_fill("mean", scorer="energy", theta=0.95),
    "svd-mean-proj-fill": _svd_fill("mean", scorer="projection"),
    # Merging by reconstruction loss (Ward: around the mean; subspace: off the rank-k span).
    "svd-ward-fill": _svd_fill("mean", merge="ward"),
    "svd-ward-smore-fill": _svd_fill("smore", merge="ward"),
    "svd-ward-peak-fill": _svd_fill("mean", merge="ward", scorer="peak"),
    "svd-ward-energy-fill": _svd_fill("mean", merge="ward", scorer="energy"),
    "svd-ward-average-fill": _svd_fill("mean", merge="ward", scorer="average"),
    # Ward, with an anchor begun within the last (members per token) members priced at least at
    # that size: online, the newest footage no longer pools into one anchor (agent.core.anchors).
    "svd-ward-young-energy-fill": _svd_fill("mean", merge="ward-young", scorer="energy"),
    "svd-ward-young-energy-runs8-fill": _svd_fill("mean", merge="ward-young", scorer="energy", runs=8),
    "svd-ward-young-average-fill": _svd_fill("mean", merge="ward-young", scorer="average"),
    "svd-ward-young-fill": _svd_fill("mean", merge="ward-young"),
    # Ward, but a short anchor between its neighbours (a dissolve) folds at its residual off them.
    "svd-ward-context-energy-fill": _svd_fill("mean", merge="ward-context", scorer="energy"),
    # Merging by the worst member's dilution (Ward's sum without its min(n_a, n_b) factor).
    "svd-dilution-fill": _svd_fill("mean", merge="dilution"),
    "svd-dilution-energy-fill": _svd_fill("mean", merge="dilution", scorer="energy"),
    "svd-dilution-average-fill": _svd_fill("mean", merge="dilution", scorer="average"),
    "svd-subspace-fill": _svd_fill("mean", merge="subspace"),
    "svd-subspace-proj-fill": _svd_fill("mean", merge="subspace", scorer="projection"),
    # Two resolutions: 1/8 (1/4) of the budget keeps the most distinctive stretches merged away.
    "svd-ward-peak-2res-fill": _svd_fill("mean", merge="ward", scorer="peak", detail=8),
    "svd-ward-energy-2res-fill": _svd_fill("mean", merge="ward", scorer="energy", detail=8),
    "svd-ward-energy-2res4-fill": _svd_fill("mean", merge="ward", scorer="energy", detail=4),
    # Localisation inside anchors: up to 4 (8) sub-runs per anchor on its basis (agent.core.runs).
    "svd-ward-energy-runs4-fill": _svd_fill("mean", merge="ward", scorer="energy", runs=4),
    "svd-ward-energy-runs8-fill": _svd_fill("mean", merge="ward", scorer="energy", runs=8),
}
"""The issue's strategies plus SVD merging with the online theta rule switched off (``*-fill``):
SMORE's rules (most similar pair, representative token) and the new merge rules and scorers."""

METRIC_KEYS = {
    "R1@0.5": "MR-full-R1@0.5",
    "R1@0.7": "MR-full-R1@0.7",
    "R5@0.5": "MR-full-R5@0.5",
    "mAP": "MR-full-mAP",
    "mIoU": "MR-full-mIoU",
}


def score_curve(memory: Compressed, qvecs: F32, times: F64) -> F64:
    """(Q, T) curves: each grid time takes the score of the token whose span starts last before it."""
    runs = getattr(memory, "runs", None)
    if runs is not None:
        # Sub-runs tile the anchors: each time takes the run it falls in (agent.core.runs).
        starts, scores = runs(qvecs)
    else:
        starts, scores = memory.starts, memory.scores(qvecs)
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, starts.shape[0] - 1)
    curves = scores[:, idx]  # (Q, n) token scores spread over time
    overlay = getattr(memory, "overlay", None)
    if overlay is not None:
        # Two resolutions: each finer stretch speaks for its span, the most distinctive last.
        starts, ends, fine = overlay(qvecs)
        for j in range(starts.shape[0]):
            inside = (times >= starts[j]) & (times < max(ends[j], starts[j] + 1e-9))
            curves[:, inside] = fine[:, j : j + 1]
    return curves


def answer(
    memory: Compressed, qvecs: F32, times: F64, frame_seconds: float, top_k: int = TOP_K
) -> list[Windows]:
    """Ranked ``[start, end, score]`` windows of every query against one memory."""
    curves = score_curve(memory, qvecs, times)
    out: list[Windows] = []
    for curve in curves:
        found = propose(times, curve, top_k=CANDIDATES, frame_seconds=frame_seconds, nms_iou=NMS_IOU)
        props = nms([_by_similarity(p) for p in found], NMS_IOU, top_k)
        out.append([[round(p.start, 3), round(p.end, 3), round(p.score, 4)] for p in props])
    return out


def _by_similarity(p: Proposal) -> Proposal:
    sim = p.similarity if p.similarity is not None else p.score
    return Proposal(p.start, p.end, float(sim), p.peak, similarity=sim)


def agreement(
    preds: Sequence[Windows], reference: Sequence[Windows], iou: float = FIDELITY_IOU
) -> list[bool]:
    """Per query: whether its top-1 overlaps the reference top-1 at IoU >= ``iou``."""
    return [
        bool(p and r) and float(temporal_iou(np.array([p[0][:2]]), np.array([r[0][:2]]))[0, 0]) >= iou
        for p, r in zip(preds, reference, strict=True)
    ]


def fidelity(preds: Sequence[Windows], reference: Sequence[Windows], iou: float = FIDELITY_IOU) -> float:
    """Percent of queries whose top-1 overlaps the reference top-1 at IoU >= ``iou``."""
    if not preds:
        return 0.0
    return round(100.0 * sum(agreement(preds, reference, iou)) / len(preds), 2)


def metrics(gt: Sequence[Mapping[str, Any]], preds: Sequence[Windows]) -> dict[str, float]:
    """The reported subset of :func:`qvh_metrics` for predictions in GT order."""
    records = [{"qid": r["qid"], "pred_relevant_windows": p} for r, p in zip(gt, preds, strict=True)]
    full = qvh_metrics(gt, records)
    return {k: full[v] for k, v in METRIC_KEYS.items()}


def budgets_for(n: int, fractions: Sequence[float]) -> list[tuple[float, int]]:
    """(fraction, budget) pairs below the dense count ``n``; duplicates and budgets < 2 dropped."""
    seen: dict[int, float] = {}
    for f in sorted(fractions, reverse=True):
        b = max(2, round(n * f))
        if b < n and b not in seen:
            seen[b] = f
    return [(f, b) for b, f in seen.items()]


def compare(
    items_by_grid: Mapping[int, Items],
    query_sets_by_grid: Mapping[int, Mapping[str, QuerySet]],
    *,
    duration: float,
    fps: float,
    fractions: Sequence[float],
    strategies: Sequence[str],
    on_row: Callable[[dict[str, Any]], None] | None = None,
    extra: Mapping[str, Callable[[Items, int], Compressed]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (grid, strategy, budget): tokens, build seconds, metrics and fidelity per query kind.

    ``query_sets_by_grid``: each grid's query sets by kind (:func:`queries_by_grid`); ``extra``:
    strategies of this stream only (the oracles of :mod:`bench.oracle`), by name."""
    known = {**ALL_STRATEGIES, **(extra or {})}
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; choose from {sorted(known)}")
    times = np.arange(round(duration * fps), dtype=np.float64) / fps
    rows: list[dict[str, Any]] = []
    for grid, items in sorted(items_by_grid.items()):
        n = int(items.starts.shape[0])
        query_sets = query_sets_by_grid[grid]
        reference = {k: answer(items, q, times, 1.0 / fps) for k, (_, q) in query_sets.items()}
        rows.append(_row(grid, "dense", 1.0, n, n, 0.0, query_sets, reference, reference))
        rows[-1]["bytes"] = items.bytes_held
        rows[-1]["bytes_per_hour"] = round(items.bytes_held * 3600.0 / duration)
        for fraction, budget in budgets_for(n, fractions):
            for name in strategies:
                if name == "dense":
                    continue
                t0 = time.perf_counter()
                mem = known[name](items, budget)
                took = time.perf_counter() - t0
                preds = {k: answer(mem, q, times, 1.0 / fps) for k, (_, q) in query_sets.items()}
                tokens = int(mem.starts.shape[0])
                rows.append(_row(grid, name, fraction, budget, tokens, took, query_sets, preds, reference))
                rows[-1]["bytes"] = mem.bytes_held
                rows[-1]["bytes_per_hour"] = round(mem.bytes_held * 3600.0 / duration)
                fine = int(getattr(mem, "detail_nbytes", 0))
                if fine:
                    # Two resolutions: the finer level's share of the bytes above.
                    rows[-1]["detail_bytes_per_hour"] = round(fine * 3600.0 / duration)
                if on_row is not None:
                    on_row(rows[-1])
    return rows


def _row(
    grid: int,
    strategy: str,
    fraction: float,
    budget: int,
    tokens: int,
    seconds: float,
    query_sets: Mapping[str, QuerySet],
    preds: Mapping[str, list[Windows]],
    reference: Mapping[str, list[Windows]],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "grid": grid,
        "strategy": strategy,
        "fraction": fraction,
        "budget": budget,
        "tokens": tokens,
        "within_budget": tokens <= budget,
        "build_seconds": round(seconds, 3),
    }
    for kind, (gt, _) in query_sets.items():
        p, ref = preds[kind], reference[kind]
        hit = _top1_hits(gt, ref)
        row[kind] = {
            **metrics(gt, p),
            "fidelity": fidelity(p, ref),
            # Where dense itself is right, agreeing with it means being right: the part of
            # fidelity that does not measure agreement on a random encoder's noise.
            "fidelity_on_dense_hits": None
            if not any(hit)
            else fidelity(
                [x for x, h in zip(p, hit, strict=True) if h], [x for x, h in zip(ref, hit, strict=True) if h]
            ),
            "dense_hits": int(sum(hit)),
            # Per query, in GT order: what seeds pool and paired comparisons read (bench.pooled).
            "agree": [int(a) for a in agreement(p, ref)],
            "right": [int(h) for h in _top1_hits(gt, p)],
        }
    return row


def _top1_hits(gt: Sequence[Mapping[str, Any]], preds: Sequence[Windows]) -> list[bool]:
    """Whether each query's top-1 overlaps one of its GT windows at IoU >= 0.5."""
    return [
        bool(p) and float(temporal_iou(np.array([p[0][:2]]), np.asarray(r["relevant_windows"])).max()) >= 0.5
        for r, p in zip(gt, preds, strict=True)
    ]
