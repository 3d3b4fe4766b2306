"""Archive pass over a 720p25 H.264 file: coarse pass x realtime, full pass vs decode-only, CPU use.

Run it as ``python -m bench.archive_pass --model MobileCLIP2-S0 --random-weights --backend openvino``
(``--backend torch --device cuda`` on a GPU machine; ``--seconds`` sizes the clip).

The clip is a synthetic haystack (:mod:`bench.haystack`: photos with camera motion, dissolves,
sensor grain; libx264 ``ultrafast``, a keyframe every 2 s as IP cameras use), built once and
cached under ``bench/cache/``. On it, in one process and in this order:

* decode-only passes (keyframes only, then every frame) with the sampling (2 fps) and RGB
  conversion the ingest uses (:func:`bench.speed.decode_only`);
* ingest passes through ``VideoIndex.ingest`` (:func:`bench.speed.ingest_pass`): the coarse
  (keyframes) pass and the full pass, with decode in its own thread as ``vmr ingest`` runs it
  and, for comparison, with decode and encoding alternating in one thread (``--serial``).

``--ab-decode-threads N`` adds the full pass with N FFmpeg decoder threads to every round (an
interleaved A/B of ``vmr ingest --decode-threads``; ``--decode-threads`` sets it for every ingest
pass). ``--ab-encoder-threads N`` likewise adds the full pass with the encoder compiled for N
inference threads (an A/B of ``--threads``: the encoder's threads compete with the decoder's).
``--ab-encoder-nice N...`` and ``--ab-encoder-sched batch|idle`` add the full pass with the
encoder's threads that much nicer, or on that policy (``IndexConfig.encoder_nice``/``encoder_sched``,
:mod:`agent.thread_priority`); ``--encoder-nice`` sets it for every pass (default: the config's, as
``vmr ingest``). ``"paired_rounds"`` gives decode-only / full pass per round, for each full pass.
Every ingest pass records ``waits`` (:func:`bench.speed.ingest_pass`): which stage waited for which. ``--profile`` ends with one serial pass per mode and its per-stage CPU
(:mod:`bench.stage_profile`: demux/decode, swscale conversion, cheap index, frame store, tiling,
encoder, memory) under ``"profile"``.

The passes run in ``--repeat`` interleaved rounds and each keeps its median round (by wall
time). Each pass records wall seconds, process CPU seconds (every thread: ``time.process_time``) and
CPU utilisation = CPU seconds / (wall seconds x cores): 1.0 means every core busy throughout.
The encoder is loaded before the first pass, so no pass pays for it. The load average at start
and end goes into the JSON: on a shared machine the ratios of one run are the robust figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.args import add_device_option, pin_device, write_device_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.cli.options import add_model_options
    from bench.haystack import DEFAULT_CACHE, DEFAULT_DATA

    p = argparse.ArgumentParser(prog="python -m bench.archive_pass", description=__doc__.split("\n")[0])
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--seconds", type=float, default=180.0, help="clip length in seconds (>= 60)")
    p.add_argument("--height", type=int, choices=[480, 720], default=720)
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate of the ingest")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the median round is kept")
    p.add_argument("--serial", action="store_true", help="also run the full pass without the decode thread")
    p.add_argument(
        "--decode-threads",
        type=int,
        default=0,
        help="FFmpeg decoder threads of the ingest passes (0: FFmpeg's choice, as vmr ingest)",
    )
    p.add_argument(
        "--ab-decode-threads",
        type=int,
        default=None,
        metavar="N",
        help="also run the full pass with N decoder threads, interleaved (an A/B of the setting)",
    )
    p.add_argument(
        "--ab-encoder-threads",
        type=int,
        default=None,
        metavar="N",
        help="also run the full pass with the encoder on N inference threads, interleaved",
    )
    p.add_argument(
        "--ab-encoder-nice",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also run the full pass with the encoder's threads N steps nicer (each N), interleaved",
    )
    p.add_argument(
        "--ab-encoder-sched",
        choices=["batch", "idle"],
        nargs="+",
        default=[],
        help="also run the full pass with the encoder's threads on this scheduling policy, interleaved",
    )
    p.add_argument(
        "--encoder-nice",
        type=int,
        default=None,
        help="niceness added to the encoder's threads in every ingest pass (default: "
        "IndexConfig.encoder_nice's, as vmr ingest; --ab-encoder-nice 0 adds the pass without)",
    )
    p.add_argument(
        "--ab-first",
        action="store_true",
        help="run the A/B passes of a round before the plain full pass (order effects)",
    )
    p.add_argument(
        "--only-full",
        action="store_true",
        help="skip the keyframe passes (decode_keyframes, ingest_coarse): full pass A/Bs only",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, one serial pass of each mode with per-stage CPU (bench.stage_profile)",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder (imagenet_sample, coco)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the clip is built and kept")
    p.add_argument(
        "--out", type=Path, default=None, help="result JSON (default bench/results/archive-pass-...)"
    )
    args = p.parse_args(argv)
    args.argv = ["python", "-m", "bench.archive_pass", *(sys.argv[1:] if argv is None else argv)]
    return args


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` and add its wall and CPU seconds and CPU utilisation to what it returns."""
    c0, t0 = time.process_time(), time.perf_counter()
    row = fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    row.update(
        wall_s=round(wall, 2),
        cpu_s=round(cpu, 2),
        cpu_utilisation=round(cpu / (wall * cores()), 3) if wall else None,
    )
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.config import IndexConfig, Settings
    from agent.models.encoder import load_encoder
    from bench import haystack
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info
    from bench.speed import decode_only, ingest_pass, rss_mb
    from bench.stage_profile import profile_ingest

    enc_cfg = encoder_from_args(args)
    nice = {} if args.encoder_nice is None else {"encoder_nice": args.encoder_nice}
    settings = Settings(prescreen=enc_cfg, index=IndexConfig(fps=args.fps, **nice))
    threads: int = args.decode_threads
    params = haystack.make_params(duration=args.seconds, fps=25, height=args.height, needles=2)
    report: dict[str, Any] = {
        "bench": "archive_pass",
        "command": " ".join(args.argv),
        "machine": machine_info(),
        "git": git_commit(),
        "cores": cores(),
        "params": json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "argv"}, default=str)),
    }
    t0 = time.perf_counter()
    clip = haystack.build(params, args.data, args.cache)
    report["clip"] = {
        "kind": "synthetic haystack (bench/haystack.py), libx264 ultrafast, keyframe every 2 s",
        "seconds": params.duration,
        "height": params.height,
        "width": params.width,
        "fps": params.fps,
        "bytes": clip.video.stat().st_size,
        "build_or_fetch_s": round(time.perf_counter() - t0, 1),
    }
    ab_settings = None
    if args.ab_encoder_threads is not None:
        # Loaded first: loading sets torch's global thread count, the main encoder's load resets it.
        ab_cfg = enc_cfg.model_copy(update={"threads": args.ab_encoder_threads})
        load_encoder(ab_cfg)
        ab_settings = settings.model_copy(update={"prescreen": ab_cfg})
    t0 = time.perf_counter()
    enc = load_encoder(enc_cfg)
    report["model_load_s"] = round(time.perf_counter() - t0, 2)
    report["encoder"] = {
        "name": enc.name,
        "backend": enc.backend.name,
        "precision": getattr(enc.backend, "precision", None),
        "device": str(getattr(enc.backend, "device", "cpu")),
        "meaningless": enc.meaningless,
        "threads": enc_cfg.threads,
    }
    short = enc.image_size
    duration = params.duration
    passes: dict[str, dict[str, Any]] = {}

    def decode(keyframes: bool) -> dict[str, Any]:
        return decode_only(clip.video, fps=args.fps, keyframes_only=keyframes, short_side=short)

    def ingest(
        keyframes: bool, overlap: bool, decode_threads: int = threads, use: Settings = settings
    ) -> dict[str, Any]:
        figures, _ = ingest_pass(
            clip.video,
            use,
            duration=duration,
            keyframes_only=keyframes,
            overlap=overlap,
            decode_threads=decode_threads,
        )
        figures.pop("marks", None)
        figures["decode_threads"] = decode_threads
        figures["encoder_threads"] = use.prescreen.threads
        return figures

    def full_with(**update: Any) -> Callable[[], dict[str, Any]]:
        use = settings.model_copy(update={"index": settings.index.model_copy(update=update)})
        return lambda: ingest(False, True, use=use)

    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if not args.only_full:
        plan += [("decode_keyframes", lambda: decode(True)), ("ingest_coarse", lambda: ingest(True, True))]
    plan.append(("decode_full", lambda: decode(False)))
    ab_plan: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if args.serial:
        ab_plan.append(("ingest_full_serial", lambda: ingest(False, False)))
    if args.ab_decode_threads is not None:
        ab = args.ab_decode_threads
        ab_plan.append((f"ingest_full_decode_threads_{ab}", lambda: ingest(False, True, ab)))
    if ab_settings is not None:
        abs_ = ab_settings
        ab_plan.append(
            (f"ingest_full_encoder_threads_{args.ab_encoder_threads}", lambda: ingest(False, True, use=abs_))
        )
    for nice in args.ab_encoder_nice:
        ab_plan.append((f"ingest_full_encoder_nice_{nice}", full_with(encoder_nice=nice)))
    for policy in args.ab_encoder_sched:
        ab_plan.append((f"ingest_full_encoder_sched_{policy}", full_with(encoder_sched=policy)))
    full = ("ingest_full", lambda: ingest(False, True))
    plan += [*ab_plan, full] if args.ab_first else [full, *ab_plan]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    for _ in range(args.repeat):  # interleaved rounds: a burst of load hits every pass alike
        for name, fn in plan:
            row = timed(fn)
            row["x_realtime_wall"] = round(duration / row["wall_s"], 1)
            rounds[name].append(row)
            print(name, json.dumps(row), file=sys.stderr, flush=True)
    for name, rows in rounds.items():
        passes[name] = median_row(rows)
        passes[name]["wall_s_rounds"] = [row["wall_s"] for row in rows]
    report["passes"] = passes
    report["paired_rounds"] = paired(rounds)
    report["rss"] = rss_mb()
    if args.profile:
        report["profile"] = {
            "how": "one serial pass per mode after the timed rounds; stage seconds exclusive "
            "(bench/stage_profile.py); cpu_s counts every thread of the process meanwhile",
            "coarse": profile_ingest(clip.video, settings, keyframes_only=True, decode_threads=threads),
            "full": profile_ingest(clip.video, settings, keyframes_only=False, decode_threads=threads),
        }
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summary(passes)
    return report


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median wall time (the lower middle one of an even count)."""
    ordered = sorted(rows, key=lambda row: row["wall_s"])
    return dict(ordered[(len(ordered) - 1) // 2])


def paired(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Per round, decode-only wall / each full pass's wall: the A/B paired within a round."""
    dec = [row["wall_s"] for row in rounds["decode_full"]]
    return {
        f"{name}_vs_decode_only": [round(d / row["wall_s"], 3) for d, row in zip(dec, rows, strict=True)]
        for name, rows in rounds.items()
        if name.startswith("ingest_full")
    }


def summary(passes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue-11 figures: coarse x realtime, full vs decode-only, CPU utilisation."""
    full, dec = passes["ingest_full"], passes["decode_full"]
    out: dict[str, Any] = {
        "full_x_realtime": full["x_realtime_wall"],
        "full_vs_decode_only": round(dec["wall_s"] / full["wall_s"], 3),
        "cpu_utilisation": {name: row["cpu_utilisation"] for name, row in passes.items()},
    }
    if "ingest_coarse" in passes:
        out["coarse_x_realtime"] = passes["ingest_coarse"]["x_realtime_wall"]
        out["coarse_vs_decode_keyframes"] = round(
            passes["decode_keyframes"]["wall_s"] / passes["ingest_coarse"]["wall_s"], 3
        )
    if "ingest_full_serial" in passes:
        out["full_overlap_speedup"] = round(passes["ingest_full_serial"]["wall_s"] / full["wall_s"], 3)
    for name, row in passes.items():
        if name.startswith("ingest_full_") and name != "ingest_full_serial":
            out[f"{name}_vs_decode_only"] = round(dec["wall_s"] / row["wall_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_device(args)
    write_device_report(args, run(args), "archive-pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
