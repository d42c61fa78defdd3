"""`litefs mount [--config PATH] [-- CMD ARGS...]`: run a node in the foreground."""
from __future__ import annotations

import argparse
import logging

from litefs.config import find_config_path, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount the file system and run the node (foreground)")
    p.add_argument("--config", help="config file (default ./litefs.yml, then /etc/litefs.yml)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...: run instead of `exec`")
    p.set_defaults(func=run)


def configure_logging(fmt: str, debug: bool, timestamp: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in root.handlers:
        if fmt == "json":
            from litefs.logfmt import JSONFormatter
            h.setFormatter(JSONFormatter())
        else:
            h.setFormatter(logging.Formatter(("%(asctime)s " if timestamp else "") + "%(levelname)s %(name)s: %(message)s"))


def run(args: argparse.Namespace) -> int:
    from litefs.node import Node

    path = find_config_path(args.config)
    config = load_config(path)
    configure_logging(config.log.format, config.log.debug, config.log.timestamp)
    logging.getLogger(__name__).info("config file read from %s", path)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return Node(config, command or None).run()
