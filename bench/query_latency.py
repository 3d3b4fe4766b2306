"""Progressive query latency over long memories: first answer and refined answer at 1 h and 8 h.

Run it as ``python -m bench.query_latency --model MobileCLIP2-S0 --random-weights --backend openvino``
(``--backend torch --device cuda`` on a GPU machine, nothing else changed). Writes one JSON
under ``bench/results/`` with the exact command, the machine and its load average.

**How the long memory is built (fast, no decode).** Footage is synthetic and lives only as
what a stream keeps: scenes of log-uniform length (10 s to 5 min), each drawn as one photo of
``--data`` (``imagenet_sample``). Every 2 s (one grid-2 super-image at 2 fps) the memory gets
the scene's embedding plus noise, as a real ingest would commit it, and the frame store gets the
scene's photo (one stored frame per super-image, 224 px JPEG: the store a refine reads). The
scene embeddings are the encoder's own embeddings of the photos, so image queries (the
photos, mildly jittered) point to their scenes as they would on real footage. The memory is
built to the first hour mark, measured, extended to the next, measured again: the RSS growth
between marks is that of the memory, the store index and the cache, not of decoding.

**What is timed** per query (``--queries`` image queries per mark, cold refine cache at each
mark): *first* = encode the query + prescreen every anchor (``VideoIndex.start_query``);
*refined* = first + ``PendingQuery.refine(--budget)`` (re-encoding stored frames by expected gain
until the budget); *first, repeated query* = the same query asked again (its vector is kept: the
prescreen, planning and fusing of the first answer without the encoder pass). p50/p95 in milliseconds of wall time, and of process CPU time (all threads:
on a machine shared with other jobs, wall time stretches with the load, CPU time much less),
the query's encoding alone, frames re-encoded per query, RSS.
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
from PIL import Image

from bench.args import DATA, add_device_option, pin_device, write_device_report
from bench.memtrace import MarkDiffs

HOUR = 3600.0
MIB = 2**20
STEP = 2.0
"""Seconds per super-image (grid 2 at 2 fps): one memory item and one stored frame each."""

DEFAULT_DATA = DATA


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.channels.refine import DEFAULT_REFINE_BUDGET_S
    from agent.cli.options import add_model_options

    p = argparse.ArgumentParser(prog="python -m bench.query_latency", description=__doc__.split("\n")[0])
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--hours", default="1,8", help="hour marks, ascending, e.g. 1,8")
    p.add_argument("--queries", type=int, default=20, help="image queries per hour mark")
    p.add_argument("--budget", type=float, default=DEFAULT_REFINE_BUDGET_S, help="refine seconds per query")
    p.add_argument("--token-budget", type=int, default=4096, help="memory token budget B")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with imagenet_sample/*.jpg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--memprofile",
        action="store_true",
        help="trace allocations (tracemalloc: slower, inflates RSS) and diff them between marks by file:line",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="result JSON (default bench/results/query-latency-...)"
    )
    args = p.parse_args(argv)
    args.argv = ["python", "-m", "bench.query_latency", *(sys.argv[1:] if argv is None else argv)]
    return args


def rss() -> dict[str, float]:
    """VmRSS and VmHWM, and the anonymous part of the resident set (the heaps: what the marks grow), MiB."""
    from bench.speed import rss_mb

    out = rss_mb()
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Anonymous":
                out["anon_mb"] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return out


def trimmed_rss() -> dict[str, float]:
    """:func:`rss` after ``malloc_trim(0)``: what a service holds once its heap trimmer ran.

    The service calls :func:`agent.process_memory.trim_heap` every ``heap_trim_seconds`` (30 s by
    default): freed heap pages in the holes between live blocks go back to the system there. The
    untrimmed figures stay the bench's headline; this one says how much of a mark's RSS is free
    heap that the service would not keep.
    """
    from agent.process_memory import trim_heap

    trim_heap()
    return rss()


def heap_profile(idx: Any) -> dict[str, Any]:
    """Where a mark's memory lies: glibc's allocator, smaps_rollup, and the stream's own structures, MiB.

    Free in time (no tracing): every mark records it. ``components`` are the bytes the stream's
    structures hold (the memory's anchors and its packed scoring stacks, the frame store's record
    index, the refine cache, the cheap index), to set beside the allocator's in-use figure.
    """
    from bench.memtrace import mallinfo, smaps_rollup

    st = idx.streams["cam"]
    mem = st.memory
    packed = getattr(mem, "_packed", None)
    records = st.store._index
    return {
        "malloc": mallinfo(),
        "smaps_rollup": smaps_rollup(),
        "components_mb": {
            "memory_nbytes": round(mem.nbytes / MIB, 2),
            "memory_slot_stacks": round(getattr(mem, "slot_bytes", 0) / MIB, 2),
            "memory_packed_stacks": round(sum(a.nbytes for a in packed) / MIB, 2) if packed else 0.0,
            "frame_records_index": round(
                sum(getattr(records, c).nbytes for c in ("t", "wall", "chunk", "offset", "length")) / MIB, 2
            ),
            "refine_cache": round(idx.cache.nbytes / MIB, 2),
            "cheap_index": round(st.visual.cheap.nbytes / MIB, 2),
        },
    }


def _photos(data: Path, n: int, size: int) -> list[np.ndarray]:
    files = sorted((data / "imagenet_sample").glob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"no photos under {data / 'imagenet_sample'}: pass --data")
    out = []
    for f in files:
        with Image.open(f) as src:
            rgb = src.convert("RGB")
        rgb.thumbnail((size, size))
        out.append(np.asarray(rgb, np.uint8).copy())
    return out


class Footage:
    """Synthetic long footage written straight into one stream's memory and frame store."""

    def __init__(self, state: Any, scene_vecs: np.ndarray, photos: list[np.ndarray], seed: int) -> None:
        self.state = state
        self.vecs = scene_vecs
        self.photos = photos
        self.rng = np.random.default_rng(seed)
        self.t = 0.0
        self.scene = 0
        self.scene_end = 0.0
        self.scenes: list[tuple[float, float, int]] = []
        """(start, end, photo index) of every scene so far."""

    def extend_to(self, end: float) -> None:
        visual = self.state.visual
        mem, store, stats = visual.memory, visual.store, visual.stats
        dim = self.vecs.shape[1]
        while self.t < end:
            if self.t >= self.scene_end:
                self.scene = int(self.rng.integers(len(self.photos)))
                length = float(np.exp(self.rng.uniform(np.log(10.0), np.log(300.0))))
                self.scene_end = self.t + round(length / STEP) * STEP + STEP
                self.scenes.append((self.t, self.scene_end, self.scene))
            vec = self.vecs[self.scene] + self.rng.normal(0, 0.6 / np.sqrt(dim), dim)
            mem.add(self.t, self.t + STEP, vec / np.linalg.norm(vec))
            store.put(self.t, self.photos[self.scene])
            if stats.first_time is None:
                stats.first_time = self.t
            stats.last_time = self.t + STEP
            self.t += STEP


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


def measure(idx: Any, footage: Footage, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    from agent.channels.retrieval import Query

    idx.cache._items.clear()  # cold refine cache at every mark (calibration frames included)
    idx.cache.nbytes = 0
    first_ms: list[float] = []
    refined_ms: list[float] = []
    encode_ms: list[float] = []
    first_cpu: list[float] = []
    refined_cpu: list[float] = []
    repeat_ms: list[float] = []
    repeat_cpu: list[float] = []
    encoded: list[int] = []
    refined_regions: list[int] = []
    hits = 0
    for _ in range(args.queries):
        _, _, photo = footage.scenes[int(rng.integers(len(footage.scenes)))]
        img = footage.photos[photo].astype(np.int16) + rng.integers(-12, 13, footage.photos[photo].shape)
        query = Query(image=np.clip(img, 0, 255).astype(np.uint8), streams=["cam"], top_k=5)
        e0 = time.perf_counter()
        idx.prescreen.encode_images([query.image])  # the query's encoding alone (part of "first")
        encode_ms.append((time.perf_counter() - e0) * 1000)
        before = len(idx.cache)
        c0, t0 = time.process_time(), time.perf_counter()
        pending = idx.start_query(query)
        c1, t1 = time.process_time(), time.perf_counter()
        result = pending.refine(args.budget)["cam"]
        c2, t2 = time.process_time(), time.perf_counter()
        # The same query again: its vector is kept (QueryVectors), so this is the first answer's
        # prescreen, planning and fusing without the encoder pass.
        idx.start_query(query)
        repeat_cpu.append((time.process_time() - c2) * 1000)
        repeat_ms.append((time.perf_counter() - t2) * 1000)
        first_ms.append((t1 - t0) * 1000)
        refined_ms.append((t2 - t0) * 1000)
        first_cpu.append((c1 - c0) * 1000)
        refined_cpu.append((c2 - c0) * 1000)
        encoded.append(len(idx.cache) - before)
        refined_regions.append(sum(1 for m in result.moments if m.answered_by == "refine"))
        # The photo recurs in other scenes: a hit is any moment on a scene of the same photo.
        same = [(s, e) for s, e, p in footage.scenes if p == photo]
        if result.moments and any(m.start < e and m.end > s for s, e in same for m in result.moments[:1]):
            hits += 1
    st = idx.streams["cam"]
    return {
        "hours": round(footage.t / HOUR, 3),
        "tokens": st.memory.tokens,
        "memory_bytes": st.memory.nbytes,
        "stored_frames": len(st.store),
        "first_ms": {"p50": _pct(first_ms, 50), "p95": _pct(first_ms, 95), "max": _pct(first_ms, 100)},
        "refined_ms": {
            "p50": _pct(refined_ms, 50),
            "p95": _pct(refined_ms, 95),
            "max": _pct(refined_ms, 100),
        },
        "query_encode_ms": {"p50": _pct(encode_ms, 50), "p95": _pct(encode_ms, 95)},
        "first_repeated_query_ms": {"p50": _pct(repeat_ms, 50), "p95": _pct(repeat_ms, 95)},
        "first_repeated_query_cpu_ms": {"p50": _pct(repeat_cpu, 50), "p95": _pct(repeat_cpu, 95)},
        "first_cpu_ms": {"p50": _pct(first_cpu, 50), "p95": _pct(first_cpu, 95)},
        "refined_cpu_ms": {"p50": _pct(refined_cpu, 50), "p95": _pct(refined_cpu, 95)},
        "frames_encoded_per_query": {"mean": round(float(np.mean(encoded)), 1), "max": int(max(encoded))},
        "refined_moments_per_answer": round(float(np.mean(refined_regions)), 2),
        "top1_on_a_scene_of_the_photo": f"{hits}/{args.queries}",
        **rss(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.config import IndexConfig, Settings
    from agent.index.video_index import VideoIndex
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info

    marks = sorted(float(h) for h in str(args.hours).split(","))
    enc_cfg = encoder_from_args(args)
    settings = Settings(
        prescreen=enc_cfg,
        index=IndexConfig(fps=2.0, grid=2, budget=args.token_budget, store_bytes=8 * 1024**3, gate=False),
    )
    report: dict[str, Any] = {
        "bench": "query_latency",
        "command": " ".join(args.argv),
        "machine": machine_info(),
        "git": git_commit(),
        "params": {k: v for k, v in vars(args).items() if k not in ("argv", "func")},
        "build": "synthetic footage straight into memory and frame store (see bench/query_latency.py)",
    }
    report["params"] = json.loads(json.dumps(report["params"], default=str))
    with tempfile.TemporaryDirectory(prefix="vmr-latency-") as tmp:
        t0 = time.perf_counter()
        idx = VideoIndex.create(Path(tmp) / "index", settings)
        report["model_load_s"] = round(time.perf_counter() - t0, 2)
        enc = idx.prescreen
        report["encoder"] = {
            "name": enc.name,
            "backend": enc.backend.name,
            "precision": getattr(enc.backend, "precision", None),
            "device": str(getattr(enc.backend, "device", "cpu")),
            "meaningless": enc.meaningless,
            "threads": enc_cfg.threads,
        }
        photos = _photos(args.data, 200, settings.index.store_size)
        t0 = time.perf_counter()
        vecs = np.concatenate([enc.encode_images(photos[i : i + 16]) for i in range(0, len(photos), 16)])
        report["photo_encode_img_per_s"] = round(len(photos) / (time.perf_counter() - t0), 1)
        footage = Footage(idx.stream("cam"), vecs, photos, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        report["marks"] = []
        trace = MarkDiffs(top=15) if args.memprofile else None
        if trace is not None:
            trace.start()
        for hours in marks:
            t0 = time.perf_counter()
            footage.extend_to(hours * HOUR)
            build_s = time.perf_counter() - t0
            row = measure(idx, footage, args, rng)
            row["build_s"] = round(build_s, 1)
            row["heap"] = heap_profile(idx)
            if trace is not None:
                row["tracemalloc"] = trace.mark()
            row["trimmed"] = trimmed_rss()
            row["trimmed_heap"] = heap_profile(idx)
            report["marks"].append(row)
            print(json.dumps(row), file=sys.stderr)
        if trace is not None:
            trace.stop()
        idx.close()
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    first, last = report["marks"][0], report["marks"][-1]
    report["summary"] = {
        "first_p95_ms": last["first_ms"]["p95"],
        "refined_p95_ms": last["refined_ms"]["p95"],
        "first_p95_ratio_last_vs_first_mark": round(last["first_ms"]["p95"] / first["first_ms"]["p95"], 2),
        "refined_p95_ratio_last_vs_first_mark": round(
            last["refined_ms"]["p95"] / first["refined_ms"]["p95"], 2
        ),
        "rss_growth_last_vs_first_mark": round(last["rss_mb"] / first["rss_mb"] - 1, 4),
        "rss_growth_mb_last_vs_first_mark": round(last["rss_mb"] - first["rss_mb"], 1),
        "peak_rss_growth_last_vs_first_mark": round(last["peak_rss_mb"] / first["peak_rss_mb"] - 1, 4),
        # Anonymous pages only: file-backed ones (libraries, model files) come and go with the
        # machine's memory pressure, the heaps do not.
        "anon_growth_mb_last_vs_first_mark": round(last.get("anon_mb", 0.0) - first.get("anon_mb", 0.0), 1),
        "trimmed_anon_growth_mb_last_vs_first_mark": round(
            last["trimmed"].get("anon_mb", 0.0) - first["trimmed"].get("anon_mb", 0.0), 1
        ),
        "memory_growth_mb_last_vs_first_mark": round(
            (last["memory_bytes"] - first["memory_bytes"]) / 2**20, 1
        ),
        "peak_rss_mb": last.get("peak_rss_mb"),
        "trimmed_rss_growth_mb_last_vs_first_mark": round(
            last["trimmed"]["rss_mb"] - first["trimmed"]["rss_mb"], 1
        ),
        "trimmed_rss_growth_last_vs_first_mark": round(
            last["trimmed"]["rss_mb"] / first["trimmed"]["rss_mb"] - 1, 4
        ),
        "heap_growth_mb_last_vs_first_mark": _growth(first["heap"], last["heap"]),
        "trimmed_heap_growth_mb_last_vs_first_mark": _growth(first["trimmed_heap"], last["trimmed_heap"]),
    }
    return report


def _growth(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float]:
    """Last minus first of the allocator and component figures of :func:`heap_profile`, MiB."""
    out: dict[str, float] = {}
    for group in ("malloc", "components_mb"):
        for key, value in last.get(group, {}).items():
            if key.endswith("_mb") or group == "components_mb":
                out[f"{group}.{key}"] = round(value - first[group].get(key, 0.0), 2)
    for key in ("Rss", "Anonymous", "Pss_Anon", "Pss_File"):
        if key in last.get("smaps_rollup", {}):
            out[f"smaps.{key}"] = round(last["smaps_rollup"][key] - first["smaps_rollup"][key], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_device(args)
    write_device_report(args, run(args), "query-latency")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
