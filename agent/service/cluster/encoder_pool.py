"""The cluster's shared encoder: a pool of batching Ray actors that every stream actor calls.

With ``[service.ray] encoders = N`` (N > 0) the gateway starts N
:class:`EncoderActor`\\ s (each loads the prescreen model once, on a GPU where
``encoder_num_gpus`` gives it one: the ``auto`` backend then picks torch on
CUDA, else OpenVINO on the CPU) and hands their handles to every stream actor.
A stream actor's :class:`~agent.service.local_shard.LocalShard` then encodes
through a :class:`RemoteEncoder` — the :class:`~agent.models.encoder.Encoder`
contract, so its batch worker, memory and refinement do not change — and
loads no CLIP model of its own. Each pool actor joins the concurrent requests
of all streams into shared passes (:class:`~agent.service.cluster.batcher.Batcher`).
``encoders = 0`` keeps one encoder per stream actor (no pool).

Images cross as lists of uint8 arrays: Ray pickles numpy buffers out of band
into its object store (no copy on the same node). Errors are translated
here: a pool actor that died is restarted by Ray (``max_restarts``) and its
call retried once by Ray (``max_task_retries``); what still fails, or does
not answer in ``call_seconds``, is :class:`~agent.errors.EncodingError`, which
the stream's batch worker counts as a failed batch, as one process does.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.channels.retrieval import Query, QueryVectors, query_roles
from agent.config import EncoderConfig
from agent.errors import EncodingError, VmrError
from agent.process_memory import process_memory
from agent.service.cluster.batcher import Batcher
from agent.service.config import RayConfig
from agent.types import RGBImage

POOL_RESTARTS = -1
"""Ray restarts a dead pool actor without limit: the pool is the service's, not one stream's."""


@dataclass(frozen=True, slots=True)
class EncoderFacts:
    """What a stream actor needs to know of the pool's model without loading it."""

    name: str
    dim: int
    image_size: int
    meaningless: bool
    batch_size: int
    note: str | None
    backend: str


@dataclass(frozen=True)
class PoolRef:
    """The pool as a stream actor receives it: the actors' handles and their model's facts."""

    handles: tuple[Any, ...]
    facts: EncoderFacts
    call_seconds: float


class EncoderActor:
    """One pool member (a plain class: the gateway wraps it with ``ray.remote``)."""

    def __init__(self, cfg: EncoderConfig, max_wait: float, queue: int) -> None:
        from agent.models.encoder import load_encoder

        self.encoder = load_encoder(cfg)
        self.batcher = Batcher(
            self.encoder.encode_images,
            batch_size=self.encoder.batch_size,
            max_wait=max_wait,
            queue_size=queue,
        )

    def facts(self) -> EncoderFacts:
        e = self.encoder
        return EncoderFacts(e.name, e.dim, e.image_size, e.meaningless, e.batch_size, e.note, e.backend.name)

    async def encode_images(self, images: list[RGBImage], stream: str) -> np.ndarray:
        """(n, dim) rows of ``images``, in a pass shared with other streams' requests."""
        return await self.batcher.encode(images, stream)

    async def encode_text(self, texts: list[str]) -> np.ndarray:
        """(n, dim) rows of query texts (queries are rare: not batched)."""
        return await asyncio.to_thread(self.encoder.encode_text, texts)

    def stats(self) -> dict[str, Any]:
        """The batcher's counters (:class:`~agent.service.cluster.batcher.BatchStats` fields)."""
        s = self.batcher.stats
        return {**s.__dict__, "streams": dict(s.streams)}

    def memory(self) -> dict[str, float]:
        return process_memory()

    async def close(self) -> None:
        await self.batcher.close()


class _Backend:
    """The ``backend`` an encoder names (query vectors are cached per model and backend)."""

    def __init__(self, name: str) -> None:
        self.name = name


class RemoteEncoder:
    """The :class:`~agent.models.encoder.Encoder` of a stream actor whose model is in the pool.

    Blocking calls, as a local encoder's: the shard calls it from its worker
    and query threads, never its event loop. Each call goes to the pool actor
    with the fewest calls in flight from this process (ties in turn).
    Raises EncodingError when the pool does not answer.
    """

    def __init__(self, pool: PoolRef, stream: str = "") -> None:
        f = pool.facts
        self.name, self.dim, self.image_size = f.name, f.dim, f.image_size
        self.meaningless, self.batch_size, self.note = f.meaningless, f.batch_size, f.note
        self.backend = _Backend(f"pool:{f.backend}")
        self.stream = stream
        """Named in the pool's statistics."""
        self.pool = pool
        self.calls = 0
        self._in_flight = [0] * len(pool.handles)
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def encode_images(self, images: Sequence[RGBImage]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._call("encode_images", list(images), self.stream)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._call("encode_text", list(texts))

    def _pick(self) -> int:
        with self._lock:
            n = len(self._in_flight)
            start = next(self._turn) % n
            k = min(range(n), key=lambda i: (self._in_flight[i], (i - start) % n))
            self._in_flight[k] += 1
            self.calls += 1
            return k

    def _call(self, method: str, *args: Any) -> np.ndarray:
        from agent.service.cluster import require_ray

        ray = require_ray()
        k = self._pick()
        try:
            ref = getattr(self.pool.handles[k], method).remote(*args)
            rows = ray.get(ref, timeout=self.pool.call_seconds)
        except ray.exceptions.GetTimeoutError as exc:
            raise EncodingError(f"the encoder pool did not answer in {self.pool.call_seconds:.0f} s") from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, VmrError):
                raise exc.cause from exc
            raise EncodingError(f"encoder pool: {type(exc.cause).__name__}") from exc
        except ray.exceptions.RayError as exc:  # the actor died twice, or its node is gone
            raise EncodingError(f"encoder pool unavailable: {type(exc).__name__}") from exc
        finally:
            with self._lock:
                self._in_flight[k] -= 1
        # The object store's arrays are read-only: the memory may normalise rows in place.
        return np.array(rows, dtype=np.float32)


def pool_options(rc: RayConfig) -> dict[str, Any]:
    """``ray.remote(...).options`` of a pool actor: its resources, restarts and retries."""
    options: dict[str, Any] = {
        "num_cpus": rc.encoder_num_cpus,
        "num_gpus": rc.encoder_num_gpus,
        "max_restarts": POOL_RESTARTS,
        "max_task_retries": 1,  # a call lost with its actor runs once more on the restarted one
        "max_concurrency": 1000,  # every stream's requests wait on the actor's loop together
        "scheduling_strategy": "SPREAD",  # several pool actors: one per node first
    }
    if rc.encoder_resources:
        options["resources"] = dict(rc.encoder_resources)
    return options


class EncoderPool:
    """The gateway's side: starts, describes and ends the pool actors (see the module docstring)."""

    def __init__(self, ray: Any, rc: RayConfig, cfg: EncoderConfig, *, query_grid: int = 1) -> None:
        """``query_grid``: what an image query is tiled at for the prescreen (``Settings.query_grid``)."""
        self.ray, self.rc, self.cfg = ray, rc, cfg
        self.query_grid = query_grid
        self.vectors = QueryVectors()  # the gateway's: a repeated query skips the pool
        self.handles: list[Any] = []
        self.ref: PoolRef | None = None
        self._gateway: RemoteEncoder | None = None
        self._closed = False

    async def start(self, limit: float) -> PoolRef:
        """Start ``rc.encoders`` actors and wait (up to ``limit`` s) for each model to load.

        Raises EncodingError when an actor cannot start (its handles are ended).
        """
        from agent.service.cluster.placement import Unreachable

        self.handles = await asyncio.to_thread(self._create)
        try:
            facts = await asyncio.gather(*(self._call(h.facts, limit) for h in self.handles))
        except (Unreachable, VmrError) as exc:
            await self.close()
            raise EncodingError(f"the encoder pool did not start: {exc}") from exc
        self.ref = PoolRef(tuple(self.handles), facts[0], self.rc.encoder_call_seconds)
        return self.ref

    def _create(self) -> list[Any]:
        cls = self.ray.remote(EncoderActor).options(**pool_options(self.rc))
        wait = self.rc.encoder_max_wait_ms / 1000.0
        return [cls.remote(self.cfg, wait, self.rc.encoder_queue) for _ in range(self.rc.encoders)]

    def encoder(self) -> RemoteEncoder:
        """An encoder for the gateway's own calls (query vectors), blocking like any other."""
        if self.ref is None:
            raise EncodingError("the encoder pool is not started")
        if self._gateway is None:
            self._gateway = RemoteEncoder(self.ref, "gateway")
        return self._gateway

    async def query_vectors(self, query: Query) -> dict[str, np.ndarray]:
        """``query``'s (dim,) vectors by role (:func:`query_roles`: the pool's model is every role
        when ``settings.refine`` is unset), as a stream actor would encode them itself;
        EncodingError when the pool does not answer."""
        enc = self.encoder()
        return await asyncio.to_thread(query_roles, query, self.vectors, enc, enc, self.query_grid)

    async def stats(self, limit: float) -> list[dict[str, Any]]:
        """Each pool actor's batch counters (and process memory, ``memory``), in handle order."""
        stats = await asyncio.gather(*(self._call(h.stats, limit) for h in self.handles))
        mem = await asyncio.gather(*(self._call(h.memory, limit) for h in self.handles))
        return [{**s, "memory": m} for s, m in zip(stats, mem, strict=True)]

    async def _call(self, method: Any, limit: float) -> Any:
        from agent.service.cluster.placement import await_ref, submit

        ref = await submit(method, client=self.rc.address.startswith("ray://"))
        return await await_ref(self.ray, ref, limit)

    async def close(self) -> None:
        """End the pool actors; idempotent."""
        if self._closed:
            return
        self._closed = True
        handles, self.handles = self.handles, []
        for h in handles:
            await asyncio.to_thread(self.ray.kill, h)
