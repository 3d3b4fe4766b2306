"""Reading the project's versioned JSON files (index.json, state.json, service_streams.json).

Each such file is one JSON object with an integer ``version`` written by
:func:`agent.store.atomic.write_json`. One reader, one error vocabulary: an
unreadable or non-object file is an :class:`~agent.errors.IndexStoreError`, a
file of another format version a :class:`~agent.errors.SnapshotVersionError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.errors import IndexStoreError, SnapshotVersionError


def read_versioned(path: Path, version: int, *, what: str) -> dict[str, Any] | None:
    """The object stored at ``path``, or None when the file does not exist.

    ``what`` names the file in error messages ("stream state", "stream list").
    Raises IndexStoreError (unreadable, not JSON, not an object) or
    SnapshotVersionError (``version`` differs).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IndexStoreError(f"{path}: unreadable {what}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IndexStoreError(f"{path}: unreadable {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexStoreError(f"{path}: unreadable {what}: not a JSON object")
    if data.get("version") != version:
        raise SnapshotVersionError(f"{path}: {what} version {data.get('version')} != {version}")
    return data
