"""answer(): LLM moments when it works, the proposals unchanged when it does not."""

from __future__ import annotations

import asyncio

from llm_server.answer import AnswerStats, answer, answer_detailed
from llm_server.captions import ScoredCaption
from llm_server.client import LLMClient
from llm_server.launch import LLMServer, free_port
from llm_server.prompt import FrameImage, ServerCounter, build_prompt
from llm_server.types import Candidate, StreamResult
from tests.llm_server.recording_server import RecordingServer

CANDS = [
    Candidate(
        12.0,
        18.0,
        0.31,
        "cam",
        wall_start=1000.0 + 12,
        wall_end=1000.0 + 18,
        evidence=[14.0],
        answered_by="refine",
    ),
    Candidate(40.0, 44.0, 0.27, "cam", answered_by="refine"),
    Candidate(70.0, 75.0, 0.22, "cam", answered_by="refine"),
    Candidate(5.0, 9.0, 0.20, "cam", answered_by="refine"),
    Candidate(90.0, 96.0, 0.18, "cam", answered_by="refine"),
]
DURATION = 120.0


async def test_server_down_returns_proposals() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    async with LLMClient(url, retries=0) as client:
        result = await answer("a man on a bike", CANDS, duration=DURATION, client=client)
    assert result.moments == CANDS and result.answered_by == "refine"
    assert "ServerUnavailableError" in result.notes[0]


async def test_no_client_and_no_candidates() -> None:
    assert (await answer("q", CANDS, duration=DURATION, client=None)).moments == CANDS
    empty = await answer("q", [], duration=DURATION, client=None)
    assert empty.moments == [] and empty.answered_by == "refine"


async def test_outside_video_answer_is_rejected() -> None:
    bad = '{"moments": [{"start": 100, "end": 130, "confidence": 0.9}]}'
    async with RecordingServer(answer=bad) as srv, LLMClient(srv.base_url) as client:
        result = await answer("q", CANDS, duration=DURATION, client=client)
    assert result.moments == CANDS and "BadAnswerError" in result.notes[0]


async def test_timeout_returns_proposals() -> None:
    async with (
        RecordingServer(endless=True, chunk_delay=0.05) as srv,
        LLMClient(srv.base_url, timeout=30) as client,
    ):
        await client.capabilities()
        client.timeout = 0.5  # the answer streams max_tokens chunks, 0.05 s apart
        result = await answer("q", CANDS, duration=DURATION, client=client)
    assert result.moments == CANDS and "ServerTimeoutError" in result.notes[0]


async def test_vision_request_shape_and_llm_moments() -> None:
    good = '{"moments": [{"start": 13, "end": 17.5, "confidence": 0.8, "evidence": [14, 500]}]}'
    async with RecordingServer(vision=True, answer=good) as srv, LLMClient(srv.base_url) as client:
        result, stats = await answer_detailed(
            "a man on a bike",
            CANDS,
            duration=DURATION,
            client=client,
            images=[FrameImage(14.0, b"\xff\xd8\xff", 0.9)],
        )
        body = srv.bodies("/v1/chat/completions")[-1]
    assert body["response_format"]["type"] == "json_schema"
    parts = body["messages"][1]["content"]
    assert any(
        p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/jpeg;base64,")
        for p in parts
    )
    assert result.answered_by == "llm"
    m = result.moments[0]
    assert (m.start, m.end, m.score, m.stream, m.answered_by) == (13, 17.5, 0.8, "cam", "llm")
    assert m.evidence == [14] and m.wall_start == 1013.0  # evidence outside the video dropped
    assert stats is not None and stats.usage.prompt_tokens > 0
    assert any(n.startswith("llm tokens: prompt=") for n in result.notes)


def test_real_model_answer_is_schema_valid_and_within_budget(llama_server: LLMServer) -> None:
    budget = 400
    caps_text = [
        ScoredCaption(13.0 + i, f"a man in a blue shirt pedals a bicycle, view {i}", 0.05 * i, True)
        for i in range(12)
    ]

    async def run() -> tuple[StreamResult, AnswerStats | None, int]:
        async with LLMClient(llama_server.base_url, timeout=300) as client:
            result, stats = await answer_detailed(
                "a man rides a bike",
                CANDS,
                duration=DURATION,
                client=client,
                captions=caps_text,
                budget_tokens=budget,
                max_tokens=96,
            )
            # Ask the server itself how long the same trimmed prompt is.
            caps = await client.capabilities()
            built = await build_prompt(
                "a man rides a bike",
                CANDS,
                duration=DURATION,
                budget_tokens=budget,
                counter=ServerCounter(client),
                captions=caps_text,
                overhead_tokens=caps.chat_overhead_tokens,
            )
            check = await client.chat(built.messages, max_tokens=1, stream=False)
            return result, stats, check.usage.prompt_tokens

    result, stats, server_count = asyncio.run(run())
    assert stats is not None, result.notes
    assert stats.dropped["captions"] > 0  # the budget forced trimming
    assert 0 < server_count <= budget
    assert 0 < stats.usage.prompt_tokens <= budget and stats.usage.completion_tokens > 0
    for m in result.moments:
        assert 0 <= m.start < m.end <= DURATION
    assert result.answered_by in ("llm", "refine")
    if result.answered_by == "llm":
        assert all(m.answered_by == "llm" for m in result.moments)


def test_real_model_tight_timeout_falls_back(llama_server: LLMServer) -> None:
    async def run() -> StreamResult:
        async with LLMClient(llama_server.base_url, timeout=60) as client:
            await client.capabilities()
            client.timeout = 0.05
            return await answer("a man rides a bike", CANDS, duration=DURATION, client=client)

    result = asyncio.run(run())
    assert result.moments == CANDS and "ServerTimeoutError" in result.notes[0]


def test_real_model_cancellation_frees_the_server(llama_server: LLMServer) -> None:
    async def run() -> str:
        async with LLMClient(llama_server.base_url, model=None, timeout=120) as client:
            long = asyncio.create_task(
                client.chat(
                    [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
                    max_tokens=1500,
                )
            )
            await asyncio.sleep(1.0)
            long.cancel()
            try:
                await long
            except asyncio.CancelledError:
                pass
            out = await client.chat([{"role": "user", "content": "Say OK."}], max_tokens=4)
            return out.text

    assert asyncio.run(run())  # the server serves the next request: the cancelled one ended
    log = llama_server.log_tail(20_000)
    assert "Disconnected" in log or "disconnect" in log.lower() or "cancel" in log.lower(), log[-2000:]
