"""``vmr bench ...``: haystack build / run and the Charades check.

``agent.cli.main`` imports this module and calls :func:`register` with its subparsers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import haystack
from bench.args import command_line, encoder_from_args
from bench.fidelity import ALL_STRATEGIES
from bench.run_haystack import DEFAULT_FRACTIONS, DEFAULT_RESULTS, RunOptions, run

DEFAULT_CHARADES = haystack.DEFAULT_DATA / "charades" / "annotations.jsonl"


def _csv(kind: Callable[[str], Any], choices: Any = None) -> Any:
    """An argparse type for comma-separated lists (``1,2,4``; ``""`` is the empty list)."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            vals = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc}") from exc
        bad = [v for v in vals if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {sorted(choices)}")
        return vals

    return parse


def _fraction(text: str) -> float:
    """``0.1`` or ``1/10``."""
    num, _, den = text.partition("/")
    value = float(num) / float(den) if den else float(num)
    if not 0 < value < 1:
        raise ValueError(f"budget fraction {text} must be in (0, 1)")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from bench import report

    params = haystack.make_params(
        duration=args.duration, fps=args.fps, height=args.height, needles=args.needles, seed=args.seed
    )
    opts = RunOptions(
        params=params,
        encoder=encoder_from_args(args),
        data=Path(args.data),
        cache=Path(args.cache),
        results=Path(args.out),
        passes=args.passes,
        decode=args.decode,
        latency_pass=args.latency_pass,
        latency_queries=args.latency_queries,
        max_refine_frames=args.max_refine_frames,
        sample_fps=args.sample_fps,
        ingest_grid=args.grid,
        budget=args.budget,
        gate=not args.no_gate,
        overlap=not args.no_overlap,
        compare=not args.no_compare,
        grids=args.grids,
        fractions=args.fractions,
        strategies=args.strategies,
        threads=args.build_threads,
        progress=not args.quiet,
        command=command_line(args),
        tag=args.tag,
    )
    rep = run(opts)
    paths = report.write(rep, opts.results)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return 0


def _cmd_charades(args: argparse.Namespace) -> int:
    from agent.cli.evaluate import charades_eval
    from agent.cli.options import settings_from_args
    from agent.store.atomic import write_json
    from bench.run_haystack import git_commit, machine_info

    settings = settings_from_args(args)
    t0 = time.perf_counter()
    result = charades_eval(Path(args.annotations), settings)
    out = {
        "command": command_line(args),
        "annotations": str(args.annotations),
        "settings": settings.model_dump(mode="json"),
        "machine": machine_info(),
        "git": git_commit(),
        "seconds": round(time.perf_counter() - t0, 2),
        **result,
    }
    if result["meaningless"]:
        out["note"] = "random encoder weights: these metrics carry no meaning"
    path = Path(args.out)
    write_json(path, out)
    print(json.dumps({"metrics": result["metrics"], "meaningless": result["meaningless"], "file": str(path)}))
    return 0


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.cli.options import add_model_options

    r = sub.add_parser(
        "run", help="build (cached) and benchmark a haystack: speed, memory, latency, strategies"
    )
    r.add_argument("--duration", type=haystack._duration_arg, default=3600.0, help="e.g. 10m, 1h, 8h")
    r.add_argument("--fps", type=int, default=2, choices=[2, 3, 4, 5, 25])
    r.add_argument("--height", type=int, default=480, choices=[480, 720])
    r.add_argument("--needles", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--data", default=str(haystack.DEFAULT_DATA), help="photo folder laid out like ../shared/data"
    )
    r.add_argument("--cache", default=str(haystack.DEFAULT_CACHE), help="build and embedding cache")
    r.add_argument("--out", default=str(DEFAULT_RESULTS), help="results folder")
    modes = _csv(str, {"full", "coarse"})
    r.add_argument("--passes", type=modes, default=("full", "coarse"), help="ingest passes: full,coarse")
    r.add_argument("--decode", type=modes, default=("full", "coarse"), help="decode-only passes: full,coarse")
    r.add_argument(
        "--latency-pass", choices=["full", "coarse"], default=None, help="pass whose hour marks time queries"
    )
    r.add_argument(
        "--latency-queries", type=int, default=20, help="image queries timed at each mark (0: none)"
    )
    r.add_argument(
        "--sample-fps", type=float, default=None, help="sampling rate (default: video fps up to 5, else 2)"
    )
    r.add_argument(
        "--max-refine-frames", type=int, default=None, help="frames refined per query (engine default 512)"
    )
    r.add_argument("--grid", type=int, default=2, help="super-image grid of the ingest passes")
    r.add_argument("--budget", type=int, default=4096, help="token budget of the ingest passes")
    r.add_argument("--no-gate", action="store_true", help="ingest without the static-stretch gate")
    r.add_argument("--no-overlap", action="store_true", help="decode inline instead of in a worker thread")
    r.add_argument("--no-compare", action="store_true", help="skip the strategy comparison")
    r.add_argument("--grids", type=_csv(int, {1, 2, 3, 4}), default=(1, 2, 3, 4), help="grids compared")
    r.add_argument("--fractions", type=_csv(_fraction), default=DEFAULT_FRACTIONS, help="e.g. 1/3,1/10,1/30")
    r.add_argument("--strategies", type=_csv(str, set(ALL_STRATEGIES)), default=tuple(ALL_STRATEGIES))
    r.add_argument("--tag", default="", help="suffix for the result file names")
    r.add_argument("--build-threads", type=int, default=None, help="x264 threads for the build")
    r.add_argument("--quiet", action="store_true")
    add_model_options(r)
    r.set_defaults(func=_cmd_run)


def _add_charades(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.cli.options import add_index_options, add_model_options

    c = sub.add_parser("charades", help="the real Charades-STA clip end to end (bench/results/charades.json)")
    c.add_argument("--annotations", default=str(DEFAULT_CHARADES))
    c.add_argument("--out", default=str(DEFAULT_RESULTS / "charades.json"))
    add_model_options(c)
    add_index_options(c)
    c.set_defaults(func=_cmd_charades)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` (``haystack build``, ``haystack run``, ``charades``, ``abstention``, ``compression``)."""
    bench = subparsers.add_parser("bench", help="benchmarks (results in bench/results/)")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_run(haystack.register(sub))
    _add_charades(sub)
    from bench import abstention

    abstention.register(sub)
    from bench import compression

    compression.register(sub)
