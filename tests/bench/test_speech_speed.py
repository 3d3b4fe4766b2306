"""The speech-speed bench's scoring: words heard over each said sentence, and its start error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.channels.text_search import TimedText
from bench.channel_cost import RATE, spoken_track
from bench.speech_speed import heard


def _utt(start: float, text: str) -> TimedText:
    words = tuple((start + 0.4 * i, start + 0.4 * i + 0.3, " " + w) for i, w in enumerate(text.split()))
    return TimedText(words[0][0], words[-1][1], text, words)


def test_words_heard_count_per_sentence_and_the_start_error_is_the_first_word_over_it() -> None:
    lines = [(10.0, 12.0, "the truck is at gate four"), (40.0, 42.0, "the dock is closed")]
    utterances = [_utt(10.2, "the truck is at gate 4"), _utt(70.0, "the dock is closed")]
    got = heard(utterances, lines)
    # Sentence 1: 5 of its 6 words ("four" heard as "4"); sentence 2: nothing over it (heard at 70 s).
    assert got["word_recall"] == pytest.approx(5 / 10, abs=1e-3)
    assert (got["sentences_heard"], got["sentences"]) == (1, 2)
    assert got["start_error_s_median"] == pytest.approx(0.2, abs=1e-3)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_the_spoken_track_says_where_each_sentence_is(tmp_path: Path) -> None:
    track, lines = spoken_track(60.0, 0.3, 40.0, tmp_path)
    assert len(lines) >= 3 and all(0.0 <= s < e <= 60.0 for s, e, _ in lines)
    for start, end, _ in lines:  # loud where a sentence is said, quiet (40 dB below) just before it
        said = track[int(start * RATE) : int(end * RATE)]
        before = track[int((start - 0.4) * RATE) : int(start * RATE)]
        assert float(abs(said).max()) > 10 * float(abs(before).max())
