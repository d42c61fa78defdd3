"""CRC-64/GO-ISO and the LTX page/database checksums: the plain-Python twin of pyx/crc64.pyx.

Same names and results as the compiled module. The byte loop is crcmod's (an independent
implementation, which also makes this twin fast enough to run a node on); combine and the
checksum folds are written out here.
"""
from __future__ import annotations

from array import array

import crcmod

CHECKSUM_FLAG = 1 << 63
HAVE_CLMUL = False
_POLY = 0xD800000000000000
_crc = crcmod.mkCrcFun(0x1000000000000001B, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    return _crc(bytes(data), crc)


def _multmodp(a: int, b: int) -> int:
    m, p = 1 << 63, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 62
    for _ in range(64):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def shift_op(length: int) -> int:
    p, k = 1 << 63, 3
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 63], p)
        length >>= 1
        k += 1
    return p


def combine(crc_a: int, crc_b: int, op: int) -> int:
    return _multmodp(op, crc_a) ^ crc_b


def lock_pgno(page_size: int) -> int:
    return 0x40000000 // page_size + 1


def page_checksum(pgno: int, page: bytes | bytearray | memoryview) -> int:
    return CHECKSUM_FLAG | _crc(bytes(page), _crc(pgno.to_bytes(4, "big")))


def page_checksums(buf: bytes | bytearray | memoryview, page_size: int, first_pgno: int = 1) -> array:
    view, lock = memoryview(buf), lock_pgno(page_size)
    out = array("Q")
    for i in range(len(view) // page_size):
        pgno = first_pgno + i
        out.append(0 if pgno == lock else page_checksum(pgno, view[i * page_size:(i + 1) * page_size]))
    return out


def pages_xor(buf: bytes | bytearray | memoryview, page_size: int, first_pgno: int = 1) -> int:
    return xor_fold(page_checksums(buf, page_size, first_pgno))


def xor_fold(checksums: array) -> int:
    acc = 0
    for c in checksums:
        acc ^= c
    return acc & ~CHECKSUM_FLAG
