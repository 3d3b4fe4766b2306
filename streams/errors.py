"""The error tree of the ``streams`` library (a leaf: it depends on no other package of vmr).

Callers that embed the library translate these at their boundary (``agent``
does it in :func:`agent.errors.from_stream_error`)::

    StreamError                 root: anything a source raises on purpose
    ├── SourceUnavailableError  missing or unreadable input, connection refused, bad arguments
    ├── CorruptMediaError       undecodable or damaged media
    │   ├── NoVideoStreamError  no video stream (or only cover art)
    │   └── EmptyMediaError     a video stream without a single frame
    ├── DisconnectedError       a live source dropped and its retries are used up
    ├── UnknownSourceError      a request names a stream or session that does not exist
    └── BadOfferError           a malformed or unacceptable WebRTC (WHIP) offer
"""

from __future__ import annotations


class StreamError(Exception):
    """Root of every error the streams library raises on purpose."""


class SourceUnavailableError(StreamError):
    """The input is missing or unreadable, the server refused, or the arguments are invalid."""


class CorruptMediaError(StreamError):
    """The input is not decodable media, or it is damaged."""


class DisconnectedError(StreamError):
    """A live source dropped and will not reconnect (its retries are used up)."""


class UnknownSourceError(StreamError):
    """A stream id or session id that the ingest does not know."""


class BadOfferError(StreamError):
    """A WHIP offer that is malformed, too large, or has no video."""


class NoVideoStreamError(CorruptMediaError):
    """The input has no video to index: no video stream, or only attached pictures (cover art)."""


class FormatNotAllowedError(CorruptMediaError):
    """FFmpeg refused the input: its demuxer is not in the allow-list given at open.

    Raised before the demuxer reads its header, so nothing the input names
    (playlist entries, other files) is opened.
    """


class EmptyMediaError(CorruptMediaError):
    """The input declares a video stream but holds not a single decodable frame."""
