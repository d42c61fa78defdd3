"""Page diffing, compiled. Twin: litefs/_pagediff_py.py."""
from cpython.array cimport array, clone
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp

from crc64_impl cimport litefs_crc64_init, litefs_page_checksum

litefs_crc64_init()

_UINT64_TEMPLATE = array("Q", [])
_UINT32_TEMPLATE = array("I", [])


def diff_pages(const unsigned char[::1] old, const unsigned char[::1] new, uint32_t page_size,
               uint32_t first_pgno=1):
    """Pages of `new` that differ from `old`, with their new page checksums.

    Page i of each buffer is pgno first_pgno + i. Pages of `new` beyond the end of `old` count
    as changed; the lock page is never reported. Returns (array('I') pgnos, array('Q') sums).
    """
    cdef size_t npages = new.shape[0] // page_size
    cdef size_t nold = old.shape[0] // page_size
    cdef uint32_t lock = 0x40000000 // page_size + 1
    cdef array pg = clone(_UINT32_TEMPLATE, npages, False)
    cdef array sums = clone(_UINT64_TEMPLATE, npages, False)
    cdef size_t i, count = 0
    cdef const unsigned char *p
    with nogil:
        for i in range(npages):
            if first_pgno + i == lock:
                continue
            p = &new[i * page_size]
            if i < nold and memcmp(p, &old[i * page_size], page_size) == 0:
                continue
            pg.data.as_uints[count] = <uint32_t>(first_pgno + i)
            sums.data.as_ulonglongs[count] = litefs_page_checksum(<uint32_t>(first_pgno + i), p, page_size)
            count += 1
    del pg[count:]
    del sums[count:]
    return pg, sums
