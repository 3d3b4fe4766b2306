"""``vmr ingest VIDEO --index DIR``: turn a video file into a bounded index, with a progress bar.

Registered into the main CLI by :func:`register`; prints a one-line summary
(or JSON with ``--json``) of what was read and how fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.options import (
    AudioTally,
    add_index_options,
    add_model_options,
    prefetch,
    settings_from_args,
    stream_id_for,
)
from agent.errors import translating_stream_errors


def register(sub: Any) -> None:
    """Add ``vmr ingest`` to the ``vmr`` sub-commands (``sub``: its subparsers action)."""
    pi = sub.add_parser("ingest", help="turn a video into a bounded index")
    pi.add_argument("video")
    pi.add_argument("--index", required=True)
    pi.add_argument("--stream", default=None, help="stream id (default: from the file name)")
    pi.add_argument("--json", action="store_true")
    pi.add_argument("--quiet", action="store_true")
    pi.add_argument(
        "--decode-threads",
        type=int,
        choices=range(65),
        default=0,
        metavar="N",
        help="FFmpeg decoder threads, 0..64 (0: FFmpeg's choice; 1: least CPU beside a CPU encoder)",
    )
    pi.add_argument(
        "--encoder-nice",
        type=int,
        choices=range(20),
        default=None,
        metavar="N",
        help="niceness added to the encoder's threads, 0..19, so that the decoder gets the cores first "
        "(Linux; default 0: unchanged; 5 gained a few per cent at most: bench/README.md)",
    )
    add_model_options(pi)
    add_index_options(pi)
    pi.set_defaults(func=cmd_ingest)


def cmd_ingest(a: argparse.Namespace) -> int:
    """Ingest ``a.video`` into the index at ``a.index``; prints the summary (notes on stderr)."""
    from agent.index.video_index import VideoIndex
    from streams.decode import Damage
    from streams.file import decode_media, probe

    settings = settings_from_args(a)
    video = Path(a.video)
    with translating_stream_errors():
        info = probe(video)
    sid = a.stream or stream_id_for(video)
    report = Damage()
    t_load = time.perf_counter()
    with VideoIndex.create(Path(a.index), settings) as idx:
        t0 = time.perf_counter()
        frames = decode_media(
            video,
            stream=sid,
            fps=settings.index.fps,
            keyframes_only=settings.index.keyframes_only,
            short_side=idx.prescreen.image_size,
            audio=settings.speech.enabled,
            damage=report,
            thread_count=a.decode_threads,
        )
        progress = _Progress(info.duration, t0, quiet=a.quiet)
        tally = AudioTally()
        try:
            with translating_stream_errors():
                idx.ingest(prefetch(tally.through(frames)), on_frame=progress.on_frame)
        finally:
            progress.bar.close()
    elapsed = time.perf_counter() - t0
    # What was read, not what the header says (raw streams declare nothing; headers can be wrong).
    seconds = report.end or info.duration
    notes = report.notes()
    if settings.index.keyframes_only and info.duration - seconds > max(2.0, 0.1 * info.duration):
        # A clip with one keyframe (or a long GOP at the end) leaves most of it out of a coarse pass.
        notes.append(
            f"keyframe pass: the last keyframe ends at {seconds:.2f}s of {info.duration:.2f}s; "
            "what follows it is not indexed (ingest without --keyframes to index every frame)"
        )
    if settings.speech.enabled and not tally.chunks:
        notes.append("no audio was decoded (no audio track?): the speech channel heard nothing")
    for note in notes:
        print(f"note: {video}: {note}", file=sys.stderr)
    summary = {
        "stream": sid,
        "video_seconds": round(seconds, 3),
        "model_load_seconds": round(t0 - t_load, 3),
        "elapsed_seconds": round(elapsed, 3),
        "x_realtime": round(seconds / elapsed, 2) if elapsed > 0 else None,
        "frames": progress.frames,
        **_encoder_summary(idx),
        "notes": notes,
    }
    print(json.dumps(summary) if a.json else " ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


class _Progress:
    """The ingest's progress bar: stream seconds done of ``total``, frames per second, x realtime."""

    def __init__(self, total: float, t0: float, *, quiet: bool) -> None:
        """``t0``: ``perf_counter`` time the ingest started (the rates' origin)."""
        from tqdm import tqdm

        self.t0 = t0
        self.seconds = 0.0
        """Stream time of the last frame that moved the bar."""
        self.frames = 0
        self.bar = tqdm(
            total=round(total, 1),
            unit="s",
            disable=quiet,
            dynamic_ncols=True,
            mininterval=0.5,
            # Seconds summed from 0.1-s steps drift (9.600000000000001/10.0): print one decimal.
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}{postfix}]",
        )

    def on_frame(self, frame: Any) -> None:
        """One more frame ingested (``frame.t``: its stream time)."""
        self.frames += 1
        step = frame.t - self.seconds
        if step > 0:
            self.bar.update(round(step, 1))
            self.seconds = frame.t
        el = time.perf_counter() - self.t0
        self.bar.set_postfix_str(f"{self.frames / el:.0f} fr/s, {frame.t / el:.1f}x realtime")


def _encoder_summary(idx: Any) -> dict[str, Any]:
    """The encoder part of the ingest summary: name, backend, precision, meaningless."""
    return {
        "encoder": idx.prescreen.name,
        "backend": idx.prescreen.backend.name,
        # f32 or bf16 (OpenVINO's inference precision; torch runs f32); None for a pool's encoder.
        "precision": getattr(idx.prescreen.backend, "precision", None),
        "meaningless": idx.prescreen.meaningless or idx.refine.meaningless,
    }
