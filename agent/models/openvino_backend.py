"""OpenVINO on the CPU: the torch towers converted at load, the IR cached on disk.

The visual and text towers of a CLIP model are traced with example inputs
(``openvino.convert_model``) into two OpenVINO models with a dynamic batch
dimension, then compiled for the CPU with the configured thread count and
inference precision (:func:`resolve_precision`): ``f32`` equals torch within
1e-4 cosine (tests/agent/models); ``bf16``, what ``auto`` picks where the CPU
reports BF16, runs 1.6x the images per second on an AVX512-BF16 CPU at a
per-row cosine to f32 above 0.9999 (bench/precision.py). The IR itself stays
float32 either way, so the precision is no part of the cache key.

Conversion takes seconds to tens of seconds, so the IR is cached under
``cache_dir()/openvino/<arch>-<key>/`` (:mod:`agent.models.ir_cache`) where ``key`` hashes the architecture,
what identifies the weights (:func:`~agent.models.weights.weights_id`: the
seed, or the checkpoint file; the state-dict digest when neither is known)
and the OpenVINO version. The key needs no torch model, so a cache hit
(:func:`load_cached`) reads the IR and the entry's :class:`ModelFacts` and
never builds one: that is most of a cold start. A cache entry appears whole
or not at all (written to a temporary folder, then renamed); a cache that
cannot be written only costs the conversion next time. An entry damaged
later (a file shorter than recorded, or an IR OpenVINO cannot read) is
discarded with a warning and converted again once.

Peak memory: with ``release_torch`` (what :func:`~agent.models.encoder.load_encoder`
asks for) the torch weights are dropped (the module moved to the meta device)
and the freed heap handed back to the system *before* compiling, so the torch
module and the compiled model never sit in memory together; the towers are then
compiled from the cached IR on disk (``convert_model`` shares the torch
tensors, so its output cannot outlive them).

Every failure (OpenVINO missing, a conversion or compile error) is raised as
:class:`~agent.errors.ConfigError`, the one boundary where OpenVINO's errors are
translated.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import EncoderConfig
from agent.errors import ConfigError, PrecisionUnsupportedError
from agent.models.ir_cache import FORMAT, TOWERS, cache_folder, read_entry, save_entry
from agent.models.weights import BuiltModel, ModelFacts, weights_digest, weights_id
from agent.process_memory import trim_heap

if TYPE_CHECKING:  # torch is imported to convert, never to load a cached IR
    import torch

log = logging.getLogger(__name__)


def _tower(model: torch.nn.Module, which: str) -> torch.nn.Module:
    """One tower of a CLIP model as a module with a single forward (what tracing needs)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fn = self.model.encode_image if which == "image" else self.model.encode_text
            return fn(x)  # type: ignore[operator, no-any-return]

    return Tower()


def built_weights_id(built: BuiltModel) -> str:
    """The weights identity of an already built model: its state-dict digest and input sizes."""
    return f"digest={weights_digest(built.model)}|{built.image_size}|{built.context_length}"


def _import_openvino() -> Any:
    try:
        if "openvino" not in sys.modules:
            _telemetry_opt_in_only("OpenVINO", "")  # the name the import uses
        import openvino
    except ImportError as exc:
        raise ConfigError(f"the openvino backend needs the openvino package: {exc}") from exc
    return openvino


def _telemetry_opt_in_only(app_name: str, tid: str) -> None:
    """Keep OpenVINO from sending usage telemetry unless the user opted in.

    ``import openvino`` and every ``convert_model`` send usage events unless the
    user opted out (``opt_in_out --opt_out``) or runs in CI. Both go through one
    process-wide telemetry object that OpenVINO reuses when it exists under the
    same application name; initialising it first in opt-in mode means nothing
    is sent unless the user ran ``opt_in_out --opt_in``.
    """
    try:
        import openvino_telemetry
    except ImportError:
        return  # nothing could send anything
    params: dict[str, Any] = {
        "app_name": app_name,
        "app_version": importlib.metadata.version("openvino"),
        "tid": tid,
        "backend": "ga4",
        "enable_opt_in_dialog": True,
        "disable_in_ci": True,
    }
    try:
        # The constructor returns an existing instance unchanged: init() re-decides consent.
        openvino_telemetry.Telemetry(**params).init(**params)
    except Exception as exc:  # a changed telemetry API must not stop the encoder
        log.warning("could not set OpenVINO telemetry to opt-in only: %s", exc)


def _convert(ov: Any, built: BuiltModel) -> dict[str, Any]:
    import torch
    from openvino.tools.ovc.telemetry_utils import get_tid

    _telemetry_opt_in_only("OVC", get_tid())  # the name convert_model uses
    size, ctx = built.image_size, built.context_length
    examples = {
        "image": (torch.zeros(2, 3, size, size), ov.PartialShape([-1, 3, size, size]), ov.Type.f32),
        "text": (torch.zeros(2, ctx, dtype=torch.int64), ov.PartialShape([-1, ctx]), ov.Type.i64),
    }
    models = {}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that torch.jit.trace is deprecated: noise for every load.
        warnings.simplefilter("ignore")
        for which in TOWERS:
            example, shape, dtype = examples[which]
            models[which] = ov.convert_model(
                _tower(built.model, which), example_input=example, input=[(shape, dtype)]
            )
    return models


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin reports native BF16 (AVX512-BF16 or AMX) on this machine."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(requested: str, has_bf16: bool) -> str:
    """The precision to compile with: ``f32`` or ``bf16``.

    ``auto`` is bf16 where the CPU has it (OpenVINO's own default does this on
    AMX CPUs only; AVX512-BF16 ones gain as much), else f32. Raises
    :class:`PrecisionUnsupportedError` for ``bf16`` on a CPU without it
    (OpenVINO would quietly run f32, or emulate bf16 slowly).
    """
    if requested == "auto":
        return "bf16" if has_bf16 else "f32"
    if requested == "bf16" and not has_bf16:
        raise PrecisionUnsupportedError(
            "precision 'bf16' needs a CPU with BF16 instructions (AVX512-BF16 or AMX); "
            "this CPU reports none: use precision 'auto' or 'f32'"
        )
    return requested


def _compile(ov: Any, models: dict[str, Any], threads: int, precision: str) -> tuple[dict[str, Any], str]:
    """Both towers compiled for the CPU, and the precision used (``f32`` or ``bf16``)."""
    core = ov.Core()
    used = resolve_precision(precision, cpu_has_bf16(core))
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": used,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = {which: core.compile_model(models[which], "CPU", config) for which in TOWERS}
    log.info("openvino: compiled for the CPU, %d threads, precision %s (asked: %s)", threads, used, precision)
    return compiled, used


class OpenVINOBackend:
    """Forward passes through two compiled OpenVINO models (CPU).

    ``cache_hit`` says whether the IR came from the disk cache; ``folder`` is
    the cache entry; ``precision`` the inference precision compiled for
    (``f32`` or ``bf16``). Not thread-safe: the caller serialises calls
    (ClipEncoder holds a lock around every forward).
    """

    name = "openvino"

    def __init__(
        self, compiled: dict[str, Any], *, folder: Path, cache_hit: bool, precision: str = "f32"
    ) -> None:
        self._image = _Request(compiled["image"])
        self._text = _Request(compiled["text"])
        self.folder = folder
        self.cache_hit = cache_hit
        self.precision = precision

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 normalised pixels -> (n, dim) float32, not normalised."""
        return self._image.run(pixels)

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """(n, context_length) int64 tokens -> (n, dim) float32, not normalised."""
        return self._text.run(tokens)


class _Request:
    """One tower's infer request: the batch goes in without a copy and is let go after the call.

    ``share_inputs`` hands OpenVINO the caller's array itself (no copy of up to 16 x 0.75 MiB of
    pixels), but the request then keeps it as its input tensor until the next call: an idle
    encoder pinned its last batch, so the process's RSS depended on how big that batch was
    (4.5 MiB between two marks of ``bench.query_latency``). After each call the input is set
    back to a one-row placeholder.
    """

    def __init__(self, compiled: Any) -> None:
        self._req = compiled.create_infer_request()
        port = compiled.input(0)
        shape = [1 if dim.is_dynamic else dim.get_length() for dim in port.get_partial_shape()]
        self._idle = np.zeros(shape, dtype=port.get_element_type().to_dtype())
        self._placeholder = self._tensor(self._idle)

    @staticmethod
    def _tensor(arr: np.ndarray) -> Any:
        import openvino

        return openvino.Tensor(arr, shared_memory=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output for ``batch`` (a copy, so no request buffer is handed out)."""
        # Our own Tensor: handed a bare array, OpenVINO's Python layer would keep it as well.
        tensor = self._tensor(np.ascontiguousarray(batch))
        try:
            out = self._req.infer(tensor, share_inputs=True, share_outputs=False)
            return np.array(out[0])
        finally:
            self._req.set_input_tensor(self._placeholder)


def release_torch_weights(model: torch.nn.Module) -> None:
    """Free ``model``'s weights in place (it moves to the meta device) and trim the heap.

    The module object stays (whoever holds it sees meta tensors, no data);
    glibc keeps freed blocks in its arenas, so ``malloc_trim`` hands them back
    to the system (a no-op off glibc).
    """
    model.to_empty(device="meta")
    gc.collect()
    trim_heap()


def load_cached(
    cfg: EncoderConfig, *, threads: int, root: Path | None = None
) -> tuple[OpenVINOBackend, ModelFacts] | None:
    """The compiled IR of the model ``cfg`` names and its facts, from the disk cache only.

    Builds no torch model: the key comes from :func:`~agent.models.weights.weights_id`.
    None when the weights cannot be identified without building (a pretrained
    tag not yet in the local Hugging Face cache) or the cache has no usable
    entry; the caller then builds the model and calls :func:`load_openvino`.
    Compiled at ``cfg.precision`` (:func:`resolve_precision`). Raises
    :class:`ConfigError` when OpenVINO is missing or the cached IR cannot be
    compiled, :class:`PrecisionUnsupportedError` for ``bf16`` on a CPU without it.
    """
    weights = weights_id(cfg)
    if weights is None:
        return None
    ov = _import_openvino()
    folder = cache_folder(cfg.model, weights, ov.__version__, root)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        facts = ModelFacts.from_dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no entry, or one this version cannot read: convert again
    try:
        models = read_entry(ov, folder)
        if models is None:
            return None
        compiled, used = _compile(ov, models, threads, cfg.precision)
        del models
        trim_heap()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"openvino backend failed for {cfg.model} (cache {folder}): {exc}") from exc
    return OpenVINOBackend(compiled, folder=folder, cache_hit=True, precision=used), facts


def load_openvino(
    built: BuiltModel,
    *,
    threads: int,
    root: Path | None = None,
    release_torch: bool = False,
    weights: str | None = None,
    precision: str = "f32",
) -> OpenVINOBackend:
    """Compile ``built`` for the CPU, converting it unless the disk cache holds it.

    ``threads``: OpenVINO inference threads. ``root``: the cache folder
    (default ``cache_dir()/openvino``). ``weights``: what identifies the
    weights (:func:`~agent.models.weights.weights_id`; default: the built
    model's state-dict digest). ``release_torch``: free ``built.model``'s
    weights before compiling (:func:`release_torch_weights`; the caller must not
    run it afterwards) so that peak memory holds one copy of the weights, not
    two; kept when the IR could not be cached (the converted model shares the
    torch tensors then). ``precision``: ``f32`` (the default: equal to torch
    within 1e-4 cosine), ``bf16`` or ``auto`` (:func:`resolve_precision`).
    Raises :class:`ConfigError` when OpenVINO is missing or the model cannot be
    converted or compiled, :class:`PrecisionUnsupportedError` for ``bf16`` on a
    CPU without it.
    """
    ov = _import_openvino()
    try:
        key = weights if weights is not None else built_weights_id(built)
        folder = cache_folder(built.arch, key, ov.__version__, root)
        models = read_entry(ov, folder)
        cache_hit = models is not None
        if models is None:
            log.warning(
                "openvino: converting %s once (seconds to a minute); cached in %s", built.arch, folder
            )
            models = _convert(ov, built)
            meta = {
                "arch": built.arch,
                "name": built.name,
                "openvino": ov.__version__,
                "format": FORMAT,
                "weights": key,
                "model": built.facts.to_dict(),
            }
            try:
                save_entry(ov, models, folder, meta)
            except OSError as exc:
                log.warning("openvino: could not cache the converted %s in %s: %s", built.arch, folder, exc)
                release_torch = False  # the converted model still reads the torch tensors
        cached = read_entry(ov, folder) if release_torch else None
        if cached is not None:
            models = cached  # read from disk: nothing refers to the torch tensors any more
            release_torch_weights(built.model)
        compiled, used = _compile(ov, models, threads, precision)
        del models  # the compiled models hold their own copy
        trim_heap()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"openvino backend failed for {built.arch}: {type(exc).__name__}: {exc}") from exc
    return OpenVINOBackend(compiled, folder=folder, cache_hit=cache_hit, precision=used)
