"""The text-channel benchmark's parts: scoring, the sign styles and pictures, and --rescore on recorded spans."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from bench import text_needles as tn
from bench.text_channels import FONT_DIR, _sign_frame, rescore, sign_style
from bench.text_scores import iou, score, table


def test_score_is_iou_at_the_top_and_one_over_the_first_hit_rank() -> None:
    truth = (10.0, 12.0)
    assert iou((10.0, 12.0), truth) == 1.0 and iou((0.0, 1.0), truth) == 0.0
    assert score([(10.0, 12.0)], truth) == {"r1_05": 1.0, "r1_07": 1.0, "ap": 1.0}
    assert score([(0.0, 1.0), (10.5, 12.0)], truth) == {"r1_05": 0.0, "r1_07": 0.0, "ap": 0.5}
    assert score([(10.0, 13.0)], truth)["r1_07"] == 0.0  # IoU 0.67: a hit at 0.5, not at 0.7
    assert score([], truth)["ap"] == 0.0
    rows = [
        {"kind": "exact", "voice": v, "r1_05": h, "r1_07": h, "ap": h} for v, h in (("a", 1.0), ("b", 0.0))
    ]
    assert table(rows)["exact"] == {"r1_05": 0.5, "r1_07": 0.5, "ap": 0.5, "n": 2}
    assert table(rows, "voice")["b"]["exact"]["r1_05"] == 0.0


def test_the_needles_cover_the_issue_sizes_and_the_splits_differ() -> None:
    assert len(tn.SPOKEN_TEST) >= 24 and len(tn.SIGNS_TEST) >= 24 and len(tn.SPOKEN_DEV) >= 24
    assert not {n[0] for n in tn.SPOKEN_DEV} & {n[0] for n in tn.SPOKEN_TEST}
    assert not {n[0] for n in tn.SIGNS_DEV} & {n[0] for n in tn.SIGNS_TEST}
    styles = [sign_style(i, 24, 1) for i in range(24)]
    for key in ("font", "size", "motion"):
        assert len({s[key] for s in styles}) == 3
    assert sum(s["occluded"] for s in styles) == 6


@pytest.mark.skipif(not (FONT_DIR / "DejaVuSansMono.ttf").is_file(), reason="fonts-dejavu-core missing")
def test_a_covered_sign_hides_part_of_its_text() -> None:
    style = {"font": "DejaVuSansMono", "size": 26, "motion": "still", "occluded": False}
    font = ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono.ttf"), 26)
    plain = _sign_frame(0, "BAY 14 FULL", style, font, 0.0, 0.5)
    covered = _sign_frame(0, "BAY 14 FULL", {**style, "occluded": True}, font, 0.0, 0.5)
    white = (plain == 255).all(axis=2).sum()
    assert white > 100 and 0 < (covered == 255).all(axis=2).sum() < white
    assert not np.array_equal(_sign_frame(0, None, style, font, 0.0, 0.5), plain)


@pytest.mark.timeout(180)
def test_rescore_searches_recorded_spans_again() -> None:
    pytest.importorskip("sentence_transformers")
    from agent.models.sentences import SentenceEncoder

    words = [
        [30.0, 30.4, " Please"],
        [30.4, 30.8, " move"],
        [30.8, 31.2, " the"],
        [31.2, 31.6, " fort"],
        [31.6, 32.0, " lift"],
        [32.0, 32.4, " out"],
        [32.4, 32.6, " of"],
        [32.6, 33.0, " May"],
        [33.0, 33.2, " 2."],
    ]
    recorded = {
        "splits": {
            "dev": {
                "speech": {
                    "snr_10db": {
                        "utterances": [
                            [5.0, 7.0, "The truck is waiting at gate 4.", []],
                            [30.0, 33.2, "Please move the fort lift out of May 2.", words],
                        ],
                        "needles": [
                            {
                                "voice": "en-us",
                                "speed": 140,
                                "truth": [30.1, 33.1],
                                "queries": list(tn.SPOKEN_DEV[2]),
                            }
                        ],
                    }
                }
            }
        }
    }
    out = rescore(recorded, SentenceEncoder())["splits"]["dev"]["speech"]["snr_10db"]
    assert out["by_kind"]["exact"] == {"r1_05": 1.0, "r1_07": 1.0, "ap": 1.0, "n": 1}
    assert set(out["by_voice"]) == {"en-us"} and len(out["rows"]) == 3
