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

    # `--budget all` refines everything planned: no wall clock in it, so asking twice answers the same.
    full = []
    for _ in range(2):
        assert main([*ask, "--budget", "all"]) == 0
        full.append(json.loads(capsys.readouterr().out))
    assert full[0]["moments"] == full[1]["moments"] and full[0]["streams"]["v"]["answered_by"] == "refine"
    assert not any("refine budget spent" in n for n in full[0]["streams"]["v"]["notes"])

    with pytest.raises(SystemExit):  # a budget outside [0, 60] s is refused by the parser
        main([*ask, "--budget", "-1"])


def test_budget_all_is_refused_for_a_service(capsys: pytest.CaptureFixture[str]) -> None:
    """A service bounds every query's refinement: `--budget all` with --url is a typed error, sent nowhere."""
    assert main(["query", "--url", "ws://127.0.0.1:9", "a van", "--budget", "all"]) == 2
    assert "--budget all is for a local index" in capsys.readouterr().err
