"""The speed benches run end to end (tiny-random, tiny sizes) and record their command and machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import lowrank_refine, query_latency
from tests.videos import DATA, IMAGENET


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="needs the shared photos")
def test_query_latency_writes_first_and_refined_latency_per_mark(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--model", "tiny-random", "--hours", "0.01,0.02", "--queries", "2", "--budget", "0.5"]
    assert query_latency.main([*argv, "--data", str(DATA), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.query_latency --model tiny-random")
    assert report["encoder"]["meaningless"] is True and "loadavg_end" in report["machine"]
    assert [m["hours"] for m in report["marks"]] == [0.01, 0.02]
    for mark in report["marks"]:
        assert 0 < mark["first_ms"]["p50"] <= mark["refined_ms"]["p50"]
        assert mark["tokens"] >= 1 and mark["stored_frames"] == round(mark["hours"] * 3600 / 2)
    assert set(report["summary"]) >= {
        "first_p95_ms",
        "refined_p95_ms",
        "rss_growth_last_vs_first_mark",
        "rss_growth_mb_last_vs_first_mark",
        "trimmed_rss_growth_mb_last_vs_first_mark",
    }
    assert all(m["trimmed"]["rss_mb"] > 0 and m["anon_mb"] > 0 for m in report["marks"])
    assert all(m["heap"]["components_mb"]["memory_slot_stacks"] > 0 for m in report["marks"])


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="needs the shared photos")
def test_query_latency_memprofile_names_the_growing_lines(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--model", "tiny-random", "--hours", "0.01,0.03", "--queries", "1", "--budget", "0.2"]
    assert query_latency.main([*argv, "--memprofile", "--data", str(DATA), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    first, last = (m["tracemalloc"] for m in report["marks"])
    assert 0 < first["traced_mb"] and last["traced_mb"] > 0 and len(last["top_lines"]) <= 15
    # More stored frames and anchors at the second mark: the memory's own lines are among the growers.
    assert any(line["line"].startswith("agent/") and line["growth_mb"] > 0 for line in last["top_lines"])
    assert "Rss" in report["marks"][0]["heap"]["smaps_rollup"]
    assert (
        "malloc.in_use_mb" in report["summary"]["heap_growth_mb_last_vs_first_mark"]
        or not report["marks"][0]["heap"]["malloc"]
    )


def test_lowrank_refine_compares_three_scorings(tmp_path: Path) -> None:
    out = tmp_path / "lowrank.json"
    argv = ["--model", "tiny-random", "--videos", "vtest.avi", "--queries", "2"]
    assert lowrank_refine.main([*argv, "--data", str(DATA), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"lowrank", "superimage", "reencode"}
    (video,) = report["videos"]
    assert video["superimages"] >= 1 and video["stored_frames"] >= video["superimages"]
    for method in ("lowrank", "superimage", "reencode"):
        assert 0.0 <= video[method]["hit_rate"] <= 1.0
