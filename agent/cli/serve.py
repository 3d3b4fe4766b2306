"""``vmr serve`` and ``vmr watch``: registered into the main CLI by :func:`register`.

``vmr serve --config examples/vmr.toml`` runs the service until SIGINT or
SIGTERM (then snapshots and exits cleanly); flags override the file:
``vmr serve --model tiny-random --index /tmp/vmr --port 0 --file video.mp4 --realtime``.
``vmr watch --url ws://HOST:PORT "text"`` prints a standing query's events
as JSON lines until Ctrl-C.

Exposure: ``vmr serve`` refuses to listen on anything but a loopback address
without a token (``service.token`` or ``VMR_TOKEN``): anyone who reaches the
port could add and remove streams and read stored frames. ``--insecure``
overrides this, with a warning logged at every start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.cli.options import add_precision_option, add_random_weights_option
from agent.config import Settings, env_str
from agent.errors import ConfigError
from agent.service.config import (
    RayConfig,
    ServeFile,
    ServiceConfig,
    StreamSpec,
    is_loopback,
    load_serve_file,
    parse_serve_data,
    parse_spec,
)

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``watch`` to the ``vmr`` command line."""
    ps = subparsers.add_parser("serve", help="run the live service (websocket API, HTTP, ingestion)")
    ps.add_argument("--config", type=Path, default=None, help="service config (.toml or .json)")
    ps.add_argument("--host", default=None)
    ps.add_argument("--port", type=int, default=None, help="0 picks a free port (printed at start)")
    ps.add_argument(
        "--index", type=Path, default=None, help="index directory (memories, frames, stream list)"
    )
    ps.add_argument("--model", default=None, help="open_clip model, or tiny-random (meaningless, tests/demo)")
    ps.add_argument("--pretrained", default=None)
    ps.add_argument("--checkpoint", type=Path, default=None)
    ps.add_argument("--threads", type=int, default=None)
    add_random_weights_option(ps)
    ps.add_argument("--backend", choices=["auto", "torch", "openvino"], default=None)
    add_precision_option(ps, default=None)
    ps.add_argument("--snapshot-seconds", type=float, default=None)
    ps.add_argument("--file", type=Path, action="append", default=[], help="add a file stream (repeatable)")
    ps.add_argument("--realtime", action="store_true", help="replay --file streams at stream pace")
    ps.add_argument("--loop", action="store_true", help="loop --file streams")
    ps.add_argument(
        "--media-root",
        type=Path,
        action="append",
        default=[],
        help="folder clients may add file/segment streams from (repeatable; adds to the config's)",
    )
    ps.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run each stream as an actor on this Ray cluster (HOST:PORT of its head, or auto); "
        "needs the 'ray' extra",
    )
    ps.add_argument(
        "--ray-storage",
        type=Path,
        default=None,
        help="folder every Ray node reads and writes for the streams' snapshots (default: --index)",
    )
    ps.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone reaching the port controls the service)",
    )
    ps.set_defaults(func=cmd_serve)

    pw = subparsers.add_parser("watch", help="print a standing query's events from a running service")
    pw.add_argument("text", nargs="?")
    pw.add_argument("--url", required=True, help="ws://HOST:PORT")
    pw.add_argument("--image", type=Path, default=None)
    pw.add_argument("--stream", action="append", default=None)
    pw.add_argument("--threshold", type=float, default=None, help="absolute cosine (default: relative)")
    pw.add_argument("--token", default=None, help="auth token (default VMR_TOKEN)")
    pw.set_defaults(func=cmd_watch)


def serve_config(a: argparse.Namespace) -> ServeFile:
    """The config file (or defaults) with the command-line flags applied; validated."""
    base = load_serve_file(a.config) if a.config else parse_serve_data({})
    service: dict[str, Any] = {}
    for key, value in (
        ("host", a.host),
        ("port", a.port),
        ("index", a.index),
        ("snapshot_seconds", a.snapshot_seconds),
    ):
        if value is not None:
            service[key] = value
    if a.ray is not None or a.ray_storage is not None:
        service["ray"] = ray_config(base.service, a.ray, a.ray_storage)
    if a.media_root:
        sources = base.service.sources
        roots = [*sources.media_roots, *(p.resolve() for p in a.media_root)]
        service["sources"] = sources.model_copy(update={"media_roots": roots})
    settings = base.settings
    if a.model is not None or a.random_weights or a.backend is not None or a.precision is not None:
        from agent.cli.options import encoder_config

        # Flags override the file's [settings.prescreen]; --model starts from that model's defaults.
        pre, named = settings.prescreen, a.model is not None
        prescreen = encoder_config(
            a.model if named else pre.model,
            a.pretrained if named else pre.pretrained,
            a.checkpoint if named else pre.checkpoint,
            a.threads if a.threads is not None else pre.threads,
            random_weights=a.random_weights or (pre.random_weights and not named),
            backend=a.backend or pre.backend,
            precision=a.precision or pre.precision,
        )
        if not named:
            prescreen = prescreen.model_copy(update={"batch_size": pre.batch_size})
        # Only the fields the file set: a full dump would mark every memory rule as set, so an
        # existing index would be refused instead of keeping its own (FOLLOW_INDEX).
        settings = Settings.model_validate(
            {**settings.model_dump(exclude_unset=True), "prescreen": prescreen}
        )
    streams = list(base.streams)
    for path in a.file:
        from agent.cli.options import stream_id_for

        streams.append(
            parse_spec(
                {
                    "id": stream_id_for(path),
                    "kind": "file",
                    "path": str(path.resolve()),
                    "realtime": a.realtime,
                    "loop": a.loop,
                }
            )
        )
    return base.model_copy(
        update={"service": base.service.model_copy(update=service), "settings": settings, "streams": streams}
    )


def ray_config(service: ServiceConfig, address: str | None, storage: Path | None) -> RayConfig:
    """``[service.ray]`` with ``--ray``/``--ray-storage`` applied; ConfigError when invalid."""
    data = {} if service.ray is None else service.ray.model_dump(exclude_unset=True)
    if address is not None:
        data["address"] = address
    if storage is not None:
        data["storage"] = storage.resolve()
    try:
        return RayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"service.ray: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc


def check_exposure(cfg: ServiceConfig, *, insecure: bool) -> None:
    """ConfigError for a non-loopback bind without a token, unless ``insecure`` (then warn loudly)."""
    if cfg.token is not None or is_loopback(cfg.host):
        return
    if not insecure:
        raise ConfigError(
            f"refusing to listen on {cfg.host or 'every interface'} without a token: set service.token "
            "or VMR_TOKEN, bind 127.0.0.1, or pass --insecure"
        )
    message = (
        f"INSECURE: listening on {cfg.host or 'every interface'} WITHOUT A TOKEN: anyone who reaches "
        "this port can add and remove streams and read stored frames"
    )
    log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def cmd_serve(a: argparse.Namespace) -> int:
    cfg = serve_config(a)
    check_exposure(cfg.service, insecure=a.insecure)
    pre = cfg.settings.prescreen
    from agent.models.encoder import warn_meaningless

    warn_meaningless(pre)  # now: a pool loads its encoders in other processes (they warn in their logs)
    asyncio.run(serve(cfg))
    return 0


async def serve(cfg: ServeFile, streams: list[StreamSpec] | None = None) -> None:
    """Run service + server until SIGINT/SIGTERM; always closes cleanly (final snapshot)."""
    from agent.service.pipeline import Service
    from agent.service.server import Server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with Service(cfg.service, cfg.settings) as service:
        await service.start(streams if streams is not None else cfg.streams)
        server = Server(service.serving, cfg.service)
        try:
            port = await server.start()
            print(
                f"vmr: serving on http://{cfg.service.host}:{port} (websocket ws://{cfg.service.host}:{port}/ws)",
                flush=True,
            )
            await stop.wait()
        finally:
            await server.close()


def cmd_watch(a: argparse.Namespace) -> int:
    from agent.service.client import watch

    if a.text is None and a.image is None:
        raise ConfigError("give a query text or --image PATH")
    token = a.token or env_str("VMR_TOKEN")

    async def run() -> None:
        async for event in watch(
            a.url, text=a.text, image_path=a.image, streams=a.stream, threshold=a.threshold, token=token
        ):
            print(event.model_dump_json(), flush=True)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    return 0
