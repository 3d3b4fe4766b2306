"""How fast the speech channel alone turns sound into words, and what it still hears (issue 13).

Run it as ``python -m bench.speech_speed`` (defaults: 600 s at 30 % speech, SNR 20 dB, 2 threads).

The sound is :func:`bench.channel_cost.spoken_track`'s (espeak-ng sentences spread evenly in white
noise), so the figures match the speech pass of ``bench.channel_cost``. Each variant runs the
production path, nothing else: 1-s chunks into :class:`~agent.channels.speech.SpeechChannel`
(its windows), each window through :class:`~agent.models.whisper.WhisperTranscriber` (VAD, word
timestamps), the words back through the channel's guards. Variants differ in the window length
(30 s: live; longer: recorded sources) and in how whisper runs the VAD's chunks (one at a time,
or decoded together by faster-whisper's ``BatchedInferencePipeline``).

Figures per variant: wall and CPU seconds (every thread of the process), audio seconds per wall
second and per CPU second, and what was heard against what was said: share of the sentences'
words found in the utterances over them, sentences heard (half their words or more), and the
error of each heard sentence's first word time against its true start. Variants run interleaved
(ABBA over ``--rounds``) so the machine's load falls on all alike; medians are reported, with the
load average. ``--profile`` adds one run per variant under cProfile with a CPU-time clock: where
the CPU seconds go (VAD, mel features, encoder, decoder, word alignment, the channel's own code).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.args import RESULTS

RATE = 16_000
_SLACK = 1.0
"""Seconds around a sentence within which a word counts as heard over it."""


@dataclass(frozen=True)
class Variant:
    name: str
    window_s: float
    batch_size: int


VARIANTS = {
    "live30-seq": Variant("live30-seq", 30.0, 1),
    "live30-batched": Variant("live30-batched", 30.0, 8),
    "rec300-seq": Variant("rec300-seq", 300.0, 1),
    "rec300-batched": Variant("rec300-batched", 300.0, 8),
    "rec600-batched": Variant("rec600-batched", 600.0, 8),
}
"""Before: ``live30-seq`` (the channel as it was, 30-s windows, sequential whisper)."""

PROFILE_PARTS = {
    "vad": ("get_speech_timestamps",),
    "mel_features": ("feature_extractor.py",),
    "encoder": ("ctranslate2._ext.encode", "method 'encode'"),
    "decoder": ("ctranslate2._ext.generate", "method 'generate'", "generate_with_fallback"),
    "word_alignment": ("add_word_timestamps",),
    "channel_and_guards": ("agent/channels/speech.py",),
}
"""Part -> pieces of cProfile keys; a part is the largest cumulative time among its matches."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speech_speed", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="sound length in seconds")
    p.add_argument("--speech-density", type=float, default=0.3, help="share of the time with speech")
    p.add_argument("--snr", type=float, default=20.0, help="speech to noise, dB")
    p.add_argument("--threads", type=int, default=2, help="CTranslate2 threads (cpu_threads)")
    p.add_argument("--variants", default="live30-seq,rec300-seq,rec300-batched,live30-batched")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs every variant once)")
    p.add_argument("--profile", action="store_true", help="one more run per variant under cProfile")
    p.add_argument("--out", type=Path, default=RESULTS / "speech_speed.json")
    args = p.parse_args(argv)
    args.variants = [VARIANTS[v.strip()] for v in args.variants.split(",") if v.strip()]
    args.argv = ["python", "-m", "bench.speech_speed", *(sys.argv[1:] if argv is None else argv)]
    return args


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def heard(utterances: list[Any], lines: list[tuple[float, float, str]]) -> dict[str, Any]:
    """What the transcript holds of each said sentence (see the module docstring)."""
    found = total = sentences = 0
    errors: list[float] = []
    for start, end, text in lines:
        said = _words(text)
        over = [
            (t0, w)
            for u in utterances
            for t0, t1, w in u.words
            if t1 >= start - _SLACK and t0 <= end + _SLACK
        ]
        got = [w for _, w in over]
        words = [x for w in got for x in _words(w)]
        hit = sum(1 for w in set(said) if w in words)
        found += hit
        total += len(set(said))
        if over and hit * 2 >= len(set(said)):
            sentences += 1
            errors.append(abs(min(t0 for t0, _ in over) - start))
    return {
        "word_recall": round(found / total, 3) if total else None,
        "sentences_heard": sentences,
        "sentences": len(lines),
        "start_error_s_median": round(statistics.median(errors), 3) if errors else None,
        "start_error_s_p90": round(float(np.percentile(errors, 90)), 3) if errors else None,
    }


def one_run(track: np.ndarray, variant: Variant, transcriber: Any) -> tuple[dict[str, Any], list[Any]]:
    """The channel on ``track`` with ``variant``'s window: CPU and wall seconds, and its utterances."""
    from agent.channels.speech import SpeechChannel
    from agent.config import SpeechConfig
    from streams.media import AudioChunk

    ch = SpeechChannel("bench", SpeechConfig(window_seconds=variant.window_s, semantic=False))
    c0, t0 = _cpu(), time.perf_counter()
    items = []
    for a in range(0, len(track), RATE):
        chunk = AudioChunk(stream="bench", t=a / RATE, samples=track[a : a + RATE], sample_rate=RATE)
        items += ch.push_audio(chunk)
        # As the index does: each window goes to whisper as it fills.
        for item in items:
            ch.commit(item, transcriber.transcribe_batch([item.payload])[0])
        items = []
    for item in ch.flush():
        ch.commit(item, transcriber.transcribe_batch([item.payload])[0])
    cpu, wall = _cpu() - c0, time.perf_counter() - t0
    return {"cpu_s": cpu, "wall_s": wall, "windows": ch.speech.windows}, ch.utterances


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def profile(track: np.ndarray, variant: Variant, transcriber: Any) -> dict[str, Any]:
    """CPU seconds by part of the work (cProfile with a process-CPU clock: all threads count)."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    one_run(track, variant, transcriber)
    prof.disable()
    prof.create_stats()
    stats: Any = prof.stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    total = max(ct for (f, _, fn), (_, _, _, ct, _) in stats.items() if fn == "one_run")
    parts: dict[str, float] = {}
    for part, keys in PROFILE_PARTS.items():
        hits = [
            ct if fn != "generate_with_fallback" else tt
            for (f, _, fn), (_, _, tt, ct, _) in stats.items()
            if any(k in f"{f}:{fn}" for k in keys)
        ]
        if part == "decoder":
            parts[part] = round(sum(hits), 2)  # the C call plus the Python around it (sequential path)
        else:
            parts[part] = round(max(hits, default=0.0), 2)
    parts["other"] = round(total - sum(parts.values()), 2)
    return {"cpu_s_total": round(total, 2), "cpu_s_by_part": parts}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.models.whisper import WhisperSettings, WhisperTranscriber
    from bench.channel_cost import spoken_track
    from bench.run_haystack import git_commit, machine_info

    with tempfile.TemporaryDirectory() as tmp:
        track, lines = spoken_track(args.seconds, args.speech_density, args.snr, Path(tmp))
    lines = [line for line in lines if line[1] > line[0]]
    transcribers: dict[int, WhisperTranscriber] = {}
    for v in args.variants:
        if v.batch_size not in transcribers:
            tr = WhisperTranscriber(WhisperSettings(threads=args.threads, batch_size=v.batch_size))
            tr.transcribe(np.zeros(RATE, np.float32))  # load before any timing
            transcribers[v.batch_size] = tr
    machine = machine_info()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in args.variants}
    quality: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else args.variants[::-1]
        for v in order:
            row, utterances = one_run(track, v, transcribers[v.batch_size])
            row["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            runs[v.name].append(row)
            quality[v.name] = {**heard(utterances, lines), "utterances": len(utterances)}
            print(v.name, json.dumps(row), json.dumps(quality[v.name]), file=sys.stderr, flush=True)
    table = {}
    for v in args.variants:
        cpu = statistics.median(r["cpu_s"] for r in runs[v.name])
        wall = statistics.median(r["wall_s"] for r in runs[v.name])
        table[v.name] = {
            "window_s": v.window_s,
            "batch_size": v.batch_size,
            "cpu_s_median": round(cpu, 2),
            "wall_s_median": round(wall, 2),
            "x_realtime_per_cpu_s": round(args.seconds / cpu, 1),
            "x_realtime_wall": round(args.seconds / wall, 1),
            "windows": runs[v.name][0]["windows"],
            **quality[v.name],
            "runs": [
                {k: (round(x, 2) if isinstance(x, float) else x) for k, x in r.items()} for r in runs[v.name]
            ],
        }
    report: dict[str, Any] = {
        "bench": "speech_speed",
        "command": " ".join(args.argv),
        "machine": machine,
        "git": git_commit(),
        "sound": {
            "kind": "espeak-ng sentences spread evenly in white noise (bench.channel_cost.spoken_track)",
            "seconds": args.seconds,
            "speech_seconds": round(sum(e - s for s, e, _ in lines), 1),
            "sentences": len(lines),
            "snr_db": args.snr,
        },
        "model": f"faster-whisper base int8 (packaged), VAD on, word timestamps, beam 1, {args.threads} threads",
        "note": "medians of the interleaved runs; CPU s count every thread of the process",
        "variants": table,
    }
    if args.profile:
        report["profile"] = {v.name: profile(track, v, transcribers[v.batch_size]) for v in args.variants}
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {x: v[x] for x in list(v)[:10]} for k, v in report["variants"].items()}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
