"""The checks every mount test ends with."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from litefs import ltx
from tests.nodes import TestNode


def logical_bytes(node: TestNode, name: str) -> bytes:
    """The committed database, read through the mount after folding any WAL into it."""
    con = sqlite3.connect(node.path(name), isolation_level=None)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0, "checkpoint could not complete"
        return Path(node.path(name)).read_bytes()
    finally:
        con.close()


def check_chain(node: TestNode, name: str, tmp_path: Path) -> ltx.Pos:
    """The LTX files from TXID 1 rebuild the database byte for byte; gap-free; -pos agrees."""
    data = logical_bytes(node, name)
    files = sorted((node.data / "dbs" / name / "ltx").glob("*.ltx"))
    ids = [ltx.parse_filename(f.name) for f in files]
    assert ids and ids[0][0] == 1, f"no chain from TXID 1: {ids[:3]}"
    assert all(b[0] == a[1] + 1 for a, b in zip(ids, ids[1:])), "TXIDs have a gap"
    out = tmp_path / f"rebuilt-{name}"
    out.unlink(missing_ok=True)
    pos = ltx.apply_files(out, files)
    assert out.read_bytes() == data, "the LTX chain does not reproduce the database"
    assert ltx.database_checksum(out) == pos.checksum
    assert Path(node.path(name + "-pos")).read_text() == f"{pos}\n"
    con = sqlite3.connect(node.path(name))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return pos
