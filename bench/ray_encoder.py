"""Ray encoder pool against one encoder per stream actor: ingest throughput and resident memory.

For each stream count of ``--streams`` (2 4 8), the same recordings
(``--video-seconds`` long, 320x240 at 10 fps, background scenes and a needle)
are ingested by the Ray gateway on a local Ray instance of this machine
(loopback only) in both modes, in alternating order (pool first at one
count, per-actor first at the next): **pool** — ``[service.ray] encoders =
1`` (``--pool-actors``), one :class:`~agent.service.cluster.encoder_pool.EncoderActor`
batching every stream actor's super-images — and **per-actor** — ``encoders = 0``,
each stream actor loads the model (the mode before the pool). File replays
run as fast as they decode (not realtime), looped, so every stream keeps
ingesting for as long as it is measured.

Throughput: super-images encoded per second over ``--window`` seconds,
starting ``--warmup`` seconds after every stream actor answered its start
(each has then loaded what it loads): the steady ingest of all the streams
at once, model loads left out. It is the sum of ``encoder_images`` the
actors report (their batch workers), read at both ends. Memory: each actor
process's resident set (VmRSS) after the ingest, and the pool actor's. Figures are wall time on a shared 2-core
machine: the load average is recorded at start and end; one run, no repeats.

    python -m bench.ray_encoder --model MobileCLIP2-S0 --random-weights
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import EncoderConfig, IndexConfig, Settings
from agent.service.cluster.gateway import RayShard
from agent.service.config import RayConfig, ServiceConfig
from agent.service.pipeline import Service
from bench.args import RESULTS, add_device_option, encoder_from_args, pin_device, save_report
from streams.file import FileSpec

MODES = ("pool", "per-actor")


def _settings(prescreen: EncoderConfig) -> Settings:
    return Settings(prescreen=prescreen, index=IndexConfig(fps=2.0, grid=2, store_bytes=64 * 1024**2))


def _videos(work: Path, n: int, seconds: float) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.videos import Scene, make_video, photos

    needle, bg = photos(1)[0], photos(3, 1)
    part = seconds / 6
    paths = []
    for i in range(n):
        path = work / f"cam{i}.mp4"
        scenes = [Scene(part, bg[k % 3], True) for k in range(5)]
        scenes.insert(i % 5, Scene(part, needle, True))
        make_video(path, scenes, fps=10, size=(320, 240))
        paths.append(path)
    return paths


async def _encoded(shard: RayShard) -> int:
    return (await shard.stats()).encoder_images


async def _ingest(svc: Service, shard: RayShard, videos: list[Path], a: argparse.Namespace) -> dict[str, Any]:
    """Add every stream (each add returns once its actor started), then count a steady window."""
    t_add = time.perf_counter()
    specs = [FileSpec(id=f"cam{i}", kind="file", path=str(p), loop=True) for i, p in enumerate(videos)]
    await asyncio.gather(*(svc.add_stream(spec) for spec in specs))
    started = time.perf_counter() - t_add
    await asyncio.sleep(a.warmup)
    t0, before = time.perf_counter(), await _encoded(shard)
    await asyncio.sleep(a.window)
    after = await _encoded(shard)
    wall = time.perf_counter() - t0
    statuses = await svc.serving.list_streams()
    if any(s.status != "running" for s in statuses):
        raise SystemExit(f"a stream stopped: {[(s.id, s.status, s.error) for s in statuses]}")
    stats = await shard.stats()
    return {
        "actors_start_s": round(started, 2),
        "window_s": round(wall, 2),
        "images_window": after - before,
        "images_per_s": round((after - before) / wall, 2),
        "actor_batches": stats.encoder_passes,
        "actor_images_per_batch": round(stats.encoder_images / max(1, stats.encoder_passes), 2),
        "encoder_errors": stats.encoder_errors,
    }


async def _memory(shard: RayShard) -> dict[str, Any]:
    actors = {}
    for name, p in sorted(shard.placed.items()):
        m = await shard._call(p.handle.memory, limit=60.0)
        actors[name] = {k: round(v, 1) for k, v in m.items() if k != "pid"}
    rss = [a["rss_mb"] for a in actors.values()]
    out: dict[str, Any] = {
        "actors": actors,
        "actor_rss_mb": {"min": min(rss), "median": round(float(np.median(rss)), 1), "max": max(rss)},
        "actors_total_rss_mb": round(sum(rss), 1),
    }
    if shard.pool is not None:
        pool = await shard.pool.stats(60.0)
        out["pool_peak_rss_mb"] = [round(p["memory"]["peak_rss_mb"], 1) for p in pool]
        out["pool_rss_mb"] = [round(p["memory"]["rss_mb"], 1) for p in pool]
        out["total_rss_mb"] = round(out["actors_total_rss_mb"] + sum(out["pool_rss_mb"]), 1)
    else:
        out["total_rss_mb"] = out["actors_total_rss_mb"]
    return out


async def _pool_stats(shard: RayShard) -> dict[str, Any] | None:
    """The pool actor's batch counters (each actor's, under ``actors``, when several)."""
    if shard.pool is None:
        return None
    actors = await shard.pool.stats(60.0)
    for s in actors:
        s.pop("memory")
        s["images_per_pass"] = round(s["images"] / max(1, s["passes"]), 2)
    return actors[0] if len(actors) == 1 else {"actors": actors}


async def _run(
    mode: str, cfg: ServiceConfig, settings: Settings, videos: list[Path], a: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with Service(cfg, settings) as svc:
        await svc.start()
        started = time.perf_counter() - t0
        shard = svc.shard
        assert isinstance(shard, RayShard)
        ingest = await _ingest(svc, shard, videos, a)
        row = {
            "mode": mode,
            "streams": len(videos),
            "service_start_s": round(started, 2),
            **ingest,
            "memory": await _memory(shard),
            "pool": await _pool_stats(shard),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    print(json.dumps({k: v for k, v in row.items() if k != "memory"}), flush=True)
    return row


def _config(work: Path, tag: str, mode: str, a: argparse.Namespace) -> ServiceConfig:
    rc = RayConfig(
        address="auto",
        storage=work / f"shared-{tag}",
        num_cpus=a.actor_cpus,
        deadline_seconds=60.0,
        encoders=a.pool_actors if mode == "pool" else 0,
        encoder_num_cpus=1.0,
        encoder_max_wait_ms=a.max_wait_ms,
    )
    return ServiceConfig(port=0, index=work / f"gateway-{tag}", snapshot_seconds=3600.0, ray=rc)


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n in dict.fromkeys(r["streams"] for r in rows):
        by = {r["mode"]: r for r in rows if r["streams"] == n}
        pool, own = by["pool"], by["per-actor"]
        out.append(
            {
                "streams": n,
                "pool_images_per_s": pool["images_per_s"],
                "per_actor_images_per_s": own["images_per_s"],
                "throughput_ratio_pool_over_per_actor": round(pool["images_per_s"] / own["images_per_s"], 3),
                "stream_actor_rss_mb_pool": pool["memory"]["actor_rss_mb"]["median"],
                "stream_actor_rss_mb_per_actor": own["memory"]["actor_rss_mb"]["median"],
                "total_rss_mb_pool": pool["memory"]["total_rss_mb"],
                "total_rss_mb_per_actor": own["memory"]["total_rss_mb"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    from agent.cli.options import add_model_options
    from bench.run_haystack import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--streams", type=int, nargs="+", default=[2, 4, 8], help="stream counts")
    p.add_argument("--video-seconds", type=float, default=30.0, help="each recording (replays loop)")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds after every actor started")
    p.add_argument("--window", type=float, default=45.0, help="seconds counted")
    p.add_argument("--actor-cpus", type=float, default=0.25, help="num_cpus each stream actor reserves")
    p.add_argument("--pool-actors", type=int, default=1, help="[service.ray] encoders in pool mode")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="[service.ray] encoder_max_wait_ms")
    p.add_argument("--out", type=Path, default=RESULTS / "ray_encoder.json")
    a = p.parse_args(argv)
    pin_device(a)
    # One machine, loopback only (see tests/agent/service/cluster/conftest.py); before Ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    settings = _settings(encoder_from_args(a))
    machine = machine_info()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = _videos(work, max(a.streams), a.video_seconds)
        ray.init(
            address="local",  # a fresh instance of its own, never another job's cluster on this machine
            num_cpus=max(4, int(max(a.streams) * a.actor_cpus) + 2),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
        )
        try:
            for k, n in enumerate(a.streams):
                for mode in MODES if k % 2 == 0 else MODES[::-1]:  # interleaved: neither always first
                    tag = f"{mode}-{n}"
                    cfg = _config(work, tag, mode, a)
                    rows.append(asyncio.run(_run(mode, cfg, settings, videos[:n], a)))
        finally:
            ray.shutdown()
    argv_used = sys.argv[1:] if argv is None else argv
    report = {
        "bench": "ray_encoder",
        "command": " ".join(["python", "-m", "bench.ray_encoder", *argv_used]),
        "model": settings.prescreen.model,
        "random_weights": settings.prescreen.random_weights,
        "backend": settings.prescreen.backend,
        "threads": settings.prescreen.threads,
        "batch_size": settings.prescreen.batch_size,
        "video_seconds": a.video_seconds,
        "warmup_s": a.warmup,
        "window_s": a.window,
        "encoder_max_wait_ms": a.max_wait_ms,
        "pool_actors": a.pool_actors,
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "rows": rows,
        "summary": _summary(rows),
    }
    save_report(a.out, report, show="summary")


if __name__ == "__main__":
    main()
