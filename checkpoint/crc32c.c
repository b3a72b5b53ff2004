/* crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
 * checkpoint blocks.
 *
 * Two implementations with one result: the SSE4.2 crc32 instruction (8 bytes per
 * instruction, chosen at run time when the CPU has it) and portable slice-by-8 tables
 * (built once under pthread_once). zinc_crc32c(crc, p, n) continues a running crc, so
 * crc32c(A||B) == zinc_crc32c(zinc_crc32c(0, A), B).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "ckpt_int.h"

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define CRC_HAVE_X86 1
#endif

#define CRC_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_use_hw;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#ifdef CRC_HAVE_X86
    __builtin_cpu_init();
    crc_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* Slice-by-8 over the inverted crc c. */
static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c; /* little-endian hosts only, like the rest of zinc's on-disk formats */
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

#ifdef CRC_HAVE_X86
/* The crc32 instruction over the inverted crc c; three independent streams would be
 * faster still, but one stream (~8 GB/s) already outruns the disks it guards. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8(c, *p++);
        n--;
    }
    uint64_t c64 = c;
    while (n >= 32) {
        uint64_t v[4];
        memcpy(v, p, 32);
        c64 = _mm_crc32_u64(c64, v[0]);
        c64 = _mm_crc32_u64(c64, v[1]);
        c64 = _mm_crc32_u64(c64, v[2]);
        c64 = _mm_crc32_u64(c64, v[3]);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = _mm_crc32_u64(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c;
}
#endif

uint32_t zinc_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    uint32_t c = ~crc;
#ifdef CRC_HAVE_X86
    if (crc_use_hw) return ~crc_hw(c, data, n);
#endif
    return ~crc_sw(c, data, n);
}

uint32_t ckpt_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_sw(~crc, data, n);
}
