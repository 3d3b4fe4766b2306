"""The ``vmr`` command line: ingest, query, info, eval (and hooks for bench, llm, serve)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from agent.channels.refine import DEFAULT_REFINE_BUDGET_S, MAX_REFINE_BUDGET_S
from agent.cli import serve
from agent.cli.options import (
    AudioTally,
    add_index_options,
    add_model_options,
    encoder_config,
    prefetch,
    settings_from_args,
    stream_id_for,
)
from agent.errors import ConfigError, VmrError, translating_stream_errors

__all__ = [
    "add_index_options",
    "add_model_options",
    "build_parser",
    "encoder_config",
    "main",
    "prefetch",
    "settings_from_args",
    "stream_id_for",
]


# ------------------------------------------------------------------ commands
def cmd_ingest(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.index.video_index import VideoIndex
    from streams.decode import Damage
    from streams.file import decode_media, probe

    settings = settings_from_args(a)
    video = Path(a.video)
    with translating_stream_errors():
        info = probe(video)
    sid = a.stream or stream_id_for(video)
    report = Damage()
    t_load = time.perf_counter()
    with VideoIndex.create(Path(a.index), settings) as idx:
        t0 = time.perf_counter()
        if idx.prescreen.meaningless:
            print(f"WARNING: {idx.prescreen.note}; answers are MEANINGLESS", file=sys.stderr)
        frames = decode_media(
            video,
            stream=sid,
            fps=settings.index.fps,
            keyframes_only=settings.index.keyframes_only,
            short_side=idx.prescreen.image_size,
            audio=settings.speech.enabled,
            damage=report,
            thread_count=a.decode_threads,
        )
        bar = tqdm(
            total=round(info.duration, 1),
            unit="s",
            disable=a.quiet,
            dynamic_ncols=True,
            mininterval=0.5,
            # Seconds summed from 0.1-s steps drift (9.600000000000001/10.0): print one decimal.
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}{postfix}]",
        )
        done = [0.0, 0]

        def on_frame(frame: Any) -> None:
            done[1] += 1
            step = frame.t - done[0]
            if step > 0:
                bar.update(round(step, 1))
                done[0] = frame.t
            el = time.perf_counter() - t0
            bar.set_postfix_str(f"{done[1] / el:.0f} fr/s, {frame.t / el:.1f}x realtime")

        tally = AudioTally()
        try:
            with translating_stream_errors():
                idx.ingest(prefetch(tally.through(frames)), on_frame=on_frame)
        finally:
            bar.close()
    elapsed = time.perf_counter() - t0
    # What was read, not what the header says (raw streams declare nothing; headers can be wrong).
    seconds = report.end or info.duration
    notes = report.notes()
    if settings.speech.enabled and not tally.chunks:
        notes.append("no audio was decoded (no audio track?): the speech channel heard nothing")
    for note in notes:
        print(f"note: {video}: {note}", file=sys.stderr)
    summary = {
        "stream": sid,
        "video_seconds": round(seconds, 3),
        "model_load_seconds": round(t0 - t_load, 3),
        "elapsed_seconds": round(elapsed, 3),
        "x_realtime": round(seconds / elapsed, 2) if elapsed > 0 else None,
        "frames": done[1],
        "encoder": idx.prescreen.name,
        "backend": idx.prescreen.backend.name,
        # f32 or bf16 (OpenVINO's inference precision; torch runs f32); None for a pool's encoder.
        "precision": getattr(idx.prescreen.backend, "precision", None),
        "meaningless": idx.prescreen.meaningless or idx.refine.meaningless,
        "notes": notes,
    }
    print(json.dumps(summary) if a.json else " ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _load_image(path: Path, max_bytes: int) -> Any:
    """A query image file decoded by the service's decoder (ConfigError when unreadable)."""
    from agent.models.images import decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read query image {path}: {exc}") from exc
    return decode_image(data, max_bytes=max_bytes)


def cmd_query(a: argparse.Namespace) -> int:
    from agent.channels.retrieval import Query
    from agent.index.video_index import VideoIndex
    from agent.service.answer import query_answer

    if a.url:
        return _remote_query(a)
    if (a.text is None) == (a.image is None):
        raise ConfigError("give a query text or --image PATH (one of them)")
    if a.index is None:
        raise ConfigError("give an index directory, or --url ws://HOST:PORT for a running service")
    idx = VideoIndex.open(Path(a.index))
    limits = idx.settings.query
    q = Query(
        text=a.text,
        image=_load_image(a.image, limits.max_image_bytes) if a.image else None,
        streams=[a.stream] if a.stream else None,
        start=a.start,
        end=a.end,
        top_k=a.top_k,
        channels=a.channels,
    )
    pending = idx.start_query(q)  # checks the query against the index's limits
    # Progressive: the prescreen's answer (--fast), or the one refined within --budget seconds
    # (a wall-clock budget: under load it refines less; --budget all is the full, repeatable search).
    results = pending.first if a.fast else pending.refine(a.budget)
    if a.llm and q.text is not None:
        results = _llm_refine(a, idx, q.text, results)
    answer = query_answer(results, a.top_k or limits.top_k)
    if a.json:
        print(answer.model_dump_json(indent=2))
        return 0
    _print_answer(answer, wall=False)
    return 0


def _print_answer(answer: Any, *, wall: bool) -> None:
    """The table of a :class:`~agent.service.answer.QueryAnswer` (local or remote)."""
    if answer.meaningless:
        print("WARNING: random encoder weights: these scores are MEANINGLESS")
    if answer.abstained:
        print("no confident match: the best candidates, all below the confidence threshold")
    head = f"{'#':>2}  {'stream':<20} {'start':>9} {'end':>9} {'score':>7} {'conf':>5}  "
    print(head + (f"{'wall start':<30} " if wall else "") + "path")
    for i, m in enumerate(answer.moments, 1):
        conf = "-" if m.confidence is None else f"{m.confidence:.2f}"
        row = f"{i:>2}  {m.stream:<20} {m.start:>9.2f} {m.end:>9.2f} {m.score:>7.4f} {conf:>5}  "
        said = "".join(f'  {ch}: "{q}"' for ch, q in m.quotes.items())
        print(row + (f"{m.wall_start or '-':<30} " if wall else "") + m.answered_by + said)
    for name, st in answer.streams.items():
        for note in st.notes:
            print(f"note [{name}]: {note}")


def _llm_refine(a: argparse.Namespace, idx: Any, text: str, results: dict[str, Any]) -> dict[str, Any]:
    """Hand the CLIP proposals to the LLM stage at ``--llm URL`` (falls back on failure)."""
    import asyncio

    from agent.config import LLMConfig
    from agent.service.llm_handoff import refine_once

    return asyncio.run(
        refine_once(
            LLMConfig(url=a.llm, timeout=a.llm_timeout),
            idx,
            text,
            results,
            a.top_k or idx.settings.query.top_k,
        )
    )


def _remote_query(a: argparse.Namespace) -> int:
    import asyncio

    from agent.config import env_str
    from agent.service.client import remote_query

    # With --url the positional slot holds the text: `vmr query --url ws://h:p "a van"`.
    text = a.text if a.text is not None else a.index
    if (text is None) == (a.image is None):
        raise ConfigError("give a query text or --image PATH (one of them)")
    if a.budget is None:  # a service bounds every query's refinement (shared encoder)
        raise ConfigError(
            f"--budget all is for a local index; a service refines for {MAX_REFINE_BUDGET_S:g} s at most"
        )
    reply = asyncio.run(
        remote_query(
            a.url,
            text=None if a.image else text,
            image_path=a.image,
            streams=[a.stream] if a.stream else None,
            start=a.start,
            end=a.end,
            top_k=a.top_k,
            token=env_str("VMR_TOKEN"),
            budget=a.budget,
            fast=a.fast,
        )
    )
    if a.json:
        print(reply.model_dump_json(indent=2))
        return 0
    _print_answer(reply, wall=True)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from agent.index.video_index import VideoIndex

    if Path(a.index).is_file():
        return _video_info(a)
    info = VideoIndex.open(Path(a.index)).info()
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        for name, s in info["streams"].items():
            print(
                f"{name}: {s['tokens']}/{s['budget']} tokens, {s['covered_seconds']:.1f}s covered, "
                f"{s['memory_bytes'] / 1024:.0f} KiB memory, {s['store_bytes'] / 2**20:.1f} MiB frames"
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


# ------------------------------------------------------------------ parser
def _budget(text: str) -> float | None:
    """A refine budget in seconds (0 to MAX_REFINE_BUDGET_S), or ``all`` (None: refine everything planned)."""
    if text == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds (or 'all'): {text!r}") from None
    if not 0 <= value <= MAX_REFINE_BUDGET_S:
        raise argparse.ArgumentTypeError(f"budget must be between 0 and {MAX_REFINE_BUDGET_S:g} seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmr", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("ingest", help="turn a video into a bounded index")
    pi.add_argument("video")
    pi.add_argument("--index", required=True)
    pi.add_argument("--stream", default=None, help="stream id (default: from the file name)")
    pi.add_argument("--json", action="store_true")
    pi.add_argument("--quiet", action="store_true")
    pi.add_argument(
        "--decode-threads",
        type=int,
        choices=range(65),
        default=0,
        metavar="N",
        help="FFmpeg decoder threads, 0..64 (0: FFmpeg's choice; 1: least CPU beside a CPU encoder)",
    )
    add_model_options(pi)
    add_index_options(pi)
    pi.set_defaults(func=cmd_ingest)

    pq = sub.add_parser("query", help="top moments for a text or image query")
    pq.add_argument("index", nargs="?", help="index directory (omit with --url)")
    pq.add_argument("text", nargs="?")
    pq.add_argument("--url", default=None, help="ask a running `vmr serve` (ws://HOST:PORT) instead")
    pq.add_argument("--llm", default=None, help="LLM stage: OpenAI-compatible base URL (vLLM, llama.cpp)")
    pq.add_argument("--llm-timeout", type=float, default=120.0)
    pq.add_argument("--image", type=Path, default=None)
    pq.add_argument("--stream", default=None)
    pq.add_argument("--start", type=float, default=None)
    pq.add_argument("--end", type=float, default=None)
    pq.add_argument("--top-k", type=int, default=5)
    pq.add_argument(
        "--fast", action="store_true", help="print the first (prescreen, anchor-level) answer, unrefined"
    )
    pq.add_argument(
        "--budget",
        type=_budget,
        default=DEFAULT_REFINE_BUDGET_S,
        help=f"seconds of refinement after the first answer (default {DEFAULT_REFINE_BUDGET_S:g}); "
        "what a budget reaches depends on the machine's speed and load, so answers may differ between "
        "runs: 'all' refines everything planned (the full search: the same index gives the same answer)",
    )
    pq.add_argument(
        "--channels",
        type=lambda s: [c for c in s.split(",") if c] or None,
        default=None,
        help="only these channels answer, comma-separated (visual,speech,ocr); default: all",
    )
    pq.add_argument("--json", action="store_true")
    pq.set_defaults(func=cmd_query)

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

    serve.register(sub)
    for entry in entry_points(group=COMMANDS_GROUP):
        _register(entry, sub)
    return p


COMMANDS_GROUP = "vmr.commands"
"""Entry-point group of sub-commands other packages add (``bench``, ``llm``; see pyproject.toml).

Plug-ins, not imports: the CLI names no module above it (``bench`` imports the CLI's options),
so the layers stay a one-way street and an optional part missing from a build is just absent.
"""


def _register(entry: EntryPoint, sub: Any) -> None:
    try:
        register = entry.load()
    except ModuleNotFoundError as exc:
        if exc.name and entry.value.startswith(exc.name):
            return  # optional part not present in this build
        raise
    register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except VmrError as exc:
        print(f"vmr: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vmr query ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
