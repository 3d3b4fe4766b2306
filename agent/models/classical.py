"""A classical image descriptor as an encoder backend: colour thumbnails plus gradient histograms.

``--model classical-hog`` (:data:`CLASSICAL`) is a second *proxy* encoder for
benchmarks and tests where no CLIP weights exist. It has no weights at all and a
geometry unlike a random ViT's (whose cosines between unrelated scenes are mostly
above 0.9): on ImageNet photos, unrelated pictures score about 0.13 (median),
a jittered copy of the same picture about 0.88. It is **not** a semantic
model: it compares pictures with pictures (layout, colour, edges) and has no
text side, so it is ``meaningless``, every answer it gives carries the note
:data:`NOTE`, and text queries raise :class:`~agent.errors.QueryError`.

It runs as a :class:`~agent.models.backends.Backend` inside
:class:`~agent.models.encoder.ClipEncoder`, which squashes each picture to
:data:`IMAGE_SIZE` square (one antialiased bilinear resize), batches, locks and
L2-normalises as it does for CLIP. With mean 0 and std 1 the pixels reach
:func:`describe` as RGB in [0, 1].

The descriptor is a weighted concatenation of L2-normalised blocks, so the
cosine of two descriptors is the weighted mean of the blocks' cosines:

==============================  ======  =========================================
block                           weight  why
==============================  ======  =========================================
8 x 8 thumbnail, CIELAB,        0.35    layout of light and colour; centring and
mean-centred                            normalising remove brightness and contrast
4 x 4 chroma (a, b), as is      0.15    absolute hue (centring would lose it)
gradient histograms 4 x 4 x 9   0.25    edges and their orientation, by place
gradient histograms 2 x 2 x 9   0.15    the same, coarser: survives crops and shifts
gradient histogram 1 x 1 x 9    0.05    global orientation: the same for a picture
                                        and a grid of that picture (super-images)
constant 1                      0.05    keeps a blank picture's vector unit-norm
==============================  ======  =========================================

Gradient histograms are HOG-like: central differences of luma, unsigned
orientation in 9 bins with linear vote splitting, magnitudes summed per cell,
each level normalised as a whole (flat cells stay small), square-rooted
(Hellinger: strong edges do not dominate) and mean-centred so that unrelated
pictures score near 0 rather than near the histograms' common positive mean.

Numpy only, deterministic (no seed, no threads): the same picture gives the
same bytes in every process. Under 1 ms per picture on one core (about 1400
small frames/s; about 240 full 480p photos/s including the resize).
"""

from __future__ import annotations

import numpy as np

from agent.errors import QueryError

CLASSICAL = "classical-hog"
"""The ``--model`` name of this encoder."""
NOTE = "classical-hog is a classical descriptor (colour thumbnails + gradient histograms): image-to-image only, no semantics"
IMAGE_SIZE = 64
"""Square side the pictures are squashed to before :func:`describe`."""
THUMB = 8
CHROMA = 4
BINS = 9
HOG_LEVELS = (4, 2, 1)
"""Cells per side of each gradient-histogram level, finest first."""
WEIGHTS = {"thumb": 0.35, "chroma": 0.15, "hog4": 0.25, "hog2": 0.15, "hog1": 0.05, "bias": 0.05}
CHROMA_FLOOR = 4.0
"""Norm (CIELAB units) under which a chroma block counts as grey and shrinks towards 0."""
HOG_FLOOR = 1e-3
"""Norm under which a gradient level counts as flat (pixel values in [0, 1])."""
DIM = THUMB * THUMB * 3 + CHROMA * CHROMA * 2 + sum(c * c * BINS for c in HOG_LEVELS) + 1

# sRGB (D65) to XYZ, rows X, Y, Z; white point of D65 for the CIELAB normalisation.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _block_mean(x: np.ndarray, cells: int) -> np.ndarray:
    """(n, S, S, c) -> (n, cells, cells, c): mean over each cell (S divisible by cells)."""
    n, s, _, c = x.shape
    k = s // cells
    return x.reshape(n, cells, k, cells, k, c).mean(axis=(2, 4))  # type: ignore[no-any-return]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> (..., 3) CIELAB (L in [0, 100], a and b about [-100, 100])."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    lab = np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )
    return lab.astype(np.float32)


def _unit(x: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """Rows of (n, d) divided by max(norm, floor): rows below ``floor`` shrink instead of blowing up."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, floor)  # type: ignore[no-any-return]


def _orientation_maps(luma: np.ndarray) -> np.ndarray:
    """(n, S, S) luma -> (n, S, S, BINS) gradient magnitude split over unsigned orientation bins."""
    gx = np.zeros_like(luma)
    gy = np.zeros_like(luma)
    gx[:, :, 1:-1] = luma[:, :, 2:] - luma[:, :, :-2]
    gy[:, 1:-1, :] = luma[:, 2:, :] - luma[:, :-2, :]
    mag = np.hypot(gx, gy)
    pos = (np.arctan2(gy, gx) % np.pi) * (BINS / np.pi)  # in [0, BINS]
    lo = np.floor(pos)
    w_hi = pos - lo
    lo_bin = lo.astype(np.int64) % BINS
    hi_bin = (lo_bin + 1) % BINS
    bins = np.arange(BINS).reshape(1, 1, 1, BINS)
    votes = (lo_bin[..., None] == bins) * (mag * (1 - w_hi))[..., None]
    votes += (hi_bin[..., None] == bins) * (mag * w_hi)[..., None]
    return votes.astype(np.float32)


def _hog_level(cells_hist: np.ndarray) -> np.ndarray:
    """(n, c, c, BINS) summed magnitudes -> (n, c*c*BINS): level-normalised, rooted, centred, unit."""
    n = cells_hist.shape[0]
    h = _unit(cells_hist.reshape(n, -1), HOG_FLOOR)
    h = np.sqrt(h)
    return _unit(h - h.mean(axis=1, keepdims=True))


def describe(pixels: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) RGB in [0, 1], S = :data:`IMAGE_SIZE` -> (n, :data:`DIM`) float32, rows unit-norm.

    Raises ValueError for another shape.
    """
    if pixels.ndim != 4 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected (n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) pixels, got {pixels.shape}")
    x = np.clip(pixels.astype(np.float32, copy=False), 0.0, 1.0)
    n = x.shape[0]
    lab = srgb_to_lab(_block_mean(x, THUMB)).reshape(n, -1, 3)
    thumb = _unit((lab - lab.mean(axis=1, keepdims=True)).reshape(n, -1))
    chroma = _unit(srgb_to_lab(_block_mean(x, CHROMA))[..., 1:].reshape(n, -1), CHROMA_FLOOR)
    votes = _orientation_maps(x @ _LUMA)
    finest = _block_mean(votes, HOG_LEVELS[0])  # coarser levels sum the finest cells
    hogs = []
    for cells in HOG_LEVELS:
        k = HOG_LEVELS[0] // cells
        level = finest.reshape(n, cells, k, cells, k, BINS).sum(axis=(2, 4))
        hogs.append(_hog_level(level))
    blocks = [thumb, chroma, *hogs, np.ones((n, 1), np.float32)]
    names = ("thumb", "chroma", "hog4", "hog2", "hog1", "bias")
    out = np.concatenate([np.sqrt(WEIGHTS[k]) * b for k, b in zip(names, blocks, strict=True)], axis=1)
    return _unit(out).astype(np.float32)


class ClassicalBackend:
    """:func:`describe` behind the :class:`~agent.models.backends.Backend` protocol (CPU, numpy)."""

    name = "numpy"
    dim = DIM

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 RGB in [0, 1] (mean 0, std 1 normalisation) -> (n, DIM) float32."""
        return describe(pixels.transpose(0, 2, 3, 1))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """Always raises QueryError: a classical descriptor has no text side."""
        raise QueryError(f"{CLASSICAL} has no text side: query with an image (--image)")


def tokenize(texts: list[str]) -> np.ndarray:
    """Placeholder tokens (one zero per text): the text side refuses them anyway."""
    return np.zeros((len(texts), 1), dtype=np.int64)
