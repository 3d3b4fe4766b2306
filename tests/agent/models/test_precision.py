"""Encoder precision: bf16 stays close to f32 on OpenVINO, auto follows the CPU, misuse fails typed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

import agent.models.openvino_backend as ovb
from agent.cli.main import build_parser
from agent.cli.options import encoder_config, settings_from_args
from agent.config import EncoderConfig
from agent.errors import ConfigError, PrecisionUnsupportedError
from agent.models.backends import TorchBackend, make_backend
from agent.models.encoder import ClipEncoder
from agent.models.openvino_backend import load_openvino, resolve_precision
from agent.models.weights import build_model
from tests.agent.models.samples import TEXTS, TINY, sample_images

BF16_COSINE = 0.999
"""Per-row cosine bf16 must keep to f32 (MobileCLIP2-S0 measures >= 0.9999: bench/precision.py)."""

HAS_BF16 = ovb.cpu_has_bf16(openvino.Core())


def _cpu_bf16(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    monkeypatch.setattr(ovb, "cpu_has_bf16", lambda core: present)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU reports no BF16 (OPTIMIZATION_CAPABILITIES)")
def test_bf16_is_close_to_f32_on_real_photos(shared_cache: Path) -> None:
    built = build_model(TINY)
    root = shared_cache / "openvino"
    f32 = load_openvino(built, threads=1, root=root, precision="f32")
    bf16 = load_openvino(built, threads=1, root=root, precision="bf16")
    assert (f32.precision, bf16.precision) == ("f32", "bf16")
    assert bf16.folder == f32.folder and bf16.cache_hit  # one IR: precision is no part of the key
    cfg = TINY.model_copy(update={"batch_size": 4})
    a, b = (ClipEncoder.from_built(built, backend, cfg) for backend in (f32, bf16))
    images = sample_images(9)  # 8 real photos and a noise image, two full batches and one row
    for x, y in (
        (a.encode_images(images), b.encode_images(images)),
        (a.encode_text(TEXTS), b.encode_text(TEXTS)),
    ):
        assert x.shape == y.shape and y.dtype == np.float32
        cos = (x * y).sum(axis=1)  # rows are L2-normalised
        assert cos.min() >= BF16_COSINE, cos
        assert not np.array_equal(x, y)  # bf16 really ran: its rounding shows


@pytest.mark.parametrize(
    ("asked", "has_bf16", "used"),
    [("auto", True, "bf16"), ("auto", False, "f32"), ("f32", True, "f32"), ("bf16", True, "bf16")],
)
def test_resolve_precision(asked: str, has_bf16: bool, used: str) -> None:
    assert resolve_precision(asked, has_bf16) == used


def test_auto_compiles_f32_on_a_cpu_without_bf16(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_bf16(monkeypatch, False)
    backend = load_openvino(build_model(TINY), threads=1, root=shared_cache / "openvino", precision="auto")
    assert backend.precision == "f32"


@pytest.mark.skipif(not HAS_BF16, reason="this CPU reports no BF16 (OPTIMIZATION_CAPABILITIES)")
def test_auto_compiles_bf16_where_the_cpu_has_it(shared_cache: Path) -> None:
    backend = load_openvino(build_model(TINY), threads=1, root=shared_cache / "openvino", precision="auto")
    assert backend.precision == "bf16"


def test_explicit_bf16_on_a_cpu_without_it_is_a_typed_error(
    vmr_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu_bf16(monkeypatch, False)
    with pytest.raises(PrecisionUnsupportedError, match="BF16"):
        load_openvino(build_model(TINY), threads=1, root=vmr_cache / "openvino", precision="bf16")
    # Under backend auto too: torch would run f32, which is not what was asked.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TINY.model_copy(update={"precision": "bf16"})
    with pytest.raises(PrecisionUnsupportedError):
        make_backend(cfg, build_model(cfg))


def test_bf16_with_torch_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="OpenVINO CPU setting"):
        EncoderConfig(model="tiny-random", allow_random=True, backend="torch", precision="bf16")
    with pytest.raises(PrecisionUnsupportedError, match="OpenVINO CPU setting"):
        encoder_config("tiny-random", None, None, 1, backend="torch", precision="bf16")
    args = build_parser().parse_args(
        ["ingest", "x.mp4", "--index", "idx", "--backend", "torch", "--precision", "bf16"]
    )
    with pytest.raises(PrecisionUnsupportedError, match="OpenVINO CPU setting") as caught:
        settings_from_args(args)
    assert caught.value.code == "precision_unsupported"
    # Other invalid flags stay plain config errors, one readable line without pydantic's URL.
    with pytest.raises(ConfigError, match="threads") as bad:
        encoder_config("tiny-random", None, None, 0, backend="torch")
    assert "pydantic.dev" not in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(ValueError):
        EncoderConfig(precision="fp16")  # type: ignore[arg-type]


def test_bf16_landing_on_torch_under_auto_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA, auto runs torch: an explicit bf16 fails instead of silently running f32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = TINY.model_copy(update={"precision": "bf16"})
    with pytest.raises(PrecisionUnsupportedError, match="torch"):
        make_backend(cfg, build_model(cfg))


def test_torch_runs_f32_under_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMR_CACHE", str(tmp_path))
    cfg = TINY.model_copy(update={"backend": "torch"})
    assert cfg.precision == "auto"
    backend = make_backend(cfg, build_model(cfg))
    assert isinstance(backend, TorchBackend) and backend.precision == "f32"
