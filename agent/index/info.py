"""What an index reports of itself (``vmr info``, :meth:`agent.index.video_index.VideoIndex.info`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.channels.ocr import OcrChannel
from agent.channels.speech import SpeechChannel
from agent.index.stream_state import StreamState


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
    }
    sizes = st.text_sizes()
    speech = st.channels.get(SpeechChannel.name)
    if isinstance(speech, SpeechChannel):
        info["speech"] = {**speech.info(), "lag_seconds": sizes["speech"].lag_seconds}
    ocr = st.channels.get(OcrChannel.name)
    if isinstance(ocr, OcrChannel):
        info["ocr"] = {**ocr.info(), "lag_seconds": sizes["ocr"].lag_seconds}
    return info


def bytes_on_disk(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
