"""Speech and on-screen text channels, measured with the real models on a synthetic haystack.

``python -m bench.text_channels [--minutes M] [--out bench/results/text_channels.json]``

Speech: for each SNR (0, 10, 20 dB), ``--minutes`` of white noise holding
espeak-ng sentences (two voices, two speeds, one every ~25 s); each sentence
has three queries: its exact words, a paraphrase and a question. The audio
goes through the real :class:`~agent.channels.speech.SpeechChannel` (30 s
windows, faster-whisper base int8 with VAD, guards) and its search (BM25 +
MiniLM), ranked by :func:`agent.core.fuse.fuse`. The truth span is the
sentence's voiced part (espeak-ng's leading/trailing silence trimmed).

On-screen text: pictures with signs drawn by Pillow (DejaVu and Pillow's
default font, three sizes, the text moving right) shown for 4-8 s among
blank stretches, read through the real :class:`~agent.channels.ocr.OcrChannel`
(gated reads, Tesseract), queried by their exact words.

Reported per kind (and SNR): R1@0.5, R1@0.7 (top moment's temporal IoU with
the truth), mAP (average precision of the ranked moments at IoU 0.5, one
truth per query), and the cost: speech seconds of compute per second of
audio, OCR reads and seconds per stream minute. Sizes are small (minutes,
not hours) because the machine is shared; the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.channels.base import ChannelQuery
from agent.channels.ocr import OcrChannel
from agent.channels.speech import SpeechChannel
from agent.channels.text_search import SENTENCE_ROLE
from agent.config import OcrConfig, SpeechConfig
from agent.core.fuse import fuse
from agent.models.ocr import TesseractReader
from agent.models.sentences import SentenceEncoder
from agent.models.whisper import SAMPLE_RATE, WhisperTranscriber
from agent.types import AudioChunk, Frame

NEEDLES = [
    (
        "the truck is waiting at gate four",
        "a lorry is parked by the fourth gate",
        "where is the truck waiting",
    ),
    (
        "the north entrance will close at six tonight",
        "the northern door shuts this evening at six",
        "when does the north entrance close",
    ),
    (
        "please move the forklift out of bay two",
        "take the lift truck away from the second bay",
        "which bay should the forklift leave",
    ),
    (
        "the fire alarm test starts at noon",
        "at midday the smoke alarm will be checked",
        "when is the fire alarm test",
    ),
    (
        "visitors must sign in at the front desk",
        "guests have to register at reception",
        "where do visitors sign in",
    ),
    (
        "the delivery from Hamburg is two hours late",
        "the shipment from Germany is delayed by two hours",
        "how late is the Hamburg delivery",
    ),
]
VOICES = [("en", 160), ("en-us", 140), ("en", 190), ("en-us", 175)]
SIGNS = ["ERROR 503", "NORTH ENTRANCE", "GATE 7 CLOSED", "PLATFORM 12", "EXIT ONLY", "LOADING DOCK B"]
KINDS = ("exact", "paraphrase", "question")


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


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _scores(ranked: list[tuple[float, float]], truth: tuple[float, float]) -> dict[str, float]:
    top = ranked[0] if ranked else (0.0, 0.0)
    hit = next((i for i, m in enumerate(ranked) if _iou(m, truth) >= 0.5), None)
    return {
        "r1_05": float(_iou(top, truth) >= 0.5),
        "r1_07": float(_iou(top, truth) >= 0.7),
        "ap": 0.0 if hit is None else 1.0 / (hit + 1),  # one truth per query: AP = 1 / rank of the first hit
    }


def _rank(channel: Any, text: str, sentences: SentenceEncoder, top_k: int = 5) -> list[tuple[float, float]]:
    q = ChannelQuery(vectors={SENTENCE_ROLE: sentences.encode([text])[0]}, text=text, top_k=top_k)
    answer = channel.search(q)
    cals = {("s", channel.name, k): c for k, c in answer.calibrations.items()}
    fused = fuse(answer.proposals, cals, top_k=top_k)
    return [(m.start, m.end) for m in fused.moments]


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]} if rows else {}


def bench_speech(
    minutes: float, snrs: list[float], folder: Path, sentences: SentenceEncoder, window: float = 30.0
) -> dict[str, Any]:
    transcriber = WhisperTranscriber()
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))  # load outside the timing
    seconds = minutes * 60.0
    step = seconds / len(NEEDLES)
    voices = [_speak(n[0], *VOICES[i % len(VOICES)], folder) for i, n in enumerate(NEEDLES)]
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for snr in snrs:
        audio = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        truths = []
        for i, speech in enumerate(voices):
            at = i * step + float(rng.uniform(2.0, max(2.5, step - len(speech) / SAMPLE_RATE - 2.0)))
            j = int(at * SAMPLE_RATE)
            audio[j : j + len(speech)] += speech
            truths.append((at, at + len(speech) / SAMPLE_RATE))
        speech_rms = float(np.sqrt(np.mean(np.concatenate(voices) ** 2)))
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
        per_kind: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        misses = []
        for needle, truth in zip(NEEDLES, truths, strict=True):
            for kind, text in zip(KINDS, needle, strict=True):
                ranked = _rank(channel, text, sentences)
                per_kind[kind].append(_scores(ranked, truth))
                if not per_kind[kind][-1]["r1_05"]:
                    misses.append(
                        {
                            "kind": kind,
                            "query": text,
                            "truth": [round(x, 2) for x in truth],
                            "top": ranked[:1],
                        }
                    )
        out[f"snr_{snr:g}db"] = {
            "audio_seconds": seconds,
            "compute_seconds": round(compute, 2),
            "x_realtime": round(seconds / compute, 1),
            "utterances": [[u.start, u.end, u.text] for u in channel.utterances],
            "misses_r1_05": misses,
            **{kind: _mean(rows) for kind, rows in per_kind.items()},
        }
    return out


def _sign_frame(k: int, size: tuple[int, int], sign: str | None, font: Any, t: float) -> np.ndarray:
    im = Image.new("RGB", size, (40 + (k % 5), 60, 80))
    if sign is not None:
        ImageDraw.Draw(im).text((10 + int(6 * t) % 40, size[1] // 3), sign, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def bench_ocr(
    minutes: float, sentences: SentenceEncoder, fps: float = 2.0, short_side: int = 480
) -> dict[str, Any]:
    reader = TesseractReader(min_short_side=short_side)
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
    fonts = [ImageFont.load_default(size=s) for s in (22, 30)]
    if Path(dejavu).is_file():
        fonts.append(ImageFont.truetype(dejavu, 26))
    seconds = minutes * 60.0
    step = seconds / len(SIGNS)
    shows = [(i * step + 3.0, i * step + 3.0 + 4.0 + (i % 3) * 2.0) for i in range(len(SIGNS))]
    channel = OcrChannel("s", OcrConfig(), embed=sentences.encode)
    size = (398, 224)  # what the encoder's 224 short side leaves of a 16:9 picture
    t0 = time.perf_counter()
    for k in range(int(seconds * fps)):
        t = k / fps
        on = next((i for i, (a, b) in enumerate(shows) if a <= t < b), None)
        image = _sign_frame(k, size, None if on is None else SIGNS[on], fonts[(on or 0) % len(fonts)], t)
        for item in channel.push(Frame("s", t, image)):
            channel.commit(item, reader.read(np.asarray(item.payload)))
    compute = time.perf_counter() - t0
    rows = [_scores(_rank(channel, sign, sentences), show) for sign, show in zip(SIGNS, shows, strict=True)]
    return {
        "stream_seconds": seconds,
        "compute_seconds": round(compute, 2),
        "reads": channel.reads,
        "reads_per_minute": round(channel.reads / minutes, 1),
        "spans": [[round(s.start, 1), round(s.end, 1), s.text] for s in channel.spans],
        "exact": _mean(rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=2.5, help="haystack length per SNR (speech) and for OCR")
    p.add_argument("--snr", default="0,10,20", help="dB, comma-separated")
    p.add_argument("--window", type=float, default=30.0, help="seconds of sound per whisper call")
    p.add_argument("--no-ocr", action="store_true")
    p.add_argument("--no-speech", action="store_true", help="on-screen text only (the OCR gate's recall)")
    p.add_argument(
        "--ocr-short-side", type=int, default=480, help="pixels Tesseract's pictures are enlarged to"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/text_channels.json"))
    a = p.parse_args(argv)
    if (shutil.which("espeak-ng") is None and not a.no_speech) or shutil.which("tesseract") is None:
        raise SystemExit("needs espeak-ng and tesseract-ocr: bash scripts/system-deps.sh")
    sentences = SentenceEncoder()
    sentences.encode(["warm up"])
    with tempfile.TemporaryDirectory() as tmp:
        snrs = [float(x) for x in a.snr.split(",")]
        speech = {} if a.no_speech else bench_speech(a.minutes, snrs, Path(tmp), sentences, a.window)
    ocr = {} if a.no_ocr else bench_ocr(a.minutes, sentences, short_side=a.ocr_short_side)
    result = {
        "command": "python -m bench.text_channels " + " ".join(sys.argv[1:] if argv is None else argv),
        "size": f"reduced: {a.minutes} min per SNR, {len(NEEDLES)} spoken needles x 3 query kinds; "
        f"{len(SIGNS)} signs in {a.minutes} min; a shared 2-core machine (timings noisy)",
        "speech_window_seconds": a.window,
        "models": "faster-whisper base int8 (packaged), all-MiniLM-L6-v2 (packaged), Tesseract 5 eng",
        "machine": platform.processor() or platform.machine(),
        "speech": speech,
        "ocr_short_side": a.ocr_short_side,
        "ocr": ocr,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("speech", "ocr")}, indent=2))
    for snr, r in speech.items():
        print(snr, {k: r[k] for k in (*KINDS, "x_realtime")})
    if ocr:
        print("ocr", ocr["exact"], "reads", ocr["reads"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
