"""`litefs archive ls`: browse the archive (databases, levels, objects, restorable windows)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from litefs.archive.restore import describe_database, list_databases
from litefs.archive.store import open_archive
from litefs.cli.restore_cmd import _size, add_archive_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archive", help="browse the archive")
    s = p.add_subparsers(dest="archive_command", metavar="ACTION", required=True)
    ls = s.add_parser("ls", help="databases, levels, objects and restorable windows")
    ls.add_argument("--db", metavar="NAME", help="only this database")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--all", action="store_true",
                    help="list every level-0 bundle (a full listing of level 0) instead of only those after the "
                         "newest compaction")
    add_archive_source(ls)
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for noisy in ("botocore", "boto3", "s3transfer"):  # "Found credentials in ..." is not news
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store, layout = open_archive(args.config, args.url)
    dbs = [args.db] if args.db else list_databases(store, layout)
    out = [describe_database(store, layout, db, all_bundles=args.all) for db in dbs]
    if args.json:
        json.dump({"archive": store.description + ("/" + layout.prefix if layout.prefix else ""),
                   "databases": out}, sys.stdout, indent=2)
        print()
        return 0
    if not out:
        print(f"no databases in {store.description}")
    for d in out:
        w = d["window"]
        if w:
            print(f"{d['db']}: restorable from {w['start']['time']} (TXID {w['start']['txid']}) to "
                  f"{w['end']['time']} (TXID {w['end']['txid']})")
            for g in w["gaps"]:
                print(f"  gap: TXIDs {g['from']}..{g['to']} are missing")
        else:
            print(f"{d['db']}: nothing restorable")
        l0 = d["l0"]
        shown = "every bundle" if l0["complete"] else f"bundles from TXID {int(l0['listedFrom'], 16)} on"
        print(f"  level 0 (bundles, one per upload): kept from TXID {int(l0['start'], 16)} on; {shown}: "
              f"{l0['objects']} object(s), {_size(l0['bytes'])}")
        for lv in d["levels"]:
            kind = "snapshots" if lv["level"] == 9 else "compactions"
            print(f"  level {lv['level']} ({kind}): {lv['objects']} object(s), {_size(lv['bytes'])}")
        for o in d["objects"]:
            flag = "  MISSING" if o.get("missing") else ""
            flag = flag or ("  (below the window: garbage)" if o.get("belowWindow") else "")
            times = f"{o['firstCommit']} .. {o['lastCommit']}  " if "firstCommit" in o else ""
            print(f"    {o['name']}  TXID {int(o['min'], 16)}..{int(o['max'], 16)}  {times}{_size(o['size'])}{flag}")
        for u in d["unindexed"]:
            what = "scheduled for deletion" if u["deleting"] else "not in the manifest"
            print(f"    {u['key']}  {_size(u['size'])}  ({what})")
        for note in d["notes"]:
            print(f"  note: {note}")
    return 0
