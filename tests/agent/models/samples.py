"""Inputs shared by the encoder tests: configs, photos, query texts."""

from __future__ import annotations

import numpy as np

from agent.config import EncoderConfig
from agent.types import RGBImage
from tests.videos import IMAGENET

DEFAULT_RANDOM = EncoderConfig(model="MobileCLIP2-S0", pretrained=None, random_weights=True)
TINY = EncoderConfig(model="tiny-random", allow_random=True, threads=1)
TEXTS = ["a white van on a street", "two people shaking hands", "x", "a goldfish in a bowl of water"]


def sample_images(n: int, seed: int = 0) -> list[RGBImage]:
    """Real photos at assorted sizes (resized by the encoder) and one noise image."""
    from PIL import Image

    photos = sorted(IMAGENET.glob("*.jpg"))[: n - 1] if IMAGENET.is_dir() else []
    out: list[RGBImage] = []
    for i, path in enumerate(photos):
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((200 + 40 * i, 180))))
    rng = np.random.default_rng(seed)
    while len(out) < n:
        out.append(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return out
