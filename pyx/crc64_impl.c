/* CRC-64/GO-ISO kernels: slicing-by-8 everywhere, PCLMULQDQ folding where the CPU has it.
 *
 * The folding path keeps four 128-bit lanes and folds them forward 64 bytes at a time; at the
 * end the lanes are folded into one 16-byte remainder that is congruent to the message, and
 * that remainder plus the tail bytes go through the table loop. This avoids a Barrett
 * reduction and its constants. All folding constants are x^e mod P, computed at init with the
 * same GF(2) multiply that crc combine uses, so there are no magic numbers to get wrong.
 *
 * Polynomials are held "reflected", as the CRC register holds them: bit 63 is x^0.
 */
#include "crc64_impl.h"

#include <stdlib.h>
#include <string.h>

#define POLY 0xD800000000000000ULL /* x^64 + x^4 + x^3 + x + 1, reflected */

static uint64_t table[8][256];
static uint64_t x2n_table[64];
static int initialized;
static int use_clmul;

/* a * b mod P, both reflected. */
static uint64_t multmodp(uint64_t a, uint64_t b)
{
    uint64_t m = 1ULL << 63, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

/* x^(n * 2^k) mod P. */
static uint64_t x2nmodp(uint64_t n, unsigned k)
{
    uint64_t p = 1ULL << 63; /* x^0 */
    while (n) {
        if (n & 1)
            p = multmodp(x2n_table[k & 63], p);
        n >>= 1;
        k++;
    }
    return p;
}

static uint64_t raw_update(uint64_t reg, const unsigned char *buf, size_t len)
{
    while (len && ((uintptr_t)buf & 7)) {
        reg = table[0][(reg ^ *buf++) & 0xff] ^ (reg >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, buf, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
#endif
        reg ^= v;
        reg = table[7][reg & 0xff] ^ table[6][(reg >> 8) & 0xff] ^
              table[5][(reg >> 16) & 0xff] ^ table[4][(reg >> 24) & 0xff] ^
              table[3][(reg >> 32) & 0xff] ^ table[2][(reg >> 40) & 0xff] ^
              table[1][(reg >> 48) & 0xff] ^ table[0][reg >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--)
        reg = table[0][(reg ^ *buf++) & 0xff] ^ (reg >> 8);
    return reg;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_CLMUL_PATH 1

/* Folding by D bits: the low half (higher-degree coefficients) is multiplied by x^(D+63),
 * the high half by x^(D-1); the extra -1 absorbs the one-bit shift of a reflected clmul. */
static uint64_t fold_lo[4], fold_hi[4]; /* D = 128, 256, 384, 512 */

__attribute__((target("pclmul,sse4.1")))
static inline __m128i fold(__m128i x, __m128i k)
{
    return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

__attribute__((target("pclmul,sse4.1")))
static uint64_t clmul_update(uint64_t reg, const unsigned char *buf, size_t len)
{
    /* Caller guarantees len >= 64. */
    const __m128i k128 = _mm_set_epi64x((long long)fold_hi[0], (long long)fold_lo[0]);
    const __m128i k512 = _mm_set_epi64x((long long)fold_hi[3], (long long)fold_lo[3]);
    __m128i x0 = _mm_loadu_si128((const __m128i *)(buf + 0));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(buf + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(buf + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(buf + 48));
    unsigned char rem[16];

    x0 = _mm_xor_si128(x0, _mm_cvtsi64_si128((long long)reg));
    buf += 64;
    len -= 64;
    while (len >= 64) {
        x0 = _mm_xor_si128(fold(x0, k512), _mm_loadu_si128((const __m128i *)(buf + 0)));
        x1 = _mm_xor_si128(fold(x1, k512), _mm_loadu_si128((const __m128i *)(buf + 16)));
        x2 = _mm_xor_si128(fold(x2, k512), _mm_loadu_si128((const __m128i *)(buf + 32)));
        x3 = _mm_xor_si128(fold(x3, k512), _mm_loadu_si128((const __m128i *)(buf + 48)));
        buf += 64;
        len -= 64;
    }
    x0 = _mm_xor_si128(
        _mm_xor_si128(fold(x0, _mm_set_epi64x((long long)fold_hi[2], (long long)fold_lo[2])),
                      fold(x1, _mm_set_epi64x((long long)fold_hi[1], (long long)fold_lo[1]))),
        _mm_xor_si128(fold(x2, k128), x3));
    while (len >= 16) {
        x0 = _mm_xor_si128(fold(x0, k128), _mm_loadu_si128((const __m128i *)buf));
        buf += 16;
        len -= 16;
    }
    _mm_storeu_si128((__m128i *)rem, x0);
    return raw_update(raw_update(0, rem, 16), buf, len);
}
#endif

void litefs_crc64_init(void)
{
    if (initialized)
        return;
    for (unsigned n = 0; n < 256; n++) {
        uint64_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (unsigned n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
    uint64_t p = 1ULL << 62; /* x^1 */
    for (int n = 0; n < 64; n++) {
        x2n_table[n] = p;
        p = multmodp(p, p);
    }
#ifdef HAVE_CLMUL_PATH
    for (int i = 0; i < 4; i++) {
        uint64_t d = 128ULL * (uint64_t)(i + 1);
        fold_lo[i] = x2nmodp(d + 63, 0);
        fold_hi[i] = x2nmodp(d - 1, 0);
    }
    __builtin_cpu_init();
    use_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    initialized = 1;
}

int litefs_crc64_have_clmul(void) { return use_clmul; }

uint64_t litefs_crc64_update(uint64_t crc, const unsigned char *buf, size_t len)
{
    uint64_t reg = ~crc;
#ifdef HAVE_CLMUL_PATH
    if (use_clmul && len >= 128)
        return ~clmul_update(reg, buf, len);
#endif
    return ~raw_update(reg, buf, len);
}

uint64_t litefs_crc64_shift_op(uint64_t len) { return x2nmodp(len, 3); }

uint64_t litefs_crc64_combine_op(uint64_t crc_a, uint64_t crc_b, uint64_t op)
{
    return multmodp(op, crc_a) ^ crc_b;
}

/* Multiplying by a fixed operator is linear, so for the frame lengths of the eight page sizes
 * (4 + 512 .. 4 + 65536) the multiply becomes eight table lookups, like a slicing CRC. Tables
 * are built on first use, by a caller holding the GIL (see litefs_crc64_prepare_frame). */
static uint64_t (*frame_tables[8])[256];

static int frame_slot(size_t page_size)
{
    for (int i = 0; i < 8; i++)
        if (page_size == (size_t)512 << i)
            return i;
    return -1;
}

int litefs_crc64_prepare_frame(size_t page_size)
{
    int slot = frame_slot(page_size);
    if (slot < 0)
        return -1;
    if (frame_tables[slot])
        return 0;
    uint64_t (*t)[256] = malloc(sizeof(uint64_t[8][256]));
    if (!t)
        return -1;
    uint64_t op = litefs_crc64_shift_op(4 + page_size);
    for (int k = 0; k < 8; k++)
        for (unsigned b = 0; b < 256; b++)
            t[k][b] = multmodp(op, (uint64_t)b << (8 * k));
    frame_tables[slot] = t;
    return 0;
}

uint64_t litefs_crc64_combine_frame(uint64_t crc_a, uint64_t crc_b, size_t page_size)
{
    int slot = frame_slot(page_size);
    uint64_t (*t)[256] = slot >= 0 ? frame_tables[slot] : NULL;
    if (!t)
        return litefs_crc64_combine_op(crc_a, crc_b, litefs_crc64_shift_op(4 + page_size));
    return t[0][crc_a & 0xff] ^ t[1][(crc_a >> 8) & 0xff] ^ t[2][(crc_a >> 16) & 0xff] ^
           t[3][(crc_a >> 24) & 0xff] ^ t[4][(crc_a >> 32) & 0xff] ^ t[5][(crc_a >> 40) & 0xff] ^
           t[6][(crc_a >> 48) & 0xff] ^ t[7][crc_a >> 56] ^ crc_b;
}

uint64_t litefs_page_checksum(uint32_t pgno, const unsigned char *page, size_t page_size)
{
    unsigned char be[4] = {(unsigned char)(pgno >> 24), (unsigned char)(pgno >> 16),
                           (unsigned char)(pgno >> 8), (unsigned char)pgno};
    return LITEFS_CHECKSUM_FLAG | litefs_crc64_update(litefs_crc64_update(0, be, 4), page, page_size);
}
