"""End-to-end evaluation on annotated clips (Charades-STA layout).

Each annotation line names a ``video`` relative to the annotation file's
folder, a ``query`` and its ``relevant_windows``. Every clip is ingested once,
every query answered, and the answers scored with the QVHighlights metrics.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from agent.channels.retrieval import Query
from agent.config import Settings
from agent.core.qvh import load_jsonl, qvh_metrics
from agent.errors import translating_stream_errors
from agent.index.video_index import VideoIndex
from streams.file import decode_frames


def predictions_for(idx: VideoIndex, stream: str, query: str, top_k: int = 10) -> list[list[float]]:
    """QVHighlights-style ``pred_relevant_windows`` for one text query."""
    result = idx.query(Query(text=query, streams=[stream], top_k=top_k))[stream]
    return [[round(m.start, 2), round(m.end, 2), round(float(m.score), 4)] for m in result.moments]


def charades_eval(annotations: Path, settings: Settings, index_dir: Path | None = None) -> dict[str, Any]:
    """Ingest the annotated clips, answer every query, return metrics and predictions."""
    rows = load_jsonl(annotations)
    base = annotations.parent
    with tempfile.TemporaryDirectory(prefix="vmr-eval-") as tmp:
        root = index_dir or Path(tmp)
        with VideoIndex.create(root, settings) as idx:
            for vid, video in sorted({(r["vid"], r["video"]) for r in rows}):
                if vid not in idx.streams or idx.streams[vid].memory.tokens == 0:
                    frames = decode_frames(
                        base / video,
                        stream=vid,
                        fps=settings.index.fps,
                        keyframes_only=settings.index.keyframes_only,
                        short_side=idx.prescreen.image_size,
                    )
                    with translating_stream_errors():
                        idx.ingest(frames)
            gt, preds = [], []
            for qid, r in enumerate(rows):
                gt.append({**r, "qid": qid})
                preds.append(
                    {
                        "qid": qid,
                        "vid": r["vid"],
                        "query": r["query"],
                        "pred_relevant_windows": predictions_for(idx, r["vid"], r["query"]),
                    }
                )
            meaningless = idx.prescreen.meaningless or idx.refine.meaningless
    return {"metrics": qvh_metrics(gt, preds), "meaningless": meaningless, "predictions": preds}
