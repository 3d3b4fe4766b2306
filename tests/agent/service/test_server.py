"""The websocket API and HTTP endpoints against a real service on a loopback port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import ConfigError
from agent.service.config import ServiceConfig
from agent.service.server import Server
from tests.agent.service.helpers import (
    client,
    metric_samples,
    needle_b64,
    needle_video,
    refined,
    request,
    running,
    wait_for,
)


async def test_file_stream_query_thumbnail_health_metrics(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "v.mp4")
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        added = await request(
            ws,
            {"type": "streams.add", "id": "a", "stream": {"id": "cam", "kind": "file", "path": str(video)}},
        )
        assert added["type"] == "stream" and added["stream"]["id"] == "cam"
        done = await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] != "running")
        assert done["stream"]["status"] == "done", done
        assert done["stream"]["frames"] >= 20

        answer = await refined(ws, {"type": "query", "id": "q", "image": needle_b64(), "top_k": 3})
        assert answer["type"] == "moments.update", answer
        best = answer["moments"][0]
        assert best["stream"] == "cam"
        assert best["start"] < 8.0 and best["end"] > 4.0, best  # overlaps the needle scene [4, 8)
        assert answer["meaningless"] is True
        cov = answer["streams"]["cam"]["coverage"]
        assert cov["in_memory"] and cov["retained_fraction"] > 0.9
        assert best["wall_start"] is None  # a file without a configured start time

        base = url.replace("ws://", "http://")
        async with httpx.AsyncClient(base_url=base) as http:
            thumb = await http.get(best["thumbnail"])
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
            assert (await http.get("/thumbnails/nope/1.0.jpg")).status_code == 404
            health = (await http.get("/healthz")).json()
            assert health["status"] == "ok" and health["streams"] == 1 and health["failed"] == []
            metrics = await http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = metric_samples(metrics.text)
        assert samples["vmr_frames_total", (("stream", "cam"),)] >= 1
        assert samples["vmr_encoder_passes_total", ()] >= 1
        assert samples["vmr_query_latency_seconds_bucket", (("le", "+Inf"),)] == 1
        families = {f.name: f.type for f in text_string_to_metric_families(metrics.text)}
        assert families["vmr_query_latency_seconds"] == "histogram"

        listed = await request(ws, {"type": "streams.list", "id": "l"})
        assert [s["id"] for s in listed["streams"]] == ["cam"]
        removed = await request(ws, {"type": "streams.remove", "id": "r", "stream": "cam"})
        assert removed["type"] == "stream.removed"
        assert (await request(ws, {"type": "streams.list", "id": "l2"}))["streams"] == []


async def test_errors_keep_the_connection_open(tmp_path: Path) -> None:
    async with running(tmp_path, max_message_bytes=64 * 1024) as (_svc, url), client(url) as ws:
        await ws.send("{not json")
        err = await wait_for(ws, lambda e: e["type"] == "error")
        assert err["code"] == "bad_message" and "JSON" in err["message"]

        err = await request(ws, {"type": "frobnicate", "id": "x"})
        assert (err["type"], err["code"]) == ("error", "bad_message") and "unknown message type" in err[
            "message"
        ]

        err = await request(ws, {"type": "query", "id": "u", "text": "a dog", "streams": ["ghost"]})
        assert (err["type"], err["code"]) == ("error", "unknown_stream")

        err = await request(ws, {"type": "query", "id": "o", "text": "x" * 5000})
        assert (err["type"], err["code"]) == ("error", "oversize_query")

        err = await request(ws, {"type": "query", "id": "big", "text": "y" * (100 * 1024)})
        assert (err["type"], err["code"]) == ("error", "bad_message") and "over" in err["message"]

        err = await request(
            ws,
            {
                "type": "streams.add",
                "id": "m",
                "stream": {"id": "f", "kind": "file", "path": str(tmp_path / "missing.mp4")},
            },
        )
        assert (err["type"], err["code"]) == ("error", "source")

        err = await request(ws, {"type": "cancel", "id": "c", "target": "nothing"})
        assert err["code"] == "bad_message"

        # Still serving: an answer to a valid request after all the errors.
        ok = await request(ws, {"type": "streams.list", "id": "fine"})
        assert ok == {"type": "streams", "id": "fine", "streams": []}
        assert "Traceback" not in json.dumps(err)


async def test_token_is_required_when_configured(tmp_path: Path) -> None:
    async with running(tmp_path, token="s3cret") as (_svc, url):
        async with client(url, hello=False) as ws:
            await ws.send(json.dumps({"type": "hello", "id": "h", "token": "wrong"}))
            err = json.loads(await ws.recv())
            assert (err["type"], err["code"]) == ("error", "unauthorized")
            await ws.wait_closed()
            assert ws.close_code == 1008
        async with client(url, token="s3cret") as ws:
            ok = await request(ws, {"type": "streams.list", "id": "l"})
            assert ok["type"] == "streams"


async def test_corrupt_file_marks_stream_failed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 1000)
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await request(
            ws, {"type": "streams.add", "id": "a", "stream": {"id": "bad", "kind": "file", "path": str(bad)}}
        )
        failed = await wait_for(ws, lambda e: e["type"] == "stream" and e["stream"]["status"] != "running")
        assert failed["stream"]["status"] == "failed"
        assert failed["stream"]["error"]["code"] == "corrupt_video"
        health = await request(ws, {"type": "streams.list", "id": "l"})
        assert health["streams"][0]["status"] == "failed"


async def test_a_port_in_use_is_a_config_error_and_the_service_keeps_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running(tmp_path) as (svc, url):
            cfg = ServiceConfig(host="127.0.0.1", port=port, index=tmp_path / "index")
            second = Server(svc.serving, cfg)
            with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
                await second.start()
            await second.close()  # idempotent after a failed start
            async with client(url) as ws:  # the first server still answers
                status = await request(ws, {"type": "streams.list", "id": "s"})
                assert status["type"] != "error", status
