"""`litefs ltx ...`: inspect, verify, build, apply and compact LTX files."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from litefs import ltx
from litefs.errors import LitefsError
from litefs.fsutil import atomic_write


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ltx", help="work with LTX files")
    s = p.add_subparsers(dest="ltx_command", metavar="ACTION", required=True)

    d = s.add_parser("dump", help="print a file's header, pages and trailer")
    d.add_argument("file")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=dump)

    v = s.add_parser("verify", help="check files completely; exit 0 only if all are valid")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=verify)

    e = s.add_parser("encode-db", help="write a snapshot LTX (TXID 1) of a SQLite file")
    e.add_argument("db")
    e.add_argument("out")
    e.add_argument("--no-compress", dest="compress", action="store_false")
    e.set_defaults(func=encode_db)

    a = s.add_parser("apply", help="apply files in order to a database file")
    a.add_argument("--db", required=True)
    a.add_argument("files", nargs="+", metavar="FILE")
    a.set_defaults(func=apply)

    c = s.add_parser("checksum", help="print the rolling checksum of a SQLite file")
    c.add_argument("db")
    c.set_defaults(func=checksum)

    m = s.add_parser("compact", help="merge contiguous files into one")
    m.add_argument("out")
    m.add_argument("files", nargs="+", metavar="FILE")
    m.add_argument("--no-compress", dest="compress", action="store_false")
    m.set_defaults(func=compact)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dump(args: argparse.Namespace) -> int:
    with open(args.file, "rb") as f:
        dec = ltx.Decoder(f)
        pages = [(pgno, ltx_sum) for batch in dec.batches() for pgno, ltx_sum in zip(batch.pgnos, batch.checksums)]
    h, t = dec.header, dec.trailer
    assert t is not None
    if args.json:
        json.dump({
            "header": {
                "flags": h.flags, "pageSize": h.page_size, "commit": h.commit,
                "minTXID": "%016x" % h.min_txid, "maxTXID": "%016x" % h.max_txid,
                "timestamp": _time(h.timestamp), "preApplyChecksum": "%016x" % h.pre_apply_checksum,
                "walOffset": h.wal_offset, "walSize": h.wal_size, "walSalt1": h.wal_salt1,
                "walSalt2": h.wal_salt2, "nodeID": "%016X" % h.node_id,
            },
            "pages": [{"pgno": p, "checksum": "%016x" % c} for p, c in pages],
            "trailer": {"postApplyChecksum": "%016x" % t.post_apply_checksum,
                        "fileChecksum": "%016x" % t.file_checksum},
        }, sys.stdout, indent=2)
        print()
        return 0
    print("# HEADER")
    print(f"Flags:      0x{h.flags:08x}{' (lz4)' if h.compressed else ''}")
    print(f"Page size:  {h.page_size}")
    print(f"Commit:     {h.commit}")
    print(f"Min TXID:   {h.min_txid:016x} ({h.min_txid})")
    print(f"Max TXID:   {h.max_txid:016x} ({h.max_txid})")
    print(f"Timestamp:  {_time(h.timestamp)} ({h.timestamp})")
    print(f"Pre-apply:  {h.pre_apply_checksum:016x}")
    print(f"WAL offset: {h.wal_offset}")
    print(f"WAL size:   {h.wal_size}")
    print(f"WAL salt:   {h.wal_salt1:08x} {h.wal_salt2:08x}")
    print(f"Node ID:    {h.node_id:016X}")
    print()
    print("# PAGES")
    for pgno, checksum in pages:
        print(f"pgno={pgno} checksum={checksum:016x}")
    print()
    print("# TRAILER")
    print(f"Post-apply: {t.post_apply_checksum:016x}")
    print(f"File:       {t.file_checksum:016x}")
    return 0


def verify(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            ltx.verify_file(path)
            print(f"{path}: ok")
        except (LitefsError, OSError) as exc:
            failed += 1
            print(f"{path}: {exc}", file=sys.stderr)
    return 3 if failed else 0


def encode_db(args: argparse.Namespace) -> int:
    with atomic_write(args.out) as f:
        trailer = ltx.encode_database(args.db, f, compress=args.compress)
    print(f"{args.out}: post-apply checksum {trailer.post_apply_checksum:016x}")
    return 0


def apply(args: argparse.Namespace) -> int:
    pos = ltx.apply_files(args.db, args.files)
    print(f"{args.db}: position {pos}")
    return 0


def checksum(args: argparse.Namespace) -> int:
    print("%016x" % ltx.database_checksum(args.db))
    return 0


def compact(args: argparse.Namespace) -> int:
    with atomic_write(args.out) as f:
        header, trailer = ltx.compact(f, args.files, compress=args.compress)
    print(f"{args.out}: TXID {header.min_txid:016x}-{header.max_txid:016x}, "
          f"post-apply checksum {trailer.post_apply_checksum:016x}")
    return 0
