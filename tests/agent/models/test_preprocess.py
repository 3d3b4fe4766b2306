"""Numpy/Pillow preprocessing gives the embeddings torch's ``interpolate(antialias=True)`` path gave."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from agent.models.backends import TorchBackend
from agent.models.encoder import ClipEncoder
from agent.models.weights import build_model
from agent.types import RGBImage
from tests.agent.models.samples import TINY
from tests.videos import IMAGENET

# (height, width): a frame as decoded, exact size, odd and non-square sizes, upscaled, 1-pixel edges.
_SIZES = [
    (224, 224),
    (256, 455),
    (180, 200),
    (225, 223),
    (50, 70),
    (600, 800),
    (1, 300),
    (300, 1),
    (1, 1),
    (7, 5),
]


def _torch_pixels(
    images: Sequence[RGBImage], size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """The previous ClipEncoder preprocessing (torch bilinear, antialiased, on float pixels)."""
    out = []
    for img in images:
        batch = torch.from_numpy(np.array(img)[None]).permute(0, 3, 1, 2).float()
        if batch.shape[-2:] != (size, size):
            batch = F.interpolate(
                batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out.append(batch)
    pixels = torch.cat(out) / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((pixels - m) / s).numpy()


def _photos() -> list[RGBImage]:
    paths = sorted(IMAGENET.glob("*.jpg"))[: len(_SIZES)]
    if len(paths) < len(_SIZES):
        pytest.skip("the shared photos are not here")
    out = []
    for path, (h, w) in zip(paths, _SIZES, strict=True):
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)))
    return out


def test_embeddings_match_the_torch_path_per_row() -> None:
    built = build_model(TINY)
    backend = TorchBackend(built.model, "cpu", threads=1)
    enc = ClipEncoder.from_built(built, backend, TINY.model_copy(update={"batch_size": 4}))
    images = _photos()
    old = backend.encode_image(_torch_pixels(images, enc.image_size, built.mean, built.std))
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    new = enc.encode_images(images)
    cosines = (old * new).sum(axis=1)
    assert new.shape == old.shape and float(cosines.min()) >= 0.9999, cosines


def test_pixels_are_within_one_grey_level_of_torchs() -> None:
    built = build_model(TINY)
    enc = ClipEncoder.from_built(built, TorchBackend(built.model, "cpu", threads=1), TINY)
    images = _photos()
    new = enc._pixels(images)
    old = _torch_pixels(images, enc.image_size, built.mean, built.std)
    grey = np.abs(new - old) * (255.0 * np.asarray(built.std, np.float32)).reshape(1, 3, 1, 1)
    assert new.dtype == np.float32 and new.flags.c_contiguous and new.shape == old.shape
    # Pillow resizes in two uint8 passes with fixed-point weights: up to one grey level apart.
    assert float(grey.max()) <= 1.0 + 1e-3 and float(grey.mean()) <= 0.3
    assert float(grey[0].max()) <= 1e-3  # already the input size: no resize, the same numbers
