"""One SQLite database of a node: its files, position, page checksums and commit pipeline.

Commits are recognised from file events, because the daemon cannot see SQLite's locks:
- rollback-journal modes: the journal is unlinked (DELETE), truncated to 0 (TRUNCATE) or its
  header zeroed (PERSIST) while it still has a valid header; a journal without one is a
  rollback. The LTX file is durable before the call that commits returns.
- WAL mode: the write that completes a valid commit frame (WALTracker). The LTX is published
  before that write returns and made durable when SQLite fsyncs the WAL or the database, so
  durability follows the synchronous setting the application chose.

Each commit becomes exactly one LTX file holding the pages whose content changed, TXID =
previous + 1, pre-apply = previous post-apply. Page checksums are kept per page (a
DatabaseChecksum of the committed state), so a commit costs O(pages changed).

Threading: every method that reads or changes state holds `self.lock`. Callers are FUSE worker
threads (with llfuse.lock released), HTTP executor threads and the store's retention thread.
Nothing here knows about llfuse or Tornado.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from litefs import faults, metrics
from litefs.db import journal as journal_format
from litefs.db.kinds import FileKind, Mode
from litefs.db.ltxdir import LTXDir
from litefs.db.recovery import RecoveryMixin
from litefs.db.replica import ReplicationMixin
from litefs.db.wal import WALTracker, WALTransaction
from litefs.errors import LitefsError
from litefs.ltx.checksum import DatabaseChecksum, preview_checksum, sqlite_page_size
from litefs.ltx.encoder import Encoder
from litefs.ltx.format import CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, Header, Pos, lock_pgno
from litefs.native import crc64

if TYPE_CHECKING:
    from litefs.db.store import Store

log = logging.getLogger(__name__)

# Runs an fsync beside the LTX syncs (see Database.fsync).
_SYNC_POOL = ThreadPoolExecutor(4, thread_name_prefix="litefs-sync")

# Pages read per pread when building an LTX file from the database file.
_READ_RUN = 256


class InvalidWriteError(LitefsError):
    """A write SQLite would never make: not whole pages, or truncating below the header."""

    errno = errno.EINVAL
    http_status = 400


_BACKING = {FileKind.DATABASE: "database", FileKind.JOURNAL: "journal", FileKind.WAL: "wal", FileKind.SHM: "shm"}


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # already removed by retention or a snapshot
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _runs(pgnos: list[int]) -> Iterable[tuple[int, int]]:
    """Split sorted page numbers into (first, count) runs of consecutive pages."""
    i = 0
    while i < len(pgnos):
        j = i
        while j + 1 < len(pgnos) and pgnos[j + 1] == pgnos[j] + 1 and j + 1 - i < _READ_RUN:
            j += 1
        yield pgnos[i], j - i + 1
        i = j + 1


class Database(RecoveryMixin, ReplicationMixin):
    def __init__(self, store: "Store", name: str, directory: Path) -> None:
        self.store = store
        self.name = name
        self.dir = directory
        self.lock = threading.RLock()
        self.ltx = LTXDir(directory / "ltx")
        self.pos = Pos()
        self.page_size = 0
        self.commit = 0  # database size in pages after the last transaction
        self.mode = Mode.ROLLBACK
        self.timestamp = 0  # ms; the last transaction's, never decreasing
        self.hwm = 0  # replicas: the primary's high-water mark (archived TXID)
        self.checksums: DatabaseChecksum | None = None
        self._dirty: set[int] = set()
        self._wal = WALTracker(self._read_wal)
        self._wal_pages: dict[int, int] = {}  # pgno -> WAL offset of its newest committed frame
        self._unsynced: list[Path] = []  # LTX files published before SQLite asked for durability
        self._fd: int | None = None  # our own descriptor on the database file, for reads
        self._wal_fd: int | None = None  # the writer's WAL descriptor while a WAL write is handled

    # -- paths and queries --------------------------------------------------------------------

    def path(self, kind: FileKind) -> Path:
        return self.dir / _BACKING[kind]

    @property
    def exists(self) -> bool:
        return self.path(FileKind.DATABASE).exists()

    def create_file(self) -> None:
        with self.lock:
            self._db_fd()

    def _db_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path(FileKind.DATABASE), os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _read_wal(self, offset: int, size: int) -> bytes:
        if self._wal_fd is not None:
            return os.pread(self._wal_fd, size, offset)
        fd = os.open(self.path(FileKind.WAL), os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    # -- file operations for the FUSE adapter ---------------------------------------------------

    def open_file(self, kind: FileKind, flags: int, internal: bool = False) -> int:
        """Open a backing file; write access needs a writable node.

        Replicas still let readers open (and create) the WAL and the wal-index read-write,
        because SQLite's WAL readers need them; writing the WAL is refused in write().
        """
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        if writing and not internal and kind not in (FileKind.SHM, FileKind.WAL):
            self.store.check_writable()
        with self.lock:
            path = self.path(kind)
            if kind is FileKind.JOURNAL and flags & os.O_TRUNC and path.exists():
                self._journal_invalidated()
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR  # the daemon reads back what it captures
            return os.open(path, (flags & ~(os.O_APPEND | os.O_EXCL)) | os.O_CLOEXEC, 0o644)

    def write(self, kind: FileKind, fd: int, data: bytes, offset: int) -> int:
        if kind is FileKind.SHM:
            metrics.SHM_WRITES.labels(self.name).inc()
            return os.pwrite(fd, data, offset)
        self.store.check_writable()
        with self.lock:
            if kind is FileKind.DATABASE:
                return self._write_database(fd, data, offset)
            if kind is FileKind.JOURNAL:
                return self._write_journal(fd, data, offset)
            metrics.WAL_WRITES.labels(self.name).inc()
            n = os.pwrite(fd, data, offset)
            self._wal_fd = fd
            try:
                self._after_wal_write(offset, n)
            finally:
                self._wal_fd = None
            return n

    def truncate(self, kind: FileKind, size: int) -> None:
        if kind is not FileKind.SHM:
            self.store.check_writable()
        with self.lock:
            path = self.path(kind)
            if kind is FileKind.DATABASE:
                if self.page_size and (size % self.page_size or 0 < size < self.page_size):
                    raise InvalidWriteError(f"{self.name}: truncate to {size} bytes is not a whole number of pages")
                if size == 0 and self.commit and path.stat().st_size:
                    raise InvalidWriteError(f"{self.name}: truncating the database below its header")
                self._dirty = {p for p in self._dirty if p * max(self.page_size, 1) <= size}
            elif kind is FileKind.JOURNAL and size == 0:
                self._journal_invalidated()
            elif kind is FileKind.WAL:
                self._wal.on_truncate(size)
                if size == 0:
                    self._wal_pages.clear()
            os.truncate(path, size)

    def unlink(self, kind: FileKind) -> None:
        if kind is FileKind.DATABASE:
            self.drop()
            return
        if kind is not FileKind.SHM:
            self.store.check_writable()
        with self.lock:
            if kind is FileKind.JOURNAL:
                self._journal_invalidated()
            elif kind is FileKind.WAL:
                self._wal.reset()
                self._wal_pages.clear()
            self.path(kind).unlink()

    def fsync(self, kind: FileKind, fd: int, datasync: bool) -> None:
        # SQLite syncs the WAL at commit (FULL) or before a checkpoint, and the database after
        # one: the LTX files of the transactions involved must be durable by then. Their
        # contents are synced first, so a published name never points at lost data; then their
        # directory and SQLite's file together, which the file system can fold into one commit.
        sync = os.fdatasync if datasync else os.fsync
        if kind in (FileKind.WAL, FileKind.DATABASE) and self._unsynced:
            self.sync_ltx(alongside=lambda: sync(fd))
            return
        sync(fd)

    def sync_ltx(self, alongside: Callable[[], None] | None = None) -> None:
        """Make the LTX files published without fsync durable; `alongside` runs with the
        directory sync, after every file's contents are durable."""
        with self.lock:
            pending, self._unsynced = self._unsynced, []
        for f in [_SYNC_POOL.submit(_fsync_path, path) for path in pending]:
            f.result()
        other = _SYNC_POOL.submit(alongside) if alongside is not None else None
        try:
            if pending:
                self.ltx.sync()
        finally:
            if other is not None:
                other.result()

    # -- rollback-journal capture ---------------------------------------------------------------

    def _write_database(self, fd: int, data: bytes, offset: int) -> int:
        if not self.page_size:
            if offset != 0 or len(data) < 100:
                raise InvalidWriteError(f"{self.name}: first write must carry the database header")
            self.page_size = sqlite_page_size(data[:100])
        ps = self.page_size
        if offset % ps or len(data) % ps or not data:
            raise InvalidWriteError(f"{self.name}: write of {len(data)} bytes at {offset} is not whole pages of {ps}")
        metrics.DB_WRITES.labels(self.name).inc()
        n = os.pwrite(fd, data, offset)
        first = offset // ps + 1
        self._dirty.update(range(first, first + n // ps))
        return n

    def _write_journal(self, fd: int, data: bytes, offset: int) -> int:
        if offset == 0 and len(data) == 28 and not any(data):
            self._journal_invalidated()  # PERSIST mode zeroes the header to commit
        elif offset == 0 and len(data) >= 28 and not self.page_size:
            hdr = journal_format.parse_header(data)
            if hdr is not None and hdr.page_size:
                self.page_size = hdr.page_size
        metrics.JOURNAL_WRITES.labels(self.name).inc()
        return os.pwrite(fd, data, offset)

    def _journal_invalidated(self) -> None:
        """The journal is about to stop being hot: that is SQLite's commit (or rollback) point."""
        path = self.path(FileKind.JOURNAL)
        try:
            with open(path, "rb") as f:
                header = f.read(28)
        except FileNotFoundError:
            return
        if not journal_format.is_hot_header(header):
            # Never synced, so no database page was written under it: a rollback, or nothing.
            self._dirty.clear()
            return
        self._commit_rollback_journal()

    def _commit_rollback_journal(self) -> None:
        fd = self._db_fd()
        head = os.pread(fd, 100, 0)
        size = os.fstat(fd).st_size
        if len(head) < 100 or not size:
            self._dirty.clear()
            return
        ps = sqlite_page_size(head)
        self.page_size = ps
        in_header = int.from_bytes(head[28:32], "big")
        valid_for = int.from_bytes(head[92:96], "big") == int.from_bytes(head[24:28], "big")
        commit = in_header if valid_for and in_header else size // ps
        if self.pos.txid == 0 or self.checksums is None:
            candidates = list(range(1, commit + 1))
        else:
            candidates = sorted(p for p in self._dirty if p <= commit)
        lock = lock_pgno(ps)
        candidates = [p for p in candidates if p != lock]
        pages: dict[int, bytes] = {}
        sums: dict[int, int] = {}
        for first, count in _runs(candidates):
            data = os.pread(fd, count * ps, (first - 1) * ps)
            if len(data) != count * ps:
                raise LitefsError(f"{self.name}: database shorter than its {commit} pages")
            for i, c in enumerate(crc64.page_checksums(data, ps, first)):
                pgno = first + i
                if self.checksums is None or self.pos.txid == 0 or self.checksums.get(pgno) != c:
                    pages[pgno] = data[i * ps:(i + 1) * ps]
                    sums[pgno] = c
        self._dirty.clear()
        if not pages and commit == self.commit and self.pos.txid:
            return  # a rollback that restored every page: nothing changed
        self._publish(pages, sums, commit, ps, durable=True,
                      mode=Mode.WAL if head[18:20] == b"\2\2" else Mode.ROLLBACK)

    # -- WAL capture ----------------------------------------------------------------------------

    def _after_wal_write(self, offset: int, length: int) -> None:
        if offset == 0 and length >= 32:
            # A new WAL generation only starts once every frame is in the database file.
            self._wal_pages.clear()
        for tx in self._wal.on_write(offset, length):
            self._commit_wal(tx)

    def _commit_wal(self, tx: WALTransaction) -> None:
        header = self._wal.header
        assert header is not None
        ps = header.page_size
        self.page_size = ps
        raw = {pgno: self._read_wal(off, ps) for pgno, off in tx.pages.items()}
        if self.pos.txid == 0 or self.checksums is None:
            # The first transaction is a snapshot: every page, from the WAL or the file.
            dbfd = self._db_fd()
            for pgno in range(1, tx.commit + 1):
                if pgno not in raw and pgno != lock_pgno(ps):
                    raw[pgno] = os.pread(dbfd, ps, (pgno - 1) * ps).ljust(ps, b"\0")
        pages: dict[int, bytes] = {}
        sums: dict[int, int] = {}
        for pgno in sorted(raw):
            if pgno > tx.commit or pgno == lock_pgno(ps):
                continue
            c = crc64.page_checksum(pgno, raw[pgno])
            if self.checksums is None or self.pos.txid == 0 or self.checksums.get(pgno) != c:
                pages[pgno], sums[pgno] = raw[pgno], c
        mode = Mode.WAL
        if 1 in raw and raw[1][18:20] != b"\2\2":
            mode = Mode.ROLLBACK
        self._wal_pages.update({p: off for p, off in tx.pages.items() if p <= tx.commit})
        self._publish(pages, sums, tx.commit, ps, durable=False, mode=mode,
                      wal=(tx.offset, tx.size, tx.salt1, tx.salt2))
        self._dirty.clear()  # database writes in WAL mode are checkpoints of committed pages

    # -- the commit pipeline --------------------------------------------------------------------

    def _next_timestamp(self) -> int:
        return max(int(time.time() * 1000), self.timestamp)

    def _publish(self, pages: dict[int, bytes], sums: dict[int, int], commit: int, page_size: int,
                 *, durable: bool, mode: Mode, wal: tuple[int, int, int, int] | None = None) -> None:
        """Write the LTX file of one transaction and advance the position."""
        faults.point("commit:before-ltx")
        self.store.check_writable()
        txid = self.pos.txid + 1
        snapshot = txid == 1
        if self.checksums is None or self.checksums.page_size != page_size:
            self.checksums = DatabaseChecksum(page_size)
        post = preview_checksum(self.checksums, sums, commit)
        wal_offset, wal_size, salt1, salt2 = wal or (0, 0, 0, 0)
        header = Header(
            flags=FLAG_COMPRESS_LZ4 if self.store.compress else 0, page_size=page_size,
            commit=commit, min_txid=txid, max_txid=txid, timestamp=self._next_timestamp(),
            pre_apply_checksum=0 if snapshot else self.pos.checksum or CHECKSUM_FLAG,
            wal_offset=wal_offset, wal_size=wal_size, wal_salt1=salt1, wal_salt2=salt2,
            node_id=self.store.node_id,
        )

        def encode(f: BinaryIO) -> None:
            enc = Encoder(f, header)
            order = sorted(pages)
            for first, count in _runs(order):
                enc.encode_pages(range(first, first + count), b"".join(pages[p] for p in range(first, first + count)))
            enc.close(post)

        def before_rename() -> None:
            faults.point("commit:before-rename")
            self.store.check_writable()  # the lease may have run out while encoding: fence

        path = self.ltx.write(txid, txid, encode, durable=durable, before_rename=before_rename)
        faults.point("commit:after-rename")
        if not durable:
            self._unsynced.append(path)
        self.checksums.set_many(sums.keys(), sums.values())
        self.checksums.truncate(commit)
        if self.store.strict_verify:
            self._verify_checksum(commit, post)
        self.pos = Pos(txid, post)
        self.commit = commit
        self.mode = mode
        self.timestamp = header.timestamp
        metrics.COMMITS.labels(self.name).inc()
        self.store.notify_commit(self, header)

    def _verify_checksum(self, commit: int, expected: int) -> None:
        """strict-verify: recompute the committed state from disk after every commit (tests)."""
        fd = self._db_fd()
        sums = DatabaseChecksum.of_fd(fd, self.page_size, min(os.fstat(fd).st_size, commit * self.page_size))
        for pgno, off in self._wal_pages.items():
            if pgno <= commit:
                sums.set(pgno, crc64.page_checksum(pgno, self._read_wal(off, self.page_size)))
        sums.truncate(commit)
        if sums.value != expected:
            raise LitefsError(f"{self.name}: strict-verify: database checksum {sums.value:016x} != {expected:016x}")

    # -- drop -----------------------------------------------------------------------------------

    def drop(self) -> None:
        """Unlinking the database on the primary: a deletion LTX (commit 0), then the files go."""
        self.store.check_writable()
        with self.lock:
            if self.pos.txid and self.commit:
                ps = self.page_size or 4096
                self.checksums = DatabaseChecksum(ps)
                self._publish({}, {}, 0, ps, durable=True, mode=Mode.ROLLBACK)
            self.close()
            for kind in FileKind:
                self.path(kind).unlink(missing_ok=True)
            self.checksums = None
            self.page_size = 0
            self._dirty.clear()
            self._wal.reset()
            self._wal_pages.clear()

    # -- retention ------------------------------------------------------------------------------

    def enforce_retention(self, max_age: float, floor_txid: int | None = None) -> int:
        with self.lock:
            removed = self.ltx.enforce_retention(max_age, floor_txid)
        if removed:
            metrics.LTX_REAPED.labels(self.name).inc(removed)
        return removed
