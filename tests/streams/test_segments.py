"""SegmentFolderSource following folders filled by a real ffmpeg segmenter."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streams.errors import SourceUnavailableError
from streams.media import Frame
from streams.segments import SegmentFolderSource, SegmentPosition, natural_key
from tests.streams.servers import ffmpeg_available
from tests.videos import VideoSpec, make_video, random_bytes_file, truncate_copy

pytestmark = pytest.mark.skipif((why := ffmpeg_available()) is not None, reason=why or "")

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
SCENES = [(2.5, COLOURS[0]), (2.0, COLOURS[1]), (1.5, COLOURS[2])]  # 6 s, cuts at 2.5 and 4.5


def source_video(tmp_path: Path) -> VideoSpec:
    return make_video(tmp_path / "input.mp4", SCENES, fps=10, size=(160, 120))


def segment_cmd(src: Path, out: Path, pattern: str, *, reset: bool, realtime: bool) -> list[str]:
    """ffmpeg's segment muxer cutting ``src`` (stream copy, keyframe every second) into 2 s files."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin"]
    cmd += ["-re"] if realtime else []
    cmd += ["-i", str(src), "-c", "copy", "-f", "segment", "-segment_time", "2"]
    cmd += ["-reset_timestamps", "1" if reset else "0", str(out / pattern)]
    return cmd


async def run(cmd: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd)
    assert await proc.wait() == 0


def scene_at(t: float) -> int:
    return 0 if t < 2.5 else 1 if t < 4.5 else 2


def check_cover_and_colours(frames: list[Frame], duration: float = 6.0) -> None:
    """Times continuous at the 2 fps grid over the whole input, each showing the right scene."""
    times = np.asarray([f.t for f in frames])
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(times) > 0.45) and np.all(np.diff(times) < 0.55)
    assert times[-1] >= duration - 0.5 - 1e-6
    for f in frames:
        mean = f.image.reshape(-1, 3).mean(axis=0)
        want = scene_at(f.t)
        assert int(np.argmax(mean)) == int(np.argmax(COLOURS[want])), (f.t, mean)


async def read_all(src: SegmentFolderSource) -> list[Frame]:
    async with src:
        return [f async for f in src]


async def test_follows_a_live_segmenter_and_never_reads_the_open_segment(tmp_path: Path) -> None:
    spec = source_video(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    proc = await asyncio.create_subprocess_exec(
        *segment_cmd(spec.path, out, "out%03d.mp4", reset=True, realtime=True)
    )
    src = SegmentFolderSource(out, stream="rec", fps=2.0, poll_interval=0.1, settle_seconds=1.0)
    frames: list[Frame] = []
    early: list[str] = []
    try:
        async with src:
            async for frame in src:
                # The segment being read must be finished: a newer one exists or ffmpeg is done.
                names = sorted(p.name for p in out.glob("*.mp4"))
                if proc.returncode is None and names[-1] == src.segment:
                    early.append(f"{src.segment} at t={frame.t}")
                frames.append(frame)
                if frame.t >= 5.5 - 1e-6:
                    break
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert early == []
    assert src.segments_corrupt == 0
    assert src.segments_done >= 2
    check_cover_and_colours(frames)
    assert all(f.stream == "rec" and f.wall is not None for f in frames)
    assert src.dropped == 0 and src.frames_out == len(frames)


@pytest.mark.parametrize(
    ("pattern", "reset"),
    [("out%03d.mp4", False), ("out%03d.ts", False), ("out%03d.mkv", True), ("seg%d.ts", True)],
)
async def test_time_is_continuous_whether_the_recorder_resets_timestamps_or_not(
    tmp_path: Path, pattern: str, reset: bool
) -> None:
    spec = source_video(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    await run(segment_cmd(spec.path, out, pattern, reset=reset, realtime=False))
    assert len(list(out.iterdir())) == 3
    src = SegmentFolderSource(out, stream="rec", follow=False)
    frames = await read_all(src)
    check_cover_and_colours(frames)
    assert src.segments_done == 3 and src.state == "closed"
    assert src.position.next_t == pytest.approx(6.0, abs=0.06)


async def test_corrupt_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    spec = source_video(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    await run(segment_cmd(spec.path, out, "out%03d.mp4", reset=True, realtime=False))
    random_bytes_file(out / "out001.mp4")  # the middle segment is destroyed
    src = SegmentFolderSource(out, stream="rec", follow=False)
    frames = await read_all(src)
    assert src.segments_corrupt == 1 and src.segments_done == 2
    times = np.asarray([f.t for f in frames])
    assert np.all(np.diff(times) > 0.45) and np.all(np.diff(times) < 0.55)  # appended, no hole
    assert len(frames) == 8  # two 2 s segments at 2 fps


async def test_unfinished_newest_segment_waits_then_counts_as_corrupt_once_superseded(
    tmp_path: Path,
) -> None:
    spec = source_video(tmp_path)
    made = tmp_path / "made"
    made.mkdir()
    await run(segment_cmd(spec.path, made, "out%03d.mp4", reset=True, realtime=False))
    out = tmp_path / "rec"
    out.mkdir()
    shutil.copy(made / "out000.mp4", out / "out000.mp4")
    truncate_copy(made / "out001.mp4", out / "out001.mp4", 0.5)  # MP4 without its index yet
    src = SegmentFolderSource(out, stream="rec", poll_interval=0.05, settle_seconds=0.1)
    async with src:
        first = [await anext(src) for _ in range(4)]  # all of out000 (2 s at 2 fps)
        waiting = asyncio.ensure_future(anext(src))
        for _ in range(600):
            if src.position.done == "out000.mp4" and src.state == "waiting":
                break
            await asyncio.sleep(0.05)
        assert src.position.done == "out000.mp4"
        for _ in range(10):  # many polls over the stable, unreadable newest segment
            await asyncio.sleep(0.05)
            assert src.segments_corrupt == 0
        assert not waiting.done()
        shutil.copy(made / "out002.mp4", out / "out002.mp4")
        nxt = await asyncio.wait_for(waiting, 30)
    assert src.segments_corrupt == 1
    assert [f.t for f in first] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert nxt.t == pytest.approx(2.0)  # out002 appended after out000


async def test_resume_from_position_neither_loses_nor_repeats(tmp_path: Path) -> None:
    spec = source_video(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    await run(segment_cmd(spec.path, out, "out%03d.ts", reset=True, realtime=False))
    full = [f.t for f in await read_all(SegmentFolderSource(out, stream="a", follow=False))]

    first = SegmentFolderSource(out, stream="a", follow=False)
    async with first:
        part = [(await anext(first)).t for _ in range(5)]  # stops inside the second segment
    saved = first.position.to_dict()
    assert saved["done"] == "out000.ts" and saved["last_t"] == part[-1]

    second = SegmentFolderSource(out, stream="a", follow=False, position=SegmentPosition.from_dict(saved))
    rest = [f.t for f in await read_all(second)]
    assert part + rest == pytest.approx(full)


def test_natural_order_and_bad_arguments(tmp_path: Path) -> None:
    names = ["out10.ts", "out9.ts", "out100.ts", "cam-2024-01-02.ts", "cam-2024-01-01.ts"]
    assert sorted(names, key=natural_key) == [
        "cam-2024-01-01.ts",
        "cam-2024-01-02.ts",
        "out9.ts",
        "out10.ts",
        "out100.ts",
    ]
    with pytest.raises(SourceUnavailableError):
        SegmentFolderSource(tmp_path / "missing", stream="x")
    with pytest.raises(SourceUnavailableError):
        SegmentPosition.from_dict({"nonsense": 1})
    with pytest.raises(SourceUnavailableError):
        SegmentPosition.from_dict({"next_t": "soon"})
    pos = SegmentPosition(done="out7.ts", next_t=14.0, shift=-1.4, last_duration=2.0, last_t=13.5)
    assert SegmentPosition.from_dict(json.loads(json.dumps(pos.to_dict()))) == pos


async def test_damaged_packets_of_every_segment_are_counted(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    for k, color in enumerate([(200, 0, 0), (0, 0, 200)]):
        spec = make_video(tmp_path / f"in{k}.mp4", [(3.0, color, True)], fps=10)
        data = bytearray(spec.path.read_bytes())
        lo, hi = int(len(data) * 0.4), int(len(data) * 0.6)
        data[lo:hi] = np.random.default_rng(k).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
        (rec / f"seg{k}.mp4").write_bytes(bytes(data))
    src = SegmentFolderSource(rec, stream="s", follow=False, fps=10.0)
    async with src:
        frames = [item async for item in src if isinstance(item, Frame)]
        stats = src.stats()
    assert frames and stats.state == "done"
    assert stats.extra["segments_done"] + stats.extra["segments_corrupt"] == 2
    assert stats.damaged_packets >= 2  # at least one per segment: decoded past, but counted
