"""LTX format version 1, as LiteFS writes it (ltx v0.3.x).

Layout: a 100-byte header, page frames (u32be pgno || page), a 4-byte zero page header, and a
16-byte trailer. With header flag 0x1 everything between header and trailer is one LZ4 frame.
The file checksum is a running CRC-64/GO-ISO over the uncompressed bytes: header, frames, zero
header and the post-apply checksum. Rules are numbered as in reference/litefs.md §1.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace

from litefs.errors import LTXError

MAGIC = b"LTX1"
HEADER_SIZE = 100
TRAILER_SIZE = 16
PAGE_HEADER_SIZE = 4
CHECKSUM_FLAG = 1 << 63
FLAG_COMPRESS_LZ4 = 0x1
FLAGS_MASK = FLAG_COMPRESS_LZ4

_HEADER = struct.Struct(">4sIIIQQqQqqIIQ20x")
_TRAILER = struct.Struct(">QQ")
_FILENAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


def lock_pgno(page_size: int) -> int:
    """The page holding SQLite's lock bytes at 1 GiB: never encoded, never checksummed."""
    return 0x40000000 // page_size + 1


def valid_page_size(page_size: int) -> bool:
    return 512 <= page_size <= 65536 and page_size & (page_size - 1) == 0


def format_txid(txid: int) -> str:
    return "%016x" % txid


def format_filename(min_txid: int, max_txid: int) -> str:
    return "%016x-%016x.ltx" % (min_txid, max_txid)


def parse_filename(name: str) -> tuple[int, int] | None:
    m = _FILENAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


@dataclass(frozen=True)
class Pos:
    """A database position: the TXID and the checksum after applying it. (0, 0) is empty."""

    txid: int = 0
    checksum: int = 0

    def __str__(self) -> str:
        return "%016x/%016x" % (self.txid, self.checksum)

    @classmethod
    def parse(cls, text: str) -> "Pos":
        txid, _, checksum = text.strip().partition("/")
        try:
            if len(txid) != 16 or len(checksum) != 16:
                raise ValueError(text)
            return cls(int(txid, 16), int(checksum, 16))
        except ValueError:
            raise LTXError(f"invalid position {text!r}: expected 16 hex digits/16 hex digits") from None


@dataclass(frozen=True)
class Header:
    flags: int = 0
    page_size: int = 4096
    commit: int = 0
    min_txid: int = 0
    max_txid: int = 0
    timestamp: int = 0  # milliseconds since the epoch
    pre_apply_checksum: int = 0
    wal_offset: int = 0
    wal_size: int = 0
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESS_LZ4)

    @property
    def lock_pgno(self) -> int:
        return lock_pgno(self.page_size)

    def replace(self, **changes: int) -> "Header":
        return replace(self, **changes)

    def validate(self) -> None:
        """The checks of ltx v0.3.14 Header.Validate, in its order (§1.5)."""
        if self.flags & ~FLAGS_MASK:
            raise LTXError(f"invalid header flags 0x{self.flags:x}")
        if not valid_page_size(self.page_size):
            raise LTXError(f"invalid page size {self.page_size}")
        if self.min_txid == 0:
            raise LTXError("minimum TXID is zero")
        if self.max_txid == 0:
            raise LTXError("maximum TXID is zero")
        if self.min_txid > self.max_txid:
            raise LTXError(f"minimum TXID {self.min_txid:016x} is above maximum {self.max_txid:016x}")
        if self.wal_offset < 0:
            raise LTXError(f"negative WAL offset {self.wal_offset}")
        if self.wal_size < 0:
            raise LTXError(f"negative WAL size {self.wal_size}")
        if (self.wal_salt1 or self.wal_salt2) and not self.wal_offset:
            raise LTXError("WAL salts set without a WAL offset")
        if self.wal_offset and not self.wal_size:
            raise LTXError("WAL offset set without a WAL size")
        if not self.wal_offset and self.wal_size:
            raise LTXError("WAL size set without a WAL offset")
        if self.is_snapshot:
            if self.pre_apply_checksum:
                raise LTXError("snapshot has a pre-apply checksum")
        elif not self.pre_apply_checksum:
            raise LTXError("pre-apply checksum required on a non-snapshot file")
        elif not self.pre_apply_checksum & CHECKSUM_FLAG:
            raise LTXError("pre-apply checksum lacks the checksum flag bit")

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC, self.flags, self.page_size, self.commit, self.min_txid, self.max_txid,
            self.timestamp, self.pre_apply_checksum, self.wal_offset, self.wal_size,
            self.wal_salt1, self.wal_salt2, self.node_id,
        )

    @classmethod
    def unpack(cls, data: bytes) -> "Header":
        if len(data) < HEADER_SIZE:
            raise LTXError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
        magic, *fields = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise LTXError(f"bad magic {magic!r}: not an LTX file")
        return cls(*fields)


@dataclass(frozen=True)
class Trailer:
    post_apply_checksum: int
    file_checksum: int

    def validate(self, header: Header) -> None:
        if not self.post_apply_checksum & CHECKSUM_FLAG:
            raise LTXError("post-apply checksum lacks the checksum flag bit")
        if not self.file_checksum & CHECKSUM_FLAG:
            raise LTXError("file checksum lacks the checksum flag bit")
        if header.commit == 0 and self.post_apply_checksum != CHECKSUM_FLAG:
            raise LTXError("deletion file (commit 0) must have post-apply checksum 8000000000000000")

    def pack(self) -> bytes:
        return _TRAILER.pack(self.post_apply_checksum, self.file_checksum)

    @classmethod
    def unpack(cls, data: bytes) -> "Trailer":
        if len(data) < TRAILER_SIZE:
            raise LTXError(f"truncated trailer: {len(data)} of {TRAILER_SIZE} bytes")
        return cls(*_TRAILER.unpack_from(data))
