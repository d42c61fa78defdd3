"""Startup recovery of a Database: bring its files back to the last LTX file's state, or
refuse naming the database, TXID and checksums. A mixin of Database (same lock rules)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from litefs.db import journal as journal_format
from litefs.db.wal import WALTracker, checkpoint_pages
from litefs.errors import LitefsError, RecoveryError
from litefs.fsutil import fsync_dir
from litefs.ltx.checksum import DatabaseChecksum
from litefs.ltx.decoder import Decoder
from litefs.ltx.files import verify_file
from litefs.ltx.format import CHECKSUM_FLAG, Header, Pos

from litefs.db.kinds import FileKind, Mode

if TYPE_CHECKING:
    from litefs.db.database import Database as _Base
else:
    _Base = object

log = logging.getLogger(__name__)


class RecoveryMixin(_Base):
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
