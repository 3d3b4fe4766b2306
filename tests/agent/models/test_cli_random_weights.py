"""`vmr ingest --model MobileCLIP2-S0 --random-weights`: works, says meaningless, reopens alike."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config import EncoderConfig
from agent.index.video_index import VideoIndex
from agent.models import encoder
from tests.videos import IMAGENET, make_video


def meaningless_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "MEANINGLESS" in r.getMessage()]


def test_ingest_and_query_with_random_weights(
    tmp_path: Path,
    vmr_cache: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder, "_WARNED", set())  # as a new process: not yet warned
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
    assert len(meaningless_warnings(caplog)) == 1 and "MEANINGLESS" not in err

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


def test_the_random_weights_warning_appears_once_per_process_and_model(
    tmp_path: Path,
    vmr_cache: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loader logged it and `vmr ingest` printed it again; `vmr serve` printed it, then its loader logged it.
    monkeypatch.setattr(encoder, "_WARNED", set())
    monkeypatch.setattr(encoder, "_CACHE", {})  # the loader runs, as in a new process
    video = make_video(tmp_path / "clip.mp4", [(1.0, (200, 40, 40))], fps=5).path
    caplog.set_level(logging.WARNING)
    argv = ["ingest", str(video), "--model", "tiny-random", "--quiet"]
    assert main([*argv, "--index", str(tmp_path / "a")]) == 0
    assert meaningless_warnings(caplog) == [
        "encoder: tiny-random has random weights: similarities carry no meaning; answers are MEANINGLESS"
    ]
    assert "MEANINGLESS" not in capsys.readouterr().err
    # A second index, a fresh loader, `vmr serve`'s early warning: the same model warns no more.
    monkeypatch.setattr(encoder, "_CACHE", {})
    assert main([*argv, "--index", str(tmp_path / "b")]) == 0
    encoder.warn_meaningless(EncoderConfig(model="tiny-random", allow_random=True))
    assert len(meaningless_warnings(caplog)) == 1
    # Another model warns on its own, once (warned before loading, as `vmr serve` does).
    random_s0 = EncoderConfig(model="MobileCLIP2-S0", random_weights=True, allow_random=True)
    encoder.warn_meaningless(random_s0)
    encoder.warn_meaningless(random_s0, "MobileCLIP2-S0:random-weights has random weights")
    assert meaningless_warnings(caplog)[1:] == [
        "encoder: MobileCLIP2-S0 has random weights: similarities carry no meaning; answers are MEANINGLESS"
    ]
    encoder.warn_meaningless(EncoderConfig(model="MobileCLIP2-S0"))  # real weights: nothing to say
    assert len(meaningless_warnings(caplog)) == 2
