"""Resident memory per live decoder: FFmpeg threading and glibc's arenas (issue 11, peak RSS).

Each variant runs in a fresh child process that opens ``--decoders`` looping
720p25 H.264 decoders (``bigbuckbunny.mp4``), each in its own thread as the
service runs them, and samples every 12th picture to RGB at 224 px (2 fps of
25). Once every decoder has decoded ``--frames`` pictures, with all of them
still open, the child reports (VmRSS now - VmRSS before the first opened) /
decoders. Variants, run interleaved for ``--rounds`` rounds:

* ``auto``: frame + slice threads (``DecoderThreads`` AUTO), glibc's default arenas;
* ``slice``: slice threads only (what paced replays and RTSP use);
* ``slice+heap``: slice threads and :func:`agent.process_memory.limit_heap` (2 arenas, 128 KiB
  mmap threshold: the service's defaults) before the threads start.

    python -m bench.decoder_rss --decoders 20 --frames 300 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.args import save_report

BUNNY = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bigbuckbunny.mp4"
RESULTS = Path(__file__).resolve().parent / "results" / "decoder_rss.json"
VARIANTS = ("auto", "slice", "slice+heap")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(variant: str, decoders: int, frames: int) -> float:
    """MiB of RSS per open decoder for ``variant`` (run in a fresh process)."""
    from streams.decode import Picture, decode, open_media
    from streams.sampler import DecoderThreads, to_rgb

    if variant == "slice+heap":
        from agent.process_memory import limit_heap

        limit_heap(2, 128 * 1024)
    threads: DecoderThreads = "AUTO" if variant == "auto" else "SLICE"
    before = _rss_mib()
    done = threading.Barrier(decoders + 1)
    release = threading.Event()

    def run() -> None:
        count = 0
        while True:
            container, vstream = open_media(BUNNY)
            for picture in decode(container, vstream, label=BUNNY, threads=threads):
                if not isinstance(picture, Picture):
                    continue
                count += 1
                if count % 12 == 0:
                    to_rgb(picture.frame, 224)
                if count == frames:
                    done.wait()
                    release.wait()  # hold the decoder open while the parent samples
                    container.close()
                    return
            container.close()  # the clip loops, as a replayed camera does

    workers = [threading.Thread(target=run, daemon=True) for _ in range(decoders)]
    for w in workers:
        w.start()
    done.wait()
    per = (_rss_mib() - before) / decoders
    release.set()
    for w in workers:
        w.join()
    return per


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", type=int, default=20)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.child is not None:
        print(json.dumps({"per_decoder_mib": child(a.child, a.decoders, a.frames)}))
        return
    from bench.run_haystack import git_commit, machine_info

    machine = machine_info()
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    root = str(Path(__file__).resolve().parents[1])
    for _ in range(a.rounds):
        for variant in VARIANTS:
            args = ["--child", variant, "--decoders", str(a.decoders), "--frames", str(a.frames)]
            out = subprocess.run(
                [sys.executable, "-m", "bench.decoder_rss", *args],
                cwd=root,
                env={**os.environ, "PYTHONPATH": root},
                capture_output=True,
                text=True,
                check=True,
            )
            runs[variant].append(round(json.loads(out.stdout.splitlines()[-1])["per_decoder_mib"], 2))
            print(variant, runs[variant][-1], flush=True)
    argv_used = sys.argv[1:] if argv is None else argv
    report: dict[str, Any] = {
        "bench": "decoder_rss",
        "command": " ".join(["python", "-m", "bench.decoder_rss", *argv_used]),
        "decoders": a.decoders,
        "frames": a.frames,
        "machine": {**machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "per_decoder_mib": runs,
        "median_mib": {v: round(statistics.median(r), 2) for v, r in runs.items()},
    }
    save_report(a.out, report)


if __name__ == "__main__":
    main()
