"""What an index reports of itself (``vmr info``, :meth:`agent.index.video_index.VideoIndex.info`).

:func:`describe_index` reads the same from the files alone, loading no model:
``index.json`` names the encoders and their width, and each stream's snapshot
opens without one (an index described is never ingested into or searched).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.channels.base import Channel
from agent.channels.ocr import OcrChannel
from agent.channels.speech import SpeechChannel
from agent.config import Settings
from agent.errors import IndexStoreError
from agent.index.manifest import manifest_settings, read_manifest, stream_ids
from agent.index.stream_state import StreamState

_NOT_INGESTED = 0
"""The encoder's input size handed to a described stream: its tiler never runs."""


def index_info(
    root: Path, model: dict[str, Any], meaningless: bool, streams: Mapping[str, StreamState]
) -> dict[str, Any]:
    """The ``vmr info`` record: ``model`` (prescreen, refine names, dim), bytes on disk, every stream."""
    return {
        "index": str(root),
        "model": model,
        "meaningless": meaningless,
        "bytes_on_disk": bytes_on_disk(root),
        "streams": {name: stream_info(st) for name, st in sorted(streams.items())},
    }


def describe_index(root: Path) -> dict[str, Any]:
    """:func:`index_info` of the index at ``root``, read from its files: no encoder is loaded.

    Raises IndexStoreError for a missing or damaged index (SnapshotVersionError
    for another format version).
    """
    root = Path(root)
    manifest = read_manifest(root)
    settings = manifest_settings(root, manifest)
    try:
        enc = manifest["encoder"]
        dim, meaningless = int(enc["dim"]), enc["meaningless"]
        model: dict[str, Any] = {"prescreen": str(enc["prescreen"]), "refine": str(enc["refine"]), "dim": dim}
        if not isinstance(meaningless, bool) or dim < 1:
            raise ValueError(f"meaningless {meaningless!r}, dim {dim}")
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexStoreError(f"{root}/index.json: invalid encoder record: {exc!r}") from exc
    streams: dict[str, StreamState] = {}
    try:
        for stream in stream_ids(root):
            streams[stream] = StreamState(
                root / "streams" / stream,
                stream,
                settings.index,
                dim=dim,
                image_size=_NOT_INGESTED,
                channels=_text_channels(stream, settings),
            )
        return index_info(root, model, meaningless, streams)
    finally:
        for st in streams.values():
            st.close()


def _text_channels(stream: str, settings: Settings) -> list[Channel]:
    """The text channels the settings give a stream, without a sentence model (never searched here)."""
    more: list[Channel] = []
    if settings.speech.enabled:
        more.append(SpeechChannel(stream, settings.speech, embed=None))
    if settings.ocr.enabled:
        more.append(OcrChannel(stream, settings.ocr, embed=None))
    return more


def stream_info(st: StreamState) -> dict[str, Any]:
    """One stream's anchors, tokens, budget, covered seconds and spans, counters and text channels."""
    spans = st.memory.spans()
    info: dict[str, Any] = {
        "anchors": len(st.memory.anchors),
        "tokens": st.memory.tokens,
        "budget": st.cfg.budget,
        "covered_seconds": round(sum(e - s for s, e in spans), 3),
        "spans": [[round(s, 3), round(e, 3)] for s, e in spans],
        "memory_bytes": st.memory.nbytes,
        "frames": st.stats.frames,
        "encoder_passes": st.stats.superimages,
        "gated_frames": st.stats.gated_frames,
        "store_bytes": st.store.nbytes if st.store is not None else 0,
        "rules": memory_rules(st),
    }
    sizes = st.text_sizes()
    speech = st.channels.get(SpeechChannel.name)
    if isinstance(speech, SpeechChannel):
        info["speech"] = {**speech.info(), "lag_seconds": sizes["speech"].lag_seconds}
    ocr = st.channels.get(OcrChannel.name)
    if isinstance(ocr, OcrChannel):
        info["ocr"] = {**ocr.info(), "lag_seconds": sizes["ocr"].lag_seconds}
    return info


def memory_rules(st: StreamState) -> dict[str, Any]:
    """The rules this stream's memory runs by, read from the memory itself (its snapshot's, which an
    index older than a default change keeps): sampling, grid, merge rule, representative, scorer, θ."""
    mem = st.memory
    return {
        "fps": st.cfg.fps,
        "grid": st.cfg.grid,
        "merge": mem.merge,
        "representative": mem.representative,
        "scorer": mem.scorer,
        "theta": mem.theta,
        "rank": mem.rank,
    }


def bytes_on_disk(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
