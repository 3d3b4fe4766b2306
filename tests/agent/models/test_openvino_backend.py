"""OpenVINO backend: equal to torch within 1e-4 cosine, converted once, cached on disk by key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from agent.config import EncoderConfig
from agent.models.backends import TorchBackend
from agent.models.encoder import ClipEncoder
from agent.models.ir_cache import cache_folder
from agent.models.openvino_backend import OpenVINOBackend, built_weights_id, load_openvino
from agent.models.weights import BuiltModel, build_model
from tests.agent.models.samples import DEFAULT_RANDOM, TEXTS, TINY, sample_images

COSINE_TOL = 1e-4


def _pair(built: BuiltModel, cfg: EncoderConfig, root: Path) -> tuple[ClipEncoder, ClipEncoder]:
    """The same built model behind torch and behind OpenVINO."""
    ov = ClipEncoder.from_built(built, load_openvino(built, threads=cfg.threads, root=root), cfg)
    pt = ClipEncoder.from_built(built, TorchBackend(built.model, "cpu"), cfg)
    return pt, ov


def _assert_same_embeddings(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    cos = (a * b).sum(axis=1)  # rows are L2-normalised
    assert cos.min() >= 1 - COSINE_TOL, cos


def _assert_equal_to_torch(built: BuiltModel, cfg: EncoderConfig, root: Path) -> None:
    pt, ov = _pair(built, cfg, root)
    assert (pt.dim, pt.image_size) == (ov.dim, ov.image_size)
    # 5 images with batch_size 3: a full batch and a partial one (the batch dimension is dynamic).
    images = sample_images(5)
    _assert_same_embeddings(pt.encode_images(images), ov.encode_images(images))
    _assert_same_embeddings(pt.encode_text(TEXTS), ov.encode_text(TEXTS))
    # A single row through the converted model too.
    _assert_same_embeddings(pt.encode_images(images[:1]), ov.encode_images(images[:1]))


def test_openvino_equals_torch_on_tiny_random(shared_cache: Path) -> None:
    cfg = TINY.model_copy(update={"batch_size": 3})
    _assert_equal_to_torch(build_model(cfg), cfg, shared_cache / "openvino")


def test_openvino_equals_torch_on_default_architecture(
    default_random: BuiltModel, shared_cache: Path
) -> None:
    cfg = DEFAULT_RANDOM.model_copy(update={"batch_size": 3})
    _assert_equal_to_torch(default_random, cfg, shared_cache / "openvino")


def test_second_load_reuses_the_cache_without_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_model(TINY)
    first = load_openvino(built, threads=1, root=tmp_path)
    assert not first.cache_hit and first.folder.parent == tmp_path
    files = sorted(p for p in first.folder.iterdir())
    assert {p.name for p in files} >= {"image.xml", "image.bin", "text.xml", "text.bin", "meta.json"}
    stamps = {p: p.stat().st_mtime_ns for p in files}

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("convert_model called although the IR is cached")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = load_openvino(build_model(TINY), threads=1, root=tmp_path)
    assert second.cache_hit and second.folder == first.folder
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing rewritten
    assert [p.name for p in tmp_path.iterdir()] == [first.folder.name]  # no stray temporary folders
    images = sample_images(2)
    cfg = TINY
    a = ClipEncoder.from_built(built, first, cfg).encode_images(images)
    b = ClipEncoder.from_built(built, second, cfg).encode_images(images)
    _assert_same_embeddings(a, b)


def test_cache_key_follows_weights_and_openvino_version(tmp_path: Path) -> None:
    built = build_model(TINY)
    digest = built_weights_id(built)
    assert digest == built_weights_id(build_model(TINY))  # seeded: the same weights again
    version = openvino.__version__
    here = cache_folder(built.arch, digest, version, tmp_path)
    assert here == cache_folder(built.arch, digest, version, tmp_path)
    assert here != cache_folder(built.arch, digest, version + "-other", tmp_path)
    with torch.no_grad():
        next(built.model.parameters()).add_(1e-3)
    changed = built_weights_id(built)
    assert changed != digest and cache_folder(built.arch, changed, version, tmp_path) != here


def test_unwritable_cache_still_loads(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    backend = load_openvino(build_model(TINY), threads=1, root=blocker)
    assert isinstance(backend, OpenVINOBackend) and not backend.cache_hit
    assert blocker.is_file()  # only the conversion is lost next time


def test_import_and_conversion_send_no_telemetry(tmp_path: Path) -> None:
    """A fresh process (openvino not yet imported) loads and converts: no usage event leaves it."""
    opted_in = Path.home() / "intel" / "openvino_telemetry"
    if opted_in.is_file() and opted_in.read_text().strip() == "1":
        pytest.skip("this user opted in to OpenVINO telemetry")
    code = (
        "import sys;from openvino_telemetry.utils.sender import TelemetrySender;sent=[];"
        "TelemetrySender.send=lambda self,*a,**k: sent.append(a);"
        "from pathlib import Path;from agent.config import EncoderConfig;"
        "from agent.models.weights import build_model;from agent.models.openvino_backend import load_openvino;"
        "cfg=EncoderConfig(model='tiny-random',allow_random=True);"
        "b=load_openvino(build_model(cfg),threads=1,root=Path(sys.argv[1]));"
        "print(int(b.cache_hit),len(sent))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["0", "0"]  # converted, and nothing sent


@pytest.mark.parametrize("cached_first", [False, True], ids=["converting", "from-cache"])
def test_release_torch_frees_the_weights_and_keeps_the_answers(tmp_path: Path, cached_first: bool) -> None:
    """Peak memory: the torch weights are gone before compiling, the answers are torch's."""
    if cached_first:
        load_openvino(build_model(TINY), threads=1, root=tmp_path)
    built = build_model(TINY)
    backend = load_openvino(built, threads=1, root=tmp_path, release_torch=True)
    assert backend.cache_hit is cached_first
    assert all(p.is_meta for p in built.model.parameters())  # no weight bytes left in torch
    reference = ClipEncoder.from_built(build_model(TINY), TorchBackend(build_model(TINY).model, "cpu"), TINY)
    released = ClipEncoder.from_built(built, backend, TINY)
    images = sample_images(3)
    _assert_same_embeddings(reference.encode_images(images), released.encode_images(images))
    _assert_same_embeddings(reference.encode_text(TEXTS), released.encode_text(TEXTS))


def test_release_torch_keeps_the_weights_when_the_ir_could_not_be_cached(tmp_path: Path) -> None:
    """An uncached conversion still reads the torch tensors: they must stay."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    built = build_model(TINY)
    backend = load_openvino(built, threads=1, root=blocker, release_torch=True)
    assert not any(p.is_meta for p in built.model.parameters())
    images = sample_images(2)
    torch_side = ClipEncoder.from_built(built, TorchBackend(built.model, "cpu"), TINY)
    _assert_same_embeddings(
        torch_side.encode_images(images), ClipEncoder.from_built(built, backend, TINY).encode_images(images)
    )


def test_an_idle_backend_keeps_no_reference_to_its_last_batch(shared_cache: Path) -> None:
    """The request takes the batch without a copy, then lets it go: an idle encoder pins no pixels."""
    built = build_model(TINY)
    backend = load_openvino(built, threads=1, root=shared_cache / "openvino")
    pixels = np.random.default_rng(0).random((3, 3, built.image_size, built.image_size), np.float32)
    tokens = np.zeros((2, built.context_length), np.int64)
    before = sys.getrefcount(pixels), sys.getrefcount(tokens)
    first = backend.encode_image(pixels)
    backend.encode_text(tokens)
    assert (sys.getrefcount(pixels), sys.getrefcount(tokens)) == before
    # The placeholder left in the request does not change the next answer (rows are independent).
    assert np.array_equal(backend.encode_image(pixels), first)
    np.testing.assert_allclose(backend.encode_image(pixels[:1]), first[:1], rtol=1e-3, atol=1e-4)
