"""The decoder-RSS bench runs its three variants in child processes and reports per-decoder MiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import decoder_rss


@pytest.mark.skipif(not decoder_rss.BUNNY.is_file(), reason="needs the shared 720p clip")
def test_decoder_rss_reports_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    decoder_rss.main(["--decoders", "2", "--frames", "24", "--rounds", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report[
        "command"
    ] == "python -m bench.decoder_rss --decoders 2 --frames 24 --rounds 1 --out " + str(out)
    assert set(report["median_mib"]) == set(decoder_rss.VARIANTS) and "loadavg_start" in report["machine"]
    assert all(len(runs) == 1 for runs in report["per_decoder_mib"].values())
    assert report["median_mib"]["auto"] > 0  # an open 720p decoder holds frames
