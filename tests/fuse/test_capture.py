"""Every SQLite transaction on the mount becomes exactly one LTX file, in every journal mode."""
from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs import ltx
from tests.fuse.invariants import check_chain
from tests.nodes import TestNode

MODES = ["delete", "truncate", "persist", "wal"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNode]:
    node = TestNode(tmp_path_factory.mktemp("capture")).start()
    yield node
    node.stop()


def sqlite_cli(path: str, sql: str) -> str:
    return subprocess.run(["sqlite3", path, sql], capture_output=True, text=True, check=True).stdout


def ltx_count(node: TestNode, name: str) -> int:
    return len(list((node.data / "dbs" / name / "ltx").glob("*.ltx")))


def workload(path: str, mode: str, page_size: int) -> int:
    """A mix of what applications do; returns the expected row count."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA page_size={page_size}")
    assert con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    con.execute("PRAGMA cache_size=-64")  # small cache: big transactions spill pages early
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("BEGIN")
    for i in range(50):
        con.execute("INSERT INTO t (v) VALUES (?)", (f"multi {i}",))
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.execute("INSERT INTO t (v) VALUES ('rolled back')")
    con.execute("ROLLBACK")
    con.execute("BEGIN")
    con.execute("SAVEPOINT a")
    con.execute("INSERT INTO t (v) VALUES ('savepoint undone')")
    con.execute("ROLLBACK TO a")
    con.execute("INSERT INTO t (v) VALUES ('savepoint kept')")
    con.execute("RELEASE a")
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 300,)] * 3000)
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t (v) VALUES (?)", [("spilled then rolled back" * 10,)] * 3000)
    con.execute("ROLLBACK")
    con.execute("DELETE FROM t WHERE id % 2 = 0")
    con.execute("VACUUM")
    if mode == "wal":
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    count = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    sqlite_cli(path, "INSERT INTO t (v) VALUES ('from the cli'); INSERT INTO t (v) VALUES ('again');")
    return count + 2


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
@pytest.mark.parametrize("mode", MODES)
def test_journal_modes_and_page_sizes(shared, tmp_path, mode, page_size):
    name = f"{mode}-{page_size}.db"
    expected = workload(shared.path(name), mode, page_size)
    assert sqlite_cli(shared.path(name), "SELECT count(*) FROM t").strip() == str(expected)
    pos = check_chain(shared, name, tmp_path)
    # Rolled-back transactions leave no LTX file: every file is a real change.
    assert ltx_count(shared, name) == pos.txid
    with open(shared.data / "dbs" / name / "ltx" / ltx.format_filename(pos.txid, pos.txid), "rb") as f:
        header = ltx.Decoder(f).header
    assert header.page_size == page_size and header.node_id != 0
    assert header.compressed  # data.compress defaults on
    if mode == "wal":
        assert header.wal_offset or header.wal_size == 0


def test_rollback_writes_no_ltx(shared, tmp_path):
    name = "rollback.db"
    sqlite_cli(shared.path(name), "CREATE TABLE t (x)")
    before = ltx_count(shared, name)
    con = sqlite3.connect(shared.path(name), isolation_level=None)
    con.execute("BEGIN")
    con.execute("INSERT INTO t VALUES (1)")
    con.execute("ROLLBACK")
    con.close()
    assert ltx_count(shared, name) == before
    check_chain(shared, name, tmp_path)


def test_journal_mode_switches_on_a_live_database(shared, tmp_path):
    name = "switch.db"
    con = sqlite3.connect(shared.path(name), isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    for i, mode in enumerate(["wal", "delete", "truncate", "wal", "persist", "delete"]):
        assert con.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
        con.execute("INSERT INTO t VALUES (?)", (i,))
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?)", [(i,)] * 100)
        con.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 6 * 101
    con.close()
    check_chain(shared, name, tmp_path)


def test_several_databases_at_once(shared, tmp_path):
    cons = {f"multi-{i}.db": sqlite3.connect(shared.path(f"multi-{i}.db"), isolation_level=None) for i in range(4)}
    for i, (name, con) in enumerate(cons.items()):
        con.execute(f"PRAGMA journal_mode={MODES[i]}")
        con.execute("CREATE TABLE t (x)")
    for round_ in range(20):
        for con in cons.values():
            con.execute("INSERT INTO t VALUES (?)", (round_,))
    for name, con in cons.items():
        con.close()
        check_chain(shared, name, tmp_path)
    listing = sorted(p.name for p in Path(shared.mount).iterdir())
    assert {"multi-0.db", "multi-0.db-pos", "multi-3.db"} <= set(listing)


def test_drop_writes_a_deletion_ltx(shared, tmp_path):
    name = "drop.db"
    sqlite_cli(shared.path(name), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    txid = ltx_count(shared, name)
    Path(shared.path(name)).unlink()
    assert not Path(shared.path(name)).exists()
    last = shared.data / "dbs" / name / "ltx" / ltx.format_filename(txid + 1, txid + 1)
    header, trailer = ltx.verify_file(last)
    assert header.commit == 0 and trailer.post_apply_checksum == ltx.CHECKSUM_FLAG
    # Re-creating continues the TXID sequence.
    sqlite_cli(shared.path(name), "CREATE TABLE u (y); INSERT INTO u VALUES (2);")
    assert sqlite_cli(shared.path(name), "SELECT y FROM u").strip() == "2"
    assert ltx_count(shared, name) > txid + 1
