"""The soak bench end to end, tiny and bounded: 2 streams, 2 clients, a few seconds over loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import soak
from tests.videos import IMAGENET, Scene, make_video, photos

pytestmark = pytest.mark.skipif(not IMAGENET.is_dir(), reason="shared photo folder missing")


async def test_a_short_soak_reports_zero_errors_latency_and_rss(tmp_path: Path) -> None:
    video = make_video(
        tmp_path / "v.mp4", [Scene(2.0, photos(1)[0], True), Scene(2.0, photos(1, 1)[0], True)]
    )
    out = tmp_path / "soak.json"
    argv = ["--streams", "2", "--clients", "2", "--seconds", "4", "--warmup", "2", "--query-every", "0.5"]
    argv += ["--sample-every", "1", "--video", str(video.path), "--out", str(out)]
    async with asyncio.timeout(240):
        report = await soak.run(soak.parse(argv), "python -m bench.soak " + " ".join(argv))
    assert json.loads(out.read_text()) == report
    assert report["command"].endswith(str(out)) and "tiny-random" in report["model"]
    assert report["errors"] == {} and report["health"] == "ok"
    assert report["frames"] > 0 and report["frames_dropped"] == 0  # file replays apply backpressure
    assert report["queries"] > 0 and report["latency_queries"] > 0
    assert 0 < report["latency_p50_s"] <= report["latency_p95_s"]
    assert report["rss_warm_mib"] > 0 and report["rss_end_mib"] > 0 and len(report["rss_samples_mib"]) >= 4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        soak.parse(["--streams", "0"])
