"""The LLM stage over real CLIP results: real index, real llama.cpp server, real fallbacks."""

from __future__ import annotations

import pytest

from agent.channels.retrieval import Query
from agent.config import EncoderConfig, IndexConfig, LLMConfig, Settings
from agent.index.video_index import VideoIndex
from llm_server.launch import LLMServer
from llm_server.stage import LLMStage
from streams.file import decode_frames
from tests.streams.servers import free_port
from tests.videos import make_video, photos


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    root = tmp_path_factory.mktemp("llm-stage")
    video = make_video(root / "v.mp4", [(6.0, p) for p in photos(4, offset=10)], fps=10, size=(320, 240))
    settings = Settings(
        prescreen=EncoderConfig(model="tiny-random", allow_random=True), index=IndexConfig(grid=1, budget=16)
    )
    idx = VideoIndex.create(root / "idx", settings)
    idx.ingest(decode_frames(video.path, stream="cam", fps=2.0, short_side=224))
    return idx


async def refine(idx: VideoIndex, url: str, **cfg: object) -> dict:  # type: ignore[type-arg]
    text = "a dog on a sofa"
    results = idx.query(Query(text=text, top_k=3))
    st = idx.streams["cam"]
    async with LLMStage(LLMConfig(url=url, **cfg), idx.refine) as stage:  # type: ignore[arg-type]
        return await stage.refine(text, results, {"cam": st.store}, {"cam": st.memory.spans()[-1][1]}, 3)


async def test_server_down_returns_clip_proposals_with_a_note(index: VideoIndex) -> None:
    clip = index.query(Query(text="a dog on a sofa", top_k=3))["cam"]
    out = (await refine(index, f"http://127.0.0.1:{free_port()}", timeout=5.0))["cam"]
    assert out.answered_by == "refine"
    assert [(m.start, m.end) for m in out.moments] == [(m.start, m.end) for m in clip.moments]
    assert any(n.startswith("llm fallback") for n in out.notes)
    assert out.llm_usage is None


async def test_embedded_llama_answers_within_budget(index: VideoIndex, llama_server: LLMServer) -> None:
    out = (await refine(index, llama_server.base_url, budget_tokens=400, max_tokens=96, timeout=240.0))["cam"]
    if out.answered_by != "llm":  # a 0.5B model may still answer off-schema: that must be a clean fallback
        assert any(n.startswith("llm fallback") for n in out.notes) and out.moments
        return
    assert out.llm_usage is not None and 0 < out.llm_usage["prompt_tokens"] <= 400
    assert out.moments and all(0.0 <= m.start < m.end <= 24.5 and m.answered_by == "llm" for m in out.moments)
    assert out.meaningless  # the CLIP side ran on random weights
