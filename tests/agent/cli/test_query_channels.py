"""`vmr query --channels` names only channels the index has: else exit 2 listing the ones it has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.videos import make_video, photos


def test_an_unknown_or_unindexed_channel_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pics = photos(2, offset=40)
    video = make_video(tmp_path / "v.mp4", [(2.0, p) for p in pics], fps=5, size=(160, 120)).path
    index = tmp_path / "idx"
    assert main(["ingest", str(video), "--index", str(index), "--model", "tiny-random", "--quiet"]) == 0
    capsys.readouterr()
    ask = ["query", str(index), "--image", str(pics[1]), "--fast", "--json"]

    for wrong, named in (("speech", "'speech'"), ("visual,vsual", "'vsual'")):  # not indexed; a typo
        assert main([*ask, "--channels", wrong]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vmr: error [bad_query]: unknown channel(s) " + named), err
        assert "the channels indexed here are ['visual']" in err and "Traceback" not in err

    assert main([*ask, "--channels", "visual"]) == 0  # what the index has answers
    assert json.loads(capsys.readouterr().out)["moments"]
