"""The replication side of a Database: snapshots on the primary; on a replica, applying LTX
files through the mount under SQLite's locks, and bringing files back to the last commit when
a primary steps down. A mixin of Database: the same lock and threading rules apply (see
litefs.db.database); `store.internal_io()` marks the threads that write through the mount.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from litefs.db import journal as journal_format
from litefs.db import shm, sqlite_locks
from litefs.errors import LitefsError, LTXChecksumError, PositionMismatchError
from litefs.ltx.checksum import DatabaseChecksum
from litefs.ltx.decoder import Decoder, PageBatch
from litefs.ltx.encoder import Encoder
from litefs.ltx.format import CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, Header, Pos, Trailer, lock_pgno

from litefs.db.kinds import FileKind, Mode

if TYPE_CHECKING:
    from litefs.db.database import Database as _Base
else:
    _Base = object

log = logging.getLogger(__name__)

# Pages read per pread when building a snapshot.
_READ_RUN = 256


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


class ReplicationMixin(_Base):
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
