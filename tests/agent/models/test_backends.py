"""Backend choice: auto picks OpenVINO on a CPU box, falls back loudly; an explicit choice fails typed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from agent.errors import ConfigError
from agent.models.backends import TorchBackend, make_backend
from agent.models.encoder import load_encoder
from agent.models.openvino_backend import OpenVINOBackend
from agent.models.weights import build_model
from tests.agent.models.samples import TEXTS, TINY


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's answer must not depend on the machine having CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _broken_conversion(*args: object, **kwargs: object) -> None:
    raise RuntimeError("unsupported operation in this model")


def test_auto_on_cpu_is_openvino(vmr_cache: Path, cpu_only: None) -> None:
    backend = make_backend(TINY, build_model(TINY))
    assert isinstance(backend, OpenVINOBackend)
    assert backend.folder.parent == vmr_cache / "openvino"  # under the project's cache dir


def test_torch_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMR_CACHE", str(tmp_path))
    cfg = TINY.model_copy(update={"backend": "torch"})
    backend = make_backend(cfg, build_model(cfg))
    assert isinstance(backend, TorchBackend) and backend.name == "torch"
    assert not (tmp_path / "openvino").exists()  # nothing converted


@pytest.mark.parametrize("failure", ["import", "conversion"])
def test_auto_falls_back_to_torch_with_a_warning(
    failure: str,
    vmr_cache: Path,
    cpu_only: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("VMR_CACHE", str(tmp_path))  # an empty cache: conversion must run
    if failure == "import":
        monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    else:
        monkeypatch.setattr(openvino, "convert_model", _broken_conversion)
    with caplog.at_level(logging.WARNING, logger="agent.models.backends"):
        backend = make_backend(TINY, build_model(TINY))
    assert isinstance(backend, TorchBackend)
    assert any("OpenVINO unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("failure", ["import", "conversion"])
def test_explicit_openvino_failure_is_a_config_error(
    failure: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VMR_CACHE", str(tmp_path))
    if failure == "import":
        monkeypatch.setitem(sys.modules, "openvino", None)
    else:
        monkeypatch.setattr(openvino, "convert_model", _broken_conversion)
    cfg = TINY.model_copy(update={"backend": "openvino"})
    with pytest.raises(ConfigError, match="openvino"):
        make_backend(cfg, build_model(cfg))


def test_load_encoder_keeps_the_encoder_contract(vmr_cache: Path, cpu_only: None) -> None:
    cfg = TINY.model_copy(update={"batch_size": 2, "backend": "openvino"})
    enc = load_encoder(cfg)
    assert enc is load_encoder(cfg)  # once per config per process
    assert (enc.name, enc.dim, enc.image_size, enc.meaningless) == ("tiny-random", 256, 224, True)
    assert (enc.batch_size, enc.threads, enc.backend.name) == (2, 1, "openvino")
    assert enc.note is not None and "random weights" in enc.note
    vecs = enc.encode_text(TEXTS)
    assert vecs.shape == (len(TEXTS), 256) and abs(float((vecs**2).sum(axis=1).min()) - 1) < 1e-5
    assert enc.encode_images([]).shape == (0, 256)


def test_auto_fallback_after_released_weights_rebuilds_torch(
    vmr_cache: Path, cpu_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenVINO failing after the torch weights were freed still leaves a working torch encoder."""

    def broken_compile(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(openvino.Core, "compile_model", broken_compile)
    built = build_model(TINY)
    backend = make_backend(TINY, built, release_torch=True)
    assert all(p.is_meta for p in built.model.parameters())  # released before compiling
    assert isinstance(backend, TorchBackend)
    reference = TorchBackend(build_model(TINY).model, "cpu")
    tokens = np.zeros((2, 77), dtype=np.int64)
    assert np.allclose(backend.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)
