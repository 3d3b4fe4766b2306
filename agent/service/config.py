"""Validated configuration of the live service (``vmr serve``).

A service config is a TOML or JSON file (see ``examples/vmr.toml``)::

    [service]          host, port, index, token, snapshot_seconds, limits
    [service.auth]     browser origins, failed-token backoff, pre-hello caps
    [service.sources]  what clients may add: media roots, formats, RTSP hosts, caps
    [settings]         agent.config.Settings: encoder, memory, query
    [[streams]]        streams started at boot (kind, id, url or path, options;
                       each kind's spec is in its streams/ module)

Everything is checked before any model loads. The only environment variable
read here is ``VMR_TOKEN`` (the websocket auth token), through
:func:`agent.config.env_str`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    PlainValidator,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.config import MAX_CLOSE_SECONDS, FiniteFloat, LLMConfig, Settings, Strict, env_str
from agent.errors import ConfigError
from agent.index.manifest import check_stream_id
from agent.process_memory import MMAP_THRESHOLD_MAX, MMAP_THRESHOLD_MIN
from streams import registry
from streams.source import SourceSpec


def _check_spec(value: Any) -> SourceSpec:
    """Validate a spec of any registered kind (the discriminated union), then its id."""
    spec = value if isinstance(value, SourceSpec) else registry.parse_spec(value)
    try:
        check_stream_id(spec.id)
    except ConfigError as exc:
        raise ValueError(f"id: {exc}") from exc
    return spec


StreamSpec = Annotated[SourceSpec, PlainValidator(_check_spec), SerializeAsAny()]
"""One stream the service ingests: a spec of a registered kind (``streams.registry``),
discriminated on ``kind`` (``file``, ``rtsp``, ``segments``, ``whip``, ...); persisted in
``INDEX/service_streams.json``."""


class WatchConfig(Strict):
    """Defaults of standing queries (a ``watch`` message may override them)."""

    sigma: FiniteFloat = Field(default=3.0, ge=0)
    """Relative threshold: a match scores above mean + sigma * std of the backward scan's anchors."""
    min_anchors: int = Field(default=8, ge=2)
    """Fewer retained anchors than this: calibrate on the first forward scores instead."""
    close_seconds: FiniteFloat = Field(default=2.0, gt=0, le=MAX_CLOSE_SECONDS)
    """A match closes after this many stream seconds of non-matching samples."""
    word_share: FiniteFloat = Field(default=1.0, gt=0, le=1)
    """Text path: share of the query's search terms a new transcript or on-screen span must hold."""


VIDEO_FORMATS = (
    "mov", "mp4", "3gp", "matroska", "webm", "avi", "mpegts", "mpeg", "mpegvideo", "flv",
    "asf", "ogg", "mxf", "nut", "ivf", "dv", "h264", "hevc", "m4v",
)  # fmt: skip
"""FFmpeg demuxer names of video containers and elementary streams. Text, picture and
playlist demuxers (``tty``, ``image2``, ``png_pipe``, ``jpeg_pipe``, ``concat``, ``hls``...) are
absent: FFmpeg would render a text file or a photo as video."""


class AuthConfig(Strict):
    """``[service.auth]``: who may talk to the service (the token itself is ``service.token``)."""

    origins: list[str] = Field(default_factory=list)
    """Browser ``Origin`` values allowed besides the service's own (same origin), e.g.
    ``"https://ops.example.com"``; ``"*"`` allows any (not advised: cross-site websocket hijacking)."""
    free_failures: int = Field(default=3, ge=0)
    """Wrong tokens from one client address before the backoff starts."""
    backoff_seconds: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """First lockout after ``free_failures``; it doubles with each further failure ..."""
    backoff_max_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """... up to this. A right token resets the address."""
    backoff_table: int = Field(default=4096, ge=16)
    """Client addresses remembered (least recently failed forgotten first)."""
    preauth_max_bytes: int = Field(default=16 * 1024, ge=256)
    """Largest message accepted before a client is authenticated (a ``hello`` is tiny)."""
    preauth_max_invalid: int = Field(default=3, ge=1)
    """Invalid messages a client may send before its first valid one; then it is disconnected."""
    hello_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """A websocket client not authenticated this long after connecting is disconnected."""


class SourcesConfig(Strict):
    """``[service.sources]``: what ``streams.add`` from a client may name, and the caps on streams.

    Streams in the config file (``[[streams]]``) are the operator's own: they are
    not checked against ``media_roots``, ``video_formats`` or ``rtsp_hosts``.
    """

    media_roots: list[Path] = Field(default_factory=list)
    """Folders under which clients may name files and segment folders (symlinks resolved,
    ``..`` refused). Empty (the default): clients may not add file or segment streams."""
    video_formats: list[str] = Field(default_factory=lambda: list(VIDEO_FORMATS))
    """FFmpeg demuxer names a client's file may be read with (probed before it is added)."""
    rtsp_hosts: list[str] | None = None
    """``host`` or ``host:port`` entries an RTSP URL of a client must match; None: any host.
    Either way the service's own port is refused unless listed as ``host:port``."""
    max_streams: int = Field(default=32, ge=1)
    """Streams the service runs at most (each holds a thread); ``streams.add`` beyond is refused."""
    reconnect_attempts: int | None = Field(default=20, ge=0)
    """Failed RTSP connection attempts in a row before a client's stream goes ``failed`` (None: forever).
    The operator's streams (config file) retry forever unless their spec sets ``retries``: a camera
    down for an hour must come back by itself; a client's URL must not be dialled forever."""
    adds_per_minute: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """Sustained ``streams.add`` rate of one client address (all its connections together) ..."""
    add_burst: int = Field(default=10, ge=1)
    """... and the burst it may spend at once (a token bucket)."""
    add_table: int = Field(default=4096, ge=16)
    """Client addresses whose ``streams.add`` budget is remembered (least recently used forgotten)."""


class RayConfig(Strict):
    """``[service.ray]``: run each stream as a Ray actor on a cluster (``vmr serve --ray ADDRESS``).

    The gateway (this process) keeps the websocket API; streams run in actors
    placed over the cluster's nodes; see :mod:`agent.service.ray`.
    """

    address: str = Field(min_length=1)
    """The cluster: ``HOST:PORT`` of its head (GCS), ``ray://HOST:PORT``, or ``auto`` (the local one)."""
    storage: Path | None = None
    """Folder every node reads and writes (NFS, a shared disk) where each stream keeps its
    snapshots and frames, under ``streams/<id>/``; None: the service's ``index`` (which must then
    be shared)."""
    num_cpus: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    """CPUs a stream actor reserves (fractional: several streams a core)."""
    num_gpus: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """GPUs a stream actor reserves (its encoder then runs there)."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources a stream actor needs (e.g. ``{"camera_site_a": 0.1}``)."""
    node: str | None = None
    """Ray node id to prefer for new stream actors (soft: elsewhere when it is gone)."""
    deadline_seconds: float = Field(default=3.0, gt=0, allow_inf_nan=False)
    """A stream's part of a query (and of list, stats, thumbnail) not back this long after it was
    due is left out and reported ``missing``: a slow or dead actor never blocks a query."""
    poll_seconds: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    """Longest wait of one event long-poll (an actor answers at once when it has events)."""
    event_queue: int = Field(default=4096, ge=16)
    """Events an actor buffers for the gateway; when full the oldest is dropped (and counted)."""
    restart_attempts: int = Field(default=3, ge=0)
    """Restarts of one stream in a row that may fail before it is reported ``failed``."""
    encoders: int = Field(default=1, ge=0, le=1024)
    """Actors of the shared, batching encoder pool (``agent.service.cluster.encoder_pool``): every
    stream actor encodes through them and loads no model. 0: each stream actor loads its own."""
    encoder_num_cpus: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """CPUs a pool actor reserves."""
    encoder_num_gpus: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """GPUs a pool actor reserves; with one, the ``auto`` backend runs torch on CUDA."""
    encoder_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources a pool actor needs (e.g. ``{"encoder_node": 1}``)."""
    encoder_max_wait_ms: float = Field(default=10.0, ge=0, le=1000, allow_inf_nan=False)
    """Longest a pool actor holds a request for others to join its pass (an idle pool's added
    latency; a busy one fills its passes from the requests queued during the previous pass)."""
    encoder_queue: int = Field(default=256, ge=1)
    """Requests queued per pool actor; one more waits (backpressure onto its stream's encoder worker)."""
    encoder_call_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    """A pool call not answered this long fails with ``encoding_failed`` (the batch is retried or
    dropped as any failed encoder batch)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, "" or 0.0.0.0: may be reachable from elsewhere


class ServiceConfig(Strict):
    """Everything ``vmr serve`` needs besides the model settings."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    index: Path = Path("vmr-index")
    token: str | None = Field(default_factory=lambda: env_str("VMR_TOKEN"), min_length=1, pattern=r"^\S+$")
    """Shared secret: websocket clients send it in ``hello`` (or as below), HTTP clients as
    ``Authorization: Bearer TOKEN``; None disables auth (loopback only, see ``vmr serve``).
    Not empty, no whitespace (it travels in a header)."""
    snapshot_seconds: float = Field(default=30.0, gt=0)
    """Period of the atomic memory snapshots (a kill -9 loses at most this much)."""
    heap_trim_seconds: float | None = Field(default=30.0, gt=0)
    """Period of ``malloc_trim`` (glibc gives freed heap pages back; without it RSS creeps up
    over days, see ``agent.service.heap``); None disables it."""
    heap_trim_growth_mb: float = Field(default=64.0, ge=0, allow_inf_nan=False)
    """A period trims only when RSS grew this many MiB since the last trim (0: every period):
    under load a trim stalls every allocating thread for up to ~0.4 s (``agent.service.heap``)."""
    malloc_arenas: int = Field(default=2, ge=0, le=1024)
    """glibc malloc arenas of the whole process, set when the service is built
    (:func:`agent.process_memory.limit_heap`: with the threshold below, an open 720p decoder
    thread holds 6.6 MiB instead of 11.1); 0: leave glibc alone (its default, 8 per core).
    ``MALLOC_ARENA_MAX`` in the environment wins over this setting."""
    malloc_mmap_threshold: int = Field(default=128 * 1024, ge=0, le=MMAP_THRESHOLD_MAX)
    """Bytes from which glibc maps an allocation on its own and unmaps it when freed (sampled
    frames, super-images, encoder batches): 4096 (a page) to 32 MiB (glibc's ceiling), or 0:
    leave glibc alone (its sliding threshold, 128 KiB up to 32 MiB). Below a page every small
    allocation would be a system call. ``MALLOC_MMAP_THRESHOLD_`` in the environment wins."""
    max_message_bytes: int = Field(default=12 * 1024**2, ge=1024)
    """Largest websocket message accepted (a base64 image query must fit)."""
    client_queue: int = Field(default=256, ge=8)
    """Events buffered per client before the slow-client policy applies."""
    client_queue_bytes: int = Field(default=8 * 1024**2, ge=64 * 1024)
    """Bytes of events buffered per client before the slow-client policy applies (also bounded by
    ``client_queue`` events; see ``agent.service.connection``)."""
    max_in_flight: int = Field(default=8, ge=1)
    """Queries and watches one client may have running at once; one more gets ``busy``."""
    encoder_queue: int = Field(default=8, ge=1)
    """Super-images queued per stream in front of the shared encoder."""
    source_queue: int = Field(default=8, ge=1)
    """Frames buffered per source (live: latest wins; files: backpressure)."""
    progress_seconds: float = Field(default=1.0, gt=0)
    """Interval of ``progress`` events for file replays."""
    watch: WatchConfig = Field(default_factory=WatchConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    """Optional LLM stage for text queries (off unless ``llm.url`` is set)."""
    ray: RayConfig | None = None
    """Run streams on a Ray cluster (None, the default: every stream in this process)."""

    @field_validator("malloc_mmap_threshold")
    @classmethod
    def _sane_threshold(cls, v: int) -> int:
        if 0 < v < MMAP_THRESHOLD_MIN:
            raise ValueError(f"must be 0 (glibc's own) or {MMAP_THRESHOLD_MIN} to {MMAP_THRESHOLD_MAX} bytes")
        return v

    @field_validator("snapshot_seconds", "progress_seconds", "heap_trim_seconds")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class ServeFile(Strict):
    """The whole config file."""

    service: ServiceConfig = Field(default_factory=ServiceConfig)
    settings: Settings = Field(default_factory=Settings)
    streams: list[StreamSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> ServeFile:
        ids = [s.id for s in self.streams]
        if len(ids) != len(set(ids)):
            raise ValueError("stream ids must be unique")
        return self


def load_spec(data: Any) -> SourceSpec:
    """Validate one stream spec; ValueError (pydantic's ValidationError is one) when invalid."""
    return _check_spec(data)


def parse_spec(data: dict[str, Any]) -> SourceSpec:
    """Validate one stream spec, translating pydantic's error to ConfigError."""
    try:
        return load_spec(data)
    except ValidationError as exc:
        raise ConfigError(_short(exc)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def load_serve_file(path: Path) -> ServeFile:
    """Read and validate a ``.toml`` or ``.json`` service config."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = tomllib.loads(raw.decode()) if Path(path).suffix == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {Path(path).suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    # Absolute: the paths are persisted with the stream list and must not depend on the cwd.
    return parse_serve_data(data, base=Path(path).resolve().parent)


def parse_serve_data(data: dict[str, Any], *, base: Path | None = None) -> ServeFile:
    """Validate config data; relative paths are taken from ``base`` (the file's folder)."""
    try:
        cfg = ServeFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_short(exc)) from exc
    if base is None:
        return cfg
    service = cfg.service
    if not service.index.is_absolute():
        service = service.model_copy(update={"index": base / service.index})
    roots = [root if root.is_absolute() else base / root for root in service.sources.media_roots]
    service = service.model_copy(
        update={"sources": service.sources.model_copy(update={"media_roots": roots})}
    )
    streams = [s.rebased(base) for s in cfg.streams]
    return cfg.model_copy(update={"service": service, "streams": streams})


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
