"""Snapshot generations: a crash leaves one whole generation, mixed or damaged files are typed errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import IndexStoreError
from agent.store import atomic, snapshot

ROOT = Path(__file__).resolve().parents[3]


def _generation(folder: Path, n: int, *, crash_after: int | None = None) -> None:
    """Write generation ``n`` (files a.bin, b.bin, sub/c.bin holding ``n``); optionally die mid-way."""
    staged = snapshot.stage(folder)
    for i, rel in enumerate(["a.bin", "b.bin", "sub/c.bin"]):
        if crash_after is not None and i == crash_after:
            raise KeyboardInterrupt  # stands for kill -9: nothing after this point runs
        atomic.write_bytes(staged / rel, f"{rel} of generation {n}".encode() * (n + 1))
    snapshot.commit(folder, staged, {"version": 1, "generation": n})


def _contents(folder: Path) -> dict[str, str]:
    return {rel: (folder / rel).read_text() for rel in ["a.bin", "b.bin", "sub/c.bin"]}


def test_a_crash_while_writing_leaves_the_previous_generation_whole(tmp_path: Path) -> None:
    _generation(tmp_path, 1)
    before = _contents(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _generation(tmp_path, 2, crash_after=2)
    data = snapshot.read_committed(tmp_path, 1, what="test")
    assert data is not None and data["generation"] == 1 and _contents(tmp_path) == before
    _generation(tmp_path, 3)  # the stale staging folder is discarded
    assert snapshot.read_committed(tmp_path, 1, what="test")["generation"] == 3  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "state.json", "sub"]


def test_a_crash_while_moving_a_committed_generation_is_rolled_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _generation(tmp_path, 1)
    moves = []
    real_replace = os.replace

    def dying_replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).parent.name == snapshot.READY:
            if moves:
                raise KeyboardInterrupt  # kill -9 after the first file was moved into place
            moves.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(snapshot.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _generation(tmp_path, 2)
    monkeypatch.setattr(snapshot.os, "replace", real_replace)
    # On disk now: a.bin of generation 2, the rest and state.json of generation 1.
    assert "generation 2" in (tmp_path / "a.bin").read_text()
    assert json.loads((tmp_path / "state.json").read_text())["generation"] == 1
    data = snapshot.read_committed(tmp_path, 1, what="test")
    assert data is not None and data["generation"] == 2
    assert all("generation 2" in text for text in _contents(tmp_path).values())


@pytest.mark.parametrize("damage", ["other_generation", "truncated", "flipped", "missing"])
def test_files_not_of_the_committed_generation_are_a_typed_error(tmp_path: Path, damage: str) -> None:
    _generation(tmp_path, 1)
    old = (tmp_path / "b.bin").read_bytes()
    _generation(tmp_path, 2)
    target = tmp_path / "b.bin"
    if damage == "other_generation":  # what a kill -9 left before generations existed
        target.write_bytes(old)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-3])
    elif damage == "flipped":
        data = bytearray(target.read_bytes())
        data[5] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(IndexStoreError, match=r"generation 2 is not whole: b\.bin"):
        snapshot.read_committed(tmp_path, 1, what="test")


def test_a_manifest_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "files": {"../x": [1, 2]}}))
    with pytest.raises(IndexStoreError, match="invalid path"):
        snapshot.read_committed(tmp_path, 1, what="test")
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "files": {"a.bin": "big"}}))
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(IndexStoreError, match="bad manifest entry"):
        snapshot.read_committed(tmp_path, 1, what="test")


def test_quarantine_moves_everything_but_what_is_kept(tmp_path: Path) -> None:
    _generation(tmp_path, 1)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "chunk-00000000.vfs").write_bytes(b"frames")
    first = snapshot.quarantine(tmp_path, "bad cheap.npz", keep=("frames",))
    second = snapshot.quarantine(tmp_path, "again", keep=("frames",))
    assert first != second and first.parent == second.parent == tmp_path / "quarantine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "quarantine"]
    assert sorted(p.name for p in first.iterdir()) == ["a.bin", "b.bin", "reason.txt", "state.json", "sub"]
    assert (first / "reason.txt").read_text() == "bad cheap.npz\n"
    assert snapshot.read_committed(tmp_path, 1, what="test") is None  # nothing left to load


_WRITER = """
import sys
from pathlib import Path
from agent.store import atomic, snapshot
folder, n = Path(sys.argv[1]), 0
while True:
    n += 1
    staged = snapshot.stage(folder)
    for rel in ["a.bin", "b.bin", "sub/c.bin"]:
        atomic.write_bytes(staged / rel, (str(n) + " ").encode() * 20_000)
    snapshot.commit(folder, staged, {"version": 1, "generation": n})
"""


@pytest.mark.parametrize("delay", [0.3, 0.45, 0.6, 0.75])
def test_kill_9_while_snapshotting_never_leaves_two_generations(tmp_path: Path, delay: float) -> None:
    # The issue: kill -9 during a snapshot left a stream's files from two generations; nothing noticed.
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "state.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)  # somewhere inside a later generation
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    data = snapshot.read_committed(tmp_path, 1, what="test")
    assert data is not None and data["generation"] >= 1
    generations = {(tmp_path / rel).read_text().split(" ", 1)[0] for rel in ["a.bin", "b.bin", "sub/c.bin"]}
    assert generations == {str(data["generation"])}
