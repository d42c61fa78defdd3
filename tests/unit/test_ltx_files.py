"""Compaction, apply and the `litefs ltx` commands, on LTX chains and real SQLite files."""
from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from litefs import ltx
from litefs.cli import main
from litefs.errors import LTXError, PositionMismatchError
from litefs.ltx.format import CHECKSUM_FLAG
from tests.ltxgen import decode, new_chain
from tests.unit.test_ltx_codec import GOLDEN, GOLDEN_DB


def write_chain(tmp_path: Path, chain) -> list[Path]:
    paths = []
    for i, data in enumerate(chain.files):
        p = tmp_path / ltx.format_filename(i + 1, i + 1)
        p.write_bytes(data)
        paths.append(p)
    return paths


@pytest.mark.parametrize("compress", [False, True])
def test_apply_chain_rebuilds_every_state(tmp_path, compress):
    chain = new_chain(11, 1024, compress, commits=8)
    paths = write_chain(tmp_path, chain)
    db = tmp_path / "db"
    for i, p in enumerate(paths):
        pos = ltx.apply_files(db, [p], txid=i)
        assert db.read_bytes() == chain.database(i)
        assert pos == ltx.Pos(i + 1, chain.checksum if i == len(paths) - 1 else pos.checksum)
        assert ltx.database_checksum(db) == pos.checksum


def test_apply_refuses_a_mismatch_and_changes_nothing(tmp_path):
    chain = new_chain(12, 512, False, commits=4)
    paths = write_chain(tmp_path, chain)
    db = tmp_path / "db"
    ltx.apply_files(db, paths[:2])
    before = db.read_bytes()
    with pytest.raises(PositionMismatchError, match="pre-apply checksum"):
        ltx.apply_files(db, [paths[3]], txid=2)
    assert db.read_bytes() == before
    damaged = bytearray(paths[2].read_bytes())
    damaged[150] ^= 1
    paths[2].write_bytes(bytes(damaged))
    with pytest.raises(LTXError):
        ltx.apply_files(db, [paths[2]], txid=2)
    assert db.read_bytes() == before


@pytest.mark.parametrize("compress", [False, True])
def test_compact_equals_applying_every_file(tmp_path, compress):
    chain = new_chain(13, 512, compress, commits=9)
    paths = write_chain(tmp_path, chain)
    # A snapshot first input gives a snapshot.
    out = io.BytesIO()
    header, trailer = ltx.compact(out, paths, compress=compress)
    assert (header.min_txid, header.max_txid, header.is_snapshot) == (1, 9, True)
    assert trailer.post_apply_checksum == chain.checksum
    (tmp_path / "all.ltx").write_bytes(out.getvalue())
    ltx.apply_files(tmp_path / "db", [tmp_path / "all.ltx"])
    assert (tmp_path / "db").read_bytes() == chain.database()
    # An incremental range applies on top of the state before it.
    out = io.BytesIO()
    header, _ = ltx.compact(out, paths[3:], compress=compress)
    assert (header.min_txid, header.pre_apply_checksum) == (4, decode(chain.files[3])[0].pre_apply_checksum)
    assert header.timestamp == decode(chain.files[-1])[0].timestamp
    (tmp_path / "tail.ltx").write_bytes(out.getvalue())
    ltx.apply_files(tmp_path / "db2", paths[:3])
    ltx.apply_files(tmp_path / "db2", [tmp_path / "tail.ltx"], txid=3)
    assert (tmp_path / "db2").read_bytes() == chain.database()


def test_compact_drops_pages_above_a_shrunk_commit(tmp_path):
    chain = new_chain(14, 512, False, commits=1)
    size = len(chain.pages)
    chain.commit({size + 1: b"a" * 512, size + 2: b"b" * 512}, size + 2)
    chain.commit({1: b"c" * 512}, size)
    paths = write_chain(tmp_path, chain)
    out = io.BytesIO()
    header, _ = ltx.compact(out, paths[1:])
    _, pages, _ = decode(out.getvalue())
    assert header.commit == size and max(pages) <= size and set(pages) == {1}


def test_compact_refuses_gaps_and_broken_chains(tmp_path):
    chain = new_chain(15, 512, False, commits=4)
    paths = write_chain(tmp_path, chain)
    with pytest.raises(LTXError, match="TXID gap"):
        ltx.compact(io.BytesIO(), [paths[0], paths[2]])
    (tmp_path / "o").mkdir()
    other_paths = write_chain(tmp_path / "o", new_chain(16, 512, False, commits=4))
    with pytest.raises(LTXError, match="checksum chain broken"):
        ltx.compact(io.BytesIO(), [paths[0], paths[1], other_paths[2]])
    with pytest.raises(LTXError, match="page size"):
        big = new_chain(17, 1024, False, commits=3)
        ltx.compact(io.BytesIO(), [paths[0], paths[1], write_chain(tmp_path / "o", big)[2]])


# -- the CLI ----------------------------------------------------------------------------------

def make_sqlite(path: Path, rows: int = 200, page_size: int = 4096) -> None:
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i} " * 20,) for i in range(rows)])
    con.commit()
    con.close()


def test_cli_checksum_encode_apply_round_trip(tmp_path, capsys):
    db = tmp_path / "src.db"
    make_sqlite(db)
    assert main(["ltx", "checksum", str(db)]) == 0
    checksum = capsys.readouterr().out.strip()
    assert len(checksum) == 16 and int(checksum, 16) & CHECKSUM_FLAG
    assert main(["ltx", "encode-db", str(db), str(tmp_path / "snap.ltx")]) == 0
    assert main(["ltx", "verify", str(tmp_path / "snap.ltx")]) == 0
    assert main(["ltx", "apply", "--db", str(tmp_path / "out.db"), str(tmp_path / "snap.ltx")]) == 0
    assert (tmp_path / "out.db").read_bytes() == db.read_bytes()
    capsys.readouterr()
    assert main(["ltx", "dump", "--json", str(tmp_path / "snap.ltx")]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert dumped["trailer"]["postApplyChecksum"] == checksum
    assert dumped["header"]["minTXID"] == "0000000000000001"
    assert [p["pgno"] for p in dumped["pages"]] == list(range(1, db.stat().st_size // 4096 + 1))


def test_cli_golden_checksum(capsys):
    if not GOLDEN.exists():
        pytest.skip("no golden file")
    assert main(["ltx", "checksum", str(GOLDEN_DB)]) == 0
    assert capsys.readouterr().out.strip() == "fe3831a381c602b9"
    assert main(["ltx", "dump", str(GOLDEN)]) == 0
    out = capsys.readouterr().out
    assert "pgno=7 checksum=eaf0947b2055d648" in out and "Post-apply: fe3831a381c602b9" in out


@pytest.mark.parametrize("damage,reason", [
    (lambda d: b"LTX2" + d[4:], "bad magic"),
    (lambda d: d[:-9], "truncated trailer"),
    (lambda d: d[:60], "truncated header"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "file checksum mismatch"),
    (lambda d: d[:300] + bytes([d[300] ^ 4]) + d[301:], "checksum mismatch"),
])
def test_cli_verify_names_file_and_reason(tmp_path, capsys, damage, reason):
    chain = new_chain(18, 512, False, commits=2)
    good, bad = tmp_path / "good.ltx", tmp_path / "bad.ltx"
    good.write_bytes(chain.files[1])
    bad.write_bytes(damage(chain.files[1]))
    assert main(["ltx", "verify", str(good), str(bad)]) == 3
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err and str(good) not in err


def test_cli_compact_and_apply_exit_codes(tmp_path, capsys):
    chain = new_chain(19, 512, True, commits=5)
    paths = [str(p) for p in write_chain(tmp_path, chain)]
    assert main(["ltx", "compact", str(tmp_path / "c.ltx"), *paths]) == 0
    assert main(["ltx", "apply", "--db", str(tmp_path / "db"), str(tmp_path / "c.ltx")]) == 0
    assert (tmp_path / "db").read_bytes() == chain.database()
    assert main(["ltx", "compact", str(tmp_path / "gap.ltx"), paths[0], paths[2]]) == 3
    assert "TXID gap" in capsys.readouterr().err
    assert not (tmp_path / "gap.ltx").exists() and not (tmp_path / "gap.ltx.tmp").exists()
    assert main(["ltx", "apply", "--db", str(tmp_path / "db2"), paths[1]]) == 4


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "litefs", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("litefs ")
