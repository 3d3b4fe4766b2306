"""Validated configuration of the live service (``vmr serve``).

A service config is a TOML or JSON file (see ``examples/vmr.toml``)::

    [service]          host, port, index, token, snapshot_seconds, limits
    [settings]         agent.config.Settings: encoder, memory, query
    [[streams]]        streams started at boot (kind, id, url or path, options)

Everything is checked before any model loads. The only environment variable
read here is ``VMR_TOKEN`` (the websocket auth token), through
:func:`agent.config.env_str`.
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config import LLMConfig, Settings, env_str
from agent.errors import ConfigError
from agent.index.video_index import check_stream_id

SourceKind = Literal["file", "rtsp", "segments", "whip"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamSpec(_Strict):
    """One stream the service ingests; persisted in ``INDEX/service_streams.json``."""

    id: str
    kind: SourceKind
    url: str | None = None
    """RTSP URL (``rtsp``)."""
    path: str | None = None
    """Video file (``file``) or folder (``segments``)."""
    fps: float | None = Field(default=None, gt=0, le=60)
    """Sampling rate; None means the index setting."""
    realtime: bool = False
    """``file`` only: replay at stream pace (as if live) instead of as fast as possible."""
    loop: bool = False
    """``file`` only: start over at the end (a stand-in camera for demos and load tests)."""
    start_wall: datetime | None = None
    """``file``/``segments``: wall-clock time of stream second 0, so answers carry wall times."""
    transport: Literal["tcp", "udp"] = "tcp"
    """``rtsp`` only."""

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        try:
            return check_stream_id(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _needs_location(self) -> StreamSpec:
        if self.kind == "rtsp" and not self.url:
            raise ValueError("an rtsp stream needs 'url'")
        if self.kind in ("file", "segments") and not self.path:
            raise ValueError(f"a {self.kind} stream needs 'path'")
        if (self.realtime or self.loop) and self.kind != "file":
            raise ValueError("'realtime' and 'loop' apply to file streams only")
        return self

    @property
    def live(self) -> bool:
        """Live sources drop stale frames; files and segment folders apply backpressure."""
        return self.kind in ("rtsp", "whip") or (self.kind == "file" and self.realtime)

    def wall_origin(self) -> float | None:
        """Unix time of stream second 0 for recordings with a configured start."""
        return None if self.start_wall is None else self.start_wall.timestamp()


class WatchConfig(_Strict):
    """Defaults of standing queries (a ``watch`` message may override them)."""

    sigma: float = Field(default=3.0, ge=0)
    """Relative threshold: a match scores above mean + sigma * std of the backward scan's anchors."""
    min_anchors: int = Field(default=8, ge=2)
    """Fewer retained anchors than this: calibrate on the first forward scores instead."""
    close_seconds: float = Field(default=2.0, gt=0)
    """A match closes after this many stream seconds of non-matching samples."""


class ServiceConfig(_Strict):
    """Everything ``vmr serve`` needs besides the model settings."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    index: Path = Path("vmr-index")
    token: str | None = Field(default_factory=lambda: env_str("VMR_TOKEN"))
    """Shared secret every client sends in ``hello``; None disables auth."""
    snapshot_seconds: float = Field(default=30.0, gt=0)
    """Period of the atomic memory snapshots (a kill -9 loses at most this much)."""
    max_message_bytes: int = Field(default=12 * 1024**2, ge=1024)
    """Largest websocket message accepted (a base64 image query must fit)."""
    client_queue: int = Field(default=256, ge=8)
    """Events buffered per client before the slow-client policy applies."""
    encoder_queue: int = Field(default=8, ge=1)
    """Super-images queued per stream in front of the shared encoder."""
    source_queue: int = Field(default=8, ge=1)
    """Frames buffered per source (live: latest wins; files: backpressure)."""
    progress_seconds: float = Field(default=1.0, gt=0)
    """Interval of ``progress`` events for file replays."""
    watch: WatchConfig = Field(default_factory=WatchConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    """Optional LLM stage for text queries (off unless ``llm.url`` is set)."""

    @field_validator("snapshot_seconds", "progress_seconds")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class ServeFile(_Strict):
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


def parse_spec(data: dict[str, Any]) -> StreamSpec:
    """Validate one stream spec, translating pydantic's error."""
    try:
        return StreamSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_short(exc)) from exc


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
    return parse_serve_data(data, base=Path(path).parent)


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
    streams = [
        s.model_copy(update={"path": str(base / s.path)}) if s.path and not Path(s.path).is_absolute() else s
        for s in cfg.streams
    ]
    return cfg.model_copy(update={"service": service, "streams": streams})


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
