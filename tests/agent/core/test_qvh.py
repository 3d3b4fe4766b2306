"""Tests of agent.core.qvh: hand-checked cases, a brute-force cross-check, and the official figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.qvh import MAP_THRESHOLDS, load_jsonl, qvh_metrics, temporal_iou
from agent.errors import QueryError

QVH_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "qvhighlights"


def _gt(qid: int, *windows: tuple[float, float]) -> dict[str, Any]:
    return {"qid": qid, "relevant_windows": [list(w) for w in windows]}


def _pred(qid: int, *windows: tuple[float, float, float]) -> dict[str, Any]:
    return {"qid": qid, "pred_relevant_windows": [list(w) for w in windows]}


def test_temporal_iou_table() -> None:
    a = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 20.0]])
    b = np.array([[0.0, 10.0], [8.0, 12.0], [30.0, 40.0]])
    expected = np.array(
        [
            [1.0, 2.0 / 12.0, 0.0],
            [5.0 / 15.0, 4.0 / 10.0, 0.0],
            [0.0, 0.0, 0.0],  # zero-length window: IoU 0, not NaN
        ]
    )
    np.testing.assert_allclose(temporal_iou(a, b), expected)
    # Scored windows (a third column) are accepted and the score ignored.
    np.testing.assert_allclose(temporal_iou(np.array([[0.0, 4.0, 0.9]]), np.array([[2.0, 6.0]])), [[1 / 3]])
    assert temporal_iou(np.zeros((0, 2)), b).shape == (0, 3)


def test_perfect_predictions_score_100() -> None:
    gt = [_gt(1, (0, 5)), _gt(2, (10, 30)), _gt(3, (20, 80), (100, 140))]
    pred = [_pred(1, (0, 5, 0.9)), _pred(2, (10, 30, 0.8)), _pred(3, (20, 80, 0.7), (100, 140, 0.6))]
    m = qvh_metrics(gt, pred)
    for key in (
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
        "MR-full-mAP",
        "MR-full-mAP@0.5",
        "MR-full-mAP@0.75",
        "MR-full-mIoU",
        "MR-full-R5@0.5",
        "MR-short-mAP",
        "MR-middle-mAP",
        "MR-long-mAP",
    ):
        assert m[key] == 100.0, key


def test_disjoint_predictions_score_0() -> None:
    gt = [_gt(1, (0, 10)), _gt(2, (50, 60))]
    pred = [_pred(1, (20, 30, 0.9), (40, 45, 0.1)), _pred(2, (0, 40, 0.5))]
    m = qvh_metrics(gt, pred)
    assert all(v == 0.0 for v in m.values()), m


def test_second_ranked_hit_gives_half_precision() -> None:
    m = qvh_metrics([_gt(1, (0, 10))], [_pred(1, (20, 30, 0.9), (0, 10, 0.8))])
    assert m["MR-full-mAP"] == 50.0  # one TP at rank 2: precision 1/2 at recall 1
    assert m["MR-full-R1@0.5"] == 0.0
    assert m["MR-full-R5@0.5"] == 100.0
    assert m["MR-full-mIoU"] == 0.0


def test_duplicate_detection_is_false_positive() -> None:
    # TP, duplicate (FP), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = .5*1 + .5*2/3.
    gt = [_gt(1, (0, 10), (20, 30))]
    pred = [_pred(1, (0, 10, 0.9), (0, 10, 0.8), (20, 30, 0.7))]
    assert qvh_metrics(gt, pred)["MR-full-mAP"] == pytest.approx(83.33)


def test_equal_scores_keep_list_order() -> None:
    gt = [_gt(1, (0, 10))]
    assert qvh_metrics(gt, [_pred(1, (20, 30, 0.5), (0, 10, 0.5))])["MR-full-mAP"] == 50.0
    assert qvh_metrics(gt, [_pred(1, (0, 10, 0.5), (20, 30, 0.5))])["MR-full-mAP"] == 100.0


def test_only_first_ten_predictions_count_for_map() -> None:
    misses = [(100.0 + i, 101.0 + i, 0.5) for i in range(10)]
    pred = [_pred(1, *misses, (0, 10, 0.99))]  # the hit is 11th in the list despite its score
    assert qvh_metrics([_gt(1, (0, 10))], pred)["MR-full-mAP"] == 0.0


def test_r1_uses_list_order_not_score() -> None:
    pred = [_pred(1, (0, 10, 0.1), (50, 60, 0.9))]
    assert qvh_metrics([_gt(1, (0, 10))], pred)["MR-full-R1@0.7"] == 100.0


def test_iou_threshold_is_inclusive() -> None:
    # IoU exactly 0.5 and exactly 0.7 count as hits at those thresholds.
    m = qvh_metrics([_gt(1, (0, 10)), _gt(2, (0, 10))], [_pred(1, (0, 5, 1.0)), _pred(2, (0, 7, 1.0))])
    assert m["MR-full-R1@0.5"] == 100.0
    assert m["MR-full-R1@0.7"] == 50.0


def test_length_ranges_filter_gt_windows() -> None:
    # Query 1 has a 10 s window (short: (0, 10] includes 10) and a 20 s one (middle).
    gt = [_gt(1, (0, 10), (50, 70)), _gt(2, (0, 20))]
    pred = [_pred(1, (50, 70, 0.9)), _pred(2, (0, 20, 0.9))]
    m = qvh_metrics(gt, pred)
    assert m["MR-middle-mAP"] == 100.0  # q1's middle window and q2 are both found first
    assert m["MR-short-mAP"] == 0.0  # only q1's short window counts, and it is missed
    assert m["MR-short-R1@0.5"] == 0.0
    assert "MR-long-mAP" not in m  # no GT window longer than 30 s
    assert m["MR-full-mAP"] == pytest.approx(100.0 * (0.5 + 1.0) / 2)


def test_query_without_predictions_counts_as_miss() -> None:
    gt = [_gt(1, (0, 10)), _gt(2, (0, 10))]
    m = qvh_metrics(gt, [_pred(1, (0, 10, 1.0)), _pred(2)])
    assert m["MR-full-mAP"] == 50.0
    assert m["MR-full-R1@0.5"] == 50.0


def test_bad_input_raises_query_error(tmp_path: Path) -> None:
    gt = [_gt(1, (0, 10))]
    with pytest.raises(QueryError, match="qids differ"):
        qvh_metrics(gt, [_pred(2, (0, 10, 1.0))])
    with pytest.raises(QueryError, match="missing 'pred_relevant_windows'"):
        qvh_metrics(gt, [{"qid": 1}])
    with pytest.raises(QueryError, match="3-element"):
        qvh_metrics(gt, [_pred(1, (0, 10))])  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="no relevant_windows"):
        qvh_metrics([_gt(1)], [_pred(1, (0, 10, 1.0))])
    with pytest.raises(QueryError, match="duplicate qid"):
        qvh_metrics(gt + gt, [_pred(1, (0, 10, 1.0))])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": 1}\n{not json\n')
    with pytest.raises(QueryError, match=r"bad\.jsonl:2"):
        load_jsonl(bad)
    with pytest.raises(QueryError, match="cannot read"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_non_strict_scores_shared_qids_only() -> None:
    m = qvh_metrics([_gt(1, (0, 10)), _gt(2, (0, 10))], [_pred(1, (0, 10, 1.0))], strict=False)
    assert m["MR-full-mAP"] == 100.0


def test_load_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [_gt(1, (0, 10)), _gt(2, (3, 4))]
    path = tmp_path / "gt.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_jsonl(path) == rows


def _brute_force_ap(gt: list[list[float]], pred: list[list[float]], thr: float) -> float:
    """Plain-loop greedy matching and all-point interpolated AP, written independently."""
    ranked = sorted(pred[:10], key=lambda w: -w[2])
    used: set[int] = set()
    hits = []
    for w in ranked:
        ious = temporal_iou(np.array([w[:2]]), np.array(gt))[0]
        free = [j for j in range(len(gt)) if j not in used and ious[j] >= thr]
        if free:
            used.add(max(free, key=lambda j: (ious[j], j)))
        hits.append(bool(free))
    ap, best_prec_after = 0.0, [0.0] * (len(hits) + 1)
    tp = np.cumsum(hits)
    prec = tp / np.arange(1, len(hits) + 1)
    for i in range(len(hits) - 1, -1, -1):
        best_prec_after[i] = max(prec[i], best_prec_after[i + 1])
    prev_recall = 0.0
    for i in range(len(hits)):
        recall = tp[i] / len(gt)
        ap += (recall - prev_recall) * best_prec_after[i]
        prev_recall = recall
    return ap


_span = st.tuples(st.integers(0, 40), st.integers(1, 15)).map(lambda p: [float(p[0]), float(p[0] + p[1])])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(_span, min_size=1, max_size=4),
            st.lists(
                st.tuples(_span, st.integers(0, 5)).map(lambda p: [*p[0], p[1] / 5]), min_size=0, max_size=12
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_map_matches_brute_force(cases: list[tuple[list[list[float]], list[list[float]]]]) -> None:
    gt = [{"qid": i, "relevant_windows": g} for i, (g, _) in enumerate(cases)]
    pred = [{"qid": i, "pred_relevant_windows": p} for i, (_, p) in enumerate(cases)]
    per_thr = [np.mean([_brute_force_ap(g, p, float(t)) for g, p in cases]) for t in MAP_THRESHOLDS]
    m = qvh_metrics(gt, pred)
    assert m["MR-full-mAP@0.5"] == pytest.approx(round(100 * per_thr[0], 2), abs=0.011)
    assert m["MR-full-mAP"] == pytest.approx(round(100 * float(np.mean(per_thr)), 2), abs=0.011)
    assert 0.0 <= m["MR-full-mAP"] <= 100.0


@pytest.mark.skipif(not QVH_DIR.is_dir(), reason=f"QVHighlights data folder absent: {QVH_DIR}")
def test_reproduces_official_qvhighlights_scorer() -> None:
    gt = load_jsonl(QVH_DIR / "highlight_val_release.jsonl")
    pred = load_jsonl(QVH_DIR / "sample_val_preds.jsonl")
    assert len(gt) == len(pred) == 1550  # the last line has no newline, so wc -l says 1549
    m = qvh_metrics(gt, pred)
    # The official scorer's published figures for this file (data README).
    assert m["MR-full-R1@0.5"] == 53.94
    assert m["MR-full-R1@0.7"] == 34.84
    assert m["MR-full-mAP@0.5"] == 54.96
    assert m["MR-full-mAP@0.75"] == 31.01
    assert m["MR-full-mAP"] == 32.20
    # Per-range figures, cross-checked against a line-by-line transcription of the official loop.
    assert (m["MR-short-mAP"], m["MR-middle-mAP"], m["MR-long-mAP"]) == (3.28, 32.30, 41.11)
