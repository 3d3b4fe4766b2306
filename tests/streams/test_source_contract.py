"""Every kind honours the Source contract: stats(), resume_token(), idempotent close()."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from streams.file import FileSource
from streams.media import Frame
from streams.registry import HUB_WHIP, OpenContext, open_source, parse_spec
from streams.rtsp import RTSPSource
from streams.segments import SegmentFolderSource
from streams.source import Source
from streams.whip import WhipIngest
from tests.streams.servers import ffmpeg_available, free_port
from tests.videos import make_video

SCENES = [(2.0, (200, 40, 40)), (2.0, (40, 200, 40)), (2.0, (40, 40, 200))]


async def frames_of(src: Source) -> list[Frame]:
    async with src:
        return [item async for item in src if isinstance(item, Frame)]


async def test_file_stats_and_resume_token_continue_without_loss_or_repeat(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", SCENES, fps=10).path
    full = [f.t for f in await frames_of(FileSource(video, fps=2.0))]

    first = FileSource(video, fps=2.0, queue_size=2)
    assert first.stats().state == "connecting" and first.resume_token() is None
    async with first:
        part = [(await anext(first)).t for _ in range(5)]
        stats = first.stats()
        assert stats.state == "streaming" and stats.frames == 5 and stats.drops == 0
        assert stats.progress is not None and 0.0 < stats.progress < 1.0
        assert stats.damaged_packets == 0 and "progress" not in stats.extra
    token = first.resume_token()
    assert first.stats().state == "closed"
    assert token == {"seconds": part[-1]} and json.loads(json.dumps(token)) == token

    second = open_source(
        parse_spec({"id": "v", "kind": "file", "path": str(video)}), OpenContext(fps=2.0, resume_token=token)
    )
    rest = [f.t for f in await frames_of(second)]
    assert part + rest == pytest.approx(full)
    done = second.stats()
    assert done.state == "done" and done.frames == len(rest)  # closed after the end: still done
    assert done.progress == 1.0 and done.to_dict()["progress"] == 1.0


async def test_file_stats_report_the_error_after_the_good_frames(tmp_path: Path) -> None:
    src = FileSource(tmp_path / "missing.mp4")
    with pytest.raises(Exception, match="no such file"):
        await anext(src)
    assert src.stats().state == "done" and "no such file" in (src.stats().last_error or "")
    assert src.stats().progress == 0.0  # failed before any frame: not reported as complete
    await src.close()
    await src.close()


@pytest.mark.skipif((why := ffmpeg_available()) is not None, reason=why or "")
async def test_segments_stats_and_resume_token(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.mp4", SCENES, fps=10).path
    rec = tmp_path / "rec"
    rec.mkdir()
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-c", "copy", "-f", "segment"]
    cmd += ["-segment_time", "2", "-reset_timestamps", "1", str(rec / "seg%03d.mp4")]
    proc = await asyncio.create_subprocess_exec(*cmd)
    assert await proc.wait() == 0
    full = [f.t for f in await frames_of(SegmentFolderSource(rec, stream="s", follow=False))]

    first = SegmentFolderSource(rec, stream="s", follow=False)
    async with first:
        part = [(await anext(first)).t for _ in range(6)]
        stats = first.stats()
        assert stats.frames == 6 and stats.drops == 0 and stats.reconnects == 0
        assert stats.extra["segments_corrupt"] == 0 and stats.damaged_packets == 0
        assert stats.progress is None  # a followed folder has no end
    token = first.resume_token()
    assert token is not None and token["done"] == "seg000.mp4" and token["last_t"] == part[-1]
    assert json.loads(json.dumps(token)) == token

    spec = parse_spec({"id": "s", "kind": "segments", "path": str(rec)})
    second = open_source(spec, OpenContext(fps=2.0, resume_token=token))
    assert isinstance(second, SegmentFolderSource)
    second.follow = False
    async with second:
        rest = [item.t async for item in second if isinstance(item, Frame)]
        assert second.stats().state == "done"
        assert second.stats().extra["segments_done"] == 2
    assert part + rest == pytest.approx(full)
    assert second.stats().state == "done" and second.state == "closed"


async def test_rtsp_stats_while_the_server_is_unreachable() -> None:
    src = RTSPSource(f"rtsp://127.0.0.1:{free_port()}/x", stream="r", backoff_initial=0.05, backoff_max=0.1)
    assert src.stats().state == "connecting" and src.resume_token() is None
    src.start()
    for _ in range(400):
        if src.stats().last_error is not None and src.stats().extra["failures"] >= 1:
            break
        await asyncio.sleep(0.02)
    stats = src.stats()
    assert stats.state in ("connecting", "backoff") and stats.progress is None
    assert "open failed" in (stats.last_error or "") and stats.frames == 0
    await src.close()
    await src.close()
    assert src.stats().state == "closed" and src.resume_token() is None


async def test_whip_stats_and_close_ends_the_publisher_side() -> None:
    ingest = WhipIngest()
    try:
        src = open_source(parse_spec({"id": "w", "kind": "whip"}), OpenContext(hubs={HUB_WHIP: ingest}))
        stats = src.stats()
        assert stats.state == "connecting" and stats.extra["publishing"] is False
        assert src.resume_token() is None
        await src.close()
        await src.close()
        assert src.stats().state == "closed"
        with pytest.raises(StopAsyncIteration):
            await anext(src)
        again = ingest.add_stream("w")
        assert again is not src and again.stats().state == "connecting"  # a re-added stream starts fresh
    finally:
        await ingest.close()
