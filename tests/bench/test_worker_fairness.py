"""The worker-fairness bench runs both round-robin policies through the real batch worker."""

from __future__ import annotations

import json
from pathlib import Path

from bench import worker_fairness


def test_each_policy_and_batch_gets_a_row(tmp_path: Path) -> None:
    out = tmp_path / "fair.json"
    argv = [
        "--lanes",
        "5",
        "--seconds",
        "4",
        "--batch",
        "2",
        "--period",
        "1",
        "--speed",
        "10",
        "--out",
        str(out),
    ]
    worker_fairness.main(argv)
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m bench.worker_fairness --lanes 5")
    assert [(r["policy"], r["batch"]) for r in report["rows"]] == [("legacy", 2), ("resume", 2)]
    for row in report["rows"]:
        assert row["utilisation"] == 0.5 and row["encoded"] > 0 and row["dropped"] >= 0
        assert 0 <= row["wait_p50_s"] <= row["wait_p95_s"] <= row["wait_max_s"]
