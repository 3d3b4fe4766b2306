"""Audio: mono float32 16 kHz chunks of about a second from files, segment folders and WHIP."""

from __future__ import annotations

import asyncio
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack

from streams.audio import AudioChunker
from streams.file import FileSource, decode_media
from streams.media import AudioChunk, Frame
from streams.segments import SegmentFolderSource
from streams.whip import WhipIngest
from tests.streams.av_media import dominant_hz, make_video_with_tone
from tests.streams.servers import ffmpeg_available
from tests.videos import Scene, make_video


def stereo_frame(start: int, n: int, rate: int = 48_000, hz: float = 440.0) -> av.AudioFrame:
    k = np.arange(start, start + n)
    tone = (0.5 * np.sin(2 * np.pi * hz * k / rate)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
    frame.sample_rate = rate
    frame.pts = start
    frame.time_base = Fraction(1, rate)
    return frame


def check_chunks(chunks: list[AudioChunk], *, seconds: float, hz: float | None) -> None:
    assert chunks
    for c in chunks:
        assert c.sample_rate == 16_000 and c.samples.dtype == np.float32 and c.samples.ndim == 1
    assert all(c.duration == pytest.approx(1.0) for c in chunks[:-1])
    for a, b in itertools.pairwise(chunks):
        assert b.t == pytest.approx(a.t + a.duration, abs=0.05)  # contiguous
    total = sum(c.duration for c in chunks)
    assert total == pytest.approx(seconds, abs=0.15)
    if hz is not None:
        for c in chunks:
            if c.duration > 0.25:
                assert dominant_hz(c.samples, c.sample_rate) == pytest.approx(hz, abs=5.0)


def test_chunker_resamples_to_mono_16k_and_cuts_seconds() -> None:
    chunker = AudioChunker("a")
    out: list[AudioChunk] = []
    for i in range(0, 48_000 * 3, 960):  # 3 s in 20 ms frames, like WebRTC's Opus
        out += chunker.push(stereo_frame(i, 960), t=10.0 + i / 48_000, wall=1000.0 + i / 48_000)
    out += chunker.flush()
    check_chunks(out, seconds=3.0, hz=440.0)
    assert out[0].t == pytest.approx(10.0) and out[0].wall == pytest.approx(1000.0)
    assert out[1].wall == pytest.approx(1001.0)
    assert chunker.flush() == []


def test_chunker_never_spans_a_jump_in_time() -> None:
    chunker = AudioChunker("a")
    out = chunker.push(stereo_frame(0, 24_000), t=0.0)  # 0.5 s
    out += chunker.push(stereo_frame(0, 24_000), t=5.0)  # then a hole of 4.5 s
    out += chunker.flush()
    assert [round(c.t, 3) for c in out] == [0.0, 5.0]
    assert [c.duration for c in out] == pytest.approx([0.5, 0.5], abs=0.01)


def test_file_audio_is_off_by_default_and_on_when_asked(tmp_path: Path) -> None:
    video = make_video_with_tone(tmp_path / "tone.mp4", seconds=3.0)
    plain = list(decode_media(video, fps=2.0))
    assert plain and all(isinstance(i, Frame) for i in plain)
    both = list(decode_media(video, fps=2.0, audio=True))
    frames = [i for i in both if isinstance(i, Frame)]
    assert [f.t for f in frames] == [f.t for f in plain if isinstance(f, Frame)]  # pictures unchanged
    check_chunks([i for i in both if isinstance(i, AudioChunk)], seconds=3.0, hz=440.0)


async def test_file_source_hands_out_audio_and_counts_it(tmp_path: Path) -> None:
    video = make_video_with_tone(tmp_path / "tone.mp4", seconds=2.5, tone_hz=880.0)
    async with FileSource(video, fps=2.0, audio=True, queue_size=2) as src:
        items = [i async for i in src]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    check_chunks(chunks, seconds=2.5, hz=880.0)
    stats = src.stats()
    assert stats.audio_chunks == len(chunks) and stats.frames == len(items) - len(chunks)
    assert src.resume_token() == {"seconds": max(i.t for i in items if isinstance(i, Frame))}


async def test_file_without_sound_yields_no_audio(tmp_path: Path) -> None:
    video = make_video(tmp_path / "mute.mp4", [(2.0, (1, 2, 3))], fps=10).path
    async with FileSource(video, fps=2.0, audio=True) as src:
        items = [i async for i in src]
    assert items and all(isinstance(i, Frame) for i in items)


@pytest.mark.skipif((why := ffmpeg_available()) is not None, reason=why or "")
async def test_segment_folder_audio_is_continuous_across_segments(tmp_path: Path) -> None:
    video = make_video_with_tone(tmp_path / "tone.mp4", seconds=6.0)
    rec = tmp_path / "rec"
    rec.mkdir()
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-c", "copy", "-f", "segment"]
    cmd += ["-segment_time", "2", "-reset_timestamps", "1", str(rec / "seg%03d.mkv")]
    proc = await asyncio.create_subprocess_exec(*cmd)
    assert await proc.wait() == 0
    assert len(list(rec.iterdir())) == 3
    async with SegmentFolderSource(rec, stream="s", follow=False, audio=True) as src:
        items = [i async for i in src]
    frames = [i for i in items if isinstance(i, Frame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert [f.t for f in frames] == pytest.approx([0.5 * k for k in range(12)])
    check_chunks(chunks, seconds=6.0, hz=440.0)
    assert chunks[0].t == pytest.approx(0.0, abs=0.05)
    assert src.stats().audio_chunks == len(chunks)


async def test_whip_publisher_audio_track_becomes_chunks(tmp_path: Path) -> None:
    video = make_video(tmp_path / "pub.mp4", [Scene(20.0, (200, 30, 30), moving=True)], fps=10).path
    ingest = WhipIngest(fps=2.0)
    src = ingest.add_stream("cam", audio=True)
    player = MediaPlayer(str(video))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        assert player.video is not None
        pc.addTransceiver(player.video, direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")  # aiortc's silence, 20 ms frames
        await pc.setLocalDescription(await pc.createOffer())
        answer, _ = await ingest.handle_offer("cam", pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        chunks: list[AudioChunk] = []
        frames: list[Frame] = []
        async with asyncio.timeout(60):
            async for item in src:
                (chunks if isinstance(item, AudioChunk) else frames).append(item)  # type: ignore[arg-type]
                if len(chunks) >= 2 and frames:
                    break
        assert all(c.sample_rate == 16_000 and c.duration == pytest.approx(1.0) for c in chunks)
        assert np.abs(chunks[0].samples).max() < 1e-3  # silence stays silence
        assert chunks[1].t == pytest.approx(chunks[0].t + 1.0, abs=0.1)
        assert src.stats().audio_chunks == len(chunks)
    finally:
        await pc.close()
        if player.video is not None:
            player.video.stop()
        await ingest.close()
