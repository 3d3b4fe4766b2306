"""Soak: live streams plus clients querying and watching over loopback, for a bounded time.

A reliability run, not a speed figure: the default encoder is ``tiny-random``
(random weights; its scores mean nothing, the work and the memory it costs are
real). One service runs in this process on a loopback port with ``--streams``
live streams: file replays paced at real time and looped by the service
(``kind: file, realtime, loop``) or, with ``--rtsp K``, K of them pulled from
the RTSP test server of ``tests/streams/servers`` (GStreamer, loopback; it
does not loop: each session ends with the file and the source reconnects,
which shows as ``reconnects``, ``gaps`` and a ``reconnecting`` health reason,
not as errors).
``--clients`` websocket clients each hold a standing image ``watch`` over every
stream and send a ``query`` every ``--query-every`` seconds (text and image
queries alternately, every fifth request a ``streams.list``).

Reported, in ``bench/results/soak.json`` with the exact command:

* frames ingested against those real time allows (``frames_expected``:
  2 fps x streams x elapsed; a replay that falls behind is slowed by
  backpressure, it does not drop) and dropped frames
  (``vmr_frames_dropped_total``: live sources drop when ingest falls behind);
* errors by code: error events the clients received, client-side failures
  (``client_timeout``, ``client_closed``), the service's
  ``vmr_errors_total`` by code and scope, work items given up
  (``work_dropped``) and streams not running at the end (``stream_<status>``);
* query latency (request sent -> ``moments`` received) p50 / p95 over the
  queries sent after the warm-up;
* RSS of this process (service and clients) at the end of the warm-up and
  at the end, and the drift in percent, with samples every
  ``--sample-every`` seconds; each of the two is the median of the last
  :data:`RSS_WINDOW` samples up to that instant (one sample is noisy). ``--budget`` (tokens per stream) is small by
  default so that memories reach their bound during the warm-up: the drift
  then measures leaks, not the memory filling up as designed.

``ok`` is true when there were no errors and the drift is under
``--max-drift`` percent (target of issue 9: 30 min, 8 streams, 8 clients).

    python -m bench.soak --streams 8 --clients 8 --seconds 1800 --warmup 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from agent.config import EncoderConfig, IndexConfig, Settings
from agent.service.config import ServiceConfig, StreamSpec
from agent.service.heap import trim_heap
from agent.service.pipeline import Service
from agent.service.server import Server
from bench.memtrace import MemTrace
from bench.soak_client import ANSWER_LIMIT, Client, Tally
from streams.file import FileSpec
from streams.rtsp import RTSPSpec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "soak.json"
RSS_WINDOW = 3
"""Samples whose median is the RSS at the end of the warm-up and at the end."""
FPS = 2.0


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _recent_rss(samples: list[list[float]]) -> float:
    """Median RSS (MiB) of the last :data:`RSS_WINDOW` samples."""
    return float(np.median([rss for _, rss in samples[-RSS_WINDOW:]]))


def _server_errors(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Counter[str]:
    errors: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name == "vmr_errors_total" and value:
            errors[f"{lab['code']} ({lab['scope']})"] += int(value)
        elif name == "vmr_work_dropped_total" and value:
            errors["work_dropped"] += int(value)
        elif name == "vmr_encoder_errors_total" and value:
            errors["encoder_errors"] += int(value)
    return errors


def _specs(args: argparse.Namespace, rtsp_url: str | None) -> list[StreamSpec]:
    specs: list[StreamSpec] = []
    for i in range(args.streams):
        if rtsp_url is not None and i < args.rtsp:
            specs.append(RTSPSpec(id=f"cam{i}", kind="rtsp", url=rtsp_url))
        else:
            specs.append(FileSpec(id=f"cam{i}", kind="file", path=str(args.video), realtime=True, loop=True))
    return specs


async def soak(args: argparse.Namespace, work: Path, rtsp_url: str | None = None) -> dict[str, Any]:
    """Run the soak described by ``args`` with the index under ``work``; returns the report."""
    cfg = ServiceConfig(
        host="127.0.0.1",
        port=0,
        index=work / "index",
        snapshot_seconds=args.snapshot_seconds,
        heap_trim_seconds=args.heap_trim_seconds or None,
    )
    settings = Settings(
        prescreen=EncoderConfig(model=args.model, allow_random=True, batch_size=16),
        index=IndexConfig(fps=FPS, grid=2, budget=args.budget, store_bytes=args.store_mb * 1024**2),
    )
    photos = sorted((DATA / "imagenet_sample").glob("*.jpg"))[: max(1, args.clients)]
    tally, stop, samples = Tally(), asyncio.Event(), []
    load_start = os.getloadavg()
    trace = MemTrace(args.tracemalloc) if args.tracemalloc else None
    async with Service(cfg, settings) as svc:
        await svc.start()
        server = Server(svc.serving, cfg)
        port = await server.start()
        url = f"http://127.0.0.1:{port}"
        for spec in _specs(args, rtsp_url):
            await svc.add_stream(spec)
        if trace is not None:  # after the start-up: only growth is wanted, and tracing start-up is slow
            trace.start()
        t0 = time.monotonic()
        measure_from = t0 + args.warmup
        clients = [
            Client(i, f"ws://127.0.0.1:{port}", photos, args.query_every, tally) for i in range(args.clients)
        ]
        tasks = [
            asyncio.create_task(c.run(stop, measure_from), name=f"soak-client-{i}")
            for i, c in enumerate(clients)
        ]
        rss_warm: float | None = None
        tokens_warm = 0
        async with httpx.AsyncClient(base_url=url) as http:
            while (elapsed := time.monotonic() - t0) < args.warmup + args.seconds:
                await asyncio.sleep(min(args.sample_every, args.warmup + args.seconds - elapsed))
                if args.malloc_trim:
                    await asyncio.to_thread(trim_heap)
                samples.append([round(time.monotonic() - t0, 1), round(rss_bytes() / 2**20, 1)])
                if rss_warm is None and time.monotonic() >= measure_from:
                    rss_warm = _recent_rss(samples)
                    tokens_warm = sum(r.state.memory.tokens for r in svc.runners.values())
                    if trace is not None:
                        trace.mark()
            rss_end = _recent_rss(samples)
            elapsed = time.monotonic() - t0
            growth = trace.report() if trace is not None else None
            stop.set()
            async with asyncio.timeout(ANSWER_LIMIT + 10):
                await asyncio.gather(*tasks)
            metrics = _metrics((await http.get("/metrics")).text)
            health = (await http.get("/healthz")).json()
        statuses = [r.info() for r in svc.runners.values()]
        trims = None if svc.trimmer is None else svc.trimmer.stats
        await server.close()
    errors = tally.errors + _server_errors(metrics)
    for st in statuses:
        if st["status"] != "running":
            errors[f"stream_{st['status']}"] += 1
    rss_warm = rss_warm or rss_end
    frames = int(sum(st["frames"] for st in statuses))
    lat = np.asarray(tally.latencies)
    drift = 100.0 * (rss_end - rss_warm) / rss_warm
    return {
        "streams": args.streams,
        "rtsp_streams": args.rtsp if rtsp_url else 0,
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "frames": frames,
        "frames_expected": round(FPS * args.streams * elapsed),
        "frames_dropped": int(sum(v for (n, _), v in metrics.items() if n == "vmr_frames_dropped_total")),
        "reconnects": int(sum(st["reconnects"] for st in statuses)),
        "gaps": int(sum(st["gaps"]["count"] for st in statuses)),
        "queries": tally.queries,
        "watch_moments": tally.moments,
        "errors": dict(sorted(errors.items())),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3) if len(lat) else None,
        "latency_queries": len(lat),
        "tokens_warm": tokens_warm,
        "tokens_end": int(sum(st["tokens"] for st in statuses)),
        "rss_warm_mib": round(rss_warm, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_drift_pct": round(drift, 2),
        "rss_samples_mib": samples,
        "health": health["status"],
        "health_reasons": health.get("reasons", []),
        "load_average": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "ok": not errors and drift < args.max_drift,
        "heap_trim_seconds": args.heap_trim_seconds or None,
        **(
            {
                "heap_trims": trims.trims,
                "heap_trim_released_mib": round(trims.released_bytes / 2**20, 1),
                "heap_trim_call_seconds": round(trims.seconds, 3),
            }
            if trims is not None
            else {}
        ),
        **({"malloc_trim": True} if args.malloc_trim else {}),
        **({"tracemalloc": growth} if growth is not None else {}),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1800.0, help="measured duration after the warm-up")
    p.add_argument("--warmup", type=float, default=300.0, help="seconds before RSS and latency count")
    p.add_argument("--rtsp", type=int, default=0, help="streams pulled from the RTSP test server")
    p.add_argument("--video", type=Path, default=DATA / "videos" / "bikes.mp4")
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--budget", type=int, default=32, help="memory tokens per stream")
    p.add_argument("--store-mb", type=int, default=64, help="frame store bytes per stream (MiB)")
    p.add_argument("--snapshot-seconds", type=float, default=30.0)
    p.add_argument(
        "--heap-trim-seconds",
        type=float,
        default=30.0,
        help="the service's malloc_trim period (ServiceConfig.heap_trim_seconds); 0: none",
    )
    p.add_argument("--query-every", type=float, default=2.0)
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--max-drift", type=float, default=5.0, help="RSS drift (%%) above which the run fails")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="N",
        help="trace Python allocations (25 frames, slow) and report the N sites and object types "
        "that grew most from the end of the warm-up to the end (bench.memtrace)",
    )
    p.add_argument(
        "--malloc-trim",
        action="store_true",
        help="call glibc malloc_trim(0) before each RSS sample (tells allocator fragmentation from growth)",
    )
    args = p.parse_args(argv)
    if args.streams < 1 or args.clients < 0 or args.seconds <= 0 or args.warmup < 0 or args.rtsp < 0:
        p.error("need --streams >= 1, --clients >= 0, --seconds > 0, --warmup >= 0, --rtsp >= 0")
    if args.out.is_dir():  # a folder: the result goes inside it (checked before a long run, not after)
        args.out = args.out / RESULTS.name
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.touch()
    except OSError as exc:
        p.error(f"--out {args.out}: {exc}")
    return args


async def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The soak with a temporary index (and RTSP server when asked), bounded in time; writes ``args.out``."""
    with tempfile.TemporaryDirectory(prefix="vmr-soak-") as tmp:
        server = None
        if args.rtsp:
            sys.path.insert(0, str(ROOT))
            from tests.streams.servers import RtspServer

            server = RtspServer(args.video)
            await asyncio.to_thread(server.start)
        try:
            async with asyncio.timeout(args.warmup + args.seconds + 300):
                row = await soak(args, Path(tmp), None if server is None else server.url)
        finally:
            if server is not None:
                await asyncio.to_thread(server.kill)
    report = {
        "bench": "soak",
        "command": command,
        "model": f"{args.model} (reliability run, not a speed figure)",
        "machine": f"{os.cpu_count()} cores, shared with other jobs (see load_average)",
        **row,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    report = asyncio.run(run(args, shlex.join(["python", "-m", "bench.soak", *argv])))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples_mib"}, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
