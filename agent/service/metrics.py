"""Prometheus text exposition (format 0.0.4) of the service, written by hand.

A dozen gauges and counters do not justify a dependency; the format is a few
lines per family (``# HELP``, ``# TYPE``, samples with escaped labels).
Families: frames ingested and dropped per stream, encoder passes and images,
encoder queue depth per stream, stream status, connected clients, active
watches, and a query latency histogram.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """A cumulative-bucket histogram of observations (seconds)."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self, name: str) -> list[str]:
        """``name_bucket{le=...}``, ``name_sum`` and ``name_count`` lines."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            running += n
            lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {running}')
        lines += [f"{name}_sum {_num(total)}", f"{name}_count {running}"]
        return lines


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Collects metric families and renders them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        lab = ""
        if labels:
            lab = "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"
        self._lines.append(f"{name}{lab} {_num(value)}")

    def per_stream(self, name: str, kind: str, help_text: str, values: Mapping[str, float]) -> None:
        self.family(name, kind, help_text)
        for stream, v in sorted(values.items()):
            self.sample(name, v, {"stream": stream})

    def scalar(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        self.family(name, "histogram", help_text)
        self._lines += hist.samples(name)

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"
