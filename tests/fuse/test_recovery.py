"""Crashes at every step of a commit, corrupted files, and the repair commands."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from litefs import faults, ltx
from tests.fuse.invariants import check_chain
from tests.nodes import TestNode, wait_for


def populate(node: TestNode, mode: str, rows: int = 10) -> None:
    con = sqlite3.connect(node.path("app.db"), isolation_level=None)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(rows):
        con.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
    con.close()


def count(node: TestNode) -> int:
    con = sqlite3.connect(node.path("app.db"))
    try:
        return con.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        con.close()


def litefs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litefs", *args], capture_output=True, text=True)


@pytest.mark.parametrize("point", faults.POINTS)
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sigkill_during_a_commit(tmp_path, mode, point):
    node = TestNode(tmp_path).start()
    populate(node, mode)
    node.stop()
    node.env["LITEFS_FAULT"] = point
    node.start()
    # A 200-row transaction: the daemon kills itself at `point` while committing it.
    script = ("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
              "c.execute('BEGIN'); c.executemany('INSERT INTO t (v) VALUES (?)', [('big',)]*200); c.execute('COMMIT')")
    client = subprocess.run([sys.executable, "-c", script, node.path("app.db")], capture_output=True, timeout=60)
    assert client.returncode != 0, "the commit should have failed with the daemon"
    wait_for(lambda: node.proc.poll() is not None, 10, "the daemon to die")
    assert node.proc.returncode == -9
    node.kill()
    del node.env["LITEFS_FAULT"]
    node.start()
    rows = count(node)
    # All or nothing: the transaction is visible exactly when its LTX file was published.
    assert rows == (210 if point == "commit:after-rename" else 10)
    check_chain(node, "app.db", tmp_path)
    node.stop()


def test_corrupt_newest_ltx_refuses_to_mount(tmp_path):
    node = TestNode(tmp_path).start()
    populate(node, "delete")
    node.stop()
    newest = sorted((node.data / "dbs" / "app.db" / "ltx").glob("*.ltx"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    node.start(wait=False)
    assert node.proc.wait(30) == 5
    assert f"newest LTX file {newest.name} is invalid" in node.read_log()
    node.stop()


def _corrupt_page(node: TestNode, pgno: int) -> None:
    db = node.data / "dbs" / "app.db" / "database"
    ps = ltx.sqlite_page_size(db.read_bytes()[:100])
    with open(db, "r+b") as f:
        f.seek((pgno - 1) * ps + 100)
        f.write(b"\xde\xad\xbe\xef" * 8)


def _last_pages(node: TestNode) -> set[int]:
    newest = sorted((node.data / "dbs" / "app.db" / "ltx").glob("*.ltx"))[-1]
    with open(newest, "rb") as f:
        return {pgno for pgno, _ in ltx.Decoder(f).pages()}


def test_damage_inside_the_last_ltx_is_repaired(tmp_path):
    node = TestNode(tmp_path).start()
    populate(node, "delete")
    node.stop()
    _corrupt_page(node, max(_last_pages(node)))
    node.start()
    assert count(node) == 10
    check_chain(node, "app.db", tmp_path)
    node.stop()


def test_damage_elsewhere_refuses_then_rebuild_and_reset_repair(tmp_path):
    node = TestNode(tmp_path).start()
    con = sqlite3.connect(node.path("app.db"), isolation_level=None)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 500,)] * 200)
    con.execute("INSERT INTO t (v) VALUES ('last')")
    con.close()
    node.stop()
    outside = next(p for p in range(2, 100) if p not in _last_pages(node))
    _corrupt_page(node, outside)
    node.start(wait=False)
    assert node.proc.wait(30) == 5
    log = node.read_log()
    assert "database app.db: checksum" in log and "does not match the LTX post-apply checksum" in log
    assert "litefs recover --rebuild app.db" in log
    node.stop()
    cfg = str(node.dir / "litefs.yml")
    out = litefs("recover", "--rebuild", "--config", cfg, "app.db")
    assert out.returncode == 0, out.stderr
    node.start()
    assert count(node) == 201
    check_chain(node, "app.db", tmp_path)
    node.stop()
    # --reset takes the file as it is: a new snapshot at the next TXID.
    _corrupt_page(node, outside)
    out = litefs("recover", "--reset", "--config", cfg, "app.db")
    assert out.returncode == 0 and "reset to position" in out.stdout, out.stderr
    files = sorted((node.data / "dbs" / "app.db" / "ltx").glob("*.ltx"))
    assert len(files) == 1 and files[0].name.startswith("0000000000000001-")
    node.start()
    assert Path(node.path("app.db-pos")).read_text().startswith(files[0].name[17:33])
    node.stop()


def test_recover_refuses_while_the_node_runs(node):
    populate(node, "delete")
    out = litefs("recover", "--rebuild", "--config", str(node.dir / "litefs.yml"), "app.db")
    assert out.returncode == 2 and "in use by another litefs process" in out.stderr


def test_data_without_ltx_refuses(tmp_path):
    node = TestNode(tmp_path)
    d = node.data / "dbs" / "app.db"
    (d / "ltx").mkdir(parents=True)
    con = sqlite3.connect(d / "database")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    node.start(wait=False)
    assert node.proc.wait(30) == 5
    assert "litefs recover --reset app.db" in node.read_log()
    node.stop()
