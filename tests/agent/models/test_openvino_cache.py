"""The OpenVINO cache is keyed without building the model: a hit builds no torch model, a new checkpoint misses."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import agent.models.encoder as encoder
import agent.models.openvino_backend as openvino_backend
import agent.models.weights as weights
from agent.config import EncoderConfig
from agent.models.encoder import ClipEncoder, load_encoder
from agent.models.weights import BuiltModel, weights_id
from tests.agent.models.samples import TEXTS, TINY, sample_images

# A tiny open_clip architecture registered for these tests: a real checkpoint of it is ~10 MB.
_ARCH = "vmr-test-tiny"
_ARCH_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture
def fresh_encoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty OpenVINO cache and no encoder kept from an earlier load in this process."""
    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(encoder, "_CACHE", {})
    return tmp_path / "cache"


def _forbid_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the torch model was built although the OpenVINO cache holds it")

    for module, name in ((encoder, "build_model"), (weights, "build_model"), (weights, "_tiny_random")):
        monkeypatch.setattr(module, name, no_build)
    monkeypatch.setattr(weights, "_open_clip_model", no_build)


def _reload(cfg: EncoderConfig, monkeypatch: pytest.MonkeyPatch) -> ClipEncoder:
    monkeypatch.setattr(encoder, "_CACHE", {})  # as a new process would
    return load_encoder(cfg)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float((a * b).sum(axis=1).min()) >= 1 - 1e-5


def test_cache_hit_builds_no_torch_model(fresh_encoders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TINY.model_copy(update={"backend": "openvino", "batch_size": 3})
    first = load_encoder(cfg)
    assert first.backend.name == "openvino" and not first.backend.cache_hit  # type: ignore[attr-defined]
    images = sample_images(3)
    _forbid_building(monkeypatch)
    second = _reload(cfg, monkeypatch)
    assert second.backend.cache_hit  # type: ignore[attr-defined]
    assert (second.name, second.dim, second.image_size, second.meaningless, second.note) == (
        first.name,
        first.dim,
        first.image_size,
        first.meaningless,
        first.note,
    )
    assert _same(first.encode_images(images), second.encode_images(images))
    assert _same(first.encode_text(TEXTS), second.encode_text(TEXTS))


def test_random_weights_are_keyed_by_seed_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_building(monkeypatch)
    cfg = EncoderConfig(model="MobileCLIP2-S0", pretrained=None, random_weights=True)
    key = weights_id(cfg)
    assert key is not None and key.startswith("seed=") and key == weights_id(cfg)


@pytest.fixture
def tiny_arch(tmp_path: Path) -> str:
    """Register :data:`_ARCH` with open_clip (a config file, as a user's own model would be)."""
    import open_clip

    path = tmp_path / "configs" / f"{_ARCH}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_ARCH_CFG))
    open_clip.add_model_config(path)
    return _ARCH


def _write_checkpoint(path: Path, arch: str, seed: int) -> None:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
    torch.save(model.state_dict(), path)


def test_a_changed_checkpoint_misses(
    tiny_arch: str, fresh_encoders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "weights.pt"
    _write_checkpoint(ckpt, tiny_arch, seed=1)
    cfg = EncoderConfig(model=tiny_arch, checkpoint=ckpt, backend="openvino", threads=1)
    images = sample_images(2)
    first = load_encoder(cfg)
    assert not first.backend.cache_hit  # type: ignore[attr-defined]
    before = first.encode_images(images)
    with monkeypatch.context() as patch:
        _forbid_building(patch)
        assert _reload(cfg, patch).backend.cache_hit  # type: ignore[attr-defined]

    # Other weights in the same file, with the old size and modification time: the content decides.
    stat = ckpt.stat()
    _write_checkpoint(ckpt, tiny_arch, seed=2)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ckpt.stat().st_size == stat.st_size
    changed = _reload(cfg, monkeypatch)
    assert not changed.backend.cache_hit  # type: ignore[attr-defined]
    assert not _same(before, changed.encode_images(images))  # the new weights answer
    assert len(list((fresh_encoders / "openvino").iterdir())) == 2  # one entry per checkpoint


def test_a_pretrained_tag_is_keyed_by_its_cached_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hugging Face cache layout: snapshots/<commit>/<file> links to blobs/<content hash>."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "vmr"))
    _forbid_building(monkeypatch)
    cfg = EncoderConfig(model="MobileCLIP2-S0", pretrained="dfndr2b")
    assert weights_id(cfg) is None  # not cached: only building (downloading) can tell the weights

    def no_open_clip(*args: object, **kwargs: object) -> None:
        raise AssertionError("open_clip was asked again: a cache hit would import torch")

    # The tag's hub files are remembered: later look-ups need no open_clip (nor torch).
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", no_open_clip)
    assert (tmp_path / "vmr" / "hub-files.json").is_file()
    repo, commit = cache / "models--timm--MobileCLIP2-S0-OpenCLIP", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit / "open_clip_model.safetensors"
    snapshot.parent.mkdir(parents=True)
    for content, digest in ((b"weights", "a" * 64), (b"WEIGHTS", "b" * 64)):
        (repo / "blobs" / digest).write_bytes(content)
        snapshot.unlink(missing_ok=True)
        snapshot.symlink_to(repo / "blobs" / digest)
        key = weights_id(cfg)
        assert key is not None and f"blob={digest}" in key  # a new revision's blob: a new key


def _truncate_bin(entry: Path) -> None:
    with open(entry / "image.bin", "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) // 2)  # a copy cut short: a crash or a full disk


def _garble_xml(entry: Path) -> None:
    path = entry / "text.xml"
    path.write_bytes(b"x" * path.stat().st_size)  # the recorded size, content OpenVINO cannot read


@pytest.mark.parametrize("damage", [_truncate_bin, _garble_xml])
def test_a_damaged_entry_is_converted_again_once(
    fresh_encoders: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    cfg = TINY.model_copy(update={"backend": "openvino", "batch_size": 3})
    images = sample_images(3)
    first = load_encoder(cfg)
    want_images, want_texts = first.encode_images(images), first.encode_text(TEXTS)
    # Dropped before the damage: the compiled model maps the .bin, and a mapped file cut short is SIGBUS.
    del first
    monkeypatch.setattr(encoder, "_CACHE", {})
    gc.collect()
    (entry,) = (fresh_encoders / "openvino").iterdir()
    damage(entry)
    conversions: list[str] = []
    convert = openvino_backend._convert

    def counted(ov: object, built: BuiltModel) -> dict[str, object]:
        conversions.append(built.arch)
        return convert(ov, built)

    monkeypatch.setattr(openvino_backend, "_convert", counted)
    with caplog.at_level(logging.WARNING, logger=openvino_backend.__name__):
        rebuilt = _reload(cfg, monkeypatch)
    assert not rebuilt.backend.cache_hit and conversions == [TINY.model]  # type: ignore[attr-defined]
    assert any("is damaged" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
    assert _same(want_images, rebuilt.encode_images(images))
    assert _same(want_texts, rebuilt.encode_text(TEXTS))
    again = _reload(cfg, monkeypatch)  # the entry written anew serves the next load
    assert again.backend.cache_hit and conversions == [TINY.model]  # type: ignore[attr-defined]
    assert [p.name for p in (fresh_encoders / "openvino").iterdir()] == [entry.name]  # no debris left
