"""The seeded scene plan of a haystack video: which photo is on screen when, and how it moves.

Distractor scenes come from ``imagenet_sample/*.jpg``, needle scenes from
``coco/`` (:func:`load_data`; each needle shown exactly once). Scenes last
:data:`MIN_SCENE` to :data:`MAX_SCENE` seconds: a fixed camera holds long
(30 s and more), moving shots (slow pans, slow zooms) are mostly short
(log-uniform lengths), needles last 5-60 s. Most scene changes are short
dissolves, 30 % hard cuts. :func:`plan_scenes` is a pure function
of the parameters and the data listing (``bench.haystack`` renders it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import ConfigError
from bench.footage import Motion, Scene

if TYPE_CHECKING:
    from bench.haystack import HaystackParams

MIN_SCENE, MAX_SCENE = 5.0, 120.0
"""Shortest and longest scene in seconds (the last one may exceed the longest by up to the shortest)."""


@dataclass(frozen=True, slots=True)
class Needle:
    """A needle photo of the data folder (``coco/...``), its COCO id and its human captions."""

    image: str
    image_id: int
    captions: list[str]


def load_data(data_dir: Path) -> tuple[list[str], list[Needle]]:
    """Distractor photo paths and needle records, in a stable order."""
    distract = sorted(f"imagenet_sample/{p.name}" for p in (data_dir / "imagenet_sample").glob("*.jpg"))
    captions = data_dir / "coco" / "captions.jsonl"
    if len(distract) < 2 or not captions.is_file():
        raise ConfigError(f"{data_dir} lacks imagenet_sample/*.jpg or coco/captions.jsonl")
    needles = []
    try:
        for line in captions.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                needles.append(Needle(f"coco/{rec['image']}", int(rec["image_id"]), list(rec["captions"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{captions} is not a valid captions file: {exc}") from exc
    return distract, needles


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _distractor_length(rng: np.random.Generator) -> tuple[float, Motion]:
    # A fixed camera holds long; moving shots are mostly short (log-uniform).
    motion: Motion = rng.choice(np.array(["static", "pan", "zoom"]), p=[0.35, 0.35, 0.3]).item()
    if motion == "static":
        return float(rng.uniform(30.0, MAX_SCENE)), motion
    return _loguniform(rng, MIN_SCENE, MAX_SCENE), motion


def plan_scenes(params: HaystackParams, distract: list[str], needles: list[Needle]) -> list[Scene]:
    """Seeded scene list covering exactly ``params.duration`` seconds.

    Lengths are counted in frames so that no scene rounds below 5 s.
    """
    if params.needles > len(needles):
        raise ConfigError(f"{params.needles} needles asked, the data has {len(needles)}")
    rng = np.random.default_rng(params.seed)
    fps, least = params.fps, math.ceil(MIN_SCENE * params.fps)
    picked = rng.choice(len(needles), size=params.needles, replace=False)
    needle_len = [max(least, round(_loguniform(rng, MIN_SCENE, 60.0) * fps)) for _ in picked]
    room = params.frames - sum(needle_len)
    if room < least:
        raise ConfigError(
            f"{params.needles} needles need {sum(needle_len) / fps:.0f} s; duration is too short"
        )
    shots: list[tuple[int, Motion]] = []
    while room > 0:
        seconds, motion = _distractor_length(rng)
        length = max(least, round(seconds * fps))
        if room - length < least:
            length = room  # the last shot absorbs the remainder (at most ~MIN_SCENE over MAX_SCENE)
        shots.append((length, motion))
        room -= length
    # Needles go before distractor slots, never last, so the video ends on a distractor.
    slots = np.sort(rng.integers(0, len(shots), size=params.needles))
    order = rng.permutation(len(distract))
    seq: list[tuple[int, Motion, str, int | None]] = []
    for i, (length, motion) in enumerate(shots):
        for n in np.flatnonzero(slots == i):
            mot: Motion = rng.choice(np.array(["static", "pan", "zoom"])).item()
            seq.append((needle_len[n], mot, needles[int(picked[n])].image, int(n)))
        seq.append((length, motion, distract[int(order[i % len(order)])], None))
    scenes: list[Scene] = []
    f0 = 0
    for length, motion, photo, needle in seq:
        cut = not scenes or rng.random() < 0.3
        dissolve = 0 if cut else min(max(1, round(rng.uniform(0.5, 1.5) * fps)), length // 2)
        seed = int(rng.integers(2**31))
        scenes.append(
            Scene(f0 / fps, (f0 + length) / fps, f0, f0 + length, photo, motion, dissolve, needle, seed)
        )
        f0 += length
    return scenes
