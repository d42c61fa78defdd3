"""SQLite's WAL checksum, compiled. Twin: litefs/_walsum_py.py."""
from libc.stdint cimport uint32_t


def wal_checksum(const unsigned char[::1] data, uint32_t s0, uint32_t s1, bint big_endian):
    """Continue SQLite's WAL checksum (s0, s1) over `data` (a multiple of 8 bytes).

    For each 8-byte chunk read as 32-bit words x0, x1 (big-endian when `big_endian`, else
    little-endian): s0 += x0 + s1; s1 += x1 + s0, modulo 2**32.
    """
    cdef size_t n = data.shape[0], i
    cdef uint32_t x0, x1
    if n % 8:
        raise ValueError(f"WAL checksum input must be a multiple of 8 bytes, got {n}")
    with nogil:
        if big_endian:
            for i in range(0, n, 8):
                x0 = (<uint32_t>data[i] << 24) | (<uint32_t>data[i + 1] << 16) | (<uint32_t>data[i + 2] << 8) | data[i + 3]
                x1 = (<uint32_t>data[i + 4] << 24) | (<uint32_t>data[i + 5] << 16) | (<uint32_t>data[i + 6] << 8) | data[i + 7]
                s0 += x0 + s1
                s1 += x1 + s0
        else:
            for i in range(0, n, 8):
                x0 = (<uint32_t>data[i + 3] << 24) | (<uint32_t>data[i + 2] << 16) | (<uint32_t>data[i + 1] << 8) | data[i]
                x1 = (<uint32_t>data[i + 7] << 24) | (<uint32_t>data[i + 6] << 16) | (<uint32_t>data[i + 5] << 8) | data[i + 4]
                s0 += x0 + s1
                s1 += x1 + s0
    return s0, s1
