"""The service's registry: which streams it runs (persisted) and when their state is snapshotted.

Stream list: the specs as given by ``streams.add`` or the config, kept in
``INDEX/service_streams.json`` (atomic JSON, versioned) so that a restarted
service resumes the same streams. Snapshots: every ``snapshot_seconds`` the
registry asks each shard to snapshot its streams (atomic per file); a failed
snapshot leaves the previous one in place. :meth:`StreamRegistry.close`
stops the loop (idempotent); the shards take their final snapshot when they
close.
"""

from __future__ import annotations

import asyncio
import logging
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

    def __init__(self, index: Path, *, snapshot_seconds: float) -> None:
        self.path = Path(index) / STREAMS_FILE
        self.snapshot_seconds = snapshot_seconds
        self.snapshots_taken = 0
        self.unloadable: list[Unloadable] = []
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
        restored: list[StreamSpec] = []
        self.unloadable = []
        for raw in entries:
            try:
                restored.append(parse_spec(raw))
            except (ConfigError, KeyError, TypeError) as exc:
                sid = raw.get("id") if isinstance(raw, dict) else None
                log.error("%s: stream %r not restored (kept in the list): %s", self.path, sid, exc)
                self.unloadable.append(Unloadable(str(sid), _first_line(exc), raw))
        known = {s.id for s in restored} | {u.id for u in self.unloadable}
        return [*restored, *(s for s in configured if s.id not in known)]

    def save(self, specs: Iterable[StreamSpec]) -> None:
        """Write the stream list atomically, unloadable entries included (blocking: call in a thread)."""
        data = [s.model_dump(mode="json", exclude_defaults=True) for s in specs]
        data += [u.raw for u in self.unloadable if u.id not in {d.get("id") for d in data}]
        write_json(self.path, {"version": STREAMS_VERSION, "streams": data})

    # ------------------------------------------------------------ snapshots
    def start_snapshots(self, shards: Sequence[StreamShard]) -> None:
        """Snapshot ``shards`` every ``snapshot_seconds`` until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(shards), name="snapshots")

    async def _loop(self, shards: Sequence[StreamShard]) -> None:
        while True:
            await asyncio.sleep(self.snapshot_seconds)
            await self.snapshot(shards)

    async def snapshot(self, shards: Sequence[StreamShard]) -> None:
        """Snapshot every shard now; one shard's failure does not stop the others."""
        for shard in shards:
            try:
                await shard.snapshot()
            except Exception:  # keep snapshotting the other shards; the old files stay
                log.exception("snapshot of a shard failed")
        self.snapshots_taken += 1

    async def close(self) -> None:
        """Stop the snapshot loop (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
