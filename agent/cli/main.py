"""The ``vmr`` command line: ingest, query, info, eval (and hooks for bench, llm, serve)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from agent.cli import info, ingest, query, serve
from agent.errors import VmrError

__all__ = ["COMMANDS_GROUP", "build_parser", "main"]


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmr", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    for group in (ingest, query, info, serve):
        group.register(sub)
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
