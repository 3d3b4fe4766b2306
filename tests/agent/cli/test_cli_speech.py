"""`vmr ingest --speech` then `vmr query --channels speech`: a spoken phrase found, with the real whisper model."""

from __future__ import annotations

import json
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

    # Every channel: the spoken moment still leads the random-weight visual ones, quoted.
    assert main(["query", str(index), "when was gate four mentioned", "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert 'speech: "' in table and "gate" in table.lower()

    assert main(["info", str(index), "--json"]) == 0
    speech = json.loads(capsys.readouterr().out)["streams"]["yard"]["speech"]
    assert speech["utterances"] == 2 and speech["windows"] == 1 and speech["bytes"] > 0
