"""`litefs export --name NAME DST`: a consistent copy of a database, written atomically."""
from __future__ import annotations

import argparse
import os
import shutil
import urllib.request

from litefs.cli.import_cmd import DEFAULT_URL, open_url
from litefs.fsutil import atomic_write


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a database to a SQLite file")
    p.add_argument("--name", required=True, help="database name on the mount")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the node's API (default {DEFAULT_URL})")
    p.add_argument("dst", help="where to write the SQLite file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    req = urllib.request.Request(f"{args.url.rstrip('/')}/export?name={urllib.request.quote(args.name)}")
    # Stale sidecars would make SQLite read the new file through an old journal or WAL.
    for suffix in ("-journal", "-wal", "-shm"):
        try:
            os.unlink(args.dst + suffix)
        except FileNotFoundError:
            pass
    with open_url(req) as resp, atomic_write(args.dst) as f:
        shutil.copyfileobj(resp, f, 1 << 20)
        size = f.tell()
    print(f"exported {args.name} to {args.dst} ({size} bytes)")
    return 0
