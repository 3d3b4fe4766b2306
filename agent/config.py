"""Validated configuration. The only module that reads environment variables.

Every model here is validated before any encoder or LLM loads, so a typo in a
config file fails in milliseconds, not after a model download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ConfigError

Representative = Literal["smore", "mean"]
MergeRule = Literal["cosine", "ward-young", "ward", "dilution", "subspace"]
"""Which adjacent anchors a full memory merges (:func:`agent.core.svd.merge_cost`)."""
Scorer = Literal["rep", "energy", "projection", "peak", "average"]
"""How a query scores an anchor (:meth:`agent.core.memory.Memory.scores`)."""
Backend = Literal["auto", "torch", "openvino"]
Precision = Literal["auto", "f32", "bf16"]
"""Inference precision of the OpenVINO CPU encoder (:attr:`EncoderConfig.precision`)."""
SchedPolicy = Literal["other", "batch", "idle"]
"""Linux scheduling policy of a thread: ``other`` (the normal one), ``batch`` (no wake-up
preemption), ``idle`` (runs only on a core nothing else wants: on a loaded machine it may starve)."""


def env_int(name: str, default: int) -> int:
    """Read an integer environment variable, failing clearly on garbage."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def env_str(name: str, default: str | None = None) -> str | None:
    """Read a string environment variable."""
    raw = os.environ.get(name)
    return default if raw in (None, "") else raw


def cache_dir() -> Path:
    """Where downloaded or assembled artefacts are cached (``VMR_CACHE``)."""
    base = env_str("VMR_CACHE") or os.path.join(
        env_str("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmr"
    )
    return Path(base)


class Strict(BaseModel):
    """Base of every config and wire model: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_MAGNITUDE = 1e12
"""Largest magnitude of a :data:`FiniteFloat` (seconds: 31,000 years)."""
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
"""A float that is a number of sane size, for durations, times and thresholds a client or a config
file gives: pydantic takes ``inf`` and ``nan`` by default, JSON's ``1e999`` reads as inf and TOML
writes ``inf``/``nan`` literally (a watch with ``close_seconds: inf`` would never close). A field
adds its own bounds on top (``Field(gt=0)``)."""
MAX_CLOSE_SECONDS = 86_400.0
"""Longest ``close_seconds`` of a watch (config or message): a day of stream time."""


class EncoderConfig(Strict):
    """Which open_clip model encodes frames and queries, with what weights, on what backend.

    ``model`` is an open_clip architecture name (``MobileCLIP2-S0``,
    ``ViT-B-32``...) or ``tiny-random``: a small seeded ViT with random
    weights whose answers are *meaningless* (tests and offline demos only).
    ``random_weights`` builds ``model`` itself with seeded random weights (speed
    and capacity runs): it costs what the real model costs, and its answers are
    meaningless too. ``classical-hog`` is no network at all: a classical descriptor
    (colour thumbnails + gradient histograms, :mod:`agent.models.classical`) for
    image-to-image benchmarks; it has no text side and ignores ``pretrained`` and
    ``backend``.
    """

    model: str = "MobileCLIP2-S0"
    pretrained: str | None = "dfndr2b"
    """open_clip pretrained tag (downloaded where a network exists); unused with ``random_weights``."""
    checkpoint: Path | None = None
    """Local checkpoint file; wins over ``pretrained``."""
    threads: int = Field(default_factory=lambda: env_int("VMR_THREADS", 2), ge=1, le=256)
    batch_size: int = Field(default=16, ge=1, le=1024)
    allow_random: bool = False
    """Permit ``tiny-random``. The CLI sets it only when the user names it."""
    random_weights: bool = False
    """Seeded random weights for ``model`` (meaningless answers). Never set implicitly."""
    backend: Backend = "auto"
    """``torch``, ``openvino`` (CPU; converted at load, cached on disk), or ``auto``: torch
    where CUDA is available, else OpenVINO where importable, else torch."""
    precision: Precision = "auto"
    """Inference precision of the OpenVINO CPU backend: ``f32``; ``bf16`` (1.6x the images per
    second of f32 on an AVX512-BF16 CPU, per-row cosine to f32 >= 0.9999 on MobileCLIP2-S0); or
    ``auto``: bf16 where the CPU reports BF16 (OpenVINO's ``OPTIMIZATION_CAPABILITIES``), else f32.
    The cached IR stays float32 whatever this says (a compile setting, not part of the cache key).
    The torch backend runs f32 only: ``bf16`` there is a :class:`~agent.errors.ConfigError` (an
    OpenVINO-CPU setting; GPU autocast is not offered), as is ``bf16`` on a CPU without BF16."""

    @model_validator(mode="after")
    def _random_needs_consent(self) -> EncoderConfig:
        if self.model == "tiny-random" and not (self.allow_random or self.random_weights):
            raise ValueError("model 'tiny-random' has random weights; pass allow_random=True")
        if self.random_weights and self.checkpoint is not None:
            raise ValueError("random_weights and checkpoint exclude each other")
        if self.model == "classical-hog" and (self.random_weights or self.checkpoint is not None):
            raise ValueError("model 'classical-hog' has no weights: no random_weights, no checkpoint")
        if self.precision == "bf16" and self.backend == "torch":
            raise ValueError(
                "precision 'bf16' is an OpenVINO CPU setting: use backend 'openvino' or 'auto', "
                "or precision 'f32'/'auto' with torch"
            )
        return self


MEMORY_RULES = ("merge", "scorer", "representative", "theta")
"""The :class:`IndexConfig` fields a memory records in its snapshot, under the same names: what an
existing index keeps when a default changes (:data:`agent.index.manifest.FOLLOW_INDEX`) and what a
loaded memory is checked against."""


class IndexConfig(Strict):
    """How footage becomes memory."""

    fps: float = Field(default=2.0, gt=0, le=60)
    """Target sampling rate (frames per stream second)."""
    keyframes_only: bool = False
    """Decode keyframes only: a fast coarse pass over archives."""
    grid: int = Field(default=2, ge=1, le=4)
    """Super-image grid N: one encoder pass covers N x N frames."""
    budget: int = Field(default=4096, ge=2)
    """Token budget B of the memory (one token per anchor)."""
    theta: float = Field(default=1.0, ge=-1.0, le=1.0)
    """Cosine at or above which a new embedding joins the current anchor online (SMORE's rule).
    The default 1.0 joins only identical embeddings: every other one opens an anchor and the
    budget merges choose what pools, the setting the compression bench measures. SMORE's 0.95
    pooled scene cuts online (consecutive scenes of a random or a hand-made encoder often agree
    that closely) and left the budget unused: over twelve haystacks, fidelity at 1/10 of grid 1
    fell from 97.5 to 87 % (classical-hog) and from 87.5 to 40 % (tiny-random), issue #15."""
    rank: int = Field(default=4, ge=1, le=64)
    """Rank k of each anchor's truncated SVD."""
    representative: Representative = "mean"
    """The anchor's token (handed to the LLM), what online joins and ``cosine`` merges compare:
    ``mean`` (the normalised mean of its members; the default since issue #15's replication on
    seeds 6-11) or ``smore`` (SMORE's principal directions averaged)."""
    merge: MergeRule = "cosine"
    """Merge rule under budget pressure: ``cosine`` (SMORE's most similar adjacent pair, keyed on
    the representatives; size-blind, so a short distinct stretch is as dear to merge as a long
    one; the default since issue #15's pre-registered replication on seeds 6-11), ``ward-young``
    (Ward's least squared error added, with an anchor begun within the last ``m`` members priced
    at least at ``m``, the memory's members per token), ``ward`` (plain Ward: under heavy
    compression it pools the newest footage into one anchor, 10-22 minutes of the 1 h haystack
    at 1/30), ``dilution`` (least shift of the worst member's anchor mean) or ``subspace``
    (least energy off the rank-k span)."""
    scorer: Scorer = "energy"
    """Prescreen scorer: ``energy`` (RMS of the members' cosines, read from the SVD; issue #15's
    winner), ``rep`` (cosine to the token), ``peak`` (mean + spread), ``average`` (mean member cosine)
    or ``projection``."""
    gap_seconds: float = Field(default=5.0, gt=0)
    """A jump in stream time larger than this is a gap in coverage."""
    gate: bool = True
    """Skip encoder passes on static stretches (cheap-index gate)."""
    gate_motion: float = Field(default=0.004, ge=0)
    gate_hist: float = Field(default=0.02, ge=0)
    gate_max_seconds: float = Field(default=30.0, gt=0)
    """Encode at least once per this many seconds even when static."""
    store_bytes: int = Field(default=2 * 1024**3, ge=0)
    """Frame-store byte bound (oldest evicted first); 0 disables the store."""
    store_size: int = Field(default=224, ge=32, le=1024)
    """Longest side of stored JPEG frames."""
    store_quality: int = Field(default=80, ge=10, le=100)
    cheap_capacity: int = Field(default=1_000_000, ge=16)
    """Cheap-index entries kept (ring buffer)."""
    encoder_nice: int = Field(default=0, ge=0, le=19)
    """Niceness added to the encoder's threads during an archive pass (``vmr ingest``, never the live
    service), so that the decoder, which bounds an archive pass, gets the cores first
    (:mod:`agent.thread_priority`; Linux only, a refusal is logged and ignored). 0: unchanged, the
    default: 5 measured a few per cent faster in A-B-A rounds, inside the machine's noise, and 10
    or the ``idle`` policy starved the encoder on a loaded machine (bench/README.md "Encoder priority")."""
    encoder_sched: SchedPolicy = "other"
    """Scheduling policy of the encoder's threads during an archive pass, as ``encoder_nice``."""


MAX_TOP_K = 100
"""Most moments one query may ask for (protocol, CLI and settings alike)."""


class QueryConfig(Strict):
    """How queries are answered."""

    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    candidates: int = Field(default=8, ge=1, le=256)
    """Anchors kept by the prescreen for refinement."""
    context_seconds: float = Field(default=10.0, ge=0)
    """Seconds added around each candidate anchor before refinement."""
    refine: bool = True
    max_refine_frames: int = Field(default=64, ge=1)
    """Stored frames re-encoded per query (refine cost is ~all re-encoding)."""
    nms_iou: float = Field(default=0.5, ge=0, le=1)
    min_confidence: float = Field(default=0.95, ge=0, le=1)
    """Calibrated confidence a moment needs; below it for every moment, the answer abstains
    ("no confident match"). 0.95 = a 5 % family-wise false-alarm rate against the stream's
    own background scores (see agent.core.fuse)."""
    max_text_chars: int = Field(default=2000, ge=1)
    max_image_bytes: int = Field(default=8 * 1024**2, ge=1)
    image_query: Literal["still-shot", "photo"] = "still-shot"
    """How an image query scores anchors. ``still-shot``: the photo tiled N x N at the index's
    grid (the super-image footage of that photo would make), like with like; ``photo``: the
    photo alone, the behaviour before. Refinement scores stored frames with the photo alone
    either way. See :attr:`Settings.query_grid`."""


class LLMConfig(Strict):
    """The optional LLM stage (an OpenAI-compatible server: vLLM, llama.cpp, ...).

    Off unless ``url`` is set. On a CPU box the embedded 0.5B model is slow
    (tens of seconds per answer) and did not improve on the CLIP proposals in
    our runs, so it is opt-in; with vLLM and a vision model it is worth it.
    """

    url: str | None = Field(default_factory=lambda: env_str("VMR_LLM_URL"))
    """Base URL, e.g. http://127.0.0.1:8000 (``vmr llm serve`` prints it)."""
    model: str | None = None
    api_key: str | None = Field(default_factory=lambda: env_str("VMR_LLM_API_KEY"))
    timeout: float = Field(default=60.0, gt=0)
    budget_tokens: int = Field(default=1024, ge=128)
    """Prompt budget; low-importance captions are dropped first to fit."""
    max_tokens: int = Field(default=192, ge=16)
    a1: float = Field(default=0.5, ge=0)
    """Weight of sim(frame, query) in S_q."""
    a2: float = Field(default=0.5, ge=0)
    """Weight of sim(caption, query), scaled by frame-caption agreement, in S_q."""
    caption_mode: Literal["storage", "latency"] = "storage"
    """SMORE's modes: captions on demand per query, or generic ones made at ingest."""
    frames_per_region: int = Field(default=3, ge=1, le=16)


class SpeechConfig(Strict):
    """The speech channel (``agent.channels.speech``): off unless ``enabled``; rules in that module."""

    enabled: bool = False
    model: str = "base"
    """``base``: the packaged model (assembled, checked); another whisper name needs a network."""
    language: str | None = "en"
    """None: detected per window."""
    semantic: bool = True
    """Also search by meaning (MiniLM sentence vectors), not only by words."""
    window_seconds: float = Field(default=30.0, gt=1.0, le=600.0)
    """Seconds of sound per whisper call from a live source (RTSP, WHIP, a file replayed at
    stream pace): 30 keeps the lag of a phrase becoming searchable near 30 s."""
    recorded_window_seconds: float = Field(default=300.0, gt=1.0, le=600.0)
    """The same from a recorded source (``vmr ingest``, a file or segment folder in a service):
    the VAD packs sparse speech into fewer 30-s encoder passes (at 30 % speech, 300-s windows
    cost ~40 % fewer CPU s than 30-s ones, bench/results/speech_speed.json). Memory: a window is
    300 x 16 000 x 4 B = 19.2 MB of float32 sound, and a stream buffers up to 4 of them in a
    service (one filling, two queued, one in whisper: ~77 MB; ``agent.service.local_shard``).
    A ``segments`` stream counts as recorded even while it follows a folder a recorder fills:
    its speech then lags up to this many seconds (set 30 for a live recorder's folder)."""
    batch_size: int = Field(default=8, ge=1, le=32)
    """VAD chunks of a window whisper decodes together (1: one at a time, the decoder's own
    timestamps); batching cuts the decoder's CPU s (bench/results/speech_speed.json)."""
    budget_bytes: int = Field(default=2_000_000, ge=1_000)
    max_no_speech_prob: float = Field(default=0.6, ge=0.0, le=1.0)
    min_avg_logprob: float = Field(default=-1.0, le=0.0)
    max_compression_ratio: float = Field(default=2.4, gt=1.0)
    min_word_prob: float = Field(default=0.3, ge=0.0, le=1.0)
    repeat_memory: int = Field(default=3, ge=0)
    retries: int = Field(default=1, ge=0)


class OcrConfig(Strict):
    """The on-screen text channel (``agent.channels.ocr``): off unless ``enabled``; rules in that module."""

    enabled: bool = False
    language: str = "eng"
    """Tesseract language data (Debian: tesseract-ocr-LANG)."""
    semantic: bool = True
    """Also search by meaning (MiniLM sentence vectors), not only by words."""
    min_interval: float = Field(default=2.0, gt=0.0)
    """Seconds between two reads at least."""
    max_interval: float = Field(default=10.0, gt=0.0)
    """Seconds between two reads at most (text on a still background)."""
    change: float = Field(default=12.0, ge=0.0, le=255.0)
    """Change of a 16x16 block-mean grey cell (0..255) since the last read that counts as a new picture."""
    read_keyframes: bool = False
    """Also read every keyframe, changed or not. Off: on a coarse pass every frame is a keyframe, so
    this read every sampled frame (300 reads per 10 min, 22x the visual pass: bench/README)."""
    min_short_side: int = Field(default=480, ge=32, le=4096)
    """Pixels: pictures shorter than this are enlarged before Tesseract (it wants letters ~30 px tall).
    Cost grows with it: 0.46 CPU s a read at 480, 0.16 at 224 (bench/README, issue 13)."""
    min_conf: float = Field(default=60.0, ge=0.0, le=100.0)
    same_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    budget_bytes: int = Field(default=1_000_000, ge=1_000)


class Settings(Strict):
    """Everything one ingest or service run needs."""

    prescreen: EncoderConfig = Field(default_factory=EncoderConfig)
    refine: EncoderConfig | None = None
    """Refine encoder; None means the prescreen encoder does both."""
    index: IndexConfig = Field(default_factory=IndexConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)

    @property
    def query_grid(self) -> int:
        """The grid an image query is tiled at to score anchors: the index's under
        ``query.image_query = "still-shot"``, 1 (the photo alone) under ``"photo"``."""
        return self.index.grid if self.query.image_query == "still-shot" else 1


def validate(model: type[Strict], data: dict[str, object]) -> Strict:
    """Validate ``data`` as ``model``, translating pydantic's error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from exc
