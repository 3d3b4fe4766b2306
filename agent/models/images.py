"""Query pictures: encoded bytes (JPEG, PNG, ...) to an RGB array, within limits.

The one decoder of query images, for the CLI (a file's bytes) and the
service (a base64 field of a ``query``/``watch`` message). Decoding is
blocking CPU work: the service calls it in a thread.

Limits, one rule for both: a picture of at most ``max_bytes`` encoded bytes
may decode to at most ``max_bytes`` pixels (:data:`PIXELS_PER_BYTE`), so the
decoded RGB array is at most three times the byte cap (24 MiB for the default
8 MiB). The pixel count is read from the header (Pillow's ``Image.open``
parses it without decoding), so a small file that would decode huge — a PNG
of 8000x8000 in 200 KB — is refused before any pixel is decoded. At the
default cap a 4K frame (3840x2160, 8.3 Mpx) still fits; the encoder sees a
few hundred pixels a side anyway.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.errors import OversizeQueryError, QueryError
from agent.types import RGBImage

PIXELS_PER_BYTE = 1
"""Pixels a picture may decode to per byte of the byte cap (see the module docstring)."""

REASON_CHARS = 200
"""Decoder messages quoted in errors are cut to this many characters."""


def max_pixels(max_bytes: int) -> int:
    """The pixel cap that goes with a byte cap of ``max_bytes``."""
    return max_bytes * PIXELS_PER_BYTE


def decode_image(data: bytes, *, max_bytes: int) -> RGBImage:
    """An (H, W, 3) uint8 RGB array of encoded picture ``data``.

    Raises OversizeQueryError (over ``max_bytes`` bytes, or more than
    :func:`max_pixels` pixels by its header: nothing is decoded) or
    QueryError (not a readable picture).
    """
    if len(data) > max_bytes:
        raise OversizeQueryError(f"query image is over {max_bytes} bytes")
    cap = max_pixels(max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size  # from the header: nothing decoded yet
            if width * height > cap:
                raise OversizeQueryError(
                    f"query image has {width}x{height} pixels, over the cap of {cap} "
                    f"(one pixel per byte of the {max_bytes}-byte limit)"
                )
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:  # Pillow's own, higher cap, hit while opening
        raise OversizeQueryError(f"query image has too many pixels: {_reason(exc)}") from exc
    except UnidentifiedImageError as exc:
        # Pillow's message names the in-memory file object ("<_io.BytesIO object at 0x...>").
        raise QueryError("query image is not a readable picture: not a format Pillow knows") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        # SyntaxError and ValueError: some of Pillow's format parsers raise them on damaged headers.
        raise QueryError(f"query image is not a readable picture: {_reason(exc)}") from exc


def decode_image_b64(b64: str, *, max_bytes: int) -> RGBImage:
    """:func:`decode_image` of base64 text; the size limit is checked before decoding the base64."""
    if len(b64) * 3 // 4 > max_bytes:
        raise OversizeQueryError(f"query image is over {max_bytes} bytes")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(f"query image is not valid base64: {_reason(exc)}") from exc
    return decode_image(data, max_bytes=max_bytes)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "…"
