"""The `litefs` command: one argparse parser, one module per subcommand.

Each subcommand module (litefs/cli/<name>_cmd.py) exposes `register(subparsers)`, which adds its parser and sets
`func=run`; `run(args) -> int` returns the exit code. LitefsError is reported on stderr without
a traceback and exits with the error's documented exit code (see litefs.errors).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from litefs.errors import LitefsError



def subcommand_modules() -> list[str]:
    """Every module named `<command>_cmd` in this package is a subcommand."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litefs", description="SQLite replication and point-in-time restore on a FUSE mount.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in subcommand_modules():
        importlib.import_module(f"litefs.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LitefsError as exc:
        print(f"litefs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
