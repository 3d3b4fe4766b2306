"""The live-capacity bench runs end to end on one tiny-random stream and records RSS, CPU, duty cycle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import service_load


@pytest.mark.skipif(not service_load.BUNNY.is_file(), reason="needs the shared 720p clip")
def test_service_load_row_has_capacity_figures(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    service_load.main(["--model", "tiny-random", "--streams", "1", "--seconds", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.service_load --model tiny-random")
    assert report["model"] == "tiny-random" and "loadavg_start" in report["machine"]
    (row,) = report["rows"]
    assert row["streams"] == 1 and row["frames_mean"] > 0
    assert 0 < row["cpu_utilisation"] <= 1.05
    assert 0 < row["encoder_duty_cycle"] <= 1.0  # encoder seconds within the window
    assert row["peak_rss_mb"] >= row["rss_mb"] > 0
