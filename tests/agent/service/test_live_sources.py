"""The service with real live sources: an RTSP server, a WHIP publisher, an ffmpeg segmenter.

Everything goes through the websocket API (``streams.add``, ``streams.list``,
``query``) and ``/metrics`` of a real service on a loopback port. The peers
are real: GStreamer's RTSP server (killed and restarted to force a
reconnect), an aiortc peer publishing an encoded file through WHIP on the
service's own port, and ``ffmpeg -f segment`` filling a folder in real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from agent.index.stream_state import StreamState
from tests.agent.service.helpers import (
    BACKGROUND,
    NEEDLE,
    add,
    client,
    metric_samples,
    needle_b64,
    needle_video,
    refined,
    request,
    running,
    status,
    until,
)
from tests.streams.av_media import make_video_with_tone
from tests.streams.servers import RtspServer, ffmpeg_available, gst_rtsp_available
from tests.videos import VIDEOS, Scene, make_video

needs_gst = pytest.mark.skipif(
    (why_gst := gst_rtsp_available()) is not None, reason=why_gst or "GStreamer RTSP server unavailable"
)
needs_ffmpeg = pytest.mark.skipif(
    (why_ff := ffmpeg_available()) is not None, reason=why_ff or "ffmpeg unavailable"
)


def wall_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@needs_gst
async def test_rtsp_stream_ingests_reconnects_after_server_restart_and_spares_others(
    tmp_path: Path,
) -> None:
    other_video = make_video(tmp_path / "other.mp4", [Scene(3.0, BACKGROUND[0], True)], fps=10).path
    server = RtspServer(VIDEOS / "vtest.avi")
    await asyncio.to_thread(server.start)  # blocks on the server's READY line: not on the loop
    try:
        async with running(tmp_path) as (_svc, url), client(url) as ws:
            # A realtime looping replay runs beside the camera, as another live stream would.
            await add(
                ws, {"id": "other", "kind": "file", "path": str(other_video), "realtime": True, "loop": True}
            )
            await add(ws, {"id": "cam", "kind": "rtsp", "url": server.url})
            cam = await until(ws, "cam", lambda s: s["frames"] >= 6)
            assert cam["kind"] == "rtsp" and cam["reconnects"] == 0 and cam["error"] is None

            answer = await refined(
                ws, {"type": "query", "id": "q", "text": "people walking", "streams": ["cam"]}
            )
            assert answer["type"] == "moments.update" and answer["moments"], answer
            now = time.time()
            for m in answer["moments"]:
                assert m["stream"] == "cam" and m["wall_start"] is not None and m["wall_end"] is not None
                # Wall-clock times of a live camera: this run's, and ordered like the stream times.
                assert abs(wall_seconds(m["wall_start"]) - now) < 120
                assert wall_seconds(m["wall_end"]) >= wall_seconds(m["wall_start"])
            assert answer["streams"]["cam"]["coverage"]["in_memory"]

            before_kill = await status(ws, "cam")
            other_before = await status(ws, "other")
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)  # same port: the camera comes back
            cam = await until(
                ws, "cam", lambda s: s["reconnects"] >= 1 and s["frames"] >= before_kill["frames"] + 4
            )
            assert cam["status"] == "running" and cam["error"] is None
            assert cam["last_time"] > before_kill["last_time"]  # one timeline across the reconnect

            other = await status(ws, "other")
            assert other["status"] == "running" and other["reconnects"] == 0
            assert other["frames"] > other_before["frames"]  # undisturbed by the camera's outage

            async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
                text = (await http.get("/metrics")).text
            samples = metric_samples(text)
            assert samples["vmr_stream_reconnects_total", (("stream", "cam"),)] >= 1, text
            assert samples["vmr_stream_reconnects_total", (("stream", "other"),)] == 0
            assert samples["vmr_stream_up", (("stream", "cam"),)] == 1
    finally:
        await asyncio.to_thread(server.kill)


class Publisher:
    """A WHIP client: an aiortc peer sending a real encoded file (MediaPlayer paces it in real time)."""

    def __init__(self, video: Path) -> None:
        self.player = MediaPlayer(str(video))
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def publish(self, http: aiohttp.ClientSession, url: str) -> str:
        """POST the offer; returns the session resource (``Location``)."""
        assert self.player.video is not None
        self.pc.addTransceiver(self.player.video, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(
            url, data=self.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
            answer = await resp.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return location

    async def close(self) -> None:
        await self.pc.close()
        if self.player.video is not None:
            self.player.video.stop()


@pytest.fixture
async def publisher(tmp_path: Path) -> AsyncIterator[Publisher]:
    video = make_video(tmp_path / "pub.mp4", [Scene(20.0, NEEDLE, True)], fps=10, size=(320, 240)).path
    pub = Publisher(video)
    try:
        yield pub
    finally:
        await pub.close()


async def test_whip_publisher_on_the_service_port_reaches_memory(
    tmp_path: Path, publisher: Publisher
) -> None:
    background = make_video(tmp_path / "bg.mp4", [Scene(4.0, BACKGROUND[0], True)], fps=10).path
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        await add(ws, {"id": "bg", "kind": "file", "path": str(background)})
        await add(ws, {"id": "pub", "kind": "whip"})
        base = url.replace("ws://", "http://")
        async with aiohttp.ClientSession() as http:
            location = await publisher.publish(http, f"{base}/whip/pub")
            assert location.startswith("/whip/pub/")
            pub = await until(ws, "pub", lambda s: s["tokens"] >= 1 and s["frames"] >= 8)
            assert pub["kind"] == "whip" and pub["error"] is None
            await until(ws, "bg", lambda s: s["status"] == "done" or s["frames"] >= 8, limit=30)

            answer = await refined(ws, {"type": "query", "id": "q", "image": needle_b64(), "top_k": 3})
            assert answer["type"] == "moments.update", answer
            best = answer["moments"][0]
            # The published picture is the needle, the file stream is not: the WHIP footage wins.
            assert best["stream"] == "pub", answer
            assert best["wall_start"] is not None  # arrival wall-clock of a live peer
            assert answer["streams"]["pub"]["coverage"]["in_memory"]
            async with http.delete(base + location) as resp:
                assert resp.status == 200
        removed = await request(ws, {"type": "streams.remove", "id": "r", "stream": "pub"})
        assert removed["type"] == "stream.removed"


@needs_ffmpeg
async def test_segment_folder_filled_by_a_live_ffmpeg_segmenter(tmp_path: Path) -> None:
    video = needle_video(tmp_path / "rec.mp4", before=2.0, needle=2.0, after=2.0)  # needle at [2, 4)
    folder = tmp_path / "segments"
    folder.mkdir()
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-re", "-i", str(video), "-c", "copy"]
    cmd += ["-f", "segment", "-segment_time", "2", "-reset_timestamps", "1", str(folder / "seg%03d.mp4")]
    async with running(tmp_path) as (_svc, url), client(url) as ws:
        proc = await asyncio.create_subprocess_exec(*cmd)
        try:
            await add(ws, {"id": "rec", "kind": "segments", "path": str(folder)})
            # Ingest starts while the recorder is still writing: the folder is followed, not read once.
            early = await until(ws, "rec", lambda s: s["frames"] > 0, limit=30)
            assert proc.returncode is None, "ffmpeg finished before the service read anything"
            assert early["status"] == "running"
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # The last segment counts as complete once it has settled; then all 6 s are in.
        rec = await until(ws, "rec", lambda s: (s["last_time"] or 0.0) >= 5.4, limit=30)
        assert rec["status"] == "running" and rec["dropped"] == 0 and rec["error"] is None
        assert rec["frames"] >= 11  # 6 s at 2 fps, nothing skipped at segment boundaries

        answer = await refined(ws, {"type": "query", "id": "q", "image": needle_b64(), "streams": ["rec"]})
        best = answer["moments"][0]
        assert best["stream"] == "rec" and best["start"] < 4.0 and best["end"] > 2.0, best


async def test_file_with_audio_is_ingested_and_its_sound_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = make_video_with_tone(tmp_path / "tone.mp4", seconds=4.0)
    heard: list[tuple[str, float]] = []  # what reached the stream's channels, in stream time
    real_push_audio = StreamState.push_audio

    def push_audio(state: StreamState, chunk: Any) -> Any:
        heard.append((state.stream, chunk.t))
        return real_push_audio(state, chunk)

    monkeypatch.setattr(StreamState, "push_audio", push_audio)
    async with running(tmp_path) as (svc, url), client(url) as ws:
        await add(ws, {"id": "loud", "kind": "file", "path": str(video), "audio": True})
        await add(ws, {"id": "mute", "kind": "file", "path": str(video)})
        loud = await until(ws, "loud", lambda s: s["status"] not in ("starting", "running"), limit=60)
        mute = await until(ws, "mute", lambda s: s["status"] not in ("starting", "running"), limit=60)
        assert loud["status"] == mute["status"] == "done"
        assert loud["frames"] == mute["frames"] == 8  # the visual path is the same with sound on
        assert svc.runners["loud"].audio_chunks == 4  # 4 s of sound in ~1 s chunks
        assert svc.runners["loud"].audio_seconds == pytest.approx(4.0, abs=0.1)
        assert svc.runners["mute"].audio_chunks == 0  # off by default
        times = [t for name, t in heard if name == "loud"]
        assert len(times) == 4 and not [1 for name, _ in heard if name == "mute"]
        assert times == sorted(times) and times[0] == pytest.approx(0.0, abs=0.05)
