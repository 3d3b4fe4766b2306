"""The packaged whisper base model, for real: assembly, a spoken phrase in noise, long noise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from agent.channels.base import ChannelQuery
from agent.channels.speech import SpeechChannel, SpeechConfig
from agent.models import whisper
from agent.models.whisper import SAMPLE_RATE, WhisperSettings, WhisperTranscriber
from streams.media import AudioChunk

pytest.importorskip("faster_whisper")
pytestmark = pytest.mark.timeout(240)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def transcriber() -> WhisperTranscriber:
    return WhisperTranscriber()


def _speak(text: str, folder: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, as 16 kHz mono float32 (resampled by PyAV)."""
    wav = folder / "say.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=60)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(wav)) as c:
        parts = [p.to_ndarray().reshape(-1) for f in c.decode(audio=0) for p in resampler.resample(f)]
    return np.concatenate(parts).astype(np.float32)


def _run(channel: SpeechChannel, transcriber: WhisperTranscriber, audio: np.ndarray) -> None:
    chunks = [
        AudioChunk("s", i / SAMPLE_RATE, audio[i : i + SAMPLE_RATE])
        for i in range(0, len(audio), SAMPLE_RATE)
    ]
    items = [it for c in chunks for it in channel.push_audio(c)] + channel.flush()
    for item in items:
        channel.commit(item, transcriber.transcribe(item.payload))  # type: ignore[arg-type]


def test_assembly_is_verified_and_a_corrupt_copy_is_replaced(tmp_path: Path) -> None:
    folder = whisper.assemble(tmp_path / "w")
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {
        p.name for p in folder.iterdir()
    }
    with (folder / "model.bin").open("r+b") as fh:
        fh.write(b"\0" * 16)
    assert whisper.assemble(tmp_path / "w") == folder
    assert whisper._sha256(folder / "model.bin") == whisper._SHA256


@needs_espeak
def test_spoken_phrase_in_noise_is_found_with_its_time(
    tmp_path: Path, transcriber: WhisperTranscriber
) -> None:
    speech = _speak("the truck is waiting at gate four", tmp_path)
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(SAMPLE_RATE * 40) * 0.02).astype(np.float32)
    at = 33.0  # in the second 30 s window
    audio[int(at * SAMPLE_RATE) : int(at * SAMPLE_RATE) + len(speech)] += 0.5 * speech
    channel = SpeechChannel("s", SpeechConfig())
    _run(channel, transcriber, audio)
    answer = channel.search(ChannelQuery(vectors={}, text="gate four", top_k=3))
    assert answer.proposals, [u.text for u in channel.utterances]
    best = max(answer.proposals, key=lambda p: p.score)
    assert best.score == 1.0 and "gate" in best.quote.lower()
    assert abs(best.start - at) < 0.5
    assert best.peak > best.start  # "gate" comes after "the truck is waiting at"


def test_long_noise_yields_no_transcript(transcriber: WhisperTranscriber) -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(SAMPLE_RATE * 90) * 0.1).astype(np.float32)
    hum = 0.05 * np.sin(2 * np.pi * 50 * np.arange(len(noise)) / SAMPLE_RATE).astype(np.float32)
    channel = SpeechChannel("s", SpeechConfig())
    _run(channel, transcriber, noise + hum)
    assert channel.speech.windows == 3
    assert channel.utterances == []


@needs_espeak
@pytest.mark.parametrize("batch_size", [8, 1])
def test_a_long_recorded_window_keeps_each_phrase_at_its_time(
    tmp_path: Path, transcriber: WhisperTranscriber, batch_size: int
) -> None:
    # One 100-s window: the VAD packs both phrases into one 30-s chunk; their times must come
    # back to where they were said, decoded together (batched) or one chunk at a time.
    audio = (np.random.default_rng(11).standard_normal(SAMPLE_RATE * 100) * 0.02).astype(np.float32)
    said = {"gate": 12.0, "dock": 81.0}  # whisper writes "four" as "4"
    for text, at in (
        ("the truck is waiting at gate four", 12.0),
        ("move the forklift to the loading dock", 81.0),
    ):
        speech = _speak(text, tmp_path)
        audio[int(at * SAMPLE_RATE) : int(at * SAMPLE_RATE) + len(speech)] += 0.5 * speech
    channel = SpeechChannel("s", SpeechConfig(recorded_window_seconds=100.0))
    channel.recorded = True
    model = (
        transcriber
        if batch_size == transcriber.settings.batch_size
        else WhisperTranscriber(WhisperSettings(batch_size=batch_size))
    )
    _run(channel, model, audio)
    assert channel.speech.windows == 1
    for phrase, at in said.items():
        hits = [u for u in channel.utterances if phrase in u.text.lower()]
        assert hits, [u.text for u in channel.utterances]
        assert abs(hits[0].start - at) < 0.6
