"""`vmr query --fast` prints the prescreen's answer; the default prints the refined one (within --budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.videos import make_video, photos


def test_fast_prints_the_first_answer_and_the_default_the_refined_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pics = photos(3, offset=40)
    video = make_video(tmp_path / "v.mp4", [(4.0, p) for p in pics], fps=10, size=(320, 240)).path
    index = tmp_path / "idx"
    assert main(["ingest", str(video), "--index", str(index), "--model", "tiny-random", "--quiet"]) == 0
    capsys.readouterr()
    ask = ["query", str(index), "--image", str(pics[1]), "--json"]

    assert main([*ask, "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["moments"] and {m["answered_by"] for m in fast["moments"]} == {"anchor"}

    assert main([*ask, "--budget", "60"]) == 0
    refined = json.loads(capsys.readouterr().out)
    assert refined["streams"]["v"]["answered_by"] == "refine"
    assert refined["moments"][0]["start"] < 8.0 and refined["moments"][0]["end"] > 4.0  # photo 1: [4, 8)

    with pytest.raises(SystemExit):  # a budget outside [0, 60] s is refused by the parser
        main([*ask, "--budget", "-1"])
