"""Ingest cost per hour of video with each channel on and off, on a coarse archive pass.

Run it as ``python -m bench.channel_cost --model MobileCLIP2-S0 --random-weights --backend openvino``.

One clip, four passes — visual only; visual + speech; visual + on-screen text; all three — each
exactly as ``vmr ingest`` runs it (``streams.file.decode_media`` with keyframes only, decode in
its own thread, ``VideoIndex.ingest`` with the channels the settings enable), into a fresh index.
The figure is CPU seconds (every thread of the process, plus its children: pytesseract runs
Tesseract as one subprocess per read) per hour of video,
extrapolated linearly from the clip (``--seconds``, 10 minutes by default: the machine is
shared, an hour per configuration would take the afternoon), and each configuration's ratio to
visual only. CPU seconds, not wall seconds: on a machine shared with other work they are what
the pass itself costs.

The clip: the synthetic haystack of :mod:`bench.haystack` (photos with camera motion, a
keyframe every 2 s, cached) remuxed with a sound track: espeak-ng sentences in two voices and
speeds filling ``--speech-density`` of the time (30 % by default), evenly spread, in white noise
``--snr`` dB below the speech. No text is drawn on the pictures: the OCR cost is that of the
reads the gate allows (scene changes, keyframes, heartbeat), which text does not change much.

Models are loaded (and whisper and Tesseract run once) before any pass, so no pass pays for
loading. Real models: faster-whisper base int8 with its VAD (``--window`` seconds of sound per
call, default ``SpeechConfig.recorded_window_seconds``: ingest reads a file, a recorded source,
whose long windows the VAD packs; live sources use 30-s windows, ``bench.speech_speed``),
Tesseract 5. MiniLM is left out (``semantic=False``): it embeds spans at query time only, so
ingest costs the same with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from bench.args import RESULTS, add_device_option, pin_device

SENTENCES = [
    "the truck is waiting at gate four",
    "the north entrance will close at six tonight",
    "the fire alarm will be tested at noon",
    "visitors must sign in at the front desk",
    "the delivery from Hamburg is two hours late",
    "please move the forklift away from the loading dock",
]
VOICES = [("en", 160), ("en-us", 140), ("en", 190), ("en-us", 175)]
RATE = 16_000
CONFIGS = {
    "visual": (False, False),
    "visual+speech": (True, False),
    "visual+ocr": (False, True),
    "visual+speech+ocr": (True, True),
}
"""Configuration name -> (speech on, OCR on)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.cli.options import add_model_options
    from bench.haystack import DEFAULT_CACHE, DEFAULT_DATA

    p = argparse.ArgumentParser(prog="python -m bench.channel_cost", description=__doc__.split("\n")[0])
    add_model_options(p)
    add_device_option(p)
    p.add_argument("--seconds", type=float, default=600.0, help="clip length in seconds (>= 60)")
    p.add_argument("--height", type=int, choices=[480, 720], default=480)
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate of the ingest")
    p.add_argument("--speech-density", type=float, default=0.3, help="share of the time with speech")
    p.add_argument("--snr", type=float, default=20.0, help="speech to noise, dB")
    p.add_argument(
        "--window",
        type=float,
        default=None,
        help="seconds of sound per whisper call (SpeechConfig.recorded_window_seconds: ingest reads a file)",
    )
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS)
    )
    p.add_argument(
        "--ocr-short-side",
        type=int,
        default=480,
        help="pixels Tesseract's pictures are enlarged to (OcrConfig)",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder (imagenet_sample, coco)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the clip is built and kept")
    p.add_argument("--out", type=Path, default=RESULTS / "channel_cost.json")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "visual" not in args.configs or not set(args.configs) <= set(CONFIGS):
        p.error(f"--configs must include visual and name only {', '.join(CONFIGS)}")
    args.argv = ["python", "-m", "bench.channel_cost", *(sys.argv[1:] if argv is None else argv)]
    return args


def _speak(text: str, voice: str, speed: int, folder: Path) -> np.ndarray:
    wav = folder / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True, timeout=60)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with av.open(str(wav)) as c:
        parts = [p.to_ndarray().reshape(-1) for f in c.decode(audio=0) for p in resampler.resample(f)]
    x = np.concatenate(parts)
    voiced = np.flatnonzero(np.abs(x) > 0.02)
    return x[voiced[0] : voiced[-1] + 1].astype(np.float32)


def sound_track(seconds: float, density: float, snr: float, folder: Path) -> tuple[np.ndarray, float]:
    """(16 kHz mono track, speech seconds): sentences spread evenly until ``density`` of the time."""
    track, lines = spoken_track(seconds, density, snr, folder)
    return track, sum(end - start for start, end, _ in lines)


def spoken_track(
    seconds: float, density: float, snr: float, folder: Path
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """:func:`sound_track` with what was said where: (track, [(start s, end s, sentence)])."""
    voices = [_speak(s, *VOICES[i % len(VOICES)], folder) for i, s in enumerate(SENTENCES)]
    mean_len = float(np.mean([len(v) for v in voices])) / RATE
    count = max(1, round(seconds * density / mean_len))
    step = seconds / count
    track = np.zeros(int(seconds * RATE), np.float32)
    lines = []
    for k in range(count):
        v = voices[k % len(voices)]
        i = int((k * step + 0.5) * RATE)
        piece = v[: max(0, len(track) - i)]
        track[i : i + len(piece)] += piece
        lines.append((i / RATE, (i + len(piece)) / RATE, SENTENCES[k % len(voices)]))
    rms = float(np.sqrt(np.mean(np.concatenate(voices) ** 2)))
    rng = np.random.default_rng(0)
    track += rng.standard_normal(len(track)).astype(np.float32) * rms / 10 ** (snr / 20)
    return np.clip(track, -1.0, 1.0), lines


def with_sound(video: Path, sound: np.ndarray, out: Path) -> Path:
    """``video``'s packets copied, ``sound`` (16 kHz mono) added as AAC, interleaved by time."""
    block = 1024
    with av.open(str(video)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("aac", rate=RATE)
        aout.layout = "mono"
        done = 0

        def audio_until(t: float | None) -> None:
            nonlocal done
            while done * block < len(sound) and (t is None or done * block / RATE <= t):
                piece = sound[done * block : (done + 1) * block].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = RATE, done * block, Fraction(1, RATE)
                dst.mux(aout.encode(frame))
                done += 1

        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            audio_until(float(packet.dts * (vin.time_base or Fraction(1, 90_000))))
            packet.stream = vout
            dst.mux(packet)
        audio_until(None)
        dst.mux(aout.encode(None))
    return out


def one_pass(clip: Path, settings: Any, seconds: float) -> dict[str, Any]:
    """Ingest ``clip`` coarsely into a fresh index; CPU and wall seconds and what each channel kept."""
    from agent.cli.options import prefetch
    from agent.index.video_index import VideoIndex
    from streams.file import decode_media

    with tempfile.TemporaryDirectory(prefix="vmr-bench-") as tmp:
        idx = VideoIndex.create(Path(tmp), settings)
        try:
            warm_up(idx)
            media = decode_media(
                clip,
                stream="clip",
                fps=settings.index.fps,
                keyframes_only=True,
                short_side=idx.prescreen.image_size,
                audio=settings.speech.enabled,
            )
            c0, t0 = cpu_seconds(), time.perf_counter()
            idx.ingest(prefetch(media))
            cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
            info = idx.info()["streams"]["clip"]
        finally:
            idx.close()
    hours = seconds / 3600.0
    row: dict[str, Any] = {
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "cpu_s_per_hour": round(cpu / hours, 1),
        "wall_x_realtime": round(seconds / wall, 1),
        "frames": info["frames"],
        "encoder_passes": info["encoder_passes"],
    }
    for name in ("speech", "ocr"):
        if name in info:
            row[name] = info[name]
    return row


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's threads and of its finished children.

    Children count: pytesseract runs Tesseract as a subprocess per read.
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def warm_up(idx: Any) -> None:
    """Load whisper and Tesseract (and run each once) before the timing."""
    if idx.transcriber is not None:
        idx.transcriber.transcribe(np.zeros(RATE, np.float32))
    if idx.reader is not None:
        idx.reader.read_batch([np.zeros((256, 256, 3), np.uint8)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.config import IndexConfig, OcrConfig, Settings, SpeechConfig
    from bench import haystack
    from bench.args import encoder_from_args
    from bench.run_haystack import git_commit, machine_info

    enc = encoder_from_args(args)
    params = haystack.make_params(duration=args.seconds, fps=25, height=args.height, needles=2)
    built = haystack.build(params, args.data, args.cache)
    clip = args.cache / f"{built.video.parent.name}-sound-{args.speech_density:g}-{args.snr:g}db.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        sound, said = sound_track(params.duration, args.speech_density, args.snr, Path(tmp))
    if not clip.exists():
        with_sound(built.video, sound, clip.with_suffix(".part.mp4")).rename(clip)
    report: dict[str, Any] = {
        "bench": "channel_cost",
        "command": " ".join(args.argv),
        "machine": machine_info(),
        "git": git_commit(),
        "clip": {
            "kind": "synthetic haystack (bench/haystack.py) + espeak-ng sentences in white noise",
            "seconds": params.duration,
            "height": params.height,
            "speech_seconds": round(said, 1),
            "speech_density": round(said / params.duration, 3),
            "snr_db": args.snr,
        },
        "pass": "coarse: keyframes only (one every 2 s), decode in its own thread, as vmr ingest",
        "extrapolated": f"per hour = clip figures x {3600 / params.duration:g} (linear)",
        "speech_window_s": SpeechConfig().recorded_window_seconds if args.window is None else args.window,
        "speech_batch_size": SpeechConfig().batch_size,
        "models": "visual: "
        + enc.model
        + (" random weights" if enc.random_weights else "")
        + f" ({enc.backend}); speech: faster-whisper base int8 + VAD; ocr: Tesseract 5 eng",
        "ocr_short_side": args.ocr_short_side,
    }
    passes: dict[str, dict[str, Any]] = {}
    window = {} if args.window is None else {"recorded_window_seconds": args.window}
    for name in args.configs:
        speech, ocr = CONFIGS[name]
        settings = Settings(
            prescreen=enc,
            index=IndexConfig(fps=args.fps),
            speech=SpeechConfig(enabled=speech, semantic=False, **window),
            ocr=OcrConfig(enabled=ocr, semantic=False, min_short_side=args.ocr_short_side),
        )
        passes[name] = one_pass(clip, settings, params.duration)
        print(name, json.dumps(passes[name]), file=sys.stderr, flush=True)
    base = passes["visual"]["cpu_s"]
    for row in passes.values():
        row["cpu_vs_visual"] = round(row["cpu_s"] / base, 2) if base else None
    report["passes"] = passes
    both = passes.get("visual+speech+ocr", {}).get("cpu_vs_visual")
    report["summary"] = {
        "cpu_s_per_hour": {name: row["cpu_s_per_hour"] for name, row in passes.items()},
        "cpu_vs_visual": {name: row["cpu_vs_visual"] for name, row in passes.items()},
        "target": "both channels add <= 50 % to the coarse pass (cpu_vs_visual <= 1.5)",
        "target_met": None if both is None else both <= 1.5,
    }
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_device(args)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
