"""SQLite rollback journals: header validation at commit time and hot-journal rollback.

A journal is a sequence of segments. Each starts, at a sector-aligned offset, with a header
padded to the sector size: magic d9d505f920a163d7, nRec, checksum nonce, the database size in
pages when the transaction began, the sector size and the page size (big-endian u32s; the last
two are only read from the first header). nRec records follow, each a page number, the page's
original content and a checksum. https://www.sqlite.org/fileformat2.html#rollbackjournal

Playback follows pager.c (`readJournalHdr`, `pager_playback`, `pager_playback_one_page`) for a
hot journal: a header that is short or lacks the magic ends playback; nRec 0xFFFFFFFF (no-sync
mode) means "as many records as fit"; nRec 0 means an empty segment; a record with page number
0 or the lock page, a bad checksum or a short read ends playback; records for pages beyond the
original database size are skipped. The database is cut back to its original size.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from litefs.errors import LitefsError
from litefs.fsutil import fsync_dir

__all__ = [
    "JOURNAL_MAGIC", "JOURNAL_HEADER_SIZE", "JournalError", "JournalHeader", "JournalPlayback",
    "parse_header", "is_hot_header", "journal_checksum", "read_journal", "rollback",
]

JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
JOURNAL_HEADER_SIZE = 28  # the meaningful bytes; the header occupies a whole sector
NREC_TO_EOF = 0xFFFFFFFF
MAX_PAGE_SIZE = 65536
MAX_SECTOR_SIZE = 0x10000
PENDING_BYTE = 0x40000000

_HDR = struct.Struct(">8s5I")
_U32 = struct.Struct(">I")

Reader = Callable[[int, int], bytes]


class JournalError(LitefsError):
    """A journal that cannot be played back for a reason other than reaching its end."""


@dataclass(frozen=True)
class JournalHeader:
    nrec: int  # stored record count; 0xFFFFFFFF = up to end of file (no-sync mode)
    nonce: int  # checksum initialiser
    db_size: int  # database size in pages when the transaction began
    sector_size: int
    page_size: int
    offset: int = 0  # where this header lies in the journal

    def pack(self) -> bytes:
        return _HDR.pack(JOURNAL_MAGIC, self.nrec, self.nonce, self.db_size, self.sector_size,
                         self.page_size)


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> JournalHeader | None:
    """The header at the start of `data`; None when it is short or lacks the magic
    (zeroed by PERSIST mode, truncated, or never written)."""
    if len(data) < JOURNAL_HEADER_SIZE or bytes(data[:8]) != JOURNAL_MAGIC:
        return None
    _, nrec, nonce, db_size, sector, page = _HDR.unpack_from(data, 0)
    return JournalHeader(nrec, nonce, db_size, sector, page, offset)


def is_hot_header(data: bytes | bytearray | memoryview) -> bool:
    """True when `data` (the journal's first bytes) begins with a valid journal magic: at
    commit time this means a real commit, otherwise the transaction rolled back."""
    return len(data) >= 8 and bytes(data[:8]) == JOURNAL_MAGIC


def journal_checksum(nonce: int, page: bytes | bytearray | memoryview) -> int:
    """pager_cksum: the nonce plus every 200th byte counted back from the page's end."""
    ps = len(page)
    return (nonce + sum(memoryview(page)[ps - 200:0:-200])) & 0xFFFFFFFF


def lock_pgno(page_size: int) -> int:
    """The page holding SQLite's lock bytes (never journaled)."""
    return PENDING_BYTE // page_size + 1


@dataclass
class JournalPlayback:
    """What a rollback must do: restore `pages`, then cut the database to `db_size` pages."""

    page_size: int = 0
    db_size: int | None = None  # None: no valid first header, nothing to play back
    pages: dict[int, bytes] = field(default_factory=dict)
    segments: int = 0

    @property
    def valid(self) -> bool:
        return self.db_size is not None


def _valid_power(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def read_journal(read: Reader, size: int, db_page_size: int | None = None) -> JournalPlayback:
    """Collect the original pages of a hot journal of `size` bytes read through `read`.

    The first record of a page wins. `db_page_size` is used only when the journal's page-size
    field is 0 (journals from SQLite before 3.5.8).
    """
    if size < 0:
        raise JournalError(f"negative journal size {size}")

    def read_exact(off: int, n: int) -> bytes:
        data = read(off, n)
        if len(data) != n:
            raise JournalError(f"short read of the journal: {len(data)} of {n} bytes at {off}")
        return data

    out = JournalPlayback()
    off = 0
    sector = page_size = 0
    while True:
        if off:
            off = (off + sector - 1) // sector * sector
        if off + JOURNAL_HEADER_SIZE > size:
            return out
        hdr = parse_header(read_exact(off, JOURNAL_HEADER_SIZE), off)
        if hdr is None:
            return out
        if not off:
            page_size = hdr.page_size or db_page_size or 0
            if hdr.page_size == 0 and not db_page_size:
                raise JournalError("journal page size is 0 and the database page size is unknown")
            if not (_valid_power(page_size, 512, MAX_PAGE_SIZE)
                    and _valid_power(hdr.sector_size, 32, MAX_SECTOR_SIZE)):
                return out  # the header was never synced: nothing was written to the database
            sector = hdr.sector_size
        if off + sector > size:
            return out
        rec_size = page_size + 8
        rec = off + sector
        nrec = hdr.nrec
        if nrec == NREC_TO_EOF:
            nrec = (size - rec) // rec_size
        if not off:
            out.page_size, out.db_size = page_size, hdr.db_size
        out.segments += 1
        lock = lock_pgno(page_size)
        for _ in range(nrec):
            if rec + rec_size > size:
                return out  # truncated journal: SQLite stops on the short read
            buf = read_exact(rec, rec_size)
            rec += rec_size
            pgno = _U32.unpack_from(buf, 0)[0]
            if pgno == 0 or pgno == lock:
                return out
            if pgno > out.db_size:  # type: ignore[operator]
                continue
            page = memoryview(buf)[4:4 + page_size]
            if journal_checksum(hdr.nonce, page) != _U32.unpack_from(buf, 4 + page_size)[0]:
                return out
            if pgno not in out.pages:
                out.pages[pgno] = bytes(page)
        off = rec


def _db_page_size(fd: int) -> int | None:
    hdr = os.pread(fd, 100, 0)
    if len(hdr) < 100 or not hdr.startswith(b"SQLite format 3\x00"):
        return None
    raw = int.from_bytes(hdr[16:18], "big")
    return 65536 if raw == 1 else raw


def rollback(journal_path: str | os.PathLike[str], db_path: str | os.PathLike[str]) -> int:
    """Play a hot journal back into the database, then delete the journal.

    Writes the original pages, cuts the database to its original size (extending it with a
    zero page when it is shorter, as pager_truncate does), fsyncs it, then deletes the journal
    and fsyncs the directory. A journal without a valid header, or beside a missing or empty
    database (which SQLite does not consider hot), is only deleted. Returns the number of
    pages restored.
    """
    jpath, dpath = os.fspath(journal_path), os.fspath(db_path)
    try:
        jfd = os.open(jpath, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    restored = 0
    try:
        try:
            dfd = os.open(dpath, os.O_RDWR)
        except FileNotFoundError:
            dfd = -1
        if dfd >= 0:
            try:
                if os.fstat(dfd).st_size > 0:
                    playback = read_journal(lambda o, n: os.pread(jfd, n, o),
                                            os.fstat(jfd).st_size, _db_page_size(dfd))
                    if playback.valid:
                        _apply(dfd, playback)
                        restored = len(playback.pages)
            finally:
                os.close(dfd)
    finally:
        os.close(jfd)
    os.unlink(jpath)
    fsync_dir(os.path.dirname(os.path.abspath(jpath)) or ".")
    return restored


def _apply(fd: int, playback: JournalPlayback) -> None:
    ps = playback.page_size
    assert playback.db_size is not None
    new_size = playback.db_size * ps
    current = os.fstat(fd).st_size
    if current > new_size:
        os.ftruncate(fd, new_size)
    elif current + ps <= new_size:
        os.pwrite(fd, bytes(ps), new_size - ps)
    for pgno in sorted(playback.pages):
        page = playback.pages[pgno]
        if os.pwrite(fd, page, (pgno - 1) * ps) != ps:
            raise JournalError(f"short write restoring page {pgno}")
    os.fsync(fd)
