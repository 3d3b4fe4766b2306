"""Moment-retrieval metrics, numerically identical to the official QVHighlights scorer.

The reference is Moment-DETR's ``standalone_eval/eval.py`` (``eval_moment_retrieval``). Its
rules, reproduced here on purpose (including the quirks) so our figures are comparable with
published ones:

* Predictions are *ranked by list order*: R1 uses the first window of
  ``pred_relevant_windows``, R5 the first five, and mAP keeps the first 10 before re-sorting
  them by score (a stable sort, so equal scores keep list order).
* mAP per query is the all-point interpolated VOC-2011 AP (not 11-point) of a greedy matching:
  in score order, each prediction takes the unmatched GT window of highest IoU that reaches the
  threshold, else it is a false positive. Thresholds are ``0.50, 0.55, ..., 0.95`` rounded to two
  decimals; "mAP" is the mean over queries, then over thresholds.
* R1@t: the top-1 window's best IoU over the query's GT windows is ``>= t``.
* Length ranges filter *GT windows* by length ``l`` with ``lo < l <= hi``: short (0, 10],
  middle (10, 30], long (30, 150]; a query is kept when any of its windows survives, and only
  those windows count. "full" keeps every window unfiltered.
* Reported values are percentages rounded to 2 decimals.

Where the official code crashes or yields NaN we choose a defined answer instead: a query with no
predicted window scores AP 0 and misses R1; a zero-length window pair has IoU 0. Extras not in the
official brief output: ``MR-full-mIoU`` (mean top-1 best IoU) and ``MR-full-R5@{0.5,0.7}``.

Charades-STA or any other dataset is scored by building the same dicts (``qid``,
``relevant_windows`` and ``qid``, ``pred_relevant_windows``), so there is one code path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import QueryError

FloatArray = npt.NDArray[np.float64]

# The official scorer formats its thresholds with two decimals before comparing, so 0.6 is
# exactly 0.6 and not linspace's 0.6000000000000001.
MAP_THRESHOLDS: FloatArray = np.round(np.linspace(0.5, 0.95, 10), 2)
R1_THRESHOLDS: tuple[float, ...] = (0.5, 0.7)
MAX_PRED_WINDOWS = 10
LENGTH_RANGES: dict[str, tuple[float, float]] = {
    "short": (0.0, 10.0),
    "middle": (10.0, 30.0),
    "long": (30.0, 150.0),
}


@dataclass(frozen=True, slots=True)
class _Query:
    """One query's windows as arrays: GT (G, 2); predictions (P, 3) in list (rank) order."""

    qid: Any
    gt: FloatArray
    pred: FloatArray


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (one object per non-empty line).

    Raises:
        QueryError: the file is missing, unreadable, or a line is not a JSON object.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise QueryError(f"cannot read {path}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QueryError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise QueryError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise temporal IoU of windows ``a`` (n, 2+) and ``b`` (m, 2+) -> (n, m).

    Only the first two columns (start, end) are used, so scored windows may be passed as is.
    A pair whose union is empty (two zero-length windows) has IoU 0.
    """
    a2, b2 = _as_spans(a), _as_spans(b)
    left = np.maximum(a2[:, None, 0], b2[None, :, 0])
    right = np.minimum(a2[:, None, 1], b2[None, :, 1])
    inter = np.clip(right - left, 0.0, None)
    union = (a2[:, 1] - a2[:, 0])[:, None] + (b2[:, 1] - b2[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _as_spans(x: np.ndarray) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise QueryError(f"windows must have shape (n, 2) or (n, 3), got {arr.shape}")
    return arr[:, :2]


def qvh_metrics(
    ground_truth: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    *,
    strict: bool = True,
) -> dict[str, float]:
    """Score moment predictions like the official QVHighlights scorer (see module docstring).

    Args:
        ground_truth: dicts with ``qid`` and ``relevant_windows: [[start, end], ...]``.
        predictions: dicts with ``qid`` and ``pred_relevant_windows: [[start, end, score], ...]``,
            best first.
        strict: require the same set of qids on both sides (the official default); when False,
            only qids present in both are scored.

    Returns:
        Percentages keyed like the official brief output, e.g. ``MR-full-R1@0.5``,
        ``MR-full-mAP``, ``MR-full-mAP@0.75``, the same per length range (a range without any GT
        window is left out), plus ``MR-full-mIoU`` and ``MR-full-R5@0.5``/``@0.7``.

    Raises:
        QueryError: malformed records, duplicate or mismatched qids, a query without GT windows.
    """
    queries = _join(ground_truth, predictions, strict=strict)
    out: dict[str, float] = {}
    out.update(_range_metrics("full", queries))
    best_iou = _top_k_best_iou(queries, k=1)
    out["MR-full-mIoU"] = _pct(float(best_iou.mean()))
    best5 = _top_k_best_iou(queries, k=5)
    for thr in R1_THRESHOLDS:
        out[f"MR-full-R5@{thr}"] = _pct(float(np.mean(best5 >= thr)))
    for name, (lo, hi) in LENGTH_RANGES.items():
        subset = _filter_by_length(queries, lo, hi)
        if subset:
            out.update(_range_metrics(name, subset))
    return out


def _range_metrics(name: str, queries: Sequence[_Query]) -> dict[str, float]:
    ap = _average_precision(queries)  # (Q, T)
    per_thr = ap.mean(axis=0)
    out = {
        f"MR-{name}-mAP": _pct(float(per_thr.mean())),
        f"MR-{name}-mAP@0.5": _pct(float(per_thr[0])),
        f"MR-{name}-mAP@0.75": _pct(float(per_thr[5])),
    }
    best_iou = _top_k_best_iou(queries, k=1)
    for thr in R1_THRESHOLDS:
        out[f"MR-{name}-R1@{thr}"] = _pct(float(np.mean(best_iou >= thr)))
    return out


def _pct(value: float) -> float:
    return round(100.0 * value, 2)


def _windows(record: Mapping[str, Any], key: str, width: int) -> FloatArray:
    raw = record.get(key)
    if raw is None:
        raise QueryError(f"qid {record.get('qid')!r}: missing {key!r}")
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"qid {record.get('qid')!r}: {key!r} is not numeric") from exc
    if arr.size == 0:
        return np.zeros((0, width), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < width:
        raise QueryError(f"qid {record.get('qid')!r}: {key!r} must be a list of {width}-element lists")
    if not np.isfinite(arr[:, :width]).all():
        raise QueryError(f"qid {record.get('qid')!r}: {key!r} contains non-finite values")
    return arr[:, :width]


def _index_by_qid(records: Sequence[Mapping[str, Any]], what: str) -> dict[Any, Mapping[str, Any]]:
    by_qid: dict[Any, Mapping[str, Any]] = {}
    for rec in records:
        if "qid" not in rec:
            raise QueryError(f"a {what} record has no 'qid'")
        if rec["qid"] in by_qid:
            raise QueryError(f"duplicate qid {rec['qid']!r} in {what}")
        by_qid[rec["qid"]] = rec
    return by_qid


def _join(
    ground_truth: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    *,
    strict: bool,
) -> list[_Query]:
    gt_by = _index_by_qid(ground_truth, "ground truth")
    pred_by = _index_by_qid(predictions, "predictions")
    if strict and gt_by.keys() != pred_by.keys():
        missing = len(gt_by.keys() - pred_by.keys())
        extra = len(pred_by.keys() - gt_by.keys())
        raise QueryError(f"qids differ: {missing} without prediction, {extra} without ground truth")
    # Prediction order is kept, as the official scorer iterates the submission.
    queries = [
        _Query(qid, _windows(gt_by[qid], "relevant_windows", 2), _windows(p, "pred_relevant_windows", 3))
        for qid, p in pred_by.items()
        if qid in gt_by
    ]
    if not queries:
        raise QueryError("no query is present in both ground truth and predictions")
    for q in queries:
        if len(q.gt) == 0:
            raise QueryError(f"qid {q.qid!r} has no relevant_windows")
    return queries


def _filter_by_length(queries: Sequence[_Query], lo: float, hi: float) -> list[_Query]:
    kept: list[_Query] = []
    for q in queries:
        length = q.gt[:, 1] - q.gt[:, 0]
        inside = (length > lo) & (length <= hi)
        if inside.any():
            kept.append(_Query(q.qid, q.gt[inside], q.pred))
    return kept


def _top_k_best_iou(queries: Sequence[_Query], k: int) -> FloatArray:
    """Per query, the best IoU between any of its first ``k`` predictions and any GT window."""
    best = np.zeros(len(queries), dtype=np.float64)
    for i, q in enumerate(queries):
        if len(q.pred):
            best[i] = temporal_iou(q.pred[:k], q.gt).max()
    return best


def _pad(queries: Sequence[_Query]) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """IoU tensor (Q, P, G) of score-sorted predictions, GT counts (Q,), prediction mask (Q, P)."""
    n_pred = max(1, max(min(len(q.pred), MAX_PRED_WINDOWS) for q in queries))
    n_gt = max(len(q.gt) for q in queries)
    # IoU -1 marks padding: it never reaches a threshold, so padded GTs are never matched.
    iou = np.full((len(queries), n_pred, n_gt), -1.0)
    valid = np.zeros((len(queries), n_pred), dtype=bool)
    n_pos = np.zeros(len(queries), dtype=np.float64)
    for i, q in enumerate(queries):
        pred = q.pred[:MAX_PRED_WINDOWS]
        order = np.argsort(-pred[:, 2], kind="stable")
        iou[i, : len(pred), : len(q.gt)] = temporal_iou(pred[order], q.gt)
        valid[i, : len(pred)] = True
        n_pos[i] = len(q.gt)
    return iou, n_pos, valid


def _greedy_match(iou: FloatArray, valid: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """True positives (Q, T, P): in score order, each prediction claims the free GT of highest IoU.

    Among GTs tied on IoU the official loop (a reversed ascending argsort) tries the highest index
    first; flipping the GT axis before ``argmax`` reproduces that.
    """
    q_n, p_n, g_n = iou.shape
    t_n = len(MAP_THRESHOLDS)
    locked = np.zeros((q_n, t_n, g_n), dtype=bool)
    tp = np.zeros((q_n, t_n, p_n), dtype=bool)
    q_idx = np.arange(q_n)[:, None]
    t_idx = np.arange(t_n)[None, :]
    for p in range(p_n):
        row = iou[:, p, None, :]  # (Q, 1, G)
        free = (row >= MAP_THRESHOLDS[None, :, None]) & ~locked
        masked = np.where(free, row, -np.inf)[:, :, ::-1]
        pick = g_n - 1 - masked.argmax(axis=2)  # (Q, T)
        hit = free.any(axis=2) & valid[:, p, None]
        tp[:, :, p] = hit
        locked[q_idx, t_idx, pick] |= hit
    return tp


def _average_precision(queries: Sequence[_Query]) -> FloatArray:
    """All-point interpolated AP (VOC 2011) per query and threshold -> (Q, T)."""
    iou, n_pos, valid = _pad(queries)
    tp = _greedy_match(iou, valid)
    fp = ~tp & valid[:, None, :]
    tp_cum = np.cumsum(tp, axis=2, dtype=np.float64)
    fp_cum = np.cumsum(fp, axis=2, dtype=np.float64)
    seen = tp_cum + fp_cum
    # Padded predictions repeat the last precision/recall pair, which adds no area.
    precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)
    recall = tp_cum / n_pos[:, None, None]
    shape = (*precision.shape[:2], 1)
    m_prec = np.concatenate([np.zeros(shape), precision, np.zeros(shape)], axis=2)
    m_rec = np.concatenate([np.zeros(shape), recall, np.ones(shape)], axis=2)
    envelope = np.maximum.accumulate(m_prec[:, :, ::-1], axis=2)[:, :, ::-1]
    return np.sum(np.diff(m_rec, axis=2) * envelope[:, :, 1:], axis=2)
