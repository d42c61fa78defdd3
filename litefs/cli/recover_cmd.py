"""`litefs recover (--rebuild | --reset) NAME [--config PATH]`: repair a database that startup
recovery refused, with the node stopped."""
from __future__ import annotations

import argparse

from litefs.config import find_config_path, load_config
from litefs.db import repair
from litefs.db.store import DataDirLock


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="repair a database that the node refused to mount (node stopped)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rebuild", action="store_true", help="replay the local LTX files from a snapshot")
    how.add_argument("--reset", action="store_true", help="accept the database file as it is, as a new snapshot")
    p.add_argument("--config", help="config file (for data.dir)")
    p.add_argument("name", help="database name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data_dir = load_config(find_config_path(args.config)).data.dir
    with DataDirLock(data_dir):
        print(repair.rebuild(data_dir, args.name) if args.rebuild else repair.reset(data_dir, args.name))
    return 0
