"""Ray fan-out: query latency and throughput against the number of stream actors, and the gateway's cost.

The same ``--streams`` short recordings (a needle photo among background
scenes, ``--video-seconds`` long, 320x240 at 10 fps) are ingested twice: by
the single-process service (one :class:`LocalShard`) and by the Ray gateway
(one :class:`StreamActor` per stream on a local Ray instance of this machine,
loopback only). Then, for each fan-out ``k`` of ``--fanout``, image queries
over the first ``k`` streams are answered through :meth:`Serving.query`
(the router's path, without the websocket): one at a time for latency
(``--queries`` each, each a new picture unless ``--repeat-query``; *first*
= the prescreen answer, *refined* = after the ``--budget`` refinement), then ``--concurrency`` at once for throughput
(queries per second over ``--queries`` queries). The gateway's overhead at
``k`` is its latency minus the single-process service's at the same ``k``.
After the queries, each service's memory: the resident set (VmRSS, and the
peak VmHWM) of this process — the single-process service, then the Ray
gateway — and of every stream actor's process (``memory``). The gateway's
figure is this same process after the single-process run, so it includes
what that run left allocated (its model, the allocator's pools): an upper
bound. Figures are wall time on a shared machine: the load average is
recorded at start and end.

    python -m bench.ray_fanout --model MobileCLIP2-S0 --random-weights --backend torch --device cpu
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
from PIL import Image

from agent.channels.retrieval import Query
from agent.config import EncoderConfig, IndexConfig, Settings
from agent.service.cluster.gateway import RayShard
from agent.service.config import RayConfig, ServiceConfig
from agent.service.pipeline import Service
from bench.args import RESULTS, add_device_option, encoder_from_args, pin_device, save_report
from streams.file import FileSpec


def _settings(prescreen: EncoderConfig) -> Settings:
    return Settings(prescreen=prescreen, index=IndexConfig(fps=2.0, grid=2, store_bytes=64 * 1024**2))


def _videos(work: Path, n: int, seconds: float) -> tuple[list[Path], np.ndarray]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.videos import Scene, make_video, photos

    needle, bg = photos(1)[0], photos(3, 1)
    part = seconds / 4
    paths = []
    for i in range(n):
        path = work / f"cam{i}.mp4"
        scenes = [Scene(part, bg[0], True), Scene(part, needle, True), Scene(2 * part, bg[(i % 2) + 1], True)]
        make_video(path, scenes, fps=10, size=(320, 240))
        paths.append(path)
    return paths, np.asarray(Image.open(needle).convert("RGB"))


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


async def _ingest(svc: Service, videos: list[Path]) -> float:
    t0 = time.perf_counter()
    for i, path in enumerate(videos):
        await svc.add_stream(FileSpec(id=f"cam{i}", kind="file", path=str(path)))
    while True:  # every replay done
        statuses = await svc.serving.list_streams()
        if all(s.status in ("done", "failed") for s in statuses):
            if any(s.status == "failed" for s in statuses):
                raise SystemExit(f"a stream failed: {[s.error for s in statuses]}")
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)


class _Queries:
    """Image queries over the first ``k`` streams: each a new picture unless ``--repeat-query``.

    A new picture (the needle with one pixel changed) is a query no encoder has seen, as from
    clients asking different things; the same one repeated is answered from each shard's kept
    query vectors without an encoder pass (:class:`agent.channels.retrieval.QueryVectors`).
    """

    def __init__(self, image: np.ndarray, repeat: bool) -> None:
        self.image, self.repeat, self.n = image, repeat, 0

    def __call__(self, k: int) -> Query:
        image = self.image
        if not self.repeat:
            self.n += 1
            image = image.copy()
            image.flat[self.n % image.size] ^= 1  # a new content hash (n < pixels)
        return Query(image=image, streams=[f"cam{i}" for i in range(k)], top_k=5)


async def _measure(svc: Service, queries: _Queries, k: int, args: argparse.Namespace) -> dict[str, Any]:
    await svc.serving.query(queries(k), budget=args.budget)  # warm-up (caches, threads), not counted
    firsts: list[float] = []
    refined: list[float] = []
    missing = 0
    for _ in range(args.queries):
        seen: list[float] = []

        def on_first(_answer: Any, seen: list[float] = seen) -> None:
            seen.append(time.perf_counter())

        query = queries(k)
        t0 = time.perf_counter()
        answer = await svc.serving.query(query, budget=args.budget, on_first=on_first)
        refined.append(time.perf_counter() - t0)
        firsts.append(seen[0] - t0)
        missing += len(answer.missing)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        async with sem:
            await svc.serving.query(queries(k), budget=args.budget)

    await asyncio.gather(*(one() for _ in range(args.queries)))
    wall = time.perf_counter() - t0
    return {
        "fanout": k,
        "first_p50_ms": _pct(firsts, 50),
        "first_p95_ms": _pct(firsts, 95),
        "refined_p50_ms": _pct(refined, 50),
        "refined_p95_ms": _pct(refined, 95),
        "throughput_qps": round(args.queries / wall, 2),
        "missing_streams": missing,
    }


def _own_memory() -> dict[str, float]:
    """This process's resident set now and at its peak, MiB (Linux /proc)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    return out


async def _memory(svc: Service) -> dict[str, Any]:
    """Resident sets after the queries: this process (the service, or the Ray gateway) and each actor."""
    out: dict[str, Any] = {"process": _own_memory()}
    shard = svc.shard
    if isinstance(shard, RayShard):
        actors = {}
        for name, p in sorted(shard.placed.items()):
            m = await shard._call(p.handle.memory, limit=30.0)
            actors[name] = {k: round(v, 1) for k, v in m.items() if k != "pid"}
        rss = [a["rss_mb"] for a in actors.values()]
        out["actors"] = actors
        out["actor_rss_mb"] = {"min": min(rss), "median": round(float(np.median(rss)), 1), "max": max(rss)}
        out["actors_total_rss_mb"] = round(sum(rss), 1)
    return out


async def _run_service(
    kind: str,
    cfg: ServiceConfig,
    settings: Settings,
    videos: list[Path],
    image: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with Service(cfg, settings) as svc:
        await svc.start()
        started = time.perf_counter() - t0
        ingest = await _ingest(svc, videos)
        rows = []
        queries = _Queries(image, args.repeat_query)  # one sequence: no picture asked twice
        for k in args.fanout:
            row = await _measure(svc, queries, k, args)
            print(json.dumps({"service": kind, **row}), flush=True)
            rows.append(row)
        memory = await _memory(svc)
        print(json.dumps({"service": kind, "memory": memory}), flush=True)
    return {
        "service": kind,
        "start_s": round(started, 2),
        "ingest_s": round(ingest, 2),
        "rows": rows,
        "memory": memory,
    }


def _overhead(local: dict[str, Any], ray: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for a, b in zip(local["rows"], ray["rows"], strict=True):
        out.append(
            {
                "fanout": a["fanout"],
                "first_p50_ms": round(b["first_p50_ms"] - a["first_p50_ms"], 1),
                "refined_p50_ms": round(b["refined_p50_ms"] - a["refined_p50_ms"], 1),
                "throughput_ratio": round(b["throughput_qps"] / a["throughput_qps"], 3),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    from agent.channels.refine import DEFAULT_REFINE_BUDGET_S
    from agent.cli.options import add_model_options
    from bench.run_haystack import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--streams", type=int, default=8, help="streams (= Ray actors)")
    p.add_argument("--fanout", type=int, nargs="+", default=[1, 2, 4, 8], help="streams each query asks")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument(
        "--repeat-query", action="store_true", help="ask one picture every time (kept vectors: no encoding)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="queries in flight for the throughput run")
    p.add_argument("--budget", type=float, default=DEFAULT_REFINE_BUDGET_S)
    p.add_argument("--video-seconds", type=float, default=16.0)
    p.add_argument("--actor-cpus", type=float, default=0.25, help="num_cpus each stream actor reserves")
    p.add_argument(
        "--encoders",
        type=int,
        default=0,
        help="[service.ray] encoders: 0 (each actor its own, as ray_fanout.json measured) or pool actors",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "ray_fanout.json")
    a = p.parse_args(argv)
    if max(a.fanout) > a.streams:
        raise SystemExit("--fanout above --streams")
    pin_device(a)
    # One machine, loopback only (see tests/agent/service/cluster/conftest.py); before Ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    settings = _settings(encoder_from_args(a))
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos, image = _videos(work, a.streams, a.video_seconds)
        local_cfg = ServiceConfig(port=0, index=work / "local", snapshot_seconds=3600.0)
        local = asyncio.run(_run_service("local", local_cfg, settings, videos, image, a))
        ray.init(
            address="local",  # a fresh instance of its own, never another job's cluster on this machine
            num_cpus=max(4, int(a.streams * a.actor_cpus) + 1),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
        )
        try:
            rc = RayConfig(
                address="auto",
                storage=work / "shared",
                num_cpus=a.actor_cpus,
                deadline_seconds=30.0,
                encoders=a.encoders,
            )
            ray_cfg = ServiceConfig(port=0, index=work / "gateway", snapshot_seconds=3600.0, ray=rc)
            remote = asyncio.run(_run_service("ray", ray_cfg, settings, videos, image, a))
        finally:
            ray.shutdown()
    argv_used = sys.argv[1:] if argv is None else argv
    report = {
        "bench": "ray_fanout",
        "command": " ".join(["python", "-m", "bench.ray_fanout", *argv_used]),
        "model": settings.prescreen.model,
        "random_weights": settings.prescreen.random_weights,
        "backend": settings.prescreen.backend,
        "threads": settings.prescreen.threads,
        "streams": a.streams,
        "encoders": a.encoders,
        "video_seconds": a.video_seconds,
        "budget_s": a.budget,
        "distinct_queries": not a.repeat_query,
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "local": local,
        "ray": remote,
        "gateway_overhead": _overhead(local, remote),
    }
    save_report(a.out, report, show="gateway_overhead")


if __name__ == "__main__":
    main()
