"""The channel-cost bench's clip: speech at the asked density, remuxed under the video, decodable as media."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.channel_cost import RATE, sound_track, with_sound
from streams.file import decode_media
from streams.media import AudioChunk
from tests.videos import make_video, photos

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_the_sound_track_holds_the_asked_speech_density_and_muxes_under_the_video(tmp_path: Path) -> None:
    sound, said = sound_track(60.0, 0.3, 20.0, tmp_path)
    assert len(sound) == 60 * RATE and 0.2 <= said / 60.0 <= 0.4
    loud = np.abs(sound) > 0.05  # speech, not the noise 20 dB below it
    assert 0.05 < float(np.mean(loud)) < 0.5

    video = make_video(tmp_path / "v.mp4", [(4.0, p) for p in photos(2)], fps=5, size=(160, 120))
    clip = with_sound(video.path, sound[: 8 * RATE], tmp_path / "clip.mp4")
    media = list(decode_media(clip, stream="c", fps=2.0, short_side=64, audio=True))
    audio = [m for m in media if isinstance(m, AudioChunk)]
    frames = [m for m in media if not isinstance(m, AudioChunk)]
    assert len(frames) >= 14 and sum(len(a.samples) for a in audio) / RATE == pytest.approx(8.0, abs=0.2)
    # Interleaved by time: the sound does not all come after the pictures.
    assert media.index(audio[0]) < media.index(frames[len(frames) // 2])
