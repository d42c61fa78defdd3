# cython: freethreading_compatible=False
"""CRC-64/GO-ISO and the LTX page/database checksums, compiled.

Twin: litefs/_crc64_py.py (same names, same results). Every function releases the GIL for the
byte loop, so the startup checksum pass can use several threads.
"""
from cpython.array cimport array, clone
from libc.stdint cimport uint32_t, uint64_t

from crc64_impl cimport (
    LITEFS_CHECKSUM_FLAG, litefs_crc64_combine_op, litefs_crc64_have_clmul, litefs_crc64_init,
    litefs_crc64_shift_op, litefs_crc64_update, litefs_page_checksum,
)

litefs_crc64_init()

CHECKSUM_FLAG = LITEFS_CHECKSUM_FLAG
HAVE_CLMUL = bool(litefs_crc64_have_clmul())
_UINT64_TEMPLATE = array("Q", [])


def crc64(const unsigned char[::1] data, uint64_t crc=0):
    """CRC of data, continuing from crc (0 starts a new one)."""
    cdef size_t n = data.shape[0]
    with nogil:
        crc = litefs_crc64_update(crc, &data[0] if n else NULL, n)
    return crc


def shift_op(uint64_t length):
    """The operator that combine() needs to append `length` bytes."""
    return litefs_crc64_shift_op(length)


def combine(uint64_t crc_a, uint64_t crc_b, uint64_t op):
    """crc(A || B) from crc(A), crc(B) and shift_op(len(B))."""
    return litefs_crc64_combine_op(crc_a, crc_b, op)


def lock_pgno(uint32_t page_size):
    return 0x40000000 // page_size + 1


def page_checksum(uint32_t pgno, const unsigned char[::1] page):
    """FLAG | crc(u32be(pgno) || page)."""
    cdef size_t n = page.shape[0]
    cdef uint64_t c
    with nogil:
        c = litefs_page_checksum(pgno, &page[0] if n else NULL, n)
    return c


def page_checksums(const unsigned char[::1] buf, uint32_t page_size, uint32_t first_pgno=1):
    """Checksums of every whole page in buf (page i is pgno first_pgno + i), as array('Q').

    The lock page gets 0: it is never part of a database checksum.
    """
    cdef size_t npages = buf.shape[0] // page_size
    cdef array out = clone(_UINT64_TEMPLATE, npages, False)
    cdef unsigned long long *dst = out.data.as_ulonglongs
    cdef uint32_t lock = 0x40000000 // page_size + 1
    cdef size_t i
    with nogil:
        for i in range(npages):
            if first_pgno + i == lock:
                dst[i] = 0
            else:
                dst[i] = litefs_page_checksum(<uint32_t>(first_pgno + i), &buf[i * page_size], page_size)
    return out


def pages_xor(const unsigned char[::1] buf, uint32_t page_size, uint32_t first_pgno=1):
    """XOR of the page checksums of every whole page in buf, lock page excluded, without FLAG.

    XOR-ing the results of consecutive chunks and OR-ing FLAG gives the database checksum.
    """
    cdef size_t npages = buf.shape[0] // page_size
    cdef uint32_t lock = 0x40000000 // page_size + 1
    cdef uint64_t acc = 0
    cdef size_t i
    with nogil:
        for i in range(npages):
            if first_pgno + i != lock:
                acc ^= litefs_page_checksum(<uint32_t>(first_pgno + i), &buf[i * page_size], page_size)
    return acc & ~LITEFS_CHECKSUM_FLAG


def xor_fold(const unsigned long long[::1] checksums):
    """XOR of an array('Q') of page checksums, without FLAG."""
    cdef uint64_t acc = 0
    cdef size_t i
    with nogil:
        for i in range(<size_t>checksums.shape[0]):
            acc ^= checksums[i]
    return acc & ~LITEFS_CHECKSUM_FLAG
