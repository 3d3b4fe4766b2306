"""File decoding: timestamps from pts, sampling, keyframes, damage, async delivery."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path

import av
import numpy as np
import pytest

import streams.decode as decode_module
from streams.errors import CorruptMediaError, SourceUnavailableError
from streams.file import FileSource, FileSpec, decode_frames, decode_media, probe
from streams.media import Frame
from streams.registry import OpenContext, open_source
from streams.sampler import DecoderThreads
from tests.videos import VIDEOS, Scene, SceneLike, make_video, photos, random_bytes_file, truncate_copy

SCENES: list[SceneLike] = [(2.0, (220, 30, 30)), Scene(2.0, (30, 30, 220), moving=True), (1.0, photos(1)[0])]


def _times(path: Path, **kw: object) -> list[float]:
    return [f.t for f in decode_frames(path, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("plain.mp4", {}),
        ("late_start.mkv", {"start_pts_seconds": 10.0}),
        ("late_start.ts", {"start_pts_seconds": 5.0}),
        ("bframes.mp4", {"bframes": True, "start_pts_seconds": 3.0}),
        ("vfr.mp4", {"vfr": True}),
        ("vfr.mkv", {"vfr": True, "codec": "mpeg4"}),
        ("mpeg4.avi", {"codec": "mpeg4"}),
    ],
)
def test_timestamps_follow_pts(tmp_path: Path, name: str, kw: dict[str, object]) -> None:
    spec = make_video(tmp_path / name, SCENES, fps=10, **kw)  # type: ignore[arg-type]
    got = _times(spec.path, fps=1000.0)  # keep every frame
    assert len(got) == len(spec.times)
    # Matroska stores milliseconds; everything else is exact.
    np.testing.assert_allclose(got, spec.times, atol=1.5e-3)
    if kw.get("vfr"):
        index_over_fps = np.arange(len(got)) / 10
        assert np.max(np.abs(np.asarray(got) - index_over_fps)) > 0.1  # really irregular


def test_sampling_rate_and_size(tmp_path: Path) -> None:
    spec = make_video(
        tmp_path / "long.mp4", [(6.0, (0, 200, 0)), (4.0, (200, 200, 0))], fps=25, size=(320, 240)
    )
    frames = list(decode_frames(spec.path, fps=2.0, short_side=96))
    assert abs(len(frames) - 10 * 2) <= 1
    # One frame per 0.5 s grid instant: the first source frame at or after it.
    grid = np.arange(len(frames)) * 0.5
    offsets = np.asarray([f.t for f in frames]) - grid
    assert np.all(offsets >= -1e-6) and np.all(offsets < 0.04 + 1e-6)
    assert all(f.image.shape == (96, 128, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.stream == "file" for f in frames)
    # Colours survive conversion: first scene green, second yellow.
    assert frames[0].image[..., 1].mean() > 150 and frames[0].image[..., 0].mean() < 60
    assert frames[-1].image[..., 0].mean() > 150


def test_start_end_window(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "w.mp4", [(3.0, (10, 10, 10)), (3.0, (240, 240, 240))], fps=10)
    got = _times(spec.path, fps=1000.0, start=2.0, end=4.05)
    np.testing.assert_allclose(got, [t for t in spec.times if 2.0 <= t < 4.05], atol=1e-6)


def test_keyframes_only_yields_keyframes(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "k.mp4", SCENES, fps=10, gop=7)
    every = list(decode_frames(spec.path, fps=1000.0))
    key_times = [f.t for f in every if f.keyframe]
    keys = list(decode_frames(spec.path, fps=1000.0, keyframes_only=True))
    assert keys and all(f.keyframe for f in keys)
    assert [f.t for f in keys] == pytest.approx(key_times)
    assert len(keys) < len(every) / 3


def test_probe(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "p.mkv", SCENES, fps=10, size=(160, 120), start_pts_seconds=7.0)
    info = probe(spec.path)
    assert info.duration == pytest.approx(5.0, abs=0.15)
    assert (info.width, info.height, info.codec) == (160, 120, "h264")
    assert info.fps == pytest.approx(10.0)


def test_random_bytes_and_missing_file(tmp_path: Path) -> None:
    bad = random_bytes_file(tmp_path / "noise.mp4")
    with pytest.raises(CorruptMediaError):
        probe(bad)
    with pytest.raises(CorruptMediaError):
        list(decode_frames(bad))
    with pytest.raises(SourceUnavailableError) as info:
        probe(tmp_path / "absent.mp4")
    assert not isinstance(info.value, CorruptMediaError)


def test_audio_only_file_has_no_video(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        audio = container.add_stream("pcm_s16le", rate=8000)
        samples = (1000 * np.sin(np.arange(8000) / 10)).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    with pytest.raises(CorruptMediaError, match="no video stream"):
        probe(path)


def test_truncated_mp4_fails_at_open(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "t.mp4", SCENES, fps=10)
    cut = truncate_copy(spec.path, tmp_path / "cut.mp4", 0.6)  # index (moov) is at the end: lost
    with pytest.raises(CorruptMediaError, match=r"cut\.mp4"):
        list(decode_frames(cut))


def _cut(tmp_path: Path, suffix: str) -> tuple[list[float], Path]:
    scenes: list[SceneLike] = [(3.0, (200, 0, 0)), (3.0, (0, 200, 0)), (3.0, (0, 0, 200))]
    spec = make_video(tmp_path / f"t{suffix}", scenes, fps=10)
    return spec.times, truncate_copy(spec.path, tmp_path / f"cut{suffix}", 0.45)


def test_truncated_mkv_yields_good_frames_then_raises(tmp_path: Path) -> None:
    times, cut = _cut(tmp_path, ".mkv")
    got = []
    with pytest.raises(CorruptMediaError, match="truncated"):
        for frame in decode_frames(cut, fps=1000.0):
            got.append(frame)
    assert 10 <= len(got) < len(times)
    np.testing.assert_allclose([f.t for f in got], times[: len(got)], atol=1.5e-3)
    assert got[0].image[..., 0].mean() > 150  # the good frames are real pictures


def test_truncated_ts_ends_quietly_with_good_frames(tmp_path: Path) -> None:
    """MPEG-TS declares no duration (FFmpeg reads it off the file's tail): a cut
    stream looks like a shorter one, so it just ends."""
    times, cut = _cut(tmp_path, ".ts")
    got = list(decode_frames(cut, fps=1000.0))
    assert 10 <= len(got) < len(times)
    np.testing.assert_allclose([f.t for f in got], times[: len(got)], atol=1e-4)
    assert probe(cut).duration < 0.6 * 9.0


def test_garbage_mid_file_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scenes: list[SceneLike] = [(3.0, (200, 0, 0)), Scene(3.0, photos(1)[0], moving=True), (3.0, (0, 0, 200))]
    spec = make_video(tmp_path / "m.mp4", scenes, fps=10)
    data = bytearray(spec.path.read_bytes())
    lo, hi = int(len(data) * 0.3), int(len(data) * 0.6)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streams.file"):
        got = list(decode_frames(damaged, fps=1000.0))
    assert 0.5 * len(spec.times) < len(got) < len(spec.times)
    assert got[0].t == 0.0 and got[-1].t == pytest.approx(spec.times[-1])  # both sides of the damage
    assert any(re.search(r"\d+ damaged packets skipped", r.getMessage()) for r in caplog.records)
    assert got[-1].image[..., 2].mean() > 150  # the blue scene after the damage is intact


async def test_file_source_counts_damage_and_a_failed_file_is_not_complete(tmp_path: Path) -> None:
    scenes: list[SceneLike] = [(3.0, (200, 0, 0)), Scene(3.0, photos(1)[0], moving=True), (3.0, (0, 0, 200))]
    spec = make_video(tmp_path / "m.mp4", scenes, fps=10)
    data = bytearray(spec.path.read_bytes())
    lo, hi = int(len(data) * 0.3), int(len(data) * 0.6)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    async with FileSource(damaged, fps=1000.0) as src:
        got = [item async for item in src]
    stats = src.stats()
    assert 0 < len(got) < len(spec.times) and stats.frames == len(got)
    assert stats.state == "done" and stats.last_error is None  # it ended, but not intact:
    assert stats.damaged_packets > 0 and stats.to_dict()["damaged_packets"] == stats.damaged_packets

    async with FileSource(spec.path, fps=2.0) as intact:
        assert [item async for item in intact]
    assert intact.stats().damaged_packets == 0 and intact.stats().progress == 1.0

    junk = FileSource(random_bytes_file(tmp_path / "junk.mp4"))
    with pytest.raises(CorruptMediaError):
        await anext(junk)
    failed = junk.stats()
    assert failed.state == "done" and failed.last_error and failed.frames == 0
    assert failed.progress == 0.0
    await junk.close()


def test_megamind_bugy_decodes_despite_its_name() -> None:
    """OpenCV's 'bugy' clip is a lossy re-encode, not a broken file: it decodes fully."""
    bugy = VIDEOS / "Megamind_bugy.avi"
    info = probe(bugy)
    assert (info.codec, info.frames, info.width, info.height) == ("mpeg4", 270, 720, 528)
    frames = list(decode_frames(bugy, fps=1000.0, short_side=64))
    assert len(frames) == 270
    assert frames[-1].t == pytest.approx(269 / 30)
    original = list(decode_frames(VIDEOS / "Megamind.avi", fps=1000.0, short_side=64))
    assert len(original) == 270
    # Same pictures up to compression artefacts.
    diff = [
        np.abs(a.image.astype(int) - b.image.astype(int)).mean()
        for a, b in zip(original, frames, strict=True)
    ]
    assert 0 < float(np.median(diff)) < 8


def test_bigbuckbunny_720p() -> None:
    frames = list(decode_frames(VIDEOS / "bigbuckbunny.mp4", fps=2.0))
    assert abs(len(frames) - 11) <= 1
    assert frames[0].image.shape == (224, 398, 3)
    keys = list(decode_frames(VIDEOS / "bigbuckbunny.mp4", fps=2.0, keyframes_only=True))
    assert len(keys) == 1 and keys[0].keyframe and keys[0].t == 0.0


async def test_file_source_delivers_everything_with_backpressure(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "s.mp4", SCENES, fps=10)
    expected = _times(spec.path, fps=5.0)
    got: list[float] = []
    async with FileSource(spec.path, fps=5.0, queue_size=2, stream="cam1") as src:
        assert src.progress < 1.0
        async for frame in src:
            assert frame.stream == "cam1"
            assert len(src._bridge) <= 2  # bounded: the decoder waited for us
            got.append(frame.t)
            await asyncio.sleep(0.005)  # a slow consumer
        assert src.progress == 1.0
        assert src.frames_out == len(expected)
        with pytest.raises(StopAsyncIteration):
            await src.__anext__()  # stays exhausted
    assert got == expected


async def test_file_source_close_mid_stream(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "c.mp4", [(20.0, (90, 90, 90))], fps=25)
    src = FileSource(spec.path, fps=25.0, queue_size=1)
    first = [await src.__anext__(), await src.__anext__()]
    assert [f.t for f in first] == pytest.approx([0.0, 0.04])
    thread = src._thread
    assert thread is not None and thread.is_alive()  # blocked on the full queue
    await src.close()
    assert not thread.is_alive()
    assert 0 < src.progress < 1
    await src.close()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await src.__anext__()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode-") and t is thread]


async def test_file_source_reraises_after_good_frames(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "t.mkv", [(3.0, (200, 0, 0)), (3.0, (0, 200, 0))], fps=10)
    cut = truncate_copy(spec.path, tmp_path / "cut.mkv", 0.4)
    got = []
    with pytest.raises(CorruptMediaError):
        async with FileSource(cut, fps=4.0) as src:
            async for frame in src:
                got.append(frame)
    assert len(got) >= 3
    assert src._thread is None


async def test_file_source_realtime_keeps_order(tmp_path: Path) -> None:
    spec = make_video(tmp_path / "r.mp4", [(0.6, (0, 0, 0)), (0.6, (255, 255, 255))], fps=10)
    async with FileSource(spec.path, fps=5.0, realtime=True) as src:
        got = [f.t async for f in src]
    assert got == _times(spec.path, fps=5.0)
    assert got == sorted(got)


def test_slice_threads_decode_the_same_pictures() -> None:
    """SLICE threading (paced replays) changes memory and latency, never the pictures."""
    path = VIDEOS / "bigbuckbunny.mp4"
    auto = [m for m in decode_media(path, fps=2.0) if isinstance(m, Frame)]
    sliced = [m for m in decode_media(path, fps=2.0, threads="SLICE") if isinstance(m, Frame)]
    assert [f.t for f in sliced] == [f.t for f in auto] and len(auto) >= 10
    assert all(np.array_equal(a.image, b.image) for a, b in zip(auto, sliced, strict=True))


async def test_a_paced_replay_decodes_with_slice_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A realtime file stands in for a camera: one frame in flight, like RTSP; a file pass keeps AUTO."""
    seen: list[str] = []
    real = decode_module.tune_decoder

    def spy(
        vstream: av.video.stream.VideoStream, *, threads: DecoderThreads = "AUTO", count: int = 0
    ) -> None:
        seen.append(threads)
        real(vstream, threads=threads, count=count)

    monkeypatch.setattr(decode_module, "tune_decoder", spy)
    spec = make_video(tmp_path / "p.mp4", [(1.0, (90, 90, 90))], fps=10)
    used = {}
    for realtime in (True, False):
        seen.clear()
        source = open_source(
            FileSpec(id="cam", kind="file", path=str(spec.path), realtime=realtime), OpenContext()
        )
        try:
            await source.__anext__()
        finally:
            await source.close()
        used[realtime] = set(seen)  # the probe at open decodes too (AUTO)
    assert "SLICE" in used[True] and used[False] == {"AUTO"}
