"""Websocket protocol, version 1: client requests as pydantic models, server events as dicts.

Every message is one JSON object with a ``type``. Requests carry an ``id``
(any string the client picks); every event answering a request repeats it.
See ``docs/protocol.md`` for the full reference and an example session.

Client -> server: ``hello``, ``streams.list``, ``streams.add``,
``streams.remove``, ``query``, ``watch``, ``cancel``.
Server -> client: ``hello``, ``streams``, ``stream``, ``moments``,
``moment``, ``moment.update``, ``watching``, ``progress``, ``cancelled``,
``error``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.channels.retrieval import Query
from agent.config import QueryConfig
from agent.errors import (
    OversizeQueryError,
    ProtocolError,
    QueryError,
    SlowClientError,
    UnauthorizedError,
    VmrError,
)
from agent.types import Coverage, Moment, QueryResult, RGBImage

PROTOCOL_VERSION = 1
SLOW_CLIENT = SlowClientError.code
"""Error code sent before a client that cannot keep up is disconnected."""
UNAUTHORIZED = UnauthorizedError.code
"""Error code of a wrong or missing token (the connection is then closed)."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str | None = Field(default=None, max_length=200)


class Hello(_Msg):
    type: Literal["hello"]
    protocol: int = PROTOCOL_VERSION
    token: str | None = None


class StreamsList(_Msg):
    type: Literal["streams.list"]


class StreamsAdd(_Msg):
    type: Literal["streams.add"]
    stream: dict[str, Any]
    """A stream spec: ``{"id", "kind", "url" | "path", "fps", "realtime", ...}``."""


class StreamsRemove(_Msg):
    type: Literal["streams.remove"]
    stream: str


class _QueryFields(_Msg):
    text: str | None = None
    image: str | None = None
    """Base64 of a JPEG/PNG file."""
    streams: list[str] | None = None
    """Stream ids, each of which must exist now (else ``unknown_stream``: a typo must not make a
    watch that silently never fires). Omitted: every stream — for a ``watch`` that includes
    streams added after it was placed."""
    start: float | None = None
    end: float | None = None
    top_k: int | None = Field(default=None, ge=1, le=100)


class QueryMsg(_QueryFields):
    type: Literal["query"]


class WatchMsg(_QueryFields):
    type: Literal["watch"]
    threshold: float | None = Field(default=None, ge=-1, le=1)
    """Absolute cosine threshold; None: relative to the backward scan (see WatchConfig)."""
    close_seconds: float | None = Field(default=None, gt=0)
    backward: bool = True
    """Also answer from retained memory (a ``moments`` event) before matching forward."""


class Cancel(_Msg):
    type: Literal["cancel"]
    target: str
    """The id of the query or watch to end."""


ClientMessage = Annotated[
    Hello | StreamsList | StreamsAdd | StreamsRemove | QueryMsg | WatchMsg | Cancel,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def request_id(raw: str | bytes) -> str | None:
    """The ``id`` of a message, best effort, for errors about a message that did not validate."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) else None


def parse_message(raw: str | bytes) -> ClientMessage:
    """Validate one client message; raise :class:`ProtocolError` with a readable reason."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    if "type" not in data:
        raise ProtocolError("a message needs a 'type'")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        if any(e["type"] == "union_tag_invalid" for e in exc.errors()):
            raise ProtocolError(f"unknown message type {data.get('type')!r}") from exc
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ProtocolError(f"invalid {data.get('type')!r} message: {reasons}") from exc


def decode_image(b64: str, cfg: QueryConfig) -> RGBImage:
    """A base64 JPEG/PNG to an RGB array, checking the size limit before decoding."""
    if len(b64) * 3 // 4 > cfg.max_image_bytes:
        raise OversizeQueryError(f"query image is over {cfg.max_image_bytes} bytes")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(f"query image is not valid base64: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 64_000_000:
                raise OversizeQueryError("query image has too many pixels")
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise QueryError(f"query image is not a readable picture: {exc}") from exc


def to_query(msg: QueryMsg | WatchMsg, cfg: QueryConfig) -> Query:
    """The core :class:`Query` of a query/watch message (checked against the limits)."""
    if msg.text is not None and len(msg.text) > cfg.max_text_chars:
        raise OversizeQueryError(f"query text has {len(msg.text)} characters; limit {cfg.max_text_chars}")
    image = decode_image(msg.image, cfg) if msg.image is not None else None
    q = Query(text=msg.text, image=image, streams=msg.streams, start=msg.start, end=msg.end, top_k=msg.top_k)
    q.check(cfg)
    return q


# ------------------------------------------------------------------ server events
def iso(wall: float | None) -> str | None:
    """ISO 8601 (UTC) of a Unix time, or None."""
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def thumbnail_url(stream: str, t: float) -> str:
    """Where ``/thumbnails`` serves the stored frame nearest ``t``."""
    return f"/thumbnails/{stream}/{t:.3f}.jpg"


def moment_json(m: Moment) -> dict[str, Any]:
    """One moment: stream seconds, wall-clock ISO 8601, score, thumbnail, path that answered."""
    peak = m.evidence[0] if m.evidence else (m.start + m.end) / 2
    return {
        "stream": m.stream,
        "start": round(m.start, 3),
        "end": round(m.end, 3),
        "wall_start": iso(m.wall_start),
        "wall_end": iso(m.wall_end),
        "score": round(float(m.score), 6),
        "thumbnail": thumbnail_url(m.stream, peak),
        "answered_by": m.answered_by,
    }


def coverage_json(c: Coverage | None) -> dict[str, Any] | None:
    """Coverage of the asked range; ``in_memory`` false means "not in retained memory"."""
    if c is None:
        return None
    return {
        "start": round(c.start, 3),
        "end": round(c.end, 3),
        "retained_seconds": round(c.retained_seconds, 3),
        "retained_fraction": round(c.retained_fraction, 4),
        "seconds_per_token": None if c.seconds_per_token == float("inf") else round(c.seconds_per_token, 3),
        "frames_seconds": round(c.frames_seconds, 3),
        "in_memory": c.retained_seconds > 0,
    }


def moments_event(rid: str | None, results: dict[str, QueryResult], top_k: int) -> dict[str, Any]:
    """The answer to a ``query``: the best moments over all streams plus per-stream coverage."""
    moments = sorted((m for r in results.values() for m in r.moments), key=lambda m: -m.score)[:top_k]
    return {
        "type": "moments",
        "id": rid,
        "moments": [moment_json(m) for m in moments],
        "streams": {
            name: {
                "answered_by": r.answered_by,
                "coverage": coverage_json(r.coverage),
                "in_memory": r.coverage is not None and r.coverage.retained_seconds > 0,
                "notes": r.notes,
                "llm_usage": r.llm_usage,
            }
            for name, r in results.items()
        },
        "meaningless": any(r.meaningless for r in results.values()),
    }


def error_event(
    rid: str | None, exc: VmrError | None = None, *, code: str = "", message: str = ""
) -> dict[str, Any]:
    """An ``error`` with the stable code of ``exc`` (or the given code), never a traceback."""
    return {
        "type": "error",
        "id": rid,
        "code": exc.code if exc is not None else code,
        "message": str(exc) if exc is not None else message,
    }
