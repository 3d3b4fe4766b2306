"""`vmr ingest --speech` then `vmr query --channels speech`: a spoken phrase found, with the real whisper model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.agent.speech_media import make_video_with_sound, needs_espeak, noise_with, spoken

pytest.importorskip("faster_whisper")
pytestmark = [pytest.mark.timeout(240), needs_espeak]


def test_a_spoken_phrase_is_found_through_ingest_and_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sound = noise_with(
        20.0,
        [
            (3.0, spoken("the forklift is charging in bay two", tmp_path)),
            (12.0, spoken("the truck is waiting at gate four", tmp_path)),
        ],
    )
    video = make_video_with_sound(tmp_path / "yard.mp4", sound)
    index = tmp_path / "idx"
    common = ["--model", "tiny-random", "--random-weights"]
    assert (
        main(
            [
                "ingest",
                str(video),
                "--index",
                str(index),
                "--stream",
                "yard",
                "--speech",
                "--quiet",
                "--json",
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()

    assert main(["query", str(index), "when was gate four mentioned", "--channels", "speech", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    top = answer["moments"][0]
    assert top["channels"] == ["speech"] and "gate" in top["quotes"]["speech"].lower()
    assert abs(top["start"] - 12.0) < 0.6 and not top["below_threshold"]

    # A paraphrase, found by meaning (MiniLM).
    assert (
        main(["query", str(index), "the lorry stood by the fourth gate", "--channels", "speech", "--json"])
        == 0
    )
    para = json.loads(capsys.readouterr().out)["moments"][0]
    assert abs(para["start"] - 12.0) < 0.6 and not para["below_threshold"], para

    # Every channel: the spoken moment still leads the random-weight visual ones, quoted.
    assert main(["query", str(index), "when was gate four mentioned", "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert 'speech: "' in table and "gate" in table.lower()

    assert main(["info", str(index), "--json"]) == 0
    speech = json.loads(capsys.readouterr().out)["streams"]["yard"]["speech"]
    assert speech["utterances"] == 2 and speech["windows"] == 1 and speech["bytes"] > 0
    assert speech["lag_seconds"] == 0.0 and speech["in_flight"] == 0  # ingest waits for every window
    assert main(["info", str(index)]) == 0
    assert "speech: 2 utterances" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")
def test_on_screen_text_is_found_through_ingest_and_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = [(2.0, 5.0, "Gate 2"), (6.0, 10.0, "ERROR 503")]
    video = make_video_with_sound(tmp_path / "screen.mp4", noise_with(14.0, []), shown=shown)
    index = tmp_path / "idx"
    argv = ["ingest", str(video), "--index", str(index), "--stream", "screen", "--ocr", "--quiet", "--json"]
    assert main([*argv, "--model", "tiny-random", "--random-weights"]) == 0
    capsys.readouterr()

    assert (
        main(["query", str(index), "when did the screen show error 503", "--channels", "ocr", "--json"]) == 0
    )
    top = json.loads(capsys.readouterr().out)["moments"][0]
    assert top["channels"] == ["ocr"] and top["quotes"]["ocr"] == "ERROR 503", top
    # Read at a low rate: the span starts within one read interval of the text's appearance.
    assert 6.0 <= top["start"] <= 8.0 and 9.0 <= top["end"] <= 12.5 and not top["below_threshold"]

    assert main(["info", str(index), "--json"]) == 0
    ocr = json.loads(capsys.readouterr().out)["streams"]["screen"]["ocr"]
    assert ocr["spans"] >= 2 and 2 <= ocr["reads"] <= 10  # a few reads, not one per frame (28 frames)


def test_a_file_without_sound_is_said_to_be_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.videos import make_video, photos

    video = make_video(tmp_path / "mute.mp4", [(3.0, photos(1)[0])], fps=5).path
    args = ["ingest", str(video), "--index", str(tmp_path / "idx"), "--speech", "--quiet", "--json"]
    assert main([*args, "--model", "tiny-random", "--random-weights"]) == 0
    out = capsys.readouterr()
    assert "no audio was decoded" in out.err
    assert any("no audio" in note for note in json.loads(out.out)["notes"])
