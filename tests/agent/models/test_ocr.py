"""Tesseract, for real, on pictures drawn with Pillow."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.models.ocr import TesseractReader

pytest.importorskip("pytesseract")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed"),
]


def test_lines_come_with_their_boxes_and_confidence() -> None:
    im = Image.new("RGB", (298, 224), (60, 70, 80))
    draw = ImageDraw.Draw(im)
    draw.text((20, 90), "ERROR 503", fill=(255, 255, 255), font=ImageFont.load_default(size=36))
    draw.text((20, 160), "north entrance", fill=(250, 240, 0), font=ImageFont.load_default(size=24))
    lines = TesseractReader().read(np.asarray(im))
    by_text = {str(r["text"]): r for r in lines}
    assert set(by_text) == {"ERROR 503", "north entrance"}
    err = by_text["ERROR 503"]
    assert (
        10 <= err["left"] <= 30 and 85 <= err["top"] <= 110 and err["conf"] > 80
    )  # boxes in the picture's pixels
    assert by_text["north entrance"]["top"] > err["top"] + err["height"]


def test_a_picture_without_text_reads_nothing() -> None:
    rng = np.random.default_rng(0)
    assert len(TesseractReader().read(np.full((224, 298, 3), 90, np.uint8))) == 0
    smooth = np.repeat(np.linspace(0, 255, 298, dtype=np.uint8)[None, :, None], 224, axis=0).repeat(3, axis=2)
    assert len(TesseractReader().read(smooth + rng.integers(0, 3, smooth.shape, dtype=np.uint8))) == 0
