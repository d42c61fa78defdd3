"""`litefs import --name NAME SRC`: replace a database with a SQLite file, as one transaction."""
from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from typing import Any

from litefs.errors import LitefsError, UsageError

DEFAULT_URL = "http://localhost:20202"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import a SQLite file into a database on the primary")
    p.add_argument("--name", required=True, help="database name on the mount")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the node's API (default {DEFAULT_URL})")
    p.add_argument("src", help="SQLite file to import")
    p.set_defaults(func=run)


def open_url(req: urllib.request.Request) -> Any:
    """Send a request to a node; HTTP errors become LitefsError with the node's message."""
    try:
        return urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as exc:
        err = LitefsError(f"{req.full_url}: {exc.code} {exc.read().decode(errors='replace').strip()}")
        if 400 <= exc.code < 500:
            err.exit_code = UsageError.exit_code
        raise err from None
    except urllib.error.URLError as exc:
        raise LitefsError(f"cannot reach {req.full_url}: {exc.reason}") from None


def run(args: argparse.Namespace) -> int:
    size = os.path.getsize(args.src)
    with open(args.src, "rb") as f:
        req = urllib.request.Request(
            f"{args.url.rstrip('/')}/import?name={urllib.request.quote(args.name)}", data=f, method="POST",
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        with open_url(req) as resp:
            print(resp.read().decode().strip())
    return 0
