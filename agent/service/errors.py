"""The one error mapper of the service: any exception of a request -> an ``error`` event.

A :class:`~agent.errors.VmrError` keeps its stable code and message; a
pydantic ``ValidationError`` that escaped a model boundary is a
``bad_message`` with a one-line reason; anything else is a bug: the client
gets ``internal`` and "see the server log", the traceback goes to the log
only.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from agent.errors import ProtocolError, VmrError
from agent.service.protocol import ErrorEvent, validation_reason

log = logging.getLogger(__name__)

INTERNAL = "internal"
INTERNAL_MESSAGE = "internal error; see the server log"


def error_event(rid: str | None, exc: BaseException) -> ErrorEvent:
    """The ``error`` event answering request ``rid`` that failed with ``exc``."""
    if isinstance(exc, VmrError):
        return ErrorEvent.of(rid, exc)
    if isinstance(exc, ValidationError):
        return ErrorEvent(id=rid, code=ProtocolError.code, message=validation_reason(exc, exc.title))
    log.error("request %s failed", rid, exc_info=exc)
    return ErrorEvent(id=rid, code=INTERNAL, message=INTERNAL_MESSAGE)
