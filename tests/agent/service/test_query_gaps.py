"""Answers over a stream with a hole in its coverage never claim the hole (real service, port 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import IndexConfig
from tests.agent.service.helpers import (
    add,
    all_segments_in,
    client,
    needle_b64,
    request,
    running,
    segments_with_a_missing_one,
    tiny_settings,
    until,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


def overlaps(moment: dict[str, Any], hole: list[float]) -> bool:
    return bool(moment["start"] < hole[1] and moment["end"] > hole[0])


async def test_no_moment_spans_the_missing_segment(tmp_path: Path) -> None:
    folder = segments_with_a_missing_one(tmp_path / "rec")
    settings = tiny_settings()
    settings = settings.model_copy(
        update={"index": IndexConfig(**{**settings.index.model_dump(), "gap_seconds": 1.5})}
    )
    async with running(tmp_path, settings) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "rec", "kind": "segments", "path": str(folder)})
        rec = await until(ws, "rec", all_segments_in, limit=90)
        holes = rec["covered"]["holes"]
        assert holes == [[8.0, 10.0]], holes  # the missing segment

        # A budget a loaded machine cannot exhaust: the refined answer is the full search's.
        query = {
            "type": "query",
            "id": "q",
            "image": needle_b64(),
            "streams": ["rec"],
            "top_k": 5,
            "budget": 60,
        }
        first = await request(ws, query)
        assert first["type"] == "moments", first
        update = await wait_for(ws, lambda e: e.get("id") == "q")
        assert update["type"] == "moments.update", update
        for answer in (first, update):
            assert answer["moments"], answer
            for m in answer["moments"]:
                assert not overlaps(m, holes[0]), (m["start"], m["end"], holes)
        # The needle (4-8 s, just before the hole) is still found, up to the hole and no further.
        best = update["moments"][0]
        assert best["answered_by"] == "refine"
        assert 3.0 <= best["start"] < 6.0 and 7.5 < best["end"] <= 8.0, best
