"""Test media with sound, written with PyAV (video scenes from tests.videos plus a sine tone)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_IN_RATE = 48_000


def make_video_with_tone(
    path: Path, *, seconds: float, tone_hz: float = 440.0, fps: int = 10, size: tuple[int, int] = (160, 120)
) -> Path:
    """``seconds`` of moving grey pictures (H.264) and a stereo sine tone (AAC, 48 kHz)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_IN_RATE)
        audio.layout = "stereo"
        frames = round(seconds * fps)
        block = 1024
        blocks = int(seconds * AUDIO_IN_RATE) // block
        rng = np.random.default_rng(0)
        v_done = a_done = 0
        while v_done < frames or a_done < blocks:
            # Interleave by time so the muxer never buffers much.
            if v_done < frames and (a_done >= blocks or v_done / fps <= a_done * block / AUDIO_IN_RATE):
                pixels = np.full((size[1], size[0], 3), 60 + (v_done * 7) % 120, np.uint8)
                pixels[::8] = rng.integers(0, 255, pixels[::8].shape, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = v_done
                frame.time_base = Fraction(1, fps)
                container.mux(video.encode(frame))
                v_done += 1
            else:
                n = np.arange(a_done * block, (a_done + 1) * block)
                tone = (0.5 * np.sin(2 * np.pi * tone_hz * n / AUDIO_IN_RATE)).astype(np.float32)
                stereo = np.stack([tone, tone])
                aframe = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
                aframe.sample_rate = AUDIO_IN_RATE
                aframe.pts = a_done * block
                aframe.time_base = Fraction(1, AUDIO_IN_RATE)
                container.mux(audio.encode(aframe))
                a_done += 1
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak of ``samples``."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[int(np.argmax(spectrum))])
