"""Authentication on every route: bearer token, browser origins, backoff, pre-hello caps (server on port 0)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from agent.service import auth as auth_module
from agent.service.auth import Auth, Backoff, bearer
from agent.service.config import AuthConfig
from tests.agent.service.helpers import client, needle_video, request, running, until

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _http(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url.replace("ws://", "http://"), timeout=30)


async def test_every_http_route_needs_the_token_and_healthz_reveals_only_its_state(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4", before=1.0, needle=1.0, after=1.0)
    async with running(tmp_path, token=TOKEN) as (_svc, url), client(url, token=TOKEN) as ws:
        await request(
            ws,
            {"type": "streams.add", "id": "a", "stream": {"id": "cam", "kind": "file", "path": str(video)}},
        )
        await request(ws, {"type": "streams.add", "id": "w", "stream": {"id": "pub", "kind": "whip"}})
        await until(ws, "cam", lambda s: s["frames"] >= 2, limit=60)
        async with _http(url) as http:
            for path in ("/thumbnails/cam/0.000.jpg", "/metrics"):
                bare = await http.get(path)
                assert bare.status_code == 401 and bare.headers["WWW-Authenticate"].startswith("Bearer"), path
                assert b"\xff\xd8" not in bare.content and b"vmr_" not in bare.content
                wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401, path
                assert (await http.get(path, headers=BEARER)).status_code == 200, path
            thumb = await http.get("/thumbnails/cam/0.000.jpg", headers=BEARER)
            assert thumb.content[:2] == b"\xff\xd8"
            offer = await http.post(
                "/whip/pub", content=b"v=0\r\n", headers={"Content-Type": "application/sdp"}
            )
            assert offer.status_code == 401  # WHIP too, before the library sees the offer
            health = await http.get("/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}  # no ids, no counts
            full = (await http.get("/healthz", headers=BEARER)).json()
            assert full["status"] == "ok" and full["streams"] == 2


async def test_websocket_takes_the_bearer_header_instead_of_hello(tmp_path: Path) -> None:
    async with running(tmp_path, token=TOKEN) as (_svc, url):
        async with websockets.connect(url + "/ws", additional_headers=BEARER) as ws:
            listed = await request(ws, {"type": "streams.list", "id": "l"})
            assert listed == {"type": "streams", "id": "l", "streams": []}
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url + "/ws", additional_headers={"Authorization": "Bearer nope"}):
                pass
        assert refused.value.response.status_code == 401


async def test_foreign_browser_origins_are_refused(tmp_path: Path) -> None:
    allowed = "https://ops.example.com"
    async with running(tmp_path, auth=AuthConfig(origins=[allowed])) as (_svc, url):
        port = url.rsplit(":", 1)[1]
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url + "/ws", origin=Origin("http://evil.example")):
                pass
        assert refused.value.response.status_code == 403
        for origin in (f"http://127.0.0.1:{port}", allowed):  # same origin, and the configured one
            async with client(url) as ws, websockets.connect(url + "/ws", origin=Origin(origin)) as ok:
                assert (await request(ok, {"type": "streams.list", "id": "l"}))["type"] == "streams"
                assert ws.state.name == "OPEN"
        async with _http(url) as http:
            assert (await http.get("/metrics", headers={"Origin": "http://evil.example"})).status_code == 403
            # DNS rebinding: the page's own name resolves to 127.0.0.1; same origin, but not a loopback name.
            rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            assert (await http.get("/metrics", headers=rebound)).status_code == 403
            assert (await http.get("/metrics")).status_code == 200  # no Origin: not a browser


async def _hello(url: str, token: str) -> tuple[dict[str, Any], int | None, str | None]:
    async with client(url, hello=False) as ws:
        await ws.send(json.dumps({"type": "hello", "id": "h", "token": token}))
        answer = json.loads(await ws.recv())
        await ws.wait_closed()
        return answer, ws.close_code, ws.close_reason


async def test_wrong_tokens_lock_the_address_out(tmp_path: Path) -> None:
    cfg = AuthConfig(free_failures=2, backoff_seconds=600.0, backoff_max_seconds=600.0)
    async with running(tmp_path, token=TOKEN, auth=cfg) as (_svc, url):
        for _ in range(2):  # the free failures: refused as wrong
            answer, code, reason = await _hello(url, "guess")
            assert answer["code"] == "unauthorized" and "retry" not in str(answer["message"])
            assert (code, reason) == (1008, "unauthorized")
        answer, _, _ = await _hello(url, "guess")  # the third earns the lockout
        assert answer["code"] == "unauthorized" and "retry in 600 s" in str(answer["message"])
        answer, code, reason = await _hello(url, TOKEN)  # now even the right token is not compared
        assert answer["code"] == "unauthorized" and "retry in" in str(answer["message"])
        assert (code, reason) == (1008, "unauthorized")
        async with _http(url) as http:
            locked = await http.get("/metrics", headers=BEARER)
            assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


async def _until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every event until the server closes the socket (bounded in time)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        try:
            while True:
                events.append(json.loads(await ws.recv()))
        except ConnectionClosed:
            return events


async def test_pre_hello_abuse_is_disconnected_with_its_reason(tmp_path: Path) -> None:
    async with running(tmp_path, token=TOKEN, auth=AuthConfig(preauth_max_invalid=3)) as (_svc, url):
        async with client(url, hello=False) as ws:
            for _ in range(3):
                await ws.send("{not json")
            events = await _until_closed(ws)
            assert [e["code"] for e in events] == ["bad_message"] * 3 + ["limit_exceeded"]
            assert (ws.close_code, ws.close_reason) == (1008, "too many invalid messages")
        async with client(url, hello=False) as ws:
            await ws.send(json.dumps({"type": "hello", "id": "h", "token": "x" * 20_000}))
            events = await _until_closed(ws)
            assert [e["code"] for e in events] == ["bad_message"] and "before hello" in events[0]["message"]
            assert (ws.close_code, ws.close_reason) == (1009, "message too big before authentication")
        async with client(url, hello=False) as ws:
            await ws.send(json.dumps({"type": "streams.list", "id": "l"}))
            events = await _until_closed(ws)
            assert [e["code"] for e in events] == ["unauthorized"]
            assert (ws.close_code, ws.close_reason) == (1008, "unauthorized")  # not "slow client"
        async with client(url, hello=False) as ws:
            await ws.send(b"\x00" * 100)
            await ws.send(b"\x00" * 20_000)
            events = await _until_closed(ws)
            assert [e["code"] for e in events] == ["bad_message", "bad_message"]
            assert (ws.close_code, ws.close_reason) == (1009, "message too big before authentication")
        async with client(url, token=TOKEN) as ws:  # after hello: invalid messages are answered, not struck
            for i in range(5):
                err = await request(ws, {"type": "frobnicate", "id": str(i)})
                assert err["code"] == "bad_message"
            assert (await request(ws, {"type": "streams.list", "id": "l"}))["type"] == "streams"


async def test_a_client_without_hello_is_disconnected_in_time(tmp_path: Path) -> None:
    async with running(tmp_path, token=TOKEN, auth=AuthConfig(hello_seconds=0.5)) as (_svc, url):
        async with client(url, hello=False) as ws:
            events = await _until_closed(ws)  # says nothing; the server ends it
            assert [e["code"] for e in events] == ["unauthorized"] and "no hello" in events[0]["message"]
            assert (ws.close_code, ws.close_reason) == (1008, "no hello in time")
        async with client(url, token=TOKEN) as ws:  # a client that said hello stays past the limit
            await asyncio.sleep(1.0)
            assert (await request(ws, {"type": "streams.list", "id": "l"}))["type"] == "streams"


def test_backoff_doubles_to_its_cap_resets_and_stays_bounded() -> None:
    b = Backoff(free=2, base=1.0, cap=8.0, size=16)
    assert [b.failure("a", 0.0) for _ in range(7)] == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.locked_for("a", 3.0) == 5.0 and b.locked_for("a", 9.0) == 0.0
    b.success("a")
    assert b.locked_for("a", 0.0) == 0.0 and b.failure("a", 0.0) == 0.0  # free failures again
    for i in range(100):
        b.failure(f"10.0.0.{i}", 0.0)
    assert len(b) == 16 and b.locked_for("10.0.0.99", 0.0) == 0.0  # oldest forgotten; bounded


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    now = [0.0]
    gate = Auth(TOKEN, AuthConfig(free_failures=0), clock=lambda: now[0])
    assert not gate.check("1.2.3.4", "guess").ok and calls == [(b"guess", TOKEN.encode())]
    assert gate.check("1.2.3.4", TOKEN).retry_after > 0 and len(calls) == 1  # locked: not compared
    now[0] = 10.0
    assert gate.check("1.2.3.4", TOKEN).ok and len(calls) == 2
    assert gate.check("5.6.7.8", None).ok is False and len(calls) == 2  # missing: nothing to compare
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None and bearer(None) is None


async def test_a_tokenless_loopback_service_answers_only_loopback_host_names(tmp_path: Path) -> None:
    # DNS rebinding without an Origin header: a rebound page's <img>, <video> and same-origin
    # fetches send its own name as Host; every route of a token-less loopback service refuses it.
    video = needle_video(tmp_path / "a.mp4", before=1.0, needle=1.0, after=1.0)
    async with running(tmp_path) as (_svc, url), client(url) as ws, _http(url) as http:
        await request(
            ws,
            {"type": "streams.add", "id": "add-a", "stream": {"id": "a", "kind": "file", "path": str(video)}},
        )
        await until(ws, "a", lambda s: s["status"] == "done")
        port = url.rsplit(":", 1)[1]
        for path in ("/metrics", "/thumbnails/a/1.000.jpg", "/media/a", "/"):
            assert (await http.get(path, headers={"Host": f"evil.example:{port}"})).status_code == 403, path
            assert (await http.get(path)).status_code == 200, path
        # The admitted file swapped for a link to elsewhere afterwards: /media serves no link.
        secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"
        secret.write_text("private")
        video.unlink()
        video.symlink_to(secret)
        assert (await http.get("/media/a")).status_code == 404
