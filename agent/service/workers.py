"""The service's batch workers by name, behind one submit.

A channel names the worker each of its work items needs
(:attr:`~agent.channels.base.WorkItem.worker`: ``"image"`` is the prescreen
encoder today; a speech or OCR channel brings its own). The stream runner
submits through :class:`Workers` and never knows which workers exist, so a
new channel with a new kind of work needs one more entry where the shard
builds its workers, and nothing else in the service.

An item naming a worker this service does not run is a configuration bug: the
submit raises :class:`~agent.errors.ConfigError` (the stream fails with that
typed error) instead of queueing work nobody will ever take.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from agent.channels.base import WorkCounters, WorkItem, group_by_worker
from agent.service.batch_worker import BatchWorker, Sink


class Workers:
    """Named :class:`BatchWorker` s; ``close()`` is idempotent and closes them all."""

    def __init__(self, workers: Mapping[str, BatchWorker]) -> None:
        if not workers:
            raise ValueError("a service needs at least one batch worker")
        self._workers = dict(workers)

    def __getitem__(self, name: str) -> BatchWorker:
        return self._workers[name]

    def __iter__(self) -> Iterator[BatchWorker]:
        return iter(self._workers.values())

    def start(self) -> None:
        for worker in self:
            worker.start()

    async def close(self) -> None:
        for worker in self:
            await worker.close()

    def open(self, stream: str, sink: Sink) -> None:
        """Give ``stream`` a lane in every worker (an idle lane costs nothing)."""
        for worker in self:
            worker.open(stream, sink)

    def forget(self, stream: str) -> None:
        for worker in self:
            worker.forget(stream)

    async def submit(self, stream: str, items: list[WorkItem]) -> None:
        """Queue each item on the worker it names (order kept per worker; backpressure as BatchWorker)."""
        by_worker = group_by_worker(items, lambda item: item, self._workers, runner="this service")
        for name, batch in by_worker.items():
            await self._workers[name].submit(stream, batch)

    async def drain(self, stream: str) -> None:
        """Wait until everything ``stream`` submitted to any worker is committed or dropped."""
        for worker in self:
            await worker.drain(stream)

    def depths(self) -> dict[str, int]:
        """Items queued or in flight per stream, over every worker."""
        total: dict[str, int] = {}
        for worker in self:
            for stream, depth in worker.depths().items():
                total[stream] = total.get(stream, 0) + depth
        return total

    def counters(self) -> dict[tuple[str, str], WorkCounters]:
        """Failed/retried/dropped per (stream, channel), over every worker."""
        out: dict[tuple[str, str], WorkCounters] = {}
        for worker in self:
            for key, c in worker.counters().items():
                acc = out.setdefault(key, WorkCounters())
                acc.failed += c.failed
                acc.retried += c.retried
                acc.dropped += c.dropped
        return out
