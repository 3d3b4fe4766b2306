"""Memory snapshots: validated restore from arrays, atomic save, typed load errors.

A snapshot is an uncompressed ``.npz`` of :meth:`Memory.state_dict` written
through :mod:`agent.store.atomic`, so the file on disk is always a complete older or
newer state. Loading checks the format version first
(:class:`SnapshotVersionError`), then every array's shape and finiteness and
the timeline's order (:class:`IndexStoreError`), so a damaged file can never
become a memory that breaks its own invariants.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np

from agent.core.detail import DetailLevel
from agent.core.memory import Anchor, Memory
from agent.core.runs import unpack_runs
from agent.core.scoring import SCORERS, Scorer
from agent.core.svd import MERGE_RULES, MergeRule, unpack_svds
from agent.errors import IndexStoreError, SnapshotVersionError
from agent.store import atomic

LEGACY_RULES: dict[str, str] = {"merge": "cosine", "scorer": "rep"}
"""What a memory built before the merge rule and scorer existed used (SMORE's rules: the most
similar pair merged, the token scored): a snapshot, or an ``index.json``, without these keys."""


def memory_from_state(state: Mapping[str, np.ndarray]) -> Memory:
    """Rebuild from ``state_dict()``.

    Raises SnapshotVersionError when the state has another FORMAT_VERSION
    and IndexStoreError when anything is missing or inconsistent.
    """
    if "format_version" not in state:
        raise IndexStoreError("memory snapshot has no format_version")
    try:
        version = int(np.asarray(state["format_version"]))
    except (TypeError, ValueError, OverflowError) as exc:
        raise IndexStoreError("memory snapshot has an unreadable format_version") from exc
    if version != Memory.FORMAT_VERSION:
        raise SnapshotVersionError(
            f"memory snapshot format {version}, this build reads format {Memory.FORMAT_VERSION}"
        )
    try:
        return _from_valid_state(state)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise IndexStoreError(f"invalid memory snapshot: {exc}") from exc


def _from_valid_state(state: Mapping[str, np.ndarray]) -> Memory:
    rep_kind = str(np.asarray(state["representative"]))
    if rep_kind not in ("smore", "mean"):
        raise ValueError(f"unknown representative {rep_kind!r}")
    # Snapshots older than the merge rule and scorer keys were built by SMORE's rules.
    merge = str(np.asarray(state["merge"])) if "merge" in state else LEGACY_RULES["merge"]
    scorer = str(np.asarray(state["scorer"])) if "scorer" in state else LEGACY_RULES["scorer"]
    if merge not in MERGE_RULES or scorer not in SCORERS:
        raise ValueError(f"unknown merge rule {merge!r} or scorer {scorer!r}")
    mem = Memory(
        int(np.asarray(state["dim"])),
        budget=int(np.asarray(state["budget"])),
        theta=float(np.asarray(state["theta"])),
        rank=int(np.asarray(state["rank"])),
        representative="smore" if rep_kind == "smore" else "mean",
        gap_seconds=float(np.asarray(state["gap_seconds"])),
        merge=cast(MergeRule, merge),
        scorer=cast(Scorer, scorer),
        runs=_runs_cap(state),
    )
    d, k = mem.dim, mem.rank
    starts, ends = _field(state, "starts", (-1,)), _field(state, "ends", (-1,))
    n = starts.shape[0]
    if n > mem.budget:
        raise ValueError(f"{n} anchors exceed the budget {mem.budget}")
    reps = _field(state, "reps", (n, d))
    spans = _field(state, "spans", (-1, 2))
    _check_timeline(starts, ends, spans)
    svds = unpack_svds(state, n, k, d)
    anchors = [
        Anchor(float(starts[i]), float(ends[i]), svds[i], reps[i].astype(np.float32)) for i in range(n)
    ]
    if mem.runs:
        # Sub-runs (agent.core.runs) are checked against the anchors they belong to.
        counts = np.array([s.count for s in svds], np.int64)
        rows = np.array([s.basis.shape[0] for s in svds], np.int64)
        for a, runs in zip(anchors, unpack_runs(state, starts, ends, counts, rows, mem.runs), strict=True):
            a.runs = runs
    last_start = float(np.asarray(state["last_start"]))
    if not (math.isfinite(last_start) or (n == 0 and last_start == -math.inf)):
        # +inf would refuse every later frame, NaN would let them go backwards.
        raise ValueError(f"last_start {last_start} is not a stream time")
    forgotten = float(np.asarray(state["forgotten_gap_seconds"]))
    # Snapshots older than the saved break had none pending on their next add.
    pending = "coverage_break" in state and _flag(state, "coverage_break")
    mem.restore(anchors, [[float(s), float(e)] for s, e in spans], last_start, forgotten, pending)
    mem.detail = DetailLevel.from_state(state, k, d)
    return mem


def _runs_cap(state: Mapping[str, np.ndarray]) -> int:
    """The sub-runs per anchor (0 for a snapshot older than runs); ValueError unless an int64 >= 0
    (a float such as 1e30 would be taken, then fail the next save)."""
    if "runs_cap" not in state:
        return 0
    cap = _field(state, "runs_cap", ())
    if not np.issubdtype(cap.dtype, np.integer) or not 0 <= int(cap) <= np.iinfo(np.int64).max:
        raise ValueError(f"runs_cap must be an integer >= 0, not {cap!r}")
    return int(cap)


def _flag(state: Mapping[str, np.ndarray], key: str) -> bool:
    """``state[key]`` as a bool; ValueError unless it is a boolean scalar."""
    arr = np.asarray(state[key])
    if arr.shape != () or arr.dtype != np.bool_:
        raise ValueError(f"{key} must be a boolean scalar, not {arr!r}")
    return bool(arr)


def save_memory(mem: Memory, path: Path) -> None:
    """Write a snapshot atomically: ``path`` always holds a complete old or new state."""
    try:
        atomic.write_npz(Path(path), mem.state_dict())
    except OSError as exc:
        raise IndexStoreError(f"cannot write memory snapshot {path}: {exc}") from exc


def load_memory(path: Path) -> Memory:
    """Read a snapshot written by ``save``.

    Raises IndexStoreError when the file is missing, truncated or not a
    memory snapshot, and SnapshotVersionError on a format version mismatch.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise IndexStoreError(f"{path} is not a memory snapshot (.npz)")
        with loaded as npz:
            # Read every member now: zip damage shows up on access, not on open.
            state = {key: npz[key] for key in npz.files}
    except FileNotFoundError as exc:
        raise IndexStoreError(f"no memory snapshot at {path}") from exc
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise IndexStoreError(f"corrupt memory snapshot {path}: {exc}") from exc
    return memory_from_state(state)


def _field(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """``state[key]`` as a finite numeric array of the given shape (-1: any length)."""
    arr = np.asarray(state[key])
    if arr.ndim != len(shape) or any(
        want not in (-1, got) for want, got in zip(shape, arr.shape, strict=True)
    ):
        raise ValueError(f"{key} has shape {arr.shape}, expected {shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{key} is not a finite numeric array")
    return arr


def _check_timeline(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray) -> None:
    if ends.shape != starts.shape:
        raise ValueError("starts and ends differ in length")
    if np.any(ends < starts) or np.any(starts[1:] < ends[:-1]):
        raise ValueError("anchors are not ordered and disjoint")
    if np.any(spans[:, 1] < spans[:, 0]) or np.any(spans[1:, 0] < spans[:-1, 1]):
        raise ValueError("coverage intervals are not ordered and disjoint")
    if (starts.size == 0) != (spans.shape[0] == 0):
        raise ValueError("anchors and coverage disagree on emptiness")
