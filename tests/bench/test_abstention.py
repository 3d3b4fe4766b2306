"""The abstention benchmark end to end on a tiny real haystack (2 min, 3 needles, tiny-random)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config import IndexConfig
from bench.abstention import summarise
from bench.haystack import DEFAULT_DATA

needs_data = pytest.mark.skipif(not (DEFAULT_DATA / "coco").is_dir(), reason="shared data folder missing")


@needs_data
def test_runner_writes_a_report_with_its_command(tmp_path: Path) -> None:
    out = tmp_path / "abstention.json"
    argv = ["bench", "abstention", "--duration", "2m", "--needles", "3", "--negatives", "4"]
    argv += ["--model", "tiny-random", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["command"] == "vmr " + " ".join(argv)
    assert rep["encoder"]["meaningless"] is True and "tiny-random" in rep["note"]
    s = rep["summary"]
    assert (s["needles"], s["negatives"]) == (3, 4)
    kinds = [q["kind"] for q in rep["queries"]]
    assert kinds.count("needle") == 3 and kinds.count("negative") == 4
    shown = {
        sc["photo"] for sc in json.loads(Path(rep["haystack"]["root"], "manifest.json").read_text())["scenes"]
    }
    assert not shown & {q["query"] for q in rep["queries"] if q["kind"] == "negative"}  # never in the video
    assert s["needle_R1@0.5_with_abstention"] <= s["needle_R1@0.5_without_abstention"]
    for q in rep["queries"]:
        top = q["top1"]
        assert top is None or 0.0 <= top["confidence"] <= 1.0
    assert rep["threshold"]["min_confidence"] == 0.95
    assert rep["memory"]["scorer"] == IndexConfig().scorer and rep["memory"]["merge"] == IndexConfig().merge


def test_summary_counts_an_abstained_hit_as_a_miss() -> None:
    top = {"start": 0.0, "end": 5.0, "score": 0.9, "confidence": 0.5, "answered_by": "refine"}
    rows = [
        {"kind": "needle", "abstained": False, "hit": True, "top1": {**top, "confidence": 0.99}},
        {"kind": "needle", "abstained": True, "hit": True, "top1": top},
        {"kind": "needle", "abstained": True, "hit": False, "top1": top},
        {"kind": "negative", "abstained": True, "top1": top},
        {"kind": "negative", "abstained": False, "top1": {**top, "confidence": 0.97}},
    ]
    s = summarise(rows)
    assert s["needle_R1@0.5_without_abstention"] == pytest.approx(66.7)
    assert s["needle_R1@0.5_with_abstention"] == pytest.approx(33.3)
    assert s["needle_hits_abstained"] == 1
    assert s["negatives_abstained_pct"] == 50.0 and s["needles_abstained_pct"] == pytest.approx(66.7)
