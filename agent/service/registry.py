"""The service's registry: which streams it runs (persisted) and when their state is snapshotted.

Stream list: the specs as given by ``streams.add`` or the config, kept in
``INDEX/service_streams.json`` (atomic JSON, versioned) so that a restarted
service resumes the same streams. The file also lists the streams removed
(``streams.remove``): their folders (kept unless purged) are not opened
again, and a configured stream that was removed stays removed until it is
added again (``streams.add`` of its id takes it off the list).

Snapshots: every ``snapshot_seconds`` the registry asks each shard to
snapshot its streams (one generation per stream: the previous one stays
whole when a snapshot fails). The loop survives every failure: it logs the
first one of a shard in full, then at most one line per ``log_every``
seconds while the failures go on, and one line when snapshots succeed
again; it retries at the next period. :meth:`StreamRegistry.close` stops the
loop (idempotent); the shards take their final snapshot when they close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, IndexStoreError
from agent.service.config import StreamSpec, parse_spec
from agent.service.shard import StreamShard
from agent.store.atomic import write_json
from agent.store.versioned import read_versioned

log = logging.getLogger(__name__)

STREAMS_FILE = "service_streams.json"
STREAMS_VERSION = 1


@dataclass(frozen=True)
class Unloadable:
    """A persisted stream spec this process cannot load (kept, reported, not started)."""

    id: str
    reason: str
    raw: Any


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


class StreamRegistry:
    """Persisted stream specs and the periodic snapshot task of a set of shards."""

    def __init__(self, index: Path, *, snapshot_seconds: float, log_every: float = 60.0) -> None:
        self.path = Path(index) / STREAMS_FILE
        self.snapshot_seconds = snapshot_seconds
        self.snapshots_taken = 0
        self.snapshot_failures = 0
        """Snapshot rounds in which some shard failed."""
        self.unloadable: list[Unloadable] = []
        self.removed: set[str] = set()
        """Streams removed: not restored (configured ones included), their folders not opened again."""
        self.log_every = log_every
        self._failing: dict[int, tuple[float, int]] = {}  # shard -> (last logged, failures since)
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------- stream list
    def restore(self, configured: Iterable[StreamSpec] = ()) -> list[StreamSpec]:
        """Streams to start: the persisted ones, then configured ones with a new id (blocking read).

        Raises IndexStoreError when the file itself is unreadable or of another
        version. One persisted spec that no longer loads (its kind's module is
        missing here — WHIP without aiortc — or was removed) does not stop the
        others: it is logged, listed in :attr:`unloadable` (id, reason; shown
        by ``/healthz``) and written back unchanged by :meth:`save`, so it
        returns when its kind does.
        """
        data = read_versioned(self.path, STREAMS_VERSION, what="stream list")
        entries = [] if data is None else data.get("streams")
        if not isinstance(entries, list):
            raise IndexStoreError(f"{self.path}: unreadable stream list: 'streams' is not a list")
        removed = [] if data is None else data.get("removed", [])
        if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
            raise IndexStoreError(f"{self.path}: unreadable stream list: 'removed' is not a list of ids")
        self.removed = set(removed)
        restored: list[StreamSpec] = []
        self.unloadable = []
        for raw in entries:
            try:
                restored.append(parse_spec(raw))
            except (ConfigError, KeyError, TypeError) as exc:
                sid = raw.get("id") if isinstance(raw, dict) else None
                log.error("%s: stream %r not restored (kept in the list): %s", self.path, sid, exc)
                self.unloadable.append(Unloadable(str(sid), _first_line(exc), raw))
        known = {s.id for s in restored} | {u.id for u in self.unloadable} | self.removed
        return [*restored, *(s for s in configured if s.id not in known)]

    def mark_removed(self, stream: str) -> None:
        """Remember that ``stream`` was removed: not restored, not reopened (persisted by :meth:`save`)."""
        self.removed.add(stream)

    def save(self, specs: Iterable[StreamSpec]) -> None:
        """Write the stream list atomically, unloadable entries included (blocking: call in a thread).

        A removed id among ``specs`` (added again) leaves the removed list.
        """
        data = [s.model_dump(mode="json", exclude_defaults=True) for s in specs]
        self.removed -= {d["id"] for d in data}
        data += [u.raw for u in self.unloadable if u.id not in {d.get("id") for d in data}]
        write_json(self.path, {"version": STREAMS_VERSION, "streams": data, "removed": sorted(self.removed)})

    # ------------------------------------------------------------ snapshots
    def start_snapshots(self, shards: Sequence[StreamShard]) -> None:
        """Snapshot ``shards`` every ``snapshot_seconds`` until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(shards), name="snapshots")

    async def _loop(self, shards: Sequence[StreamShard]) -> None:
        while True:
            await asyncio.sleep(self.snapshot_seconds)
            try:
                await self.snapshot(shards)
            except Exception:  # a bug in the round itself: the loop still goes on
                log.exception("snapshot round failed; retrying in %.1f s", self.snapshot_seconds)

    async def snapshot(self, shards: Sequence[StreamShard]) -> None:
        """Snapshot every shard now; one shard's failure does not stop the others (logged, rate-limited)."""
        failed = False
        for i, shard in enumerate(shards):
            try:
                await shard.snapshot()
            except Exception as exc:  # keep snapshotting the other shards; the old generation stays
                failed = True
                self._log_failure(i, exc)
            else:
                self._log_recovery(i)
        self.snapshots_taken += 1
        self.snapshot_failures += int(failed)

    def _log_failure(self, shard: int, exc: Exception) -> None:
        now = time.monotonic()
        last, since = self._failing.get(shard, (None, 0))
        if last is None:
            log.error("snapshot failed (retrying every %.1f s): %s", self.snapshot_seconds, exc, exc_info=exc)
            self._failing[shard] = (now, 0)
        elif now - last >= self.log_every:
            log.error("snapshot still failing (%d more failures): %s", since + 1, _first_line(exc))
            self._failing[shard] = (now, 0)
        else:
            self._failing[shard] = (last, since + 1)

    def _log_recovery(self, shard: int) -> None:
        if self._failing.pop(shard, None) is not None:
            log.warning("snapshots succeed again")

    async def close(self) -> None:
        """Stop the snapshot loop (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
