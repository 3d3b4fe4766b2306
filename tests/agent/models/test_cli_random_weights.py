"""`vmr ingest --model MobileCLIP2-S0 --random-weights`: works, says meaningless, reopens alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.index.video_index import VideoIndex
from tests.videos import IMAGENET, make_video


def test_ingest_and_query_with_random_weights(
    tmp_path: Path, vmr_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = sorted(IMAGENET.glob("*.jpg"))[:2] if IMAGENET.is_dir() else []
    scenes = [(2.0, p) for p in photos] or [(2.0, (200, 40, 40)), (2.0, (40, 40, 200))]
    video = make_video(tmp_path / "clip.mp4", scenes, fps=10, gop=5).path
    index = tmp_path / "index"
    argv = ["ingest", str(video), "--index", str(index), "--model", "MobileCLIP2-S0", "--random-weights"]
    assert main([*argv, "--keyframes", "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["meaningless"] is True and summary["encoder"] == "MobileCLIP2-S0:random-weights"
    assert summary["frames"] >= 2 and summary["backend"] in ("torch", "openvino")
    assert "MEANINGLESS" in err

    # The manifest records the weights, so opening the index re-creates the same encoder.
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["settings"]["prescreen"]["random_weights"] is True
    assert manifest["encoder"]["meaningless"] is True
    idx = VideoIndex.open(index)
    try:
        assert idx.prescreen.name == "MobileCLIP2-S0:random-weights" and idx.prescreen.meaningless
    finally:
        idx.close()

    assert main(["query", str(index), "a goldfish", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    # One result model (QueryAnswer): moments at top level, per-stream coverage and notes.
    assert answer["meaningless"] is True and answer["moments"] and "clip" in answer["streams"]
