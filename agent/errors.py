"""The one exception tree of vmr.

Every error the project raises on purpose derives from :class:`VmrError`.
Third-party exceptions are translated at the boundary (``raise ... from exc``)
so callers catch vmr errors only. Each class carries a stable ``code`` that the
websocket API sends to clients instead of a traceback::

    VmrError
    ├── ConfigError                 invalid configuration, unknown model name
    │   ├── WeightsUnavailableError real weights requested but not obtainable
    │   └── PrecisionUnsupportedError bf16 asked of torch, or of a CPU without BF16
    ├── SourceError                 a video source failed (from_stream_error maps the streams library's)
    │   ├── CorruptVideoError       undecodable or damaged input
    │   ├── StreamDisconnectedError a live source dropped (reconnect may follow)
    │   └── SourceNotAllowedError   a client named a format or host the operator does not allow
    ├── IndexStoreError             an index / snapshot on disk is missing or invalid
    │   └── SnapshotVersionError    snapshot written by an incompatible format version
    ├── QueryError                  a query that cannot be answered as asked
    │   └── OversizeQueryError      query text or image over the configured limit
    ├── TransportError              the service could not be talked to (a client's view)
    │   └── ConnectError            nothing answered at the URL: refused, unresolvable, timed out
    ├── ProtocolError               malformed websocket message
    │   ├── UnknownStreamError      a request names a stream id that does not exist
    │   ├── UnauthorizedError       missing or wrong auth token
    │   ├── SlowClientError         a client fell too far behind its event queue
    │   ├── BusyError               a client already has its limit of requests in flight
    │   └── LimitExceededError      a cap on streams or a rate of requests was reached
    └── LLMError                    the LLM stage failed
        ├── LLMUnavailableError     server down, not started, or port unavailable
        ├── LLMTimeoutError         no answer in time
        └── LLMAnswerError          answer malformed or outside the schema
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from streams import errors as stream_errors


class VmrError(Exception):
    """Root of every error vmr raises on purpose."""

    code: str = "internal"


class ConfigError(VmrError):
    """The configuration is invalid (checked before any model loads)."""

    code = "config"


class WeightsUnavailableError(ConfigError):
    """Real encoder weights were asked for but cannot be loaded."""

    code = "weights_unavailable"


class PrecisionUnsupportedError(ConfigError):
    """An inference precision was asked for that the chosen backend or this CPU cannot run."""

    code = "precision_unsupported"


class SourceError(VmrError):
    """A video source could not be opened or read."""

    code = "source"


class CorruptVideoError(SourceError):
    """The input is not decodable video, or is damaged."""

    code = "corrupt_video"


class StreamDisconnectedError(SourceError):
    """A live source dropped; the owner may reconnect."""

    code = "stream_disconnected"


class SourceNotAllowedError(SourceError):
    """A client named a container format or an RTSP host outside what the operator allows.

    (A path outside the media roots gets the plain :class:`SourceError` of a
    missing input, same message, so clients cannot learn which paths exist.)
    """

    code = "source_not_allowed"


class IndexStoreError(VmrError):
    """An index directory or snapshot is missing or invalid."""

    code = "index_store"


class SnapshotVersionError(IndexStoreError):
    """A snapshot was written by an incompatible format version."""

    code = "snapshot_version"


class ShardUnavailableError(VmrError):
    """A stream's remote shard did not answer in time, died, or is moving to another node (retry)."""

    code = "shard_unavailable"


class QueryError(VmrError):
    """A query cannot be answered as asked."""

    code = "bad_query"


class OversizeQueryError(QueryError):
    """The query text or image exceeds the configured limit."""

    code = "oversize_query"


class TransportError(VmrError):
    """The service could not be talked to at all (the client side; httpx's tree, in part)."""

    code = "transport"


class ConnectError(TransportError):
    """Nothing accepted a connection at the service's URL: refused, unresolvable or timed out."""

    code = "unreachable"


class ProtocolError(VmrError):
    """A websocket message is malformed or not allowed now."""

    code = "bad_message"


class UnknownStreamError(ProtocolError):
    """A request names a stream id the service does not know."""

    code = "unknown_stream"


class UnauthorizedError(ProtocolError):
    """The client's auth token is missing or wrong."""

    code = "unauthorized"


class SlowClientError(ProtocolError):
    """A client did not read its events fast enough and was disconnected."""

    code = "slow_client"


class EncodingError(VmrError):
    """Every encoder pass of a stream failed: it ingested frames but retained nothing."""

    code = "encoding_failed"


class BusyError(ProtocolError):
    """A client sent a request while its limit of requests in flight was reached (retry later)."""

    code = "busy"


class LimitExceededError(ProtocolError):
    """A configured cap (streams, ``streams.add`` rate, invalid messages) was reached."""

    code = "limit_exceeded"


class LLMError(VmrError):
    """The LLM stage failed."""

    code = "llm"


class LLMUnavailableError(LLMError):
    """The LLM server is down, not started, or its port is unavailable."""

    code = "llm_unavailable"


class LLMTimeoutError(LLMError):
    """The LLM server did not answer in time."""

    code = "llm_timeout"


class LLMAnswerError(LLMError):
    """The LLM answer was malformed or outside the schema."""

    code = "llm_bad_answer"


def from_stream_error(exc: stream_errors.StreamError) -> SourceError | ProtocolError:
    """The vmr error for an error of the ``streams`` library (raise it ``from exc``).

    The one place where the library's errors become vmr's, so clients see
    the same codes as always: missing input -> ``source``, a demuxer not allowed ->
    ``source_not_allowed``, damaged media -> ``corrupt_video``, retries used up -> ``stream_disconnected``.
    """
    message = str(exc)
    if isinstance(exc, stream_errors.FormatNotAllowedError):  # a demuxer outside the allow-list
        return SourceNotAllowedError(message)
    if isinstance(exc, stream_errors.CorruptMediaError):
        return CorruptVideoError(message)
    if isinstance(exc, stream_errors.DisconnectedError):
        return StreamDisconnectedError(message)
    if isinstance(exc, stream_errors.UnknownSourceError):
        return UnknownStreamError(message)
    if isinstance(exc, stream_errors.BadOfferError):
        return ProtocolError(message)
    return SourceError(message)


@contextmanager
def translating_stream_errors() -> Iterator[None]:
    """Inside the block, errors of the ``streams`` library surface as vmr errors (``from exc``)."""
    try:
        yield
    except stream_errors.StreamError as exc:
        raise from_stream_error(exc) from exc
