"""What a strategy comparison scores: every grid's dense items and every grid's query vectors.

**Dense items per grid.** Every sampled frame of the haystack video is encoded once per
super-image grid: grid 1 encodes frames, grid N tiles N x N consecutive frames
(:class:`agent.core.superimage.Tiler`, the very tiler of the ingest path) into one encoder input.
Each item is ``(start, end, unit embedding)``. Items are cached as ``.npz`` next to the build,
keyed by model, grid and fps, so a rerun only re-scores.

**Queries per grid.** An image query meets grid N's items as the super-image a still shot of
its photo makes (:func:`agent.core.superimage.still_shot`), what the engine's prescreen does by
default (``QueryConfig.image_query``); ``photo`` encodes the photo alone at every grid (the
engine's old rule, kept for the comparison). Text queries are encoded once for every grid.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from agent.core.qvh import load_jsonl
from agent.core.superimage import SuperImage, Tiler, still_shot
from agent.errors import ConfigError, IndexStoreError
from agent.models.encoder import Encoder
from agent.store.atomic import write_npz
from bench.strategies import Items, check
from streams.file import decode_frames

F32 = npt.NDArray[np.float32]
CACHE_VERSION = 1


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "model"


def item_cache_path(folder: Path, model: str, grid: int, fps: float) -> Path:
    """Where the dense items of one (model, grid, fps) are cached."""
    return folder / f"items-v{CACHE_VERSION}-{slug(model)}-g{grid}-fps{fps:g}.npz"


def _load_items(path: Path) -> Items | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return check(Items(z["starts"], z["ends"], z["embs"]))
    except (OSError, KeyError, ValueError, ConfigError):
        return None  # a damaged cache entry is rebuilt, never trusted


class _GridEncoder:
    """Collects one grid's super-images and encodes them in encoder-sized batches."""

    def __init__(self, grid: int, encoder: Encoder, fps: float, batch: int) -> None:
        self.tiler = Tiler("bench", grid=grid, size=encoder.image_size, period=1.0 / fps)
        self.encoder = encoder
        self.batch = batch
        self.pending: list[SuperImage] = []
        self.rows: list[tuple[float, float, F32]] = []

    def push(self, t: float, image: npt.NDArray[np.uint8]) -> None:
        si = self.tiler.push(t, image)
        if si is not None:
            self.pending.append(si)
        if len(self.pending) >= self.batch:
            self.encode()

    def encode(self) -> None:
        if not self.pending:
            return
        vecs = self.encoder.encode_images([si.image for si in self.pending])
        self.rows.extend((si.start, si.end, v) for si, v in zip(self.pending, vecs, strict=True))
        self.pending = []

    def finish(self) -> Items:
        si = self.tiler.flush()
        if si is not None:
            self.pending.append(si)
        self.encode()
        return Items.of(self.rows)


def dense_items(
    video: Path,
    *,
    fps: float,
    grids: Sequence[int],
    encoder: Encoder,
    cache_dir: Path,
    progress: bool = False,
) -> tuple[dict[int, Items], dict[str, Any]]:
    """Items of every grid: from the cache, else from one shared decode pass.

    Returns the items by grid and statistics (which grids were cached, seconds, encoder passes).
    """
    out: dict[int, Items] = {}
    missing: list[int] = []
    for g in sorted(set(grids)):
        cached = _load_items(item_cache_path(cache_dir, encoder.name, g, fps))
        if cached is None:
            missing.append(g)
        else:
            out[g] = cached
    stats: dict[str, Any] = {"cached_grids": sorted(out), "encoded_grids": missing, "seconds": 0.0}
    if not missing:
        return out, stats
    t0 = time.perf_counter()
    workers = {g: _GridEncoder(g, encoder, fps, max(1, getattr(encoder, "batch_size", 16))) for g in missing}
    frames = 0
    for frame in decode_frames(video, stream="bench", fps=fps, short_side=encoder.image_size):
        frames += 1
        for w in workers.values():
            w.push(frame.t, frame.image)
        if progress and frames % 2000 == 0:
            print(f"  encoded items up to t={frame.t:.0f}s", flush=True)
    for g, w in workers.items():
        items = w.finish()
        write_npz(
            item_cache_path(cache_dir, encoder.name, g, fps),
            {"starts": items.starts, "ends": items.ends, "embs": items.embs},
        )
        out[g] = items
    stats.update(seconds=round(time.perf_counter() - t0, 2), frames=frames)
    return out, stats


QuerySet = tuple[list[dict[str, Any]], F32]
"""GT records of one query file and their (Q, dim) query vectors."""
IMAGE_QUERY_MODES = ("still-shot", "photo")
"""How an image query is encoded for a grid: as the super-image a still shot of the photo makes
(:func:`agent.core.superimage.still_shot`, the engine's default) or as the photo alone."""


def load_queries(gt_path: Path, encoder: Encoder, grid: int = 1) -> QuerySet:
    """GT records of a haystack query file and their query vectors (image or text).

    Image queries are encoded as the still shot of their photo at ``grid`` (N x N copies, what
    the engine scores anchors with); grid 1 is the photo alone. Text ignores ``grid``.
    """
    rows = load_jsonl(gt_path)
    if not rows:
        raise IndexStoreError(f"{gt_path}: no queries")
    if rows[0].get("kind") == "image":
        images = []
        for r in rows:
            try:
                with Image.open(gt_path.parent / r["image"]) as im:
                    images.append(still_shot(np.asarray(im.convert("RGB")), grid, encoder.image_size))
            except OSError as exc:
                raise IndexStoreError(f"cannot read query image {r['image']}: {exc}") from exc
        vecs = encoder.encode_images(images)
    else:
        vecs = encoder.encode_text([str(r["query"]) for r in rows])
    return rows, np.asarray(vecs, np.float32)


def queries_by_grid(
    files: Mapping[str, Path], encoder: Encoder, grids: Sequence[int], image_query: str = "still-shot"
) -> dict[int, dict[str, QuerySet]]:
    """Every grid's query sets by kind (``files``: kind -> GT file): image queries at each grid
    under ``image_query`` (:data:`IMAGE_QUERY_MODES`), text encoded once and shared."""
    if image_query not in IMAGE_QUERY_MODES:
        raise ConfigError(f"image_query must be one of {IMAGE_QUERY_MODES}, not {image_query!r}")
    once: dict[tuple[str, int], QuerySet] = {}
    out: dict[int, dict[str, QuerySet]] = {}
    for grid in grids:
        sets: dict[str, QuerySet] = {}
        for kind, path in files.items():
            at = grid if kind == "image" and image_query == "still-shot" else 1
            if (kind, at) not in once:
                once[kind, at] = load_queries(path, encoder, at)
            sets[kind] = once[kind, at]
        out[grid] = sets
    return out
