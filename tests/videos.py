"""Real test videos written with PyAV, shared by every test package.

A video is a list of *scenes*, each shown for a number of seconds. A scene's
picture is a solid RGB colour, a photo (a path, e.g. one of
``/work/shared/data/imagenet_sample``) or an (H, W, 3) uint8 array. Every frame
gets a little fixed-per-scene noise so the encoder sees texture, and
``moving=True`` slides a bright square across the picture so consecutive
frames differ (motion energy), while a non-moving scene is truly static.

The container follows the file suffix (``.mp4``, ``.mkv``, ``.avi``, ``.ts``);
the codec is ``libx264`` (H.264) or ``mpeg4``. ``.avi`` is constant-rate only. Timestamps can start at a
non-zero time and can be irregular (variable frame rate); :class:`VideoSpec`
returns the exact presentation times written, so tests compare decoded
timestamps against the truth instead of ``index / fps``.

Example::

    spec = make_video(tmp_path / "a.mp4", [(3.0, (255, 0, 0)), (2.0, PHOTOS[0])], fps=10)
    spec.cut_times  # [3.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():  # pragma: no cover - depends on the checkout layout
    DATA = Path("/work/shared/data")
IMAGENET = DATA / "imagenet_sample"
VIDEOS = DATA / "videos"

Fill = tuple[int, int, int] | Path | npt.NDArray[np.uint8]
Codec = Literal["libx264", "mpeg4"]

# A fine time base lets variable-rate timestamps land exactly where asked.
TIME_BASE = Fraction(1, 30_000)  # mpeg4 allows at most 16-bit denominators


@dataclass(frozen=True)
class Scene:
    """``seconds`` of one picture; ``moving`` adds a sliding square."""

    seconds: float
    fill: Fill
    moving: bool = False


SceneLike = Scene | tuple[float, Fill]
"""A :class:`Scene` or a plain ``(seconds, fill)`` pair."""


@dataclass
class VideoSpec:
    """What :func:`make_video` wrote: enough truth to check a decoder."""

    path: Path
    times: list[float] = field(default_factory=list)
    """Presentation time of every frame, seconds from the first frame."""
    scene_index: list[int] = field(default_factory=list)
    """Scene shown by each frame."""
    cut_times: list[float] = field(default_factory=list)
    """Time of the first frame of every scene after the first."""
    start_pts_seconds: float = 0.0
    size: tuple[int, int] = (0, 0)
    colors: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    """Mean RGB colour of each scene's base picture."""

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last one."""
        if len(self.times) < 2:
            return 0.0
        return self.times[-1] + (self.times[-1] - self.times[-2])


def photos(n: int, offset: int = 0) -> list[Path]:
    """``n`` real ImageNet photos (sorted, deterministic)."""
    files = sorted(IMAGENET.glob("*.jpg"))
    if len(files) < offset + n:
        raise FileNotFoundError(f"need {offset + n} photos in {IMAGENET}")
    return files[offset : offset + n]


def _base_picture(fill: Fill, size: tuple[int, int], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    w, h = size
    if isinstance(fill, Path):
        with Image.open(fill) as img:
            arr = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
        return arr.copy()
    if isinstance(fill, np.ndarray):
        arr = np.asarray(Image.fromarray(fill).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
        return arr.copy()
    base = np.empty((h, w, 3), dtype=np.int16)
    base[:] = np.asarray(fill, dtype=np.int16)
    # Fixed noise per scene: texture without frame-to-frame change.
    base += rng.integers(-6, 7, size=base.shape, dtype=np.int16)
    return np.clip(base, 0, 255).astype(np.uint8)


def _with_square(base: npt.NDArray[np.uint8], phase: float) -> npt.NDArray[np.uint8]:
    h, w, _ = base.shape
    side = max(4, min(h, w) // 4)
    x = int((w - side) * (0.5 + 0.5 * math.sin(2 * math.pi * phase)))
    y = (h - side) // 2
    out = base.copy()
    out[y : y + side, x : x + side] = 255 - out[y : y + side, x : x + side]
    return out


def frame_times(
    scenes: Sequence[Scene], fps: float, vfr: bool, rng: np.random.Generator
) -> tuple[list[float], list[int]]:
    """Presentation times and scene index of each frame.

    With ``vfr`` the gaps alternate irregularly between 0.4 and 1.8 frame
    periods, so index / fps is wrong by up to seconds over a clip.
    """
    times: list[float] = []
    owner: list[int] = []
    t = 0.0
    period = 1.0 / fps
    for i, scene in enumerate(scenes):
        end = t + scene.seconds
        while t < end - 1e-9:
            times.append(round(t * TIME_BASE.denominator) / TIME_BASE.denominator)
            owner.append(i)
            t += period * (float(rng.choice([0.4, 1.0, 1.8])) if vfr else 1.0)
        t = max(t, end) if not vfr else t
    return times, owner


def make_video(
    path: Path,
    scenes: Sequence[SceneLike],
    *,
    fps: float = 10.0,
    size: tuple[int, int] = (160, 120),
    codec: Codec = "libx264",
    gop: int | None = None,
    start_pts_seconds: float = 0.0,
    vfr: bool = False,
    bframes: bool = False,
    seed: int = 0,
) -> VideoSpec:
    """Encode ``scenes`` into ``path`` and return the ground truth.

    ``size`` is (width, height), even numbers. ``gop`` is the keyframe
    interval in frames (default: one per second); x264's scene-cut detection
    may add keyframes at cuts. ``start_pts_seconds`` shifts every
    timestamp, so the stream's start time is non-zero where the container
    keeps it (``.mkv``, ``.ts``). ``bframes`` lets the encoder reorder frames.
    """
    items = [s if isinstance(s, Scene) else Scene(float(s[0]), s[1]) for s in scenes]
    if not items:
        raise ValueError("need at least one scene")
    rng = np.random.default_rng(seed)
    times, owner = frame_times(items, fps, vfr, rng)
    bases = [_base_picture(s.fill, size, rng) for s in items]
    spec = VideoSpec(
        path=path,
        times=times,
        scene_index=owner,
        cut_times=[times[owner.index(i)] for i in range(1, len(items)) if i in owner],
        start_pts_seconds=start_pts_seconds,
        size=size,
        colors=[b.reshape(-1, 3).mean(axis=0).round().astype(np.uint8) for b in bases],
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # AVI counts frames: its time base must be one frame period, or it pads empty frames.
        tb = Fraction(fps).limit_denominator(1001) ** -1 if path.suffix.lower() == ".avi" else TIME_BASE
        if vfr and tb != TIME_BASE:
            raise ValueError("AVI cannot hold variable frame rate; use .mp4 / .mkv / .ts")
        stream.codec_context.time_base = tb
        stream.time_base = tb
        stream.codec_context.gop_size = gop if gop is not None else max(1, round(fps))
        stream.codec_context.max_b_frames = 2 if bframes else 0
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency" if not bframes else "film"}
        offset = round(start_pts_seconds / tb)
        for k, (t, i) in enumerate(zip(times, owner, strict=True)):
            scene = items[i]
            img = _with_square(bases[i], k / max(fps, 1.0) / 2.0) if scene.moving else bases[i]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = offset + round(t / tb)
            frame.time_base = tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return spec


def truncate_copy(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a killed writer)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def random_bytes_file(dst: Path, n: int = 50_000, seed: int = 0) -> Path:
    """A file of random bytes with a video suffix: not decodable at all."""
    dst.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return dst
