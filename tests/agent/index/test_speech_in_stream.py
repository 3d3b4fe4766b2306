"""A stream with the speech channel: audio routed to it, a text query answered with quotes, channel filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.channels.base import WorkItem
from agent.channels.retrieval import Query
from agent.channels.speech import SpeechChannel, SpeechConfig
from agent.channels.visual import images_of
from agent.config import EncoderConfig, IndexConfig, QueryConfig, Settings
from agent.index.answers import answer, channel_query
from agent.index.stream_state import StreamState
from agent.index.video_index import VideoIndex
from agent.models.encoder import ClipEncoder, load_encoder
from agent.models.whisper import SAMPLE_RATE, WORD_DTYPE
from agent.types import AudioChunk, Frame

TINY = EncoderConfig(model="tiny-random", allow_random=True, threads=1)


@pytest.fixture(scope="module")
def enc() -> ClipEncoder:
    return load_encoder(TINY)


def _said(text: str, at: float) -> np.ndarray:
    rows = [
        (at + 0.4 * i, at + 0.4 * i + 0.35, 0.9, " " + w, 0, 0.02, -0.2, 1.1)
        for i, w in enumerate(text.split())
    ]
    return np.array(rows, dtype=WORD_DTYPE)


def _state(root: Path, enc: ClipEncoder) -> StreamState:
    cfg = IndexConfig(fps=2.0, grid=1, gate=False, store_bytes=1 << 22)
    speech = SpeechChannel("cam", SpeechConfig(window_seconds=10.0))
    return StreamState(
        root, "cam", cfg, dim=enc.dim, image_size=enc.image_size, refine=enc, channels=[speech]
    )


def _feed(state: StreamState, enc: ClipEncoder) -> None:
    frames = [Frame("cam", k * 0.5, np.full((48, 64, 3), (k * 7 % 255, 40, 90), np.uint8)) for k in range(40)]
    items = [it for f in frames for it in state.push(f)]
    audio = [
        it
        for s in range(20)
        for it in state.push_audio(AudioChunk("cam", float(s), np.zeros(SAMPLE_RATE, np.float32)))
    ]
    items += state.flush()
    for item in items:
        state.commit(item, enc.encode_images(images_of([item]))[0])
    windows = {item.start: item for item in audio}
    assert sorted(windows) == [0.0, 10.0] and all(item.channel == "speech" for item in audio)
    # What the speech worker would return for each window (window seconds).
    state.commit(windows[0.0], _said("the forklift is charging in bay two", 1.0))
    state.commit(windows[10.0], _said("the truck is at gate 4 near the loading dock", 2.5))


def _ask(state: StreamState, enc: ClipEncoder, text: str, channels: list[str] | None = None) -> dict:  # type: ignore[type-arg]
    q = Query(text=text, top_k=3, channels=channels)
    vec = enc.encode_text([text])[0]
    cq = channel_query(q, QueryConfig(), prescreen=vec, refine=vec)
    return answer({"cam": state.search(cq)}, {"cam": state}, cq, meaningless=True)


def test_a_spoken_phrase_is_answered_with_its_words(tmp_path: Path, enc: ClipEncoder) -> None:
    state = _state(tmp_path, enc)
    try:
        _feed(state, enc)
        result = _ask(state, enc, "when did the driver say gate four", channels=["speech"])["cam"]
        top = result.moments[0]
        assert top.channels == ["speech"] and top.quotes == {"speech": "gate 4"}
        assert top.start == pytest.approx(12.5)
        # Every channel by default: the speech moment is among the visual ones.
        both = _ask(state, enc, "when did the driver say gate four")["cam"]
        assert any(m.quotes.get("speech") == "gate 4" for m in both.moments)
        assert any("visual" in m.channels for m in both.moments)
        # Visual only: no quotes.
        visual = _ask(state, enc, "when did the driver say gate four", channels=["visual"])["cam"]
        assert visual.moments and all(m.channels == ["visual"] and not m.quotes for m in visual.moments)
    finally:
        state.close()


def test_the_transcript_is_snapshotted_with_the_stream(tmp_path: Path, enc: ClipEncoder) -> None:
    state = _state(tmp_path, enc)
    _feed(state, enc)
    state.save()
    state.close()
    assert (tmp_path / "speech" / "speech.json").is_file()
    again = _state(tmp_path, enc)
    try:
        speech = again.channels["speech"]
        assert isinstance(speech, SpeechChannel)
        assert [u.text for u in speech.utterances] == [
            "the forklift is charging in bay two",
            "the truck is at gate 4 near the loading dock",
        ]
        top = _ask(again, enc, "gate four", channels=["speech"])["cam"].moments[0]
        assert top.quotes == {"speech": "gate 4"}
    finally:
        again.close()


def test_speech_size_and_lag_follow_the_windows(tmp_path: Path, enc: ClipEncoder) -> None:
    state = _state(tmp_path, enc)
    try:
        assert state.text_sizes()["speech"].lag_seconds == 0.0  # nothing ingested yet
        audio = [
            it
            for s in range(25)
            for it in state.push_audio(AudioChunk("cam", float(s), np.zeros(SAMPLE_RATE, np.float32)))
        ]
        # Ingested to 24 s (the last chunk's start); both windows still with whisper.
        assert state.text_sizes()["speech"].lag_seconds == 24.0
        state.commit(audio[0], _said("gate four", 1.0))
        size = state.text_sizes()["speech"]
        assert (size.spans, size.lag_seconds) == (1, 14.0) and size.bytes > 0
        state.commit(audio[1], _said("dock b", 1.0))
        assert state.text_sizes()["speech"].lag_seconds == 4.0  # 20..24 s still buffered
        assert [u.text for u in state.fresh_text("speech")] == ["gate four", "dock b"]
        assert state.fresh_text("speech") == [] and state.fresh_text("visual") == []
    finally:
        state.close()


def test_inline_ingest_reads_a_recording_so_its_speech_windows_are_long(
    tmp_path: Path, enc: ClipEncoder
) -> None:
    state = _state(tmp_path / "s", enc)
    speech = state.channels["speech"]
    assert isinstance(speech, SpeechChannel) and not speech.recorded  # a live source's default
    state.close()
    settings = Settings(
        prescreen=TINY,
        index=IndexConfig(fps=2.0, grid=1, gate=False),
        speech=SpeechConfig(enabled=True, semantic=False, recorded_window_seconds=12.0),
    )
    idx = VideoIndex.create(tmp_path / "idx", settings)
    try:
        seen: list[float] = []

        def silence(items: list[WorkItem]) -> list[np.ndarray]:  # whisper's part: the windows' lengths
            seen.extend(it.end - it.start for it in items)
            return [np.zeros(0, WORD_DTYPE) for _ in items]

        idx._workers["speech"] = silence
        frames = [Frame("cam", k * 0.5, np.full((48, 64, 3), 60, np.uint8)) for k in range(4)]
        audio = [AudioChunk("cam", float(s), np.zeros(SAMPLE_RATE, np.float32)) for s in range(30)]
        idx.ingest([*frames, *audio])
        ingested = idx.streams["cam"].channels["speech"]
        assert isinstance(ingested, SpeechChannel) and ingested.recorded
        assert seen == [12.0, 12.0, 6.0]  # recorded_window_seconds, not the live 30 s
    finally:
        idx.close()
