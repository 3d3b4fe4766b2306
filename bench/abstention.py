"""``vmr bench abstention``: does the engine say "no confident match" when there is none?

On one haystack (cached build, :mod:`bench.haystack`):

- **positives**: the needle image queries (a jittered crop of each needle photo, shown once in
  the video); a query is right at R1@0.5 when its top-1 moment overlaps the needle's scene by
  temporal IoU >= 0.5.
- **negatives**: COCO photos of the same data folder that are *not* needles of this haystack
  (they never appear in the video), jittered the same way as the needle queries.

Every query is answered by :meth:`agent.index.video_index.VideoIndex.query` (prescreen,
refinement, :func:`agent.core.fuse.fuse`) with the engine's default threshold
(``QueryConfig.min_confidence``). Reported: the share of negatives that abstain, needle R1@0.5
without abstention (top-1 taken whatever its confidence) and with it (an abstained answer
counts as a miss), and the top-1 confidences. The threshold is not tuned here: it is the
calibration's 5 % family-wise false-alarm level (see :mod:`agent.core.fuse`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.channels.retrieval import Query
from agent.config import EncoderConfig, IndexConfig, QueryConfig, Settings
from agent.core import fuse
from agent.core.qvh import load_jsonl, temporal_iou
from agent.errors import ConfigError, IndexStoreError
from agent.index.video_index import VideoIndex
from agent.store.atomic import write_json
from agent.types import QueryResult, RGBImage
from bench import haystack
from bench.args import command_line, encoder_from_args
from bench.haystack_plan import load_data
from bench.run_haystack import DEFAULT_RESULTS, git_commit, machine_info
from streams.file import decode_frames

STREAM = "hay"


def negative_photos(hs: haystack.HaystackSet, data: Path, limit: int) -> list[str]:
    """COCO photos (relative to ``data``) that no scene of the haystack shows."""
    manifest = json.loads(hs.manifest.read_text())
    shown = {s["photo"] for s in manifest["scenes"]}
    _, needles = load_data(data)
    return [n.image for n in needles if n.image not in shown][:limit]


def _rgb(img: Any) -> RGBImage:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _load(path: Path) -> RGBImage:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _rgb(im)
    except OSError as exc:
        raise IndexStoreError(f"cannot read query image {path}: {exc}") from exc


def _top1(result: QueryResult) -> dict[str, Any] | None:
    if not result.moments:
        return None
    m = result.moments[0]
    return {
        "start": round(m.start, 2),
        "end": round(m.end, 2),
        "score": round(m.score, 4),
        "confidence": None if m.confidence is None else round(m.confidence, 4),
        "answered_by": m.answered_by,
    }


def _hit(top: dict[str, Any] | None, windows: list[list[float]]) -> bool:
    if top is None:
        return False
    iou = temporal_iou(np.array([[top["start"], top["end"]]]), np.array(windows, dtype=np.float64))
    return bool(iou.max() >= 0.5)


def run(
    params: haystack.HaystackParams,
    encoder: EncoderConfig,
    *,
    data: Path,
    cache: Path,
    negatives: int,
    command: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Build (cached), ingest, answer positives and negatives; the report dict."""
    t0 = time.perf_counter()
    hs = haystack.build(params, data, cache)
    fps = float(params.fps) if params.fps <= 5 else 2.0
    settings = Settings(prescreen=encoder, index=IndexConfig(fps=fps), query=QueryConfig())
    positives = load_jsonl(hs.gt_image)
    negs = negative_photos(hs, data, negatives)
    if not negs:
        raise ConfigError(f"{data}: every COCO photo is a needle of this haystack; no negatives left")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vmr-abstain-", dir=cache) as tmp:
        idx = VideoIndex.create(Path(tmp), settings)
        try:
            t_ingest = time.perf_counter()
            idx.ingest(decode_frames(hs.video, stream=STREAM, fps=fps, short_side=idx.prescreen.image_size))
            ingest_s = time.perf_counter() - t_ingest
            for rec in positives:
                res = idx.query(Query(image=_load(hs.root / rec["image"]), streams=[STREAM]))[STREAM]
                top = _top1(res)
                rows.append(
                    {
                        "kind": "needle",
                        "query": rec["image"],
                        "abstained": res.abstained,
                        "top1": top,
                        "hit": _hit(top, rec["relevant_windows"]),
                    }
                )
            for k, photo in enumerate(negs):
                img = _rgb(haystack._jitter(data / photo, np.random.default_rng([seed, 3, k])))
                res = idx.query(Query(image=img, streams=[STREAM]))[STREAM]
                rows.append(
                    {"kind": "negative", "query": photo, "abstained": res.abstained, "top1": _top1(res)}
                )
            info = idx.info()["streams"][STREAM]
            meaningless = idx.prescreen.meaningless
            note = idx.prescreen.note
        finally:
            idx.close()
    return {
        "name": "abstention",
        "command": command,
        "machine": machine_info(),
        "git": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "haystack": {"params": params.model_dump(), "root": str(hs.root), "cached": hs.cached},
        "encoder": {"name": idx.prescreen.name, "meaningless": meaningless},
        "note": _note(idx.prescreen.name, note) if meaningless else "",
        "threshold": {
            "min_confidence": settings.query.min_confidence,
            "how_chosen": (
                "not tuned on this benchmark: confidence = Phi(z) ** trials, z a robust z-score "
                "(median, 1.4826 * MAD) against the stream's own background scores for the query "
                "(anchor scores; refine scores of stored frames sampled evenly), trials = how many "
                "candidates the proposal was the best of; 0.95 = a 5 % family-wise false-alarm "
                "rate against that background (agent.core.fuse)"
            ),
            "fuse_doc": fuse.__doc__,
        },
        "ingest": {"seconds": round(ingest_s, 1), **{k: info[k] for k in ("frames", "tokens", "anchors")}},
        # The memory rules the figures were made with (defaults change: issue #15 changed the scorer).
        "memory": {k: getattr(settings.index, k) for k in ("budget", "theta", "rank", "merge", "scorer")},
        "summary": summarise(rows),
        "queries": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def _note(name: str, note: str | None) -> str:
    """What the encoder's figures mean: image queries only, never text."""
    if name == "tiny-random":
        return (
            "tiny-random: a seeded ViT with random weights. Image-to-image similarity still separates "
            "scenes, so image-query figures are informative; text queries are not used here."
        )
    return f"{note}. Only image queries are used here." if note else ""


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Abstention rates, R1@0.5 with and without abstention, top-1 confidence quantiles."""
    pos = [r for r in rows if r["kind"] == "needle"]
    neg = [r for r in rows if r["kind"] == "negative"]

    def rate(xs: list[bool]) -> float:
        return round(100.0 * sum(xs) / len(xs), 1) if xs else 0.0

    def conf(rs: list[dict[str, Any]]) -> dict[str, float]:
        c = [r["top1"]["confidence"] for r in rs if r["top1"] and r["top1"]["confidence"] is not None]
        if not c:
            return {}
        q = np.quantile(c, [0.1, 0.5, 0.9])
        return {"p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4)}

    return {
        "negatives": len(neg),
        "negatives_abstained_pct": rate([r["abstained"] for r in neg]),
        "needles": len(pos),
        "needles_abstained_pct": rate([r["abstained"] for r in pos]),
        "needle_R1@0.5_without_abstention": rate([r["hit"] for r in pos]),
        "needle_R1@0.5_with_abstention": rate([r["hit"] and not r["abstained"] for r in pos]),
        "needle_hits_abstained": sum(1 for r in pos if r["hit"] and r["abstained"]),
        "top1_confidence_needles": conf(pos),
        "top1_confidence_negatives": conf(neg),
    }


def _cmd(args: argparse.Namespace) -> int:
    params = haystack.make_params(
        duration=args.duration, fps=args.fps, height=args.height, needles=args.needles, seed=args.seed
    )
    enc = encoder_from_args(args)  # every encoder flag, --random-weights and --backend included
    report = run(
        params,
        enc,
        data=Path(args.data),
        cache=Path(args.cache),
        negatives=args.negatives,
        command=command_line(args),
    )
    write_json(Path(args.out), report)
    print(json.dumps({"summary": report["summary"], "file": args.out}, indent=1))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``abstention`` to the ``bench`` subparsers."""
    from agent.cli.options import add_model_options

    a = sub.add_parser(
        "abstention", help="negatives abstain, needles keep R1 (bench/results/abstention.json)"
    )
    a.add_argument("--duration", type=haystack._duration_arg, default=3600.0, help="e.g. 10m, 1h")
    a.add_argument("--fps", type=int, default=2, choices=[2, 3, 4, 5, 25])
    a.add_argument("--height", type=int, default=480, choices=[480, 720])
    a.add_argument("--needles", type=int, default=20)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--negatives", type=int, default=1000, help="non-needle COCO photos queried (at most)")
    a.add_argument("--data", default=str(haystack.DEFAULT_DATA), help="photo folder like ../shared/data")
    a.add_argument("--cache", default=str(haystack.DEFAULT_CACHE), help="build cache")
    a.add_argument("--out", default=str(DEFAULT_RESULTS / "abstention.json"))
    add_model_options(a)
    a.set_defaults(func=_cmd)
