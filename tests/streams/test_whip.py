"""WHIP ingest: a real aiortc publisher POSTs its offer to the aiohttp routes on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from streams.errors import BadOfferError, UnknownSourceError
from streams.media import Frame
from streams.whip import WhipIngest, WhipSource, whip_routes
from tests.videos import Scene, make_video

TOKEN = "s3cret"
RED = (220, 30, 30)


class Server:
    def __init__(self, ingest: WhipIngest, runner: web.AppRunner, port: int) -> None:
        self.ingest = ingest
        self.runner = runner
        self.base = f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    ingest = WhipIngest(fps=2.0)
    app = web.Application()
    app.add_routes(whip_routes(ingest, token=TOKEN))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(ingest, runner, port)
    finally:
        await ingest.close()
        await runner.cleanup()


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "pub.mp4", [Scene(20.0, RED, moving=True)], fps=10, size=(320, 240)).path


class Publisher:
    """A WHIP client: aiortc peer sending a real encoded file (MediaPlayer paces it in real time)."""

    def __init__(self, video: Path) -> None:
        self.player = MediaPlayer(str(video))
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None

    async def publish(self, http: aiohttp.ClientSession, url: str) -> None:
        assert self.player.video is not None
        self.pc.addTransceiver(self.player.video, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, data=self.pc.localDescription.sdp, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.content_type == "application/sdp"
            self.location = resp.headers["Location"]
            answer = await resp.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        if self.player.video is not None:
            self.player.video.stop()


async def take(src: WhipSource, n: int) -> list[Frame]:
    return [await asyncio.wait_for(anext(src), 30) for _ in range(n)]


async def test_published_frames_arrive_and_a_republish_continues_the_timeline(
    server: Server, video: Path
) -> None:
    src = server.ingest.add_stream("cam")
    async with aiohttp.ClientSession() as http:
        first = Publisher(video)
        try:
            await first.publish(http, f"{server.base}/whip/cam")
            assert first.location is not None and first.location.startswith("/whip/cam/")
            before = await take(src, 4)
            assert src.publishing
            async with http.delete(
                server.base + first.location, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200
            assert not src.publishing
            async with http.delete(
                server.base + first.location, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 404  # already gone
        finally:
            await first.close()
        second = Publisher(video)
        try:
            await second.publish(http, f"{server.base}/whip/cam")
            after: list[Frame] = []
            while len(after) < 3:  # frames queued before DELETE may still be waiting
                frame = await asyncio.wait_for(anext(src), 30)
                if src.reconnects == 1 and frame.t > before[-1].t + 0.1:
                    after.append(frame)
        finally:
            await second.close()
    assert src.reconnects == 1 and len(src.gaps) == 1
    times = [f.t for f in before] + [f.t for f in after]
    assert times[0] == 0.0 and all(b > a for a, b in itertools.pairwise(times))
    assert all(0.4 < b - a < 0.6 for a, b in itertools.pairwise(times[:4]))  # 2 fps of 10 fps RTP
    now = time.time()
    for f in before + after:
        assert f.stream == "cam" and f.wall is not None and abs(f.wall - now) < 60
        assert min(f.image.shape[:2]) == 224 and f.image.shape[1] > f.image.shape[0]
        mean = f.image.reshape(-1, 3).mean(axis=0)
        assert mean[0] > 120 and mean[1] < 100 and mean[2] < 100  # the red picture survived VP8/H.264
    assert src.frames_in > src.frames_out >= 7


async def test_http_errors(server: Server) -> None:
    server.ingest.add_stream("cam")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    offer = (await pc.createOffer()).sdp
    await pc.close()
    async with aiohttp.ClientSession() as http:
        cases = [
            ("/whip/cam", {"Content-Type": "text/plain", **auth}, offer, 415),
            ("/whip/cam", {"Content-Type": "application/sdp"}, offer, 401),
            ("/whip/nope", {"Content-Type": "application/sdp", **auth}, offer, 404),
            ("/whip/cam", {"Content-Type": "application/sdp", **auth}, "hello", 400),
            ("/whip/cam", {"Content-Type": "application/sdp", **auth}, "v=0\r\nm=audio 9 x\r\n", 400),
        ]
        for path, headers, body, status in cases:
            async with http.post(server.base + path, data=body, headers=headers) as resp:
                assert resp.status == status, (path, headers, body, await resp.text())
        async with http.delete(server.base + "/whip/cam/unknown", headers=auth) as resp:
            assert resp.status == 404
        async with http.patch(server.base + "/whip/cam/unknown", headers=auth) as resp:
            assert resp.status == 405
    assert server.ingest.source("cam").frames_in == 0


async def test_ingest_api_errors_and_close() -> None:
    ingest = WhipIngest()
    with pytest.raises(UnknownSourceError):
        ingest.source("x")
    with pytest.raises(UnknownSourceError):
        await ingest.delete("nope")
    with pytest.raises(BadOfferError):
        await ingest.handle_offer("x", "")
    src = ingest.add_stream("x")
    assert ingest.add_stream("x") is src and ingest.streams == ["x"]
    await ingest.close()
    await ingest.close()
    assert src.closed
    with pytest.raises(StopAsyncIteration):
        await anext(src)


async def test_auto_register_creates_the_stream_on_first_offer() -> None:
    ingest = WhipIngest(auto_register=True)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        answer, resource = await ingest.handle_offer("new", pc.localDescription.sdp)
        assert answer.startswith("v=0") and "m=video" in answer and len(resource) == 32
        assert "a=recvonly" in answer
        assert ingest.streams == ["new"]
        await ingest.delete(resource, stream="new")
    finally:
        await pc.close()
        await ingest.close()
    assert ingest.streams == ["new"] and ingest.source("new").closed
