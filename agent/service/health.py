"""A stream's health: whether it is up, reconnecting, holed or unsaved, and why the service is degraded.

The rules, one place for the stream status, ``/metrics`` and ``/healthz``:

* **reconnecting**: the stream runs and its live source (latest-wins
  queue: RTSP, WHIP) is in ``backoff``, or is ``connecting`` again after a
  session ended or failed (its ``last_error`` is set). A source that never
  had a session and has no error yet (a WHIP endpoint waiting for its first
  publisher) is only connecting; a followed segment folder waiting for its
  next segment is not live and never reconnecting.
* **up** (``vmr_stream_up``): the stream starts or runs and is not
  reconnecting. A done, failed or stopped stream is not up.
* **snapshot stale**: a running stream whose last good snapshot (or, before
  the first one, its start) is older than :data:`STALE_PERIODS` snapshot
  periods: a crash now would lose more than the operator configured.
* **gaps**: holes between the memory's coverage intervals (an outage, a
  reconnect, dropped super-images); their count and total seconds.

:func:`assess` turns these facts into a :class:`StreamHealth` whose
``reasons`` (``failed: <code>``, ``reconnecting``, ``snapshot stale``) make
``/healthz`` answer ``degraded``. Reasons carry error codes, never messages:
a message may hold a path or a URL with credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.source import SourceStats

STALE_PERIODS = 3.0
"""Snapshot periods without a good snapshot after which a running stream is stale."""


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """One stream's health at one instant (see the module docstring for the rules)."""

    up: bool
    reconnecting: bool
    snapshot_age: float
    """Seconds since the last good snapshot (since the stream started, before the first one)."""
    snapshot_stale: bool
    gaps: int
    """Holes in the memory's coverage (intervals apart by more than the gap threshold)."""
    gap_seconds: float
    """Seconds of those holes (and of holes the bounded interval list merged away)."""
    reasons: tuple[str, ...]
    """Why this stream degrades the service; empty when it does not."""


def is_reconnecting(status: str, source: SourceStats | None, *, live: bool = True) -> bool:
    """Whether a running stream's ``live`` source is between sessions (see the module docstring)."""
    if status != "running" or source is None or not live:
        return False
    return source.state == "backoff" or (source.state == "connecting" and source.last_error is not None)


MAX_GAP_SPANS = 64
"""Holes a stream status lists by position (the longest ones): what the page's coverage bar draws."""


def covered_span(
    spans: Sequence[tuple[float, float]], holes: Sequence[tuple[float, float]], limit: int = MAX_GAP_SPANS
) -> dict[str, object] | None:
    """``{"start", "end", "holes"}`` of the memory's coverage intervals ``spans``; None before any.

    ``start``/``end``: the first and last ingested stream second; ``holes``: the ``limit`` longest
    ``holes`` as ``[start, end]`` pairs in time order (ms-rounded). The status stays bounded however
    many holes the memory keeps; ``gaps`` still counts them all.
    """
    if not spans:
        return None
    longest = sorted(holes, key=lambda h: h[1] - h[0], reverse=True)[:limit]
    return {
        "start": round(spans[0][0], 3),
        "end": round(spans[-1][1], 3),
        "holes": [[round(a, 3), round(b, 3)] for a, b in sorted(longest)],
    }


def gap_totals(holes: Sequence[tuple[float, float]], forgotten: float = 0.0) -> tuple[int, float]:
    """(count, seconds) of coverage ``holes`` ``(start, end)``, plus ``forgotten`` seconds of merged ones."""
    return len(holes), float(sum(end - start for start, end in holes)) + forgotten


def assess(
    status: str,
    error_code: str | None,
    source: SourceStats | None,
    *,
    live: bool = True,
    snapshot_age: float,
    snapshot_seconds: float,
    gaps: tuple[int, float],
) -> StreamHealth:
    """The :class:`StreamHealth` of a stream in lifecycle ``status`` (see the module docstring)."""
    reconnecting = is_reconnecting(status, source, live=live)
    stale = status == "running" and snapshot_age > STALE_PERIODS * snapshot_seconds
    reasons: list[str] = []
    if status == "failed":
        reasons.append(f"failed: {error_code or 'internal'}")
    if reconnecting:
        reasons.append("reconnecting")
    if stale:
        reasons.append("snapshot stale")
    return StreamHealth(
        up=status in ("starting", "running") and not reconnecting,
        reconnecting=reconnecting,
        snapshot_age=snapshot_age,
        snapshot_stale=stale,
        gaps=gaps[0],
        gap_seconds=gaps[1],
        reasons=tuple(reasons),
    )
