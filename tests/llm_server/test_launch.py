"""Launching LLM servers: commands, port checks, readiness, clean shutdown."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import httpx
import pytest

from llm_server.errors import ServerUnavailableError
from llm_server.launch import LLMServer, ServerOptions, choose_backend, vllm_command
from llm_server.models import GEMMA3_270M, part_paths

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def test_vllm_command_has_the_flags_that_matter() -> None:
    cmd = vllm_command(ServerOptions(n_ctx=8192, images_per_prompt=6, port=9000), 9000)
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen2.5-VL-3B-Instruct"]
    assert cmd[cmd.index("--max-model-len") + 1] == "8192"
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 6, "video": 0}
    assert "--enable-prompt-embeds" in cmd and "--structured-outputs-config.backend" in cmd


def test_backend_choice() -> None:
    assert choose_backend(ServerOptions(backend="llama_cpp")) == "llama_cpp"
    assert choose_backend(ServerOptions(backend="vllm")) == "vllm"
    with pytest.raises(ServerUnavailableError, match="unknown LLM backend"):
        choose_backend(ServerOptions(backend="tgi"))


async def test_port_in_use_is_refused() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LLMServer(ServerOptions(backend="llama_cpp", port=port))
        with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}"):
            await server.start()
    assert not server.running


def test_base_url_before_start_is_an_error() -> None:
    with pytest.raises(ServerUnavailableError, match="not started"):
        _ = LLMServer(ServerOptions(backend="llama_cpp")).base_url


async def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    server = LLMServer(ServerOptions(backend="llama_cpp", model=str(tmp_path / "none.gguf")))
    with pytest.raises(ServerUnavailableError):
        await server.start()


@pytest.mark.skipif(not HAS_LLAMA, reason="llama_cpp not importable")
async def test_a_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    server = LLMServer(ServerOptions(backend="llama_cpp", model=str(junk), ready_timeout=60))
    with pytest.raises(ServerUnavailableError, match="exited with code"):
        await server.start()
    assert not server.running


@pytest.mark.skipif(not HAS_LLAMA, reason="llama_cpp not importable")
async def test_lifecycle_with_the_small_model() -> None:
    try:
        part_paths(GEMMA3_270M)
    except ServerUnavailableError as exc:
        pytest.skip(str(exc))
    server = LLMServer(
        ServerOptions(backend="llama_cpp", model=GEMMA3_270M.name, n_ctx=512, ready_timeout=120)
    )
    async with server:
        assert server.running
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{server.base_url}/v1/models")
        assert resp.status_code == 200 and resp.json()["data"]
    assert not server.running
    await server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{server.port}/v1/models")
