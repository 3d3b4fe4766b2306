"""Query pictures: the byte cap, the pixel cap read from the header, typed errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from agent.errors import OversizeQueryError, QueryError
from agent.models.images import decode_image, decode_image_b64, max_pixels


def png(width: int, height: int, mode: str = "1") -> bytes:
    """A PNG of one flat colour: a few KB however many pixels (a decompression bomb when large)."""
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def test_a_small_picture_of_too_many_pixels_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = png(8000, 8000)  # 64 Mpx in a few KB: decoding it to RGB would take 192 MB
    assert len(bomb) < 64 * 1024

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(OversizeQueryError, match="8000x8000 pixels"):
        decode_image(bomb, max_bytes=8 * 1024**2)
    with pytest.raises(OversizeQueryError, match="8000x8000 pixels"):
        decode_image_b64(base64.b64encode(bomb).decode(), max_bytes=8 * 1024**2)


def test_the_pixel_cap_follows_the_byte_cap() -> None:
    max_bytes = 64 * 64
    assert max_pixels(max_bytes) == max_bytes
    at_cap = decode_image(png(64, 64, "RGB"), max_bytes=max_bytes)
    assert at_cap.shape == (64, 64, 3) and at_cap.dtype == np.uint8
    with pytest.raises(OversizeQueryError, match="65x64 pixels"):
        decode_image(png(65, 64, "RGB"), max_bytes=max_bytes)
    # The default byte cap (8 MiB) admits a 4K frame.
    assert decode_image(png(3840, 2160), max_bytes=8 * 1024**2).shape == (2160, 3840, 3)


def test_over_the_byte_cap_and_unreadable_pictures_are_typed_errors() -> None:
    with pytest.raises(OversizeQueryError, match="over 100 bytes"):
        decode_image(png(8, 8, "RGB") + b"\0" * 100, max_bytes=100)
    with pytest.raises(OversizeQueryError, match="over 100 bytes"):
        decode_image_b64("A" * 200, max_bytes=100)
    with pytest.raises(QueryError, match="not valid base64"):
        decode_image_b64("not base64!", max_bytes=100)
    with pytest.raises(QueryError, match="not a readable picture") as caught:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"x" * 5000, max_bytes=10_000)
    assert not isinstance(caught.value, OversizeQueryError) and len(str(caught.value)) < 300
    with pytest.raises(QueryError, match="not a format Pillow knows") as caught:
        decode_image(b"plain text, no picture", max_bytes=10_000)
    assert "BytesIO" not in str(caught.value)  # no Python object in a client's error
