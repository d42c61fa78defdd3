"""SQLite's WAL checksum: the plain-Python twin of pyx/walsum.pyx."""
from __future__ import annotations

import sys
from array import array

_M32 = 0xFFFFFFFF
_LITTLE_HOST = sys.byteorder == "little"


def wal_checksum(data: bytes | bytearray | memoryview, s0: int, s1: int,
                 big_endian: bool) -> tuple[int, int]:
    """Continue SQLite's WAL checksum (s0, s1) over `data` (a multiple of 8 bytes).

    For each 8-byte chunk read as words x0, x1: s0 += x0 + s1; s1 += x1 + s0 (mod 2**32).
    """
    n = len(data)
    if n % 8:
        raise ValueError(f"WAL checksum input must be a multiple of 8 bytes, got {n}")
    words = array("I")
    words.frombytes(data)
    if big_endian == _LITTLE_HOST:
        words.byteswap()
    m = _M32
    full = n - n % 64
    head = words if full == n else words[:full // 4]
    # Eight chunks per iteration; the sums stay below 2**45, so masking once per iteration is
    # exact. (Fewer, larger int operations is where pure Python gains: ~1.6x over the plain loop.)
    it = iter(head)
    for a0, a1, b0, b1, c0, c1, d0, d1, e0, e1, f0, f1, g0, g1, h0, h1 in zip(
            it, it, it, it, it, it, it, it, it, it, it, it, it, it, it, it):
        s0 += a0 + s1
        s1 += a1 + s0
        s0 += b0 + s1
        s1 += b1 + s0
        s0 += c0 + s1
        s1 += c1 + s0
        s0 += d0 + s1
        s1 += d1 + s0
        s0 += e0 + s1
        s1 += e1 + s0
        s0 += f0 + s1
        s1 += f1 + s0
        s0 += g0 + s1
        s1 += g1 + s0
        s0 = (s0 + h0 + s1) & m
        s1 = (s1 + h1 + s0) & m
    if full != n:
        it = iter(words[full // 4:])
        for x0, x1 in zip(it, it):
            s0 = (s0 + x0 + s1) & m
            s1 = (s1 + x1 + s0) & m
    return s0 & m, s1 & m
