"""Where the Python heap grows between two instants: tracemalloc and gc type counts.

A diagnostic for long runs (``bench.soak --tracemalloc N``): :class:`MemTrace`
starts :mod:`tracemalloc` (``frames`` deep), is marked once at the end of the
warm-up and once at the end, and reports the ``top`` allocation sites whose
size grew the most between the two marks (by traceback, innermost frames of
this project first) and the Python object types whose population grew the
most (:func:`gc.get_objects` counted by type name).

Tracing costs CPU (often 2-3x) and memory: figures of a traced run are for
finding growth, not for its latency or its absolute RSS. Growth outside the
Python allocator (numpy buffers are traced; PyAV/ffmpeg, ONNX/torch native
allocations and allocator fragmentation are not) shows as RSS growth that
tracemalloc does not account for: ``traced_growth_mib`` against the RSS drift
tells the two apart.

For more than two marks (``bench.query_latency --memprofile``): :class:`MarkDiffs`
diffs each mark against the previous one by allocating line, and :func:`mallinfo`
(glibc's arenas: in use against free holes) and :func:`smaps_rollup` say how much
of the resident set the allocator holds without live data in it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

MIB = 2**20


def type_counts() -> Counter[str]:
    """Live objects tracked by the garbage collector, counted by type name."""
    return Counter(type(o).__name__ for o in gc.get_objects())


def _site(stat: tracemalloc.StatisticDiff, frames: int) -> list[str]:
    # tracemalloc keeps the oldest frame first; the allocating frame (innermost) is what one reads first
    return [f"{f.filename}:{f.lineno}" for f in reversed(list(stat.traceback)[-frames:])]


class MemTrace:
    """Two marks of the Python heap and the difference between them."""

    def __init__(self, top: int, frames: int = 25) -> None:
        self.top = top
        self.frames = frames
        self._first: tracemalloc.Snapshot | None = None
        self._first_types: Counter[str] = Counter()
        self._first_traced = 0

    def start(self) -> None:
        """Start tracing (call before the work whose growth is wanted)."""
        tracemalloc.start(self.frames)

    def mark(self) -> None:
        """The first instant (the end of the warm-up)."""
        gc.collect()
        self._first = tracemalloc.take_snapshot()
        self._first_traced = tracemalloc.get_traced_memory()[0]
        self._first_types = type_counts()

    def report(self) -> dict[str, Any]:
        """The growth since :meth:`mark` (or since :meth:`start` when never marked); stops tracing."""
        gc.collect()
        last = tracemalloc.take_snapshot()
        traced = tracemalloc.get_traced_memory()[0]
        types = type_counts()
        tracemalloc.stop()
        first = self._first
        sites: list[dict[str, Any]] = []
        if first is not None:
            ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
            diff = last.filter_traces(ignore).compare_to(first.filter_traces(ignore), "traceback")
            for stat in diff[: self.top]:
                sites.append(
                    {
                        "growth_kib": round(stat.size_diff / 1024, 1),
                        "size_kib": round(stat.size / 1024, 1),
                        "count_diff": stat.count_diff,
                        "traceback": _site(stat, 8),
                    }
                )
        grown = types.copy()
        grown.subtract(self._first_types)
        return {
            "traced_start_mib": round(self._first_traced / MIB, 1),
            "traced_end_mib": round(traced / MIB, 1),
            "traced_growth_mib": round((traced - self._first_traced) / MIB, 1),
            "top_sites": sites,
            "top_types": [
                {"type": name, "count_diff": n, "count": types[name]}
                for name, n in grown.most_common(self.top)
                if n > 0
            ],
        }


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2() -> Any:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):
        return None  # not glibc >= 2.33: no allocator figures
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()


def mallinfo() -> dict[str, float]:
    """glibc's allocator, all arenas, MiB: from the system, in use, free inside, mmapped; {} elsewhere.

    ``arena_mb`` is what the heaps took from the system (brk and arena mmaps), ``in_use_mb``
    what live blocks hold of it, ``free_mb`` the holes between them (resident until trimmed
    when touched), ``mmap_mb`` the blocks above the mmap threshold (each its own mapping,
    returned to the system on free).
    """
    if _MALLINFO2 is None:
        return {}
    m = _MALLINFO2()
    return {
        "arena_mb": round(m.arena / MIB, 1),
        "in_use_mb": round(m.uordblks / MIB, 1),
        "free_mb": round(m.fordblks / MIB, 1),
        "mmap_mb": round(m.hblkhd / MIB, 1),
        "mmap_blocks": int(m.hblks),
        "top_releasable_mb": round(m.keepcost / MIB, 1),
    }


def smaps_rollup() -> dict[str, float]:
    """Every field of ``/proc/self/smaps_rollup`` in MiB (Rss, Pss_Anon, Anonymous, ...); {} elsewhere."""
    out: dict[str, float] = {}
    try:
        lines = Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = round(int(parts[0]) / 1024, 1)
    return out


class MarkDiffs:
    """tracemalloc snapshots at successive marks, each diffed against the previous one by file:line.

    Started before the work to be measured; :meth:`mark` returns the ``top`` allocating lines
    (the innermost Python frame; numpy registers its buffers with tracemalloc, so an array
    counts at the line that made it) whose live bytes grew the most since the previous mark,
    and the Python types whose population grew. The first mark diffs against the start.
    """

    def __init__(self, top: int = 15, frames: int = 1) -> None:
        self.top = top
        self.frames = frames
        self._prev: tracemalloc.Snapshot | None = None
        self._prev_types: Counter[str] = Counter()

    def start(self) -> None:
        tracemalloc.start(self.frames)
        self._prev = tracemalloc.take_snapshot()
        self._prev_types = type_counts()

    def mark(self) -> dict[str, Any]:
        """Traced MiB now, and the top lines and types grown since the previous mark."""
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        types = type_counts()
        lines: list[dict[str, Any]] = []
        if self._prev is not None:
            for stat in snap.compare_to(self._prev, "lineno")[: self.top]:
                frame = stat.traceback[0]
                lines.append(
                    {
                        "line": f"{_short(frame.filename)}:{frame.lineno}",
                        "growth_mb": round(stat.size_diff / MIB, 2),
                        "size_mb": round(stat.size / MIB, 2),
                        "count_diff": stat.count_diff,
                    }
                )
        grown = types.copy()
        grown.subtract(self._prev_types)
        self._prev, self._prev_types = snap, types
        return {
            "traced_mb": round(sum(s.size for s in snap.statistics("filename")) / MIB, 1),
            "top_lines": lines,
            "top_types": [{"type": t, "count_diff": n} for t, n in grown.most_common(self.top) if n > 0],
        }

    def stop(self) -> None:
        tracemalloc.stop()
        self._prev = None


def _short(filename: str) -> str:
    """A path from the project root (or site-packages) on: readable in a JSON."""
    for root in ("/agent/", "/bench/", "/streams/", "/site-packages/", "/lib/python"):
        at = filename.rfind(root)
        if at >= 0:
            return filename[at + 1 :]
    return filename
