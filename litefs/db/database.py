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

import enum
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
from litefs.db import shm, sqlite_locks
from litefs.db.ltxdir import LTXDir
from litefs.db.wal import WALTracker, WALTransaction, checkpoint_pages
from litefs.errors import LitefsError, LTXChecksumError, PositionMismatchError, RecoveryError
from litefs.fsutil import fsync_dir
from litefs.ltx.checksum import DatabaseChecksum, preview_checksum, sqlite_page_size
from litefs.ltx.decoder import Decoder, PageBatch
from litefs.ltx.encoder import Encoder
from litefs.ltx.files import verify_file
from litefs.ltx.format import CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, Header, Pos, Trailer, lock_pgno
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


class FileKind(enum.Enum):
    DATABASE = ""
    JOURNAL = "-journal"
    WAL = "-wal"
    SHM = "-shm"


class Mode(enum.Enum):
    ROLLBACK = "rollback"
    WAL = "wal"


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


def _verify_and_mode(path: Path) -> tuple[Header, Trailer, bool | None]:
    """Decode a whole file (verifying it) and say whether it leaves the database in WAL mode
    (None when it does not carry page 1)."""
    wal = None
    with open(path, "rb") as f:
        dec = Decoder(f)
        for batch in dec.batches():
            if batch.pgnos[0] == 1:
                wal = batch.page(0)[18:20].tobytes() == b"\2\2"
    assert dec.trailer is not None
    return dec.header, dec.trailer, wal


def _runs(pgnos: list[int]) -> Iterable[tuple[int, int]]:
    """Split sorted page numbers into (first, count) runs of consecutive pages."""
    i = 0
    while i < len(pgnos):
        j = i
        while j + 1 < len(pgnos) and pgnos[j + 1] == pgnos[j] + 1 and j + 1 - i < _READ_RUN:
            j += 1
        yield pgnos[i], j - i + 1
        i = j + 1


class Database:
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

    # -- snapshots (primary) ----------------------------------------------------------------------

    def write_snapshot(self, out: BinaryIO, timeout: float = 30.0) -> tuple[Header, Trailer]:
        """A snapshot LTX file (TXID 1..current) of the committed state, for a replica.

        Holds the database lock, which blocks commits, for the duration. In rollback mode it
        first waits until no transaction has pages in the file, since those are not committed.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.mode is Mode.WAL or not self._dirty:
                    return self._write_snapshot_locked(out)
            if time.monotonic() > deadline:
                raise LitefsError(f"{self.name}: a write transaction kept the database busy; no snapshot")
            time.sleep(0.005)

    def _write_snapshot_locked(self, out: BinaryIO) -> tuple[Header, Trailer]:
        ps = self.page_size or 4096
        header = Header(
            flags=FLAG_COMPRESS_LZ4 if self.store.compress else 0, page_size=ps, commit=self.commit,
            min_txid=1, max_txid=max(self.pos.txid, 1), timestamp=self.timestamp,
            node_id=self.store.node_id,
        )
        enc = Encoder(out, header)
        lock = lock_pgno(ps)
        fd = self._db_fd()
        for first in range(1, self.commit + 1, _READ_RUN):
            last = min(first + _READ_RUN, self.commit + 1)
            raw = bytearray(os.pread(fd, (last - first) * ps, (first - 1) * ps).ljust((last - first) * ps, b"\0"))
            for pgno in range(first, last):
                off = self._wal_pages.get(pgno)
                if off is not None:
                    raw[(pgno - first) * ps:(pgno - first + 1) * ps] = self._read_wal(off, ps)
            if first <= lock < last:
                del raw[(lock - first) * ps:(lock - first + 1) * ps]
            enc.encode_pages([p for p in range(first, last) if p != lock], raw)
        trailer = enc.close(self.pos.checksum if self.commit else CHECKSUM_FLAG)
        return header, trailer

    # -- replicas: applying LTX files from the primary ------------------------------------------

    def write_raw(self, kind: FileKind, fd: int, data: bytes, offset: int) -> int:
        """A write by the daemon itself through the mount (replica apply): no capture, and no
        lock, because the applier is waiting for it while holding SQLite's locks."""
        return os.pwrite(fd, data, offset)

    def apply_ltx(self, received: Path) -> Pos:
        """Apply an LTX file received from the primary (a temp file in this database's ltx/).

        The file is verified completely, then published under its name (a snapshot replaces
        every other file), then applied: so a corrupt file is never applied, and a crash part-way
        through the apply is repaired by startup recovery re-applying the newest file. Pages are
        written through the mount while holding SQLite's own locks, so readers on this node never
        see a torn state and the kernel's page cache stays coherent.
        """
        try:
            header, trailer, wal_after = _verify_and_mode(received)
            with self.lock:
                if not header.is_snapshot and (header.min_txid != self.pos.txid + 1
                                               or header.pre_apply_checksum != self.pos.checksum):
                    raise PositionMismatchError(
                        f"{self.name}: LTX {header.min_txid:016x} (pre-apply {header.pre_apply_checksum:016x}) "
                        f"does not follow position {self.pos}")
                wal_before = self.mode is Mode.WAL
                path = self.ltx.path_for(header.min_txid, header.max_txid)
                os.replace(received, path)
                self.ltx.sync()
                if header.is_snapshot:
                    self.ltx.remove_except(path)
        finally:
            received.unlink(missing_ok=True)
        if header.commit == 0:
            self._apply_deletion(header, trailer)
            return self.pos
        wal_after = wal_before if wal_after is None else wal_after
        ps = header.page_size
        mount = self.store.mount_path(self.name)
        sums = DatabaseChecksum(ps) if header.is_snapshot or self.checksums is None else self.checksums.copy()
        with self.store.internal_io():
            self._apply_pages(path, header, trailer, mount, sums, wal_before, wal_after)
        with self.lock:
            self.checksums = sums
            self.page_size = ps
            self.commit = header.commit
            self.mode = Mode.WAL if wal_after else Mode.ROLLBACK
            self.pos = Pos(header.max_txid, trailer.post_apply_checksum)
            self.timestamp = max(self.timestamp, header.timestamp)
            self.store.notify_commit(self, header)
            return self.pos

    def _apply_pages(self, path: Path, header: Header, trailer: Trailer, mount: str,
                     sums: DatabaseChecksum, wal_before: bool, wal_after: bool) -> None:
        ps = header.page_size
        db_fd = os.open(mount, os.O_RDWR | os.O_CREAT)
        shm_fd = os.open(mount + "-shm", os.O_RDWR | os.O_CREAT)
        try:
            with open(path, "rb") as f, sqlite_locks.exclusive(
                    db_fd, shm_fd, rollback=not (wal_before and wal_after), wal=wal_before or wal_after):
                for batch in Decoder(f).batches():
                    self._write_batch(db_fd, batch, ps)
                    sums.set_many(batch.pgnos, batch.checksums)
                os.ftruncate(db_fd, header.commit * ps)
                sums.truncate(header.commit)
                if sums.value != trailer.post_apply_checksum:
                    raise LTXChecksumError(
                        f"{self.name}: checksum {sums.value:016x} after applying TXID {header.max_txid:016x} "
                        f"does not match its post-apply checksum {trailer.post_apply_checksum:016x}")
                if wal_before or wal_after:
                    block = shm.rewrite(os.pread(shm_fd, shm.HEADER_SIZE, 0), ps, header.commit)
                    if os.fstat(shm_fd).st_size < shm.BLOCK_SIZE:
                        block = block.ljust(shm.BLOCK_SIZE, b"\0")
                    os.pwrite(shm_fd, block, 0)
        finally:
            os.close(shm_fd)
            os.close(db_fd)

    @staticmethod
    def _write_batch(fd: int, batch: "PageBatch", ps: int) -> None:
        """Write a decoded batch through the mount, one call per run of consecutive pages
        (up to the 128 KiB a FUSE write carries)."""
        view = memoryview(batch.buf)
        pgnos, offsets = batch.pgnos, batch.offsets
        per_call = max(131072 // ps, 1)
        i = 0
        while i < len(pgnos):
            j = i + 1
            while (j < len(pgnos) and j - i < per_call and pgnos[j] == pgnos[j - 1] + 1
                   and offsets[j] == offsets[j - 1] + ps + 4):
                j += 1
            if j - i == 1:
                os.pwrite(fd, view[offsets[i]:offsets[i] + ps], (pgnos[i] - 1) * ps)
            else:
                run = b"".join(view[offsets[k]:offsets[k] + ps] for k in range(i, j))
                os.pwrite(fd, run, (pgnos[i] - 1) * ps)
            i = j

    def _apply_deletion(self, header: Header, trailer: Trailer) -> None:
        with self.lock:
            self.close()
            for kind in FileKind:
                self.path(kind).unlink(missing_ok=True)
            self.checksums = None
            self.page_size = 0
            self.commit = 0
            self.mode = Mode.ROLLBACK
            self.pos = Pos(header.max_txid, trailer.post_apply_checksum)
            self.timestamp = max(self.timestamp, header.timestamp)
            self.store.notify_commit(self, header)

    def demote(self) -> None:
        """This node stops being primary: make the files hold exactly the last committed state,
        as a replica's must (no hot journal, no WAL frames), working through the mount under
        SQLite's locks like an apply. A writer cut off mid-transaction keeps its locks until
        SQLite gives up on it; if that outlasts the lock deadline, this raises and is retried
        at the next apply."""
        with self.lock:
            if not self.exists or not self.commit:
                return
            ps, commit, wal_pages = self.page_size, self.commit, dict(self._wal_pages)
            journal_path = self.path(FileKind.JOURNAL)
            try:
                with open(journal_path, "rb") as f:
                    hot = journal_format.is_hot_header(f.read(28))
            except FileNotFoundError:
                hot = False
            self._dirty.clear()
        if not hot and not wal_pages and not self._dirty_wal():
            return
        with self.store.internal_io():
            self._fold_for_replica(hot, ps, commit, wal_pages)
        with self.lock:
            self._wal_pages.clear()
            self._wal.reset()
        log.info("%s: files brought back to position %s for replica mode", self.name, self.pos)

    def _fold_for_replica(self, hot: bool, ps: int, commit: int, wal_pages: dict[int, int]) -> None:
        journal_path = self.path(FileKind.JOURNAL)
        mount = self.store.mount_path(self.name)
        db_fd = os.open(mount, os.O_RDWR)
        shm_fd = os.open(mount + "-shm", os.O_RDWR | os.O_CREAT)
        try:
            with sqlite_locks.exclusive(db_fd, shm_fd, rollback=True, wal=True):
                if hot:
                    playback = journal_format.read_journal(self._reader(journal_path),
                                                           journal_path.stat().st_size, ps)
                    for pgno, page in playback.pages.items():
                        os.pwrite(db_fd, page, (pgno - 1) * ps)
                    os.unlink(mount + "-journal")
                for pgno, off in wal_pages.items():
                    if pgno <= commit:
                        os.pwrite(db_fd, self._read_wal(off, ps), (pgno - 1) * ps)
                os.ftruncate(db_fd, commit * ps)
                block = shm.rewrite(os.pread(shm_fd, shm.HEADER_SIZE, 0), ps, commit)
                os.pwrite(shm_fd, block.ljust(shm.BLOCK_SIZE, b"\0") if os.fstat(shm_fd).st_size < shm.BLOCK_SIZE else block, 0)
                if self.path(FileKind.WAL).exists():
                    wal_fd = os.open(mount + "-wal", os.O_RDWR)
                    try:
                        os.ftruncate(wal_fd, 0)
                    finally:
                        os.close(wal_fd)
        finally:
            os.close(shm_fd)
            os.close(db_fd)

    def _dirty_wal(self) -> bool:
        try:
            return self.path(FileKind.WAL).stat().st_size > 0
        except FileNotFoundError:
            return False

    @staticmethod
    def _reader(path: Path) -> "Callable[[int, int], bytes]":
        def read(offset: int, size: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        return read

    def reset_position(self) -> None:
        """Forget the position so the primary sends a snapshot (after a failed apply)."""
        with self.lock:
            self.pos = Pos()

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

    # -- startup recovery -----------------------------------------------------------------------

    def recover(self) -> None:
        """Bring the files back to the last LTX file's state, or refuse.

        Order (as upstream LiteFS): roll back a hot journal; reconcile the WAL with the last
        LTX (salts and size) and checkpoint it into the database file; checksum the file;
        re-apply the last LTX, which repairs a crash between its rename and the database
        write; then the checksum must equal the last post-apply checksum.
        """
        with self.lock:
            self.ltx.remove_temp_files()
            self.path(FileKind.SHM).unlink(missing_ok=True)
            last = self.ltx.last()
            header = trailer = None
            if last is not None:
                try:
                    header, trailer = verify_file(last.path)
                except LitefsError as exc:
                    raise RecoveryError(f"database {self.name}: newest LTX file {last.path.name} is invalid: {exc}") from exc
            db_path = self.path(FileKind.DATABASE)
            if self.path(FileKind.JOURNAL).exists():
                journal_format.rollback(self.path(FileKind.JOURNAL), db_path)
            self._recover_wal(header)
            if header is None:
                if db_path.exists() and db_path.stat().st_size:
                    raise RecoveryError(
                        f"database {self.name}: has data but no LTX file; run `litefs recover --reset {self.name}` "
                        "to take the file as it is")
                return
            assert trailer is not None
            fd = self._db_fd()
            size = os.fstat(fd).st_size
            ps = header.page_size
            self.checksums = DatabaseChecksum.of_fd(fd, ps, size - size % ps) if size else DatabaseChecksum(ps)
            if header.commit == 0:
                os.ftruncate(fd, 0)
                self.checksums = DatabaseChecksum(ps)
            else:
                self._reapply(last.path, header)
            checksum = self.checksums.value if header.commit else CHECKSUM_FLAG
            if checksum != trailer.post_apply_checksum:
                raise RecoveryError(
                    f"database {self.name}: checksum {checksum:016x} at TXID {header.max_txid:016x} does not "
                    f"match the LTX post-apply checksum {trailer.post_apply_checksum:016x}; "
                    f"run `litefs recover --rebuild {self.name}` (from the LTX files) or "
                    f"`litefs recover --reset {self.name}` (take the file as it is)")
            self.pos = Pos(header.max_txid, trailer.post_apply_checksum)
            self.page_size = ps
            self.commit = header.commit
            self.timestamp = header.timestamp
            head = os.pread(fd, 20, 0)
            self.mode = Mode.WAL if head[18:20] == b"\2\2" else Mode.ROLLBACK
            if header.commit == 0:
                self.close()
                for kind in FileKind:
                    self.path(kind).unlink(missing_ok=True)
                self.checksums = None
                self.page_size = 0

    def _recover_wal(self, header: Header | None) -> None:
        wal_path = self.path(FileKind.WAL)
        if not wal_path.exists():
            return
        size = wal_path.stat().st_size
        tracker = WALTracker(self._read_wal)
        txs = tracker.scan_existing(size) if size >= 32 else []
        same_generation = (header is not None and header.wal_offset and tracker.header is not None
                           and (tracker.header.salt1, tracker.header.salt2) == (header.wal_salt1, header.wal_salt2))
        if same_generation:
            assert header is not None
            end = header.wal_offset + header.wal_size
            keep = [tx for tx in txs if tx.offset + tx.size <= end]
            if not keep or keep[-1].offset + keep[-1].size != end:
                raise RecoveryError(
                    f"database {self.name}: WAL ends before the last LTX file's frames (offset {end})")
            if keep != txs:
                log.info("%s: discarding %d WAL transactions that have no LTX file", self.name, len(txs) - len(keep))
            fd = self._db_fd()
            ps = tracker.header.page_size
            for pgno, off in checkpoint_pages(keep).items():
                os.pwrite(fd, self._read_wal(off, ps), (pgno - 1) * ps)
            os.ftruncate(fd, keep[-1].commit * ps)
            os.fsync(fd)
        elif txs:
            log.info("%s: WAL generation has no LTX file; setting it aside as wal.removed", self.name)
            os.replace(wal_path, self.dir / "wal.removed")
            fsync_dir(self.dir)
            return
        wal_path.unlink()
        fsync_dir(self.dir)

    def _reapply(self, path: Path, header: Header) -> None:
        assert self.checksums is not None
        fd = self._db_fd()
        ps = header.page_size
        with open(path, "rb") as f:
            dec = Decoder(f)
            for batch in dec.batches():
                view = memoryview(batch.buf)
                for pgno, off in zip(batch.pgnos, batch.offsets):
                    os.pwrite(fd, view[off:off + ps], (pgno - 1) * ps)
                self.checksums.set_many(batch.pgnos, batch.checksums)
        os.ftruncate(fd, header.commit * ps)
        self.checksums.truncate(header.commit)
        os.fsync(fd)

    # -- retention ------------------------------------------------------------------------------

    def enforce_retention(self, max_age: float, floor_txid: int | None = None) -> int:
        with self.lock:
            removed = self.ltx.enforce_retention(max_age, floor_txid)
        if removed:
            metrics.LTX_REAPED.labels(self.name).inc(removed)
        return removed
