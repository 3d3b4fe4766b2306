"""A Ray cluster on loopback for the gateway tests: a head and two worker nodes, separate processes.

One cluster serves the whole package (starting one costs seconds on two
cores); a test that removes a worker node adds a fresh one back before it
ends. Every Ray process is stopped by the session finalizer, even when a
test fails. Skipped when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

# Loopback only: Ray resolves 127.0.0.1 in a driver's address to the machine's routable IP unless
# it believes the host runs no real cluster (its rule for laptops); said before Ray is imported,
# inherited by every node and worker it starts.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from agent.service.config import RayConfig  # noqa: E402
from agent.service.pipeline import Service  # noqa: E402
from tests.agent.service.helpers import running  # noqa: E402

LOOPBACK = "127.0.0.1"
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 1,
    "node_ip_address": LOOPBACK,
    "object_store_memory": 80 * 1024**2,
}
"""A worker node: one CPU (each actor reserves a quarter), a small object store, loopback only."""

Running = Callable[..., AbstractAsyncContextManager[tuple[Service, str]]]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Head (no CPUs: streams go to the workers) plus two worker nodes, all on 127.0.0.1."""
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK, "include_dashboard": False},
    )
    try:
        for _ in range(2):
            c.add_node(**NODE_ARGS)
        c.wait_for_nodes(timeout=60)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture
def two_workers(cluster: Cluster) -> Iterator[Cluster]:
    """``cluster``, given back with two live worker nodes however many the test removed.

    Nodes are added here, in the main thread: Ray installs signal handlers when it starts one.
    """
    yield cluster
    for _ in range(2 - len(cluster.worker_nodes)):
        cluster.add_node(**NODE_ARGS)
    cluster.wait_for_nodes(timeout=60)


def ray_config(cluster: Cluster, storage: Path, **over: Any) -> RayConfig:
    """Small actors, short deadlines and polls: failures show within seconds."""
    base: dict[str, Any] = {
        "address": cluster.address,
        "storage": storage,
        "num_cpus": 0.25,
        "deadline_seconds": 3.0,
        "poll_seconds": 0.25,
        "encoder_num_cpus": 0.25,  # the pool actor beside the streams on a one-CPU worker
    }
    return RayConfig(**{**base, **over})


def on_cluster(cluster: Cluster, **over: Any) -> Running:
    """``tests.agent.service.helpers.running`` with the streams on ``cluster`` (same signature)."""

    @asynccontextmanager
    async def run(tmp_path: Path, settings: Any = None, **service: Any) -> AsyncIterator[tuple[Service, str]]:
        service.setdefault("ray", ray_config(cluster, tmp_path / "shared", **over))
        async with running(tmp_path, settings, **service) as out:
            yield out

    return run
