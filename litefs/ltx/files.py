"""Whole-file LTX operations: verify, snapshot a SQLite file, apply files to a database file.

These work on plain files; the db layer has its own apply path that writes through the mount.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from litefs.errors import LTXChecksumError, LTXError, PositionMismatchError
from litefs.ltx.checksum import DatabaseChecksum, sqlite_page_size
from litefs.ltx.decoder import Decoder
from litefs.ltx.encoder import Encoder
from litefs.ltx.format import CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, Header, Pos, Trailer, lock_pgno

_SNAPSHOT_CHUNK = 1024 * 1024


def verify_file(path: str | os.PathLike) -> tuple[Header, Trailer]:
    """Decode a whole file and check every rule and checksum; raises LTXError."""
    with open(path, "rb") as f:
        dec = Decoder(f)
        trailer = dec.close()
        if f.read(1):
            raise LTXError("unexpected data after the trailer")
    return dec.header, trailer


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_snapshot(fd: int, out: BinaryIO, *, page_size: int, commit: int, max_txid: int = 1,
                    compress: bool = True, timestamp: int | None = None, node_id: int = 0) -> Trailer:
    """Write pages 1..commit of an open database file as a snapshot LTX (TXID 1..max_txid)."""
    header = Header(
        flags=FLAG_COMPRESS_LZ4 if compress else 0, page_size=page_size, commit=commit,
        min_txid=1, max_txid=max_txid, timestamp=now_ms() if timestamp is None else timestamp,
        node_id=node_id,
    )
    enc = Encoder(out, header)
    lock = lock_pgno(page_size)
    per_chunk = max(_SNAPSHOT_CHUNK // page_size, 1)
    pgno = 1
    while pgno <= commit:
        n = min(per_chunk, commit - pgno + 1)
        data = os.pread(fd, n * page_size, (pgno - 1) * page_size)
        if len(data) != n * page_size:
            raise LTXError(f"database is shorter than its {commit} pages")
        pgnos = range(pgno, pgno + n)
        if lock in pgnos:
            i = lock - pgno
            enc.encode_pages(pgnos[:i], data[:i * page_size])
            enc.encode_pages(pgnos[i + 1:], data[(i + 1) * page_size:])
        else:
            enc.encode_pages(pgnos, data)
        pgno += n
    return enc.close()


def encode_database(db_path: str | os.PathLike, out: BinaryIO, *, compress: bool = True,
                    timestamp: int | None = None, node_id: int = 0) -> Trailer:
    """A snapshot LTX (TXID 1..1) of a SQLite file."""
    fd = os.open(db_path, os.O_RDONLY)
    try:
        page_size = sqlite_page_size(os.pread(fd, 100, 0))
        commit = os.fstat(fd).st_size // page_size
        return encode_snapshot(fd, out, page_size=page_size, commit=commit, compress=compress,
                               timestamp=timestamp, node_id=node_id)
    finally:
        os.close(fd)


@dataclass
class DatabaseFile:
    """A database file being rebuilt from LTX files, with its position and page checksums."""

    fd: int
    pos: Pos
    checksums: DatabaseChecksum | None

    @property
    def checksum(self) -> int:
        return self.checksums.value if self.checksums is not None else CHECKSUM_FLAG


def open_database_file(path: str | os.PathLike, txid: int = 0) -> DatabaseFile:
    """Open (creating) a database file for apply; its position is (txid, current checksum)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    sums = DatabaseChecksum.of_fd(fd, sqlite_page_size(os.pread(fd, 100, 0)), size) if size else None
    db = DatabaseFile(fd, Pos(txid, 0), sums)
    db.pos = Pos(txid, db.checksum)
    return db


def apply_file(db: DatabaseFile, path: str | os.PathLike,
               on_page: Callable[[int], None] | None = None) -> Pos:
    """Apply one LTX file to an open database file.

    The file is verified completely before any page is written, the pre-apply checksum must
    equal the database's (a snapshot replaces everything), and the post-apply checksum must
    match afterwards; a mismatch raises and the caller must treat the database as suspect.
    """
    header, trailer = verify_file(path)
    if not header.is_snapshot:
        if db.checksums is None or header.pre_apply_checksum != db.checksum:
            raise PositionMismatchError(
                f"{os.fspath(path)}: pre-apply checksum {header.pre_apply_checksum:016x} does not match "
                f"the database checksum {db.checksum:016x}")
        if db.pos.txid and header.min_txid != db.pos.txid + 1:
            raise PositionMismatchError(
                f"{os.fspath(path)}: TXID {header.min_txid:016x} does not follow {db.pos.txid:016x}")
    if header.commit == 0:
        os.ftruncate(db.fd, 0)
        db.checksums = None
    else:
        ps = header.page_size
        if db.checksums is None or db.checksums.page_size != ps or header.is_snapshot:
            db.checksums = DatabaseChecksum(ps)
            if header.is_snapshot:
                os.ftruncate(db.fd, 0)
        with open(path, "rb") as f:
            dec = Decoder(f)
            for batch in dec.batches():
                view = memoryview(batch.buf)
                for pgno, off in zip(batch.pgnos, batch.offsets):
                    os.pwrite(db.fd, view[off:off + ps], (pgno - 1) * ps)
                    if on_page:
                        on_page(pgno)
                db.checksums.set_many(batch.pgnos, batch.checksums)
        os.ftruncate(db.fd, header.commit * ps)
        db.checksums.truncate(header.commit)
    if db.checksum != trailer.post_apply_checksum:
        raise LTXChecksumError(
            f"{os.fspath(path)}: database checksum {db.checksum:016x} after apply does not match "
            f"the post-apply checksum {trailer.post_apply_checksum:016x}")
    db.pos = Pos(header.max_txid, trailer.post_apply_checksum)
    return db.pos


def apply_files(db_path: str | os.PathLike, paths: Iterable[str | os.PathLike], txid: int = 0) -> Pos:
    db = open_database_file(db_path, txid)
    try:
        for path in paths:
            apply_file(db, path)
        os.fsync(db.fd)
        return db.pos
    finally:
        os.close(db.fd)
