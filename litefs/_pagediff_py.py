"""Page diffing: the plain-Python twin of pyx/pagediff.pyx."""
from __future__ import annotations

from array import array

from litefs._crc64_py import lock_pgno, page_checksum

Buffer = bytes | bytearray | memoryview


def diff_pages(old: Buffer, new: Buffer, page_size: int, first_pgno: int = 1) -> tuple[array, array]:
    o, n = memoryview(old), memoryview(new)
    nold, lock = len(o) // page_size, lock_pgno(page_size)
    pgnos, sums = array("I"), array("Q")
    for i in range(len(n) // page_size):
        pgno = first_pgno + i
        if pgno == lock:
            continue
        page = n[i * page_size:(i + 1) * page_size]
        if i < nold and page == o[i * page_size:(i + 1) * page_size]:
            continue
        pgnos.append(pgno)
        sums.append(page_checksum(pgno, page))
    return pgnos, sums
