"""Footage rendering for haystack videos: one scene's frames as yuv420p planes.

Frames are made directly in limited-range BT.601 yuv420p: each scene's planes
are resampled once, pans are integer crops of them, zooms step through a few
precomputed levels, and noise is a random window of one precomputed noise
field added with wrapping uint8 arithmetic (safe because limited-range planes
leave headroom for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from agent.errors import ConfigError

Plane = npt.NDArray[np.uint8]
Planes = tuple[Plane, Plane, Plane]
Motion = Literal["static", "pan", "zoom"]


@dataclass(frozen=True, slots=True)
class Scene:
    """One shot of the haystack; times are stream seconds on the frame grid."""

    start: float
    end: float
    start_frame: int
    end_frame: int
    photo: str
    """Path relative to the data folder."""
    motion: Motion
    dissolve_frames: int
    """Frames at the start blended from the previous shot; 0 is a hard cut."""
    needle: int | None
    """Index into the needle list, None for a distractor."""
    seed: int


def rgb_to_yuv(rgb: npt.NDArray[np.uint8]) -> list[Image.Image]:
    """Full-resolution limited-range BT.601 Y, Cb, Cr planes as PIL images."""
    a = rgb.astype(np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return [Image.fromarray(np.rint(p).astype(np.uint8)) for p in (y, u, v)]


class Shot:
    """Renders one scene's frames (before noise and drift) as yuv420p planes."""

    def __init__(self, scene: Scene, data_dir: Path, width: int, height: int) -> None:
        try:
            with Image.open(data_dir / scene.photo) as im:
                self._src = rgb_to_yuv(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise ConfigError(f"cannot read photo {scene.photo}: {exc}") from exc
        self.n = scene.end_frame - scene.start_frame
        self.w, self.h, self.motion = width, height, scene.motion
        rng = np.random.default_rng(scene.seed)
        sw, sh = self._src[0].size
        # The largest box of the output's aspect inside the photo ("cover").
        cw, ch = (sw, sw * height / width) if sw * height / width <= sh else (sh * width / height, sh)
        self._cover = ((sw - cw) / 2, (sh - ch) / 2, cw, ch)
        z = float(rng.uniform(1.1, 1.3))
        self._z = (1.0, z) if rng.random() < 0.5 else (z, 1.0)
        self._c = rng.uniform(0.0, 1.0, size=(2, 2))  # start / end focus, fractions of the slack
        self._levels = 1
        self._level: tuple[int, Planes] | None = None
        if scene.motion == "pan":
            m = float(rng.uniform(1.15, 1.35))
            self._base = self._resample(1.0, 0.5, 0.5, 2 * round(width * m / 2), 2 * round(height * m / 2))
        elif scene.motion == "static":
            self._base = self._resample(
                float(rng.uniform(1.0, 1.15)), self._c[0, 0], self._c[0, 1], width, height
            )
        else:
            # Enough levels that one step moves the frame edge by about two pixels.
            self._levels = max(2, min(self.n, math.ceil(abs(self._z[1] - self._z[0]) * width / 2)))

    def _resample(self, zoom: float, fx: float, fy: float, w: int, h: int) -> Planes:
        x0, y0, cw, ch = self._cover
        bw, bh = cw / zoom, ch / zoom
        bx, by = x0 + (cw - bw) * fx, y0 + (ch - bh) * fy
        out = []
        for i, img in enumerate(self._src):
            size = (w, h) if i == 0 else (w // 2, h // 2)
            out.append(
                np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=(bx, by, bx + bw, by + bh)))
            )
        return out[0], out[1], out[2]

    def planes(self, j: int) -> Planes:
        """Planes of local frame ``j``; frames past the end hold the last pose."""
        p = min(1.0, j / max(1, self.n - 1))
        if self.motion == "static":
            return self._base
        if self.motion == "pan":
            y, u, v = self._base
            c = self._c[0] + (self._c[1] - self._c[0]) * p
            ox = 2 * round(c[0] * (y.shape[1] - self.w) / 2)
            oy = 2 * round(c[1] * (y.shape[0] - self.h) / 2)
            hx, hy, w2, h2 = ox // 2, oy // 2, self.w // 2, self.h // 2
            return (
                y[oy : oy + self.h, ox : ox + self.w],
                u[hy : hy + h2, hx : hx + w2],
                v[hy : hy + h2, hx : hx + w2],
            )
        level = round(p * (self._levels - 1))
        if self._level is None or self._level[0] != level:
            q = level / (self._levels - 1)
            zoom = self._z[0] + (self._z[1] - self._z[0]) * q
            fx, fy = self._c[0] + (self._c[1] - self._c[0]) * q
            self._level = (level, self._resample(zoom, fx, fy, self.w, self.h))
        return self._level[1]


class Grain:
    """Sensor noise and slow brightness drift, applied while filling the output buffer."""

    PAD = 32

    def __init__(self, width: int, height: int, noise: float, rng: np.random.Generator) -> None:
        w, h, p = width, height, self.PAD
        clip = math.ceil(3.5 * noise)
        # Limited range leaves 16 levels of headroom: noise plus drift must stay inside it.
        self.drift_max = min(8.0, 15.0 - clip)
        self._y = self._field(rng, (h + p, w + p), noise, clip)
        self._c = self._field(rng, (h // 2 + p, w // 2 + p), noise / 2, math.ceil(clip / 2))
        self._waves = [(float(rng.uniform(60, 900)), float(rng.uniform(0, 2 * math.pi))) for _ in range(2)]
        self._rng = rng

    @staticmethod
    def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float, clip: int) -> Plane:
        noise = np.clip(np.rint(rng.normal(0.0, sigma, size=shape)), -clip, clip).astype(np.int8)
        return noise.view(np.uint8)  # two's complement: a wrapping uint8 add is a signed add

    def drift(self, t: float) -> int:
        """Brightness offset in luma levels at stream time ``t``."""
        return round(
            sum(self.drift_max / 2 * math.sin(2 * math.pi * t / per + ph) for per, ph in self._waves)
        )

    def apply(self, src: Planes, dst: Planes, t: float) -> None:
        oy, ox, cy, cx = (int(v) for v in self._rng.integers(0, self.PAD, size=4))
        h, w = dst[0].shape
        np.add(src[0], self._y[oy : oy + h, ox : ox + w], out=dst[0])
        np.add(dst[0], np.uint8(self.drift(t) % 256), out=dst[0])
        h2, w2 = dst[1].shape
        np.add(src[1], self._c[cy : cy + h2, cx : cx + w2], out=dst[1])
        np.add(src[2], self._c[cx : cx + h2, cy : cy + w2], out=dst[2])


def blend(a: Planes, b: Planes, weight: float) -> Planes:
    """Dissolve: ``(1 - weight) * a + weight * b`` in 8-bit fixed point."""
    k = np.uint16(round(256 * weight))
    out = [
        ((x.astype(np.uint16) * (256 - k) + y.astype(np.uint16) * k + 128) >> 8).astype(np.uint8)
        for x, y in zip(a, b, strict=True)
    ]
    return out[0], out[1], out[2]
