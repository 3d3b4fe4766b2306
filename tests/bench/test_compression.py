"""``vmr bench compression`` end to end on a tiny haystack, the finer level's overlay, the targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.main import main
from bench import compression, fidelity
from bench.haystack import DEFAULT_DATA
from bench.strategies import Items, svd

needs_data = pytest.mark.skipif(not (DEFAULT_DATA / "coco").is_dir(), reason="shared data folder missing")
TWO_RES = "svd-ward-energy-2res-fill"
STRATEGIES = ("selection", "avgpool", "svd-mean-fill", compression.CHOSEN, TWO_RES)


@needs_data
def test_compression_run_writes_json_table_and_plot(tmp_path: Path) -> None:
    argv = ["bench", "compression", "--duration", "2m", "--needles", "3", "--model", "classical-hog"]
    argv += ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--grids", "1,2"]
    argv += ["--fractions", "1/10,1/30", "--strategies", ",".join(STRATEGIES), "--seeds", "0,1"]
    assert main(argv) == 0
    files = {p.suffix: p for p in (tmp_path / "out").iterdir()}
    assert set(files) == {".json", ".md", ".png"}
    rep: dict[str, Any] = json.loads(files[".json"].read_text())
    assert rep["command"].startswith("vmr bench compression") and rep["items"] == {"1": 240, "2": 60}
    rows = rep["rows"]
    assert {r["strategy"] for r in rows} == {"dense", *STRATEGIES}
    assert (
        {r["seed"] for r in rows} == {0, 1}
        and rep["queries"] == 6
        and rep["name"].endswith("-s0-1-classical-hog-still-shot")
        and rep["image_query"] == "still-shot"
    )
    # Pooled cells count both seeds' queries, each with its interval around the figure.
    for r in rep["pooled"]:
        img = r["image"]
        assert img["queries"] == 6 and r["seeds"] == [0, 1]
        assert img["fidelity_ci"][0] <= img["fidelity"] <= img["fidelity_ci"][1]
    h2h = rep["head_to_head"]["svd-mean-fill"]
    assert set(h2h["cells"]) == {"grid 1 1/10", "grid 1 1/30", "grid 2 1/10", "grid 2 1/30"}
    for r in rows:
        assert r["tokens"] <= r["budget"] and r["bytes_per_hour"] > 0
        assert 0.0 <= r["image"]["fidelity"] <= 100.0
    # SVD anchors carry their bases: more bytes per token than a bare token.
    by = {(r["grid"], r["strategy"], r["budget"]): r for r in rows}
    assert by[(1, compression.CHOSEN, 24)]["bytes"] > by[(1, "avgpool", 24)]["bytes"]
    # Two resolutions report what their finer level holds, a part of the total (3 of 24 tokens there).
    fine = by[(1, TWO_RES, 24)]
    assert 0 < fine["detail_bytes_per_hour"] < fine["bytes_per_hour"]
    assert "detail_bytes_per_hour" not in by[(1, compression.CHOSEN, 24)]
    assert set(rep["summary"]) == set(STRATEGIES)
    assert set(rep["targets"]) == {"1", "2"}
    assert all(
        isinstance(v, bool) for t in rep["targets"].values() for k, v in t.items() if k.endswith("_met")
    )
    table = files[".md"].read_text()
    assert f"**{compression.CHOSEN}**" in table and "| 1/10 | 1/30 |" in table
    assert "## Paired: Each SVD variant against the default" in table and "seeds [0, 1] pooled" in table
    assert "## Means over the grids" in table and f"| {TWO_RES} | " in table
    # Every cell is split by where its needle sits (bench.recency).
    assert all(len(r["image"]["late"]) == r["image"]["queries"] for r in rep["pooled"])
    assert "## Where the needle sits" in table


def needle_stream(dim: int = 8) -> tuple[Items, np.ndarray]:
    # 40 one-second items of one scene, a 2-second needle at [18, 20), drifting background.
    rng = np.random.default_rng(0)
    e = np.eye(dim)
    embs = np.repeat(e[1][None], 40, 0) + 0.05 * rng.standard_normal((40, dim))
    embs[18:20] = e[0]
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    t = np.arange(40, dtype=np.float64)
    return Items(t, t + 1.0, embs.astype(np.float32)), e[0][None].astype(np.float32)


def test_the_finer_level_paints_its_stretch_over_the_coarse_curve() -> None:
    items, q = needle_stream()
    times = np.arange(80, dtype=np.float64) / 2
    coarse = svd(items, 1, "mean", theta=1.01, merge="ward", scorer="rep")
    two = svd(items, 2, "mean", theta=1.01, merge="ward", scorer="rep", detail=1)
    assert coarse.starts.shape[0] == 1 and two.starts.shape[0] == 1 and two.overlay is not None
    flat = fidelity.score_curve(coarse, q, times)[0]
    assert np.ptp(flat) == 0.0  # one coarse token: no place stands out
    curve = fidelity.score_curve(two, q, times)[0]
    starts, ends, _ = two.overlay(q)
    assert starts[0] >= 18.0 and ends[0] <= 20.0
    assert curve[(times >= starts[0]) & (times < ends[0])].min() == pytest.approx(1.0, abs=1e-5)
    top = fidelity.answer(two, q, times, 0.5)[0][0]
    assert 17.5 <= top[0] and top[1] <= 20.5


def test_sub_runs_trim_the_answer_to_the_needle_inside_its_anchor() -> None:
    # One token for 40 s: without runs the answer is the whole anchor; with runs (agent.core.runs)
    # the best run is the needle's two seconds, and it carries the anchor's own score.
    items, q = needle_stream()
    times = np.arange(80, dtype=np.float64) / 2
    whole = svd(items, 1, "mean", theta=1.01, merge="ward", scorer="energy")
    trimmed = svd(items, 1, "mean", theta=1.01, merge="ward", scorer="energy", runs=4)
    assert whole.runs is None and trimmed.runs is not None
    assert trimmed.starts.shape[0] == 1 and trimmed.nbytes > whole.nbytes
    assert fidelity.answer(whole, q, times, 0.5)[0][0][:2] == [0.0, 40.0]
    top = fidelity.answer(trimmed, q, times, 0.5)[0][0]
    assert top[:2] == [18.0, 20.0]
    assert fidelity.score_curve(trimmed, q, times)[0].max() == pytest.approx(float(whole.scores(q).max()))
