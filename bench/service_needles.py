"""The needle streams of ``bench.service_load``: their clip, the watch on them, each needle's latency.

Each needle stream replays a 720p25 clip in real time, looped: a background
photo, then the needle photo for ``NEEDLE_LEN`` seconds from ``NEEDLE_AT``,
every ``NEEDLE_EVERY`` seconds (:func:`make_needle_video`). One websocket watch
(:func:`watch_needles`) covers them all, at a threshold midway between the
service encoder's scores of a background super-image and one with a single
needle tile (:func:`needle_threshold`). :func:`latencies` pairs the first
moment of each needle with the wall time the needle was due.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path

import numpy as np

from agent.service.client import watch
from agent.service.pipeline import Service
from agent.service.protocol import MomentEvent, WatchingEvent

NEEDLE_EVERY, NEEDLE_AT, NEEDLE_LEN = 12.0, 6.0, 3.0
"""Seconds between needles of one stream, the first needle's stream second, and its length."""


def make_needle_video(path: Path) -> Path:
    """The needle stream's 720p25 clip at ``path``: background, the needle from NEEDLE_AT for NEEDLE_LEN s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.videos import Scene, make_video, photos

    bg, needle = photos(1, 1)[0], photos(1)[0]
    make_video(
        path,
        [
            Scene(NEEDLE_AT, bg, True),
            Scene(NEEDLE_LEN, needle, True),
            Scene(NEEDLE_EVERY - NEEDLE_AT - NEEDLE_LEN, bg, True),
        ],
        fps=25,
        size=(1280, 720),
    )
    return path


def needle_threshold(svc: Service, needle_photo: Path) -> dict[str, float]:
    """A watch threshold between the needle stream's background and a super-image with one needle tile.

    Random weights squash every cosine towards 1 (MobileCLIP2-S0 here: background 0.99977,
    one needle tile in four 0.99986, the needle alone 0.9999994; batch noise 1e-7), so no fixed
    threshold fits every model: the bench scores both super-images with the service's own
    encoder and watches at the midpoint. Identity of one photo, not relevance.
    """
    from PIL import Image

    from agent.core.superimage import tile
    from tests.videos import photos

    enc = svc.idx.prescreen

    def frame(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((398, 224)))

    bg, needle = frame(photos(1, 1)[0]), frame(needle_photo)
    query = enc.encode_images([needle])[0]
    vecs = enc.encode_images(
        [tile([bg] * 4, 2, enc.image_size), tile([bg, bg, bg, needle], 2, enc.image_size)]
    )
    background, one_tile = (float(v @ query) for v in vecs)
    return {"background": background, "one_needle_tile": one_tile, "threshold": (background + one_tile) / 2}


async def watch_needles(
    url: str,
    needle_photo: Path,
    threshold: float,
    streams: list[str],
    arrivals: list[tuple[str, float, float]],
    ready: asyncio.Event,
) -> None:
    """Watch ``streams`` for the needle photo; each moment's (stream, arrival wall, start) to ``arrivals``.

    ``ready`` is set once the service confirms the watch.
    """
    events = watch(
        url, text=None, image_path=needle_photo, streams=streams, threshold=threshold, backward=False
    )
    async for event in events:
        if isinstance(event, WatchingEvent):
            ready.set()
        if isinstance(event, MomentEvent):
            arrivals.append((event.moment.stream, time.time(), event.moment.start))


def latencies(
    arrivals: list[tuple[str, float, float]],
    clocks: dict[str, tuple[float, float]],
    window: tuple[float, float],
) -> tuple[list[tuple[str, float, float]], int]:
    """(stream, due, arrival) of each first ``moment`` of a needle due inside ``window``; and misses.

    ``arrivals``: (stream, wall time at the client, the moment's start in stream seconds).
    The needle is the one nearest the moment's start (needle k sits at stream second
    ``NEEDLE_AT + k * NEEDLE_EVERY``), not the last one due before the arrival: a moment
    later than ``NEEDLE_EVERY`` would otherwise be charged to a later needle and its
    latency read modulo 12 s. ``clocks``: each needle stream's (first frame's wall, its
    stream time): the pacing clock puts stream second ``t`` at ``wall - t0 + t``. A needle
    with no moment is a miss (never matched, or only after the grace period).
    """
    got: dict[tuple[str, int], float] = {}
    for stream, arrival, start in arrivals:
        k = round((start - NEEDLE_AT) / NEEDLE_EVERY)
        got.setdefault((stream, k), arrival)
    out, missed = [], 0
    for stream, (wall, t0) in clocks.items():
        zero = wall - t0 + NEEDLE_AT
        for k in range(
            max(0, math.ceil((window[0] - zero) / NEEDLE_EVERY)), int((window[1] - zero) // NEEDLE_EVERY) + 1
        ):
            if (stream, k) in got:
                out.append((stream, zero + k * NEEDLE_EVERY, got[(stream, k)]))
            else:
                missed += 1
    return sorted(out, key=lambda r: r[1]), missed
