"""`vmr eval` on the shared real data: the official QVHighlights figures, and Charades end to end."""

from __future__ import annotations

import json

import pytest

from agent.cli.main import main
from tests.videos import DATA

QVH = DATA / "qvhighlights"
CHARADES = DATA / "charades" / "annotations.jsonl"


@pytest.mark.skipif(not QVH.is_dir(), reason="../shared/data/qvhighlights is not present")
def test_eval_qvh_prints_official_figures(capsys: pytest.CaptureFixture[str]) -> None:
    gt, pred = QVH / "highlight_val_release.jsonl", QVH / "sample_val_preds.jsonl"
    assert main(["eval", "qvh", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    official = {
        "MR-full-R1@0.5": 53.94,
        "MR-full-R1@0.7": 34.84,
        "MR-full-mAP@0.5": 54.96,
        "MR-full-mAP@0.75": 31.01,
        "MR-full-mAP": 32.20,
    }
    for key, value in official.items():
        assert m[key] == pytest.approx(value, abs=0.005), key
    assert {"MR-long-mAP", "MR-middle-mAP", "MR-short-mAP", "MR-full-mIoU", "MR-full-R5@0.5"} <= m.keys()


@pytest.mark.skipif(not CHARADES.exists(), reason="../shared/data/charades is not present")
def test_eval_charades_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "charades", "--annotations", str(CHARADES), "--model", "tiny-random", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["meaningless"] is True  # random weights: the figures mean nothing
    assert len(report["predictions"]) == 2
    for pred in report["predictions"]:
        windows = pred["pred_relevant_windows"]
        # A moment may end one sampling period (0.5 s) past the last sampled frame.
        assert windows and all(0.0 <= s < e <= 30.62 + 0.5 for s, e, _ in windows)
    assert 0.0 <= report["metrics"]["MR-full-R1@0.5"] <= 100.0
