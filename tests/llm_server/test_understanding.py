"""Query understanding and prompt-ensemble variants."""

from __future__ import annotations

import json

from llm_server.client import LLMClient
from llm_server.launch import LLMServer
from llm_server.protocol import QueryUnderstanding, TimeConstraint
from llm_server.understanding import (
    heuristic_understanding,
    prompt_variants,
    understand,
    understand_or_heuristic,
)
from tests.llm_server.recording_server import RecordingServer


def test_variants_start_with_the_query_and_are_unique() -> None:
    u = QueryUnderstanding(objects=["dog", "Dog", "apple"], actions=["catches a frisbee"])
    v = prompt_variants("a dog catches a frisbee", u)
    assert v[0] == "a dog catches a frisbee"
    assert "a photo of a dog" in v and "a photo of an apple" in v
    assert "a video frame of someone catches a frisbee" in v
    assert len({x.lower() for x in v}) == len(v)


def test_heuristic_keeps_content_words() -> None:
    u = heuristic_understanding("The man rides a bike after the rain")
    assert u.objects == ["man", "rides", "bike", "rain"] and u.actions == []


async def test_understand_sends_the_schema_and_parses() -> None:
    answer = QueryUnderstanding(
        objects=["goal"], actions=["scores"], time_constraints=[TimeConstraint(relation="first", seconds=60)]
    ).model_dump_json()
    async with RecordingServer(answer=answer) as srv, LLMClient(srv.base_url) as client:
        u, usage = await understand(client, "someone scores a goal in the first minute")
        body = srv.bodies("/v1/chat/completions")[-1]
    assert u.time_constraints[0].seconds == 60 and usage.completion_tokens > 0
    assert body["response_format"]["json_schema"]["name"] == "QueryUnderstanding"
    assert "someone scores a goal" in json.dumps(body["messages"][-1])


async def test_invalid_understanding_falls_back_to_heuristic() -> None:
    async with RecordingServer(answer="not json") as srv, LLMClient(srv.base_url) as client:
        u = await understand_or_heuristic(client, "red car")
    assert u.objects == ["red", "car"]


def test_real_model_extracts_something(llama_server: LLMServer) -> None:
    import asyncio

    async def run() -> QueryUnderstanding:
        async with LLMClient(llama_server.base_url, timeout=300) as client:
            return (await understand(client, "a man rides a red bicycle"))[0]

    u = asyncio.run(run())
    words = " ".join(u.objects + u.actions).lower()
    assert "bicycle" in words or "bike" in words or "man" in words
