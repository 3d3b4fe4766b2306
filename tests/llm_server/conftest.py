"""Fixtures: the real embedded llama.cpp server (session) and a recording stub server."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator

import pytest

from llm_server.launch import LLMServer, ServerOptions
from tests.llm_server.recording_server import RecordingServer


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LLMServer]:
    """llama-cpp-python's server on the packaged Qwen2.5-Coder-0.5B, on a free loopback port."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama_cpp not importable; install with: "
            "CMAKE_ARGS='-DGGML_NATIVE=OFF' .venv/bin/pip install 'llama-cpp-python[server]'"
        )
    server = LLMServer(ServerOptions(backend="llama_cpp", n_ctx=2048, threads=2, ready_timeout=180))
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture
async def stub() -> AsyncIterator[RecordingServer]:
    """A vLLM-like recording server (text only, tokenizer, json_schema) on port 0."""
    async with RecordingServer() as server:
        yield server
