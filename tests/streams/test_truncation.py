"""The truncation rule's byte count (:func:`streams.truncation.stated_bytes`) on real containers."""

from __future__ import annotations

from pathlib import Path

from streams.truncation import stated_bytes
from tests.streams import corpus


def test_stated_bytes_of_matroska_and_avi(tmp_path: Path) -> None:
    """Complete files state what they hold; a cut copy holds less."""
    for suffix in (".mkv", ".avi"):
        built = corpus.cut(tmp_path, suffix, keep=0.5)
        stated, size = stated_bytes(str(tmp_path / f"whole{suffix}"))
        assert stated == size
        stated_cut, size_cut = stated_bytes(str(built.path))
        assert stated_cut == stated and size_cut < stated


def test_live_written_matroska_states_no_length(tmp_path: Path) -> None:
    """A Matroska written to a pipe has an unknown Segment size: it cannot tell, so it just ends."""
    source = corpus.plain(tmp_path).path
    path = tmp_path / "live.mkv"
    corpus.ffmpeg("-i", str(source), "-c", "copy", "-f", "matroska", "-live", "1", str(path))
    assert stated_bytes(str(path)) == (None, path.stat().st_size)
