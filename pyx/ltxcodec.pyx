"""LTX v1 page-frame serialization, compiled. Twin: litefs/_ltxcodec_py.py.

A page frame is u32be(pgno) || page. Its CRC is, by definition, the page checksum without its
flag bit, so each frame is checksummed once and that CRC is folded into the running file CRC
with a table-driven combine instead of a second pass over the bytes. `op` (the combine
operator for the frame length) is what the plain-Python twin uses; the compiled module looks
it up per page size.
"""
from cpython.array cimport array, clone
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from crc64_impl cimport (
    LITEFS_CHECKSUM_FLAG, litefs_crc64_combine_frame, litefs_crc64_init, litefs_crc64_prepare_frame,
    litefs_crc64_update,
)

litefs_crc64_init()

_UINT64_TEMPLATE = array("Q", [])
_UINT32_TEMPLATE = array("I", [])
cdef unsigned char ZERO4[4]
ZERO4[:] = [0, 0, 0, 0]


cdef uint64_t _fill_frames(unsigned char *out, const unsigned char *data, const uint32_t *pgnos,
                           unsigned long long *sums, size_t n, uint32_t page_size,
                           uint64_t file_crc) noexcept nogil:
    """Lay out n frames in out, each frame's CRC once; returns the new file CRC."""
    cdef size_t i, frame_size = 4 + <size_t>page_size
    cdef unsigned char *f
    cdef uint32_t p
    cdef uint64_t c
    for i in range(n):
        f = out + i * frame_size
        p = pgnos[i]
        f[0] = p >> 24
        f[1] = p >> 16
        f[2] = p >> 8
        f[3] = p
        memcpy(f + 4, data + i * page_size, page_size)
        c = litefs_crc64_update(0, f, frame_size)
        file_crc = litefs_crc64_combine_frame(file_crc, c, page_size)
        sums[i] = LITEFS_CHECKSUM_FLAG | c
    return file_crc


cdef array _pgno_array(pgnos, size_t n, const unsigned char[::1] data, uint32_t page_size):
    if <size_t>data.shape[0] != n * page_size:
        raise ValueError("data holds %d bytes, expected %d pages of %d" % (data.shape[0], n, page_size))
    cdef array pg = clone(_UINT32_TEMPLATE, n, False)
    cdef size_t i
    for i in range(n):
        pg.data.as_uints[i] = pgnos[i]
    litefs_crc64_prepare_frame(page_size)
    return pg


def encode_pages(const unsigned char[::1] data, pgnos, uint32_t page_size, uint64_t file_crc, uint64_t op):
    """Serialize len(pgnos) pages (data holds them back to back) as LTX page frames.

    op is crc64.shift_op(4 + page_size). Returns (frames, new file CRC, array('Q') of the page
    checksums). Page-number rules are check_pgnos' job; this only lays out bytes.
    """
    cdef size_t n = len(pgnos)
    cdef array pg = _pgno_array(pgnos, n, data, page_size)
    cdef array sums = clone(_UINT64_TEMPLATE, n, False)
    frames = PyBytes_FromStringAndSize(NULL, n * (4 + <size_t>page_size))
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(frames)
    with nogil:
        file_crc = _fill_frames(out, &data[0] if n else NULL, pg.data.as_uints, sums.data.as_ulonglongs,
                                n, page_size, file_crc)
    return frames, file_crc, sums


def encode_pages_into(unsigned char[::1] out, const unsigned char[::1] data, pgnos, uint32_t page_size,
                     uint64_t file_crc, uint64_t op):
    """encode_pages() writing the frames into `out` (reused by the caller, so no allocation).

    Returns (bytes written, new file CRC, array('Q') of page checksums).
    """
    cdef size_t n = len(pgnos)
    cdef array pg = _pgno_array(pgnos, n, data, page_size)
    if <size_t>out.shape[0] < n * (4 + <size_t>page_size):
        raise ValueError("output buffer too small")
    cdef array sums = clone(_UINT64_TEMPLATE, n, False)
    with nogil:
        file_crc = _fill_frames(&out[0] if n else NULL, &data[0] if n else NULL, pg.data.as_uints,
                                sums.data.as_ulonglongs, n, page_size, file_crc)
    return n * (4 + <size_t>page_size), file_crc, sums


def check_pgnos(pgnos, uint32_t last, uint32_t commit, uint32_t lock, bint snapshot):
    """Page-number rules of an LTX file, for pages following page `last`.

    Pages ascend, none is above `commit` or the lock page, and a snapshot has every page from 1
    except the lock page. Returns the new last page; raises ValueError naming the first bad page.
    """
    cdef size_t i, n = len(pgnos)
    cdef uint32_t p, expected
    for i in range(n):
        p = pgnos[i]
        if p <= last:
            raise ValueError(f"page {p} out of order after page {last}")
        if p > commit:
            raise ValueError(f"page {p} is above the commit size {commit}")
        if p == lock:
            raise ValueError(f"page {p} is the lock page")
        if snapshot:
            expected = last + 2 if last + 1 == lock else last + 1
            if p != expected:
                raise ValueError(f"snapshot is not contiguous: page {p} follows {last}")
        last = p
    return last


def end_frames(uint64_t file_crc):
    """The zero page header that ends the page block, and the file CRC after it."""
    return b"\0\0\0\0", litefs_crc64_update(file_crc, ZERO4, 4)


def decode_frames(const unsigned char[::1] buf, size_t pos, uint32_t page_size, uint64_t file_crc, uint64_t op):
    """Parse the whole page frames in buf from pos, up to and including a zero terminator.

    Returns (pgnos, offsets, checksums, file_crc, pos, ended): page i's bytes are
    buf[offsets[i]:offsets[i] + page_size]; pos is where parsing stopped (a partial frame is
    left for the next call); ended is True once the zero page header was consumed.
    """
    cdef size_t n = buf.shape[0], frame_size = 4 + <size_t>page_size
    cdef size_t cap = (n - pos) // frame_size + 1 if n > pos else 1
    cdef array pg = clone(_UINT32_TEMPLATE, cap, False)
    cdef array offs = clone(_UINT64_TEMPLATE, cap, False)
    cdef array sums = clone(_UINT64_TEMPLATE, cap, False)
    cdef size_t count = 0
    cdef bint ended = False
    litefs_crc64_prepare_frame(page_size)
    cdef uint32_t p
    cdef uint64_t c
    with nogil:
        while n - pos >= 4:
            p = (<uint32_t>buf[pos] << 24) | (<uint32_t>buf[pos + 1] << 16) | (<uint32_t>buf[pos + 2] << 8) | buf[pos + 3]
            if p == 0:
                file_crc = litefs_crc64_update(file_crc, &buf[pos], 4)
                pos += 4
                ended = True
                break
            if n - pos < frame_size:
                break
            c = litefs_crc64_update(0, &buf[pos], frame_size)
            file_crc = litefs_crc64_combine_frame(file_crc, c, page_size)
            pg.data.as_uints[count] = p
            offs.data.as_ulonglongs[count] = pos + 4
            sums.data.as_ulonglongs[count] = LITEFS_CHECKSUM_FLAG | c
            count += 1
            pos += frame_size
    del pg[count:]
    del offs[count:]
    del sums[count:]
    return pg, offs, sums, file_crc, pos, ended
