"""Assembly of the packaged GGUF models from their PyPI parts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_server.errors import LLMConfigError, ServerUnavailableError
from llm_server.models import (
    GEMMA3_270M,
    QWEN_CODER_05B,
    PackagedModel,
    assemble,
    packaged,
    part_paths,
    resolve_model,
)


def _installed(model: PackagedModel) -> bool:
    try:
        part_paths(model)
    except ServerUnavailableError:
        return False
    return True


def test_parts_are_found_in_order() -> None:
    if not _installed(QWEN_CODER_05B):
        pytest.skip(f"parts not installed: {QWEN_CODER_05B.pip_command}")
    paths = part_paths(QWEN_CODER_05B)
    assert [p.name for p in paths] == [f"part0{i}.bin" for i in range(1, 7)]
    assert sum(p.stat().st_size for p in paths) == QWEN_CODER_05B.size
    assert paths[0].read_bytes()[:4] == b"GGUF"


@pytest.mark.skipif(not _installed(GEMMA3_270M), reason=f"run: {GEMMA3_270M.pip_command}")
def test_assemble_verifies_caches_and_replaces_corrupt_files(tmp_path: Path) -> None:
    bad = tmp_path / GEMMA3_270M.filename
    bad.write_bytes(b"GGUF truncated")
    path = assemble(GEMMA3_270M, tmp_path)  # the corrupt file is replaced
    assert path == bad and path.stat().st_size == GEMMA3_270M.size
    assert path.read_bytes()[:4] == b"GGUF"
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp, stamp))
    assert assemble(GEMMA3_270M, tmp_path).stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in tmp_path.iterdir()] == [GEMMA3_270M.filename]  # no temp file left


def test_wrong_digest_is_refused(tmp_path: Path) -> None:
    if not _installed(GEMMA3_270M):
        pytest.skip(GEMMA3_270M.pip_command)
    wrong = PackagedModel("x", "x.gguf", GEMMA3_270M.parts[:1], "0" * 64, 1, "wrong digest")
    with pytest.raises(ServerUnavailableError, match="expected"):
        assemble(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_parts_name_the_pip_command(tmp_path: Path) -> None:
    ghost = PackagedModel("g", "g.gguf", (("vmr-no-such-dist-part1", "p.bin"),), "0" * 64, 1, "absent")
    with pytest.raises(ServerUnavailableError, match="pip install vmr-no-such-dist-part1"):
        assemble(ghost, tmp_path)


def test_resolve_model_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(LLMConfigError, match="known"):
        packaged("gpt-17")
    with pytest.raises(ServerUnavailableError, match="does not exist"):
        resolve_model(str(tmp_path / "none.gguf"))
    own = tmp_path / "own.gguf"
    own.write_bytes(b"GGUF")
    assert resolve_model(str(own)) == own
