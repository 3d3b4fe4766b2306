"""``vmr query``: top moments for a text or image query, from a local index or a running service.

Registered into the main CLI by :func:`register`. A local query is
progressive: the prescreen's answer (``--fast``), or the one refined within
``--budget`` seconds (``--budget all``: the full, repeatable search), optionally
handed to an LLM stage (``--llm URL``). With ``--url`` a running ``vmr serve``
answers instead (its refinement is always bounded).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.channels.refine import DEFAULT_REFINE_BUDGET_S, MAX_REFINE_BUDGET_S
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import LLMConfig


def register(sub: Any) -> None:
    """Add ``vmr query`` to the ``vmr`` sub-commands (``sub``: its subparsers action)."""
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
    llm = _llm_config(a) if a.llm else None  # checked before the index and the model load
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
    if llm is not None and q.text is not None:
        results = _llm_refine(a, llm, idx, q.text, results)
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


def _llm_config(a: argparse.Namespace) -> LLMConfig:
    """The :class:`~agent.config.LLMConfig` of ``--llm``/``--llm-timeout`` (ConfigError when invalid)."""
    from pydantic import ValidationError

    from agent.cli.options import validation_message
    from agent.config import LLMConfig

    try:
        return LLMConfig(url=a.llm, timeout=a.llm_timeout)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from exc


def _llm_refine(
    a: argparse.Namespace, llm: LLMConfig, idx: Any, text: str, results: dict[str, Any]
) -> dict[str, Any]:
    """Hand the CLIP proposals to the LLM stage ``llm`` (falls back on failure)."""
    import asyncio

    from agent.service.llm_handoff import refine_once

    return asyncio.run(
        refine_once(
            llm,
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
