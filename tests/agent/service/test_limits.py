"""Fair and bounded: image bombs, requests in flight, the outbound byte bound, JSON depth and size,
echoed values, ranges outside retained memory (issue 9, availability)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import websockets
from PIL import Image

from agent.service.config import ServiceConfig, SourcesConfig
from agent.service.connection import Connection
from agent.service.json_text import ERROR_CHARS, MAX_DEPTH
from agent.service.pipeline import Service
from agent.service.protocol import ErrorEvent, ProgressEvent, ServerEvent, encode
from agent.service.server import Server
from tests.agent.service.helpers import (
    add,
    client,
    needle_b64,
    needle_video,
    refined,
    request,
    tiny_settings,
    until,
    wait_for,
)


@asynccontextmanager
async def serving(tmp_path: Path, **service: Any) -> AsyncIterator[tuple[Server, str]]:
    """Like ``helpers.running``, but yields the server too (its router holds the connections)."""
    service.setdefault("sources", SourcesConfig(media_roots=[tmp_path]))
    cfg = ServiceConfig(host="127.0.0.1", port=0, index=tmp_path / "index", token=None, **service)
    async with Service(cfg, tiny_settings()) as svc:
        await svc.start()
        server = Server(svc.serving, cfg)
        port = await server.start()
        try:
            yield server, f"ws://127.0.0.1:{port}"
        finally:
            await server.close()


async def ingested(ws: websockets.ClientConnection, tmp_path: Path) -> None:
    """Add a short needle video as stream ``cam`` and wait until it is fully ingested."""
    video = needle_video(tmp_path / "v.mp4", before=2.0, needle=2.0, after=2.0)
    await add(ws, {"id": "cam", "kind": "file", "path": str(video)})
    await until(ws, "cam", lambda s: s["status"] == "done")


def bomb_b64() -> str:
    """The issue's picture: an RGB PNG of 8000x8000 pixels in under 200 KB (decoded: 192 MB), base64."""
    out = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(out, "PNG")
    assert len(out.getvalue()) < 200 * 1024  # far below the byte cap: only the pixel cap refuses it
    return base64.b64encode(out.getvalue()).decode()


async def test_image_bombs_are_refused_from_their_header_and_another_client_is_answered(
    tmp_path: Path,
) -> None:
    bomb = bomb_b64()
    async with serving(tmp_path, max_in_flight=16) as (_server, url):
        async with client(url) as attacker, client(url) as other:
            await ingested(other, tmp_path)
            for i in range(10):  # sent at once and not read: all ten pending while the other client asks
                await attacker.send(json.dumps({"type": "query", "id": f"bomb{i}", "image": bomb}))
            mine = await request(other, {"type": "query", "id": "mine", "image": needle_b64()})
            assert mine["type"] == "moments" and mine["moments"], mine
            refusals = [await wait_for(attacker, lambda e: e.get("id") is not None) for _ in range(10)]
            assert sorted(e["id"] for e in refusals) == sorted(f"bomb{i}" for i in range(10))
            for err in refusals:
                assert (err["type"], err["code"]) == ("error", "oversize_query"), err
                assert "8000x8000 pixels" in err["message"]
            # The attacker's connection is still served.
            assert (await request(attacker, {"type": "streams.list", "id": "l"}))["type"] == "streams"


def cork(ws: websockets.ClientConnection, on: bool) -> None:
    """Hold (on) or release (off) the client's outgoing bytes: what is sent in between arrives at once."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))


async def test_requests_over_the_in_flight_limit_are_answered_busy_before_anything_runs(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, max_in_flight=2) as (_server, url), client(url) as ws:
        await ingested(ws, tmp_path)
        cork(ws, True)  # five queries in one segment: read and dispatched before any of them runs
        for i in range(5):
            await ws.send(json.dumps({"type": "query", "id": f"q{i}", "text": "a photo", "streams": ["cam"]}))
        cork(ws, False)
        answers = [await wait_for(ws, lambda e: str(e.get("id")).startswith("q")) for _ in range(5)]
        assert [(e["id"], e["type"], e.get("code")) for e in answers[:3]] == [
            ("q2", "error", "busy"),
            ("q3", "error", "busy"),
            ("q4", "error", "busy"),
        ]
        assert "2 requests in flight" in answers[0]["message"]
        assert sorted((e["id"], e["type"]) for e in answers[3:]) == [("q0", "moments"), ("q1", "moments")]
        # Each query is in flight until its refined answer; then its slot is free again.
        updates = [await wait_for(ws, lambda e: e["type"] == "moments.update") for _ in range(2)]
        assert sorted(e["id"] for e in updates) == ["q0", "q1"]
        again = await refined(ws, {"type": "query", "id": "q5", "text": "a photo", "streams": ["cam"]})
        assert again["type"] == "moments.update"


def test_the_outbound_queue_is_bounded_in_bytes() -> None:
    limit = 64 * 1024
    conn = Connection(
        cast(Any, None), 10_000, authed=True, max_bytes=limit
    )  # send() never touches the socket
    big = ErrorEvent(code="source", message="x" * ERROR_CHARS)
    size = sys.getsizeof(encode(big))
    conn.send(ProgressEvent(stream="s", progress=0.1, t=0.0, frames=0))  # below the low watermark: queued
    while conn.queued_bytes + size <= limit // 2:
        conn.send(big)
    conn.send(big)  # over half the bytes (and far below half of 10 000 events)
    queued = len(conn.queue)
    conn.send(ProgressEvent(stream="s", progress=0.6, t=2.0, frames=2))
    assert (conn.dropped, len(conn.queue)) == (1, queued)  # dropped
    peak = 0
    while not conn.kicked:  # essential events queue up to the byte bound
        conn.send(big)
        peak = max(peak, conn.queued_bytes)
    assert limit - size < peak <= limit and len(conn.queue) == 1 and conn.queued_bytes < size
    last = conn.queue[0]
    assert isinstance(last, ErrorEvent) and last.code == "slow_client"
    assert conn.close_reason.startswith("slow client:") and "bytes" in conn.close_reason


async def test_a_client_that_never_reads_is_held_to_the_byte_bound_then_disconnected(tmp_path: Path) -> None:
    limit = 64 * 1024
    async with serving(tmp_path, client_queue=100_000, client_queue_bytes=limit) as (server, url):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that stops: small window
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        async with websockets.connect(url + "/ws", sock=sock, max_queue=1, max_size=2**26) as ws:
            (conn,) = server.router.connections
            sizes: list[int] = []  # the queue's byte count after every event the server sends
            send = conn.send

            def counted(event: ServerEvent) -> None:
                send(event)
                sizes.append(conn.queued_bytes)

            conn.send = counted  # type: ignore[method-assign]
            sent = 0
            async with asyncio.timeout(120):
                while not conn.kicked:  # each request gets an error of about 1 KB, never read
                    await ws.send(
                        json.dumps({"type": "streams.remove", "id": f"r{sent}", "stream": "x" * 4000})
                    )
                    sent += 1
                    await asyncio.sleep(0)
                events = []
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        events.append(json.loads(await ws.recv()))
            # The queue filled up to the bound, never past it (each event is about 1.1 KB).
            assert limit - 2048 < max(sizes) <= limit, (max(sizes), sent)
            assert len(events) < sent and events[-1]["code"] == "slow_client", events[-1]
            assert all(e["code"] == "unknown_stream" for e in events[:-1])
            assert ws.close_code == 1008 and ws.close_reason.startswith("slow client:")


async def test_json_nested_deeper_than_the_limit_or_too_wide_is_a_typed_error(tmp_path: Path) -> None:
    def nested(depth: int) -> str:  # a streams.add whose spec holds arrays nested to ``depth`` in all
        return json.dumps({"type": "streams.add", "id": "d", "stream": {"x": 0}}).replace(
            "0", "[" * (depth - 2) + "]" * (depth - 2)
        )

    async with serving(tmp_path) as (_server, url), client(url) as ws:
        for raw in (nested(MAX_DEPTH + 1), "[" * 100_000 + "]" * 100_000):
            await ws.send(raw)
            err = await wait_for(ws, lambda e: e["type"] == "error")
            assert err["code"] == "bad_message" and "nested deeper than" in err["message"], err
        err = await request(ws, json.loads(nested(MAX_DEPTH)))  # at the limit: parsed, then judged
        assert err["code"] == "config" and "nested" not in err["message"]
        await ws.send(json.dumps({"type": "streams.list", "id": "w", "x": [[] for _ in range(20_000)]}))
        err = await wait_for(ws, lambda e: e["type"] == "error")
        assert err["code"] == "bad_message" and "values" in err["message"], err
        assert (await request(ws, {"type": "streams.list", "id": "up"}))["type"] == "streams"


async def test_echoed_values_are_cut_and_an_overlong_id_is_not_echoed(tmp_path: Path) -> None:
    huge = "x" * 1_000_000
    async with serving(tmp_path) as (_server, url), client(url) as ws:
        for msg in (
            {"type": huge, "id": "t"},
            {"type": "streams.remove", "id": "s", "stream": huge},
            {"type": "cancel", "id": "c", "target": huge},
            {"type": "query", "id": "f", "text": "a", **{f"extra{i}{huge[:500]}": 1 for i in range(500)}},
        ):
            err = await request(ws, msg)
            assert err["type"] == "error" and len(err["message"]) <= ERROR_CHARS, (
                err["code"],
                len(err["message"]),
            )
            assert "xxxxx" in err["message"]  # quoted, but cut
        await ws.send(json.dumps({"type": "streams.list", "id": "i" * 300}))  # dropped the connection on main
        err = await wait_for(ws, lambda e: e["type"] == "error")
        assert (err["id"], err["code"]) == (None, "bad_message") and "200 characters" in err["message"]
        assert (await request(ws, {"type": "streams.list", "id": "up"}))["type"] == "streams"


@pytest.mark.parametrize("kind", ["query", "watch"])
async def test_a_range_outside_retained_memory_answers_empty_with_a_caveat(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path) as (_server, url), client(url) as ws:
        await ingested(ws, tmp_path)
        for window in ({"start": 5000}, {"start": 5000, "end": 6000}, {"end": -5}):
            await ws.send(json.dumps({"type": kind, "id": "r", "text": "a photo", **window}))
            answer = await wait_for(ws, lambda e: e.get("id") == "r" and e["type"] != "watching")
            assert answer["type"] == "moments" and answer["moments"] == [], answer
            if kind == "query":  # a query's refined answer follows its first: empty as well
                update = await wait_for(ws, lambda e: e.get("id") == "r")
                assert update["type"] == "moments.update" and update["moments"] == [], update
            cam = answer["streams"]["cam"]
            assert cam["coverage"]["in_memory"] is False and "not in retained memory" in " ".join(
                cam["notes"]
            )
            if kind == "watch":
                assert (await request(ws, {"type": "cancel", "id": "c", "target": "r"}))[
                    "type"
                ] == "cancelled"
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


async def test_thumbnails_refuse_non_finite_times_and_cut_what_they_echo(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_server, url), aiohttp.ClientSession() as http:
        base = url.replace("ws://", "http://")
        for t in ("nan", "inf", "1e400", "later"):
            async with http.get(f"{base}/thumbnails/cam/{t}.jpg") as response:
                assert response.status == 400 and "finite" in await response.text()
        async with http.get(f"{base}/thumbnails/{'y' * 3000}/1.0.jpg") as response:
            assert response.status == 404 and len(await response.text()) <= ERROR_CHARS


async def test_non_finite_or_absurd_numbers_are_typed_errors(tmp_path: Path) -> None:
    # Python's JSON parser reads Infinity and NaN, and 1e999 as inf: a watch that never closes.
    watch = '{"type": "watch", "id": "%s", "text": "a red car", "close_seconds": %s}'
    cases = {
        watch % ("inf", "Infinity"): "Infinity is not a JSON value",
        watch % ("nan", "NaN"): "NaN is not a JSON value",
        watch % ("big", "1e999"): "close_seconds: Input should be a finite number",
        watch % ("huge", "1e300"): "close_seconds: Input should be less than or equal to 86400",
        watch % ("neg", "-1"): "close_seconds: Input should be greater than 0",
        '{"type": "query", "id": "q", "text": "a red car", "start": -1e999}': "start: Input should be a finite",
    }
    async with serving(tmp_path) as (_server, url), client(url) as ws:
        for raw, reason in cases.items():
            await ws.send(raw)
            err = await wait_for(ws, lambda e: e["type"] == "error")
            assert err["code"] == "bad_message" and reason in err["message"], (raw, err)
        ok = await request(ws, {"type": "watch", "id": "ok", "text": "a red car", "close_seconds": 3})
        assert ok["type"] != "error", ok  # the connection still serves, and a sane value passes
