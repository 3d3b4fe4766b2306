"""Deterministic stand-ins for the CLIP encoder and the frame store.

No CLIP weights exist here, so :class:`HashEncoder` maps images to colour
histograms and texts to hashed bags of words, and knows colour words so that
"a red frame" lands near a red picture: enough to test S_q arithmetic, not
semantics. :class:`MemoryFrames` keeps real JPEG bytes (Pillow).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from llm_server.types import RGBImage

COLOURS = {"red": 0, "green": 1, "blue": 2}


def _unit(m: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.maximum(norms, 1e-8)).astype(np.float32)


class HashEncoder:
    """Satisfies the Encoder protocol: dim 32, first 3 dims are the colour channels."""

    name = "hash-test-double"
    dim = 32
    meaningless = True

    def encode_images(self, images: Sequence[RGBImage]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(images), self.dim), np.float32)
        for i, img in enumerate(images):
            out[i, :3] = img.reshape(-1, 3).mean(axis=0)
        return _unit(out)

    def encode_text(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                if word in COLOURS:
                    out[i, COLOURS[word]] += 4.0
                else:
                    h = int(hashlib.sha1(word.encode()).hexdigest(), 16)
                    out[i, 3 + h % (self.dim - 3)] += 1.0
        return _unit(out)


def solid(colour: str, size: int = 32) -> RGBImage:
    """A solid-colour RGB picture."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., COLOURS[colour]] = 255
    return img


class MemoryFrames:
    """A frame store in memory: frames by time, served as arrays and JPEG bytes."""

    def __init__(self, frames: dict[float, RGBImage]) -> None:
        self._frames = dict(sorted(frames.items()))

    def frames(self, start: float, end: float, max_frames: int) -> list[tuple[float, RGBImage]]:
        inside = [(t, img) for t, img in self._frames.items() if start <= t <= end]
        if len(inside) <= max_frames:
            return inside
        step = len(inside) / max_frames
        return [inside[int(i * step)] for i in range(max_frames)]

    def get_jpeg(self, t: float) -> tuple[float, bytes]:
        near = min(self._frames, key=lambda s: abs(s - t))
        buf = io.BytesIO()
        Image.fromarray(self._frames[near]).save(buf, format="JPEG", quality=80)
        return near, buf.getvalue()
