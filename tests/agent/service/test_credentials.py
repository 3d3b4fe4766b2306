"""Camera passwords never leave the process: answers, events, listings, errors and logs are masked."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from agent.service.config import parse_spec
from streams.urls import mask_text, mask_url
from tests.agent.service.helpers import client, running
from tests.streams.servers import free_port

SECRET = "s3cr3t-pw"


def test_mask_rule() -> None:
    assert mask_url(f"rtsp://admin:{SECRET}@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert mask_url("rtsp://admin@cam/live") == "rtsp://admin@cam/live"  # a user alone is no secret
    assert mask_url("rtsp://cam/live") == "rtsp://cam/live"
    text = f"[Errno 111] Connection refused: 'rtsp://u:{SECRET}@127.0.0.1:1/x' and rtsps://v:w@h/y"
    assert SECRET not in mask_text(text) and "rtsps://v:***@h/y" in mask_text(text)


async def test_no_answer_event_listing_error_or_log_line_carries_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam"  # nothing listens: FFmpeg errors quote it
    seen: list[str] = []
    async with running(tmp_path) as (_svc, ws_url), client(ws_url) as ws:
        await ws.send(
            json.dumps(
                {"type": "streams.add", "id": "add", "stream": {"id": "door", "kind": "rtsp", "url": url}}
            )
        )
        await ws.send(
            json.dumps(
                {
                    "type": "streams.add",
                    "id": "bad",
                    "stream": {"id": "x", "kind": "rtsp", "url": f"http://a:{SECRET}@h/"},
                }
            )
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.0  # a few reconnect attempts with their error text
        while loop.time() < deadline:
            try:
                seen.append(await asyncio.wait_for(ws.recv(), max(0.05, deadline - loop.time())))
            except TimeoutError:
                break
        await ws.send(json.dumps({"type": "streams.list", "id": "list"}))
        seen.append(await asyncio.wait_for(ws.recv(), 10))
        listing = next(json.loads(e) for e in seen if json.loads(e).get("id") == "list")
        door = next(s for s in listing["streams"] if s["id"] == "door")
        assert door["url"] == "rtsp://admin:***@127.0.0.1:" + url.split(":")[-1]
        assert door["source"]["last_error"]  # the connection error is shown ...
    logs = "\n".join(  # the service's log lines (the test's own websocket client logs what it sends)
        r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "")
        for r in caplog.records
        if not r.name.startswith("websockets.client")
    )
    assert "open failed" in logs or "open failed" in json.dumps(listing)
    assert SECRET not in "\n".join(seen) and SECRET not in logs  # ... and never with the password
    stored = tmp_path / "index" / "service_streams.json"
    assert SECRET in stored.read_text()  # the stream list keeps the real URL to reconnect ...
    assert stored.stat().st_mode & 0o077 == 0  # ... readable by its owner only
    assert parse_spec({"id": "d", "kind": "rtsp", "url": url}).location()["url"] == mask_url(url)
