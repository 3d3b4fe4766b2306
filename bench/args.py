"""What every bench command reads from its parsed arguments: the command line, the encoder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
"""The shared data folder beside the checkout (``../shared/data``)."""
RESULTS = REPO / "bench" / "results"


def command_line(args: argparse.Namespace) -> str:
    """The command as typed: ``agent.cli.main`` records its argv on ``args``."""
    argv = getattr(args, "argv", None)
    return "vmr " + " ".join(sys.argv[1:] if argv is None else argv)


def encoder_from_args(args: argparse.Namespace) -> Any:
    from agent.cli.options import encoder_config

    return encoder_config(
        args.model,
        args.pretrained,
        args.checkpoint,
        args.threads,
        random_weights=args.random_weights,
        backend=args.backend,
        precision=args.precision,
    )


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``: where the torch backend runs (read by :func:`pin_device`)."""
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch device (cpu hides CUDA)"
    )


def pin_device(args: argparse.Namespace) -> None:
    """``--device cpu`` hides CUDA; call before torch is imported (the torch backend stays on CPU)."""
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def write_device_report(args: argparse.Namespace, report: dict[str, Any], prefix: str) -> Path:
    """Write ``report`` to ``args.out`` or ``bench/results/PREFIX-MODEL-BACKEND-DEVICE.json``.

    SystemExit when ``--device cuda`` was asked for and the encoder ran elsewhere.
    """
    enc = report["encoder"]
    if args.device == "cuda" and "cuda" not in enc["device"]:
        raise SystemExit(f"--device cuda, but the encoder ran on {enc['device']}")
    name = f"{prefix}-{enc['name'].split(':')[0]}-{enc['backend']}-{enc['device'].split(':')[0]}"
    out: Path = args.out or RESULTS / f"{name}.json"
    save_report(out, report, show="summary")
    return out


def save_report(out: Path, report: dict[str, Any], *, show: str | None = None) -> None:
    """Write ``report`` as indented JSON to ``out`` (folders made); print ``report[show]`` if named."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if show is not None:
        print(json.dumps(report[show], indent=2))
    print(f"wrote {out}")
