"""Property-based fuzzing (hypothesis) of the message parser and of the running server's handlers.

The parser: any text — JSON of any shape, nested, huge, of the wrong types —
either validates into a request or raises ProtocolError, whose error event is
short. The server (real, on a loopback port 0, run in a thread of its own):
whatever a client sends, every event it gets back is a valid server event,
never an ``internal`` error, and the connection still answers afterwards.
Both are bounded: a fixed number of examples, no per-example deadline, and a
wall-clock timeout on the test.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import threading
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from agent.config import QueryConfig
from agent.errors import ProtocolError, VmrError
from agent.service.errors import INTERNAL, error_event
from agent.service.json_text import ERROR_CHARS
from agent.service.protocol import (
    ClientMessage,
    ErrorEvent,
    QueryMsg,
    WatchMsg,
    parse_event,
    parse_message,
    to_query,
)
from tests.agent.service.helpers import NEEDLE, needle_video, running

TYPES = sorted(
    get_args(model.model_fields["type"].annotation)[0] for model in get_args(get_args(ClientMessage)[0])
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities included: Python's json reads them
    | st.text(max_size=20)
    | st.sampled_from(["", "cam", "ghost", "0", "-1", "1e309", "\x00", "'\"[{"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NEEDLE_B64 = base64.b64encode(NEEDLE.read_bytes()).decode()
picture = st.sampled_from([NEEDLE_B64, "iVBORw0KGgo=", "!!", ""])
fields: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(max_size=8) | st.integers(0, 400).map(lambda n: "i" * n) | json_values,
    "protocol": st.sampled_from([1, 0, 2]) | json_values,
    "token": json_values,
    "text": st.sampled_from(["a photo", " ", "x" * 3000]) | json_values,
    "image": picture | json_values,
    "streams": st.lists(st.sampled_from(["cam", "ghost", ""]), max_size=3) | json_values,
    "start": st.floats() | st.sampled_from([5000, -5, 0, 2.5]) | json_values,
    "end": st.floats() | st.sampled_from([6000, -1, 3, 1e308]) | json_values,
    "top_k": st.integers(-2, 200) | json_values,
    "threshold": st.floats(-2, 2) | json_values,
    "close_seconds": st.floats(-1, 10) | json_values,
    "backward": st.booleans() | json_values,
    "target": st.sampled_from(["w", "q", "nothing"]) | json_values,
    "stream": st.sampled_from(["ghost", ""]) | json_values,
}
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | json_values},
    optional={**fields, "extra": json_values},
)
ids = st.text(min_size=1, max_size=6)
ranges = {
    "streams": st.lists(st.sampled_from(["cam", "ghost"]), max_size=2),
    "start": st.floats(-10, 1e4) | st.sampled_from([5000, -5, 0, 2.5, 1e308]),
    "end": st.floats(-10, 1e4) | st.sampled_from([6000, -1, 3, 1e308]),
    "top_k": st.integers(0, 101),
}
what = st.one_of(
    st.fixed_dictionaries({"text": st.sampled_from(["a photo", "a dog", "", "x" * 2001])}),
    st.fixed_dictionaries({"image": picture}),
)
well_typed = st.one_of(  # valid in shape, their values near and past the limits: they reach the handlers
    st.builds(
        lambda head, body: {**head, **body},
        st.fixed_dictionaries({"type": st.just("query"), "id": ids}, optional=ranges),
        what,
    ),
    st.builds(
        lambda head, body: {**head, **body},
        st.fixed_dictionaries(
            {"type": st.just("watch"), "id": ids},
            optional={
                **ranges,
                "threshold": st.floats(-1, 1),
                "close_seconds": st.floats(0.01, 10),
                "backward": st.booleans(),
            },
        ),
        what,
    ),
    st.fixed_dictionaries({"type": st.just("cancel"), "id": ids, "target": ids}),
    st.fixed_dictionaries(
        {"type": st.just("streams.remove"), "id": ids, "stream": st.sampled_from(["ghost", ""])}
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["hello", "streams.list"]), "id": ids},
        optional={"protocol": st.integers(0, 2)},
    ),
)
raw_texts = st.one_of(
    well_typed.map(json.dumps),
    messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.integers(0, 200_000).map(lambda n: "[" * n + "]" * n),
    st.integers(0, 500_000).map(lambda n: json.dumps({"type": "query", "id": "big", "text": "y" * n})),
    st.integers(0, 50_000).map(lambda n: json.dumps({"type": "x" * n, "id": "t"})),
)


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "query", "id": "q", "text": "x", "top_k": True},
        {"type": "query", "id": "q", "text": "x", "top_k": "3"},
        {"type": "query", "id": "q", "text": "x", "top_k": 3.5},
        {"type": "streams.remove", "id": "r", "stream": "s", "purge": "yes"},
        {"type": "streams.remove", "id": "r", "stream": "s", "purge": 1},
    ],
)
def test_counts_and_flags_of_another_json_type_are_refused(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_message(json.dumps(msg))


def test_a_plain_count_and_flag_still_parse() -> None:
    query = parse_message(json.dumps({"type": "query", "id": "q", "text": "x", "top_k": 3}))
    remove = parse_message(json.dumps({"type": "streams.remove", "id": "r", "stream": "s", "purge": True}))
    assert isinstance(query, QueryMsg) and query.top_k == 3
    assert remove.type == "streams.remove" and remove.purge is True


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=raw_texts)
@pytest.mark.timeout(120)
def test_the_parser_raises_nothing_but_protocol_error(raw: str) -> None:
    try:
        msg = parse_message(raw)
    except ProtocolError as exc:
        event = error_event(None, exc)
        assert event.code != INTERNAL and len(event.message) <= ERROR_CHARS
        return
    assert msg.type in TYPES
    if isinstance(msg, QueryMsg | WatchMsg):
        try:
            to_query(msg, QueryConfig())
        except VmrError as exc:
            assert len(error_event(msg.id, exc).message) <= ERROR_CHARS


class LiveServer:
    """The real service and server, on its own event loop in a thread (hypothesis drives it from outside)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-server", daemon=True)
        self.stop: asyncio.Event | None = None
        self.done: concurrent.futures.Future[None] | None = None

    def start(self) -> str:
        self.thread.start()
        started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.done = asyncio.run_coroutine_threadsafe(self._serve(started), self.loop)
        return started.result(timeout=120)

    async def _serve(self, started: concurrent.futures.Future[str]) -> None:
        self.stop = asyncio.Event()
        try:
            async with running(self.tmp, max_in_flight=4) as (_svc, url):
                started.set_result(url)
                await self.stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        if self.done is not None:
            self.done.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(ws url, folder) of a running service holding a short ingested stream ``cam``."""
    tmp = tmp_path_factory.mktemp("fuzz")
    video = needle_video(tmp / "v.mp4", before=2.0, needle=2.0, after=2.0)
    server = LiveServer(tmp)
    url = server.start()
    try:
        with connect(url + "/ws", max_size=2**26) as ws:
            answer(
                ws,
                {
                    "type": "streams.add",
                    "id": "add",
                    "stream": {"id": "cam", "kind": "file", "path": str(video)},
                },
            )
            for _ in range(600):
                (cam,) = answer(ws, {"type": "streams.list", "id": "l"})[-1]["streams"]
                if cam["status"] != "running" and cam["status"] != "starting":
                    break
                threading.Event().wait(0.1)
            assert cam["status"] == "done", cam
        yield url, tmp
    finally:
        server.close()


_sentinels = count()


def answer(ws: ClientConnection, msg: dict[str, Any] | str) -> list[dict[str, Any]]:
    """Send ``msg`` (then a sentinel ``streams.list``); every event received until the sentinel's answer."""
    ws.send(msg if isinstance(msg, str) else json.dumps(msg))
    sentinel = f"sentinel-{next(_sentinels)}"
    ws.send(json.dumps({"type": "streams.list", "id": sentinel}))
    events = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        events.append(event)
        if event.get("id") == sentinel:
            return events


def reply(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send ``msg``; the first event answering its id (``watching`` and other events skipped)."""
    ws.send(json.dumps(msg))
    while True:
        event = json.loads(ws.recv(timeout=60))
        if event.get("id") == msg["id"] and event["type"] != "watching":
            return dict(event)


def stream_specs(folder: Path) -> st.SearchStrategy[dict[str, Any]]:
    """Specs of the local kinds (never a network address) naming files that are not video."""
    return st.fixed_dictionaries(
        {
            "id": st.sampled_from(["cam", "new", "", "../x", "a" * 300]) | st.text(max_size=8),
            "kind": st.sampled_from(["file", "segments", "nope"]),
        },
        optional={
            "path": st.sampled_from([str(folder / "missing.mp4"), str(folder / "empty"), ""]) | json_values,
            "fps": json_values,
            "realtime": json_values,
            "extra": json_values,
        },
    )


@pytest.mark.timeout(180)
def test_the_running_server_answers_every_message_with_a_typed_event(
    live: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, folder = live
    (folder / "empty").mkdir(exist_ok=True)
    adds = st.fixed_dictionaries(
        {"type": st.just("streams.add"), "id": st.just("a"), "stream": stream_specs(folder)}
    )
    # Well-typed requests three times as often as the rest: they are the ones that reach the handlers.
    sent = st.one_of(*[well_typed.map(json.dumps)] * 3, raw_texts, adds.map(json.dumps))
    caplog.set_level(logging.ERROR)
    seen: dict[str, int] = {}  # events received, by type
    with connect(url + "/ws", max_size=2**26) as ws:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(raw=sent)
        def exchange(raw: str) -> None:
            for event in answer(ws, raw):
                parsed = parse_event(event)  # a valid server event, whatever came in
                key = parsed.type + (":" + parsed.code if isinstance(parsed, ErrorEvent) else "")
                seen[key] = seen.get(key, 0) + 1
                if isinstance(parsed, ErrorEvent):
                    assert parsed.code != INTERNAL and len(parsed.message) <= ERROR_CHARS, parsed

        exchange()
        # Still up and still answering queries (retried while fuzzed ones hold the in-flight slots).
        for attempt in range(120):
            final = reply(ws, {"type": "query", "id": f"final-check-{attempt}", "image": NEEDLE_B64})
            if final.get("code") != "busy":
                break
            threading.Event().wait(0.5)
        assert final["type"] == "moments" and final["moments"], final
    assert seen["streams"] >= 200 and seen.get("error:bad_message"), seen  # every example answered
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
