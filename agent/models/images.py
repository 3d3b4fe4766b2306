"""Query pictures: encoded bytes (JPEG, PNG, ...) to an RGB array, within limits.

The one decoder of query images, for the CLI (a file's bytes) and the
service (a base64 field of a ``query``/``watch`` message). Decoding is
blocking CPU work: the service calls it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.errors import OversizeQueryError, QueryError
from agent.types import RGBImage

MAX_PIXELS = 64_000_000
"""Pictures above this many pixels are refused before decoding (decompression bombs)."""


def decode_image(data: bytes, *, max_bytes: int) -> RGBImage:
    """An (H, W, 3) uint8 RGB array of encoded picture ``data``.

    Raises OversizeQueryError (over ``max_bytes`` or :data:`MAX_PIXELS`) or
    QueryError (not a readable picture).
    """
    if len(data) > max_bytes:
        raise OversizeQueryError(f"query image is over {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise OversizeQueryError("query image has too many pixels")
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise QueryError(f"query image is not a readable picture: {exc}") from exc


def decode_image_b64(b64: str, *, max_bytes: int) -> RGBImage:
    """:func:`decode_image` of base64 text; the size limit is checked before decoding the base64."""
    if len(b64) * 3 // 4 > max_bytes:
        raise OversizeQueryError(f"query image is over {max_bytes} bytes")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(f"query image is not valid base64: {exc}") from exc
    return decode_image(data, max_bytes=max_bytes)
