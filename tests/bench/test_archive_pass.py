"""The archive-pass bench runs end to end (tiny-random, a 1 min 480p25 clip) and records CPU use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import archive_pass
from bench.stage_profile import STAGES
from tests.videos import DATA, IMAGENET

COCO = DATA / "coco"


@pytest.mark.skipif(not (IMAGENET.is_dir() and COCO.is_dir()), reason="needs the shared photos")
def test_archive_pass_times_coarse_full_and_decode_only_with_cpu_use(tmp_path: Path) -> None:
    out = tmp_path / "archive.json"
    argv = ["--model", "tiny-random", "--seconds", "60", "--height", "480", "--serial", "--repeat", "1"]
    argv += ["--ab-decode-threads", "1", "--ab-encoder-threads", "1", "--ab-encoder-nice", "3", "--profile"]
    assert archive_pass.main([*argv, "--data", str(DATA), "--cache", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.archive_pass --model tiny-random")
    assert report["encoder"]["meaningless"] is True and "loadavg_end" in report["machine"]
    assert (report["clip"]["seconds"], report["clip"]["height"], report["clip"]["fps"]) == (60.0, 480, 25)
    passes = report["passes"]
    assert set(passes) == {
        "decode_keyframes",
        "ingest_coarse",
        "decode_full",
        "ingest_full",
        "ingest_full_serial",
        "ingest_full_decode_threads_1",
        "ingest_full_encoder_threads_1",
        "ingest_full_encoder_nice_3",
    }
    assert passes["ingest_full"]["decode_threads"] == 0  # FFmpeg's choice unless told
    assert passes["ingest_full_decode_threads_1"]["decode_threads"] == 1
    assert passes["ingest_full_decode_threads_1"]["frames"] == passes["ingest_full"]["frames"]
    assert passes["ingest_full"]["encoder_threads"] == report["encoder"]["threads"]
    assert passes["ingest_full_encoder_threads_1"]["encoder_threads"] == 1
    assert passes["ingest_full_encoder_threads_1"]["frames"] == passes["ingest_full"]["frames"]
    assert "ingest_full_encoder_threads_1_vs_decode_only" in report["summary"]
    niced = passes["ingest_full_encoder_nice_3"]["encoder_priority"]
    assert niced["encoder_nice"] == 3 and niced["threads_lowered"] >= 1  # at least the encoder stage's
    assert passes["ingest_full"]["encoder_priority"]["threads_lowered"] == 0  # the default: none
    assert set(report["paired_rounds"]) == {
        f"{n}_vs_decode_only" for n in passes if n.startswith("ingest_full")
    }
    # A keyframe at least every 2 s (x264 may add some at cuts) against 2 fps sampling.
    coarse = passes["decode_keyframes"]["frames"]
    assert coarse == passes["ingest_coarse"]["frames"] and 30 <= coarse < 120
    assert passes["decode_full"]["frames"] == passes["ingest_full"]["frames"] == 120
    assert passes["ingest_full"]["decode_in_thread"] and not passes["ingest_full_serial"]["decode_in_thread"]
    waits = passes["ingest_full"]["waits"]  # who waited for whom: stage seconds, one per side
    assert set(waits) == {"decode_to_ingest", "encoder"} and waits["encoder"]["batches"] >= 1
    assert waits["encoder"]["encoding_s"] > 0 and waits["decode_to_ingest"]["consumer_blocked_s"] >= 0
    assert passes["ingest_full_serial"]["waits"]["decode_to_ingest"]["consumer_blocked_s"] == 0
    for row in passes.values():
        assert row["wall_s"] > 0 and row["cpu_s"] > 0
        assert 0 < row["cpu_utilisation"] <= 1.05  # CPU seconds cannot exceed wall x cores
    summary = report["summary"]
    assert summary["full_vs_decode_only"] == round(
        passes["decode_full"]["wall_s"] / passes["ingest_full"]["wall_s"], 3
    )
    assert summary["full_overlap_speedup"] > 0
    for mode, ingest in (("coarse", "ingest_coarse"), ("full", "ingest_full")):
        prof = report["profile"][mode]
        stages = prof["stages"]
        assert set(stages) == {*STAGES, "other"}
        # Exclusive stages add up to the pass (each figure rounded to the millisecond).
        assert sum(row["wall_s"] for row in stages.values()) == pytest.approx(prof["wall_s"], abs=0.02)
        assert stages["demux_decode"]["calls"] == prof["frames"] + 1  # the last call ends the input
        assert stages["convert_scale"]["calls"] == prof["frames"] == passes[ingest]["frames"]
        assert stages["encoder_forward"]["calls"] >= 1 and stages["encoder_forward"]["cpu_s"] > 0
        assert prof["encoder_passes"] == passes[ingest]["encoder_passes"]
