"""Segment files checked against the allowed demuxers when the segment source opens them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streams.decode import open_media
from streams.errors import FormatNotAllowedError
from streams.media import Frame
from streams.registry import OpenContext
from streams.segments import SegmentFolderSource, SegmentsSpec, open_segments
from tests.streams.servers import ffmpeg_available
from tests.videos import make_video

pytestmark = pytest.mark.skipif((why := ffmpeg_available()) is not None, reason=why or "")

RED, GREEN = (200, 30, 30), (30, 200, 30)
VIDEO_DEMUXERS = ["mov", "mp4", "matroska", "mpegts"]


def _folder(tmp_path: Path) -> Path:
    """A real segment, then a JPEG and a text file named like the segments after it."""
    rec = tmp_path / "rec"
    rec.mkdir()
    make_video(rec / "seg000.mp4", [(2.0, RED, True)], fps=10, size=(96, 64))
    Image.fromarray(np.full((64, 96, 3), GREEN, np.uint8)).save(rec / "seg001.mp4", format="JPEG")
    (rec / "seg002.mp4").write_text("camera admin password: hunter2\n" * 40)
    return rec


def _colour(frame: Frame) -> int:
    return int(np.argmax(frame.image.reshape(-1, 3).mean(axis=0)))


async def _read(src: SegmentFolderSource) -> list[Frame]:
    async with src:
        return [item async for item in src if isinstance(item, Frame)]


async def test_a_picture_or_text_named_like_a_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    rec = _folder(tmp_path)
    src = SegmentFolderSource(rec, stream="s", follow=False, fps=2.0, formats=VIDEO_DEMUXERS)
    frames = await _read(src)
    stats = src.stats()
    assert frames and all(_colour(f) == 0 for f in frames)  # the red segment only
    assert stats.state == "done"
    assert stats.extra["segments_done"] == 1
    assert stats.extra["segments_refused"] == 1  # the JPEG (jpeg_pipe): refused by FFmpeg, never decoded
    assert stats.extra["segments_corrupt"] == 1  # the text: FFmpeg finds no demuxer for it at all
    assert stats.last_error is not None
    assert "seg001.mp4: container format is not an allowed video format" in stats.last_error


async def test_without_an_allow_list_ffmpeg_renders_the_picture_as_video(tmp_path: Path) -> None:
    # What the check prevents: FFmpeg's auto-detection reads the JPEG as a one-frame video.
    frames = await _read(SegmentFolderSource(_folder(tmp_path), stream="s", follow=False, fps=2.0))
    assert any(_colour(f) == 1 for f in frames)


async def test_the_specs_formats_reach_the_source_and_a_refusal_is_read_again_only_when_changed(
    tmp_path: Path,
) -> None:
    rec = _folder(tmp_path)
    spec = SegmentsSpec(id="s", kind="segments", path=str(rec), formats=VIDEO_DEMUXERS)
    src = open_segments(spec, OpenContext(fps=2.0))
    src.follow = False
    await _read(src)
    token = src.resume_token()
    again = open_segments(spec, OpenContext(fps=2.0, resume_token=token))
    again.follow = False
    assert await _read(again) == [] and again.stats().extra["segments_refused"] == 0  # finished: not retried


def _playlist_folder(tmp_path: Path) -> Path:
    """A red segment, then an ffconcat playlist named like a segment that lists a green video in a subfolder.

    (The concat demuxer's ``safe`` mode refuses absolute and ``..`` paths, not relative ones.)
    """
    rec = tmp_path / "rec"
    (rec / "private").mkdir(parents=True)
    make_video(rec / "seg000.mp4", [(2.0, RED, True)], fps=10, size=(96, 64))
    make_video(rec / "private" / "secret.mp4", [(2.0, GREEN, True)], fps=10, size=(96, 64))
    (rec / "seg001.mp4").write_text("ffconcat version 1.0\nfile private/secret.mp4\n")
    return rec


async def test_a_playlist_named_like_a_segment_is_refused_before_it_opens_what_it_lists(
    tmp_path: Path,
) -> None:
    rec = _playlist_folder(tmp_path)
    # What FFmpeg does without the allow-list: the concat demuxer opens and decodes the listed file.
    unchecked = await _read(SegmentFolderSource(rec, stream="s", follow=False, fps=2.0))
    assert any(_colour(f) == 1 for f in unchecked)
    src = SegmentFolderSource(rec, stream="s", follow=False, fps=2.0, formats=VIDEO_DEMUXERS)
    frames = await _read(src)
    assert frames and all(_colour(f) == 0 for f in frames)  # no frame of the listed video
    assert src.stats().extra["segments_refused"] == 1
    with pytest.raises(FormatNotAllowedError):  # FFmpeg refuses at open: EINVAL before the header is read
        open_media(rec / "seg001.mp4", VIDEO_DEMUXERS)
