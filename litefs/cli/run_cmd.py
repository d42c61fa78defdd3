"""`litefs run [--promote] [--if-candidate] -- CMD ARGS...`: run a command (a migration) on the
primary, using the local node's API."""
from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.request

from litefs.cli.import_cmd import DEFAULT_URL, open_url
from litefs.errors import LitefsError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a command on the primary (e.g. migrations)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the local node's API (default {DEFAULT_URL})")
    p.add_argument("--promote", action="store_true", help="make this node primary first (handoff)")
    p.add_argument("--if-candidate", action="store_true", help="do nothing, successfully, on a non-candidate")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for promotion")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def info(url: str) -> dict:
    with open_url(urllib.request.Request(f"{url}/info")) as resp:
        return json.load(resp)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("no command given (litefs run -- CMD ARGS...)")
    url = args.url.rstrip("/")
    node = info(url)
    if args.if_candidate and not node["candidate"]:
        return 0
    if args.promote and not node["isPrimary"]:
        with open_url(urllib.request.Request(f"{url}/promote", data=b"", method="POST")):
            pass
        deadline = time.monotonic() + args.timeout
        while not info(url)["isPrimary"]:
            if time.monotonic() > deadline:
                raise LitefsError(f"this node did not become primary within {args.timeout}s")
            time.sleep(0.05)
    elif not node["isPrimary"]:
        raise LitefsError("this node is not the primary (use --promote)")
    return subprocess.call(command)
