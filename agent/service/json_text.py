"""The JSON text of websocket messages: decoded within limits, ids read best effort, echoes cut.

Each limit is answered with a ``bad_message`` error and the connection stays
up: JSON nested deeper than :data:`MAX_DEPTH`, or with more than
:data:`MAX_ITEMS` values, is refused before it is parsed (a 12 MB message of
tiny arrays would otherwise hold the event loop, and the GIL, for seconds in
the parser); an ``id`` over :data:`ID_CHARS` is not echoed. Values quoted
back in a reason are cut to :data:`ECHO_CHARS` and an error's whole message
to :data:`ERROR_CHARS` (:func:`clip`), so a 10 MB input never comes back as a
10 MB error.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import numpy as np

from agent.errors import ProtocolError

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a message (the protocol's own use 4 levels)."""
MAX_ITEMS = 10_000
"""Most values in the arrays and objects of one message (a picture travels as one string)."""
ID_CHARS = 200
"""Longest request ``id``."""
ECHO_CHARS = 200
"""A client's value quoted in an error reason is cut to this many characters."""
ERROR_CHARS = 1000
"""An error event's whole message is cut to this many characters."""


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_json(raw: str | bytes) -> Any:
    """Decode one message's JSON text (parsed once per message).

    ProtocolError when it is not JSON, nests deeper than :data:`MAX_DEPTH` or
    holds more than :data:`MAX_ITEMS` values (both checked first, without
    parsing: a 12 MB message of tiny arrays would hold the event loop, and
    the GIL, for seconds in the parser).
    """
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    # Depth <= openings and values <= openings + commas, strings included: under MAX_DEPTH such
    # marks (a picture's base64 has none) neither limit can be passed, and nothing more is counted.
    if _marks(data) > MAX_DEPTH:
        shape = json_shape(data.decode("utf-8", "replace"))
        if shape.depth > MAX_DEPTH:
            raise ProtocolError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
        if shape.items > MAX_ITEMS:
            raise ProtocolError(f"malformed JSON: more than {MAX_ITEMS} values in arrays and objects")
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # "[" * 100000: nested deeper than the parser goes
        raise ProtocolError("malformed JSON: nested too deeply") from exc


def _not_json(name: str) -> None:
    # Python's parser takes NaN and Infinity, which JSON does not have (and no field wants).
    raise ValueError(f"{name} is not a JSON value")


_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
"""A JSON string literal, or an unterminated one to the end (brackets and commas inside are text).
Every quote starts a match that cannot fail and nothing backtracks: linear on any input."""
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_CHUNK = 1 << 20


def _marks(data: bytes) -> int:
    """Openings and commas in ``data``, strings included (vectorised, by chunks)."""
    marks = 0
    for at in range(0, len(data), _CHUNK):
        codes = np.frombuffer(data, np.uint8, count=min(_CHUNK, len(data) - at), offset=at)
        marks += int(np.count_nonzero((codes == ord("[")) | (codes == ord("{")) | (codes == ord(","))))
    return marks


class JsonShape(NamedTuple):
    depth: int
    """Deepest nesting of arrays and objects (0 for a scalar)."""
    items: int
    """At least the values in arrays and members of objects: commas plus containers."""


def json_shape(text: str) -> JsonShape:
    """The nesting depth and item count of JSON ``text``, without parsing it.

    Linear, in C and numpy with bounded memory: string literals are removed
    by a regular expression, then a running sum of +1 per opening and -1 per
    closing bracket is taken over the UTF-8 bytes by chunks. Invalid text gets
    a shape all the same (the parser refuses it next).
    """
    data = _STRING.sub("", text).encode("utf-8", "replace")
    deepest = level = 0
    items = data.count(b",") + data.count(b"[") + data.count(b"{")
    for at in range(0, len(data), _CHUNK):
        steps = _STEP[np.frombuffer(data, np.uint8, count=min(_CHUNK, len(data) - at), offset=at)]
        running = np.cumsum(steps, dtype=np.int32) + level
        deepest = max(deepest, int(running.max()))
        level = int(running[-1])
    return JsonShape(deepest, items)


def id_of(data: Any) -> str | None:
    """The ``id`` of decoded message data, best effort, for errors about a message that did not validate.

    None when absent, not a string or over :data:`ID_CHARS` (never echoed).
    """
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= ID_CHARS else None


_LEADING_ID = re.compile(r'^\s*\{(?:[^{}\[\]]{0,2048}?[,\s])?"id"\s*:\s*"([^"\\]{0,200})"')


def leading_id(raw: str) -> str | None:
    """The ``id`` of a message too large to parse, when it is a top-level key near the start (best effort)."""
    match = _LEADING_ID.match(raw[:4096])
    return match.group(1) if match else None
