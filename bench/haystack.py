"""Seeded "haystack" videos: hours of camera-like footage with a few needles.

Distractor scenes come from ``imagenet_sample/*.jpg``, needle scenes from
``coco/`` (each needle shown exactly once; its five human captions are the
text queries, a jittered copy of its photo is the image query). Scenes last
5-120 s (the seeded plan: :mod:`bench.haystack_plan`) and are rendered as
footage (:mod:`bench.footage`): a fixed camera (a still shot held for a
long stretch), slow pans, slow zooms, sensor noise, brightness drift, mostly
short dissolves and occasional hard cuts.

Speed is the design constraint (24 h at 2 fps 480p or 1 h at 720p25 in under
~15 min on 2 cores), so frames are made directly in limited-range BT.601
yuv420p: each scene's planes are resampled once, pans are integer crops of
them, zooms step through a few precomputed levels, and noise is a random
window of one precomputed noise field added with wrapping uint8 arithmetic
(safe because limited-range planes leave headroom for it).

A build is cached under a key of its parameters and the data folder listing;
it is assembled in a temporary folder and renamed into place, so a cache entry
is either complete or absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageEnhance
from pydantic import Field, ValidationError

from agent.config import Strict
from agent.errors import ConfigError, SourceError
from bench.footage import Grain, Scene, Shot, blend
from bench.haystack_plan import Needle, load_data, plan_scenes

BUILDER_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE = REPO_ROOT / "bench" / "cache"
WIDTHS = {480: 854, 720: 1280}


class HaystackParams(Strict):
    """Everything that determines a haystack video (and its cache key).

    The benchmark range is 10 min to 24 h; durations down to 1 min are
    accepted so tests can build small videos with the same code.
    """

    duration: float = Field(default=3600.0, ge=60.0, le=86400.0)
    fps: Literal[2, 3, 4, 5, 25] = 2
    height: Literal[480, 720] = 480
    needles: int = Field(default=20, ge=1)
    seed: int = 0
    preset: Literal["ultrafast", "veryfast"] = "ultrafast"
    crf: int = Field(default=30, ge=0, le=51)
    noise: float = Field(default=1.5, ge=0.0, le=3.0)
    """Sensor noise sigma in luma levels (clipped at 3.5 sigma)."""

    @property
    def width(self) -> int:
        return WIDTHS[self.height]

    @property
    def frames(self) -> int:
        return round(self.duration * self.fps)


@dataclass(frozen=True, slots=True)
class HaystackSet:
    """The files of one built haystack."""

    root: Path
    video: Path
    gt_text: Path
    gt_image: Path
    manifest: Path
    cached: bool
    """True when the set came from the cache without rebuilding."""


def cache_key(params: HaystackParams, data_dir: Path) -> str:
    """Hash of the parameters, the builder version and the data listing."""
    h = hashlib.sha256(json.dumps([BUILDER_VERSION, params.model_dump()], sort_keys=True).encode())
    for sub in ("imagenet_sample", "coco"):
        for p in sorted((data_dir / sub).rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(data_dir)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _encode(
    params: HaystackParams, scenes: list[Scene], data_dir: Path, path: Path, threads: int, progress: bool
) -> dict[str, float]:
    """Render and encode every frame; returns build statistics."""
    from tqdm import tqdm

    w, h = params.width, params.height
    # Frames wrap these buffers without a copy; x264 copies its input during encode(), and a
    # second buffer keeps us from writing into one that libavcodec might still reference.
    bufs = [np.empty((h * 3 // 2, w), np.uint8) for _ in range(2)]
    views = [
        (b[:h], b[h : h + h // 4].reshape(h // 2, w // 2), b[h + h // 4 :].reshape(h // 2, w // 2))
        for b in bufs
    ]
    grain = Grain(params.width, params.height, params.noise, np.random.default_rng([params.seed, 1]))
    t0 = time.perf_counter()
    try:
        with av.open(str(path), "w") as out:
            st = out.add_stream(
                "libx264", rate=params.fps, options={"preset": params.preset, "crf": str(params.crf)}
            )
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.codec_context.gop_size = 2 * params.fps  # a 2 s keyframe interval, as IP cameras use
            st.codec_context.thread_count = threads
            prev: Shot | None = None
            for scene in tqdm(scenes, disable=not progress, unit="scene"):
                shot = Shot(scene, data_dir, w, h)
                for j in range(shot.n):
                    planes = shot.planes(j)
                    if prev is not None and j < scene.dissolve_frames:
                        planes = blend(prev.planes(prev.n + j), planes, (j + 1) / (scene.dissolve_frames + 1))
                    k = scene.start_frame + j
                    grain.apply(planes, views[k % 2], k / params.fps)
                    frame = av.VideoFrame.from_numpy_buffer(bufs[k % 2], format="yuv420p")
                    frame.pts = k
                    out.mux(st.encode(frame))
                prev = shot
            out.mux(st.encode(None))
    except av.FFmpegError as exc:
        raise SourceError(f"encoding {path} failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "frames_per_second": round(params.frames / seconds, 1),
        "bytes": path.stat().st_size,
    }


def _jitter(photo: Path, rng: np.random.Generator) -> Image.Image:
    """The needle photo with a random 80-95 % crop and colour jitter."""
    with Image.open(photo) as im:
        img = im.convert("RGB")
    fw, fh = rng.uniform(0.80, 0.95, size=2)
    cw, ch = round(img.width * fw), round(img.height * fh)
    x, y = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.8, 1.2)))
    return img


def _write_queries(
    root: Path,
    params: HaystackParams,
    scenes: list[Scene],
    needles: dict[str, Needle],
    data_dir: Path,
    vid: str,
) -> None:
    """Ground truth in QVHighlights jsonl: one text record per caption, one image record per needle."""
    text: list[dict[str, object]] = []
    image: list[dict[str, object]] = []
    (root / "queries").mkdir()
    for scene in sorted((s for s in scenes if s.needle is not None), key=lambda s: s.needle or 0):
        n, rec = scene.needle or 0, needles[scene.photo]
        common = {
            "duration": params.duration,
            "vid": vid,
            "relevant_windows": [[round(scene.start, 3), round(scene.end, 3)]],
            "needle": n,
            "image_id": rec.image_id,
        }
        for cap in rec.captions:
            text.append({"qid": len(text), "query": cap, "kind": "text", **common})
        rel = f"queries/needle_{n:03d}.jpg"
        _jitter(data_dir / scene.photo, np.random.default_rng([params.seed, 2, n])).save(
            root / rel, quality=90
        )
        image.append({"qid": len(image), "query": rel, "image": rel, "kind": "image", **common})
    for name, recs in (("gt_text.jsonl", text), ("gt_image.jsonl", image)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in recs))


def _files(root: Path, cached: bool) -> HaystackSet:
    return HaystackSet(
        root,
        root / "video.mp4",
        root / "gt_text.jsonl",
        root / "gt_image.jsonl",
        root / "manifest.json",
        cached,
    )


def build(
    params: HaystackParams,
    data_dir: Path = DEFAULT_DATA,
    cache_dir: Path = DEFAULT_CACHE,
    *,
    threads: int | None = None,
    progress: bool = False,
) -> HaystackSet:
    """Build (or fetch from the cache) the haystack video and its ground truth.

    Image query paths in ``gt_image.jsonl`` are relative to the set's folder.
    A needle's relevant window is its whole scene, dissolve included.
    """
    data_dir = data_dir.resolve()
    distract, needles = load_data(data_dir)
    scenes = plan_scenes(params, distract, needles)
    key = cache_key(params, data_dir)
    root = cache_dir / f"haystack-{key}"
    if (root / "manifest.json").is_file():
        return _files(root, cached=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".haystack-{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        vid = f"haystack-{key}"
        stats = _encode(params, scenes, data_dir, tmp / "video.mp4", threads or os.cpu_count() or 1, progress)
        _write_queries(tmp, params, scenes, {n.image: n for n in needles}, data_dir, vid)
        manifest = {
            "builder_version": BUILDER_VERSION,
            "key": key,
            "vid": vid,
            "params": params.model_dump(),
            "data_dir": str(data_dir),
            "width": params.width,
            "height": params.height,
            "fps": params.fps,
            "frames": params.frames,
            "duration": params.duration,
            "gop": 2 * params.fps,
            "codec": "libx264",
            "av_version": av.__version__,
            "build": stats,
            "scenes": [asdict(s) for s in scenes],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if root.exists() and not (root / "manifest.json").is_file():
            shutil.rmtree(root)  # an entry without a manifest is debris, never a finished build
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "manifest.json").is_file():
                raise  # not a concurrent builder that finished first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _files(root, cached=False)


def make_params(**fields: object) -> HaystackParams:
    """Validate parameters, translating pydantic's error to ConfigError."""
    try:
        return HaystackParams.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from exc


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"``, ``"1h"`` or ``"1h30m"``."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or m is None:
        raise ConfigError(f"cannot read duration {text!r}; use e.g. 90s, 10m, 1h, 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return hours * 3600 + minutes * 60 + seconds


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _cmd_build(args: argparse.Namespace) -> int:
    params = make_params(
        duration=args.duration,
        fps=args.fps,
        height=args.height,
        needles=args.needles,
        seed=args.seed,
        preset=args.preset,
        crf=args.crf,
    )
    hs = build(params, Path(args.data), Path(args.cache), threads=args.threads, progress=True)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(hs).items()}, indent=1))
    return 0


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``haystack build`` to a ``bench`` subparsers action.

    Returns the ``haystack`` subparsers so a runner can add ``haystack run``.
    Each leaf sets ``func(args) -> int``.
    """
    hay = subparsers.add_parser("haystack", help="long seeded haystack videos with needle queries")
    sub = hay.add_subparsers(dest="haystack_command", required=True)
    b = sub.add_parser("build", help="build (or reuse from the cache) one haystack video")
    b.add_argument("--duration", type=_duration_arg, default=3600.0, help="e.g. 10m, 1h, 24h")
    b.add_argument("--fps", type=int, default=2, choices=[2, 3, 4, 5, 25])
    b.add_argument("--height", type=int, default=480, choices=[480, 720])
    b.add_argument("--needles", type=int, default=20)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--preset", default="ultrafast", choices=["ultrafast", "veryfast"])
    b.add_argument("--crf", type=int, default=30)
    b.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    b.add_argument("--data", default=str(DEFAULT_DATA), help="data folder laid out like ../shared/data")
    b.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder (default bench/cache)")
    b.set_defaults(func=_cmd_build)
    return sub
