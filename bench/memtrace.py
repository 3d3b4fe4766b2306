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
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
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
