"""open_clip image/text encoder: batched, inference mode, L2-normalised float32.

:func:`load_encoder` builds the model an :class:`~agent.config.EncoderConfig`
names (:mod:`agent.models.weights`: pretrained, seeded random weights, or
``tiny-random``) and runs it on a backend (:mod:`agent.models.backends`: torch,
or OpenVINO on the CPU); ``classical-hog`` runs a classical descriptor
(:mod:`agent.models.classical`) as its backend instead of a network. An encoder
with random weights (or no semantics, as the descriptor) is ``meaningless``:
every answer it contributes to says so. A random network still separates
scenes image-to-image (same scene ~0.98 cosine, different scenes much lower),
which is what the tests and the offline demo rely on; text queries against it
mean nothing at all.

Frames arrive already small (short side ~ the model's input size) as uint8
RGB; the encoder squashes each to the square input with one antialiased
bilinear resize (Pillow's, on uint8: within one grey level of torch's
``interpolate(antialias=True)``, which earlier versions used, for about half
its CPU) and normalises with the model's own mean/std, in numpy. torch and open_clip are
imported only to build a torch model: an encoder served from the OpenVINO
cache never loads them (:mod:`agent.models.clip_tokenizer`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from agent.config import EncoderConfig
from agent.models import classical
from agent.models.backends import Backend, cached_backend, make_backend
from agent.models.classical import CLASSICAL, ClassicalBackend
from agent.models.weights import (
    TINY_RANDOM,
    BuiltModel,
    ModelFacts,
    Tokenizer,
    build_model,
    load_tokenizer,
    weights_id,
)
from agent.thread_priority import COMPUTE_THREADS
from agent.types import RGBImage

__all__ = [
    "CLASSICAL",
    "TINY_RANDOM",
    "ClipEncoder",
    "Encoder",
    "encoder_for",
    "load_encoder",
    "loaded_encoders",
    "provide_encoder",
    "warn_meaningless",
]

log = logging.getLogger(__name__)


class Named(Protocol):
    """What callers read of an encoder's backend: its name (``torch``, ``openvino``, ``pool:...``)."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Encoder(Protocol):
    """What the core needs from an encoder."""

    name: str
    dim: int
    image_size: int
    meaningless: bool
    batch_size: int
    """Images per forward pass (callers batch their work to it)."""

    @property
    def note(self) -> str | None:
        """A warning to show with every answer (random weights), or None."""
        ...

    @property
    def backend(self) -> Named:
        """What runs the forward passes."""
        ...

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...


class ClipEncoder:
    """An open_clip model on a backend (torch on CPU or GPU, OpenVINO on CPU), batched.

    ``backend`` runs the forward passes; this class resizes, tokenises,
    batches, normalises and serialises them (one forward at a time). ``dim``
    skips the text probe that otherwise measures the embedding width (a backend
    without a text side has none to probe); ``note`` replaces the random-weights
    warning of a ``meaningless`` encoder.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        name: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 16,
        threads: int | None = None,
        meaningless: bool = False,
        dim: int | None = None,
        note: str | None = None,
    ) -> None:
        self.name = name
        self.image_size = image_size
        self.meaningless = meaningless
        self.batch_size = batch_size
        self.threads = threads
        self.backend = backend
        self._tokenizer = tokenizer
        # Pixels stay 0..255: (x - 255 mean) / (255 std) is (x / 255 - mean) / std in one pass.
        self._offset = (255.0 * np.asarray(mean, np.float32)).reshape(1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(1, 3, 1, 1)
        # One forward at a time: the backend's thread pool is already using the cores.
        self._lock = threading.Lock()
        self.passes = 0
        self._note = note
        if dim is None:
            dim = int(backend.encode_text(self._tokenize(["x"])).shape[-1])
        self.dim = dim

    @classmethod
    def from_built(cls, built: BuiltModel, backend: Backend, cfg: EncoderConfig) -> ClipEncoder:
        """The encoder for ``built`` running on ``backend``, batched as ``cfg`` says."""
        return cls.from_facts(built.facts, built.tokenizer, backend, cfg)

    @classmethod
    def from_facts(
        cls, facts: ModelFacts, tokenizer: Tokenizer, backend: Backend, cfg: EncoderConfig
    ) -> ClipEncoder:
        """The encoder for a model known by its ``facts`` (no torch model needed) on ``backend``."""
        return cls(
            backend,
            tokenizer,
            name=facts.name,
            image_size=facts.image_size,
            mean=facts.mean,
            std=facts.std,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
            meaningless=facts.meaningless,
        )

    @property
    def note(self) -> str | None:
        """A warning to show with every answer, or None."""
        if self._note is not None:
            return self._note
        return f"{self.name} has random weights: similarities carry no meaning" if self.meaningless else None

    def _tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self._tokenizer(list(texts))

    def _pixels(self, images: Sequence[RGBImage]) -> np.ndarray:
        """(n, 3, S, S) float32, normalised: each image squashed to S x S, then mean/std applied."""
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
        rgb = np.stack([_squash(img, self.image_size) for img in images])
        # Channels first while still uint8 (a quarter of the bytes to shuffle), then float in place.
        pixels = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)).astype(np.float32)
        pixels -= self._offset
        pixels *= self._scale
        return pixels

    def _run(self, fn: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray]) -> np.ndarray:
        outs = []
        with self._lock:
            for b in batches:
                feats = np.asarray(fn(b), dtype=np.float32)
                # As torch's F.normalize: a zero row stays zero (norm floored at 1e-12).
                norms = np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
                outs.append(feats / norms)
                self.passes += int(b.shape[0])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        """Encode RGB uint8 images; one forward pass per ``batch_size`` images."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        bs = self.batch_size
        batches = [self._pixels(images[i : i + bs]) for i in range(0, len(images), bs)]
        return self._run(self.backend.encode_image, batches)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Encode text queries (truncated to the model's context length)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        bs = self.batch_size
        batches = [self._tokenize(texts[i : i + bs]) for i in range(0, len(texts), bs)]
        return self._run(self.backend.encode_text, batches)


def _squash(img: RGBImage, size: int) -> np.ndarray:
    """``img`` resized to ``size`` x ``size`` (aspect not kept), antialiased bilinear; as is when already so."""
    if img.shape[:2] == (size, size):
        return img
    # Pillow's BILINEAR widens its filter by the reduction factor (antialiasing) and runs on uint8 in SIMD.
    pic = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    return np.asarray(pic.resize((size, size), Image.Resampling.BILINEAR))


def _classical(cfg: EncoderConfig) -> ClipEncoder:
    """The classical descriptor (:mod:`agent.models.classical`): no weights, numpy on the CPU.

    ``backend`` is not consulted (nothing to convert); pixels reach the
    descriptor in [0, 1] (mean 0, std 1).
    """
    return ClipEncoder(
        ClassicalBackend(),
        classical.tokenize,
        name=CLASSICAL,
        image_size=classical.IMAGE_SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        meaningless=True,
        dim=ClassicalBackend.dim,
        note=classical.NOTE,
    )


_CACHE: dict[EncoderConfig, ClipEncoder] = {}
_PROVIDED: dict[EncoderConfig, Encoder] = {}
_CACHE_LOCK = threading.Lock()


def provide_encoder(cfg: EncoderConfig, encoder: Encoder | None) -> None:
    """Make ``encoder`` this process's encoder for ``cfg`` (see :func:`encoder_for`); None withdraws it.

    A Ray stream actor provides the cluster's encoder pool here before it opens
    its index, which then loads no model (one stream actor per process).
    """
    with _CACHE_LOCK:
        if encoder is None:
            _PROVIDED.pop(cfg, None)
        else:
            _PROVIDED[cfg] = encoder


def encoder_for(cfg: EncoderConfig) -> Encoder:
    """The encoder provided for ``cfg`` in this process, else the one :func:`load_encoder` builds."""
    with _CACHE_LOCK:
        provided = _PROVIDED.get(cfg)
    return provided if provided is not None else load_encoder(cfg)


def load_encoder(cfg: EncoderConfig) -> ClipEncoder:
    """Build (once per config per process) the encoder ``cfg`` names, on its backend.

    Raises :class:`~agent.errors.WeightsUnavailableError` with instructions
    when real weights cannot be had (never falls back to random weights
    silently), and :class:`~agent.errors.ConfigError` for an unknown model or
    an explicit ``openvino`` backend that cannot be loaded.
    """
    with _CACHE_LOCK:
        enc = _CACHE.get(cfg)
        if enc is None:
            with COMPUTE_THREADS.watch():  # the backend's worker threads (an archive pass lowers them)
                enc = _load(cfg)
            _CACHE[cfg] = enc
        return enc


def _load(cfg: EncoderConfig) -> ClipEncoder:
    """The encoder ``cfg`` names, built now (:func:`load_encoder` caches it)."""
    if cfg.model == CLASSICAL:
        enc = _classical(cfg)
    elif (cached := cached_backend(cfg)) is not None:
        # An OpenVINO cache hit: no torch model is built (most of a cold start).
        backend, facts = cached
        enc = ClipEncoder.from_facts(facts, load_tokenizer(facts.tokenizer), backend, cfg)
    else:
        import torch

        torch.set_num_threads(cfg.threads)  # building and converting run on torch
        built = build_model(cfg)
        # After the build: a pretrained file just downloaded is now identifiable.
        weights = weights_id(cfg)
        # The encoder owns this module: OpenVINO may free its weights (peak memory).
        backend = make_backend(cfg, built, release_torch=True, weights=weights)
        enc = ClipEncoder.from_built(built, backend, cfg)
    if enc.meaningless:
        warn_meaningless(cfg, enc.note)
    log.info("encoder %s on %s, %d threads", enc.name, enc.backend.name, cfg.threads)
    return enc


_WARNED: set[tuple[str, bool]] = set()
"""The models whose meaningless answers this process has warned of (:func:`warn_meaningless`)."""
_WARNED_LOCK = threading.Lock()  # not _CACHE_LOCK: the loader warns while holding that one


def warn_meaningless(cfg: EncoderConfig, note: str | None = None) -> None:
    """Log (WARNING) that answers from ``cfg``'s model are meaningless, once per process and model.

    Called by the loader and by ``vmr serve`` before anything loads (a pool's
    encoders load in other processes), so a terminal shows it once. ``note``:
    the reason (default: random weights). No-op for a model with real weights.
    """
    if note is None:
        if cfg.model == CLASSICAL:
            note = classical.NOTE
        elif cfg.model == TINY_RANDOM or cfg.random_weights:
            note = f"{cfg.model} has random weights: similarities carry no meaning"
        else:
            return
    key = (cfg.model, cfg.random_weights)
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning("encoder: %s; answers are MEANINGLESS", note)


def loaded_encoders() -> list[str]:
    """Names of the models :func:`load_encoder` built in this process (a pool's stream actors: none)."""
    with _CACHE_LOCK:
        return [enc.name for enc in _CACHE.values()]
