"""Several writer processes and readers at once: consistent reads, gap-free TXIDs."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.fuse.invariants import check_chain

WRITER = """
import sqlite3, sys
path, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
for i in range(n):
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO a (w, i) VALUES (?, ?)", (wid, i))
    con.execute("INSERT INTO b (w, i) VALUES (?, ?)", (wid, i))
    con.execute("COMMIT")
"""

READER = """
import sqlite3, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
deadline = time.monotonic() + seconds
reads = 0
while time.monotonic() < deadline:
    con.execute("BEGIN")
    a = con.execute("SELECT count(*) FROM a").fetchone()[0]
    b = con.execute("SELECT count(*) FROM b").fetchone()[0]
    con.execute("COMMIT")
    if a != b:
        sys.exit(f"torn read: a={a} b={b}")
    reads += 1
print(reads)
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_writers_and_readers(node, tmp_path, mode):
    path = node.path("app.db")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE a (w, i)")
    con.execute("CREATE TABLE b (w, i)")
    con.close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), "40"]) for w in range(3)]
    readers = [subprocess.Popen([sys.executable, "-c", READER, path, "3"], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    assert [w.wait(120) for w in writers] == [0, 0, 0]
    for r in readers:
        out, _ = r.communicate(timeout=120)
        assert r.returncode == 0 and int(out) > 0
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM a").fetchone()[0] == 120
    assert con.execute("SELECT count(*), count(DISTINCT w || '-' || i) FROM b").fetchone() == (120, 120)
    con.close()
    pos = check_chain(node, "app.db", tmp_path)  # checks TXIDs are gap-free too
    assert pos.txid == 122 + (mode == "wal")  # two CREATEs, 120 commits, and the switch to WAL
