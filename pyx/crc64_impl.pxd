from libc.stdint cimport uint32_t, uint64_t

cdef extern from "crc64_impl.h" nogil:
    uint64_t LITEFS_CHECKSUM_FLAG
    void litefs_crc64_init()
    int litefs_crc64_have_clmul()
    uint64_t litefs_crc64_update(uint64_t crc, const unsigned char *buf, size_t length)
    uint64_t litefs_crc64_shift_op(uint64_t length)
    uint64_t litefs_crc64_combine_op(uint64_t crc_a, uint64_t crc_b, uint64_t op)
    uint64_t litefs_page_checksum(uint32_t pgno, const unsigned char *page, size_t page_size)
    int litefs_crc64_prepare_frame(size_t page_size)
    uint64_t litefs_crc64_combine_frame(uint64_t crc_a, uint64_t crc_b, size_t page_size)
