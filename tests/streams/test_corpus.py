"""The real-world file corpus (issue 10): each row an input, run through ``vmr ingest`` / ``info`` / ``query --image``.

Every input is built in ``tmp_path`` (see :mod:`tests.streams.corpus`) and
shows known photos at known seconds. A row states the exact outcome: the exit
code of ``vmr ingest``, the samples it took, the coverage spans ``vmr info``
reports, and the top moment of each photo query (``tiny-random``: its
image-to-image similarity is meaningful). A new case is one row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.streams import corpus
from tests.streams.corpus import Built

Span = tuple[float, float]


@dataclass(frozen=True)
class Case:
    """One input and what vmr must make of it."""

    build: Callable[[Path], Built]
    exit: int = 0
    samples: int | None = None
    """Frames sampled at 2 fps (None: the ingest fails before any)."""
    spans: list[Span] = field(default_factory=list)
    """Coverage in stream seconds, as ``vmr info`` reports it."""
    moments: dict[str, Span] = field(default_factory=dict)
    """Label of a photo -> the top moment of its image query."""
    error: str | None = None
    """A piece of the error line (exit 2), e.g. the error code."""


CASES: dict[str, Case] = {
    # 1. a clock that restarts: stitched in playback order
    "ts_concat": Case(
        lambda d: corpus.concatenated(d, ".ts"), samples=20, spans=[(0, 10)], moments={"A": (0, 5), "B": (5, 10)}
    ),
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def observe(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case) -> dict[str, object]:
    built = case.build(tmp_path)
    index = tmp_path / "index"
    code, out, err = _run(capsys, "ingest", str(built.path), "--index", str(index), "--model", "tiny-random",
                          "--json", "--quiet")
    seen: dict[str, object] = {"exit": code, "err": err, "index": index.exists()}
    if code == 0:
        seen["samples"] = json.loads(out)["frames"]
    if index.exists():
        _, out, _ = _run(capsys, "info", str(index), "--json")
        (stream,) = json.loads(out)["streams"].values()
        seen["samples"] = stream["frames"]
        seen["spans"] = [tuple(s) for s in stream["spans"]]
        moments = {}
        for label, photo in built.queries.items():
            _, out, _ = _run(capsys, "query", str(index), "--image", str(photo), "--json", "--top-k", "1")
            top = json.loads(out)["moments"][0]
            moments[label] = (top["start"], top["end"])
        seen["moments"] = moments
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_corpus(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    seen = observe(tmp_path, capsys, case)
    print(name, seen)
