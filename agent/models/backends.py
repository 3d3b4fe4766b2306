"""Where an encoder's forward passes run: torch (CPU or CUDA) or OpenVINO (CPU).

A backend turns prepared inputs (normalised pixels, tokens: numpy arrays) into
unnormalised embeddings (numpy); :class:`~agent.models.encoder.ClipEncoder` does everything around
it (resizing, tokenising, batching, normalising, locking), so both backends
give the same answers (within 1e-4 cosine) to the same calls.

Choice (``EncoderConfig.backend``):

- ``torch``: the torch module itself, on CUDA where available, else the CPU;
- ``openvino``: converted and compiled for the CPU
  (:mod:`agent.models.openvino_backend`); any failure is a ``ConfigError``;
- ``auto``: torch where CUDA is available, else OpenVINO, else torch. A failed
  OpenVINO load falls back to torch with a logged warning.

torch is imported only where a torch backend is made or CUDA is asked about
(``auto``), never for an explicit ``openvino`` whose IR is cached: the serving
process then holds no torch at all (~480 MB resident less).

Precision (``EncoderConfig.precision``) is an OpenVINO CPU setting: torch runs
float32 (``auto`` is f32 there); ``bf16`` that would land on torch (asked of
torch, CUDA under ``auto``, or a failed OpenVINO load) is a
:class:`~agent.errors.PrecisionUnsupportedError`, never silently f32.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from agent.config import EncoderConfig
from agent.errors import ConfigError, PrecisionUnsupportedError
from agent.models.weights import BuiltModel, ModelFacts

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """Forward passes of one CLIP model's two towers."""

    name: str
    """``torch`` or ``openvino``."""

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 normalised pixels -> (n, dim) float32, not normalised."""
        ...

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """(n, context_length) int64 tokens -> (n, dim) float32, not normalised."""
        ...


class TorchBackend:
    """The torch module, moved to ``device`` (CUDA where available, else the CPU).

    ``threads``: torch's intra-op threads, set before each forward pass (None: torch's own).
    """

    name = "torch"
    precision = "f32"

    def __init__(self, model: torch.nn.Module, device: str | None = None, threads: int | None = None) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = model.to(self.device).eval()
        self._threads = threads

    def _forward(self, fn: str, inputs: np.ndarray) -> np.ndarray:
        import torch

        if self._threads:
            torch.set_num_threads(self._threads)
        with torch.inference_mode():
            feats = getattr(self._model, fn)(torch.from_numpy(inputs).to(self.device))
            return feats.float().cpu().numpy()  # type: ignore[no-any-return]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._forward("encode_image", pixels)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self._forward("encode_text", tokens)


def _cuda_available() -> bool:
    """torch's answer, without importing torch on a Linux machine with no GPU driver loaded.

    ``torch.cuda.is_available()`` needs the NVIDIA driver (``/proc/driver/nvidia``)
    or, for ROCm builds, the AMD one (``/dev/kfd``): with neither, the answer is
    no and the ``auto`` choice of OpenVINO costs no torch import.
    """
    if "torch" not in sys.modules and sys.platform == "linux":
        if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
            return False
    import torch

    return bool(torch.cuda.is_available())


def wants_openvino(cfg: EncoderConfig) -> bool:
    """Whether ``cfg.backend`` picks OpenVINO on this machine (``auto``: when CUDA is absent)."""
    # Only ``auto`` asks torch about CUDA: an explicit ``openvino`` never imports it.
    return cfg.backend == "openvino" or (cfg.backend == "auto" and not _cuda_available())


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
    warning and torch runs (on a rebuilt model if the weights were released),
    unless ``cfg.precision`` is ``bf16``: torch cannot run that, so the error
    stands (:class:`PrecisionUnsupportedError` when bf16 would land on torch).
    """
    from agent.models.openvino_backend import load_openvino

    if not wants_openvino(cfg):
        if cfg.precision == "bf16":
            raise PrecisionUnsupportedError(
                f"encoder {cfg.model}: precision 'bf16' is an OpenVINO CPU setting, and the "
                "encoder runs on torch here (CUDA present): use precision 'auto' or 'f32'"
            )
        return TorchBackend(built.model, threads=cfg.threads)

    try:
        return load_openvino(
            built, threads=cfg.threads, release_torch=release_torch, weights=weights, precision=cfg.precision
        )
    except ConfigError as exc:
        if cfg.backend == "openvino" or cfg.precision == "bf16":
            raise  # asked for explicitly, or torch would run f32: not what was asked
        log.warning("encoder %s: OpenVINO unavailable, running on torch instead: %s", built.name, exc)
        model = built.model
        if any(p.is_meta for p in model.parameters()):
            from agent.models.weights import build_model

            model = build_model(cfg).model  # released before the failure: build it again
        return TorchBackend(model, threads=cfg.threads)
