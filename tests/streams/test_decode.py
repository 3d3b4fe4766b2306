"""The decode module's time rules, sans-I/O (:class:`streams.decode.Clock`), and its decoder threads."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from streams.decode import Clock
from streams.file import decode_frames
from streams.sampler import tune_decoder
from tests.videos import Scene, make_video


def test_clock_stitches_a_restart_in_playback_order() -> None:
    clock = Clock(period=0.1)
    times = [clock.place(raw, 0.1) for raw in (0.0, 0.1, 0.2, 0.0, 0.1)]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert clock.stitched == pytest.approx([0.3])


def test_clock_leaves_small_steps_back_and_jumps_forward_alone() -> None:
    clock = Clock(period=0.1)
    times = [clock.place(raw, 0.1) for raw in (0.0, 0.2, 0.15, 600.0)]
    assert times == pytest.approx([0.0, 0.2, 0.15, 600.0])  # a step back within one period; a real gap
    assert clock.stitched == []


def test_clock_without_pts_follows_each_frame_duration() -> None:
    clock = Clock(period=0.04)  # a placeholder rate must not win over the frames' own durations
    assert [clock.place(None, 0.1) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("keyframes_only", [False, True])
def test_decoder_thread_count_changes_no_pixel_and_no_time(tmp_path: Path, keyframes_only: bool) -> None:
    """One decoder thread (the ingest's choice beside a CPU encoder) yields what FFmpeg's default yields."""
    path = tmp_path / "clip.mp4"
    make_video(path, [Scene(2.0, (200, 40, 40), moving=True), Scene(2.0, (40, 40, 200), moving=True)], fps=25)
    runs = [
        list(decode_frames(path, fps=5.0, short_side=64, keyframes_only=keyframes_only, thread_count=n))
        for n in (0, 1)
    ]
    assert len(runs[0]) == len(runs[1]) >= (4 if keyframes_only else 20)
    for a, b in zip(*runs, strict=True):
        assert (a.t, a.keyframe, a.duration) == (b.t, b.keyframe, b.duration)
        np.testing.assert_array_equal(a.image, b.image)


def test_tune_decoder_refuses_a_negative_thread_count(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    make_video(path, [(1.0, (10, 20, 30))], fps=10)
    with av.open(str(path)) as container, pytest.raises(ValueError, match=">= 0"):
        tune_decoder(container.streams.video[0], count=-1)
