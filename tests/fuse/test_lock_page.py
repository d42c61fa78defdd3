"""A database that grows past 1 GiB crosses SQLite's lock page (slow: not run in CI)."""
from __future__ import annotations

import sqlite3

import pytest

from litefs import ltx
from tests.fuse.invariants import check_chain


@pytest.mark.slow
def test_database_crosses_the_lock_page(node, tmp_path):
    con = sqlite3.connect(node.path("big.db"), isolation_level=None)
    con.execute("PRAGMA page_size=65536")
    con.execute("CREATE TABLE t (v BLOB)")
    blob = b"\xab" * 60000
    while con.execute("PRAGMA page_count").fetchone()[0] < ltx.lock_pgno(65536) + 50:
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?)", [(blob,)] * 500)
        con.execute("COMMIT")
    con.close()
    check_chain(node, "big.db", tmp_path)
    for path in sorted((node.data / "dbs" / "big.db" / "ltx").glob("*.ltx")):
        with open(path, "rb") as f:
            assert ltx.lock_pgno(65536) not in {p for p, _ in ltx.Decoder(f).pages()}
