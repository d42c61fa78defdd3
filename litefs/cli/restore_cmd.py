"""`litefs restore`: restore a database from the archive to a point in time."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys

from litefs.archive.layout import format_time
from litefs.archive.restore import parse_target_time, parse_txid, restore
from litefs.archive.store import open_archive


def add_archive_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="PATH", help="read the archive settings from this litefs.yml")
    src.add_argument("--url", metavar="URL",
                     help="s3://bucket/prefix[?endpoint=URL&region=R&force-path-style=true] or file:///dir")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a database from the archive to a point in time",
                       description="Restore a database from the archive. Without --at or --txid, restores the "
                                   "latest archived state. --at restores the state after the last commit at or "
                                   "before the time; --txid restores exactly that TXID. Both work for any commit "
                                   "in the restorable window (see `litefs archive ls`); a target the archive "
                                   "cannot reach exactly (a gap, outside the window) fails with exit code 6.")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--at", metavar="TIME",
                        help="RFC 3339 time, unix seconds, or relative (-15m): restore the state after the last "
                             "commit at or before that time")
    target.add_argument("--txid", metavar="N", help="restore exactly this TXID (decimal, 0x-hex or 16 hex digits)")
    p.add_argument("--db", metavar="NAME", help="database name (optional if the archive holds one)")
    add_archive_source(p)
    p.add_argument("-o", "--output", metavar="OUT", help="the file to create (OUT.tmp is written first)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, download nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--if-not-exists", action="store_true", help="do nothing (exit 0) if OUT exists")
    p.add_argument("--parallel", type=int, default=8, metavar="N", help="parallel downloads (default 8)")
    p.set_defaults(func=run)
    # Let "--at -15m" through: argparse takes only plain negative numbers as values, and would read
    # "-15m" as an option. (`--at=-15m` works with any argparse.)
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = _NEGATIVE_OR_RELATIVE


_NEGATIVE_OR_RELATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-(\d+\.?\d*(ns|us|ms|s|m|h|d))+$")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    for noisy in ("botocore", "boto3", "s3transfer"):  # "Found credentials in ..." is not news
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store, layout = open_archive(args.config, args.url)
    at = parse_target_time(args.at) if args.at else None
    txid = parse_txid(args.txid) if args.txid else None
    if not args.dry_run and not args.output:
        from litefs.errors import UsageError
        raise UsageError("-o OUT is required (or --dry-run)")
    tty = sys.stderr.isatty() and not args.json

    def progress(n: int, total: int, b: int, total_b: int) -> None:
        if tty:
            print(f"\rfetching objects: {n}/{total} ({_size(b)} of {_size(total_b)})", end="", file=sys.stderr,
                  flush=True)

    result = restore(store, layout, args.db, args.output, txid=txid, at=at, parallel=max(1, args.parallel),
                     dry_run=args.dry_run, if_not_exists=args.if_not_exists, progress=progress)
    if tty and not args.dry_run and not result.skipped:
        print(file=sys.stderr)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        print()
        return 0
    if result.skipped:
        for note in result.notes:
            print(note)
        return 0
    plan = result.plan
    if args.dry_run:
        print(f"plan for {result.db} ({plan.target}): restores {plan.describe()}; {len(plan.objects)} object(s), "
              f"{_size(plan.size)}")
        for o in plan.objects:
            kind = f"bundle of {o.count} LTX file(s)" if o.is_bundle else ("snapshot" if o.is_snapshot else
                                                                            f"level {o.level}")
            print(f"  {o.name}  TXID {o.min_txid}..{o.max_txid}  commits {format_time(o.first_ts)} .. "
                  f"{format_time(o.last_ts)}  {_size(o.size)}  ({kind})")
    else:
        pt = result.point
        assert pt is not None
        print(f"restored {result.db} to TXID {pt.txid:016x} ({pt.txid}), committed at {format_time(pt.time)}, "
              f"into {result.output}")
        print(f"  {result.fetched} object(s), {_size(result.fetched_bytes)} in {result.seconds:.2f}s; checksum "
              f"{pt.checksum:016x} verified; integrity_check ok")
        if result.excluded:
            print(f"  re-planned {result.replans} time(s) around: "
                  + "; ".join(f"{k} ({v})" for k, v in result.excluded.items()))
    for note in result.notes:
        print(f"note: {note}")
    return 0
