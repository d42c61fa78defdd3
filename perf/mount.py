"""Mount suite: SQLite through a litefs FUSE mount against the same SQLite on the plain disk.

Every mount ÷ native ratio is timed interleaved on the same filesystem (the node's data dir
and the native files both live in perf/results/tmp), with the same pragmas, a fresh database
file per repetition and the median of the paired per-repetition ratios (>1 = mount faster).

  write_{delete_full,wal_full,wal_normal}  1-row INSERT txn/s, mount ÷ native   >= 0.7 / 0.5 / 0.1
  fuse_requests_per_tx_*                   FUSE requests per 1-row txn, by op   (informational)
  daemon_cpu_per_tx_*                      daemon CPU µs per 1-row txn          (informational)
  read_{wal,delete}                        hot point SELECTs/s, mount ÷ native  >= 0.9 / 0.3
  commit_path_1row                         capture + LTX encode + rename, no fsync, p50 µs  <= 100
  startup_checksum                         DatabaseChecksum.of_file ÷ reading the file      <= 1.5
  bulk_load                                1M-row txn, native time ÷ mount time >= 0.67 (mount <= 1.5x native)

Each group runs in a fresh process (ctx.run_isolated) and starts its own node
(tests.nodes.TestNode, strict-verify off) under perf/results/tmp, stopped in `finally`.
"""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf.common import MIN_REPS, GiB, MiB, Context, Stat, disk_class, fsync_latency, quantile, tmp_dir

DESCRIPTION = "FUSE mount vs native SQLite: 1-row txn/s, hot reads, FUSE requests/txn, commit path, checksum, bulk load"
PAGE_SIZE = 4096
INSERT = "INSERT INTO t(v) VALUES (?)"
SELECT = "SELECT v FROM t WHERE id = ?"
# name, journal_mode, synchronous, target (mount ÷ native txn/s)
WRITE_CONFIGS = {
    "delete_full": ("DELETE", "FULL", 0.7),
    "wal_full": ("WAL", "FULL", 0.5),
    "wal_normal": ("WAL", "NORMAL", 0.1),
}
READ_CONFIGS = {"wal": ("WAL", 0.9), "delete": ("DELETE", 0.3)}
_MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(8 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024)}
_COMMIT_VARIANTS = {
    "tmpfs": "data dir on /dev/shm: no disk, cheap inode allocation",
    "tmpfs+malloc-tuned": "data dir on /dev/shm and MALLOC_MMAP_THRESHOLD_=8MiB MALLOC_TRIM_THRESHOLD_=256MiB",
}


# --------------------------------------------------------------------------------------------
# nodes, databases, daemon counters

@contextmanager
def running_node(label: str) -> Iterator[Any]:
    """A litefs node (strict-verify off) under perf/results/tmp; stopped and removed after."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.nodes import TestNode
    base = tmp_dir() / f"mount-{label}-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    node = TestNode(base, "node", config={"strict-verify": False})
    try:
        node.start()
        yield node
    except BaseException:
        log = node.read_log()
        if log:
            print("litefs log (tail):\n" + log[-3000:], file=sys.stderr)
        raise
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def debug_vars(node: Any) -> dict[str, Any]:
    with urllib.request.urlopen(node.url + "/debug/vars", timeout=10) as r:
        return json.load(r)


def fuse_counts(node: Any) -> Counter[str]:
    return Counter(debug_vars(node).get("fuse_requests", {}))


def daemon_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def remove_db(path: str) -> None:
    """Remove a database and its side files (through the mount: drops the database)."""
    for suffix in ("-wal", "-shm", "-journal", ""):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def open_db(path: str, journal_mode: str, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=16)
    mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    if mode.upper() != journal_mode.upper():
        raise RuntimeError(f"{path}: journal_mode is {mode}, wanted {journal_mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class Side:
    """One side (native or mount) of an A/B pair: a fresh database file for every repetition.

    `fresh()` hands out the prepared connection; `prepare()` (untimed, from the interleave
    setup) replaces a consumed one: close, delete the files (on the mount this drops the
    database, so the node keeps one database, not one per repetition), create again. For the
    mount side it also records the node's FUSE request and CPU deltas of the consumed rep.
    """

    def __init__(self, path: str, journal_mode: str, synchronous: str, node: Any = None,
                 schema: str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)") -> None:
        self.path, self.jm, self.sync, self.node, self.schema = path, journal_mode, synchronous, node, schema
        self.conn: sqlite3.Connection | None = None
        self.consumed = True
        self.req_deltas: list[Counter[str]] = []
        self.cpu_deltas: list[tuple[float, float]] = []  # (user, sys) seconds
        self._c0: Counter[str] | None = None
        self._cpu0 = (0.0, 0.0)

    def _snap(self) -> tuple[Counter[str], tuple[float, float]]:
        return fuse_counts(self.node), daemon_cpu_s(self.node.proc.pid)

    def prepare(self) -> None:
        if not self.consumed:
            return
        if self.conn is not None:
            if self.node is not None and self._c0 is not None:
                c1, cpu1 = self._snap()  # before close(): a WAL close checkpoints
                self.req_deltas.append(c1 - self._c0)
                self.cpu_deltas.append((cpu1[0] - self._cpu0[0], cpu1[1] - self._cpu0[1]))
            self.conn.close()
            self.conn = None
        remove_db(self.path)
        self.conn = open_db(self.path, self.jm, self.sync)
        self.conn.execute(self.schema)
        if self.node is not None:
            self._c0, self._cpu0 = self._snap()
        self.consumed = False

    def fresh(self) -> sqlite3.Connection:
        """The prepared connection (prepared here if the interleave's warm-up gets here first)."""
        self.prepare()
        self.consumed = True
        assert self.conn is not None
        return self.conn

    def discard_counters(self) -> None:
        self.req_deltas.clear()
        self.cpu_deltas.clear()
        self._c0 = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        remove_db(self.path)


def _sync_setup(*sides: Side) -> Callable[[], None]:
    """The interleave setup: prepare consumed sides, then flush the filesystem journal so a
    timed rep's first fsync does not also commit the previous rep's unlinks and creates."""
    def setup() -> None:
        for s in sides:
            s.prepare()
        os.sync()
    return setup


def _fsync_note(fsync_p50_us: float | None) -> tuple[str, dict[str, Any]]:
    if fsync_p50_us is None:
        fsync_p50_us = fsync_latency(count=50)["p50"]
    cls = disk_class(fsync_p50_us)
    return f"disk fsync p50 {fsync_p50_us:.0f} µs ({cls})", {"disk_fsync_p50_us": round(fsync_p50_us, 1)}


def _breakdown(per_tx: dict[str, float]) -> str:
    return " ".join(f"{op}={v:.3g}" for op, v in sorted(per_tx.items(), key=lambda kv: (-kv[1], kv[0])) if v >= 0.005)


# --------------------------------------------------------------------------------------------
# 1 + 3: 1-row write transactions, and FUSE requests per transaction

def bench_writes(ctx: Context, config: str, fsync_p50_us: float | None = None) -> dict[str, float]:
    jm, sync, target = WRITE_CONFIGS[config]
    fs_note, fs_extra = _fsync_note(fsync_p50_us)
    native_dir = tmp_dir() / f"mount-native-{config}-{os.getpid()}"
    shutil.rmtree(native_dir, ignore_errors=True)
    native_dir.mkdir(parents=True)
    native_budget, mount_cap = (0.4, 0.8) if ctx.quick else (1.0, 2.0)  # seconds per rep
    try:
        with running_node(f"w-{config}") as node:
            mount = Side(node.path("bench.db"), jm, sync, node)
            native = Side(str(native_dir / "bench.db"), jm, sync)
            value = [0]

            def inserts(side: Side, n: int) -> None:
                ex = side.fresh().execute
                v = value[0]
                for i in range(v, v + n):
                    ex(INSERT, (i,))
                value[0] = v + n

            def trial(side: Side, seconds: float) -> float:
                ex = side.fresh().execute
                t0 = time.perf_counter()
                n = 0
                while True:
                    for i in range(10):
                        ex(INSERT, (n + i,))
                    n += 10
                    dt = time.perf_counter() - t0
                    if dt >= seconds:
                        return n / dt

            # calibration doubles as the warm-up: N txns per rep, ~native_budget s native,
            # capped at ~mount_cap s on the mount side
            setup = _sync_setup(mount, native)
            setup()
            nat_rate = trial(native, 0.2)
            setup()
            mnt_rate = trial(mount, 0.2)
            n = max(50, int(min(nat_rate * native_budget, mnt_rate * mount_cap)))
            n = int(round(n, -1 if n < 1000 else -2))
            mount.discard_counters()
            a, b = ctx.interleave(lambda: inserts(mount, n), lambda: inserts(native, n), inner_a=1, inner_b=1,
                                  items=n, warmup=0, setup=setup)
            setup()  # close out the last mount rep's counters
            mount.close()
            native.close()
    finally:
        shutil.rmtree(native_dir, ignore_errors=True)

    ra, rb = a.rate(), b.rate()
    added_us = (1 / ra.median - 1 / rb.median) * 1e6
    ctx.report_ratio(f"write_{config}", a, b, unit="tx/s", metric="rate", baseline=f"native {jm}+{sync}",
                     target=target,
                     note=f"1-row autocommit INSERT, journal_mode={jm} synchronous={sync}, {n} txns/rep, fresh db "
                          f"per rep; mount adds {added_us:.0f} µs/txn; {fs_note}",
                     extra={"txns_per_rep": n, "added_us_per_tx": round(added_us, 1), **fs_extra})
    # 3: FUSE requests per transaction (each timed mount rep, from /debug/vars), daemon CPU
    deltas = mount.req_deltas
    totals = [sum(d.values()) / n for d in deltas]
    ops = sorted({op for d in deltas for op in d})
    per_op = {op: statistics.median(d.get(op, 0) / n for d in deltas) for op in ops}
    per_op = {op: round(v, 3) for op, v in per_op.items() if v}
    cpu_us = [(u + k) / n * 1e6 for u, k in mount.cpu_deltas]
    sys_us = statistics.median(k / n * 1e6 for _, k in mount.cpu_deltas)
    ctx.report(f"fuse_requests_per_tx_{config}", statistics.median(totals), "req", reps=len(totals),
               value_iqr=Stat(totals).iqr,
               note=f"per 1-row txn, {jm}+{sync} (informational; fewer is the lever): {_breakdown(per_op)}",
               extra={"per_op": per_op})
    ctx.report(f"daemon_cpu_per_tx_{config}", statistics.median(cpu_us), "µs", reps=len(cpu_us),
               value_iqr=Stat(cpu_us).iqr, higher_is_better=False,
               note=f"informational: litefs daemon CPU per 1-row txn, of which kernel {sys_us:.0f} µs "
                    "(/proc/<pid>/stat, 10 ms ticks)",
               extra={"sys_us": round(sys_us, 1)})
    return {"mount_tx_s": ra.median, "native_tx_s": rb.median}


# --------------------------------------------------------------------------------------------
# 2: hot point reads

def bench_reads(ctx: Context, rows: int = 10_000) -> None:
    native_dir = tmp_dir() / f"mount-native-reads-{os.getpid()}"
    shutil.rmtree(native_dir, ignore_errors=True)
    native_dir.mkdir(parents=True)
    rng = random.Random(5)
    ids = [(rng.randint(1, rows),) for _ in range(1000)]
    payload = [(os.urandom(25).hex(),) for _ in range(rows)]
    try:
        with running_node("reads") as node:
            for name, (jm, target) in READ_CONFIGS.items():
                conns = {}
                for where, path in (("mount", node.path(f"read-{name}.db")), ("native", str(native_dir / f"read-{name}.db"))):
                    remove_db(path)
                    c = open_db(path, jm, "FULL")
                    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
                    c.execute("BEGIN")
                    c.executemany(INSERT, payload)
                    c.execute("COMMIT")
                    conns[where] = c

                def queries(conn: sqlite3.Connection) -> Callable[[], None]:
                    ex = conn.execute

                    def run() -> None:
                        for key in ids:
                            ex(SELECT, key).fetchone()
                    return run

                q_mount, q_native = queries(conns["mount"]), queries(conns["native"])
                for _ in range(3):  # warm both page caches (kernel and SQLite's)
                    q_mount()
                    q_native()
                c0 = fuse_counts(node)
                q_mount()
                per_q = {op: v / len(ids) for op, v in (fuse_counts(node) - c0).items()}
                a, b = ctx.interleave(q_mount, q_native, items=len(ids),
                                      min_sample_s=0.1 if ctx.quick else 0.25)
                ctx.report_ratio(f"read_{name}", a, b, unit="q/s", metric="rate", baseline=f"native {jm}",
                                 target=target,
                                 note=f"{rows} rows, autocommit `{SELECT}` with random ids, warm caches; "
                                      f"FUSE requests per query {sum(per_q.values()):.2f}: {_breakdown(per_q)}",
                                 extra={"fuse_requests_per_query": round(sum(per_q.values()), 3),
                                        "per_op": {k: round(v, 3) for k, v in per_q.items()}})
                for c in conns.values():
                    c.close()
                remove_db(node.path(f"read-{name}.db"))
    finally:
        shutil.rmtree(native_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 4: the commit path in-process (no FUSE)

def bench_commit(ctx: Context, commits: int = 2000, with_fsync: int = 200, where: str | None = None,
                 variant: str = "") -> None:
    """Drive Database the way the FUSE adapter does for a DELETE-mode 1-row transaction (hot
    journal, page 1 + one leaf page written), time only the commit call db.unlink(JOURNAL).

    Phase 1: os.fsync / fsync_dir are no-ops (this process only): capture + LTX encode + rename.
    Phase 2: real fsyncs, each timed, so the durability share is reported separately.
    `where` (default perf/results/tmp) and `variant` (a row-name suffix, no target): the same
    measurement on another filesystem (tmpfs: the code's own cost without inode allocation)
    or with another environment (malloc settings)."""
    import litefs.db.database as database_mod
    import litefs.db.ltxdir as ltxdir_mod
    import litefs.fsutil as fsutil_mod
    from litefs.db import Store
    from litefs.db.database import FileKind
    from litefs.db.journal import JournalHeader, journal_checksum

    base = Path(where or tmp_dir()) / f"litefs-perf-commit-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    real_fsync, real_fsync_dir = os.fsync, fsutil_mod.fsync_dir
    fsync_times: list[float] = []
    dir_times: list[float] = []

    def timed_fsync(fd: int) -> None:
        t0 = time.perf_counter_ns()
        real_fsync(fd)
        fsync_times.append((time.perf_counter_ns() - t0) / 1e3)

    def timed_fsync_dir(path: Any) -> None:  # fsutil.fsync_dir, with the real os.fsync
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            t0 = time.perf_counter_ns()
            real_fsync(fd)
            dir_times.append((time.perf_counter_ns() - t0) / 1e3)
        finally:
            os.close(fd)

    def patch(fsync: Callable[[int], None], fsync_dir: Callable[[Any], None]) -> None:
        os.fsync = fsync
        for mod in (database_mod, ltxdir_mod, fsutil_mod):
            mod.fsync_dir = fsync_dir

    try:
        # a real 2-page SQLite database: page 1 (schema) and the table's leaf page
        seed_path = base / "seed.db"
        c = sqlite3.connect(seed_path)
        c.execute(f"PRAGMA page_size={PAGE_SIZE}")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        c.execute(INSERT, ("x" * 50,))
        c.commit()
        c.close()
        seed = seed_path.read_bytes()
        assert len(seed) == 2 * PAGE_SIZE, len(seed)
        page1, page2 = bytearray(seed[:PAGE_SIZE]), bytearray(seed[PAGE_SIZE:])

        store = Store(base / "data", compress=True)
        store.open()
        db = store.create("bench.db")
        dbfd = db.open_file(FileKind.DATABASE, os.O_RDWR)
        nonce = 0x12345678
        sector = 512
        counter = [int.from_bytes(page1[24:28], "big")]

        def one_txn(pages: int) -> int:
            """Journal + page writes as SQLite makes them (untimed), then the timed commit."""
            jfd = db.open_file(FileKind.JOURNAL, os.O_RDWR | os.O_CREAT)
            try:
                hdr = JournalHeader(nrec=pages, nonce=nonce, db_size=2, sector_size=sector, page_size=PAGE_SIZE)
                db.write(FileKind.JOURNAL, jfd, hdr.pack().ljust(sector, b"\0"), 0)
                off = sector
                for pgno, page in ((2, page2), (1, page1))[:pages]:
                    rec = pgno.to_bytes(4, "big") + bytes(page) + journal_checksum(nonce, page).to_bytes(4, "big")
                    db.write(FileKind.JOURNAL, jfd, rec, off)
                    off += len(rec)
            finally:
                os.close(jfd)
            counter[0] += 1
            n = counter[0].to_bytes(4, "big")
            page2[2000:2004] = n  # the "row" that changes
            if pages == 2:  # rollback mode bumps the change counter (and version-valid-for)
                page1[24:28] = n
                page1[92:96] = n
                db.write(FileKind.DATABASE, dbfd, bytes(page1), 0)
            db.write(FileKind.DATABASE, dbfd, bytes(page2), PAGE_SIZE)
            t0 = time.perf_counter_ns()
            db.unlink(FileKind.JOURNAL)
            return time.perf_counter_ns() - t0

        def series(count: int, pages: int) -> list[float]:
            gc.collect()
            gc.disable()
            try:
                return [one_txn(pages) / 1e3 for _ in range(count)]
            finally:
                gc.enable()

        # what creating one new file costs here (ext4 inode allocation: every commit creates
        # its LTX file, and in DELETE mode the journal's backing file too); not excluded below
        # (kept until all are made, as LTX files are: an unlinked inode would just be reused)
        create: list[float] = []
        probes = [db.ltx.path / f"probe-{i}.tmp" for i in range(200)]
        for p in probes:
            t0 = time.perf_counter_ns()
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            create.append((time.perf_counter_ns() - t0) / 1e3)
            os.close(fd)
        for p in probes:
            os.unlink(p)
        patch(lambda fd: None, lambda path: None)
        try:
            series(50, 2)  # the snapshot (TXID 1) and warm-up
            if db.pos.txid < 50:
                raise AssertionError(f"commits were not recognised (txid {db.pos.txid})")
            rows = {"commit_path_1row": series(commits, 2)}
            if not variant:
                rows["commit_path_1page"] = series(commits, 1)
        finally:
            patch(real_fsync, real_fsync_dir)
        with_sync: list[float] = []
        if with_fsync:  # phase 2: with the real fsyncs, each one timed
            patch(timed_fsync, timed_fsync_dir)
            try:
                with_sync = series(with_fsync, 2)
            finally:
                patch(real_fsync, real_fsync_dir)
        os.close(dbfd)
        store.close()

        sfx = f"@{variant}" if variant else ""
        info = f"informational ({_COMMIT_VARIANTS.get(variant, variant)}): " if variant else "informational: "
        ctx.report(f"file_create{sfx}", quantile(create, 0.5), "µs", higher_is_better=False, reps=len(create),
                   note=f"{info}open(O_CREAT) of a new empty file in the LTX directory, p50 (p90 "
                        f"{quantile(create, 0.9):.0f} µs); every commit creates one (included in commit_path)",
                   extra={"p90_us": round(quantile(create, 0.9), 1)})
        for name, lat in rows.items():
            pages = 2 if name.endswith("1row") else 1
            p50, p99 = quantile(lat, 0.5), quantile(lat, 0.99)
            what = ("page 1 (change counter) + 1 leaf page: the smallest real rollback-mode txn"
                    if pages == 2 else "only 1 leaf page changed (no change-counter bump)")
            ctx.report(name + sfx, p50, "µs", target=100 if pages == 2 and not variant else None,
                       higher_is_better=False, reps=len(lat), value_iqr=quantile(lat, 0.75) - quantile(lat, 0.25),
                       note=f"{info if variant or pages == 1 else ''}p50 (p99 {p99:.0f} µs) of db.unlink(JOURNAL) = "
                            f"capture + LTX encode (LZ4) + rename, fsyncs patched out; {what}; {len(lat)} commits",
                       extra={"p99_us": round(p99, 1), "pages": pages})
        if with_sync:
            f50, d50 = quantile(fsync_times, 0.5), quantile(dir_times, 0.5)
            p50, p99 = quantile(with_sync, 0.5), quantile(with_sync, 0.99)
            ctx.report(f"commit_path_1row_fsync{sfx}", p50, "µs", higher_is_better=False, reps=len(with_sync),
                       note=f"informational: the same commit with its real fsyncs, p99 {p99:.0f} µs; one fsync on "
                            f"this disk: the LTX file p50 {f50:.0f} µs (p99 {quantile(fsync_times, 0.99):.0f}), its "
                            f"directory p50 {d50:.0f} µs; {len(fsync_times) / len(with_sync):.0f} + "
                            f"{len(dir_times) / len(with_sync):.0f} per commit",
                       extra={"p99_us": round(p99, 1), "ltx_fsync_p50_us": round(f50, 1),
                              "dir_fsync_p50_us": round(d50, 1)})
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 5: startup checksum vs reading the file

def checksum_file(size: int) -> Path:
    """A cached SQLite-headed file of `size` bytes (a real 2-page db + random 4 KiB pages)."""
    path = tmp_dir() / f"checksum-{size // MiB}MiB.db"
    if path.exists() and path.stat().st_size == size:
        with open(path, "rb") as f:
            head = f.read(100)
        if head.startswith(b"SQLite format 3\0") and int.from_bytes(head[16:18], "big") == PAGE_SIZE:
            return path
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    seed = tmp.with_name(tmp.name + ".seed")
    c = sqlite3.connect(seed)
    c.execute(f"PRAGMA page_size={PAGE_SIZE}")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.commit()
    c.close()
    head = bytearray(seed.read_bytes())
    seed.unlink()
    head[28:32] = (size // PAGE_SIZE).to_bytes(4, "big")  # in-header size = the file's pages
    chunk = 4 * MiB
    with open(tmp, "wb") as f:
        f.write(head)
        left = size - len(head)
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    os.replace(tmp, path)
    return path


def bench_checksum(ctx: Context, size: int = GiB) -> None:
    from litefs.ltx.checksum import DatabaseChecksum
    path = checksum_file(size)
    chunk = 4 * MiB
    buf = bytearray(chunk)

    def read_into() -> None:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    def read_pread() -> None:  # what of_fd does for its input, minus the checksum
        fd = os.open(path, os.O_RDONLY)
        try:
            off = 0
            while data := os.pread(fd, chunk, off):
                off += len(data)
        finally:
            os.close(fd)

    read_into()  # warm the page cache
    expected = DatabaseChecksum.of_file(path).page_count
    assert expected == size // PAGE_SIZE, expected
    s = ctx.interleave_many({"ck": lambda: DatabaseChecksum.of_file(path), "read": read_into, "pread": read_pread},
                            nbytes=size, inners={"ck": 1, "read": 1, "pread": 1}, warmup=1,
                            reps=ctx.reps if size <= 256 * MiB else max(MIN_REPS, min(ctx.reps, 7)))
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    for base, name, target in (("read", "startup_checksum", 1.5), ("pread", "startup_checksum_vs_pread", None)):
        r = Stat([ck / rd for ck, rd in zip(s["ck"].ns, s[base].ns)])
        what = ("readinto() a reused 4 MiB buffer" if base == "read"
                else "os.pread 4 MiB chunks (fresh bytes each, as of_fd reads them)")
        ctx.report(name, s["ck"].throughput().median, "GB/s", baseline=f"read ({base})",
                   baseline_value=s[base].throughput().median, ratio=r.median, ratio_q1=r.q1, ratio_q3=r.q3,
                   target=target, higher_is_better=False, reps=len(r),
                   note=f"{'' if target else 'informational: '}DatabaseChecksum.of_file({label}, warm page cache) "
                        f"TIME ÷ time to {what}; lower is better" + (
                            f"; checksum side {s['ck'].faults_per_mib():.1f} faults/MiB, "
                            f"{100 * s['ck'].sys_fraction():.0f}% kernel time" if target else ""))


# --------------------------------------------------------------------------------------------
# 6: bulk load in one transaction

def bench_bulk(ctx: Context, rows: int = 1_000_000, fsync_p50_us: float | None = None) -> None:
    fs_note, fs_extra = _fsync_note(fsync_p50_us)
    native_dir = tmp_dir() / f"mount-native-bulk-{os.getpid()}"
    shutil.rmtree(native_dir, ignore_errors=True)
    native_dir.mkdir(parents=True)
    raw = os.urandom(25 * rows).hex()
    values = [(raw[i:i + 50],) for i in range(0, 50 * rows, 50)]
    del raw
    try:
        with running_node("bulk") as node:
            mount = Side(node.path("bulk.db"), "DELETE", "FULL", node)
            native = Side(str(native_dir / "bulk.db"), "DELETE", "FULL")

            def load(side: Side) -> None:
                conn = side.fresh()
                conn.execute("BEGIN")
                conn.executemany(INSERT, values)
                conn.execute("COMMIT")

            setup = _sync_setup(mount, native)
            a, b = ctx.interleave(lambda: load(mount), lambda: load(native), inner_a=1, inner_b=1, items=rows,
                                  warmup=1, setup=setup, reps=MIN_REPS)
            setup()
            mount.close()
            native.close()
    finally:
        shutil.rmtree(native_dir, ignore_errors=True)
    reqs = [sum(d.values()) for d in mount.req_deltas]
    ops = sorted({op for d in mount.req_deltas for op in d})
    per_op = {op: statistics.median(d.get(op, 0) for d in mount.req_deltas) for op in ops}
    cpu = statistics.median(u + k for u, k in mount.cpu_deltas) if mount.cpu_deltas else 0.0
    t_mount, t_native = a.per_call_s.median, b.per_call_s.median
    ctx.report_ratio("bulk_load", a, b, unit="rows/s", metric="rate", baseline="native DELETE+FULL", target=round(1 / 1.5, 3),
                     note=f"{rows:,} x ~50-byte INSERT in one BEGIN/COMMIT, DELETE + synchronous=FULL, fresh db per "
                          f"rep; ratio = native TIME ÷ mount TIME (target >= 0.667 <=> mount <= 1.5x native); "
                          f"{t_mount:.2f} s vs {t_native:.2f} s; {statistics.median(reqs):,.0f} FUSE requests "
                          f"({_breakdown({k: float(v) for k, v in per_op.items()})}), daemon CPU {cpu:.2f} s; {fs_note}",
                     extra={"mount_s": round(t_mount, 3), "native_s": round(t_native, 3),
                            "fuse_requests": statistics.median(reqs) if reqs else None, "daemon_cpu_s": cpu,
                            **fs_extra})


# --------------------------------------------------------------------------------------------

def run(ctx: Context) -> None:
    load = os.getloadavg()
    ctx.note(f"mount   load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs "
             "(client, daemon and other sessions share them)")
    fsync_p50 = ctx.recorder.context.get("fsync_p50_us")
    for config in WRITE_CONFIGS:
        ctx.run_isolated("perf.mount:bench_writes", config=config, fsync_p50_us=fsync_p50)
    ctx.run_isolated("perf.mount:bench_reads")
    commits = 1000 if ctx.quick else 2000
    ctx.run_isolated("perf.mount:bench_commit", commits=commits, with_fsync=100 if ctx.quick else 200)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):  # diagnosis: where the commit time goes
        ctx.run_isolated("perf.mount:bench_commit", commits=commits, with_fsync=0, where="/dev/shm", variant="tmpfs")
        ctx.run_isolated("perf.mount:bench_commit", commits=commits, with_fsync=0, where="/dev/shm",
                         variant="tmpfs+malloc-tuned", env=_MALLOC_TUNED)
    ctx.run_isolated("perf.mount:bench_checksum", size=256 * MiB if ctx.quick else GiB)
    ctx.run_isolated("perf.mount:bench_bulk", rows=200_000 if ctx.quick else 1_000_000, fsync_p50_us=fsync_p50)
    load = os.getloadavg()
    ctx.note(f"mount   load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":  # python -m perf.mount runs just this suite
    from perf.__main__ import main
    sys.exit(main(["mount", *sys.argv[1:]]))
