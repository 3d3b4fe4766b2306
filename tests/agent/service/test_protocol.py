"""The protocol seam: dispatch of every request type, the error mapper, the shared result model,
the client speaking the models, per-service metrics, the registry and the slow-client policy."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast, get_args

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from agent.cli.main import main as vmr
from agent.errors import IndexStoreError, ProtocolError, SnapshotVersionError, UnknownStreamError
from agent.service.answer import QueryAnswer
from agent.service.client import remote_query, watch
from agent.service.config import ServiceConfig, parse_spec
from agent.service.connection import Connection
from agent.service.errors import INTERNAL, error_event
from agent.service.metrics import ServiceMetrics
from agent.service.pipeline import Service
from agent.service.protocol import (
    ClientMessage,
    ErrorEvent,
    MomentOut,
    MomentsEvent,
    MomentsUpdateEvent,
    MomentUpdateEvent,
    ProgressEvent,
    StreamStatus,
    WatchingEvent,
    parse_event,
)
from agent.service.registry import STREAMS_FILE, StreamRegistry
from agent.service.router import Router
from agent.service.shard import ShardStats, StreamStats, source_events
from tests.agent.service.helpers import (
    NEEDLE,
    add,
    client,
    needle_b64,
    needle_video,
    refined,
    request,
    running,
    tiny_settings,
    wait_for,
)


def _request_types() -> set[str]:
    union = get_args(ClientMessage)[0]
    return {get_args(model.model_fields["type"].annotation)[0] for model in get_args(union)}


def test_router_has_one_handler_per_request_type(tmp_path: Path) -> None:
    cfg = ServiceConfig(index=tmp_path / "index", token=None)
    router = Router(Service(cfg, tiny_settings()).serving, cfg)  # nothing started: no model loads
    assert (
        set(router.handlers)
        == _request_types()
        == {
            "hello",
            "streams.list",
            "streams.add",
            "streams.remove",
            "query",
            "watch",
            "cancel",
        }
    )


async def test_every_request_type_is_dispatched_to_its_answer(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path) as (_svc, url), client(url, hello=False) as ws:
        answers = {"hello": await request(ws, {"type": "hello", "id": "h"})}
        answers["streams.add"] = await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        answers["streams.list"] = await request(ws, {"type": "streams.list", "id": "l"})
        answers["query"] = await request(ws, {"type": "query", "id": "q", "image": needle_b64()})
        answers["watch"] = await request(
            ws, {"type": "watch", "id": "w", "text": "a photo", "threshold": 0.9}
        )
        await wait_for(ws, lambda e: e.get("id") == "w" and e["type"] == "moments")
        answers["cancel"] = await request(ws, {"type": "cancel", "id": "c", "target": "w"})
        answers["streams.remove"] = await request(ws, {"type": "streams.remove", "id": "r", "stream": "cam"})
    assert set(answers) == _request_types()
    kinds = {k: type(parse_event(v)).__name__ for k, v in answers.items()}
    assert kinds == {
        "hello": "HelloEvent",
        "streams.add": "StreamEvent",
        "streams.list": "StreamsEvent",
        "query": "MomentsEvent",
        "watch": "WatchingEvent",
        "cancel": "CancelledEvent",
        "streams.remove": "StreamRemovedEvent",
    }
    assert answers["hello"]["meaningless"] is True and answers["cancel"]["target"] == "w"
    assert answers["hello"]["channels"] == ["visual"]  # speech and OCR are off by default
    assert answers["streams.list"]["streams"][0]["id"] == "cam"


def test_error_mapper(caplog: pytest.LogCaptureFixture) -> None:
    typed = error_event("a", UnknownStreamError("unknown stream 'x'"))
    assert (typed.id, typed.code, typed.message) == ("a", "unknown_stream", "unknown stream 'x'")

    with pytest.raises(ValidationError) as invalid:
        StreamStatus.model_validate({"id": "s"})
    bad = error_event("b", invalid.value)
    assert bad.code == ProtocolError.code and "status" in bad.message and "kind" in bad.message

    boom = RuntimeError("secret detail /etc/passwd")
    try:
        raise boom
    except RuntimeError as exc:
        with caplog.at_level(logging.ERROR, logger="agent.service.errors"):
            bug = error_event("c", exc)
    wire = bug.model_dump_json()
    assert bug.code == INTERNAL and "secret" not in wire and "Traceback" not in wire
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[1] is boom  # the log has it


async def test_cli_json_and_websocket_moments_validate_against_one_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        # No limit on refinement (the largest budget) on either side: the same work, the same answer.
        msg = {"type": "query", "id": "q", "image": needle_b64(), "top_k": 3, "budget": 60}
        event = await refined(ws, msg)
    capsys.readouterr()
    # The same index, now closed, queried by the CLI without a service.
    cli = [
        "query",
        str(tmp_path / "index"),
        "--image",
        str(NEEDLE),
        "--top-k",
        "3",
        "--json",
        "--budget",
        "60",
    ]
    rc = await asyncio.to_thread(vmr, cli)
    assert rc == 0
    local = QueryAnswer.model_validate_json(capsys.readouterr().out)

    remote = MomentsUpdateEvent.model_validate(event)
    assert isinstance(remote, QueryAnswer)
    fields = set(QueryAnswer.model_fields)
    remote_answer = QueryAnswer.model_validate({k: v for k, v in event.items() if k in fields})
    assert set(event) - fields == {"type", "id"}  # the event is the answer plus its envelope
    assert local.meaningless and remote_answer.meaningless
    assert 1 <= len(local.moments) <= 3 and [m.stream for m in local.moments] == ["cam"] * len(local.moments)
    assert local.moments[0].start < 4.0 and local.moments[0].end > 2.0  # the needle, as over the websocket
    assert set(local.streams) == set(remote_answer.streams) == {"cam"}
    assert [(m.start, m.end) for m in local.moments] == [(m.start, m.end) for m in remote_answer.moments]
    assert local.moments[0].thumbnail == remote_answer.moments[0].thumbnail
    # Same values, not only the same shape: abstention and confidence travel unchanged.
    assert local.abstained == remote_answer.abstained
    assert [(m.confidence, m.below_threshold) for m in local.moments] == [
        (m.confidence, m.below_threshold) for m in remote_answer.moments
    ]
    assert {k: v.abstained for k, v in local.streams.items()} == {
        k: v.abstained for k, v in remote_answer.streams.items()
    }


def test_moments_event_carries_every_field_of_the_answer() -> None:
    answer = QueryAnswer(moments=[], streams={}, meaningless=True, abstained=True)
    event = MomentsEvent.of("q", answer)
    assert {k: getattr(event, k) for k in QueryAnswer.model_fields} == answer.__dict__
    assert event.abstained and event.id == "q"


async def test_a_reused_request_id_is_refused_before_anything_runs(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    async with running(tmp_path) as (svc, url):
        async with client(url) as ws:
            await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
            await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
            for _ in range(3):  # sent back to back: the first is still running when the others arrive
                await ws.send(
                    json.dumps({"type": "watch", "id": "w", "image": needle_b64(), "threshold": 0.5})
                )
            for _ in range(3):
                await ws.send(json.dumps({"type": "query", "id": "dup", "image": needle_b64()}))
            seen: list[tuple[str, str | None]] = []
            while sum(1 for t, _ in seen if t in ("moments", "error")) < 6:  # 2 answers + 4 refusals
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event.get("id") in ("w", "dup"):
                    seen.append((event["type"], event.get("code")))
            assert seen.count(("error", "bad_message")) == 4
            assert seen.count(("moments", None)) == 2 and seen.count(("watching", None)) == 1
            assert len(svc.watches) == 1
        for _ in range(50):  # the client left: its one watch goes with it
            if not svc.watches:
                break
            await asyncio.sleep(0.1)
        assert not svc.watches


async def test_client_speaks_the_models(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    photo = tmp_path / "needle.jpg"
    photo.write_bytes(NEEDLE.read_bytes())
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
        await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] == "done")
        answer = await remote_query(url, text=None, image_path=photo, top_k=2)
        assert isinstance(answer, MomentsUpdateEvent) and 1 <= len(answer.moments) <= 2  # the refined one
        fast = await remote_query(url, text=None, image_path=photo, top_k=2, fast=True)
        assert isinstance(fast, MomentsEvent) and {m.answered_by for m in fast.moments} == {"anchor"}
        assert isinstance(answer.moments[0], MomentOut) and answer.streams["cam"].in_memory

        events = watch(url, text="a photo", streams=["cam"], threshold=0.5)
        first, second = await anext(events), await anext(events)
        await events.aclose()
        assert isinstance(first, WatchingEvent) and first.threshold == 0.5
        assert isinstance(second, MomentsEvent)

        with pytest.raises(UnknownStreamError, match="ghost"):
            await remote_query(url, text="a photo", streams=["ghost"])


def test_metrics_registries_are_per_service() -> None:
    one, two = ServiceMetrics(), ServiceMetrics()
    one.query_latency.observe(0.2)
    stats = ShardStats(streams={"cam": StreamStats(5, 1, 0, True, 3, 2)}, encoder_passes=4)

    def samples(m: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = m.render([stats], clients=2, watches=1).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    a, b = samples(one), samples(two)
    assert a["vmr_query_latency_seconds_count", ()] == 1 and b["vmr_query_latency_seconds_count", ()] == 0
    assert (
        a["vmr_frames_total", (("stream", "cam"),)] == 5
        and a["vmr_frames_dropped_total", (("stream", "cam"),)] == 1
    )
    assert (
        a["vmr_encoder_queue_depth", (("stream", "cam"),)] == 2
        and a["vmr_memory_tokens", (("stream", "cam"),)] == 3
    )
    assert a["vmr_stream_up", (("stream", "cam"),)] == 1 and a["vmr_encoder_passes_total", ()] == 4
    assert a["vmr_clients", ()] == 2 and a["vmr_watches", ()] == 1


def test_registry_restores_persisted_then_new_configured_streams(tmp_path: Path) -> None:
    reg = StreamRegistry(tmp_path, snapshot_seconds=30.0)
    cam = parse_spec({"id": "cam", "kind": "rtsp", "url": "rtsp://127.0.0.1:1/x"})
    assert reg.restore([cam]) == [cam]  # nothing persisted yet
    reg.save([cam])
    other = parse_spec({"id": "other", "kind": "rtsp", "url": "rtsp://127.0.0.1:1/y"})
    changed = parse_spec({"id": "cam", "kind": "rtsp", "url": "rtsp://127.0.0.1:1/changed"})
    assert reg.restore([changed, other]) == [cam, other]  # the persisted spec wins for a known id

    # A persisted stream whose kind this process cannot load (a plug-in gone, WHIP without aiortc)
    # stops neither the others nor the service: reported, kept, written back unchanged.
    gone = {"id": "gone", "kind": "thermal-camera", "url": "x"}
    data = json.loads((tmp_path / STREAMS_FILE).read_text())
    (tmp_path / STREAMS_FILE).write_text(json.dumps({**data, "streams": [*data["streams"], gone]}))
    assert reg.restore([other]) == [cam, other]
    assert [u.id for u in reg.unloadable] == ["gone"] and "thermal-camera" in reg.unloadable[0].reason
    reg.save([cam, other])
    assert gone in json.loads((tmp_path / STREAMS_FILE).read_text())["streams"]

    (tmp_path / STREAMS_FILE).write_text(json.dumps({"version": 99, "streams": []}))
    with pytest.raises(SnapshotVersionError):
        reg.restore()
    (tmp_path / STREAMS_FILE).write_text("{half")
    with pytest.raises(IndexStoreError):
        reg.restore()


def test_slow_client_policy_drops_progress_coalesces_updates_then_disconnects() -> None:
    conn = Connection(cast(Any, None), 8, authed=True)  # send() never touches the socket
    moment = MomentOut(stream="s", start=0.0, end=1.0, score=0.5, thumbnail="/t", answered_by="anchor")
    for i in range(4):  # up to the low watermark everything queues
        conn.send(ProgressEvent(stream="s", progress=i / 10, t=float(i), frames=i))
    conn.send(ProgressEvent(stream="s", progress=0.9, t=9.0, frames=9))
    assert len(conn.queue) == 4 and conn.dropped == 1
    conn.send(MomentUpdateEvent(id="w", match=1, closed=False, moment=moment))
    later = moment.model_copy(update={"end": 2.0})
    conn.send(MomentUpdateEvent(id="w", match=1, closed=False, moment=later))
    assert len(conn.queue) == 5 and cast(MomentUpdateEvent, conn.queue[-1]).moment.end == 2.0
    for _ in range(3):  # essential events fill the queue to the high watermark
        conn.send(MomentUpdateEvent(id="w", match=2, closed=True, moment=moment))
    assert len(conn.queue) == 8 and not conn.kicked
    conn.send(MomentUpdateEvent(id="w", match=3, closed=True, moment=moment))
    assert conn.kicked and len(conn.queue) == 1
    last = conn.queue[0]
    assert isinstance(last, ErrorEvent) and last.code == "slow_client"


async def test_two_clients_adding_one_id_at_once_get_one_stream_and_one_config_error(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    spec = {"id": "race", "kind": "file", "path": str(video)}
    async with running(tmp_path) as (svc, url), client(url) as a, client(url) as b:
        answers = await asyncio.gather(
            request(a, {"type": "streams.add", "id": "a", "stream": spec}),
            request(b, {"type": "streams.add", "id": "b", "stream": spec}),
        )
        kinds = sorted((e["type"], e.get("code")) for e in answers)
        assert kinds == [("error", "config"), ("stream", None)]
        assert list(svc.runners) == ["race"]


def test_the_id_of_a_message_too_large_to_parse_is_read_from_its_head() -> None:
    from agent.service.json_text import leading_id

    assert leading_id(json.dumps({"type": "query", "id": "big", "text": "y" * 100_000})) == "big"
    assert leading_id(json.dumps({"id": "first", "type": "query"})) == "first"
    assert leading_id('{"type": "q", "x": {"id": "inner"}, "id": "late"}') is None  # nested: not guessed
    assert leading_id("[" * 10_000) is None


async def test_any_json_value_that_is_not_an_object_is_a_typed_error(tmp_path: Path) -> None:
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        for raw in ("[1, 2]", '"text"', "null", "3", "[" * 100_000 + "]" * 100_000):
            await ws.send(raw)
            err = await wait_for(ws, lambda e: e["type"] == "error")
            assert err["code"] == "bad_message" and err["id"] is None, (raw[:10], err)
        answer = await request(ws, {"type": "streams.list", "id": "still-open"})
        assert answer["type"] == "streams"


def test_source_events_are_metrics() -> None:
    # Issue 16 kind 2: segments skipped or lost are counted in /metrics, not only in a log line.
    events = source_events({"segments_lost": 2, "segments_late": 1, "wall_source": "rtcp", "frames": 9})
    assert events == {"segments_lost": 2, "segments_late": 1}
    stats = ShardStats(streams={"rec": StreamStats(5, 0, 0, True, 3, 0, source_events=events)})
    text = ServiceMetrics().render([stats], clients=0, watches=0).decode()
    found = {
        s.labels["event"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vmr_source_events_total"
    }
    assert found == {"segments_lost": 2, "segments_late": 1}


async def test_a_lone_surrogate_in_query_text_is_a_bad_query_not_internal(tmp_path: Path) -> None:
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        for kind in ("query", "watch"):
            # json.dumps writes the lone surrogate as the escape "\ud800", which JSON allows.
            answer = await request(ws, {"type": kind, "id": f"{kind}-s", "text": "\ud800x"})
            assert answer["type"] == "error" and answer["code"] == "bad_query", answer
            assert "Unicode" in answer["message"]
        ok = await request(ws, {"type": "query", "id": "fine", "text": "a loading bay"})
        assert ok["type"] == "moments", ok  # the connection still answers


async def test_hostile_but_valid_query_texts_answer_moments_or_a_typed_error(tmp_path: Path) -> None:
    """NUL, bidi and zero-width marks, emoji sequences, literal special tokens and HTML escapes are
    answered (the tokenizer cuts to its context); a text over the limit is oversize, not internal."""
    fine = [
        "a\x00b",
        "\u202eloading bay\u200f",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 50,
        "<start_of_text><end_of_text>" * 20,
        "&amp;lt;script&amp;gt;",
        "\U0001f600" * 2000,  # at the 2000-character limit
        "\ufeff\u00a0\u2028 truck",
    ]
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        for i, text in enumerate(fine):
            answer = await request(ws, {"type": "query", "id": f"q{i}", "text": text})
            assert answer["type"] == "moments", (text[:20], answer)
        for i, text in enumerate(["\U0001f600" * 10_000, "x" * 100_000]):
            answer = await request(ws, {"type": "query", "id": f"big{i}", "text": text})
            assert answer["type"] == "error" and answer["code"] == "oversize_query", answer
