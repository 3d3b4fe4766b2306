"""Frame-level scores without re-encoding? Per-item low-rank coefficients vs re-encoding stored frames.

Run it as ``python -m bench.lowrank_refine --model MobileCLIP2-S0 --random-weights --backend openvino``
(``--backend torch --device cuda`` on a GPU machine). Writes one JSON under ``bench/results/``.

The question (issue 11, item 3): every anchor keeps a rank-k SVD basis of the embeddings merged
into it. If the memory also kept each merged item's k coefficients in that basis, a query could
score every item without re-encoding anything. What such a score can resolve is fixed by what
was encoded at ingest: one **super-image** (grid N: N x N frames tiled, each tile 1/N of the
encoder's input side) per N^2 sampled frames; frames are never encoded one by one at ingest.

Three ways of scoring footage around the prescreen's best regions, per image query:

* ``lowrank``: each super-image's embedding reconstructed from its k coefficients in its
  anchor's basis, scored by the query (what stored coefficients would give);
* ``superimage``: the super-image embeddings themselves (an upper bound of any coefficient
  scheme: what k -> d would give, at d floats per item);
* ``reencode``: the refine path of today: stored frames re-encoded one by one at full input size.

Reference: the frame-level curve from re-encoding **every** stored frame (the dense truth).
Fidelity of a method = share of queries whose best time lies within ``--tolerance`` seconds of
the dense truth's best time, and Spearman correlation of its scores with the truth's scores
(at the method's resolution); cost = wall ms per query. Footage: the videos of ``--data``/videos
(real camera and film footage), decoded at 2 fps; queries: stored frames (jittered).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.args import DATA, RESULTS, add_device_option, pin_device

DEFAULT_DATA = DATA


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.cli.options import add_model_options

    p = argparse.ArgumentParser(prog="python -m bench.lowrank_refine", description=__doc__.split("\n")[0])
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--videos", default="vtest.avi,bigbuckbunny.mp4,bikes.mp4", help="files under DATA/videos")
    p.add_argument("--queries", type=int, default=12, help="image queries per video")
    p.add_argument("--tolerance", type=float, default=2.0, help="seconds: a best time this close is a hit")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.argv = ["python", "-m", "bench.lowrank_refine", *(sys.argv[1:] if argv is None else argv)]
    return args


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _ingest(idx: Any, video: Path, stream: str) -> list[tuple[float, float, np.ndarray]]:
    """Ingest ``video``; returns every committed super-image as (start, end, embedding)."""
    from agent.core.superimage import SuperImage
    from streams.file import decode_frames

    items: list[tuple[float, float, np.ndarray]] = []
    encode = idx._workers["image"]

    def capture(batch: list[Any]) -> list[np.ndarray]:
        vecs = encode(batch)
        for item, vec in zip(batch, vecs, strict=True):
            if isinstance(item.ref, SuperImage):
                items.append((item.ref.start, item.ref.end, np.asarray(vec, np.float32)))
        return vecs

    idx._workers["image"] = capture
    try:
        idx.ingest(decode_frames(video, stream=stream, fps=2.0, short_side=idx.prescreen.image_size))
    finally:
        idx._workers["image"] = encode
    return sorted(items, key=lambda it: it[0])


def _coefficients(memory: Any, items: list[tuple[float, float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per item: k coefficients in its anchor's basis, and the reconstruction they give (n, d)."""
    anchors = list(memory.anchors)
    starts = np.array([a.start for a in anchors])
    coefs, recon = [], []
    for s, e, v in items:
        i = int(np.clip(np.searchsorted(starts, (s + e) / 2, side="right") - 1, 0, len(anchors) - 1))
        basis = anchors[i].svd.basis  # (r, d) orthonormal rows
        c = basis @ v
        coefs.append(c)
        r = c @ basis
        recon.append(r / max(float(np.linalg.norm(r)), 1e-12))
    return np.array(coefs, dtype=object), np.stack(recon)


def run_video(idx: Any, video: Path, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    from agent.channels.base import ChannelQuery
    from agent.channels.retrieval import plan_visual
    from agent.config import QueryConfig

    stream = video.stem
    t0 = time.perf_counter()
    items = _ingest(idx, video, stream)
    ingest_s = time.perf_counter() - t0
    st = idx.streams[stream]
    store = st.store
    times = store.times()
    # Dense truth: every stored frame re-encoded once (timed: the per-frame re-encode cost).
    t0 = time.perf_counter()
    frames = np.concatenate(
        [
            idx.refine.encode_images([store.get(float(t))[1] for t in times[i : i + 16]])
            for i in range(0, len(times), 16)
        ]
    )
    per_frame_ms = (time.perf_counter() - t0) * 1000 / len(times)
    _, recon = _coefficients(st.memory, items)
    sup = np.stack([v for _, _, v in items])
    item_mid = np.array([(s + e) / 2 for s, e, _ in items])
    rows: dict[str, dict[str, list[float]]] = {
        m: {"hit": [], "rho": [], "ms": []} for m in ("lowrank", "superimage", "reencode")
    }
    for _ in range(args.queries):
        j = int(rng.integers(len(times)))
        img = store.get(float(times[j]))[1].astype(np.int16) + rng.integers(-12, 13, (1, 1, 3))
        q = idx.refine.encode_images([np.clip(img, 0, 255).astype(np.uint8)])[0]
        truth = frames @ q
        best_t = float(times[int(np.argmax(truth))])
        # The prescreen's regions bound every method alike (what refinement would look at).
        cq = ChannelQuery({"prescreen": q, "refine": q}, top_k=5, cfg=QueryConfig())
        plan = plan_visual(st.visual, cq, cq.cfg)
        spans = [r.span for r in plan.regions]
        inside_items = np.array([any(a <= m < b for a, b in spans) for m in item_mid])
        for name, mat in (("lowrank", recon), ("superimage", sup)):
            t0 = time.perf_counter()
            scores = mat[inside_items] @ q
            ms = (time.perf_counter() - t0) * 1000
            mids = item_mid[inside_items]
            ok = len(scores) > 0 and abs(float(mids[int(np.argmax(scores))]) - best_t) <= args.tolerance + 1.0
            truth_items = np.array(
                [
                    truth[(times >= s) & (times < e)].mean() if ((times >= s) & (times < e)).any() else np.nan
                    for s, e, _ in items
                ]
            )[inside_items]
            keep = ~np.isnan(truth_items)
            rows[name]["hit"].append(float(ok))
            rows[name]["rho"].append(_spearman(scores[keep], truth_items[keep]))
            rows[name]["ms"].append(ms)
        # Re-encode: the planned frames (cache cold), as refine_plans does.
        planned = np.concatenate([r.times for r in plan.regions]) if plan.regions else np.zeros(0)
        t0 = time.perf_counter()
        vecs = (
            np.concatenate(
                [
                    idx.refine.encode_images([store.get(float(t))[1] for t in planned[i : i + 8]])
                    for i in range(0, len(planned), 8)
                ]
            )
            if len(planned)
            else np.zeros((0, q.shape[0]), np.float32)
        )
        scores = vecs @ q
        ms = (time.perf_counter() - t0) * 1000
        ok = len(scores) > 0 and abs(float(planned[int(np.argmax(scores))]) - best_t) <= args.tolerance
        idx_in = np.searchsorted(times, planned)
        rows["reencode"]["hit"].append(float(ok))
        rows["reencode"]["rho"].append(_spearman(scores, truth[np.clip(idx_in, 0, len(times) - 1)]))
        rows["reencode"]["ms"].append(ms)
    out: dict[str, Any] = {
        "video": video.name,
        "seconds": round(float(times[-1] - times[0]), 1) if len(times) else 0.0,
        "stored_frames": len(times),
        "superimages": len(items),
        "anchors": len(st.memory.anchors),
        "ingest_s": round(ingest_s, 1),
        "reencode_ms_per_frame": round(per_frame_ms, 1),
    }
    for name, r in rows.items():
        out[name] = {
            "hit_rate": round(float(np.mean(r["hit"])), 3),
            "spearman": round(float(np.nanmean(r["rho"])), 3),
            "ms_median": round(float(np.median(r["ms"])), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_device(args)
    from agent.config import IndexConfig, Settings
    from agent.index.video_index import VideoIndex
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info

    report: dict[str, Any] = {
        "bench": "lowrank_refine",
        "command": " ".join(args.argv),
        "machine": machine_info(),
        "git": git_commit(),
    }
    rng = np.random.default_rng(args.seed)
    settings = Settings(prescreen=encoder_from_args(args), index=IndexConfig(fps=2.0, grid=2))
    with tempfile.TemporaryDirectory(prefix="vmr-lowrank-") as tmp:
        idx = VideoIndex.create(Path(tmp) / "index", settings)
        enc = idx.prescreen
        report["encoder"] = {
            "name": enc.name,
            "backend": enc.backend.name,
            "precision": getattr(enc.backend, "precision", None),
            "device": str(getattr(enc.backend, "device", "cpu")),
            "meaningless": enc.meaningless,
            "rank": settings.index.rank,
            "grid": settings.index.grid,
        }
        report["videos"] = []
        for name in args.videos.split(","):
            row = run_video(idx, args.data / "videos" / name, args, rng)
            report["videos"].append(row)
            print(json.dumps(row), file=sys.stderr)
        idx.close()
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary: dict[str, Any] = {}
    for method in ("lowrank", "superimage", "reencode"):
        vals = [v[method] for v in report["videos"]]
        hit = float(np.mean([v["hit_rate"] for v in vals]))
        ms = float(np.median([v["ms_median"] for v in vals]))
        summary[method] = {
            "hit_rate": round(hit, 3),
            "spearman": round(float(np.nanmean([v["spearman"] for v in vals])), 3),
            "ms": round(ms, 3),
        }
    report["summary"] = summary
    enc = report["encoder"]
    out = args.out or RESULTS / f"lowrank-refine-{enc['name'].split(':')[0]}-{enc['backend']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
