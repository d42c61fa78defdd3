"""The wal-index (`-shm`) header a replica writes after applying a transaction.

Replicas keep no WAL frames: pages go straight into the database file. The header they write
says so (mxFrame = 0) and bumps the change counter, so every reader drops its page cache and
reads the file. Layout (sqlite3 wal.c, native byte order): two copies of WalIndexHdr (48 bytes)
then WalCkptInfo; the lock bytes at 120..127 are never written through data, only locked.
"""
from __future__ import annotations

import struct
import sys

from litefs.native import walsum

HEADER_SIZE = 48
CKPT_INFO_SIZE = 40
BLOCK_SIZE = 32768
WAL_INDEX_VERSION = 3007000
READMARK_NOT_USED = 0xFFFFFFFF

_BIG = sys.byteorder == "big"
_E = ">" if _BIG else "<"
# iVersion, unused, iChange, isInit, bigEndCksum, szPage, mxFrame, nPage, aFrameCksum[2], aSalt[2]
_HDR = struct.Struct(_E + "IIIBBHIIIIII")
_CKPT = struct.Struct(_E + "I5I8xII")  # nBackfill, aReadMark[5], aLock[8], nBackfillAttempted, notUsed0


def rewrite(old: bytes, page_size: int, npages: int) -> bytes:
    """A new 136-byte wal-index prefix: no frames, change counter + 1, salts kept."""
    change, big_cksum, frame_cksum, salts = 0, 0, (0, 0), (0, 0)
    if len(old) >= HEADER_SIZE:
        f = _HDR.unpack_from(old)
        if f[0] == WAL_INDEX_VERSION:
            change, big_cksum, frame_cksum, salts = f[2], f[4], (f[8], f[9]), (f[10], f[11])
    body = _HDR.pack(WAL_INDEX_VERSION, 0, (change + 1) & 0xFFFFFFFF, 1, big_cksum,
                     1 if page_size == 65536 else page_size, 0, npages, *frame_cksum, *salts)
    s0, s1 = walsum.wal_checksum(body, 0, 0, _BIG)
    header = body + struct.pack(_E + "II", s0, s1)
    ckpt = _CKPT.pack(0, 0, *([READMARK_NOT_USED] * 4), 0, 0)
    return header + header + ckpt
