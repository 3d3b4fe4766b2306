"""What every bench command reads from its parsed arguments: the command line, the encoder."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
    )
