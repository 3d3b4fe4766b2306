"""The speech channel without a model: windows, guards, budget, snapshot, search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import ChannelQuery
from agent.channels.speech import SpeechChannel, SpeechConfig, guarded_segments
from agent.core.fuse import fuse
from agent.errors import IndexStoreError
from agent.models.whisper import SAMPLE_RATE, WORD_DTYPE
from streams.media import AudioChunk


def _words(
    text: str,
    *,
    start: float = 0.0,
    segment: int = 0,
    prob: float = 0.9,
    nsp: float = 0.05,
    lp: float = -0.3,
    cr: float = 1.2,
) -> np.ndarray:
    rows = [
        (start + 0.4 * i, start + 0.4 * i + 0.35, prob, " " + w, segment, nsp, lp, cr)
        for i, w in enumerate(text.split())
    ]
    return np.array(rows, dtype=WORD_DTYPE)


def _chunks(seconds: int, *, t0: float = 0.0, rate: int = SAMPLE_RATE) -> list[AudioChunk]:
    return [AudioChunk("s", t0 + i, np.zeros(rate, np.float32), rate) for i in range(seconds)]


def test_audio_is_cut_into_windows_and_a_gap_ends_one() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=10.0))
    items = [it for c in _chunks(25) for it in ch.push_audio(c)]
    assert [(it.start, it.end) for it in items] == [(0.0, 10.0), (10.0, 20.0)]
    # A 5 s hole: the 5 buffered seconds go out as their own window.
    items = [it for c in _chunks(2, t0=30.0) for it in ch.push_audio(c)]
    assert [(it.start, it.end) for it in items] == [(20.0, 25.0)]
    rest = ch.flush()
    assert [(it.start, it.end) for it in rest] == [(30.0, 32.0)]
    assert rest[0].worker == "speech" and len(rest[0].payload) == 2 * SAMPLE_RATE  # type: ignore[arg-type]
    assert ch.in_flight == 4


def test_audio_at_another_rate_is_resampled_once() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=2.0))
    items = [it for c in _chunks(2, rate=48_000) for it in ch.push_audio(c)]
    assert len(items) == 1 and len(items[0].payload) == 2 * SAMPLE_RATE  # type: ignore[arg-type]


def test_guards_drop_silence_loops_and_unsure_segments() -> None:
    cfg = SpeechConfig()
    words = np.concatenate(
        [
            _words("gate four is open", segment=0),
            _words("thank you", segment=1, nsp=0.9, lp=-1.5),  # whisper's silence rule
            _words("la la la la", segment=2, cr=3.1),  # a looping decoder
            _words("mumble", segment=3, prob=0.1),  # unsure words
        ]
    )
    kept = guarded_segments(words, cfg)
    assert [int(k["segment"][0]) for k in kept] == [0]


def test_repeated_text_across_windows_is_kept_once() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=5.0))
    items = [it for c in _chunks(15) for it in ch.push_audio(c)]
    for it in items:
        ch.commit(it, _words("Thank you."))
    assert [u.text for u in ch.utterances] == ["Thank you."]
    assert ch.speech.segments_dropped == 2 and ch.in_flight == 0


def test_budget_evicts_the_oldest_utterances() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=2.0, budget_bytes=1_000))
    items = [it for c in _chunks(100) for it in ch.push_audio(c)]
    for i, it in enumerate(items):
        ch.commit(it, _words(f"report number {i} from the north entrance"))
    assert ch.nbytes <= 1_000 and ch.speech.evicted > 0
    assert ch.utterances[-1].text == "report number 49 from the north entrance"
    assert ch.utterances[0].start > 0.0


def test_snapshot_round_trip_and_a_damaged_one(tmp_path: Path) -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=5.0))
    (item,) = [it for c in _chunks(5, t0=100.0) for it in ch.push_audio(c)]
    ch.commit(item, _words("the truck is at gate 4", start=1.0))
    ch.save(tmp_path / "speech")
    back = SpeechChannel("s")
    back.restore(tmp_path / "speech")
    assert back.utterances == ch.utterances and back.nbytes == ch.nbytes
    assert back.utterances[0].start == pytest.approx(101.0)
    (tmp_path / "speech" / "speech.json").write_text('{"version": 1, "utterances": [[1]]}')
    with pytest.raises(IndexStoreError):
        SpeechChannel("s").restore(tmp_path / "speech")


def test_failed_window_is_retried_then_dropped() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=2.0, retries=1))
    (item,) = [it for c in _chunks(2) for it in ch.push_audio(c)]
    (again,) = ch.fail(item, "boom")
    assert again.attempt == 1 and ch.in_flight == 1
    assert ch.fail(again, "boom") == [] and ch.in_flight == 0
    assert (ch.counters.failed, ch.counters.retried, ch.counters.dropped) == (2, 1, 1)
    with pytest.raises(KeyError):
        ch.commit(item, _words("late"))


def test_search_quotes_the_spoken_words_and_fuse_is_confident() -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=10.0))
    items = [it for c in _chunks(30) for it in ch.push_audio(c)]
    ch.commit(items[0], _words("the forklift is charging in bay two", start=2.0))
    ch.commit(items[1], _words("the truck is at gate 4 near the loading dock", start=3.0))
    ch.commit(items[2], _words("lunch is served in the canteen", start=1.0))
    answer = ch.search(ChannelQuery(vectors={}, text="when did the driver say gate four", top_k=3))
    best = max(answer.proposals, key=lambda p: p.score)
    assert best.start == pytest.approx(13.0) and best.quote == "gate 4"
    cals = {("s", "speech", k): c for k, c in answer.calibrations.items()}
    fused = fuse(answer.proposals, cals, top_k=3)
    top = fused.moments[0]
    assert top.start == pytest.approx(13.0) and top.channels == ["speech"]
    assert top.quotes == {"speech": "gate 4"}
    # "driver" and "say" are not said: three of four terms, weighted by IDF.
    assert 0.0 < top.score < 1.0
    # Nothing said that matches: no proposal, so fusion abstains.
    none = ch.search(ChannelQuery(vectors={}, text="zebra crossing", top_k=3))
    assert none.proposals == []


def test_processed_time_waits_on_windows_in_flight_and_the_buffer(tmp_path: Path) -> None:
    ch = SpeechChannel("s", SpeechConfig(window_seconds=10.0))
    assert ch.processed_until() is None  # no sound yet
    items = [it for c in _chunks(25) for it in ch.push_audio(c)]
    assert ch.processed_until() == 0.0  # both windows with whisper
    ch.commit(items[0], _words("gate four"))
    assert ch.processed_until() == 10.0
    ch.commit(items[1], _words("dock b", start=1.0))
    assert ch.processed_until() == 20.0  # 5 s still buffered, not yet a window
    (last,) = ch.flush()
    ch.commit(last, np.zeros(0, WORD_DTYPE))
    assert ch.processed_until() == 25.0
    # Kept utterances wait for the watches, each once, in order.
    assert [(u.start, u.text) for u in ch.fresh.take()] == [(0.0, "gate four"), (11.0, "dock b")]
    assert ch.fresh.take() == []
    ch.save(tmp_path)
    again = SpeechChannel("s", SpeechConfig())
    again.restore(tmp_path)
    assert again.processed_until() == 25.0


def test_a_recorded_source_is_cut_into_long_windows_a_live_one_into_short() -> None:
    cfg = SpeechConfig(window_seconds=10.0, recorded_window_seconds=40.0)
    live, recorded = SpeechChannel("s", cfg), SpeechChannel("s", cfg)
    recorded.recorded = True
    live_items = [it for c in _chunks(85) for it in live.push_audio(c)] + live.flush()
    rec_items = [it for c in _chunks(85) for it in recorded.push_audio(c)] + recorded.flush()
    assert [(it.start, it.end) for it in live_items] == [
        (10.0 * k, min(10.0 * k + 10, 85.0)) for k in range(9)
    ]
    assert [(it.start, it.end) for it in rec_items] == [(0.0, 40.0), (40.0, 80.0), (80.0, 85.0)]
    assert live.window_seconds == 10.0 and recorded.window_seconds == 40.0
