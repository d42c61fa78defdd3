"""WAL checksums, headers and commit detection, against WAL files SQLite wrote."""
from __future__ import annotations

import random
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from litefs.db.wal import (
    WAL_VERSION, WALError, WALHeader, WALTracker, WALTransaction, checkpoint_pages,
    frame_checksum, wal_checksum,
)

TESTDATA = Path("/work/shared/testdata/sqlite-wal")
M32 = 0xFFFFFFFF


def ref_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """walChecksumBytes, transcribed."""
    fmt = ">2I" if big_endian else "<2I"
    for i in range(0, len(data), 8):
        x0, x1 = struct.unpack_from(fmt, data, i)
        s0 = (s0 + x0 + s1) & M32
        s1 = (s1 + x1 + s0) & M32
    return s0, s1


class Backing:
    """The daemon's backing file for `<db>-wal`, with a count of the bytes read from it."""

    def __init__(self, initial: bytes = b"") -> None:
        self.buf = bytearray(initial)
        self.read_bytes = 0

    def read(self, off: int, n: int) -> bytes:
        self.read_bytes += n
        return bytes(self.buf[off:off + n])

    def write(self, off: int, data: bytes) -> None:
        if len(self.buf) < off + len(data):
            self.buf.extend(bytes(off + len(data) - len(self.buf)))
        self.buf[off:off + len(data)] = data


def scan(data: bytes) -> tuple[WALTracker, list[WALTransaction]]:
    t = WALTracker(lambda off, n: data[off:off + n])
    return t, t.scan_existing(len(data))


def key(tx: WALTransaction) -> tuple:
    return tx.offset, tx.size, tx.commit, tx.pages, tx.salt1, tx.salt2, tx.checksum


def sqlite_writes(data: bytes, page_size: int, end: int | None = None) -> list[tuple[int, int]]:
    """SQLite's write pattern: the 32-byte header, then each frame's header and page apart."""
    end = len(data) if end is None else end
    out = [(0, 32)]
    fsz = 24 + page_size
    for off in range(32, end - fsz + 1, fsz):
        out += [(off, 24), (off + 24, page_size)]
    return out


def replay(data: bytes, writes: list[tuple[int, int]], backing: Backing | None = None,
           tracker: WALTracker | None = None) -> list[tuple[int, WALTransaction]]:
    """Apply writes of `data`'s bytes in order; return (index of the write, transaction)."""
    backing = backing or Backing()
    tracker = tracker or WALTracker(backing.read)
    out = []
    for i, (off, n) in enumerate(writes):
        backing.write(off, data[off:off + n])
        out += [(i, tx) for tx in tracker.on_write(off, n)]
    return out


# --- checksum ---------------------------------------------------------------------------------


@given(st.binary(max_size=700).map(lambda b: b[:len(b) - len(b) % 8]),
       st.integers(0, M32), st.integers(0, M32), st.booleans())
def test_checksum_matches_reference(data, s0, s1, be):
    assert wal_checksum(data, s0, s1, be) == ref_checksum(data, s0, s1, be)
    assert wal_checksum(memoryview(bytearray(data)), s0, s1, be) == ref_checksum(data, s0, s1, be)


def test_checksum_pages_and_chaining():
    rng = random.Random(7)
    for n in (4096, 65536, 4096 + 24):
        data = rng.randbytes(n)
        for be in (False, True):
            want = ref_checksum(data, 0xFFFFFFFF, 1, be)
            assert wal_checksum(data, 0xFFFFFFFF, 1, be) == want
            mid = wal_checksum(data[:24], 0xFFFFFFFF, 1, be)
            assert wal_checksum(data[24:], *mid, be) == want
    with pytest.raises(ValueError):
        wal_checksum(b"1234567", 0, 0, False)


# --- header -----------------------------------------------------------------------------------


def test_header_parse_pack_and_rejections():
    raw = (TESTDATA / "ok.wal").read_bytes()[:32]
    hdr = WALHeader.parse(raw)
    assert hdr.page_size == 4096 and not hdr.big_endian and hdr.version == WAL_VERSION
    assert hdr.pack() == raw
    assert hdr.checksum == ref_checksum(raw[:24], 0, 0, False)
    be = WALHeader.new(1024, 5, 6, checkpoint_seq=3, big_endian=True)
    assert be.magic == 0x377F0683 and be.big_endian
    assert WALHeader.parse(be.pack()) == be
    assert be.checksum == ref_checksum(be.pack()[:24], 0, 0, True)
    assert WALHeader.new(1, 1, 2).page_size == 65536  # the 1-means-64K spelling is accepted

    def bad(mutate) -> bytes:
        b = bytearray(raw)
        mutate(b)
        return bytes(b)

    cases = {
        "magic": bad(lambda b: b.__setitem__(slice(0, 4), b"\0\0\0\0")),
        "checksum": bad(lambda b: b.__setitem__(31, b[31] ^ 1)),
        "page size": WALHeader(0x377F0682, WAL_VERSION, 1000, 0, 1, 2).pack(),
        "version": WALHeader(0x377F0682, 3007001, 4096, 0, 1, 2).pack(),
        "short": raw[:31],
    }
    for name, data in cases.items():
        with pytest.raises(WALError):
            WALHeader.parse(data)
        # Recovery ignores a header SQLite would ignore, and refuses an unknown version.
        if name == "version":
            with pytest.raises(WALError):
                scan(data + bytes(4120))
        else:
            assert scan(data + bytes(4120))[1] == []


# --- the three reference files ----------------------------------------------------------------


def test_ok_wal():
    data = (TESTDATA / "ok.wal").read_bytes()
    t, txs = scan(data)
    assert t.header is not None and t.header.page_size == 4096
    assert [(tx.offset, tx.size, tx.commit) for tx in txs] == [(32, 2 * 4120, 2), (8272, 4120, 2)]
    assert txs[0].pages == {1: 32 + 24, 2: 32 + 4120 + 24} and txs[1].pages == {2: 8272 + 24}
    # Each transaction's checksum is its commit frame's, and chains from the header's.
    ck = t.header.checksum
    for tx in txs:
        for off in range(tx.offset, tx.end, 4120):
            ck = ref_checksum(data[off:off + 8] + data[off + 24:off + 4120], *ck, False)
            assert ck == struct.unpack_from(">2I", data, off + 16)
        assert tx.checksum == ck
    assert t.commit_end == len(data) and t.last_checksum == txs[-1].checksum
    assert checkpoint_pages(txs) == {1: 56, 2: 8296}
    # The same file, written the way SQLite writes it.
    got = replay(data, sqlite_writes(data, 4096))
    assert [key(tx) for _, tx in got] == [key(tx) for tx in txs]
    assert [i for i, _ in got] == [4, 6]  # each on its commit frame's page write


@pytest.mark.parametrize("name", ["salt-mismatch", "frame-checksum-mismatch"])
def test_bad_reference_wals_stop_at_the_bad_frame(name):
    ok = scan((TESTDATA / "ok.wal").read_bytes())[1]
    data = (TESTDATA / f"{name}.wal").read_bytes()
    t, txs = scan(data)
    # Frame 2 is bad, and it is the commit frame of the first transaction.
    assert txs == [] and len(txs) < len(ok)
    assert t.commit_end == 32 and t.header is not None
    assert replay(data, sqlite_writes(data, 4096)) == []
    assert replay(data, [(0, len(data))]) == []


# --- real WALs --------------------------------------------------------------------------------


@dataclass
class RealWAL:
    page_size: int
    db: bytes  # the database file while the WAL was live (nothing checkpointed)
    wal: bytes
    commits: int
    dump: list[str]  # the committed content, as SQLite sees it


def make_real_wal(tmp: Path, page_size: int, open_tail: bool = False) -> RealWAL:
    """Several transactions (one multi-page, one rolled back after spilling, one shrinking the
    database), copied while the connection is open so that nothing is checkpointed."""
    path = tmp / f"w{page_size}{'t' if open_tail else ''}.db"
    con = sqlite3.connect(path, isolation_level=None)
    commits = 0
    try:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute("PRAGMA auto_vacuum=FULL")
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        commits += 1
        con.execute("INSERT INTO t(v) VALUES (x'01')")
        commits += 1
        con.execute("BEGIN")
        for _ in range(24):
            con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (page_size // 2,))
        con.execute("COMMIT")
        commits += 1
        con.execute("PRAGMA cache_size=10")
        con.execute("BEGIN")
        for _ in range(30):
            con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (page_size,))
        con.execute("ROLLBACK")
        con.execute("UPDATE t SET v = randomblob(length(v)) WHERE id % 3 = 0")
        commits += 1
        con.execute("DELETE FROM t WHERE id > 12")  # auto_vacuum: the database shrinks
        commits += 1
        con.execute("INSERT INTO t(v) VALUES (randomblob(100))")
        commits += 1
        dump = list(con.iterdump())
        if open_tail:  # an open transaction that spilled frames into the WAL
            con.execute("BEGIN")
            for _ in range(30):
                con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (page_size,))
        db = path.read_bytes()
        wal = Path(f"{path}-wal").read_bytes()
        if open_tail:
            con.execute("ROLLBACK")
    finally:
        con.close()
    return RealWAL(page_size, db, wal, commits, dump)


@pytest.fixture(scope="module")
def real_wals(tmp_path_factory) -> dict[tuple[int, bool], RealWAL]:
    tmp = tmp_path_factory.mktemp("wals")
    return {(ps, tail): make_real_wal(tmp, ps, tail)
            for ps in (512, 4096, 65536) for tail in (False, True)}


def sqlite_checkpoint(tmp: Path, db: bytes, wal: bytes) -> bytes:
    path = tmp / "theirs.db"
    path.write_bytes(db)
    Path(f"{path}-wal").write_bytes(wal)
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.read_bytes()


def our_checkpoint(tmp: Path, db: bytes, wal: bytes, page_size: int) -> Path:
    txs = scan(wal)[1]
    path = tmp / "ours.db"
    buf = bytearray(db)
    for pgno, off in checkpoint_pages(txs).items():
        start = (pgno - 1) * page_size
        if len(buf) < start + page_size:
            buf.extend(bytes(start + page_size - len(buf)))
        buf[start:start + page_size] = wal[off:off + page_size]
    del buf[txs[-1].commit * page_size:]
    path.write_bytes(buf)
    return path


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
@pytest.mark.parametrize("open_tail", [False, True])
def test_real_wal_scan_and_checkpoint(tmp_path, real_wals, page_size, open_tail):
    rw = real_wals[(page_size, open_tail)]
    t, txs = scan(rw.wal)
    assert t.header is not None and t.header.page_size == page_size
    assert len(txs) == rw.commits
    assert any(len(tx.pages) > 10 for tx in txs)  # the multi-page transaction
    assert txs[0].offset == 32
    for a, b in zip(txs, txs[1:]):
        assert b.offset == a.end
    assert txs[-2].commit < max(tx.commit for tx in txs)  # the DELETE shrank the database
    assert t.commit_end == txs[-1].end
    if open_tail:
        assert len(rw.wal) > t.commit_end + 10 * (24 + page_size)  # uncommitted frames follow
    ours = our_checkpoint(tmp_path, rw.db, rw.wal, page_size)
    theirs = sqlite_checkpoint(tmp_path, rw.db, rw.wal)
    assert ours.read_bytes() == theirs
    con = sqlite3.connect(ours)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert list(con.iterdump()) == rw.dump
    finally:
        con.close()


def test_sqlite_writes_pattern_reports_on_commit_page_write(real_wals):
    for (ps, tail), rw in real_wals.items():
        want = scan(rw.wal)[1]
        writes = sqlite_writes(rw.wal, ps)
        backing = Backing()
        got = replay(rw.wal, writes, backing)
        assert [key(tx) for _, tx in got] == [key(tx) for tx in want]
        for i, tx in got:
            assert writes[i] == (tx.end - ps, ps)  # the commit frame's page data
        # Each frame was read at most once (frames past the first invalid one not at all).
        frames = (len(rw.wal) - 32) // (24 + ps)
        assert 32 + want[-1].end - 32 <= backing.read_bytes <= 32 + frames * (24 + ps)


def cuts(total: int):
    return st.lists(st.integers(1, total - 1), max_size=40, unique=True).map(
        lambda xs: [0, *sorted(xs), total])


def covered_prefix(done: list[tuple[int, int]]) -> int:
    end = 0
    for off, n in sorted(done):
        if off > end:
            break
        end = max(end, off + n)
    return end


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
@settings(max_examples=25)
@given(data=st.data())
def test_random_splits_match_scan(real_wals, page_size, data):
    rw = real_wals[(page_size, data.draw(st.booleans(), "open_tail"))]
    want = [key(tx) for tx in scan(rw.wal)[1]]
    bounds = data.draw(cuts(len(rw.wal)), "cuts")
    writes = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    # Stale bytes in the backing file (here: the whole final WAL) must never be trusted.
    stale = data.draw(st.booleans(), "stale")
    got = replay(rw.wal, writes, Backing(rw.wal if stale else b""))
    assert [key(tx) for _, tx in got] == want
    for i, tx in got:
        before, after = sum(n for _, n in writes[:i]), sum(n for _, n in writes[:i + 1])
        assert before < tx.end <= after  # reported by the write that completed it


@settings(max_examples=25)
@given(data=st.data())
def test_out_of_order_writes(real_wals, data):
    rw = real_wals[(4096, False)]
    want = [key(tx) for tx in scan(rw.wal)[1]]
    bounds = data.draw(cuts(len(rw.wal)), "cuts")
    writes = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
    rest = data.draw(st.permutations(writes[1:]), "order")
    writes = [writes[0], *rest]  # the header write comes first: it starts the generation
    got = replay(rw.wal, writes)
    assert [key(tx) for _, tx in got] == want
    for i, tx in got:
        assert covered_prefix(writes[:i]) < tx.end <= covered_prefix(writes[:i + 1])


@settings(max_examples=40)
@given(data=st.data())
def test_bit_flips(real_wals, data):
    ps = data.draw(st.sampled_from([512, 4096]), "page_size")
    rw = real_wals[(ps, False)]
    good = scan(rw.wal)[1]
    pos = data.draw(st.integers(32, good[-1].end - 1), "pos")
    bit = data.draw(st.integers(0, 7), "bit")
    bad = bytearray(rw.wal)
    bad[pos] ^= 1 << bit
    bad = bytes(bad)
    frame_start = 32 + (pos - 32) // (24 + ps) * (24 + ps)
    want = [key(tx) for tx in good if tx.end <= frame_start]
    assert len(want) < len(good)
    assert [key(tx) for tx in scan(bad)[1]] == want
    assert [key(tx) for _, tx in replay(bad, sqlite_writes(bad, ps))] == want


def test_header_bit_flip_hides_everything(real_wals):
    rw = real_wals[(4096, False)]
    for pos in (0, 9, 17, 30):
        bad = bytearray(rw.wal)
        bad[pos] ^= 0x10
        assert scan(bytes(bad))[1] == []
        assert replay(bytes(bad), sqlite_writes(bytes(bad), 4096)) == []


def test_wal_restart_new_generation(tmp_path):
    """A checkpoint(RESTART) makes the next writer start over at offset 0 with new salts."""
    path = tmp_path / "g.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(v BLOB)")
    for _ in range(6):
        con.execute("INSERT INTO t VALUES (randomblob(3000))")
    gen1 = Path(f"{path}-wal").read_bytes()
    con.execute("PRAGMA wal_checkpoint(RESTART)")
    for _ in range(2):
        con.execute("INSERT INTO t VALUES (randomblob(500))")
    gen2 = Path(f"{path}-wal").read_bytes()
    con.close()

    h1, h2 = WALHeader.parse(gen1[:32]), WALHeader.parse(gen2[:32])
    assert h2.salt1 == (h1.salt1 + 1) & M32 and h2.checkpoint_seq == h1.checkpoint_seq + 1
    t1, tx1 = scan(gen1)
    t2, tx2 = scan(gen2)
    assert len(tx1) == 7 and len(tx2) == 2
    assert len(gen2) == len(gen1)  # the file was reused: stale generation-1 frames follow
    assert t2.commit_end < len(gen2)

    backing = Backing()
    tracker = WALTracker(backing.read)
    got1 = replay(gen1, sqlite_writes(gen1, 4096), backing, tracker)
    assert [key(tx) for _, tx in got1] == [key(tx) for tx in tx1]
    # Generation 2 is written over generation 1's file.
    got2 = replay(gen2, sqlite_writes(gen2, 4096, t2.commit_end), backing, tracker)
    assert [key(tx) for _, tx in got2] == [key(tx) for tx in tx2]
    assert tracker.header == h2 and tracker.commit_end == t2.commit_end
    assert bytes(backing.buf) == gen2


def test_truncate(real_wals):
    rw = real_wals[(4096, False)]
    txs = scan(rw.wal)[1]
    writes = sqlite_writes(rw.wal, 4096)
    backing = Backing()
    tracker = WALTracker(backing.read)
    upto = writes.index((txs[0].end - 4096, 4096)) + 1
    assert [tx for _, tx in replay(rw.wal, writes[:upto], backing, tracker)] == txs[:1]
    # journal_size_limit truncates after the first commit of a generation: keep going.
    tracker.on_truncate(txs[0].end)
    del backing.buf[txs[0].end:]
    rest = replay(rw.wal, writes[upto:], backing, tracker)
    assert [key(tx) for _, tx in rest] == [key(tx) for tx in txs[1:]]
    # checkpoint(TRUNCATE): everything is forgotten until a new header arrives.
    tracker.on_truncate(0)
    assert tracker.header is None and tracker.commit_end == 0 and tracker.last_checksum is None
    backing.buf.clear()
    again = replay(rw.wal, writes, backing, tracker)
    assert [key(tx) for _, tx in again] == [key(tx) for tx in txs]
    # Truncating into committed frames resets too; frames that follow are not trusted.
    tracker.on_truncate(txs[1].offset + 100)
    assert tracker.header is None
    assert replay(rw.wal, writes[upto:], backing, tracker) == []


def test_scan_existing_then_follow(real_wals):
    """After startup recovery, new frames appended at commit_end are followed."""
    rw = real_wals[(4096, True)]
    t, txs = scan(rw.wal)
    backing = Backing(rw.wal[:txs[2].end])
    tracker = WALTracker(backing.read)
    found = tracker.scan_existing(len(backing.buf))
    assert [key(tx) for tx in found] == [key(tx) for tx in txs[:3]]
    writes = [w for w in sqlite_writes(rw.wal, 4096) if w[0] >= txs[2].end]
    got = replay(rw.wal, writes, backing, tracker)
    assert [key(tx) for _, tx in got] == [key(tx) for tx in txs[3:]]


# --- in-place rewrites inside the open transaction (SQLite's iReCksum path) ---------------------


def encode_frame(pgno: int, commit: int, page: bytes, hdr: WALHeader,
                 ck: tuple[int, int]) -> tuple[bytes, tuple[int, int]]:
    head = struct.pack(">2I", pgno, commit)
    c = ref_checksum(head + page, *ck, hdr.big_endian)
    return head + struct.pack(">4I", hdr.salt1, hdr.salt2, *c) + page, c


@pytest.mark.parametrize("big_endian", [False, True])
def test_rewrite_in_place_then_recompute_checksums(big_endian):
    """sqlite3WalFrames: a page already written by the open transaction is overwritten in
    place, the commit frame is appended with the stale chain, and then the headers from the
    rewritten frame on get fresh checksums. The commit completes on the last rewrite."""
    ps = 512
    rng = random.Random(3)
    hdr = WALHeader.new(ps, 0x11223344, 0x55667788, big_endian=big_endian)
    pages = [rng.randbytes(ps) for _ in range(4)]
    backing = Backing()
    tracker = WALTracker(backing.read)

    def put(off: int, data: bytes) -> list[WALTransaction]:
        backing.write(off, data)
        return tracker.on_write(off, len(data))

    assert put(0, hdr.pack()) == [] and tracker.header == hdr
    ck = hdr.checksum
    offs = [32 + i * (24 + ps) for i in range(4)]
    for i in range(3):  # spilled frames of the open transaction: pages 1..3
        frame, ck = encode_frame(i + 1, 0, pages[i], hdr, ck)
        assert put(offs[i], frame[:24]) == [] and put(offs[i] + 24, frame[24:]) == []
    assert tracker.scan_offset == offs[3]
    before = backing.read_bytes
    new2 = rng.randbytes(ps)
    assert put(offs[1] + 24, new2) == []  # page 2 modified again: overwritten in place
    assert tracker.scan_offset == offs[1]
    frame, _ = encode_frame(4, 4, pages[3], hdr, ck)  # commit frame, stale chain
    assert put(offs[3], frame[:24]) == [] and put(offs[3] + 24, frame[24:]) == []
    # Recompute from frame 2 on (walRewriteChecksums), header by header.
    ck = struct.unpack_from(">2I", backing.buf, offs[0] + 16)
    reported = []
    for i in range(1, 4):
        page = bytes(backing.buf[offs[i] + 24:offs[i] + 24 + ps])
        frame, ck = encode_frame(i + 1, 4 if i == 3 else 0, page, hdr, ck)
        reported.append(put(offs[i], frame[:24]))
    assert reported[0] == [] and reported[1] == []
    [tx] = reported[2]
    assert (tx.offset, tx.size, tx.commit, tx.checksum) == (32, 4 * (24 + ps), 4, ck)
    assert tx.pages == {p: offs[p - 1] + 24 for p in (1, 2, 3, 4)}
    assert [key(t) for t in scan(bytes(backing.buf))[1]] == [key(tx)]
    # Only the touched frames were re-read: no rescan of the whole transaction per write.
    assert backing.read_bytes - before <= 8 * (24 + ps)


def test_identical_rewrite_keeps_the_chain():
    ps = 512
    hdr = WALHeader.new(ps, 1, 2)
    backing = Backing()
    tracker = WALTracker(backing.read)
    ck = hdr.checksum
    data = bytearray(hdr.pack())
    for i in range(20):
        frame, ck = encode_frame(i + 1, 0, bytes([i]) * ps, hdr, ck)
        data += frame
    backing.write(0, bytes(data))
    assert tracker.on_write(0, len(data)) == []
    assert tracker.scan_offset == len(data)
    before = backing.read_bytes
    for i in range(20):  # rewriting a frame with the same bytes re-reads just that frame
        off = 32 + i * (24 + ps)
        assert tracker.on_write(off, 24) == []
    assert backing.read_bytes - before == 20 * (24 + ps)
    assert tracker.scan_offset == len(data)
    frame, ck = encode_frame(21, 21, b"\x07" * ps, hdr, ck)
    backing.write(len(data), frame)
    [tx] = tracker.on_write(len(data), len(frame))
    assert tx.commit == 21 and len(tx.pages) == 21 and tx.checksum == ck


def test_frame_checksum_helper_and_big_endian_wal():
    ps = 1024
    hdr = WALHeader.new(ps, 9, 10, big_endian=True)
    ck = hdr.checksum
    data = bytearray(hdr.pack())
    for i, commit in enumerate([0, 2, 3]):
        page = bytes([i + 1]) * ps
        frame, ck2 = encode_frame(i + 1, commit, page, hdr, ck)
        assert frame_checksum(frame[:24], page, *ck, True) == ck2
        data += frame
        ck = ck2
    txs = scan(bytes(data))[1]
    assert [(tx.commit, sorted(tx.pages)) for tx in txs] == [(2, [1, 2]), (3, [3])]
    # A magic claiming little-endian words no longer matches the header checksum.
    data[3] &= 0xFE
    assert scan(bytes(data))[1] == []


def test_checkpoint_pages_newest_wins_and_drops_truncated():
    a = WALTransaction(32, 0, 5, {1: 100, 2: 200, 5: 500})
    b = WALTransaction(600, 0, 3, {2: 700, 3: 800})
    assert checkpoint_pages([a, b]) == {1: 100, 2: 700, 3: 800}
    assert checkpoint_pages([]) == {}


def test_header_write_in_pieces_and_junk_before_header():
    data = (TESTDATA / "ok.wal").read_bytes()
    backing = Backing()
    tracker = WALTracker(backing.read)
    # Frames written before any header are ignored; the header write starts the generation.
    assert replay(data, [(32, len(data) - 32)], backing, tracker) == []
    got = replay(data, [(0, 10), (10, 22), (32, 4120), (4152, len(data) - 4152)], backing, tracker)
    assert [(i, tx.commit) for i, tx in got] == [(3, 2), (3, 2)]


def test_many_transactions_in_one_write(real_wals):
    rw = real_wals[(512, False)]
    backing = Backing()
    got = replay(rw.wal, [(0, len(rw.wal))], backing)
    assert [key(tx) for _, tx in got] == [key(tx) for tx in scan(rw.wal)[1]]
