"""Speech and on-screen text channels, measured with the real models on a synthetic haystack.

``python -m bench.text_channels [--splits dev,test] [--out bench/results/text_channels.json]``

Needles, queries and the dev/test split are in :mod:`bench.text_needles`;
scoring in :mod:`bench.text_scores`.

Speech: per split and SNR (0, 10, 20 dB), white noise holding the split's
espeak-ng sentences (3 voices x 2 speeds), one every ``--spacing`` seconds
at a random offset. The audio goes through the real
:class:`~agent.channels.speech.SpeechChannel` (30 s windows, faster-whisper
base int8 with VAD, guards) and its search (lexical + MiniLM), ranked by
:func:`agent.core.fuse.fuse`. The truth span is the sentence's voiced part
(espeak-ng's leading/trailing silence trimmed).

On-screen text: per split, pictures with signs (capitals on a plate) and
captions (a sentence on a band) drawn by Pillow in 3 fonts x 3 sizes, still,
drifting or scrolling, a quarter of them partly covered by a bar; each shown
4-8 s, one every ``--sign-spacing`` seconds, read through the real
:class:`~agent.channels.ocr.OcrChannel` (gated reads, Tesseract).

Every needle has three queries (exact, paraphrase, question). Reported per
split, kind and SNR, and per voice / speed / font / size / motion / occlusion:
R1@0.5, R1@0.7, mAP; the misses with what the channel held at the truth;
the cost (compute seconds per stream second, OCR reads per minute).
``--rescore PREVIOUS.json`` re-runs only the search over the spans a previous
run recorded (for tuning on dev without the ASR and OCR; figures quoted
come from full runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.channels.ocr import OcrChannel
from agent.channels.speech import SpeechChannel
from agent.config import OcrConfig, SpeechConfig
from agent.models.ocr import TesseractReader
from agent.models.sentences import SentenceEncoder
from agent.models.whisper import SAMPLE_RATE, WhisperTranscriber
from agent.types import AudioChunk, Frame
from bench import text_needles as tn
from bench import text_scores as ts
from bench.run_haystack import git_commit, machine_info

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
PICTURE = (398, 224)  # what the encoder's 224 short side leaves of a 16:9 picture
SPLITS = {"dev": (tn.SPOKEN_DEV, tn.SIGNS_DEV), "test": (tn.SPOKEN_TEST, tn.SIGNS_TEST)}


def _speak(text: str, voice: str, speed: int, folder: Path) -> np.ndarray:
    wav = folder / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True, timeout=60)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(wav)) as c:
        x = np.concatenate(
            [p.to_ndarray().reshape(-1) for f in c.decode(audio=0) for p in resampler.resample(f)]
        )
    voiced = np.flatnonzero(np.abs(x) > 0.02)
    return x[voiced[0] : voiced[-1] + 1].astype(np.float32)


def _voice(i: int) -> tuple[str, int]:
    """Needle ``i``'s (voice, speed): every voice at both speeds within each 6 needles."""
    return tn.VOICES[i % len(tn.VOICES)], tn.SPEEDS[(i // len(tn.VOICES)) % len(tn.SPEEDS)]


def bench_speech(
    needles: list[tn.Needle],
    snrs: list[float],
    folder: Path,
    sentences: SentenceEncoder,
    transcriber: WhisperTranscriber,
    *,
    spacing: float,
    window: float,
    seed: int,
) -> dict[str, Any]:
    """Per SNR: the haystack's cost, transcript, per-query rows and tables (see the module docstring)."""
    voiced = [_speak(n[0], *_voice(i), folder) for i, n in enumerate(needles)]
    speech_rms = float(np.sqrt(np.mean(np.concatenate(voiced) ** 2)))
    seconds = spacing * len(needles)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for snr in snrs:
        audio = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        truths = []
        for i, speech in enumerate(voiced):
            length = len(speech) / SAMPLE_RATE
            at = i * spacing + float(rng.uniform(1.0, max(1.5, spacing - length - 1.0)))
            j = int(at * SAMPLE_RATE)
            audio[j : j + len(speech)] += speech
            truths.append([round(at, 2), round(at + length, 2)])
        noise = rng.standard_normal(len(audio)).astype(np.float32) * speech_rms / 10 ** (snr / 20)
        mix = np.clip(audio + noise, -1.0, 1.0)
        channel = SpeechChannel("s", SpeechConfig(window_seconds=window), embed=sentences.encode)
        t0 = time.perf_counter()
        items = [
            it
            for k in range(0, len(mix), SAMPLE_RATE)
            for it in channel.push_audio(AudioChunk("s", k / SAMPLE_RATE, mix[k : k + SAMPLE_RATE]))
        ]
        items += channel.flush()
        for item in items:
            channel.commit(item, transcriber.transcribe(np.asarray(item.payload)))
        compute = time.perf_counter() - t0
        spans = [[u.start, u.end, u.text, [list(w) for w in u.words]] for u in channel.utterances]
        meta = [
            {"voice": v, "speed": s, "truth": t, "queries": n}
            for n, t, (v, s) in zip(needles, truths, map(_voice, range(len(needles))), strict=True)
        ]
        out[f"snr_{snr:g}db"] = {
            "audio_seconds": seconds,
            "compute_seconds": round(compute, 2),
            "x_realtime": round(seconds / compute, 1),
            "needles": meta,
            "utterances": spans,
        } | _speech_tables(channel, meta, sentences, spans)
    return out


def _speech_tables(
    channel: ts.Searchable, meta: list[dict[str, Any]], sentences: SentenceEncoder, spans: list[list[Any]]
) -> dict[str, Any]:
    rows = ts.query_rows(channel, meta, sentences)
    heard = {u[0]: u[2] for u in spans}
    return {
        "by_kind": ts.table(rows),
        "by_voice": ts.table(rows, "voice"),
        "by_speed": ts.table(rows, "speed"),
        "misses_r1_05": ts.misses(rows, heard),
        "rows": rows,
    }


def sign_style(i: int, n: int, seed: int) -> dict[str, Any]:
    """Needle ``i`` of ``n``'s font, size and motion (a shuffled walk through the 27 combinations) and occlusion."""
    combos = list(itertools.product(tn.FONTS, tn.SIGN_SIZES, tn.MOTIONS))
    order = np.random.default_rng(seed).permutation(len(combos))
    font, size, motion = combos[int(order[i % len(combos)])]
    return {"font": font, "size": size, "motion": motion, "occluded": i % 4 == 3}


def _layout(text: str, font: Any, width: int) -> list[str]:
    """``text`` wrapped to lines no wider than ``width`` pixels (a caption longer than the picture)."""
    for chars in range(len(text), 4, -1):
        lines = textwrap.wrap(text, chars)
        if all(font.getlength(line) <= width for line in lines):
            return lines
    return textwrap.wrap(text, 4)


def _sign_frame(
    k: int, text: str | None, style: dict[str, Any], font: Any, t: float, rng_x: float
) -> np.ndarray:
    w, h = PICTURE
    im = Image.new("RGB", PICTURE, (40 + (k % 5), 60, 80))
    if text is None:
        return np.asarray(im)
    draw = ImageDraw.Draw(im)
    caption = any(c.islower() for c in text)
    lines = _layout(text, font, w - 24)
    line_h = int(style["size"] * 1.25)
    box_w = int(max(font.getlength(line) for line in lines))
    box_h = line_h * len(lines)
    free = max(1, w - 20 - box_w)
    speed = {"still": 0.0, "drift": 6.0, "scroll": 40.0}[style["motion"]]
    travel = int(speed * t) % (2 * free)
    x = 10 + (travel if travel < free else 2 * free - travel)  # bounce at the edges
    y = h - box_h - 14 if caption else h // 3 - box_h // 4
    if caption:
        draw.rectangle((0, y - 6, w, y + box_h + 4), fill=(10, 10, 10))
    else:
        draw.rectangle((x - 6, y - 6, x + box_w + 6, y + box_h + 4), fill=(20, 70, 30))
    for j, line in enumerate(lines):
        draw.text((x, y + j * line_h), line, fill=(255, 255, 255), font=font)
    if style["occluded"]:  # a bar across a fifth of the text, somewhere along it
        bx = x + int(rng_x * 0.8 * box_w)
        draw.rectangle((bx, y - 8, bx + box_w // 5, y + box_h + 6), fill=(120, 110, 100))
    return np.asarray(im)


def bench_ocr(
    needles: list[tn.Needle],
    sentences: SentenceEncoder,
    *,
    spacing: float,
    seed: int,
    fps: float = 2.0,
    short_side: int = 480,
) -> dict[str, Any]:
    """The on-screen haystack's cost, spans, per-query rows and tables (see the module docstring)."""
    reader = TesseractReader(min_short_side=short_side)
    rng = np.random.default_rng(seed)
    styles = [sign_style(i, len(needles), seed) for i in range(len(needles))]
    fonts = [ImageFont.truetype(str(FONT_DIR / f"{s['font']}.ttf"), s["size"]) for s in styles]
    bars = rng.uniform(0.0, 1.0, len(needles))
    shows = []
    for i in range(len(needles)):
        at = i * spacing + float(rng.uniform(1.0, spacing - 9.0))
        shows.append([round(at, 2), round(at + 4.0 + (i % 3) * 2.0, 2)])
    seconds = spacing * len(needles)
    channel = OcrChannel("s", OcrConfig(), embed=sentences.encode)
    t0 = time.perf_counter()
    for k in range(int(seconds * fps)):
        t = k / fps
        on = next((i for i, (a, b) in enumerate(shows) if a <= t < b), None)
        text = None if on is None else needles[on][0]
        j = on or 0
        image = _sign_frame(k, text, styles[j], fonts[j], t - shows[j][0], float(bars[j]))
        for item in channel.push(Frame("s", t, image)):
            channel.commit(item, reader.read(np.asarray(item.payload)))
    compute = time.perf_counter() - t0
    meta = [
        {
            **style,
            "sign": "caption" if any(c.islower() for c in n[0]) else "sign",
            "truth": show,
            "queries": n,
        }
        for n, show, style in zip(needles, shows, styles, strict=True)
    ]
    # What the search sees (open spans run to the last read), so --rescore replays it exactly.
    spans: list[list[Any]] = [[t.start, t.end, t.text, [list(w) for w in t.words]] for t in channel.timed()]
    rows = ts.query_rows(channel, meta, sentences)
    return {
        "stream_seconds": seconds,
        "compute_seconds": round(compute, 2),
        "reads": channel.reads,
        "reads_per_minute": round(channel.reads / (seconds / 60.0), 1),
        "needles": meta,
        "spans": spans,
        "by_kind": ts.table(rows),
        **{f"by_{a}": ts.table(rows, a) for a in ("font", "size", "motion", "occluded", "sign")},
        "misses_r1_05": ts.misses(rows, {s[0]: s[2] for s in spans}),
        "rows": rows,
    }


def rescore(previous: dict[str, Any], sentences: SentenceEncoder) -> dict[str, Any]:
    """``previous``'s recorded spans searched again with the current search (its cost figures kept)."""
    out = json.loads(json.dumps(previous))
    for parts in out["splits"].values():
        for r in parts.get("speech", {}).values():
            channel = ts.Recorded("speech", ts.timed(r["utterances"]), sentences)
            r.update(_speech_tables(channel, r["needles"], sentences, r["utterances"]))
        ocr = parts.get("ocr")
        if ocr:
            channel = ts.Recorded("ocr", ts.timed(ocr["spans"]), sentences)
            rows = ts.query_rows(channel, ocr["needles"], sentences)
            ocr["by_kind"] = ts.table(rows)
            ocr.update({f"by_{a}": ts.table(rows, a) for a in ("font", "size", "motion", "occluded", "sign")})
            ocr["misses_r1_05"] = ts.misses(rows, {s[0]: s[2] for s in ocr["spans"]})
            ocr["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--splits", default="dev,test", help="comma-separated: dev (tuned on), test (the headline)"
    )
    p.add_argument("--needles", type=int, default=24, help="spoken needles per split (at most the split's)")
    p.add_argument("--signs", type=int, default=24, help="on-screen needles per split (at most the split's)")
    p.add_argument("--spacing", type=float, default=15.0, help="seconds of haystack per spoken needle")
    p.add_argument(
        "--sign-spacing", type=float, default=12.0, help="seconds of haystack per on-screen needle"
    )
    p.add_argument("--snr", default="0,10,20", help="dB, comma-separated")
    p.add_argument("--window", type=float, default=30.0, help="seconds of sound per whisper call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ocr", action="store_true")
    p.add_argument("--no-speech", action="store_true", help="on-screen text only (the OCR gate's recall)")
    p.add_argument(
        "--ocr-short-side", type=int, default=480, help="pixels Tesseract's pictures are enlarged to"
    )
    p.add_argument("--rescore", type=Path, help="search a previous run's recorded spans again (no ASR/OCR)")
    p.add_argument("--out", type=Path, default=Path("bench/results/text_channels.json"))
    a = p.parse_args(argv)
    command = "python -m bench.text_channels " + " ".join(sys.argv[1:] if argv is None else argv)
    sentences = SentenceEncoder()
    sentences.encode(["warm up"])
    if a.rescore is not None:
        previous = json.loads(a.rescore.read_text())
        previous.pop("note", None)  # about the previous run's search, not this one
        result = rescore(previous, sentences) | {"rescored_by": command, "rescored_at": git_commit()}
    else:
        if (shutil.which("espeak-ng") is None and not a.no_speech) or shutil.which("tesseract") is None:
            raise SystemExit("needs espeak-ng and tesseract-ocr: bash scripts/system-deps.sh")
        result = _run(a, command, sentences)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(ts.markdown(result))
    print(ts.markdown(result))
    return 0


def _run(a: argparse.Namespace, command: str, sentences: SentenceEncoder) -> dict[str, Any]:
    machine, commit = machine_info(), git_commit()
    transcriber = WhisperTranscriber()
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))  # load outside the timing
    snrs = [float(x) for x in a.snr.split(",")]
    splits: dict[str, Any] = {}
    t0 = time.perf_counter()
    for seed, name in enumerate(a.splits.split(",")):
        spoken, signs = SPLITS[name]
        part: dict[str, Any] = {}
        if not a.no_speech:
            with tempfile.TemporaryDirectory() as tmp:
                part["speech"] = bench_speech(
                    spoken[: a.needles],
                    snrs,
                    Path(tmp),
                    sentences,
                    transcriber,
                    spacing=a.spacing,
                    window=a.window,
                    seed=a.seed + seed,
                )
        if not a.no_ocr:
            part["ocr"] = bench_ocr(
                signs[: a.signs],
                sentences,
                spacing=a.sign_spacing,
                seed=a.seed + seed,
                short_side=a.ocr_short_side,
            )
        splits[name] = part
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    sizes = {n: (min(a.needles, len(SPLITS[n][0])), min(a.signs, len(SPLITS[n][1]))) for n in splits}
    return {
        "command": command,
        "size": "; ".join(
            f"{n}: {s} spoken needles x 3 queries per SNR ({a.spacing:g} s each), {o} on-screen x 3 queries"
            f" ({a.sign_spacing:g} s each)"
            for n, (s, o) in sizes.items()
        )
        + "; white noise; a shared 2-core machine (timings noisy)",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "speech_window_seconds": a.window,
        "ocr_short_side": a.ocr_short_side,
        "models": "faster-whisper base int8 (packaged), all-MiniLM-L6-v2 (packaged), Tesseract 5 eng",
        "machine": machine,
        "git": commit,
        "splits": splits,
    }


if __name__ == "__main__":
    raise SystemExit(main())
