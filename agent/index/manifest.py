"""What an index's ``index.json`` keeps of its settings, and which stream ids may become folders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import MEMORY_RULES, Settings
from agent.errors import ConfigError, IndexStoreError
from agent.store.memory_store import LEGACY_RULES
from agent.store.versioned import read_versioned

INDEX_VERSION = 1
FOLLOW_INDEX = MEMORY_RULES
"""Memory rules whose default changed (issue #15): an existing index keeps the rule it was built
with unless the caller sets one explicitly (the CLI never does), so a default change does not
lock an index out of further ingest."""
RUN_ONLY = ("encoder_nice", "encoder_sched")
"""Index settings that change how a pass runs, not what it stores: free to differ between ingests."""
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def stored(settings: Settings) -> dict[str, Any]:
    """``settings`` as an index must keep them (without :data:`RUN_ONLY`)."""
    dump = settings.model_dump(mode="json")
    for name in RUN_ONLY:
        dump["index"].pop(name, None)
    return dump


def differences(built: Any, asked: Any, path: str = "") -> list[str]:
    """Where two :func:`stored` dumps differ, as ``"index.theta: built 0.95, asked 1.0"`` lines."""
    if isinstance(built, dict) and isinstance(asked, dict):
        out: list[str] = []
        for key in sorted(set(built) | set(asked), key=str):
            out += differences(built.get(key), asked.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if built == asked else [f"{path}: built {built!r}, asked {asked!r}"]


def read_manifest(root: Path) -> dict[str, Any]:
    """``root/index.json``; IndexStoreError when there is none or it is unreadable,
    SnapshotVersionError for another format version."""
    if (data := read_versioned(Path(root) / "index.json", INDEX_VERSION, what="index")) is None:
        raise IndexStoreError(f"no index at {root} (missing index.json)")
    return data


def stream_ids(root: Path) -> list[str]:
    """The streams with a folder under ``root/streams``, sorted."""
    folder = Path(root) / "streams"
    if not folder.is_dir():
        return []
    return sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and STREAM_ID.match(sub.name))


def manifest_settings(root: Path, manifest: dict[str, Any]) -> Settings:
    """The settings ``index.json`` records; IndexStoreError (one line per field) when invalid.

    A field it lacks takes today's default, except the memory rules of an index older than them:
    those read as its snapshots do (:data:`LEGACY_RULES`), not as whatever the default is now.
    """
    try:
        return Settings.model_validate(_with_legacy_rules(manifest["settings"]))
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise IndexStoreError(f"{root}/index.json: invalid settings: {why}") from exc
    except Exception as exc:  # no "settings" key, or not a mapping
        raise IndexStoreError(f"{root}/index.json: invalid settings: {exc!r}") from exc


def _with_legacy_rules(data: Any) -> Any:
    index = data.get("index") if isinstance(data, dict) else None
    if not isinstance(index, dict) or all(key in index for key in LEGACY_RULES):
        return data  # malformed data is left for validation to report
    return {**data, "index": {**LEGACY_RULES, **index}}


def check_stream_id(stream: str) -> str:
    """Stream ids become folder names: allow a safe alphabet only."""
    if not STREAM_ID.match(stream):
        raise ConfigError(f"invalid stream id {stream!r}: use letters, digits, '_', '.', '-' (max 128)")
    return stream


def follow_index(settings: Settings, known: Settings) -> Settings:
    """``settings`` with :data:`FOLLOW_INDEX` rules the caller left at their defaults taken from ``known``."""
    unset = {f: getattr(known.index, f) for f in FOLLOW_INDEX if f not in settings.index.model_fields_set}
    if not unset:
        return settings
    return settings.model_copy(update={"index": settings.index.model_copy(update=unset)})
