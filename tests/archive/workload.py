"""A real SQLite workload that writes one LTX file per commit, as a LiteFS node's data dir holds.

The database is a plain file driven by Python's sqlite3. After each commit the helper diffs
the file against its previous image (native.pagediff), writes `<data>/dbs/<name>/ltx/<txid>-<txid>.ltx`
atomically with the commit time from a fake clock, and records (commit time, TXID, checksum),
so a restore can be checked against the exact state of every TXID.
"""
from __future__ import annotations

import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from litefs import native
from litefs.ltx.checksum import DatabaseChecksum, sqlite_page_size
from litefs.ltx.encoder import Encoder
from litefs.ltx.format import CHECKSUM_FLAG, Header, format_filename


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@dataclass(frozen=True)
class Record:
    time_ms: int
    txid: int
    checksum: int


class Workload:
    def __init__(self, data_dir: Path, name: str, clock: FakeClock, *, work_dir: Path | None = None,
                 page_size: int = 1024, seed: int = 0) -> None:
        self.name = name
        self.clock = clock
        self.page_size = page_size
        self.rng = random.Random(seed)
        self.ltx_dir = Path(data_dir) / "dbs" / name / "ltx"
        self.ltx_dir.mkdir(parents=True, exist_ok=True)
        self.src = Path(work_dir or data_dir) / f".{name}.source.db"
        self.prev = b""
        self.sums: DatabaseChecksum | None = None
        self.txid = 0
        self.checksum = 0
        self.records: list[Record] = []
        self.conn: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> None:
        self.fresh = not self.src.exists()
        self.conn = sqlite3.connect(self.src, isolation_level=None)
        self.conn.execute(f"PRAGMA page_size={self.page_size}")
        self.conn.execute("PRAGMA journal_mode=DELETE")

    # -- commits
    def commit(self, *statements: tuple) -> Record:
        assert self.conn is not None
        self.conn.execute("BEGIN")
        for st in statements:
            self.conn.execute(*st) if isinstance(st, tuple) else self.conn.execute(st)
        self.conn.execute("COMMIT")
        return self._capture()

    def random_commit(self) -> Record:
        rng = self.rng
        if self.fresh:
            self.fresh = False
            return self.commit("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)",
                               "CREATE INDEX IF NOT EXISTS t_k ON t(k)")
        n = self.conn.execute("SELECT count(*) FROM t").fetchone()[0]
        op = rng.random()
        stmts: list = []
        if op < 0.55 or n < 5:
            for _ in range(rng.randint(1, 6)):
                stmts.append(("INSERT INTO t (k, v) VALUES (?, ?)",
                              (f"k{rng.randrange(10**6)}", rng.randbytes(rng.randint(10, 700)))))
        elif op < 0.85:
            stmts.append(("UPDATE t SET v = ? WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 3)",
                          (rng.randbytes(rng.randint(10, 300)),)))
        else:
            stmts.append(("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)",
                          (rng.randint(1, 4),)))
        return self.commit(*stmts)

    def delete_database(self) -> Record:
        """The database is deleted: an LTX file with commit 0, as LiteFS writes one."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        os.unlink(self.src)
        for suffix in ("-journal", "-wal", "-shm"):
            Path(str(self.src) + suffix).unlink(missing_ok=True)
        return self._write({}, 0, CHECKSUM_FLAG, self.page_size)

    def recreate(self) -> None:
        self._open()

    def _capture(self) -> Record:
        data = self.src.read_bytes()
        ps = sqlite_page_size(data[:100])
        commit = len(data) // ps
        pgnos, sums = native.pagediff.diff_pages(self.prev, data, ps)
        if self.sums is None or self.sums.page_size != ps:
            self.sums = DatabaseChecksum(ps)
        self.sums.set_many(pgnos, sums)
        self.sums.truncate(commit)
        pages = {p: data[(p - 1) * ps:p * ps] for p in pgnos}
        self.prev = data
        return self._write(pages, commit, self.sums.value, ps)

    def _write(self, pages: dict[int, bytes], commit: int, post: int, ps: int) -> Record:
        self.txid += 1
        ts = int(self.clock() * 1000)
        header = Header(flags=0, page_size=ps, commit=commit, min_txid=self.txid, max_txid=self.txid,
                        timestamp=ts, pre_apply_checksum=0 if self.txid == 1 else self.checksum)
        final = self.ltx_dir / format_filename(self.txid, self.txid)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            enc = Encoder(f, header)
            order = sorted(pages)
            if order:
                enc.encode_pages(order, b"".join(pages[p] for p in order))
            enc.close(post)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        if commit == 0:
            self.prev = b""
            self.sums = None
        self.checksum = post
        rec = Record(ts, self.txid, post)
        self.records.append(rec)
        return rec

    # -- lookups
    def state(self, txid: int) -> Record:
        return self.records[txid - 1]

    def txid_at(self, time_ms: int) -> int:
        """The TXID current at a time (0 before the first commit)."""
        best = 0
        for r in self.records:
            if r.time_ms <= time_ms:
                best = r.txid
        return best
