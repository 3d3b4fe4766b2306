"""The OCR gate with the real Tesseract on clips written with PyAV: few reads, spans still whole."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.channels.base import ChannelQuery
from agent.channels.ocr import OcrChannel, OcrConfig
from agent.models.ocr import TesseractReader
from streams.file import decode_frames

pytest.importorskip("pytesseract")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed"),
]

FPS = 2
SIZE = (398, 224)


def _picture(text: str | None) -> np.ndarray:
    im = Image.new("RGB", SIZE, (50, 70, 90))
    if text is not None:
        ImageDraw.Draw(im).text((20, 90), text, fill=(255, 255, 255), font=ImageFont.load_default(size=30))
    return np.asarray(im)


def _clip(path: Path, seconds: float, text_at: Callable[[float], str | None]) -> Path:
    """An H.264 clip at 2 fps whose picture at ``t`` shows ``text_at(t)`` (a keyframe every second)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for k in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(_picture(text_at(k / FPS)), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _ingest(path: Path, channel: OcrChannel) -> list[float]:
    """Every decoded frame through the gate, each read by Tesseract at once; the read times."""
    reader, read = TesseractReader(), []
    for frame in decode_frames(path, fps=FPS, short_side=SIZE[1]):
        for item in channel.push(frame):
            channel.commit(item, reader.read(np.asarray(item.payload)))
            read.append(item.start)
    return read


def test_static_text_is_read_at_the_heartbeat_yet_its_span_covers_the_whole_time(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "static.mp4", 65.0, lambda t: "PLATFORM 4 DEPARTURES")
    ch = OcrChannel("s", OcrConfig(max_interval=10.0))
    read = _ingest(clip, ch)
    assert read == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # 7 reads of 130 frames: the heartbeat only
    (span,) = [s for s in ch.timed() if "DEPARTURES" in s.text]
    assert span.start == 0.0 and span.end == 64.5  # past the last read, over the unchanged frames
    answer = ch.search(ChannelQuery(vectors={}, text="platform 4 departures", top_k=1))
    assert [(p.start, p.end) for p in answer.proposals] == [(0.0, 64.5)]


def test_a_text_change_is_read_at_the_first_frame_the_gate_allows_and_ends_the_old_span(
    tmp_path: Path,
) -> None:
    def text_at(t: float) -> str | None:
        return "GATE 12 BOARDING" if t < 25.0 else "GATE 12 CLOSED" if t < 36.0 else None

    ch = OcrChannel("s", OcrConfig(min_interval=2.0, max_interval=10.0))
    read = _ingest(_clip(tmp_path / "change.mp4", 45.0, text_at), ch)
    # 25.0: read at the change itself; 36.0 is 1 s after the heartbeat at 35: the gate waits for 37.0.
    assert read == [0.0, 10.0, 20.0, 25.0, 35.0, 37.0]
    spans = {s.text: (s.start, s.end, s.open) for s in ch.spans}
    assert spans["GATE 12 BOARDING"] == (0.0, 25.0, False)
    # Closed by the read that missed it: on screen until then at most.
    assert spans["GATE 12 CLOSED"] == (25.0, 37.0, False)
