"""The segment folder follower against recorders that back-fill, restart numbering, rename and prune.

The test is the recorder: it writes segment files (PyAV, one colour each) into
a folder out of order, renumbers from 000 and deletes files, while a
:class:`SegmentFolderSource` follows the folder. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from streams.media import Frame
from streams.segment_folder import SegmentFolder, SegmentPosition, wall_from_name
from streams.segments import SegmentFolderSource
from tests.videos import make_video

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (220, 220, 30),
    "white": (230, 230, 230),
    "black": (10, 10, 10),
}
T0 = datetime(2026, 1, 1, 10, 0, 0).timestamp()


def write_segment(folder: Path, name: str, colour: str, seconds: float = 2.0) -> Path:
    """A finished segment: written beside the folder, then moved in (as recorders finish files)."""
    tmp = folder.parent / f"tmp-{name}"
    make_video(tmp, [(seconds, COLOURS[colour])], fps=10, size=(96, 64))
    os.replace(tmp, folder / name)
    return folder / name


def stamp(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset).strftime("cam_%Y%m%d-%H%M%S.mp4")


def colour_of(frame: Frame) -> str:
    mean = frame.image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.abs(mean - np.asarray(COLOURS[c])).sum()))


class Follower:
    """Consumes a source in a task; the test waits for conditions on what arrived."""

    def __init__(self, src: SegmentFolderSource) -> None:
        self.src = src
        self.frames: list[Frame] = []
        self.paused = asyncio.Event()
        self.paused.set()
        self.pause_on: str | None = None
        """Pause as soon as a frame of this colour arrives (before taking the next one)."""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        await self.src.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.src.close()

    async def _run(self) -> None:
        async for frame in self.src:
            self.frames.append(frame)
            if self.pause_on is not None and colour_of(frame) == self.pause_on:
                self.pause_on = None
                self.paused.clear()
            await self.paused.wait()

    def colours(self) -> list[str]:
        return [colour_of(f) for f in self.frames]

    async def until(self, cond: Callable[[], bool], limit: float = 60.0) -> None:
        async with asyncio.timeout(limit):
            while not cond():  # noqa: ASYNC110 - counters a reader thread writes
                await asyncio.sleep(0.05)


def follow(folder: Path, **kw: object) -> SegmentFolderSource:
    args: dict[str, object] = {"stream": "rec", "fps": 2.0, "poll_interval": 0.05, "settle_seconds": 0.3}
    args.update(kw)
    return SegmentFolderSource(folder, **args)  # type: ignore[arg-type]


async def test_a_back_filled_segment_is_ingested_at_its_own_wall_time(tmp_path: Path) -> None:
    # Issue 16 kind 2: seg at 10:00:04 arrives after the one at 10:00:06 was read (an outage
    # back-filled by the camera). On main it sorted before the cursor and was never read.
    rec = tmp_path / "rec"
    rec.mkdir()
    write_segment(rec, stamp(0), "red")
    write_segment(rec, stamp(2), "green")
    async with Follower(follow(rec)) as f:
        await f.until(lambda: f.src.segments_done == 2)
        write_segment(rec, stamp(6), "yellow")
        await f.until(lambda: f.src.segments_done == 3)
        write_segment(rec, stamp(4), "blue")  # the late one
        await f.until(lambda: f.src.segments_done == 4)
        stats = f.src.stats().to_dict()
    assert f.colours().count("blue") >= 3
    assert stats["segments_late"] == 1 and stats["segments_lost"] == 0
    times = [fr.t for fr in f.frames]
    assert all(b > a for a, b in itertools.pairwise(times))  # appended: stream time goes on
    for fr in f.frames:
        assert fr.wall is not None
        start = {"red": 0, "green": 2, "blue": 4, "yellow": 6}[colour_of(fr)]
        assert T0 + start - 0.01 <= fr.wall <= T0 + start + 2.0  # each dated by its own name


async def test_a_recorder_restarting_at_000_and_pruning_is_followed(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        write_segment(rec, f"seg{i:03d}.mp4", colour)
    async with Follower(follow(rec)) as f:
        await f.until(lambda: f.src.segments_done == 3)
        # The recorder restarts: prunes what it had, numbers from 000 again.
        for i in range(3):
            (rec / f"seg{i:03d}.mp4").unlink()
        write_segment(rec, "seg000.mp4", "yellow")
        write_segment(rec, "seg001.mp4", "white")
        await f.until(lambda: f.src.segments_done == 5)
        # A restart that overwrites an old name in place (same inode, new content).
        make_video(rec / "seg000.mp4", [(2.0, COLOURS["black"])], fps=10, size=(96, 64))
        await f.until(lambda: f.src.segments_done == 6)
        stats = f.src.stats().to_dict()
        position = f.src.position
    seen = f.colours()
    for colour in ("red", "green", "blue", "yellow", "white", "black"):
        assert seen.count(colour) >= 3, (colour, seen)
    assert stats["segments_lost"] == 0 and stats["segments_corrupt"] == 0
    assert position.finished is not None and len(position.finished) == 2  # pruned files forgotten


async def test_a_pending_segment_deleted_before_it_is_read_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    write_segment(rec, "seg000.mp4", "red", seconds=3.0)
    write_segment(rec, "seg001.mp4", "green")
    caplog.set_level(logging.WARNING, logger="streams.segments")
    async with Follower(follow(rec, queue_size=1)) as f:
        f.paused.clear()  # a slow consumer: the reader blocks inside seg000
        await f.until(lambda: len(f.frames) >= 1)
        write_segment(rec, "seg002.mp4", "blue")
        write_segment(rec, "seg003.mp4", "yellow")
        f.pause_on = "green"
        f.paused.set()
        await f.until(lambda: not f.paused.is_set())  # seg001 is being read; seg002, seg003 seen pending
        (rec / "seg002.mp4").unlink()  # retention prunes it before it is read
        f.paused.set()
        await f.until(lambda: f.src.segments_done == 3)
        stats = f.src.stats().to_dict()
    assert "blue" not in f.colours() and "yellow" in f.colours()
    assert stats["segments_lost"] == 1
    assert stats["last_error"] == "segment seg002.mp4 deleted before it was read"
    assert any("seg002.mp4 deleted before it was read" in r.getMessage() for r in caplog.records)


def test_scan_tells_new_renamed_and_lost_segments_by_identity(tmp_path: Path) -> None:
    folder = SegmentFolder(tmp_path, ["*.mp4"], settle_seconds=0.0)
    pos = SegmentPosition(finished=[])
    for name in ("a1.mp4", "a2.mp4", "a3.mp4"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    assert folder.scan(pos).pending == ["a1.mp4", "a2.mp4", "a3.mp4"]
    pos.finished = [folder.identity("a1.mp4")]
    folder.forget("a1.mp4")
    os.rename(tmp_path / "a1.mp4", tmp_path / "b1.mp4")  # finished, renamed: not new
    os.rename(tmp_path / "a2.mp4", tmp_path / "b2.mp4")  # pending, renamed
    (tmp_path / "a3.mp4").unlink()  # pending, gone
    (tmp_path / "a0.mp4").write_bytes(b"late")  # sorts first: still new
    scan = folder.scan(pos)
    assert scan.pending == ["a0.mp4", "b2.mp4"]
    assert scan.renamed == [("a2.mp4", "b2.mp4")] and scan.lost == ["a3.mp4"]


def test_a_position_from_before_identities_keeps_its_name_cursor(tmp_path: Path) -> None:
    for name in ("s1.ts", "s2.ts", "s3.ts"):
        (tmp_path / name).write_bytes(b"x" * 8)
    old = SegmentPosition.from_dict({"done": "s2.ts", "next_t": 4.0, "shift": 0.0})
    assert old.finished is None
    assert SegmentFolder(tmp_path, ["*.ts"], 0.0).scan(old).pending == ["s3.ts"]
    assert old.finished is not None and len(old.finished) == 2


@pytest.mark.parametrize(
    ("name", "offset"),
    [
        ("cam_20260101-100000.mp4", 0.0),
        ("2026-01-01_10-00-30.ts", 30.0),
        ("rec20260101T100100_007.mkv", 60.0),
    ],
)
def test_wall_from_name(name: str, offset: float) -> None:
    assert wall_from_name(name) == pytest.approx(T0 + offset)


def test_wall_from_name_ignores_sequence_numbers() -> None:
    assert wall_from_name("out000123.mp4") is None
    assert wall_from_name("seg_1767261600.ts") == 1767261600.0


def test_symlinks_in_a_segment_folder_are_not_segments(tmp_path: Path) -> None:
    # A link may point anywhere (outside the media roots a client was allowed); recorders write files.
    folder = tmp_path / "rec"
    folder.mkdir()
    outside = tmp_path / "private.mp4"
    outside.write_bytes(b"not a segment")
    (folder / "seg001.mp4").write_bytes(b"x")
    (folder / "seg002.mp4").symlink_to(outside)
    assert SegmentFolder(folder, ["*.mp4"], 0.0).names() == ["seg001.mp4"]
