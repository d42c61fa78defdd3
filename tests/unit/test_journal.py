"""Rollback journals: header checks and hot-journal rollback against journals SQLite wrote."""
from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from litefs.db.journal import (
    JOURNAL_MAGIC, JournalError, JournalHeader, is_hot_header, journal_checksum, parse_header,
    read_journal, rollback,
)


def ref_cksum(nonce: int, page: bytes) -> int:
    """pager_cksum, transcribed."""
    cksum = nonce
    i = len(page) - 200
    while i > 0:
        cksum += page[i]
        i -= 200
    return cksum & 0xFFFFFFFF


@dataclass
class HotJournal:
    page_size: int
    pre: bytes  # the database before the transaction
    db: bytes  # the database file mid-transaction (dirty pages spilled)
    journal: bytes
    rows: int  # rows before the transaction


def make_hot_journal(tmp: Path, page_size: int, synchronous: str = "FULL",
                     grow: bool = True) -> HotJournal:
    """Copy a database and its journal while a large transaction is open and uncommitted.

    A cache of 10 pages makes SQLite spill dirty pages into the database file before the
    commit, syncing the journal (and, in FULL mode, starting a new segment) each time.
    """
    path = tmp / f"src-{page_size}-{synchronous}-{grow}.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size={page_size}")
        assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        con.execute("BEGIN")
        for _ in range(120):
            con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (page_size // 3,))
        con.execute("COMMIT")
        assert not os.path.exists(f"{path}-journal")
        pre = path.read_bytes()
        con.execute("PRAGMA cache_size=10")
        con.execute("BEGIN")
        con.execute("UPDATE t SET v = randomblob(length(v))")
        if grow:
            for _ in range(80):
                con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (page_size // 2,))
        db = path.read_bytes()
        journal = Path(f"{path}-journal").read_bytes()
        con.execute("ROLLBACK")
    finally:
        con.close()
    return HotJournal(page_size, pre, db, journal, 120)


def write_pair(tmp: Path, name: str, db: bytes, journal: bytes) -> tuple[Path, Path]:
    dbp = tmp / name
    jp = tmp / f"{name}-journal"
    dbp.write_bytes(db)
    jp.write_bytes(journal)
    return dbp, jp


def check_db(path: Path, rows: int) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == rows
    finally:
        con.close()


def reader(data: bytes):
    return lambda off, n: data[off:off + n]


def segment_headers(hj: HotJournal) -> list[JournalHeader]:
    """Walk the segments the way SQLite does, using nRec from each header."""
    out = []
    first = parse_header(hj.journal)
    assert first is not None
    sector, rec = first.sector_size, hj.page_size + 8
    off = 0
    while off + 28 <= len(hj.journal):
        hdr = parse_header(hj.journal[off:off + 28], off)
        if hdr is None:
            break
        out.append(hdr)
        n = hdr.nrec if hdr.nrec != 0xFFFFFFFF else (len(hj.journal) - sector) // rec
        off = -(-(off + sector + n * rec) // sector) * sector
    return out


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
@pytest.mark.parametrize("synchronous", ["FULL", "OFF"])
def test_rollback_real_hot_journal(tmp_path, page_size, synchronous):
    hj = make_hot_journal(tmp_path, page_size, synchronous)
    assert hj.db != hj.pre, "the transaction must have reached the database file"
    assert len(hj.db) > len(hj.pre), "the transaction grew the database"
    hdr = parse_header(hj.journal)
    assert hdr is not None and is_hot_header(hj.journal)
    assert hdr.page_size == page_size
    assert hdr.db_size * page_size == len(hj.pre)
    if synchronous == "OFF":
        assert hdr.nrec == 0xFFFFFFFF  # no-sync: the record count is the file's
    else:
        assert len(segment_headers(hj)) > 1  # each spill synced the journal and began a segment

    pb = read_journal(reader(hj.journal), len(hj.journal))
    assert pb.valid and pb.page_size == page_size and pb.db_size == hdr.db_size
    assert pb.segments == (1 if synchronous == "OFF" else len(segment_headers(hj)))
    for pgno, page in pb.pages.items():
        assert page == hj.pre[(pgno - 1) * page_size:pgno * page_size]
    def pg(data: bytes, p: int) -> bytes:
        return data[(p - 1) * page_size:p * page_size]

    changed = {p for p in range(1, len(hj.pre) // page_size + 1) if pg(hj.db, p) != pg(hj.pre, p)}
    assert changed and changed <= set(pb.pages)

    dbp, jp = write_pair(tmp_path, "copy.db", hj.db, hj.journal)
    assert rollback(jp, dbp) == len(pb.pages)
    assert not jp.exists()
    assert dbp.read_bytes() == hj.pre
    check_db(dbp, hj.rows)


def test_rollback_without_growth(tmp_path):
    hj = make_hot_journal(tmp_path, 4096, grow=False)
    assert hj.db != hj.pre and len(hj.db) == len(hj.pre)
    dbp, jp = write_pair(tmp_path, "copy.db", hj.db, hj.journal)
    assert rollback(jp, dbp) > 0
    assert dbp.read_bytes() == hj.pre
    check_db(dbp, hj.rows)


def test_sqlite_agrees_with_our_reading(tmp_path):
    """SQLite's own hot-journal rollback of the same copy gives the same bytes as ours."""
    hj = make_hot_journal(tmp_path, 4096)
    dbp, _ = write_pair(tmp_path, "theirs.db", hj.db, hj.journal)
    con = sqlite3.connect(dbp)
    con.execute("SELECT count(*) FROM t").fetchone()
    con.close()
    assert not Path(f"{dbp}-journal").exists()
    ours, jp = write_pair(tmp_path, "ours.db", hj.db, hj.journal)
    rollback(jp, ours)
    assert ours.read_bytes() == dbp.read_bytes() == hj.pre


def test_persist_mode_zeroed_header_is_not_hot(tmp_path):
    path = tmp_path / "p.db"
    con = sqlite3.connect(path, isolation_level=None)
    assert con.execute("PRAGMA journal_mode=PERSIST").fetchone()[0] == "persist"
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    con.execute("INSERT INTO t(v) VALUES (randomblob(5000))")
    con.close()
    journal = Path(f"{path}-journal").read_bytes()
    assert len(journal) > 28 and journal[:28] == bytes(28)
    assert parse_header(journal) is None and not is_hot_header(journal)
    assert not read_journal(reader(journal), len(journal)).valid
    before = path.read_bytes()
    assert rollback(Path(f"{path}-journal"), path) == 0
    assert not Path(f"{path}-journal").exists()
    assert path.read_bytes() == before
    check_db(path, 1)


def test_truncated_journals(tmp_path):
    hj = make_hot_journal(tmp_path, 512)
    hdr = parse_header(hj.journal)
    assert hdr is not None
    full = read_journal(reader(hj.journal), len(hj.journal))
    rec = hj.page_size + 8
    # Shorter than the header, or than its sector: nothing to play back.
    for size in (0, 7, 27, hdr.sector_size - 1):
        cut = hj.journal[:size]
        assert not read_journal(reader(cut), size).valid
        assert is_hot_header(cut) == (size >= 8)
        assert (parse_header(cut) is not None) == (size >= 28)
    # Cut inside the first segment's records: exactly the whole records before the cut.
    first_pgnos = [struct.unpack_from(">I", hj.journal, hdr.sector_size + i * rec)[0]
                   for i in range(hdr.nrec)]
    for k in (0, 1, 3):
        size = hdr.sector_size + k * rec + rec // 2
        pb = read_journal(reader(hj.journal[:size]), size)
        assert pb.valid and pb.db_size == hdr.db_size and pb.segments == 1
        assert set(pb.pages) == {p for p in first_pgnos[:k] if p <= hdr.db_size}
        for pgno, page in pb.pages.items():
            assert page == full.pages[pgno]


def test_bad_record_checksum_ends_playback(tmp_path):
    hj = make_hot_journal(tmp_path, 512)
    hdr = parse_header(hj.journal)
    assert hdr is not None
    rec, ps, base = hj.page_size + 8, hj.page_size, hdr.sector_size
    pgnos = [struct.unpack_from(">I", hj.journal, base + i * rec)[0] for i in range(hdr.nrec)]
    for i in range(hdr.nrec):  # the real records carry SQLite's checksums
        page = hj.journal[base + i * rec + 4:base + i * rec + 4 + ps]
        stored = struct.unpack_from(">I", hj.journal, base + i * rec + 4 + ps)[0]
        assert journal_checksum(hdr.nonce, page) == ref_cksum(hdr.nonce, page) == stored
    full = read_journal(reader(hj.journal), len(hj.journal))
    assert full.segments > 1
    k = 2
    bad = bytearray(hj.journal)
    bad[base + k * rec + 4 + ps - 200] ^= 0x01  # a byte the checksum samples
    pb = read_journal(reader(bytes(bad)), len(bad))
    assert set(pb.pages) == set(pgnos[:k]) and pb.segments == 1
    # A byte the sparse checksum does not sample goes unnoticed, exactly as in SQLite.
    quiet = bytearray(hj.journal)
    quiet[base + k * rec + 4 + 1] ^= 0x01
    pb2 = read_journal(reader(bytes(quiet)), len(quiet))
    assert set(pb2.pages) == set(full.pages)
    assert pb2.pages[pgnos[k]] != full.pages[pgnos[k]]


# --- synthetic journals for the rules real journals rarely show -------------------------------

PS, SECTOR = 512, 512


def synth(segments: list[tuple[int, list[tuple[int, bytes]]]], db_size: int = 4,
          nonce: int = 0x01020304, page_size: int = PS, sector: int = SECTOR) -> bytes:
    """Segments of (nRec, records); each record (pgno, page) gets a correct checksum."""
    out = bytearray()
    for nrec, records in segments:
        out += b"\0" * (-len(out) % sector)
        out += JournalHeader(nrec, nonce, db_size, sector, page_size).pack().ljust(sector, b"\0")
        for pgno, page in records:
            out += struct.pack(">I", pgno) + page + struct.pack(">I", ref_cksum(nonce, page))
    return bytes(out)


def page(b: int) -> bytes:
    return bytes([b]) * PS


def test_header_round_trip():
    hdr = JournalHeader(3, 0xDEADBEEF, 10, 4096, 1024)
    raw = hdr.pack()
    assert raw[:8] == JOURNAL_MAGIC and len(raw) == 28
    assert parse_header(raw) == hdr
    assert parse_header(b"\0" * 28) is None
    assert parse_header(raw[:27]) is None


def test_first_occurrence_wins_across_segments():
    data = synth([(2, [(1, page(1)), (2, page(2))]), (2, [(2, page(9)), (3, page(3))])])
    pb = read_journal(reader(data), len(data))
    assert pb.segments == 2
    assert pb.pages == {1: page(1), 2: page(2), 3: page(3)}


def test_nrec_rules():
    recs = [(1, page(1)), (2, page(2))]
    # 0xFFFFFFFF: count from the file size.
    data = synth([(0xFFFFFFFF, recs)])
    assert read_journal(reader(data), len(data)).pages == dict(recs)
    # 0 in a hot journal: an empty segment (the records were never synced), but the first
    # header still dictates the database size.
    data = synth([(0, recs)], db_size=7)
    pb = read_journal(reader(data), len(data))
    assert pb.valid and pb.db_size == 7 and pb.pages == {}
    # nRec larger than the file: stop at the short record.
    data = synth([(5, recs)])
    assert read_journal(reader(data), len(data)).pages == dict(recs)


def test_end_markers_and_skips():
    # Page 0 ends playback; records past the original size are skipped, not checked.
    data = synth([(3, [(1, page(1)), (0, page(0)), (2, page(2))])])
    assert set(read_journal(reader(data), len(data)).pages) == {1}
    data = synth([(3, [(9, page(9)), (2, page(2)), (3, page(3))])], db_size=3)
    assert set(read_journal(reader(data), len(data)).pages) == {2, 3}
    # A bad checksum on a skipped page does not end playback.
    raw = bytearray(synth([(2, [(9, page(9)), (2, page(2))])], db_size=3))
    raw[SECTOR + 4 + PS] ^= 0xFF
    assert set(read_journal(reader(bytes(raw)), len(raw)).pages) == {2}
    # The lock page ends playback too (reachable only with a tiny page size).
    lock = 0x40000000 // PS + 1
    data = synth([(2, [(lock, page(5)), (1, page(1))])], db_size=lock + 5)
    assert read_journal(reader(data), len(data)).pages == {}
    # Invalid page or sector sizes in the first header: never synced, nothing to do.
    for ps, sector in ((500, 512), (512, 16), (131072, 512)):
        raw = bytearray(synth([(1, [(1, page(1))])]))
        struct.pack_into(">II", raw, 20, sector, ps)
        assert not read_journal(reader(bytes(raw)), len(raw)).valid


def test_page_size_zero_needs_the_database_page_size():
    data = synth([(1, [(1, page(1))])], page_size=0)
    with pytest.raises(JournalError):
        read_journal(reader(data), len(data))
    data = synth([(1, [(1, page(1))])], page_size=0)
    # SQLite's pre-3.5.8 journals: the page size comes from the database.
    pb = read_journal(reader(data[:SECTOR] + data[SECTOR:SECTOR + PS + 8]), SECTOR + PS + 8,
                      db_page_size=PS)
    assert pb.pages == {1: page(1)}


def test_inconsistent_reader_is_an_error():
    data = synth([(1, [(1, page(1))])])
    with pytest.raises(JournalError):
        read_journal(lambda off, n: data[off:off + n][:-1], len(data))


def test_rollback_edge_cases(tmp_path):
    hj = make_hot_journal(tmp_path, 4096)
    # No database (or an empty one): SQLite does not treat the journal as hot; it is removed.
    jp = tmp_path / "gone.db-journal"
    jp.write_bytes(hj.journal)
    assert rollback(jp, tmp_path / "gone.db") == 0 and not jp.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    jp = tmp_path / "empty.db-journal"
    jp.write_bytes(hj.journal)
    assert rollback(jp, empty) == 0 and not jp.exists() and empty.read_bytes() == b""
    # No journal at all.
    assert rollback(tmp_path / "none-journal", tmp_path / "none.db") == 0
    # A database shorter than its original size is extended to it (pager_truncate).
    dbp, jp = write_pair(tmp_path, "short.db", hj.db[:4096], hj.journal)
    rollback(jp, dbp)
    assert len(dbp.read_bytes()) == len(hj.pre)
