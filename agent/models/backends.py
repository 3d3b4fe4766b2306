"""Where an encoder's forward passes run: torch (CPU or CUDA) or OpenVINO (CPU).

A backend turns prepared inputs (normalised pixels, tokens) into unnormalised
embeddings; :class:`~agent.models.encoder.ClipEncoder` does everything around
it (resizing, tokenising, batching, normalising, locking), so both backends
give the same answers (within 1e-4 cosine) to the same calls.

Choice (``EncoderConfig.backend``):

- ``torch``: the torch module itself, on CUDA where available, else the CPU;
- ``openvino``: converted and compiled for the CPU
  (:mod:`agent.models.openvino_backend`); any failure is a ``ConfigError``;
- ``auto``: torch where CUDA is available, else OpenVINO, else torch. A failed
  OpenVINO load falls back to torch with a logged warning.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import torch

from agent.config import EncoderConfig
from agent.errors import ConfigError
from agent.models.weights import BuiltModel, ModelFacts

log = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """Forward passes of one CLIP model's two towers."""

    name: str
    """``torch`` or ``openvino``."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) float32 normalised pixels -> (n, dim) float32 on the CPU, not normalised."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, context_length) int64 tokens -> (n, dim) float32 on the CPU, not normalised."""
        ...


class TorchBackend:
    """The torch module, moved to ``device`` (CUDA where available, else the CPU)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = model.to(self.device).eval()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self._model.encode_image(pixels.to(self.device))  # type: ignore[operator]
        return feats.float().cpu()  # type: ignore[no-any-return]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        feats = self._model.encode_text(tokens.to(self.device))  # type: ignore[operator]
        return feats.float().cpu()  # type: ignore[no-any-return]


def wants_openvino(cfg: EncoderConfig) -> bool:
    """Whether ``cfg.backend`` picks OpenVINO on this machine (``auto``: when CUDA is absent)."""
    return cfg.backend == "openvino" or (cfg.backend == "auto" and not torch.cuda.is_available())


def cached_backend(cfg: EncoderConfig) -> tuple[Backend, ModelFacts] | None:
    """OpenVINO from the disk cache alone (no torch model built), or None: build and :func:`make_backend`.

    None also when OpenVINO is not the backend ``cfg`` picks, or the cache
    cannot serve it (a failure here is logged: the build path decides again).
    """
    if not wants_openvino(cfg):
        return None
    from agent.models.openvino_backend import load_cached

    try:
        return load_cached(cfg, threads=cfg.threads)
    except ConfigError as exc:
        log.warning("encoder %s: the OpenVINO cache could not be used: %s", cfg.model, exc)
        return None


def make_backend(
    cfg: EncoderConfig, built: BuiltModel, *, release_torch: bool = False, weights: str | None = None
) -> Backend:
    """The backend ``cfg.backend`` asks for, for ``built``.

    ``release_torch``: on OpenVINO, free ``built.model``'s weights once the IR
    is in hand (one copy of the weights in memory, not two; ``built.model`` is
    unusable afterwards). ``weights``: what identifies the weights (the
    OpenVINO cache key, :func:`~agent.models.weights.weights_id`; default: the
    built model's digest). Raises :class:`ConfigError` when ``openvino`` is
    asked for explicitly and cannot be had; under ``auto`` that failure is a
    warning and torch runs (on a rebuilt model if the weights were released).
    """
    from agent.models.openvino_backend import load_openvino

    if not wants_openvino(cfg):
        return TorchBackend(built.model)
    if cfg.backend == "openvino":
        return load_openvino(built, threads=cfg.threads, release_torch=release_torch, weights=weights)
    try:
        return load_openvino(built, threads=cfg.threads, release_torch=release_torch, weights=weights)
    except ConfigError as exc:
        log.warning("encoder %s: OpenVINO unavailable, running on torch instead: %s", built.name, exc)
        model = built.model
        if any(p.is_meta for p in model.parameters()):
            from agent.models.weights import build_model

            model = build_model(cfg).model  # released before the failure: build it again
        return TorchBackend(model)
