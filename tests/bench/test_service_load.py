"""The live-capacity bench runs end to end on one tiny-random stream and records RSS, CPU, duty cycle, needle stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import service_load
from bench.needle_trace import STAGES, NeedleTrace, SiTrace


@pytest.mark.skipif(not service_load.BUNNY.is_file(), reason="needs the shared 720p clip")
def test_service_load_row_has_capacity_figures(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    service_load.main(
        [
            "--model",
            "tiny-random",
            "--streams",
            "1",
            "--seconds",
            "5",
            "--needle-streams",
            "2",
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.service_load --model tiny-random")
    assert report["model"] == "tiny-random" and "loadavg_start" in report["machine"]
    (row,) = report["rows"]
    assert row["streams"] == 1 and row["frames_mean"] > 0
    assert 0 < row["cpu_utilisation"] <= 1.05
    assert 0 < row["encoder_duty_cycle"] <= 1.0  # encoder seconds within the window
    assert row["peak_rss_mb"] >= row["rss_mb"] > 0
    scores = row["needle_scores"]  # the watch sits between the background and one needle tile
    assert scores["background"] < scores["threshold"] < scores["one_needle_tile"]
    assert row["rss_base_mb"] > 0 and row["needle_streams"] == 2
    stages = row["needle_stages"]  # n: how many needles the percentiles stand on
    assert stages["n"] == len(stages["needles"]) <= row["needle_matches"]
    assert row["heap_trims"]["growth_mb"] == 64.0 and row["gc"]["collections"] >= row["gc"]["gen2"]
    cpu = row["thread_cpu"]  # the CPU profile: decoding and the executor's work are named
    assert cpu["cpu_s"]["decode"] > 0 and cpu["cpu_s"]["asyncio executor"] > 0
    assert cpu["process_cpu_s"] >= max(cpu["cpu_s"].values())
    assert row["encoder_queue_wait"]["batch_fn_thread_cpu_s"] > 0


def test_needle_breakdown_splits_arrival_minus_due_into_stages() -> None:
    """Stages are consecutive differences of the traced marks: they add up to the total."""
    trace = NeedleTrace("needle")
    wall0 = 1000.0  # stream second 0 on the pacing clock
    trace.frames = [(5.5, 1005.52, 1005.53, 1005.54), (6.0, 1006.03, 1006.04, 1006.05)]
    needle, background = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    hit = SiTrace(6.0, 8.0, emitted=1007.6, batch_start=1007.9, batch_end=1008.4, scored=1008.45, vec=needle)
    miss = SiTrace(
        4.0, 6.0, emitted=1006.1, batch_start=1006.2, batch_end=1006.5, scored=1006.6, vec=background
    )
    trace.sis = {(6.0, 8.0): hit, (4.0, 6.0): miss}
    out = trace.breakdown([1006.0], [1008.5], wall0=wall0, qvec=needle, threshold=0.5)
    (needle,) = out["needles"]
    assert needle["release"] == pytest.approx(0.03) and needle["fill"] == pytest.approx(1.55)
    assert needle["queue"] == pytest.approx(0.3) and needle["encode"] == pytest.approx(0.5)
    assert sum(needle[s] for s in STAGES) == pytest.approx(needle["total"]) == pytest.approx(2.5)
    assert needle["si_span"] == [6.0, 8.0] and out["median_s"]["total"] == pytest.approx(2.5)
    assert (
        trace.breakdown([1006.0], [1006.55], wall0=wall0, qvec=needle, threshold=0.5)["needles"] == []
    )  # not yet scored
