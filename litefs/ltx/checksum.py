"""The rolling database checksum: FLAG | XOR of every page checksum, lock page excluded.

DatabaseChecksum keeps one checksum per page so that a commit costs O(pages changed): the XOR
of the whole database is updated by XOR-ing a page's old checksum out and its new one in.
Not thread-safe: the db layer guards each instance with its database's lock.
"""
from __future__ import annotations

import os
from array import array
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from litefs.errors import LitefsError
from litefs.ltx.format import CHECKSUM_FLAG, lock_pgno, valid_page_size
from litefs.native import crc64

_CHUNK = 4 * 1024 * 1024
# Below this the thread pool costs more than it saves.
_PARALLEL_MIN = 64 * 1024 * 1024


def sqlite_page_size(header: bytes) -> int:
    """The page size from a SQLite database header (offset 16, u16 big-endian, 1 = 65536)."""
    if len(header) < 18 or not header.startswith(b"SQLite format 3\0"):
        raise LitefsError("not a SQLite database (bad header)")
    size = int.from_bytes(header[16:18], "big")
    size = 65536 if size == 1 else size
    if not valid_page_size(size):
        raise LitefsError(f"invalid SQLite page size {size}")
    return size


class DatabaseChecksum:
    def __init__(self, page_size: int, sums: array | None = None) -> None:
        self.page_size = page_size
        self.lock_pgno = lock_pgno(page_size)
        self.sums = sums if sums is not None else array("Q")
        if len(self.sums) >= self.lock_pgno:
            self.sums[self.lock_pgno - 1] = 0
        self._xor = crc64.xor_fold(self.sums)

    @classmethod
    def of_fd(cls, fd: int, page_size: int, size: int | None = None) -> "DatabaseChecksum":
        """Checksum every whole page of an open file; large files use two threads."""
        if size is None:
            size = os.fstat(fd).st_size
        npages = size // page_size
        chunk = max(_CHUNK // page_size, 1) * page_size

        def work(offset: int) -> array:
            return crc64.page_checksums(os.pread(fd, min(chunk, npages * page_size - offset), offset),
                                        page_size, offset // page_size + 1)

        offsets = range(0, npages * page_size, chunk)
        sums = array("Q")
        if npages * page_size >= _PARALLEL_MIN:
            with ThreadPoolExecutor(2) as pool:
                for part in pool.map(work, offsets):
                    sums.extend(part)
        else:
            for off in offsets:
                sums.extend(work(off))
        return cls(page_size, sums)

    @classmethod
    def of_file(cls, path: str | os.PathLike, page_size: int | None = None) -> "DatabaseChecksum":
        fd = os.open(path, os.O_RDONLY)
        try:
            if page_size is None:
                page_size = sqlite_page_size(os.pread(fd, 100, 0))
            return cls.of_fd(fd, page_size)
        finally:
            os.close(fd)

    @property
    def page_count(self) -> int:
        return len(self.sums)

    @property
    def value(self) -> int:
        return CHECKSUM_FLAG | self._xor

    def get(self, pgno: int) -> int:
        return self.sums[pgno - 1] if pgno <= len(self.sums) else 0

    def set(self, pgno: int, checksum: int) -> None:
        if pgno == self.lock_pgno:
            return
        if pgno > len(self.sums):
            self.sums.extend(array("Q", bytes(8 * (pgno - len(self.sums)))))
        old = self.sums[pgno - 1]
        self.sums[pgno - 1] = checksum
        self._xor ^= (old ^ checksum) & ~CHECKSUM_FLAG

    def set_many(self, pgnos: Iterable[int], checksums: Iterable[int]) -> None:
        for pgno, checksum in zip(pgnos, checksums):
            self.set(pgno, checksum)

    def truncate(self, npages: int) -> None:
        if npages < len(self.sums):
            self._xor ^= crc64.xor_fold(self.sums[npages:])
            del self.sums[npages:]

    def copy(self) -> "DatabaseChecksum":
        return DatabaseChecksum(self.page_size, array("Q", self.sums))


def database_checksum(path: str | os.PathLike) -> int:
    """The rolling checksum of a SQLite file; an empty or missing file is the empty database."""
    try:
        if os.path.getsize(path) == 0:
            return CHECKSUM_FLAG
    except FileNotFoundError:
        return CHECKSUM_FLAG
    return DatabaseChecksum.of_file(path).value


def preview_checksum(checksums: DatabaseChecksum, changes: dict[int, int], npages: int) -> int:
    """The value `checksums` would have after setting `changes` and truncating to npages,
    computed in O(changes + truncated pages) without modifying it."""
    acc = checksums.value & ~CHECKSUM_FLAG
    for pgno, new in changes.items():
        if pgno <= npages and pgno != checksums.lock_pgno:
            acc ^= (checksums.get(pgno) ^ new) & ~CHECKSUM_FLAG
    if npages < checksums.page_count:
        # Pages changed above npages were XOR-ed in above; take them out with the rest.
        acc ^= crc64.xor_fold(checksums.sums[npages:])
    return CHECKSUM_FLAG | acc
