"""The one hand-off to llm_server: values converted both ways, errors mapped, and the service
and CLI paths both going through it (real index, real HTTP stub of an LLM server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.channels.retrieval import Query
from agent.cli.main import main as vmr
from agent.config import EncoderConfig, IndexConfig, LLMConfig, Settings, cache_dir
from agent.errors import (
    ConfigError,
    IndexStoreError,
    LLMAnswerError,
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    OversizeQueryError,
    VmrError,
)
from agent.index.video_index import VideoIndex
from agent.service.llm_handoff import (
    LLMHandoff,
    from_stream_result,
    refine_once,
    stage_config,
    to_stream_result,
    translated,
)
from agent.types import Coverage, Moment, QueryResult
from llm_server import errors as llm_errors
from llm_server.models import cache_dir as llm_cache_dir
from llm_server.types import StageConfig
from streams.file import decode_frames
from tests.agent.service.helpers import add, client, needle_video, refined, running, wait_for
from tests.llm_server.recording_server import RecordingServer
from tests.streams.servers import free_port
from tests.videos import make_video, photos

TEXT = "a dog on a sofa"
ANSWER = '{"moments": [{"start": 1.0, "end": 4.0, "confidence": 0.8, "evidence": [2.0]}]}'


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    root = tmp_path_factory.mktemp("llm-handoff")
    video = make_video(root / "v.mp4", [(6.0, p) for p in photos(4, offset=10)], fps=10, size=(320, 240))
    settings = Settings(
        prescreen=EncoderConfig(model="tiny-random", allow_random=True), index=IndexConfig(grid=1, budget=16)
    )
    idx = VideoIndex.create(root / "idx", settings)
    idx.ingest(decode_frames(video.path, stream="cam", fps=2.0, short_side=224))
    return idx


# ------------------------------------------------------------------ values


def test_results_survive_the_round_trip_unchanged_and_unshared() -> None:
    moments = [
        Moment(1.0, 4.5, 0.31, "cam", 1000.0, 1003.5, [2.0, 3.0], "refine"),
        Moment(8.0, 9.0, 0.2, "cam", None, None, [], "anchor"),
    ]
    original = QueryResult(
        moments, Coverage(0.0, 20.0, 18.5, 2.5, 12.0), "refine", True, ["a note"], {"prompt_tokens": 3}
    )
    out = from_stream_result(to_stream_result(original))
    assert out == original
    assert out.moments[0] is not original.moments[0]
    out.moments[0].evidence.append(9.0)
    out.notes.append("another")
    assert original.moments[0].evidence == [2.0, 3.0] and original.notes == ["a note"]
    bare = QueryResult([], None, "anchor")
    assert from_stream_result(to_stream_result(bare)) == bare


def test_stage_config_carries_every_user_setting() -> None:
    cfg = LLMConfig(
        url="http://x:1",
        model="m",
        api_key="k",
        timeout=7.0,
        budget_tokens=300,
        max_tokens=40,
        a1=0.2,
        a2=0.8,
        caption_mode="latency",
        frames_per_region=5,
    )
    assert set(StageConfig.model_fields) == set(LLMConfig.model_fields)  # no field forgotten either way
    assert stage_config(cfg).model_dump() == cfg.model_dump()


def test_llm_server_caches_where_vmr_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llm_cache_dir() == cache_dir() == tmp_path / "xdg" / "vmr"
    monkeypatch.setenv("VMR_CACHE", str(tmp_path / "mine"))
    assert llm_cache_dir() == cache_dir() == tmp_path / "mine"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("theirs", "ours", "code"),
    [
        (llm_errors.ServerUnavailableError, LLMUnavailableError, "llm_unavailable"),
        (llm_errors.ServerTimeoutError, LLMTimeoutError, "llm_timeout"),
        (llm_errors.BadAnswerError, LLMAnswerError, "llm_bad_answer"),
        (llm_errors.LLMConfigError, ConfigError, "config"),
        (llm_errors.PromptBudgetError, OversizeQueryError, "oversize_query"),
        (llm_errors.CaptionStoreError, IndexStoreError, "index_store"),
        (llm_errors.LLMServerError, LLMError, "llm"),
    ],
)
def test_llm_server_errors_become_vmr_errors_with_their_cause(
    theirs: type[llm_errors.LLMServerError], ours: type[VmrError], code: str
) -> None:
    raised = theirs("what went wrong")
    with pytest.raises(VmrError) as caught, translated():
        raise raised
    assert type(caught.value) is ours and caught.value.code == code
    assert str(caught.value) == "what went wrong" and caught.value.__cause__ is raised


def test_other_errors_pass_through_untranslated() -> None:
    with pytest.raises(KeyError), translated():
        raise KeyError("cam")


def test_a_handoff_without_url_is_a_config_error(index: VideoIndex) -> None:
    with pytest.raises(ConfigError) as caught:
        LLMHandoff(LLMConfig(url=None), index)
    assert isinstance(caught.value.__cause__, llm_errors.LLMConfigError)


# ------------------------------------------------------------------ hand-off over a real index


async def test_server_down_returns_clip_proposals_with_a_note(index: VideoIndex) -> None:
    clip = index.query(Query(text=TEXT, top_k=3))
    cfg = LLMConfig(url=f"http://127.0.0.1:{free_port()}", timeout=5.0)
    out = (await refine_once(cfg, index, TEXT, clip, 3))["cam"]
    assert out.answered_by == "refine"
    assert [(m.start, m.end) for m in out.moments] == [(m.start, m.end) for m in clip["cam"].moments]
    assert any(n.startswith("llm fallback") for n in out.notes)
    assert out.llm_usage is None and out.coverage == clip["cam"].coverage


async def test_llm_answer_comes_back_as_vmr_moments(index: VideoIndex) -> None:
    clip = index.query(Query(text=TEXT, top_k=3))
    async with RecordingServer(answer=ANSWER) as srv, LLMHandoff(LLMConfig(url=srv.base_url), index) as llm:
        out = (await llm.refine(TEXT, clip, 3))["cam"]
        again = (await llm.refine(TEXT, clip, 3))["cam"]  # the service reuses one hand-off
        prompt = json.dumps(srv.bodies("/v1/chat/completions")[-1]["messages"])
    assert isinstance(out, QueryResult) and all(isinstance(m, Moment) for m in out.moments)
    assert [(m.start, m.end, m.stream, m.answered_by) for m in out.moments] == [(1.0, 4.0, "cam", "llm")]
    assert out.answered_by == "llm" and out.llm_usage is not None and out.meaningless
    assert out.coverage == clip["cam"].coverage and again.moments == out.moments
    # The LLM was told the stream's last retained time as the video length.
    end = index.streams["cam"].memory.spans()[-1][1]
    assert f"Video length: {end:.1f} s." in prompt


# ------------------------------------------------------------------ the two callers


async def test_service_text_query_goes_through_the_handoff(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with (
        RecordingServer(answer=ANSWER) as srv,
        running(tmp_path, llm={"url": srv.base_url}) as (svc, url),
        client(url) as ws,
    ):
        assert isinstance(svc.llm, LLMHandoff)
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        answer = await refined(ws, {"type": "query", "id": "q", "text": TEXT, "top_k": 2})
        asked = len(srv.bodies("/v1/chat/completions"))
    assert answer["type"] == "moments.update", answer  # the LLM stage answers the refined moments
    assert [(m["start"], m["end"], m["answered_by"]) for m in answer["moments"]] == [(1.0, 4.0, "llm")]
    assert asked >= 1


async def test_cli_llm_query_goes_through_the_handoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    root = tmp_path / "idx"
    ingest = ["ingest", str(video), "--index", str(root), "--stream", "cam", "--model", "tiny-random"]
    assert await asyncio.to_thread(vmr, [*ingest, "--quiet"]) == 0
    async with RecordingServer(answer=ANSWER) as srv:
        capsys.readouterr()
        # main() runs its own event loop (asyncio.run): give it a thread, as a shell would a process.
        query = ["query", str(root), TEXT, "--llm", srv.base_url, "--json", "--top-k", "2"]
        assert await asyncio.to_thread(vmr, query) == 0
        asked = len(srv.bodies("/v1/chat/completions"))
    reply = json.loads(capsys.readouterr().out)
    cam = reply["streams"]["cam"]
    assert cam["answered_by"] == "llm" and cam["llm_usage"]["prompt_tokens"] > 0
    # One result model (QueryAnswer): the moments are at top level, as in the websocket answer.
    assert [(m["start"], m["end"], m["answered_by"]) for m in reply["moments"]] == [(1.0, 4.0, "llm")]
    assert asked >= 1
