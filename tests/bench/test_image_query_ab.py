"""Still-shot against photo image queries: paired on the ground truth, cell by cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import image_query_ab, pooled


def _report(right: dict[tuple[str, float], list[int]], name: str = "classical-hog") -> dict[str, Any]:
    rows = [
        {
            "seed": 0,
            "grid": 2,
            "strategy": strategy,
            "fraction": fraction,
            "budget": 10,
            "tokens": 10,
            "bytes_per_hour": 1.0,
            "image": {"agree": [1] * len(hits), "right": hits, "fidelity": 100.0},
        }
        for (strategy, fraction), hits in right.items()
    ]
    return {
        "encoder": {"name": name},
        "command": f"vmr bench compression --model {name}",
        "haystack": {"seeds": [0]},
        "queries": 6,
        "pooled": pooled.pool(rows),
    }


def test_cells_in_both_runs_are_paired_on_the_ground_truth(tmp_path: Path) -> None:
    still = _report({("dense", 1.0): [1, 1, 1, 1, 0, 1], ("avgpool", 0.1): [1, 0, 1, 1, 0, 0]})
    photo = _report({("dense", 1.0): [0, 0, 0, 1, 0, 0], ("selection", 0.1): [1] * 6})
    rows = image_query_ab.compare(still, photo)
    assert [(r["strategy"], r["fraction"]) for r in rows] == [("dense", 1.0)]
    (dense,) = rows
    assert dense["still_R1@0.5"] == pytest.approx(83.3) and dense["photo_R1@0.5"] == pytest.approx(16.7)
    assert dense["paired_right"]["wins"] == 4 and dense["paired_right"]["losses"] == 0
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(still))
    b.write_text(json.dumps(photo))
    assert image_query_ab.main([str(a), str(b), "--out", str(tmp_path / "ab.md")]) == 0
    table = (tmp_path / "ab.md").read_text()
    assert "| 2 | dense | dense | 83.3 / 16.7 |" in table and "| 4 | 0 |" in table


def test_runs_of_two_encoders_are_refused() -> None:
    with pytest.raises(ValueError, match="different encoders"):
        image_query_ab.compare(_report({("dense", 1.0): [1]}), _report({("dense", 1.0): [1]}, "tiny-random"))
