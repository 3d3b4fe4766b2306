"""The on-screen text channel without Tesseract: gating, spans across reads, budget, snapshot, search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import ChannelQuery
from agent.channels.ocr import OcrChannel, OcrConfig
from agent.errors import IndexStoreError
from agent.models.ocr import LINE_DTYPE
from agent.types import Frame


def _frame(t: float, grey: int = 80, keyframe: bool = False) -> Frame:
    return Frame("s", t, np.full((48, 64, 3), grey, np.uint8), keyframe=keyframe)


def _lines(*texts: str, conf: float = 90.0) -> np.ndarray:
    return np.array([(10, 20 * i, 100, 18, conf, t) for i, t in enumerate(texts)], dtype=LINE_DTYPE)


def test_reads_are_gated_by_change_keyframes_and_a_heartbeat() -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=2.0, max_interval=10.0, change=6.0))
    read = [f.t for f in [_frame(t / 2) for t in range(60)] if ch.push(f)]  # 30 s of a still picture
    assert read == [0.0, 10.0, 20.0]
    ch2 = OcrChannel("s", OcrConfig(min_interval=2.0))
    frames = [
        _frame(0.0),
        _frame(1.0, grey=200),  # too soon after a read
        _frame(2.5, grey=200),  # changed since the last read
        _frame(3.0, grey=20),  # too soon
        _frame(5.0, grey=200),  # unchanged since the last read (2.5)
        _frame(6.0, grey=200, keyframe=True),  # an unchanged keyframe: read only when asked
    ]
    assert [f.t for f in frames if ch2.push(f)] == [0.0, 2.5]
    ch3 = OcrChannel("s", OcrConfig(min_interval=2.0, read_keyframes=True))
    assert [f.t for f in frames if ch3.push(f)] == [0.0, 2.5, 6.0]


def test_a_line_seen_in_several_reads_is_one_span_closed_when_it_goes() -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=1.0, max_interval=1.0))
    reads = {
        0.0: ("WELCOME",),
        2.0: ("ERROR 503", "WELCOME"),
        4.0: ("ERR0R 503", "WELCOME"),
        6.0: ("WELCOME",),
        8.0: (),
    }
    for t, texts in reads.items():
        (item,) = ch.push(_frame(t))
        ch.commit(item, _lines(*texts))
    spans = {(s.text if "503" not in s.text else "503"): (s.start, s.end, s.open) for s in ch.spans}
    assert spans == {"WELCOME": (0.0, 8.0, False), "503": (2.0, 6.0, False)}
    assert ch.in_flight == 0 and ch.reads == 5


def test_low_confidence_and_noise_lines_are_left_out() -> None:
    ch = OcrChannel("s", OcrConfig(min_conf=60.0))
    (item,) = ch.push(_frame(0.0))
    ch.commit(
        item, np.concatenate([_lines("gate 4", conf=40.0), _lines("|", conf=95.0), _lines("EXIT", conf=91.0)])
    )
    assert [s.text for s in ch.spans] == ["EXIT"]


def test_budget_evicts_oldest_and_snapshot_round_trips(tmp_path: Path) -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=1.0, max_interval=1.0, budget_bytes=1_000))
    for k in range(60):
        (item,) = ch.push(_frame(float(k)))
        ch.commit(item, _lines(f"platform {k} departures"))
    assert ch.info()["bytes"] <= 1_000 and ch.evicted > 0 and ch.spans[-1].text == "platform 59 departures"
    ch.save(tmp_path / "ocr")
    back = OcrChannel("s", ch.cfg)
    back.restore(tmp_path / "ocr")
    assert back.spans == ch.spans and back.info() == ch.info()
    (tmp_path / "ocr" / "ocr.json").write_text('{"version": 1, "spans": [[0, 1]]}')
    with pytest.raises(IndexStoreError):
        OcrChannel("s").restore(tmp_path / "ocr")


def test_search_quotes_the_text_shown() -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=1.0, max_interval=1.0))
    for t, texts in {0.0: ("Gate 2",), 5.0: ("ERROR 503 service unavailable",), 9.0: ()}.items():
        (item,) = ch.push(_frame(t))
        ch.commit(item, _lines(*texts))
    answer = ch.search(ChannelQuery(vectors={}, text="when did the screen show error 503", top_k=3))
    best = max(answer.proposals, key=lambda p: p.score)
    assert (best.start, best.end, best.channel) == (5.0, 9.0, "ocr")
    assert best.quote == "ERROR 503" and best.score == 1.0
    (item,) = ch.push(_frame(20.0))
    assert ch.fail(item, "boom") == [] and ch.counters.dropped == 1
    with pytest.raises(KeyError):
        ch.commit(item, _lines())


def test_new_spans_wait_for_the_watches_and_processed_time_trails_reads_in_flight(tmp_path: Path) -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=1.0, max_interval=1.0))
    assert ch.processed_until() is None  # no frame yet
    first = ch.push(_frame(0.0))[0]
    assert ch.push(_frame(0.5)) == [] and ch.processed_until() == 0.0  # the read at 0 is in flight
    ch.commit(first, _lines("ERROR 503"))
    assert ch.processed_until() == 0.5  # the gate has looked at every frame since
    (span,) = ch.fresh.take()
    assert (span.start, span.text) == (0.0, "ERROR 503") and ch.fresh.take() == []
    second = ch.push(_frame(2.0))[0]
    ch.commit(second, _lines("ERROR 503", "GATE 7"))  # the same line again is no new span
    assert [s.text for s in ch.fresh.take()] == ["GATE 7"]
    ch.save(tmp_path)
    again = OcrChannel("s", OcrConfig())
    again.restore(tmp_path)
    assert again.processed_until() == 2.0 and again.nbytes == ch.nbytes > 0


def test_an_open_span_runs_over_unchanged_skipped_frames_but_never_past_a_change() -> None:
    ch = OcrChannel("s", OcrConfig(min_interval=2.0, max_interval=10.0))
    (item,) = ch.push(_frame(0.0))
    ch.commit(item, _lines("EXIT 4"))
    assert ch.push(_frame(0.5)) == [] and ch.timed()[0].end == 0.5  # unchanged: the span runs on
    assert ch.push(_frame(1.0, grey=200)) == []  # changed, but too soon after the read
    assert ch.push(_frame(1.5)) == [] and ch.timed()[0].end == 0.5  # looks the same again: not trusted
    (item,) = ch.push(_frame(2.0, grey=200))
    ch.commit(item, _lines())
    assert (ch.spans[0].end, ch.spans[0].open) == (2.0, False)  # closed by the read that missed it
