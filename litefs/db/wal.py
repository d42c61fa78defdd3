"""SQLite WAL files: the header, the frame checksum chain, and commit detection from writes.

The daemon cannot see SQLite's locks, so it learns about WAL commits from the file's bytes
(DESIGN.md §3, reference/litefs.md §3.6). `WALTracker` follows the writes that pass through
to `<db>-wal` and reports each transaction once every byte of its frames has been written and
the whole chain from the header up to its commit frame is valid: salts equal to the header's,
and the running checksum matching in every frame, exactly as SQLite's recovery requires
(https://www.sqlite.org/fileformat2.html#walformat, `walIndexRecover`/`walDecodeFrame`).

Layout: a 32-byte header (magic, version, page size, checkpoint sequence, salt-1, salt-2,
checksum-1, checksum-2), then frames of a 24-byte header (page number, database size after
commit (non-zero only on a commit frame), salt-1, salt-2, checksum-1, checksum-2) and one page.
Integers are big-endian; the checksum reads 32-bit words big-endian when the magic's low bit is
set and little-endian otherwise.

`wal_checksum` is the hot function: compiled in pyx/walsum.pyx, twin in litefs/_walsum_py.py.
"""
from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from litefs.errors import LitefsError
from litefs.native import walsum

__all__ = [
    "WAL_HEADER_SIZE", "WAL_FRAME_HEADER_SIZE", "WAL_MAGIC", "WAL_VERSION",
    "WALError", "WALHeader", "WALTransaction", "WALTracker",
    "wal_checksum", "frame_checksum", "checkpoint_pages",
]

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
WAL_MAGIC = 0x377F0682  # | 1 for big-endian checksum words
WAL_VERSION = 3007000
MAX_PAGE_SIZE = 65536

_M32 = 0xFFFFFFFF
_HDR = struct.Struct(">8I")
_FRAME_HDR = struct.Struct(">6I")
_LITTLE_HOST = sys.byteorder == "little"

if array("I").itemsize != 4:  # pragma: no cover - every supported platform has 4-byte unsigned ints
    raise ImportError("array('I') is not 32 bits wide on this platform")

Reader = Callable[[int, int], bytes]


class WALError(LitefsError):
    """A WAL header that is malformed or that SQLite itself would refuse."""


# --------------------------------------------------------------------------------------------
# Checksum

wal_checksum = walsum.wal_checksum


def frame_checksum(frame_header: bytes | bytearray | memoryview,
                   page: bytes | bytearray | memoryview,
                   s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """The checksum a frame must carry: its first 8 header bytes, then its page."""
    s0, s1 = wal_checksum(memoryview(frame_header)[:8], s0, s1, big_endian)
    return wal_checksum(page, s0, s1, big_endian)


# --------------------------------------------------------------------------------------------
# Header


@dataclass(frozen=True)
class WALHeader:
    """The 32-byte WAL header. `page_size_raw` is the stored field (1 is read as 65536)."""

    magic: int
    version: int
    page_size_raw: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int = 0
    checksum2: int = 0

    @classmethod
    def new(cls, page_size: int, salt1: int, salt2: int, checkpoint_seq: int = 0,
            big_endian: bool = not _LITTLE_HOST) -> WALHeader:
        """A header as SQLite writes it (native byte order by default), checksum filled in."""
        raw = cls(WAL_MAGIC | int(big_endian), WAL_VERSION, page_size, checkpoint_seq,
                  salt1, salt2)
        c1, c2 = raw.compute_checksum()
        return cls(raw.magic, raw.version, raw.page_size_raw, checkpoint_seq, salt1, salt2, c1, c2)

    @property
    def big_endian(self) -> bool:
        return bool(self.magic & 1)

    @property
    def page_size(self) -> int:
        return 65536 if self.page_size_raw == 1 else self.page_size_raw

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER_SIZE + self.page_size

    @property
    def checksum(self) -> tuple[int, int]:
        return self.checksum1, self.checksum2

    def compute_checksum(self) -> tuple[int, int]:
        return wal_checksum(_HDR.pack(*self._fields6(), 0, 0)[:24], 0, 0, self.big_endian)

    def _fields6(self) -> tuple[int, int, int, int, int, int]:
        return (self.magic, self.version, self.page_size_raw, self.checkpoint_seq,
                self.salt1, self.salt2)

    def pack(self) -> bytes:
        """The header bytes, with the checksum computed over bytes 0..24."""
        return _HDR.pack(*self._fields6(), *self.compute_checksum())

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> WALHeader:
        """Parse and verify a header; WALError when SQLite would not use it."""
        if len(data) < WAL_HEADER_SIZE:
            raise WALError(f"WAL header too short: {len(data)} bytes")
        hdr = cls(*_HDR.unpack_from(data, 0))
        problem = hdr.problem()
        if problem:
            raise WALError(problem)
        return hdr

    def problem(self, check_version: bool = True) -> str | None:
        """Why SQLite would reject this header, or None. Checked in walIndexRecover's order."""
        if self.magic & 0xFFFFFFFE != WAL_MAGIC:
            return f"bad WAL magic {self.magic:#010x}"
        ps = self.page_size
        if ps < 512 or ps > MAX_PAGE_SIZE or ps & (ps - 1):
            return f"bad WAL page size {self.page_size_raw}"
        if self.compute_checksum() != self.checksum:
            return "WAL header checksum mismatch"
        if check_version and self.version != WAL_VERSION:
            return f"unsupported WAL format version {self.version}"
        return None


# --------------------------------------------------------------------------------------------
# Transactions


@dataclass
class WALTransaction:
    """One committed transaction: consecutive frames ending with a commit frame."""

    offset: int  # file offset of its first frame
    size: int  # bytes of its frames
    commit: int  # database size in pages after the commit
    pages: dict[int, int] = field(default_factory=dict)  # pgno -> offset of its last page data
    salt1: int = 0
    salt2: int = 0
    checksum: tuple[int, int] = (0, 0)  # running checksum after the commit frame

    @property
    def end(self) -> int:
        return self.offset + self.size


def checkpoint_pages(transactions: Iterable[WALTransaction]) -> dict[int, int]:
    """pgno -> WAL offset of the newest committed version, as a checkpoint would copy them.

    Pages beyond the final transaction's database size are left out (SQLite's checkpoint skips
    them too, then truncates the database to that size).
    """
    pages: dict[int, int] = {}
    commit = None
    for tx in transactions:
        pages.update(tx.pages)
        commit = tx.commit
    if commit is None:
        return {}
    return {pgno: off for pgno, off in pages.items() if pgno <= commit}


# --------------------------------------------------------------------------------------------
# Tracker

# One validated, uncommitted frame: (pgno, commit, checksum1, checksum2).
_Frame = tuple[int, int, int, int]


class WALTracker:
    """Follows a live WAL through the writes passed to its backing file.

    `read(offset, size)` reads the backing file. Only bytes written since the current header
    (or, after `scan_existing`, past the last commit) count as present: stale frames left in a
    reused WAL file are never trusted, even when they would validate.

    Cost: each frame is read and checksummed once as it completes; a write that overwrites a
    frame already validated in the open transaction (SQLite rewrites pages in place and then
    rewrites checksums before committing) re-validates only the frames it touched, and the
    chain after them only if their checksums changed.
    """

    def __init__(self, read: Reader) -> None:
        self._read = read
        self.reset()

    # --- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: no header, nothing present."""
        self._hdr: WALHeader | None = None
        self._fsz = 0
        self._commit_end = 0
        self._commit_ck: tuple[int, int] = (0, 0)
        self._frames: list[_Frame] = []
        self._stuck = False  # the frame at the scan position is complete but invalid
        self._filled = 0  # bytes [0, _filled) have been written in this generation
        self._extents: list[list[int]] = []  # written ranges past _filled, sorted, disjoint

    @property
    def header(self) -> WALHeader | None:
        return self._hdr

    @property
    def commit_end(self) -> int:
        """File offset just past the last committed frame (32 with no commit; 0 without header)."""
        return self._commit_end

    @property
    def last_checksum(self) -> tuple[int, int] | None:
        """Running checksum after the last committed frame (the header's with none)."""
        return self._commit_ck if self._hdr is not None else None

    @property
    def scan_offset(self) -> int:
        """Offset of the first frame not yet validated (uncommitted frames lie before it)."""
        return self._commit_end + len(self._frames) * self._fsz

    # --- events ------------------------------------------------------------------------------

    def on_write(self, offset: int, length: int) -> list[WALTransaction]:
        """Account for a write already passed through; return the transactions it completed."""
        if length <= 0:
            return []
        end = offset + length
        if offset < WAL_HEADER_SIZE and (offset == 0 or self._hdr is not None):
            # Only a new WAL generation writes the header (SQLite writes it whole at offset 0).
            self._restart(min(self._filled, offset))
        self._add_extent(offset, end)
        out: list[WALTransaction] = []
        if self._hdr is None:
            if self._filled < WAL_HEADER_SIZE or not self._load_header():
                return out
            self._scan_forward(out)
            return out
        if end <= self._commit_end:
            return out  # committed frames are never rewritten by SQLite; nothing to learn
        scan = self.scan_offset
        if offset < scan + self._fsz and end > scan:
            self._stuck = False
        if offset < scan:
            first = max(0, (offset - self._commit_end) // self._fsz)
            last = (min(end, scan) - 1 - self._commit_end) // self._fsz
            self._revalidate(first, last, out)
        self._scan_forward(out)
        return out

    def on_truncate(self, size: int) -> None:
        """The WAL was truncated to `size` bytes.

        Truncating into the committed frames (checkpoint TRUNCATE, journal mode change) resets
        the tracker. A truncation that keeps them (journal_size_limit after the first commit
        of a generation) keeps the generation and drops only what lay past `size`.
        """
        if self._hdr is None or size < self._commit_end:
            self.reset()
            return
        self._filled = min(self._filled, size)
        self._extents = [[s, min(e, size)] for s, e in self._extents if s < size]
        keep = (size - self._commit_end) // self._fsz
        del self._frames[keep:]
        self._stuck = False

    def scan_existing(self, file_size: int) -> list[WALTransaction]:
        """Recover an existing WAL of `file_size` bytes from its start, as SQLite would.

        Returns every committed transaction in order, stopping quietly at the first frame that
        is incomplete or invalid. Frames after the last commit are not trusted afterwards: the
        next frame expected is the one at `commit_end`. A header SQLite would ignore yields no
        transactions; one with an unknown format version (which SQLite refuses to open) raises
        WALError.
        """
        self.reset()
        if file_size < WAL_HEADER_SIZE:
            return []
        data = self._read(0, WAL_HEADER_SIZE)
        if len(data) < WAL_HEADER_SIZE:
            return []
        hdr = WALHeader(*_HDR.unpack_from(data, 0))
        problem = hdr.problem()
        if problem is not None:
            if hdr.version != WAL_VERSION and hdr.problem(check_version=False) is None:
                raise WALError(problem)  # a valid header SQLite refuses to open (CANTOPEN)
            return []
        self._set_header(hdr)
        self._filled = file_size
        out: list[WALTransaction] = []
        self._scan_forward(out)
        self._filled = self._commit_end
        self._frames = []
        self._stuck = False
        return out

    # --- internals ---------------------------------------------------------------------------

    def _restart(self, keep: int) -> None:
        self.reset()
        self._filled = keep

    def _add_extent(self, start: int, end: int) -> None:
        if start <= self._filled:
            if end > self._filled:
                self._filled = end
                ext = self._extents
                while ext and ext[0][0] <= self._filled:
                    self._filled = max(self._filled, ext.pop(0)[1])
            return
        merged: list[list[int]] = []
        placed = False
        for s, e in self._extents:
            if e < start:
                merged.append([s, e])
            elif s > end:
                if not placed:
                    merged.append([start, end])
                    placed = True
                merged.append([s, e])
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            merged.append([start, end])
        merged.sort()
        self._extents = merged

    def _load_header(self) -> bool:
        data = self._read(0, WAL_HEADER_SIZE)
        try:
            hdr = WALHeader.parse(data)
        except WALError:
            return False
        self._set_header(hdr)
        return True

    def _set_header(self, hdr: WALHeader) -> None:
        self._hdr = hdr
        self._fsz = hdr.frame_size
        self._commit_end = WAL_HEADER_SIZE
        self._commit_ck = hdr.checksum
        self._frames = []
        self._stuck = False

    def _check_frame(self, off: int, ck: tuple[int, int]) -> _Frame | None:
        """Read and validate the frame at `off` given the running checksum before it."""
        hdr = self._hdr
        assert hdr is not None
        data = self._read(off, self._fsz)
        if len(data) < self._fsz:
            return None
        pgno, commit, salt1, salt2, c1, c2 = _FRAME_HDR.unpack_from(data, 0)
        if pgno == 0 or salt1 != hdr.salt1 or salt2 != hdr.salt2:
            return None
        view = memoryview(data)
        be = hdr.big_endian
        s0, s1 = wal_checksum(view[:8], ck[0], ck[1], be)
        if wal_checksum(view[WAL_FRAME_HEADER_SIZE:], s0, s1, be) != (c1, c2):
            return None
        return pgno, commit, c1, c2

    def _accept(self, info: _Frame, out: list[WALTransaction]) -> None:
        """Append a validated frame at the scan position; a commit frame closes a transaction."""
        self._frames.append(info)
        if not info[1]:
            return
        hdr = self._hdr
        assert hdr is not None
        start, fsz = self._commit_end, self._fsz
        pages: dict[int, int] = {}
        for i, frame in enumerate(self._frames):
            pages[frame[0]] = start + i * fsz + WAL_FRAME_HEADER_SIZE
        size = len(self._frames) * fsz
        ck = (info[2], info[3])
        out.append(WALTransaction(start, size, info[1], pages, hdr.salt1, hdr.salt2, ck))
        self._commit_end = start + size
        self._commit_ck = ck
        self._frames = []

    def _chain_before(self, index: int) -> tuple[int, int]:
        if index == 0:
            return self._commit_ck
        f = self._frames[index - 1]
        return f[2], f[3]

    def _revalidate(self, first: int, last: int, out: list[WALTransaction]) -> None:
        """Frames first..last of the open transaction were overwritten: check them again."""
        frames = self._frames
        ck = self._chain_before(first)
        for m in range(first, min(last + 1, len(frames))):
            off = self._commit_end + m * self._fsz
            info = self._check_frame(off, ck)
            if info == frames[m]:
                ck = info[2], info[3]
                continue
            # The chain changed here: drop this frame and all after it, and go on from it.
            del frames[m:]
            self._stuck = info is None
            if info is not None:
                self._accept(info, out)
            return

    def _scan_forward(self, out: list[WALTransaction]) -> None:
        fsz = self._fsz
        while not self._stuck:
            off = self.scan_offset
            if off + fsz > self._filled:
                return
            info = self._check_frame(off, self._chain_before(len(self._frames)))
            if info is None:
                self._stuck = True
                return
            self._accept(info, out)
