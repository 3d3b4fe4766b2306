"""The haystack runner end to end on a tiny real haystack (2 min, tiny-random, few budgets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.main import main
from agent.errors import ConfigError
from bench import fidelity
from bench.haystack import DEFAULT_DATA
from bench.strategies import Items

pytestmark = pytest.mark.skipif(not (DEFAULT_DATA / "coco").is_dir(), reason="shared data folder missing")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("runner")
    assert (
        main(
            [
                "bench",
                "haystack",
                "run",
                "--duration",
                "2m",
                "--needles",
                "3",
                "--model",
                "tiny-random",
                "--cache",
                str(tmp / "cache"),
                "--out",
                str(tmp / "out"),
                "--grids",
                "1,2",
                "--fractions",
                "1/10,1/30",
                "--latency-queries",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    files = sorted((tmp / "out").iterdir())
    js = [p for p in files if p.suffix == ".json"]
    assert len(js) == 1
    return json.loads(js[0].read_text()), tmp


def test_report_files_exist(report: tuple[dict[str, Any], Path]) -> None:
    rep, tmp = report
    out = tmp / "out"
    for name in rep["files"].values():
        assert (out / name).stat().st_size > 0
    md = (out / rep["files"]["md"]).read_text()
    assert "| dense |" in md.replace("| 1 | dense |", "| dense |")
    assert (out / rep["files"]["fidelity_png"]).read_bytes()[:4] == b"\x89PNG"


def test_report_has_machine_and_command(report: tuple[dict[str, Any], Path]) -> None:
    rep, _ = report
    assert rep["machine"]["cores"] >= 1
    assert rep["machine"]["ram_gib"] and rep["machine"]["ram_gib"] > 0
    assert "bench" in rep["command"]
    assert rep["encoder"]["meaningless"] is True
    assert rep["haystack"]["queries"] == {"image": 3, "text": 15}


def test_speed_figures_are_sane(report: tuple[dict[str, Any], Path]) -> None:
    rep, _ = report
    speed = rep["speed"]
    assert set(speed["decode_only"]) == {"full", "coarse"}
    # 2 minutes at 2 fps: the full decode samples every frame, the coarse one keyframes only.
    assert speed["decode_only"]["full"]["frames"] == 240
    assert 0 < speed["decode_only"]["coarse"]["frames"] < 240
    for mode in ("full", "coarse"):
        ing = speed["ingest"][mode]
        assert ing["x_realtime"] > 0 and ing["speed_ratio_to_decode_only"] > 0
        assert ing["frames"] == speed["decode_only"][mode]["frames"]
        assert 0 < ing["tokens"] <= ing["budget"]
        assert ing["hours_summary"]["tokens_within_budget"]
        assert ing["marks"] and ing["marks"][-1]["peak_rss_mb"] >= ing["marks"][-1]["rss_mb"] > 0
    timed = speed["ingest"][speed["latency_pass"]]["marks"][-1]
    for key in ("latency_prescreen", "latency_refine"):
        assert timed[key]["n"] == 2 and 0 < timed[key]["p50_ms"] <= timed[key]["max_ms"]
    metrics = speed["ingest"][speed["latency_pass"]]["engine_image_metrics"]
    assert set(metrics) == {"prescreen", "refine"}


def test_strategy_rows(report: tuple[dict[str, Any], Path]) -> None:
    rep, _ = report
    st = rep["strategies"]
    assert st["items"] == {"1": 240, "2": 60}
    rows = st["rows"]
    names = {r["strategy"] for r in rows}
    assert names == set(fidelity.ALL_STRATEGIES)
    for r in rows:
        assert r["tokens"] <= r["budget"] and r["within_budget"]
        for kind in ("image", "text"):
            for key in ("R1@0.5", "R1@0.7", "mAP", "mIoU", "fidelity"):
                assert 0.0 <= r[kind][key] <= 100.0
        if r["strategy"] == "dense":
            assert r["image"]["fidelity"] == 100.0 and r["text"]["fidelity"] == 100.0
    # Each grid has every non-dense strategy at both budgets (1/10 and 1/30 of its dense count).
    g1 = [r for r in rows if r["grid"] == 1 and r["strategy"] == "uniform"]
    assert sorted(r["budget"] for r in g1) == [8, 24]
    assert st["text_meaningless"] is True


def test_embedding_cache_is_reused(report: tuple[dict[str, Any], Path]) -> None:
    rep, _ = report
    root = Path(rep["haystack"]["root"])
    cached = sorted(p.name for p in root.glob("items-*.npz"))
    assert len(cached) == 2 and all("tiny-random" in n for n in cached)


def test_answer_finds_a_planted_bump() -> None:
    # Ten 1 s tokens; the query matches the token over [6, 7) only.
    d = 8
    embs = np.zeros((10, d), np.float32)
    embs[:, 0] = 1.0
    embs[6] = 0.0
    embs[6, 1] = 1.0
    items = Items(np.arange(10, dtype=np.float64), np.arange(1, 11, dtype=np.float64), embs)
    q = np.zeros((1, d), np.float32)
    q[0, 1] = 1.0
    times = np.arange(20, dtype=np.float64) / 2
    top = fidelity.answer(items, q, times, 0.5)[0][0]
    assert top[0] == pytest.approx(6.0) and top[1] == pytest.approx(7.0)
    assert fidelity.fidelity([[top]], [[[6.2, 7.0, 1.0]]]) == 100.0
    assert fidelity.fidelity([[top]], [[[0.0, 2.0, 1.0]]]) == 0.0


def test_budgets_and_bad_strategy() -> None:
    assert fidelity.budgets_for(300, [1 / 10, 1 / 30, 1 / 1000]) == [
        (1 / 10, 30),
        (1 / 30, 10),
        (1 / 1000, 2),
    ]
    items = Items(np.arange(3.0), np.arange(1.0, 4.0), np.eye(3, dtype=np.float32))
    with pytest.raises(ConfigError):
        fidelity.compare({1: items}, {1: {}}, duration=3.0, fps=1.0, fractions=[0.5], strategies=["nope"])
