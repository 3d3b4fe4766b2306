"""Encode requests of many streams joined into shared forward passes (no Ray here).

The encoder pool's actors (:mod:`agent.service.cluster.encoder_pool`) serve
``encode_images`` calls arriving concurrently from every stream actor. A
:class:`Batcher` collects them: the first request waiting opens a batch, which
takes further requests until it holds ``batch_size`` images or ``max_wait``
seconds have passed, then runs *one* call of the batch function (in a thread:
the actor's event loop keeps accepting requests meanwhile) and hands each
request its own rows back. While a forward runs, the next requests queue, so a
busy pool fills its batches without waiting at all; an idle one adds at most
``max_wait`` to a lone request.

Ray Serve's ``@serve.batch`` does this for a Serve deployment, but not here:
it needs the ``ray[serve]`` extra (grpc, fastapi, uvicorn) and, in Ray 2.60,
``serve.get_replica_context()`` when its queue is made, which raises outside a
Serve replica; it also counts calls, where our requests carry several images.

Queue policy: at most ``queue_size`` requests wait; one more *waits* to be
queued (backpressure onto the calling stream's encoder worker, which in turn
holds its stream's ingest, as in one process). A request is never dropped: it
is answered with rows or with :class:`~agent.errors.EncodingError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.errors import EncodingError
from agent.types import RGBImage

log = logging.getLogger(__name__)

BatchFn = Callable[[list[RGBImage]], np.ndarray]
"""Blocking: (n, dim) rows for n images, in order (runs in a worker thread)."""


@dataclass
class _Request:
    images: list[RGBImage]
    stream: str
    future: asyncio.Future[np.ndarray]


@dataclass
class BatchStats:
    """What a batcher has done: the test and the bench read whether batches mixed streams."""

    passes: int = 0
    """Batch-function calls that succeeded."""
    images: int = 0
    requests: int = 0
    errors: int = 0
    """Batch-function calls that raised (each of their requests got EncodingError)."""
    max_images: int = 0
    """Most images in one pass."""
    max_streams: int = 0
    """Most distinct streams in one pass."""
    mixed_passes: int = 0
    """Passes holding images of two streams or more."""
    streams: dict[str, int] = field(default_factory=dict)
    """Images encoded by stream."""


class Batcher:
    """Joins concurrent :meth:`encode` calls into calls of ``fn``; see the module docstring.

    Needs a running loop for :meth:`encode`; :meth:`close` is idempotent,
    cancels the collecting task and fails every request not yet answered,
    including callers still blocked on a full queue.
    """

    def __init__(self, fn: BatchFn, *, batch_size: int, max_wait: float, queue_size: int = 64) -> None:
        self.fn = fn
        self.batch_size = max(1, batch_size)
        self.max_wait = max(0.0, max_wait)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(max(1, queue_size))
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Every caller's future until it is answered: close() fails them all, wherever the request
        # is (queued, in a pass, or its caller still blocked in put on a full queue).
        self._pending: set[asyncio.Future[np.ndarray]] = set()

    async def encode(self, images: Sequence[RGBImage], stream: str = "") -> np.ndarray:
        """(n, dim) float32 rows of ``images`` (n >= 0), encoded in a pass shared with other callers.

        Raises EncodingError when the pass fails or the batcher is closed.
        """
        if self._closed:
            raise EncodingError("the encoder is closing")
        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="encoder-batcher")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        try:
            await self._queue.put(_Request(list(images), stream, fut))
        except BaseException:
            fut.cancel()  # never queued (the caller was cancelled while blocked on a full queue)
            raise
        if self._closed:
            # close() drained the queue and so woke this put: nobody reads the queue now. Draining
            # again takes this request out and wakes the next blocked caller, which does the same.
            self._drain()
            _fail_one(fut, "the encoder closed")
        return await fut

    async def close(self) -> None:
        """Stop collecting; requests still queued get EncodingError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._drain()
        for fut in list(self._pending):
            _fail_one(fut, "the encoder closed")

    def _drain(self) -> None:
        """Fail what is queued (the collecting task is gone)."""
        while not self._queue.empty():
            _fail_one(self._queue.get_nowait().future, "the encoder closed")

    async def _run(self) -> None:
        while True:
            await self._serve(await self._collect())

    async def _collect(self) -> list[_Request]:
        """The first waiting request and those that join it (up to batch_size images or max_wait)."""
        batch = [await self._queue.get()]
        count = len(batch[0].images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while count < self.batch_size:
            if self._queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:  # a cancelled get leaves its item queued (Queue.get takes it after the wait)
                    req = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                req = self._queue.get_nowait()
            batch.append(req)
            count += len(req.images)
        return batch

    async def _serve(self, batch: list[_Request]) -> None:
        images = [img for req in batch for img in req.images]
        try:
            rows = await asyncio.to_thread(self.fn, images)
            if len(rows) != len(images):
                raise ValueError(f"{len(rows)} rows for {len(images)} images")
        except asyncio.CancelledError:
            self._fail(batch, "the encoder closed")
            raise
        except Exception as exc:  # one failed pass fails its requests, never the batcher
            log.exception("encoder pass of %d images failed", len(images))
            self.stats.errors += 1
            self._fail(batch, f"encoder pass failed: {type(exc).__name__}: {exc}", exc)
            return
        self._count(batch, len(images))
        start = 0
        for req in batch:
            stop = start + len(req.images)
            if not req.future.done():  # the caller may have given up (cancelled)
                req.future.set_result(rows[start:stop])
            start = stop

    def _count(self, batch: list[_Request], n: int) -> None:
        s = self.stats
        s.passes += 1
        s.images += n
        s.requests += len(batch)
        s.max_images = max(s.max_images, n)
        streams = {req.stream for req in batch}
        s.max_streams = max(s.max_streams, len(streams))
        s.mixed_passes += len(streams) > 1
        for req in batch:
            s.streams[req.stream] = s.streams.get(req.stream, 0) + len(req.images)

    @staticmethod
    def _fail(batch: list[_Request], why: str, cause: BaseException | None = None) -> None:
        for req in batch:
            _fail_one(req.future, why, cause)


def _fail_one(fut: asyncio.Future[np.ndarray], why: str, cause: BaseException | None = None) -> None:
    """Answer ``fut`` with EncodingError (chained to ``cause``, as ``raise ... from``) unless answered."""
    if fut.done():
        return
    err = EncodingError(why)
    err.__cause__ = cause
    fut.set_exception(err)
