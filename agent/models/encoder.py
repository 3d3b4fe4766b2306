"""open_clip image/text encoder: batched, inference mode, L2-normalised float32.

Models
------
- A real open_clip architecture with weights from a pretrained tag (downloaded
  from the Hugging Face hub where a network exists) or a local checkpoint.
  MobileCLIP models are reparameterised (MobileOne branches folded) after
  loading, which is how they reach their published CPU speed.
- ``tiny-random``: a small ViT built from a fixed seed, so every process builds
  the very same weights (an index written by one process can be queried by
  another). **Its weights are random: every similarity it produces is
  meaningless.** A random ViT still separates scenes image-to-image (same scene
  ~0.98 cosine, different scenes much lower), which is what the tests and the
  offline demo rely on; text queries against it mean nothing at all.

Frames arrive already small (short side ~ the model's input size) as uint8
RGB; the encoder squashes each to the square input with one bilinear resize
and normalises with the model's own mean/std.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from agent.config import EncoderConfig
from agent.errors import ConfigError, WeightsUnavailableError
from agent.types import RGBImage

log = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
_TINY_SEED = 20240607
_MEANINGLESS = "random weights (tiny-random): similarities carry no meaning"


@runtime_checkable
class Encoder(Protocol):
    """What the core needs from an encoder."""

    name: str
    dim: int
    image_size: int
    meaningless: bool

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...


class ClipEncoder:
    """An open_clip model wrapped for batched CPU (or GPU) inference."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        *,
        name: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 16,
        threads: int | None = None,
        meaningless: bool = False,
    ) -> None:
        self.name = name
        self.image_size = image_size
        self.meaningless = meaningless
        self.batch_size = batch_size
        self.threads = threads
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # One forward at a time: torch's intra-op pool is already using the cores.
        self._lock = threading.Lock()
        self.passes = 0
        with torch.inference_mode():
            probe = self._model.encode_text(self._tokenize(["x"]))  # type: ignore[operator]
        self.dim = int(probe.shape[-1])

    @property
    def note(self) -> str | None:
        """A warning to show with every answer, or None."""
        return _MEANINGLESS if self.meaningless else None

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))  # type: ignore[operator, no-any-return]

    def _pixels(self, images: Sequence[RGBImage]) -> torch.Tensor:
        size = self.image_size
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
        out = torch.empty((len(images), 3, size, size), dtype=torch.float32)
        # One resize per run of same-sized images (frames of a stream share a size).
        start = 0
        while start < len(images):
            shape = images[start].shape
            stop = start + 1
            while stop < len(images) and images[stop].shape == shape:
                stop += 1
            batch = torch.from_numpy(np.stack(images[start:stop])).permute(0, 3, 1, 2).float()
            if batch.shape[-2:] != (size, size):
                batch = F.interpolate(
                    batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                )
            out[start:stop] = batch
            start = stop
        out.div_(255.0)
        return (out - self._mean) / self._std

    def _run(self, fn: object, batches: list[torch.Tensor]) -> np.ndarray:
        if self.threads:
            torch.set_num_threads(self.threads)
        outs = []
        with self._lock, torch.inference_mode():
            for b in batches:
                feats = fn(b)  # type: ignore[operator]
                outs.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
                self.passes += int(b.shape[0])
        return np.concatenate(outs).astype(np.float32, copy=False)

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        """Encode RGB uint8 images; one forward pass per ``batch_size`` images."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        bs = self.batch_size
        batches = [self._pixels(images[i : i + bs]) for i in range(0, len(images), bs)]
        return self._run(self._model.encode_image, batches)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Encode text queries (truncated to the model's context length)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        bs = self.batch_size
        batches = [self._tokenize(texts[i : i + bs]) for i in range(0, len(texts), bs)]
        return self._run(self._model.encode_text, batches)


def _tiny_random(cfg: EncoderConfig) -> ClipEncoder:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    # fork_rng keeps the caller's global RNG untouched while the fixed seed
    # makes the weights identical in every process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = open_clip.CLIP(
            embed_dim=256,
            vision_cfg=CLIPVisionCfg(layers=4, width=256, head_width=64, patch_size=32, image_size=224),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=256, heads=4, layers=4),
        )
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return ClipEncoder(
        model,
        tokenizer,
        name=TINY_RANDOM,
        image_size=224,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        meaningless=True,
    )


def _weights_message(cfg: EncoderConfig, exc: BaseException) -> str:
    return (
        f"could not load weights for {cfg.model!r} "
        f"({'checkpoint ' + str(cfg.checkpoint) if cfg.checkpoint else 'pretrained tag ' + repr(cfg.pretrained)}): "
        f"{exc}. Supply real weights: either run once where the Hugging Face hub is reachable "
        f"(open_clip caches them), or download the checkpoint elsewhere and pass "
        f"--checkpoint PATH (EncoderConfig.checkpoint). For an offline demo only, "
        f"--model tiny-random builds random weights whose answers are meaningless."
    )


def _pretrained(cfg: EncoderConfig) -> ClipEncoder:
    import open_clip

    if cfg.model not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {cfg.model!r}; see open_clip.list_models()")
    source: str | None = str(cfg.checkpoint) if cfg.checkpoint else cfg.pretrained
    if source is None:
        raise WeightsUnavailableError(_weights_message(cfg, ValueError("no pretrained tag or checkpoint")))
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
        raise WeightsUnavailableError(_weights_message(cfg, FileNotFoundError(str(cfg.checkpoint))))
    try:
        model = open_clip.create_model(cfg.model, pretrained=source, require_pretrained=True)
    except Exception as exc:
        raise WeightsUnavailableError(_weights_message(cfg, exc)) from exc
    if "MobileCLIP" in cfg.model:
        from timm.utils import reparameterize_model

        model = reparameterize_model(model)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    return ClipEncoder(
        model,
        open_clip.get_tokenizer(cfg.model),
        name=f"{cfg.model}:{cfg.checkpoint or cfg.pretrained}",
        image_size=int(size[0] if isinstance(size, tuple | list) else size),
        mean=pp.get("mean", (0.48145466, 0.4578275, 0.40821073)),
        std=pp.get("std", (0.26862954, 0.26130258, 0.27577711)),
        batch_size=cfg.batch_size,
        threads=cfg.threads,
    )


_CACHE: dict[EncoderConfig, ClipEncoder] = {}
_CACHE_LOCK = threading.Lock()


def load_encoder(cfg: EncoderConfig) -> ClipEncoder:
    """Build (once per config per process) the encoder ``cfg`` names.

    Raises :class:`WeightsUnavailableError` with instructions when real
    weights cannot be had; never falls back to random weights silently.
    """
    with _CACHE_LOCK:
        enc = _CACHE.get(cfg)
        if enc is None:
            torch.set_num_threads(cfg.threads)
            enc = _tiny_random(cfg) if cfg.model == TINY_RANDOM else _pretrained(cfg)
            if enc.meaningless:
                log.warning("encoder %s: %s", enc.name, _MEANINGLESS)
            _CACHE[cfg] = enc
        return enc
