"""Service load: how many live 720p25 streams at 2 fps one machine sustains, and watch latency.

Each "camera" is ``bigbuckbunny.mp4`` (1280x720, 25 fps, H.264) replayed in
real time and looped by the service itself (``kind: file, realtime, loop``),
so decoding every 720p frame is real work. For N streams the service runs
``--seconds``; a stream *keeps up* when it ingested at least 95 % of the
frames real time allows (fps x elapsed) in a window that starts ``WARMUP``
seconds after the streams were added — a realtime replay applies
backpressure instead of dropping, so falling behind shows as missing frames.
Live drops (``vmr_frames_dropped_total``) are reported too.

Latency: ``--needle-streams`` (8) extra realtime 720p streams, started 12 s / 8
apart, each show a needle photo for 3 s every 12 s (~40 needles a minute, so a
p95 stands on >= 30 of them; :mod:`bench.service_needles`); one websocket watch covers them all. Latency =
arrival of the first ``moment`` of a needle at the client - wall time the
needle's first frame was due on its stream (its realtime pacing clock). Only
needles due inside the measured window count; the watch listens ``GRACE``
seconds more, and a needle with no moment by then is ``needle_missed``. The watch's threshold sits midway between
the scores of a background super-image and one with a single needle tile, as
the service's own encoder gives them (``needle_scores``; random weights put
every cosine near 1, so a fixed threshold would match everything and report
one never-closing match). ``needle_stages`` splits each latency into stages
(:mod:`bench.needle_trace`, a bench-only hook). ``rss_base_mb``: VmRSS with
the model loaded and the needle stream running, before the N cameras;
``rss_per_stream_mb``: (VmRSS at the end of the window - that) / N.
``encoder_queue_wait``: submitted -> batch start of every work item of every
stream in the window (the fairness of the shared worker, with many more samples
than the needles), the age of what is still queued at its end, and the CPU seconds
of the thread running the encoder's batch function; ``thread_cpu``: CPU seconds per
thread group in the window (:class:`bench.service_probes.ThreadCpu`: decode threads,
the executor that runs encoder calls and frame pushes, the inference runtime's own
threads, FFmpeg's), the CPU profile that says whether decode or encode bounds N;
``heap_trims``: when each ``malloc_trim`` ran and how long it took; ``gc``: the
cyclic collector's passes (``--legacy-rr``, ``--trim-growth-mb``, ``--batch-size``:
the A/B switches of ``bench/results/service-load-20-60s-needles-ab-*.json``).
Results: ``bench/results/service_load.json``.

Encoder flags as every bench (``--model``, ``--random-weights``, ``--backend``, ``--device``);
the default stays tiny-random for plumbing. Each row also records peak RSS (VmHWM, reset
before each N), process CPU utilisation (CPU seconds / wall / cores) and the encoder's duty
cycle (seconds inside the encoder worker's batch function / window seconds): a duty cycle near
1 means encoding bounds the stream count; decode is the rest of the CPU. ``--profile`` writes
a pyinstrument profile of the last N (every thread's Python frames sampled from the event loop
thread are not enough: decode and encode run in worker threads, so the duty cycle and CPU
split are the figures that name the bound).

    python -m bench.service_load --streams 4 8 16 24 --seconds 30
    python -m bench.service_load --model MobileCLIP2-S0 --random-weights --backend openvino \
        --streams 2 4 --seconds 20 --out bench/results/service-load-MobileCLIP2-S0-openvino.json
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
from agent.service.config import ServiceConfig
from agent.service.pipeline import Service
from agent.service.server import Server
from bench.needle_trace import NeedleTrace, summarise
from bench.service_needles import NEEDLE_EVERY, latencies, make_needle_video, needle_threshold, watch_needles
from bench.service_probes import GcPauses, QueueWaits, ThreadCpu, legacy_round_robin, time_trims
from streams.file import FileSpec

BUNNY = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bigbuckbunny.mp4"
RESULTS = Path(__file__).resolve().parent / "results" / "service_load.json"
WARMUP = 10.0
"""Seconds after the streams are added before the measured window starts."""
GRACE = 15.0
"""Seconds the watch keeps listening after the window: a needle due at its end is still counted."""
NEEDLE_STREAMS = 8
"""Needle streams (extra to the N cameras), started 12 s / 8 apart: ~40 needles a minute."""


def _settings(prescreen: EncoderConfig | None = None, batch_size: int = 16) -> Settings:
    return Settings(
        prescreen=prescreen or EncoderConfig(model="tiny-random", allow_random=True, batch_size=batch_size),
        index=IndexConfig(fps=2.0, grid=2, store_bytes=256 * 1024**2),
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


async def run(
    n: int,
    seconds: float,
    work: Path,
    needle_video: Path,
    needle_photo: Path,
    settings: Settings | None = None,
    needle_streams: int = NEEDLE_STREAMS,
    trim_growth_mb: float | None = None,
    legacy_rr: bool = False,
) -> dict[str, Any]:
    from bench.speed import reset_peak_rss, rss_mb

    cfg = ServiceConfig(port=0, index=work / f"index-{n}", snapshot_seconds=3600.0)
    if trim_growth_mb is not None:
        cfg = cfg.model_copy(update={"heap_trim_growth_mb": trim_growth_mb})
    trim_walls: list[tuple[float, float]] = []
    specs = [FileSpec(id=f"cam{i}", kind="file", path=str(BUNNY), realtime=True, loop=True) for i in range(n)]
    needles = [f"needle{i}" for i in range(needle_streams)]
    arrivals: list[tuple[str, float, float]] = []
    reset_peak_rss()
    async with Service(cfg, settings or _settings()) as svc:
        time_trims(svc, trim_walls)
        await svc.start()
        if legacy_rr and svc.worker is not None:
            legacy_round_robin(svc.worker)
        server = Server(svc.serving, cfg)
        port = await server.start()
        scores = await asyncio.to_thread(needle_threshold, svc, needle_photo)
        threads = ThreadCpu()
        threads.mark_native()  # the encoder has run: its runtime's threads exist, no decoder's yet
        traces = []
        for i, name in enumerate(needles):
            if i:  # staggered: needles of different streams fall at different times
                await asyncio.sleep(NEEDLE_EVERY / needle_streams)
            await svc.add_stream(
                FileSpec(id=name, kind="file", path=str(needle_video), realtime=True, loop=True)
            )
            traces.append(NeedleTrace(name))
            traces[-1].attach(svc)  # before the watch: every needle it can report is traced
        ready = asyncio.Event()
        url = f"ws://127.0.0.1:{port}"
        watcher = asyncio.create_task(
            watch_needles(url, needle_photo, scores["threshold"], needles, arrivals, ready)
        )
        await ready.wait()
        (watch_,) = svc.watches.values()
        base = rss_mb()  # model loaded, the needle streams running
        waits = QueueWaits(svc.worker) if svc.worker is not None else None
        for spec in specs:
            await svc.add_stream(spec)
        # Measure a steady-state window: stream start-up (opening, first keyframe) is not throughput.
        await asyncio.sleep(WARMUP)
        before = (await svc.shard.stats()).streams
        worker = svc.worker
        trimmer = svc.trimmer
        busy0, passes0, images0 = (
            (worker.busy_seconds, worker.passes, worker.images) if worker is not None else (0.0, 0, 0)
        )
        with GcPauses() as gcs:
            t0, c0 = time.time(), time.process_time()
            threads.start()
            await asyncio.sleep(seconds)
            elapsed, cpu = time.time() - t0, time.process_time() - c0
            thread_cpu = threads.summary(elapsed)
            busy = (worker.busy_seconds if worker is not None else 0.0) - busy0
            passes = (worker.passes if worker is not None else 0) - passes0
            images = (worker.images if worker is not None else 0) - images0
            after = (await svc.shard.stats()).streams
            end_rss = rss_mb()
            queue = waits.summary(t0, t0 + elapsed) if waits is not None else None
        await asyncio.sleep(GRACE)  # moments of needles due late in the window still arrive
        frames = {k: s.frames - (before[k].frames if k in before else 0) for k, s in after.items()}
        dropped = sum(s.dropped for s in after.values())
        clocks = {}
        for name in needles:
            st = svc.idx.streams[name].stats
            if st.first_wall is not None:
                clocks[name] = (st.first_wall, st.first_time or 0.0)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await server.close()
    expected = elapsed * 2.0
    cams = [frames[f"cam{i}"] for i in range(n)]
    matched, missed = latencies(arrivals, clocks, (t0, t0 + elapsed))
    lat = np.asarray([arrival - due for _, due, arrival in matched])
    rows = []
    by_stream = {trace.stream: trace for trace in traces}
    for stream, due, arrival in matched:
        wall, first_t = clocks[stream]
        part = by_stream[stream].breakdown(
            [due], [arrival], wall0=wall - first_t, qvec=watch_.qvec, threshold=scores["threshold"]
        )
        rows += [{**r, "stream": stream, "due_s": round(due - t0, 1)} for r in part["needles"]]
    rows.sort(key=lambda r: r["due_s"])
    return {
        "streams": n,
        "needle_streams": needle_streams,
        "seconds": round(elapsed, 1),
        "frames_expected_per_stream": round(expected, 1),
        "frames_min": min(cams),
        "frames_mean": round(float(np.mean(cams)), 1),
        "kept_up": bool(min(cams) >= 0.95 * expected),
        "dropped": dropped,
        "needle_matches": len(lat),
        "needle_missed": missed,
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3) if len(lat) else None,
        "latency_max_s": round(float(lat.max()), 3) if len(lat) else None,
        "cpu_utilisation": round(cpu / (elapsed * _cores()), 3),
        "encoder_duty_cycle": round(busy / elapsed, 3),
        "encoder_batches": passes,
        "encoder_mean_batch": round(images / passes, 2) if passes else None,
        "encoder_queue_wait": queue,
        "thread_cpu": thread_cpu,
        "heap_trims": {
            "growth_mb": cfg.heap_trim_growth_mb,
            "skipped_total": trimmer.stats.skipped if trimmer is not None else 0,
            "in_window": [
                (round(a - t0, 1), round(b - a, 3)) for a, b in trim_walls if t0 <= a <= t0 + elapsed
            ],
        },
        "gc": gcs.summary(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        **rss_mb(),
        "rss_base_mb": base.get("rss_mb"),
        "rss_per_stream_mb": round((end_rss.get("rss_mb", 0.0) - base.get("rss_mb", 0.0)) / n, 1),
        "needle_scores": {k: round(v, 7) for k, v in scores.items()},
        "needle_stages": summarise(rows),
    }


def main(argv: list[str] | None = None) -> None:
    from agent.cli.options import add_model_options
    from bench.args import add_device_option, encoder_from_args, pin_device, save_report
    from bench.run_haystack import git_commit, machine_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--streams", type=int, nargs="+", default=[4, 8, 16, 24])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--profile", type=Path, default=None, help="pyinstrument HTML of the last N")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--needle-streams", type=int, default=NEEDLE_STREAMS, help="extra to the N cameras")
    p.add_argument("--batch-size", type=int, default=16, help="the encoder's (and worker's) max batch")
    p.add_argument("--legacy-rr", action="store_true", help="A/B: the worker's old round-robin start")
    p.add_argument(
        "--trim-growth-mb",
        type=float,
        default=None,
        help="ServiceConfig.heap_trim_growth_mb (0: every period)",
    )
    a = p.parse_args(argv)
    pin_device(a)
    explicit = "--model" in (sys.argv[1:] if argv is None else argv)  # else tiny-random, as before
    prescreen = encoder_from_args(a).model_copy(update={"batch_size": a.batch_size}) if explicit else None
    settings = _settings(prescreen, a.batch_size)
    machine = machine_info()  # load average at the start
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        needle_video = make_needle_video(work / "needle.mp4")
        from tests.videos import photos

        for i, n in enumerate(a.streams):
            coro = run(
                n,
                a.seconds,
                work,
                needle_video,
                photos(1)[0],
                settings,
                a.needle_streams,
                a.trim_growth_mb,
                a.legacy_rr,
            )
            if a.profile is not None and i == len(a.streams) - 1:
                from pyinstrument import Profiler

                with Profiler(async_mode="disabled") as prof:
                    row = asyncio.run(coro)
                a.profile.parent.mkdir(parents=True, exist_ok=True)
                a.profile.write_text(prof.output_html())
            else:
                row = asyncio.run(coro)
            print(json.dumps(row), flush=True)
            rows.append(row)
    argv_used = sys.argv[1:] if argv is None else argv
    report = {
        "bench": "service_load",
        "command": " ".join(["python", "-m", "bench.service_load", *argv_used]),
        "model": settings.prescreen.model,
        "random_weights": settings.prescreen.random_weights,
        "backend": settings.prescreen.backend,
        "threads": settings.prescreen.threads,
        "fps": 2.0,
        "batch_size": settings.prescreen.batch_size,
        "legacy_round_robin": a.legacy_rr,
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "rows": rows,
    }
    save_report(a.out, report)


if __name__ == "__main__":
    main()
