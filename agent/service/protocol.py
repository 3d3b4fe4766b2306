"""Websocket protocol, version 1: every request and every event as a pydantic model.

Every message is one JSON object with a ``type``. Requests carry an ``id``
(any string the client picks); every event answering a request repeats it;
broadcast events (``progress``, ``stream`` status changes) have ``id: null``.
See ``docs/protocol.md`` for the full reference and an example session.

Client -> server (:data:`ClientMessage`): ``hello``, ``streams.list``,
``streams.add``, ``streams.remove``, ``query``, ``watch``, ``cancel``.
Server -> client (:data:`ServerEvent`): ``hello``, ``streams``, ``stream``,
``stream.removed``, ``moments``, ``moments.update``, ``moment``,
``moment.update``, ``watching``, ``progress``, ``cancelled``, ``error``.

A ``query`` is answered progressively: ``moments`` (the prescreen's
anchor-level answer, milliseconds) then ``moments.update`` with the same id
(the answer refined within the query's ``budget``); the update is always
sent, and is the last event of the query.

One codec both ways: :func:`encode` writes any message, :func:`parse_message`
reads a request (server side), :func:`parse_event` an event (client side);
both raise :class:`~agent.errors.ProtocolError` with a readable reason.

Messages are read within the limits of :mod:`agent.service.json_text`
(depth, values, echoed text).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from agent.channels.refine import MAX_REFINE_BUDGET_S
from agent.channels.retrieval import Query
from agent.config import MAX_CLOSE_SECONDS, MAX_TOP_K, FiniteFloat, QueryConfig, Strict
from agent.errors import BusyError, ProtocolError, SlowClientError, UnauthorizedError, VmrError
from agent.models.images import decode_image_b64
from agent.service.answer import MomentOut, QueryAnswer
from agent.service.health import MAX_GAP_SPANS
from agent.service.json_text import ERROR_CHARS, ID_CHARS, clip, load_json

PROTOCOL_VERSION = 1
SLOW_CLIENT = SlowClientError.code
"""Error code sent before a client that cannot keep up is disconnected."""
UNAUTHORIZED = UnauthorizedError.code
"""Error code of a wrong or missing token (the connection is then closed)."""
BUSY = BusyError.code
"""Error code of a request refused because its client has its limit of requests in flight."""
_MAX_REASONS = 5
"""Validation errors listed in one reason (the rest are counted)."""


class _Msg(Strict):
    id: str | None = Field(default=None, max_length=ID_CHARS)


# ---------------------------------------------------------------- client -> server
class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    token: str | None = None


class StreamsList(_Msg):
    type: Literal["streams.list"] = "streams.list"


class StreamsAdd(_Msg):
    type: Literal["streams.add"] = "streams.add"
    stream: dict[str, Any]
    """A stream spec: ``{"id", "kind", "url" | "path", "fps", "realtime", ...}`` (validated by the service)."""


class StreamsRemove(_Msg):
    type: Literal["streams.remove"] = "streams.remove"
    stream: str
    purge: StrictBool = False
    """Also delete the stream's files (snapshots, stored frames, thumbnails); default: keep them."""


class _QueryFields(_Msg):
    text: str | None = None
    image: str | None = None
    """Base64 of a JPEG/PNG file."""
    streams: list[str] | None = None
    """Stream ids, each of which must exist now (else ``unknown_stream``: a typo must not make a
    watch that silently never fires). Omitted: every stream — for a ``watch`` that includes
    streams added after it was placed."""
    start: FiniteFloat | None = None
    end: FiniteFloat | None = None
    top_k: StrictInt | None = Field(default=None, ge=1, le=MAX_TOP_K)
    # Strict: JSON true, 3.0 or "3" is a client bug, not a count.
    # -- channel filter (issue 13)
    channels: list[Annotated[str, Field(max_length=ID_CHARS)]] | None = Field(default=None, max_length=8)
    """Only these channels answer (``["speech"]``); omitted or empty: every channel."""


class QueryMsg(_QueryFields):
    type: Literal["query"] = "query"
    budget: FiniteFloat | None = Field(default=None, ge=0, le=MAX_REFINE_BUDGET_S)
    """Seconds of re-encoding the refinement after the first answer may take (progressive answers);
    None: the server's default; 0: refine only from frame embeddings already cached."""


class WatchMsg(_QueryFields):
    type: Literal["watch"] = "watch"
    threshold: FiniteFloat | None = Field(default=None, ge=-1, le=1)
    """Absolute cosine threshold; None: relative to the backward scan (see WatchConfig)."""
    close_seconds: FiniteFloat | None = Field(default=None, gt=0, le=MAX_CLOSE_SECONDS)
    word_share: FiniteFloat | None = Field(default=None, gt=0, le=1)
    """Phrases spoken or shown: share of the query's words a new transcript or on-screen text span
    must hold to match (None: WatchConfig's, every word); see agent.service.watch."""
    backward: bool = True
    """Also answer from retained memory (a ``moments`` event) before matching forward."""


class Cancel(_Msg):
    type: Literal["cancel"] = "cancel"
    target: str
    """The id of the query or watch to end."""


ClientMessage = Annotated[
    Hello | StreamsList | StreamsAdd | StreamsRemove | QueryMsg | WatchMsg | Cancel,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------- server -> client
class ErrorInfo(Strict):
    code: str
    message: str


class CoveredSpan(Strict):
    """A stream's ingested stretch: first and last stream second and its longest holes (the gaps)."""

    start: float
    end: float
    holes: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_GAP_SPANS)
    """``[start, end]`` stream seconds, time order; at most :data:`MAX_GAP_SPANS` (the longest)."""


class StreamStatus(BaseModel):
    """A stream's status (``streams.list``, ``stream`` events).

    Open to fields the runner adds (source statistics of new source kinds):
    clients must ignore what they do not know.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    kind: str
    url: str | None = None
    path: str | None = None
    status: Literal["starting", "running", "done", "failed", "stopped"]
    error: ErrorInfo | None = None
    frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    """Live-source sessions after the first (RTSP reconnects, WHIP republishes)."""
    last_time: float | None = None
    progress: float | None = None
    tokens: int = 0
    source: dict[str, Any] | None = None
    """The source's own statistics (``streams.source.SourceStats``: state connecting/streaming/backoff/
    done/closed, last_error, frames, drops, reconnects, progress, damaged_packets, kind-specific extras)
    and its queue policy; None before a source opens."""
    up: bool = True
    """False while a live source reconnects and once the stream ended (``vmr_stream_up``)."""
    source_state: str | None = None
    source_error: str | None = None
    """The source's state and latest failure (also under ``source``); None before a source opens."""
    gaps: dict[str, int | float] = Field(default_factory=dict)
    """Holes in the memory's coverage: ``count`` and ``seconds``."""
    covered: CoveredSpan | None = None
    """Where the memory's coverage lies and its longest holes; None before anything was ingested."""
    snapshot_age: float | None = None
    """Seconds since the stream's last good snapshot (since its start before the first)."""
    reasons: list[str] = Field(default_factory=list)
    """Why this stream degrades ``/healthz`` (``failed: <code>``, ``reconnecting``, ``snapshot stale``)."""


class HelloEvent(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    server: str = "vmr"
    model: dict[str, Any]
    meaningless: bool
    channels: list[str] = Field(default_factory=lambda: ["visual"])
    """The channels this service indexes (``visual``, ``speech``, ``ocr``): what a query may restrict to."""


class StreamsEvent(_Msg):
    type: Literal["streams"] = "streams"
    streams: list[StreamStatus]


class StreamEvent(_Msg):
    type: Literal["stream"] = "stream"
    stream: StreamStatus


class StreamRemovedEvent(_Msg):
    type: Literal["stream.removed"] = "stream.removed"
    stream: str


class MomentsEvent(QueryAnswer):
    """The answer to a ``query`` (and a watch's backward scan): a :class:`QueryAnswer` with its id."""

    type: Literal["moments"] = "moments"
    id: str | None = None

    @classmethod
    def of(cls, rid: str | None, answer: QueryAnswer) -> MomentsEvent:
        # Every field of the answer, so the event and `vmr query --json` never drift apart.
        return cls(id=rid, **{name: getattr(answer, name) for name in QueryAnswer.model_fields})


# ------------------------------------------------- progressive answers (issue 11)
class MomentsUpdateEvent(QueryAnswer):
    """A query's refined answer, after its ``moments`` (same id): the last event of the query."""

    type: Literal["moments.update"] = "moments.update"
    id: str | None = None

    @classmethod
    def of(cls, rid: str | None, answer: QueryAnswer) -> MomentsUpdateEvent:
        return cls(id=rid, **{name: getattr(answer, name) for name in QueryAnswer.model_fields})


# ---------------------------------------------------------------- watches
class MomentEvent(_Msg):
    """A standing query's match opened."""

    type: Literal["moment"] = "moment"
    match: int
    closed: bool = False
    moment: MomentOut


class MomentUpdateEvent(_Msg):
    """A match extended (``closed`` false) or closed (true, final ``end``)."""

    type: Literal["moment.update"] = "moment.update"
    match: int
    closed: bool
    moment: MomentOut


class WatchingEvent(_Msg):
    type: Literal["watching"] = "watching"
    threshold: float | None
    calibrating: bool


class ProgressEvent(_Msg):
    type: Literal["progress"] = "progress"
    stream: str
    progress: float
    t: float | None
    frames: int


class CancelledEvent(_Msg):
    type: Literal["cancelled"] = "cancelled"
    target: str


class ErrorEvent(_Msg):
    type: Literal["error"] = "error"
    code: str
    message: Annotated[str, AfterValidator(lambda text: clip(text, ERROR_CHARS))]
    """At most :data:`ERROR_CHARS` characters, whoever builds the event."""

    @classmethod
    def of(cls, rid: str | None, exc: VmrError) -> ErrorEvent:
        """The error event of a vmr error: its stable code and message, never a traceback."""
        return cls(id=rid, code=exc.code, message=str(exc))


class Health(Strict):
    """``GET /healthz``."""

    status: Literal["ok", "degraded"] = "ok"
    reasons: list[str] = Field(default_factory=list)
    """``"<stream>: <reason>"`` for each stream degrading the service (error codes, no messages or paths)."""
    protocol: int = PROTOCOL_VERSION
    streams: int
    failed: list[str]
    """Ids of streams whose source failed."""
    unloadable: dict[str, str] = Field(default_factory=dict)
    """Persisted streams this process cannot load (id -> reason), kept for when their kind returns."""


ServerEvent = Annotated[
    HelloEvent
    | StreamsEvent
    | StreamEvent
    | StreamRemovedEvent
    | MomentsEvent
    | MomentsUpdateEvent
    | MomentEvent
    | MomentUpdateEvent
    | WatchingEvent
    | ProgressEvent
    | CancelledEvent
    | ErrorEvent,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------- codec
_REQUESTS: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_EVENTS: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
_T = TypeVar("_T")


def encode(msg: BaseModel) -> str:
    """The JSON text of a request or event (every field, ``null`` included)."""
    return msg.model_dump_json()


def parse_message(raw: str | bytes) -> ClientMessage:
    """Validate one client message's JSON text; raise :class:`ProtocolError` with a readable reason."""
    return validate_message(load_json(raw))


def validate_message(data: Any) -> ClientMessage:
    """Validate one client message already decoded by :func:`load_json` (any JSON value)."""
    return _validate(_REQUESTS, data)


def parse_event(raw: str | bytes | dict[str, Any]) -> ServerEvent:
    """Validate one server event: JSON text, or a dict built by a lower layer (runner status, progress)."""
    return _validate(_EVENTS, raw if isinstance(raw, dict) else load_json(raw))


def _validate(adapter: TypeAdapter[_T], data: Any) -> _T:
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    if "type" not in data:
        raise ProtocolError("a message needs a 'type'")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(validation_reason(exc, data.get("type"))) from exc


def validation_reason(exc: ValidationError, kind: object) -> str:
    """A one-line reason of a pydantic error about a message of type ``kind``.

    Echoed parts (the type, field names) are cut to :data:`ECHO_CHARS`; at most
    five errors are listed, the others counted.
    """
    errors = exc.errors(include_url=False, include_input=False)
    shown = clip(repr(kind))
    if any(e["type"] == "union_tag_invalid" for e in errors):
        return f"unknown message type {shown}"
    reasons = "; ".join(
        f"{clip('.'.join(map(str, e['loc'])))}: {clip(e['msg'])}" for e in errors[:_MAX_REASONS]
    )
    more = f" (and {len(errors) - _MAX_REASONS} more)" if len(errors) > _MAX_REASONS else ""
    return f"invalid {shown} message: {reasons}{more}"


def to_query(msg: QueryMsg | WatchMsg, cfg: QueryConfig) -> Query:
    """The core :class:`Query` of a query/watch message, checked once against the limits.

    Decodes the image (blocking: the service calls this in a thread). Raises
    QueryError / OversizeQueryError.
    """
    image = None if msg.image is None else decode_image_b64(msg.image, max_bytes=cfg.max_image_bytes)
    q = Query(
        text=msg.text,
        image=image,
        streams=msg.streams,
        start=msg.start,
        end=msg.end,
        top_k=msg.top_k,
        channels=msg.channels or None,
    )
    q.check(cfg)
    return q
