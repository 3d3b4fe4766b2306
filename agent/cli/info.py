"""``vmr info`` and ``vmr eval``: what an index or a video file holds, and how well predictions score.

Registered into the main CLI by :func:`register`. ``vmr info DIR`` sums up
an index (tokens, coverage, bytes, text channels); ``vmr info VIDEO`` says
what the file's video stream is, in display orientation. ``vmr eval qvh``
scores a prediction file with the QVHighlights metrics; ``vmr eval charades``
ingests Charades-STA clips and scores the annotations
(:mod:`agent.cli.evaluate`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.options import add_index_options, add_model_options, settings_from_args
from agent.errors import translating_stream_errors


def register(sub: Any) -> None:
    """Add ``vmr info`` and ``vmr eval`` to the ``vmr`` sub-commands (``sub``: its subparsers action)."""
    pn = sub.add_parser("info", help="what an index holds (or, given a video file, what the file is)")
    pn.add_argument("index", help="index directory, or a video file")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(func=cmd_info)

    pe = sub.add_parser("eval", help="moment retrieval metrics")
    esub = pe.add_subparsers(dest="eval_kind", required=True)
    pq2 = esub.add_parser("qvh", help="QVHighlights official metrics of a prediction file")
    pq2.add_argument("--gt", required=True)
    pq2.add_argument("--pred", required=True)
    pq2.add_argument("--json", action="store_true")
    pq2.set_defaults(func=cmd_eval_qvh)
    pc = esub.add_parser("charades", help="ingest Charades-STA clips and score the annotations")
    pc.add_argument("--annotations", required=True)
    pc.add_argument("--index", default=None, help="keep the index here (default: a temp dir)")
    pc.add_argument("--json", action="store_true")
    add_model_options(pc)
    add_index_options(pc)
    pc.set_defaults(func=cmd_eval_charades)


def cmd_info(a: argparse.Namespace) -> int:
    from agent.index.info import describe_index

    if Path(a.index).is_file():
        return _video_info(a)
    info = describe_index(Path(a.index))  # the files only: describing an index loads no model
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        for name, s in info["streams"].items():
            print(
                f"{name}: {s['tokens']}/{s['budget']} tokens, {s['covered_seconds']:.1f}s covered, "
                f"{s['memory_bytes'] / 1024:.0f} KiB memory, {s['store_bytes'] / 2**20:.1f} MiB frames"
            )
            r = s["rules"]
            print(
                f"  memory: grid {r['grid']} at {r['fps']:g} fps, merge {r['merge']}, representative "
                f"{r['representative']}, scorer {r['scorer']}, theta {r['theta']:g}, rank {r['rank']}"
            )
            for channel, unit in (("speech", "utterances"), ("ocr", "spans")):
                if channel in s:
                    c = s[channel]
                    print(
                        f"  {channel}: {c[unit]} {unit}, {c['bytes'] / 1024:.1f}/{c['budget_bytes'] / 1024:.0f} "
                        f"KiB, lag {c['lag_seconds']:.1f}s"
                    )
        print(f"model: {info['model']['prescreen']}  on disk: {info['bytes_on_disk'] / 2**20:.1f} MiB")
    return 0


def _video_info(a: argparse.Namespace) -> int:
    """``vmr info VIDEO``: what the file's video stream is, in display orientation."""
    from streams.file import probe

    with translating_stream_errors():
        v = probe(Path(a.index))
    width, height = v.display_size
    info = {
        "path": str(v.path),
        "codec": v.codec,
        "duration": round(v.duration, 3),
        "fps": None if v.fps is None else round(v.fps, 3),
        "display_width": width,
        "display_height": height,
        "coded_width": v.width,
        "coded_height": v.height,
        "rotation": v.rotation,
        "frames": v.frames,
    }
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        turned = f" (stored {v.width}x{v.height}, rotated {v.rotation} deg)" if v.rotation else ""
        print(f"{v.path}: {v.codec} {width}x{height}{turned}, {v.duration:.2f}s declared, {info['fps']} fps")
    return 0


def cmd_eval_qvh(a: argparse.Namespace) -> int:
    from agent.core.qvh import load_jsonl, qvh_metrics

    metrics = qvh_metrics(load_jsonl(Path(a.gt)), load_jsonl(Path(a.pred)))
    print(json.dumps(metrics, indent=2) if a.json else "\n".join(f"{k}: {v}" for k, v in metrics.items()))
    return 0


def cmd_eval_charades(a: argparse.Namespace) -> int:
    from agent.cli.evaluate import charades_eval

    report = charades_eval(Path(a.annotations), settings_from_args(a), Path(a.index) if a.index else None)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        if report["meaningless"]:
            print("WARNING: random encoder weights: these metrics are MEANINGLESS")
        for k, v in report["metrics"].items():
            print(f"{k}: {v}")
    return 0
