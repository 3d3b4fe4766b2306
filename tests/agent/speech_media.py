"""Test media with words: espeak-ng sentences in noise, text drawn with Pillow, muxed with PyAV."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

RATE = 16_000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def spoken(text: str, folder: Path, *, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng: (n,) float32 mono at 16 kHz (resampled by PyAV)."""
    wav = folder / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, timeout=60)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with av.open(str(wav)) as c:
        parts = [p.to_ndarray().reshape(-1) for f in c.decode(audio=0) for p in resampler.resample(f)]
    return np.concatenate(parts).astype(np.float32)


def noise_with(
    seconds: float, said: list[tuple[float, np.ndarray]], *, level: float = 0.02, seed: int = 0
) -> np.ndarray:
    """``seconds`` of white noise with each (start second, speech) added at half scale."""
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal(int(seconds * RATE)) * level).astype(np.float32)
    for at, speech in said:
        i = int(at * RATE)
        out[i : i + len(speech)] += 0.5 * speech[: len(out) - i]
    return np.clip(out, -1.0, 1.0)


def picture(k: int, size: tuple[int, int], shown: list[tuple[float, float, str]], t: float) -> np.ndarray:
    """Frame ``k`` (a grey that drifts) with each (start, end, text) of ``shown`` drawn while on screen."""
    im = Image.new("RGB", size, (60 + (k * 7) % 120,) * 3)
    draw = ImageDraw.Draw(im)
    for i, (a, b, text) in enumerate(shown):
        if a <= t < b:
            draw.text(
                (12, 20 + 60 * i), text, fill=(255, 255, 0), font=ImageFont.load_default(size=size[1] // 7)
            )
    return np.asarray(im)


def make_video_with_sound(
    path: Path,
    sound: np.ndarray,
    *,
    fps: int = 5,
    size: tuple[int, int] = (320, 240),
    shown: list[tuple[float, float, str]] | None = None,
) -> Path:
    """Moving grey pictures (H.264) for as long as ``sound`` (16 kHz mono, AAC), ``shown`` text drawn on them."""
    seconds = len(sound) / RATE
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        frames, block = round(seconds * fps), 1024
        blocks = len(sound) // block
        v_done = a_done = 0
        while v_done < frames or a_done < blocks:
            if v_done < frames and (a_done >= blocks or v_done / fps <= a_done * block / RATE):
                pixels = picture(v_done, size, shown or [], v_done / fps)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts, frame.time_base = v_done, Fraction(1, fps)
                container.mux(video.encode(frame))
                v_done += 1
            else:
                piece = sound[a_done * block : (a_done + 1) * block].reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
                aframe.sample_rate = RATE
                aframe.pts, aframe.time_base = a_done * block, Fraction(1, RATE)
                container.mux(audio.encode(aframe))
                a_done += 1
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path
