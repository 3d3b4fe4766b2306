"""LLMClient against a real loopback HTTP server: retries, limits, timeouts, cancellation, probing."""

from __future__ import annotations

import asyncio

import pytest

from llm_server.client import LLMClient
from llm_server.errors import BadAnswerError, ServerTimeoutError, ServerUnavailableError
from llm_server.launch import free_port
from tests.llm_server.recording_server import RecordingServer

MSG = [{"role": "user", "content": "hi"}]


async def test_chat_streams_text_and_usage(stub: RecordingServer) -> None:
    stub.answer = '{"moments": [{"start": 1, "end": 2, "confidence": 0.5}]}'
    async with LLMClient(stub.base_url) as client:
        out = await client.chat(MSG, max_tokens=100)
    assert out.text == stub.answer
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
    body = stub.bodies("/v1/chat/completions")[-1]
    assert body["stream"] is True and body["model"] == "stub-model" and body["max_tokens"] == 100


async def test_transient_errors_are_retried(stub: RecordingServer) -> None:
    stub.fail_first = [503, 429, 502]
    async with LLMClient(stub.base_url, retries=3, backoff=0.01) as client:
        out = await client.chat(MSG)
    assert out.text == stub.answer
    assert len(stub.bodies("/v1/chat/completions")) == 4


async def test_retries_give_up_as_unavailable(stub: RecordingServer) -> None:
    stub.fail_first = [503, 503, 503]
    async with LLMClient(stub.base_url, retries=1, backoff=0.01) as client:
        with pytest.raises(ServerUnavailableError):
            await client.chat(MSG)
    assert len(stub.bodies("/v1/chat/completions")) == 2


async def test_client_errors_are_not_retried(stub: RecordingServer) -> None:
    stub.fail_first = [400]
    async with LLMClient(stub.base_url, retries=3, backoff=0.01) as client:
        with pytest.raises(BadAnswerError, match="400"):
            await client.chat(MSG)
    assert len(stub.bodies("/v1/chat/completions")) == 1


async def test_closed_port_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    async with LLMClient(url, model="m", retries=1, backoff=0.01) as client:
        with pytest.raises(ServerUnavailableError, match="unreachable"):
            await client.chat(MSG)


async def test_total_timeout(stub: RecordingServer) -> None:
    stub.endless, stub.chunk_delay = True, 0.02
    async with LLMClient(stub.base_url, timeout=0.3) as client:
        await client.models()  # resolve the model name before the clock matters
        with pytest.raises(ServerTimeoutError):
            await client.chat(MSG)


async def test_concurrency_limit(stub: RecordingServer) -> None:
    stub.chunk_delay = 0.01
    stub.answer = "x" * 40
    async with LLMClient(stub.base_url, model="stub-model", concurrency=2) as client:
        outs = await asyncio.gather(*(client.chat(MSG) for _ in range(6)))
    assert all(o.text == stub.answer for o in outs)
    assert stub.max_inflight == 2


async def test_cancellation_closes_the_stream_on_the_server(stub: RecordingServer) -> None:
    stub.endless, stub.chunk_delay = True, 0.01
    async with LLMClient(stub.base_url, model="stub-model", timeout=60) as client:
        task = asyncio.create_task(client.chat(MSG, max_tokens=10_000))
        await asyncio.wait_for(stub.started.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server's handler sees the connection go away: generation stops there.
        await asyncio.wait_for(stub.disconnected.wait(), timeout=10)
    assert stub.disconnected.is_set()
    assert stub.inflight == 0


async def test_capabilities_of_a_vllm_like_vision_server() -> None:
    async with RecordingServer(vision=True, prompt_embeds=True) as srv, LLMClient(srv.base_url) as client:
        caps = await client.capabilities()
        assert caps.model == "stub-model" and caps.owned_by == "vllm"
        assert caps.vision and caps.json_schema and caps.prompt_embeds
        assert caps.tokenize_path == "/tokenize"
        assert await client.count_tokens("three small words") == 3
        assert await client.capabilities() is caps  # probed once
    formats = [b.get("response_format") or {} for b in srv.bodies("/v1/chat/completions")]
    assert any(f.get("type") == "json_schema" and f["json_schema"]["name"] == "probe" for f in formats)


async def test_capabilities_of_a_plain_text_server() -> None:
    async with (
        RecordingServer(owned_by="someone", tokenizer=False, json_schema=False) as srv,
        LLMClient(srv.base_url) as client,
    ):
        caps = await client.capabilities()
    assert not caps.vision and not caps.json_schema and not caps.prompt_embeds
    assert caps.tokenize_path is None


async def test_prompt_embeds_disabled_is_detected() -> None:
    async with RecordingServer(prompt_embeds=False) as srv, LLMClient(srv.base_url) as client:
        caps = await client.capabilities()
    assert not caps.prompt_embeds
    assert any("enable-prompt-embeds" in n for n in caps.notes)


async def test_closed_client_refuses(stub: RecordingServer) -> None:
    client = LLMClient(stub.base_url, model="m")
    await client.close()
    await client.close()
    with pytest.raises(ServerUnavailableError, match="closed"):
        await client.chat(MSG)
