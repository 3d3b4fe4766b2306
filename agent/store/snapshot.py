"""Snapshot generations of one folder: staged, committed by one rename, verified on load.

A stream's snapshot is several files (``memory.npz``, ``cheap.npz``,
``ingest.json``, other channels' folders) plus ``state.json``. Replacing each
file atomically is not enough: a ``kill -9`` between two of them leaves files
of two generations side by side. The rule chosen is *roll forward*, so a load
always sees one complete generation — the previous one or the new one —
and the folder's layout stays what it always was::

    1. the files are written into  FOLDER/.snapshot-next/   (discarded if a crash stops here)
    2. state.json is written there last, with the generation number and a
       manifest {relative path: [size, CRC-32]} of every file of the generation
    3. .snapshot-next is renamed to FOLDER/.snapshot-ready   (the commit point: one rename)
    4. each file is moved over its old self, state.json last; .snapshot-ready is removed

A crash during 4 is finished by the next :func:`roll_forward` (every load and
save starts with it). Reading (:func:`read_committed`) checks every file
named in the manifest against its size and CRC-32: a file of another
generation, a truncated or a bit-flipped one is an
:class:`~agent.errors.IndexStoreError`, never a silently mixed state. Snapshots
written before generations existed have no manifest and load as they are.

:func:`quarantine` sets the files of a bad snapshot aside (moved, never
deleted) so that the stream can start afresh and an operator can inspect
them.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from agent.errors import IndexStoreError
from agent.store.atomic import fsync_dir, write_bytes, write_json
from agent.store.versioned import read_versioned

STATE_FILE = "state.json"
NEXT = ".snapshot-next"
READY = ".snapshot-ready"
QUARANTINE = "quarantine"


def stage(folder: Path) -> Path:
    """A fresh, empty staging folder for the next generation (a stale one is discarded)."""
    roll_forward(folder)
    target = Path(folder) / NEXT
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


def commit(folder: Path, staged: Path, record: Mapping[str, Any]) -> dict[str, list[int]]:
    """Make the files in ``staged`` the folder's current generation; returns their manifest.

    ``record`` is the ``state.json`` object without ``files`` (it must hold
    ``version`` and ``generation``). Blocking; OSError from the disk is left
    to the caller (the previous generation stays whole).
    """
    folder, staged = Path(folder), Path(staged)
    manifest = {rel: [size, crc] for rel, (size, crc) in _digests(staged).items()}
    write_json(staged / STATE_FILE, {**record, "files": manifest})
    os.replace(staged, folder / READY)
    fsync_dir(folder)
    roll_forward(folder)
    return manifest


def roll_forward(folder: Path) -> None:
    """Finish a committed generation whose files were not all moved into place yet (idempotent)."""
    folder = Path(folder)
    ready = folder / READY
    if not (ready / STATE_FILE).is_file():
        shutil.rmtree(ready, ignore_errors=True)  # never committed (or already finished)
        return
    for path in sorted(ready.rglob("*")):
        if path.is_file() and path.name != STATE_FILE:
            target = folder / path.relative_to(ready)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    os.replace(ready / STATE_FILE, folder / STATE_FILE)
    fsync_dir(folder)
    shutil.rmtree(ready, ignore_errors=True)


def read_committed(folder: Path, version: int, *, what: str) -> dict[str, Any] | None:
    """The folder's ``state.json`` after checking every file its manifest names; None: no snapshot.

    Raises IndexStoreError when a named file is missing, of another size or
    CRC-32 (a file of another generation, truncated or damaged), or when the
    manifest is malformed; SnapshotVersionError for another ``version``.
    """
    folder = Path(folder)
    try:
        roll_forward(folder)
    except OSError as exc:
        raise IndexStoreError(f"{folder}: cannot finish the last snapshot: {exc}") from exc
    data = read_versioned(folder / STATE_FILE, version, what=what)
    if data is None or "files" not in data:
        return data  # no snapshot, or one from before generations
    files = data["files"]
    if not isinstance(files, dict):
        raise IndexStoreError(f"{folder / STATE_FILE}: unreadable {what}: 'files' is not an object")
    have = _digests(folder, [_relative(folder, rel) for rel in files])
    for rel, want in files.items():
        if not (isinstance(want, list) and len(want) == 2 and all(type(v) is int for v in want)):
            raise IndexStoreError(f"{folder / STATE_FILE}: unreadable {what}: bad manifest entry {rel!r}")
        got = have.get(rel)
        if got is None or list(got) != want:
            found = "missing" if got is None else f"{got[0]} B, CRC {got[1]:08x}"
            raise IndexStoreError(
                f"{folder}: snapshot generation {data.get('generation')} is not whole: {rel} is {found}, "
                f"the generation wrote {want[0]} B, CRC {want[1]:08x} (a file of another generation, "
                "truncated or damaged)"
            )
    return data


def quarantine(folder: Path, reason: str, *, keep: Collection[str] = ()) -> Path:
    """Move everything in ``folder`` except ``keep`` (and earlier quarantines) aside; returns where.

    The files go to ``folder/quarantine/<UTC time>/`` with a ``reason.txt``;
    nothing is deleted. Raises IndexStoreError when the disk refuses.
    """
    folder = Path(folder)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = folder / QUARANTINE / stamp
    n = 1
    while target.exists():
        n += 1
        target = folder / QUARANTINE / f"{stamp}-{n}"
    try:
        target.mkdir(parents=True)
        for entry in sorted(folder.iterdir()):
            if entry.name not in {QUARANTINE, *keep}:
                os.replace(entry, target / entry.name)
        write_bytes(target / "reason.txt", (reason + "\n").encode())
    except OSError as exc:
        raise IndexStoreError(f"cannot set the bad snapshot of {folder} aside: {exc}") from exc
    return target


def _relative(folder: Path, rel: object) -> str:
    """``rel`` if it is a plain relative path inside ``folder`` (a manifest must not point outside)."""
    pure = PurePosixPath(str(rel))
    if not isinstance(rel, str) or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise IndexStoreError(f"{folder / STATE_FILE}: manifest names an invalid path {rel!r}")
    return rel


def _digests(root: Path, names: Collection[str] | None = None) -> dict[str, tuple[int, int]]:
    """(size, CRC-32) of the files ``names`` under ``root`` (every file when None; missing ones left out)."""
    paths = (
        [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != STATE_FILE]
        if names is None
        else [root / n for n in names]
    )
    out: dict[str, tuple[int, int]] = {}
    for path in paths:
        try:
            crc, size = 0, 0
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    crc, size = zlib.crc32(block, crc), size + len(block)
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as exc:
            raise IndexStoreError(f"cannot read snapshot file {path}: {exc}") from exc
        out[path.relative_to(root).as_posix()] = (size, crc)
    return out
