"""``vmr bench haystack run``: build (cached), speed, memory vs hours, latency, strategies, report.

One invocation gives one JSON (plus Markdown and PNG plots) under ``bench/results/``. The order is
chosen so measurements do not disturb each other: the speed passes run first (before the
strategy comparison fills memory with dense items), each ingest pass resets the peak-RSS
counter, and the comparison runs last from cached embeddings where it can.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.config import EncoderConfig, IndexConfig, QueryConfig, Settings
from agent.core.qvh import load_jsonl, qvh_metrics
from agent.errors import ConfigError, IndexStoreError
from agent.models.encoder import load_encoder
from agent.types import RGBImage
from bench import dense_inputs, fidelity, speed
from bench.haystack import DEFAULT_CACHE, DEFAULT_DATA, HaystackParams, HaystackSet, build

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_FRACTIONS = (1 / 3, 1 / 10, 1 / 30, 1 / 100)


@dataclass(frozen=True)
class RunOptions:
    """Everything one benchmark run needs (the CLI fills it from its arguments)."""

    params: HaystackParams
    encoder: EncoderConfig
    data: Path = DEFAULT_DATA
    cache: Path = DEFAULT_CACHE
    results: Path = DEFAULT_RESULTS
    passes: tuple[str, ...] = ("full", "coarse")
    """Ingest passes to time: ``full`` decodes every frame, ``coarse`` keyframes only."""
    decode: tuple[str, ...] = ("full", "coarse")
    """Decode-only passes to time (same names)."""
    latency_pass: str | None = None
    """Pass at whose hour marks queries are timed (default: the first of ``passes``)."""
    latency_queries: int = 20
    sample_fps: float | None = None
    """Sampling rate of decode, ingest and comparison (None: the video's rate up to 5 fps, else 2)."""
    max_refine_frames: int | None = None
    """Override of ``QueryConfig.max_refine_frames`` (None: the engine default)."""
    ingest_grid: int = 2
    budget: int = 4096
    gate: bool = True
    overlap: bool = True
    """Decode in a worker thread during ingest, as ``vmr ingest`` does."""
    compare: bool = True
    grids: tuple[int, ...] = (1, 2, 3, 4)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    strategies: tuple[str, ...] = tuple(fidelity.ALL_STRATEGIES)
    threads: int | None = None
    progress: bool = False
    command: str = ""
    tag: str = ""
    """Appended to the result name (e.g. to keep a partial rerun apart)."""


def run_name(params: HaystackParams) -> str:
    """Result file stem, e.g. ``haystack-1h-480p-2fps-n20-s0``."""
    d = params.duration
    length = f"{d / 3600:g}h" if d % 3600 == 0 else f"{d / 60:g}m" if d % 60 == 0 else f"{d:g}s"
    return f"haystack-{length}-{params.height}p-{params.fps}fps-n{params.needles}-s{params.seed}"


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, RAM, load, library versions: what the figures were measured on."""
    cpu = "unknown"
    ram_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    import importlib.metadata

    import av

    # Read, never imported: torch costs ~480 MB resident, which a measured process may not hold.
    torch = sys.modules.get("torch")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "av": av.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> dict[str, Any]:
    """HEAD and whether the tree has uncommitted changes (read-only git)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _images(hs: HaystackSet, limit: int) -> list[RGBImage]:
    out = []
    for r in load_jsonl(hs.gt_image)[:limit]:
        try:
            with Image.open(hs.root / r["image"]) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise IndexStoreError(f"cannot read query image {r['image']}: {exc}") from exc
    return out


def sample_fps(opts: RunOptions) -> float:
    """Frames per second sampled from the haystack (25 fps footage is sampled at 2 by default)."""
    if opts.sample_fps is not None:
        return float(opts.sample_fps)
    return float(opts.params.fps) if opts.params.fps <= 5 else 2.0


def _settings(opts: RunOptions) -> Settings:
    try:
        index = IndexConfig(fps=sample_fps(opts), grid=opts.ingest_grid, budget=opts.budget, gate=opts.gate)
        query = (
            QueryConfig()
            if opts.max_refine_frames is None
            else QueryConfig(max_refine_frames=opts.max_refine_frames)
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return Settings(prescreen=opts.encoder, index=index, query=query)


def _say(opts: RunOptions, msg: str) -> None:
    if opts.progress:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def speed_section(opts: RunOptions, hs: HaystackSet, short_side: int) -> dict[str, Any]:
    """Decode-only passes, ingest passes (hour marks, latency), and their ratios."""
    p = opts.params
    out: dict[str, Any] = {"decode_only": {}, "ingest": {}}
    for mode in opts.decode:
        _say(opts, f"decode-only pass ({mode})")
        out["decode_only"][mode] = speed.decode_only(
            hs.video, fps=sample_fps(opts), keyframes_only=mode == "coarse", short_side=short_side
        )
        out["decode_only"][mode]["x_realtime"] = round(p.duration / out["decode_only"][mode]["seconds"], 1)
    settings = _settings(opts)
    latency_pass = opts.latency_pass or (opts.passes[0] if opts.passes else None)
    images = _images(hs, opts.latency_queries)
    for mode in opts.passes:
        _say(opts, f"ingest pass ({mode})")
        res, answers = speed.ingest_pass(
            hs.video,
            settings,
            duration=p.duration,
            keyframes_only=mode == "coarse",
            latency_images=images if mode == latency_pass else (),
            work_dir=opts.cache,
            overlap=opts.overlap,
        )
        # The engine's own answers (prescreen + refine + proposals) scored like the strategies.
        res["engine_image_metrics"] = {
            m: _subset(engine_metrics(hs.gt_image, a)) for m, a in answers.items() if a
        }
        dec = out["decode_only"].get(mode)
        if dec:
            res["speed_ratio_to_decode_only"] = round(dec["seconds"] / res["seconds"], 3)
        out["ingest"][mode] = res
    out["latency_pass"] = latency_pass
    out["query_config"] = speed.query_config_note(settings.query)
    return out


def _subset(full: dict[str, float]) -> dict[str, float]:
    return {k: full[v] for k, v in fidelity.METRIC_KEYS.items()}


def hours_summary(ingest: dict[str, Any]) -> dict[str, Any]:
    """Peak-RSS growth from the first to the last hour mark, and the token bound check."""
    marks = [m for m in ingest.get("marks", []) if "peak_rss_mb" in m]
    out: dict[str, Any] = {"tokens_within_budget": ingest["max_tokens_seen"] <= ingest["budget"]}
    if len(marks) >= 2 and marks[0]["peak_rss_mb"]:
        first, last = marks[0], marks[-1]
        out["peak_rss_growth_pct"] = round(100.0 * (last["peak_rss_mb"] / first["peak_rss_mb"] - 1.0), 1)
        out["from_hours"], out["to_hours"] = first["hours"], last["hours"]
    return out


def compare_section(opts: RunOptions, hs: HaystackSet) -> dict[str, Any]:
    """Dense items per grid, every strategy at every budget, on image and text queries."""
    enc = load_encoder(opts.encoder)
    p = opts.params
    _say(opts, f"dense items for grids {list(opts.grids)}")
    items, stats = dense_inputs.dense_items(
        hs.video,
        fps=sample_fps(opts),
        grids=opts.grids,
        encoder=enc,
        cache_dir=hs.root,
        progress=opts.progress,
    )
    queries = dense_inputs.queries_by_grid({"image": hs.gt_image, "text": hs.gt_text}, enc, opts.grids)
    _say(opts, "strategies")
    rows = fidelity.compare(
        items,
        queries,
        duration=p.duration,
        fps=sample_fps(opts),
        fractions=opts.fractions,
        strategies=opts.strategies,
        on_row=(lambda r: _say(opts, _row_line(r))) if opts.progress else None,
    )
    return {
        "items": {str(g): int(it.starts.shape[0]) for g, it in items.items()},
        "item_stats": stats,
        "queries": {k: len(v[0]) for k, v in queries[opts.grids[0]].items()},
        "image_query": "still-shot",
        "text_meaningless": enc.meaningless,
        "procedure": fidelity.__doc__,
        "rows": rows,
    }


def _row_line(r: dict[str, Any]) -> str:
    img = r["image"]
    return (
        f"g{r['grid']} {r['strategy']:<10} B={r['budget']:<5} tokens={r['tokens']:<5} "
        f"R1@0.5={img['R1@0.5']:6.2f} fid={img['fidelity']:6.2f}"
    )


def run(opts: RunOptions) -> dict[str, Any]:
    """Run the benchmark; returns the report dict (not yet written)."""
    if opts.latency_pass is not None and opts.latency_pass not in opts.passes:
        raise ConfigError(f"--latency-pass {opts.latency_pass} is not among the passes {opts.passes}")
    report: dict[str, Any] = {
        "name": run_name(opts.params) + (f"-{opts.tag}" if opts.tag else ""),
        "command": opts.command or " ".join(sys.argv),
        "machine": machine_info(),
        "git": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    t0 = time.perf_counter()
    _say(opts, "build (cached)")
    hs = build(opts.params, opts.data, opts.cache, threads=opts.threads, progress=opts.progress)
    report["haystack"] = {
        "params": opts.params.model_dump(),
        "data": str(opts.data),
        "root": str(hs.root),
        "cached": hs.cached,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "sample_fps": sample_fps(opts),
        "queries": {"image": len(load_jsonl(hs.gt_image)), "text": len(load_jsonl(hs.gt_text))},
    }
    enc = load_encoder(opts.encoder)
    report["encoder"] = {
        "name": enc.name,
        "dim": enc.dim,
        "image_size": enc.image_size,
        "meaningless": enc.meaningless,
    }
    report["speed"] = speed_section(opts, hs, enc.image_size)
    for mode, res in report["speed"]["ingest"].items():
        report["speed"]["ingest"][mode]["hours_summary"] = hours_summary(res)
    if opts.compare:
        report["strategies"] = compare_section(opts, hs)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return report


def engine_metrics(gt_path: Path, answers: list[list[Any]]) -> dict[str, float]:
    """QVH metrics of the engine's own answers (moments in GT order)."""
    gt = load_jsonl(gt_path)[: len(answers)]
    preds = [
        {"qid": r["qid"], "pred_relevant_windows": [[m.start, m.end, m.score] for m in moments]}
        for r, moments in zip(gt, answers, strict=True)
    ]
    return qvh_metrics(gt, preds)
