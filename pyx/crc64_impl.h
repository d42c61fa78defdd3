/* CRC-64/GO-ISO (poly 0x1B reflected, init and xorout all ones): the checksum of LTX files.
 *
 * Values passed in and out are "finished" CRCs, as Go's hash/crc64 returns them: a new CRC
 * starts from 0 and litefs_crc64_update(litefs_crc64_update(0, a), b) == crc(a || b).
 * Every function is pure and thread-safe once litefs_crc64_init() has run (it is idempotent and
 * is called from each extension's module init, under the GIL).
 */
#ifndef LITEFS_CRC64_IMPL_H
#define LITEFS_CRC64_IMPL_H

#include <stddef.h>
#include <stdint.h>

#define LITEFS_CHECKSUM_FLAG 0x8000000000000000ULL

void litefs_crc64_init(void);
int litefs_crc64_have_clmul(void);
uint64_t litefs_crc64_update(uint64_t crc, const unsigned char *buf, size_t len);
/* x^(8*len) mod P, the operator that litefs_crc64_combine_op applies. */
uint64_t litefs_crc64_shift_op(uint64_t len);
/* crc(A || B) from crc(A), crc(B) and op = litefs_crc64_shift_op(len(B)). */
uint64_t litefs_crc64_combine_op(uint64_t crc_a, uint64_t crc_b, uint64_t op);
/* Combine for the LTX page frame of a page size (4 + page_size bytes), by table lookup once
 * litefs_crc64_prepare_frame(page_size) has run (it must be called with the GIL held; returns
 * -1 for a size that is not a power of two from 512 to 65536). */
int litefs_crc64_prepare_frame(size_t page_size);
uint64_t litefs_crc64_combine_frame(uint64_t crc_a, uint64_t crc_b, size_t page_size);
/* LTX page checksum: FLAG | crc(u32be(pgno) || page). */
uint64_t litefs_page_checksum(uint32_t pgno, const unsigned char *page, size_t page_size);

#endif
