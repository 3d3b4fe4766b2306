"""The decode module's time rules, sans-I/O (:class:`streams.decode.Clock`) and its truncation rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.decode import Clock, _stated_bytes
from tests.streams import corpus


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


def test_stated_bytes_of_matroska_and_avi(tmp_path: Path) -> None:
    """Complete files state what they hold; a cut copy holds less."""
    for suffix in (".mkv", ".avi"):
        built = corpus.cut(tmp_path, suffix, keep=0.5)
        stated, size = _stated_bytes(str(tmp_path / f"whole{suffix}"))
        assert stated == size
        stated_cut, size_cut = _stated_bytes(str(built.path))
        assert stated_cut == stated and size_cut < stated


def test_live_written_matroska_states_no_length(tmp_path: Path) -> None:
    """A Matroska written to a pipe has an unknown Segment size: it cannot tell, so it just ends."""
    source = corpus.plain(tmp_path).path
    path = tmp_path / "live.mkv"
    corpus.ffmpeg("-i", str(source), "-c", "copy", "-f", "matroska", "-live", "1", str(path))
    assert _stated_bytes(str(path)) == (None, path.stat().st_size)
