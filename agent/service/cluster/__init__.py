"""Streams on a Ray cluster: the same service, its streams spread over machines.

``vmr serve --ray ADDRESS`` (``[service.ray]``) keeps the websocket gateway
in this process and runs each stream as a Ray actor
(:class:`~agent.service.cluster.actor.StreamActor`, a one-stream
:class:`~agent.service.local_shard.LocalShard`) placed over the cluster's
nodes; :class:`~agent.service.cluster.gateway.RayShard` is the
:class:`~agent.service.shard.StreamShard` the service talks to. Ray is an
optional extra (``pip install 'vmr[ray]'``): nothing here imports it until a
Ray shard starts, and then :func:`require_ray` turns its absence into a
typed error.

The model is shared: ``[service.ray] encoders = N`` pool actors
(:mod:`agent.service.cluster.encoder_pool`) load it and join the super-images
of every stream into shared passes; stream actors load none. With
``encoders = 0`` each stream actor loads its own, as before the pool.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

from agent.errors import ConfigError
from agent.service.config import RayConfig


def require_ray() -> ModuleType:
    """The ``ray`` module; ConfigError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("service.ray needs the Ray extra: pip install 'vmr[ray]'") from exc
    return ray


def connect(ray: ModuleType, rc: RayConfig) -> bool:
    """Join the cluster at ``rc.address`` (blocking); False when this process had joined one already.

    Actors import ``agent`` from where this process does (``PYTHONPATH``):
    on a cluster of several machines vmr must be installed at that path on
    every node (or importable there anyway).
    """
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        ray.init(
            address=rc.address,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {rc.address}: {exc}") from exc
    return True


def disconnect(ray: ModuleType) -> None:
    """Leave the cluster (blocking); the cluster and its other drivers go on."""
    ray.shutdown()
