"""Options shared by the ``vmr`` subcommands, validated before any model loads."""

from __future__ import annotations

import argparse
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from agent.config import EncoderConfig, IndexConfig, OcrConfig, QueryConfig, Settings, SpeechConfig
from agent.errors import ConfigError, PrecisionUnsupportedError

T = TypeVar("T")


def add_random_weights_option(g: argparse._ActionsContainer) -> None:
    """``--random-weights``: the named architecture with seeded random weights (explicit only)."""
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="build --model with seeded random weights: real speed, MEANINGLESS answers (speed runs)",
    )


def add_backend_option(g: argparse._ActionsContainer) -> None:
    """``--backend auto|torch|openvino``."""
    g.add_argument(
        "--backend",
        choices=["auto", "torch", "openvino"],
        default="auto",
        help="where the encoder runs: torch, openvino (CPU), or auto (torch on CUDA, else openvino)",
    )


def add_precision_option(g: argparse._ActionsContainer, default: str | None = "auto") -> None:
    """``--precision auto|f32|bf16``: the OpenVINO CPU encoder's inference precision."""
    g.add_argument(
        "--precision",
        choices=["auto", "f32", "bf16"],
        default=default,
        help="OpenVINO CPU inference precision: auto (bf16 where the CPU has BF16, else f32), "
        "f32, or bf16 (an error on torch or on a CPU without BF16)",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Encoder choice; ``tiny-random`` and ``--random-weights`` must be named explicitly."""
    g = p.add_argument_group("encoder")
    g.add_argument(
        "--model", default="MobileCLIP2-S0", help="open_clip model, or tiny-random (meaningless, tests/demo)"
    )
    add_random_weights_option(g)
    add_backend_option(g)
    add_precision_option(g)
    g.add_argument(
        "--pretrained", default=None, help="open_clip pretrained tag (default: the model's recommended tag)"
    )
    g.add_argument(
        "--checkpoint", type=Path, default=None, help="local checkpoint file (wins over --pretrained)"
    )
    g.add_argument(
        "--refine-model", default=None, help="stronger model for refinement (default: same as --model)"
    )
    g.add_argument("--refine-pretrained", default=None)
    g.add_argument("--refine-checkpoint", type=Path, default=None)
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="encoder threads, torch or OpenVINO (default VMR_THREADS or 2)",
    )


def add_index_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory")
    g.add_argument("--fps", type=float, default=2.0, help="sampling rate (frames per second)")
    g.add_argument("--grid", type=int, default=2, help="super-image grid N (1..4)")
    g.add_argument("--budget", type=int, default=4096, help="token budget B")
    g.add_argument(
        "--theta",
        type=float,
        default=None,
        help="cosine at which a new embedding joins the current anchor online (default 1.0: only "
        "identical ones; an existing index keeps its own)",
    )
    g.add_argument("--rank", type=int, default=4, help="SVD rank per anchor")
    g.add_argument(
        "--representative",
        choices=["smore", "mean"],
        default=None,
        help="anchor token (default mean; an existing index keeps its own)",
    )
    g.add_argument("--keyframes", action="store_true", help="keyframes only: fast coarse pass")
    g.add_argument("--no-gate", action="store_true", help="encode static stretches too")
    g.add_argument("--store-mb", type=float, default=2048, help="frame-store bound in MiB (0: no store)")
    g.add_argument(
        "--speech",
        action="store_true",
        help="speech channel: transcribe the sound (faster-whisper, the packaged base model)",
    )
    g.add_argument("--ocr", action="store_true", help="on-screen text channel: Tesseract on changed pictures")


_DEFAULT_TAGS = {"MobileCLIP2-S0": "dfndr2b", "ViT-B-32": "laion2b_s34b_b79k"}


def encoder_config(
    model: str,
    pretrained: str | None,
    checkpoint: Path | None,
    threads: int | None,
    *,
    random_weights: bool = False,
    backend: str = "auto",
    precision: str = "auto",
) -> EncoderConfig:
    """Validated encoder settings from the command-line flags (ConfigError on bad values)."""
    data: dict[str, Any] = {
        "model": model,
        # Random weights use no pretrained tag: record none rather than one never loaded.
        "pretrained": None if random_weights else pretrained or _DEFAULT_TAGS.get(model, "openai"),
        "checkpoint": checkpoint,
        "allow_random": model == "tiny-random",
        "random_weights": random_weights,
        "backend": backend,
        "precision": precision,
    }
    if threads is not None:
        data["threads"] = threads
    if precision == "bf16" and backend == "torch":
        # The code the README and `vmr --help` promise, not the validator's generic `config`.
        raise PrecisionUnsupportedError(
            "precision 'bf16' is an OpenVINO CPU setting: use backend 'openvino' or 'auto', "
            "or precision 'f32'/'auto' with torch"
        )
    try:
        return EncoderConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from exc


def validation_message(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """One line per failed field, ``loc: message``, without pydantic's URL and input echo.

    ``names``: what to show instead of a field's ``loc`` (the flag that set it, say).
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        loc = (names or {}).get(loc, loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def settings_from_args(a: argparse.Namespace) -> Settings:
    """Validate every option before any model loads."""
    extra: dict[str, Any] = {
        "random_weights": a.random_weights,
        "backend": a.backend,
        "precision": a.precision,
    }
    pre = encoder_config(a.model, a.pretrained, a.checkpoint, a.threads, **extra)
    ref = (
        encoder_config(a.refine_model, a.refine_pretrained, a.refine_checkpoint, a.threads, **extra)
        if a.refine_model
        else None
    )
    idx = index_config(a)
    speech = SpeechConfig(enabled=bool(getattr(a, "speech", False)))
    ocr = OcrConfig(enabled=bool(getattr(a, "ocr", False)))
    return Settings(prescreen=pre, refine=ref, index=idx, query=QueryConfig(), speech=speech, ocr=ocr)


_INDEX_FLAGS = {  # IndexConfig field -> (its flag, the argparse attribute holding the value)
    "fps": ("--fps", "fps"),
    "grid": ("--grid", "grid"),
    "budget": ("--budget", "budget"),
    "theta": ("--theta", "theta"),
    "rank": ("--rank", "rank"),
    "store_bytes": ("--store-mb", "store_mb"),
    "encoder_nice": ("--encoder-nice", "encoder_nice"),
}


def index_config(a: argparse.Namespace) -> IndexConfig:
    """The index settings from the flags; ConfigError naming the flag on a bad value."""
    # vmr ingest only (an archive pass); elsewhere, and when not given, the config's default.
    nice = getattr(a, "encoder_nice", None)
    try:
        return IndexConfig(
            **({} if nice is None else {"encoder_nice": nice}),
            # Unset unless given, so an existing index keeps the one it was built with (FOLLOW_INDEX).
            **({} if a.representative is None else {"representative": a.representative}),
            **({} if a.theta is None else {"theta": a.theta}),
            fps=a.fps,
            grid=a.grid,
            budget=a.budget,
            rank=a.rank,
            keyframes_only=a.keyframes,
            gate=not a.no_gate,
            store_bytes=int(a.store_mb * 1024 * 1024),
        )
    except ValidationError as exc:
        names = {field: f"{flag} {getattr(a, attr, None)}" for field, (flag, attr) in _INDEX_FLAGS.items()}
        raise ConfigError(validation_message(exc, names)) from exc


def stream_id_for(path: Path) -> str:
    """A safe stream id from a file name."""
    sid = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._-") or "video"
    return sid[:128]


@dataclass
class PrefetchWaits:
    """Seconds each side of :func:`prefetch` waited for the other (wall clock)."""

    producer_blocked_s: float = 0.0
    """The worker waiting on a full queue: the consumer is the slower stage (backpressure)."""
    consumer_blocked_s: float = 0.0
    """The consumer waiting on an empty queue: the producer (decoding) is the slower stage."""

    def as_dict(self) -> dict[str, float]:
        return {
            "producer_blocked_s": round(self.producer_blocked_s, 2),
            "consumer_blocked_s": round(self.consumer_blocked_s, 2),
        }


def prefetch(items: Iterable[T], maxsize: int = 64, waits: PrefetchWaits | None = None) -> Iterator[T]:
    """Iterate ``items`` in a worker thread (decode overlaps encoding); errors re-raised.

    At most ``maxsize`` items wait (backpressure: the worker blocks, nothing is dropped).
    ``waits`` (optional) accumulates how long each side waited for the other.
    """
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize)
    stop = threading.Event()
    tally = waits if waits is not None else PrefetchWaits()

    def work() -> None:
        try:
            for item in items:
                t0 = time.perf_counter()
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                tally.producer_blocked_s += time.perf_counter() - t0
                if stop.is_set():
                    return
            q.put((False, None))
        except BaseException as exc:
            q.put((False, exc))

    th = threading.Thread(target=work, name="vmr-decode", daemon=True)
    th.start()
    try:
        while True:
            t0 = time.perf_counter()
            ok, item = q.get()
            tally.consumer_blocked_s += time.perf_counter() - t0
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()


class AudioTally:
    """Counts the audio chunks passing through decoded media, so `vmr ingest --speech` can say a file was silent."""

    def __init__(self) -> None:
        self.chunks = 0

    def through(self, items: Iterable[Any]) -> Iterator[Any]:
        from streams.media import AudioChunk

        for item in items:
            self.chunks += isinstance(item, AudioChunk)
            yield item
