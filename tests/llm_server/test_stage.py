"""LLMStage as a library: its own values in, its own values out (stub VLM, real llama.cpp, real fallbacks).

The stage over a real vmr index, through vmr's hand-off, is tested in
tests/agent/service/test_llm_handoff.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_server.errors import LLMConfigError
from llm_server.launch import LLMServer, free_port
from llm_server.stage import LLMStage
from llm_server.types import Candidate, FrameSource, StageConfig, StreamCoverage, StreamResult
from tests.llm_server.doubles import HashEncoder, MemoryFrames, solid
from tests.llm_server.recording_server import RecordingServer, image_colours, vision_reply

DURATION = 30.0
FRAMES = MemoryFrames({float(t): solid("red" if 10 <= t < 20 else "blue") for t in range(0, 30, 2)})
COVERAGE = StreamCoverage(0.0, DURATION, 28.0, 2.5, 20.0)


def clip_result() -> StreamResult:
    """What a visual search would hand over: two candidates, best first, with a note."""
    moments = [
        Candidate(10.0, 18.0, 0.31, "cam", 1000.0 + 10, 1000.0 + 18, [12.0], "refine"),
        Candidate(22.0, 28.0, 0.24, "cam", 1000.0 + 22, 1000.0 + 28, [24.0], "anchor"),
    ]
    return StreamResult(moments, COVERAGE, "refine", meaningless=True, notes=["searched 1 stream"])


def vlm_reply(body: dict[str, Any]) -> str:
    """A VLM that understands the query, captions by colour and picks the red span."""
    name = (body.get("response_format") or {}).get("json_schema", {}).get("name")
    if name == "QueryUnderstanding":
        return json.dumps({"objects": ["red car"], "actions": [], "time_constraints": []})
    if name == "Answer":
        return json.dumps({"moments": [{"start": 11.0, "end": 17.0, "confidence": 0.9, "evidence": [12.0]}]})
    return vision_reply(body)


async def refine(
    url: str, frames: FrameSource | None = FRAMES, **cfg: Any
) -> tuple[StreamResult, StreamResult]:
    given = clip_result()
    async with LLMStage(StageConfig(url=url, **cfg), HashEncoder()) as stage:
        out = await stage.refine("a red car", {"cam": given}, {"cam": frames}, {"cam": DURATION}, 3)
    return given, out["cam"]


def test_a_stage_without_url_is_a_config_error() -> None:
    with pytest.raises(LLMConfigError, match="url"):
        LLMStage(StageConfig(), HashEncoder())


async def test_server_down_returns_the_candidates_with_a_note() -> None:
    given, out = await refine(f"http://127.0.0.1:{free_port('127.0.0.1')}", timeout=5.0)
    assert out.answered_by == "refine" and out.moments == given.moments
    assert (out.coverage, out.meaningless) == (COVERAGE, True)
    assert out.notes[0] == "searched 1 stream" and out.notes[1].startswith("llm fallback")
    assert out.llm_usage is None


async def test_vision_server_captions_shows_evidence_and_answers() -> None:
    async with RecordingServer(vision=True, reply=vlm_reply) as srv:
        given, out = await refine(srv.base_url, frames_per_region=2)
        bodies = srv.bodies("/v1/chat/completions")
    assert out.answered_by == "llm" and out.llm_usage is not None
    assert [(m.start, m.end, m.answered_by) for m in out.moments] == [(11.0, 17.0, "llm")]
    # Wall times follow the candidate the LLM moment lies in; coverage is carried through.
    assert (out.moments[0].wall_start, out.moments[0].wall_end) == (1011.0, 1017.0)
    assert out.coverage == COVERAGE and out.meaningless and out.notes[0] == "searched 1 stream"
    final = [b for b in bodies if b.get("response_format", {}).get("json_schema", {}).get("name") == "Answer"]
    assert len(final) == 1
    prompt = json.dumps(final[0]["messages"])
    assert "red car matching the query" in prompt  # a query-aware caption of a relevant region
    assert image_colours(final[0]) == ["red", "blue"]  # one evidence frame per candidate, in time order
    assert given.moments[0].answered_by == "refine"  # the input was not modified


async def test_no_frames_means_no_captions_but_still_an_answer() -> None:
    async with RecordingServer(vision=True, reply=vlm_reply) as srv:
        _, out = await refine(srv.base_url, frames=None)
        bodies = srv.bodies("/v1/chat/completions")
    assert out.answered_by == "llm"
    assert not any("Do these frames show" in json.dumps(b) for b in bodies)


async def test_embedded_llama_answers_within_budget(llama_server: LLMServer) -> None:
    _, out = await refine(llama_server.base_url, budget_tokens=400, max_tokens=96, timeout=240.0)
    if out.answered_by != "llm":  # a 0.5B model may still answer off-schema: that must be a clean fallback
        assert any(n.startswith("llm fallback") for n in out.notes) and out.moments
        return
    assert out.llm_usage is not None and 0 < out.llm_usage["prompt_tokens"] <= 400
    assert out.moments and all(
        0.0 <= m.start < m.end <= DURATION and m.answered_by == "llm" for m in out.moments
    )
    assert out.meaningless  # carried from the input
