/* gemm_bf16.c - c(m,n) = alpha op(a) op(b) + beta c with bf16 products and
 * fp32 accumulation: the products of the cpu-bf16 table. Debian's OpenBLAS
 * is built without BUILD_BFLOAT16 (no cblas_sbgemm), so zinc has its own.
 *
 * Structure (BLIS-like). C is cut into tiles of at most MC_MAX x NC_MAX,
 * chosen per call to balance the threads (gemm_plan_make); OpenMP deals
 * the tiles (dynamic). A tile walks k in blocks of KC. Per block it packs
 * its columns of op(b) into panels of NR = 48 columns (kept in L2) and its
 * rows of op(a) into panels of MR = 8 rows; for each A panel (in L1) the
 * 8 x 48 microkernel sweeps the B panels left to right, so the epilogue
 * walks 8 rows of C in order. An operand that several tiles would pack
 * again (op(a) when there are several tiles along n, op(b) along m) is
 * packed once instead, by all threads, into a shared copy.
 *
 * Packing rounds an f32 operand to bf16 (nearest even, bitwise as
 * cpu_convert) and lays k out in pairs, the layout of vdpbf16ps: dword
 * (pair p, row w) holds bf16 (k = 2p) in its low half and bf16 (k = 2p+1)
 * in its high half. An odd k's last pair is padded with zeros on both
 * sides, rows and columns past m, n with zeros. The microkernel keeps 24
 * zmm accumulators; per pair it loads 3 B vectors and broadcasts 8 A pairs
 * (24 vdpbf16ps).
 *
 * Numerics: every output element is s = one fp32 chain over its k pairs in
 * order, starting from 0: s += a_hi b_hi, then s += a_lo b_lo, each product
 * exact (bf16 x bf16 fits in fp32) and each sum rounded to nearest even
 * (vdpbf16ps's order). A tile keeps s in an fp32 buffer between k blocks.
 * The chain does not depend on the tiling, so results are bitwise the same
 * for any thread count, run to run. An epilogue then receives s per 8 x 48
 * block: cpu_gemm_bf16's stores alpha s + beta c (c not read when beta is
 * 0); the cpu-bf16 table's add a bias, take GELU, round to bf16.
 *
 * Two implementations of the pack and the microkernel: AVX-512 with
 * AVX512_BF16 (intrinsics in functions with target attributes, so the file
 * builds whatever -march is; chosen at run time from cpuid), and portable
 * C (fmaf of the widened values, hi then lo). vdpbf16ps treats bf16
 * subnormal inputs as zero and flushes subnormal results (DAZ, FTZ);
 * otherwise the two give the same chain (bitwise on this project's Zen 4,
 * whose vdpbf16ps rounds after each product as documented). */
#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GEMM_X86 1
#endif

#include "cpu_int.h"

enum {
    MR = 8,         /* microkernel rows (one broadcast pair each) */
    NR = 48,        /* microkernel columns: 3 zmm of 16 fp32 */
    KC = 384,       /* k block (even: pairs never straddle blocks) */
    KP = KC / 2,    /* pairs per k block */
    MC_MAX = 256,   /* tile rows */
    NC_MAX = 384,   /* tile columns: the tile's B panels (KC x NC bf16, 288 KiB) stay in L2 */
    ACC_MAX = 256 * 384, /* floats of a tile's sum buffer when k > KC (384 KiB) */
};
#define PREPACK_MAX ((size_t)64 << 20) /* bytes of a shared packed copy of op(a) or op(b) */
#define GEMM_PAR_MIN 2.0e6             /* multiply-adds below which one thread runs */

/* One operand as stored. Its elements are x(r, kk), r the panel index (i
 * of a, j of b), kk in [0, k). pc: pairs contiguous (x(r, kk) at
 * p[r ld + kk], a not transposed or b transposed), else at p[kk ld + r]. */
typedef struct gemm_opnd {
    const void *p;
    zinc_dtype dt; /* ZINC_DTYPE_F32 or ZINC_DTYPE_BF16 */
    int ld;
    int pc;
    int nr; /* extent of r */
    int k;
} gemm_opnd;

/* The packing and the microkernel of one implementation.
 * pack: panels of W (MR or NR) rows r0 .. r0 + nr - 1 (rows past the
 *   operand's nr zero; ceil(nr / W) panels), k elements k0 .. k0 + kc - 1,
 *   into dst: panel q, pair p, row w at dst[(q np + p) W + w], np = ceil(kc / 2).
 * kern: acc(MR, NR) (rows of NR floats) = (first ? 0 : acc) + the products
 *   of np pairs of the A panel ap and the B panel bp. */
typedef struct gemm_impl {
    void (*pack)(uint32_t *dst, int W, const gemm_opnd *o, int r0, int nr, int k0, int kc);
    void (*kern)(int np, const uint32_t *ap, const uint32_t *bp, float *acc, int first);
} gemm_impl;

/* ------------------------------------------------------------ portable C */

static inline uint16_t opnd_bf16(const gemm_opnd *o, int r, int kk)
{
    const size_t off = o->pc ? (size_t)r * o->ld + kk : (size_t)kk * o->ld + r;
    if (o->dt == ZINC_DTYPE_BF16)
        return ((const uint16_t *)o->p)[off];
    return zinc_f32_to_bf16(((const float *)o->p)[off]);
}

static void pack_c(uint32_t *dst, int W, const gemm_opnd *o, int r0, int nr, int k0, int kc)
{
    const int np = (kc + 1) / 2, npan = (nr + W - 1) / W;
    const int rend = r0 + nr < o->nr ? r0 + nr : o->nr;
    for (int q = 0; q < npan; q++)
        for (int p = 0; p < np; p++) {
            uint32_t *d = dst + ((size_t)q * np + p) * W;
            const int kk = k0 + 2 * p;
            for (int w = 0; w < W; w++) {
                const int r = r0 + q * W + w;
                uint32_t v = 0;
                if (r < rend) {
                    v = opnd_bf16(o, r, kk);
                    if (2 * p + 1 < kc)
                        v |= (uint32_t)opnd_bf16(o, r, kk + 1) << 16;
                }
                d[w] = v;
            }
        }
}

static inline float bf_lo(uint32_t v)
{
    return zinc_bf16_to_f32((uint16_t)(v & 0xffffu));
}

static inline float bf_hi(uint32_t v)
{
    return zinc_bf16_to_f32((uint16_t)(v >> 16));
}

static void kern_c(int np, const uint32_t *restrict ap, const uint32_t *restrict bp,
                   float *restrict acc, int first)
{
    if (first)
        memset(acc, 0, MR * NR * sizeof *acc);
    for (int p = 0; p < np; p++, ap += MR, bp += NR)
        for (int i = 0; i < MR; i++) {
            const float ah = bf_hi(ap[i]), al = bf_lo(ap[i]);
            float *restrict c = acc + i * NR;
            for (int j = 0; j < NR; j++)
                c[j] = fmaf(al, bf_lo(bp[j]), fmaf(ah, bf_hi(bp[j]), c[j]));
        }
}

static const gemm_impl impl_c = {pack_c, kern_c};

/* ------------------------------------------------------------ AVX512_BF16 */

#ifdef GEMM_X86
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* Each lane of x rounded to bf16 as zinc_f32_to_bf16 (nearest even, NaN
 * quieted) in its upper 16 bits; the lower 16 bits are junk. */
TGT static inline __m512i rne_hi(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
    return _mm512_mask_or_epi32(_mm512_add_epi32(u, bias), nan, u, _mm512_set1_epi32(0x400000));
}

/* Word w of the result: word 2w + 1 of (lo, hi), the upper halves in order. */
#define ODD_WORDS                                                                           \
    _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, \
                     27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1)

/* 32 floats (lo: 0 .. 15, hi: 16 .. 31) as 32 bf16 words in order, each
 * bitwise zinc_f32_to_bf16 (checked for all 2^32 inputs). vcvtne2ps2bf16
 * rounds the same way except that it flushes fp32 subnormals to zero;
 * vectors holding one (rare) take the integer rounding. */
TGT static inline __m512i cvt_bf16x32(__m512 lo, __m512 hi)
{
    __m512i r = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    const __mmask16 dl = _mm512_fpclass_ps_mask(lo, 0x20), dh = _mm512_fpclass_ps_mask(hi, 0x20);
    if (__builtin_expect((dl | dh) != 0, 0)) {
        const __m512i x = _mm512_permutex2var_epi16(rne_hi(lo), ODD_WORDS, rne_hi(hi));
        r = _mm512_mask_blend_epi16(((__mmask32)dh << 16) | dl, r, x);
    }
    return r;
}

static inline __mmask16 mask16(int n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

static inline __mmask32 mask32(int n)
{
    return n >= 32 ? (__mmask32)0xffffffffu : n <= 0 ? (__mmask32)0 : (__mmask32)((1u << n) - 1);
}

/* Stores the 16 dwords of v as pair p of rows g .. g + 15 of the packed
 * panels (W 48: one panel; W 8: two, the second only if it exists). */
TGT static inline void store16(uint32_t *dst, const int W, int np, int npan, int g, int p,
                               __m512i v)
{
    const int q = g / W;
    if (W == 8) {
        _mm256_store_si256((__m256i *)(dst + ((size_t)q * np + p) * 8), _mm512_castsi512_si256(v));
        if (q + 1 < npan)
            _mm256_store_si256((__m256i *)(dst + ((size_t)(q + 1) * np + p) * 8),
                               _mm512_extracti64x4_epi64(v, 1));
    } else {
        _mm512_store_si512(dst + ((size_t)q * np + p) * W + g % W, v);
    }
}

/* Interleave layout (x(r, kk) at p[kk ld + r]): pair p takes 16 rows r
 * from stored rows kk and kk + 1, one vector each, interleaving words. */
TGT static inline void pack_il(uint32_t *dst, const int W, const gemm_opnd *o, int r0, int nr,
                               int k0, int kc)
{
    const int np = (kc + 1) / 2, npan = (nr + W - 1) / W;
    const int nvalid = (r0 + nr < o->nr ? r0 + nr : o->nr) - r0;
    /* words (a0 .. a15, b0 .. b15) -> (a0, b0, a1, b1, ...) */
    const __m512i il = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);
    for (int p = 0; p < np; p++) {
        const size_t row0 = (size_t)(k0 + 2 * p) * o->ld + r0;
        const int two = 2 * p + 1 < kc;
        for (int g = 0; g < npan * W; g += 16) {
            const __mmask16 mk = mask16(nvalid - g);
            __m512i v;
            if (o->dt == ZINC_DTYPE_F32) {
                const float *s = (const float *)o->p + row0 + g;
                const __m512 x0 = _mm512_maskz_loadu_ps(mk, s);
                const __m512 x1 = two ? _mm512_maskz_loadu_ps(mk, s + o->ld) : _mm512_setzero_ps();
                v = cvt_bf16x32(x0, x1);
            } else {
                const uint16_t *s = (const uint16_t *)o->p + row0 + g;
                const __m256i y0 = _mm256_maskz_loadu_epi16(mk, s);
                const __m256i y1 = two ? _mm256_maskz_loadu_epi16(mk, s + o->ld)
                                       : _mm256_setzero_si256();
                v = _mm512_inserti64x4(_mm512_castsi256_si512(y0), y1, 1);
            }
            store16(dst, W, np, npan, g, p, _mm512_permutexvar_epi16(il, v));
        }
    }
}

/* v[q].dword[t] = in[t].dword[q] (16 x 16 dwords). */
TGT static inline void transpose16(const __m512i in[16], __m512i v[16])
{
    __m512i t[16], s[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(in[i], in[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(in[i], in[i + 1]);
    }
    /* rows 4G .. 4G + 3: s[4G + c] holds, in lane L, column 4L + c */
    for (int G = 0; G < 4; G++) {
        const __m512i *x = t + 4 * G;
        s[4 * G + 0] = _mm512_unpacklo_epi64(x[0], x[2]);
        s[4 * G + 1] = _mm512_unpackhi_epi64(x[0], x[2]);
        s[4 * G + 2] = _mm512_unpacklo_epi64(x[1], x[3]);
        s[4 * G + 3] = _mm512_unpackhi_epi64(x[1], x[3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i x0 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0x44);
        const __m512i x1 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0xee);
        const __m512i x2 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0x44);
        const __m512i x3 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0xee);
        v[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xdd);
        v[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xdd);
    }
}

/* Pairs-contiguous layout (x(r, kk) at p[r ld + kk]): per group of 16
 * rows, each row is read front to back (one stream the hardware prefetcher
 * follows; with kc = ld the group is one contiguous run) into vectors of
 * 16 pairs kept in L1, then each 16 x 16 block of them is transposed. */
TGT static inline void pack_tr(uint32_t *dst, const int W, const gemm_opnd *o, int r0, int nr,
                               int k0, int kc)
{
    enum { PF_ROWS = 4 };
    const int np = (kc + 1) / 2, npan = (nr + W - 1) / W, nch = (np + 15) / 16;
    const int esz = o->dt == ZINC_DTYPE_F32 ? 4 : 2;
    const int nvalid = (r0 + nr < o->nr ? r0 + nr : o->nr) - r0;
    __m512i tmp[KP / 16][16]; /* chunk, row: 16 pairs */
    for (int g = 0; g < npan * W; g += 16) {
        const int nrow = nvalid - g < 16 ? nvalid - g : 16;
        for (int t = 0; t < 16; t++) {
            if (t >= nrow) {
                for (int c = 0; c < nch; c++)
                    tmp[c][t] = _mm512_setzero_si512();
                continue;
            }
            const size_t off = (size_t)(r0 + g + t) * o->ld + k0;
            if (g + t + PF_ROWS < nvalid) { /* rows are short runs: fetch a few ahead */
                const char *f = (const char *)o->p + (off + (size_t)PF_ROWS * o->ld) * esz;
                for (int b = 0; b < kc * esz; b += 64)
                    _mm_prefetch(f + b, _MM_HINT_T0);
            }
            if (o->dt == ZINC_DTYPE_F32) {
                const float *s = (const float *)o->p + off;
                for (int c = 0; c < nch; c++) {
                    const int nk = kc - 32 * c; /* k elements left from this chunk */
                    const float *sc = s + 32 * c;
                    tmp[c][t] = cvt_bf16x32(_mm512_maskz_loadu_ps(mask16(nk), sc),
                                            _mm512_maskz_loadu_ps(mask16(nk - 16), sc + 16));
                }
            } else {
                const uint16_t *s = (const uint16_t *)o->p + off;
                for (int c = 0; c < nch; c++)
                    tmp[c][t] = _mm512_maskz_loadu_epi16(mask32(kc - 32 * c), s + 32 * c);
            }
        }
        for (int c = 0; c < nch; c++) {
            __m512i v[16];
            transpose16(tmp[c], v);
            const int nq = np - 16 * c < 16 ? np - 16 * c : 16;
            for (int q = 0; q < nq; q++)
                store16(dst, W, np, npan, g, 16 * c + q, v[q]);
        }
    }
}

/* W is MR or NR: each gets its own copy with W a constant. */
TGT static void pack_avx(uint32_t *dst, int W, const gemm_opnd *o, int r0, int nr, int k0, int kc)
{
    if (o->pc && W == MR)
        pack_tr(dst, MR, o, r0, nr, k0, kc);
    else if (o->pc)
        pack_tr(dst, NR, o, r0, nr, k0, kc);
    else if (W == MR)
        pack_il(dst, MR, o, r0, nr, k0, kc);
    else
        pack_il(dst, NR, o, r0, nr, k0, kc);
}

/* acc(8, 48) (+)= A panel x B panel: 24 accumulators; per pair 3 B vectors
 * and 8 broadcast A pairs. */
TGT static void kern_avx(int np, const uint32_t *restrict ap, const uint32_t *restrict bp,
                         float *restrict acc, int first)
{
#define ACC_DECL(i)                                                                         \
    __m512 c##i##0 = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + (i) * NR);         \
    __m512 c##i##1 = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + (i) * NR + 16);    \
    __m512 c##i##2 = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + (i) * NR + 32);
    ACC_DECL(0) ACC_DECL(1) ACC_DECL(2) ACC_DECL(3)
    ACC_DECL(4) ACC_DECL(5) ACC_DECL(6) ACC_DECL(7)
#undef ACC_DECL
    for (int p = 0; p < np; p++, ap += MR, bp += NR) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(bp);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(bp + 16);
        const __m512bh b2 = (__m512bh)_mm512_load_si512(bp + 32);
#define ROW(i)                                                                              \
    {                                                                                       \
        const __m512bh a = (__m512bh)_mm512_set1_epi32((int)ap[i]);                        \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, a, b0);                                         \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, a, b1);                                         \
        c##i##2 = _mm512_dpbf16_ps(c##i##2, a, b2);                                         \
    }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
    }
#define ACC_STORE(i)                                                                        \
    _mm512_store_ps(acc + (i) * NR, c##i##0);                                               \
    _mm512_store_ps(acc + (i) * NR + 16, c##i##1);                                          \
    _mm512_store_ps(acc + (i) * NR + 32, c##i##2);
    ACC_STORE(0) ACC_STORE(1) ACC_STORE(2) ACC_STORE(3)
    ACC_STORE(4) ACC_STORE(5) ACC_STORE(6) ACC_STORE(7)
#undef ACC_STORE
}

static const gemm_impl impl_avx = {pack_avx, kern_avx};
#undef TGT
#endif /* GEMM_X86 */

/* ------------------------------------------------------------ dispatch */

static atomic_int force_fallback; /* test hook: cpu_gemm_bf16_force_fallback */

/* 1 when the CPU runs AVX512_BF16 and the OS saves zmm state (libgcc's
 * cpuid check counts the AVX-512 features only when XCR0 enables them).
 * Cached (a cached setting of the machine: any thread may fill it in). */
static int cpu_has_bf16(void)
{
#ifdef GEMM_X86
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512bf16");
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}

int cpu_gemm_bf16_native(void)
{
    return !atomic_load_explicit(&force_fallback, memory_order_relaxed) && cpu_has_bf16();
}

void cpu_gemm_bf16_force_fallback(int on)
{
    atomic_store_explicit(&force_fallback, on != 0, memory_order_relaxed);
}

static const gemm_impl *gemm_impl_get(void)
{
#ifdef GEMM_X86
    if (cpu_gemm_bf16_native())
        return &impl_avx;
#endif
    return &impl_c;
}

/* ------------------------------------------------------------ driver */

/* The tiling of one product: tiles of tm x tn microtiles. */
typedef struct gemm_plan {
    int m, n, k;
    int nbm, nbn;  /* microtiles along m, n */
    int tm, tn;    /* microtiles per tile */
    int gm, gn;    /* tiles along m, n */
    int nth;       /* threads */
    int nkb;       /* k blocks (at least 1) */
    int pre_a;     /* op(a) packed once for all tiles */
    int pre_b;     /* op(b) packed once for all tiles */
    size_t a_words, b_words, acc_floats, prea_words, preb_words; /* buffer sizes */
} gemm_plan;

/* Cycles per element (per k) of packing a panel from an operand of
 * `bytes` bytes, or from its packed copy (esize 2, sequential): cheap from
 * the caches; from memory, a sequential read costs its bytes, and short
 * runs of far-apart rows (a k block of rows longer than KC, the layout
 * with pairs contiguous) cost the latency the prefetchers do not hide.
 * Rough constants from timings on Zen 4; they only steer the tiling. */
static double pack_cost(size_t bytes, int esize, int strided)
{
    if (bytes <= ((size_t)4 << 20))
        return 0.05 * esize + 0.1;
    return (strided ? 1.0 : 0.15 * esize) + 0.1;
}

/* Chooses the tiling that minimizes a model of the time: the tiles dealt
 * in rounds of nth, plus a quarter of the biggest tile of slack for uneven
 * progress. A tile costs its multiply-adds (32 a cycle) and its panels of
 * op(a) and op(b) (pack_cost): packed by the tile itself, or read from a
 * copy packed once, by all threads, before the tiles run. A copy pays for
 * an operand that several tiles need (op(a) with several tiles along n,
 * op(b) along m) when it is small (it stays in cache) or would be packed
 * again by many tiles. Any tiling gives the same results; this only
 * balances speed. */
static void gemm_plan_make(gemm_plan *pl, const gemm_opnd *A, const gemm_opnd *B, int m, int n,
                           int k, int nth)
{
    pl->m = m, pl->n = n, pl->k = k;
    pl->nbm = (m + MR - 1) / MR, pl->nbn = (n + NR - 1) / NR;
    pl->nkb = k > 0 ? (k + KC - 1) / KC : 1;
    const int multi = pl->nkb > 1;
    const int tm_max = MC_MAX / MR, tn_cap = NC_MAX / NR;
    const int gm0 = (pl->nbm + tm_max - 1) / tm_max;
    const size_t prea_bytes = (size_t)pl->nkb * KP * pl->nbm * MR * sizeof(uint32_t);
    const size_t preb_bytes = (size_t)pl->nkb * KP * pl->nbn * NR * sizeof(uint32_t);
    const int esa = (int)zinc_dtype_size(A->dt), esb = (int)zinc_dtype_size(B->dt);
    /* per element: a tile packing it; reading the copy; making the copy */
    const double own_a = pack_cost((size_t)m * k * esa, esa, A->pc && A->ld > KC);
    const double own_b = pack_cost((size_t)n * k * esb, esb, B->pc && B->ld > KC);
    const double get_a = pack_cost(prea_bytes, 2, 0) - 0.1;
    const double get_b = pack_cost(preb_bytes, 2, 0) - 0.1;
    const double cpy_a = own_a + get_a, cpy_b = own_b + get_b;
    double best = -1.0;
    for (int gm = gm0; gm <= pl->nbm && gm <= gm0 + 2 * nth; gm++) {
        const int tm = (pl->nbm + gm - 1) / gm, gmr = (pl->nbm + tm - 1) / tm;
        int tn_max = multi ? ACC_MAX / (tm * MR * NR) : tn_cap;
        tn_max = tn_max < tn_cap ? tn_max : tn_cap;
        const int gn0 = (pl->nbn + tn_max - 1) / tn_max;
        for (int gn = gn0; gn <= pl->nbn && gn <= gn0 + 4 * nth; gn++) {
            const int tn = (pl->nbn + gn - 1) / gn, gnr = (pl->nbn + tn - 1) / tn;
            const int tiles = gmr * gnr, rounds = (tiles + nth - 1) / nth;
            for (int pv = 0; pv < 4; pv++) {
                const int pa = pv & 1, pb = pv >> 1;
                if ((pa && (gnr == 1 || prea_bytes > PREPACK_MAX)) ||
                    (pb && (gmr == 1 || preb_bytes > PREPACK_MAX)))
                    continue;
                const double ca = pa ? get_a : own_a, cb = pb ? get_b : own_b;
                /* all tiles (the last row and column of them may be
                 * narrower) and the biggest */
                const double work = (double)pl->nbm * pl->nbn * MR * NR / 32.0 +
                                    (double)gnr * pl->nbm * MR * ca +
                                    (double)gmr * pl->nbn * NR * cb;
                const double big = (double)tm * tn * MR * NR / 32.0 + tm * MR * ca + tn * NR * cb;
                const double cost = rounds * (work / tiles) + (nth > 1 ? 0.25 * big : 0.0) +
                                    ((pa ? pl->nbm * MR * cpy_a : 0.0) +
                                     (pb ? pl->nbn * NR * cpy_b : 0.0)) / nth;
                if (best < 0.0 || cost < best) {
                    best = cost;
                    pl->tm = tm, pl->tn = tn, pl->gm = gmr, pl->gn = gnr;
                    pl->pre_a = pa, pl->pre_b = pb;
                }
            }
        }
    }
    pl->nth = nth < pl->gm * pl->gn ? nth : pl->gm * pl->gn;
    const int kp = k < KC ? (k + 1) / 2 : KP;
    pl->a_words = pl->pre_a ? 0 : (size_t)pl->tm * MR * kp;
    pl->b_words = pl->pre_b ? 0 : (size_t)pl->tn * NR * kp;
    pl->acc_floats = (size_t)(multi ? pl->tm * pl->tn : 1) * MR * NR;
    pl->prea_words = pl->pre_a ? prea_bytes / sizeof(uint32_t) : 0;
    pl->preb_words = pl->pre_b ? preb_bytes / sizeof(uint32_t) : 0;
}

/* The calling thread's scratch (all threads' buffers of one product):
 * kept and grown, never shrunk, for the life of the thread, so products
 * do not fault in fresh pages per call. NULL when out of memory. */
static _Thread_local struct {
    void *p;
    size_t cap;
} gemm_pool;

static void *pool_get(size_t bytes)
{
    if (gemm_pool.cap < bytes || !gemm_pool.p) {
        free(gemm_pool.p);
        gemm_pool.p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        gemm_pool.cap = gemm_pool.p ? bytes : 0;
    }
    return gemm_pool.p;
}

static size_t up64(size_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

/* Offset of k block kb, panel q (of W rows, npan in all) in a shared
 * packed operand: blocks of KP pairs x all panels, a block's panels
 * consecutive, as pack lays them out. */
static size_t pre_off(const gemm_plan *pl, int W, int npan, int kb, int q)
{
    const int kc = kb + 1 < pl->nkb ? KC : pl->k - kb * KC;
    return (size_t)kb * KP * npan * W + (size_t)q * ((kc + 1) / 2) * W;
}

/* One tile (ti, tj) of tm x tn microtiles. Per k block: the tile's B
 * panels (packed here or taken from pre) stay in L2 while each A panel,
 * packed just before use, sweeps them from L1; an A panel's microtiles
 * run left to right, so the epilogue walks MR rows of C in order. */
static void gemm_tile(const gemm_impl *im, const gemm_plan *pl, const gemm_opnd *A,
                      const gemm_opnd *B, int ti, int tj, uint32_t *abuf, uint32_t *bbuf,
                      float *acc, const uint32_t *prea, const uint32_t *preb, cpu_gemm_epi epi,
                      void *ctx)
{
    const int i0 = ti * pl->tm * MR, j0 = tj * pl->tn * NR;
    const int mc = pl->m - i0 < pl->tm * MR ? pl->m - i0 : pl->tm * MR;
    const int nc = pl->n - j0 < pl->tn * NR ? pl->n - j0 : pl->tn * NR;
    const int nmr = (mc + MR - 1) / MR, nnr = (nc + NR - 1) / NR;
    const int multi = pl->nkb > 1;
    for (int kb = 0; kb < pl->nkb; kb++) {
        const int k0 = kb * KC, kc = pl->k - k0 < KC ? pl->k - k0 : KC;
        const int np = (kc + 1) / 2, last = kb + 1 == pl->nkb;
        const uint32_t *bblk = bbuf, *ablk = abuf;
        if (preb)
            bblk = preb + pre_off(pl, NR, pl->nbn, kb, j0 / NR);
        else if (np)
            im->pack(bbuf, NR, B, j0, nc, k0, kc);
        if (prea)
            ablk = prea + pre_off(pl, MR, pl->nbm, kb, i0 / MR);
        else if (np)
            im->pack(abuf, MR, A, i0, mc, k0, kc);
        for (int ir = 0; ir < nmr; ir++) {
            const int ii = i0 + ir * MR, mr = pl->m - ii < MR ? pl->m - ii : MR;
            const uint32_t *ap = ablk + (size_t)ir * np * MR;
            for (int jr = 0; jr < nnr; jr++) {
                const int jj = j0 + jr * NR, nr = pl->n - jj < NR ? pl->n - jj : NR;
                float *s = multi ? acc + ((size_t)ir * nnr + jr) * MR * NR : acc;
                im->kern(np, ap, bblk + (size_t)jr * np * NR, s, kb == 0);
                if (last)
                    epi(ctx, s, NR, ii, jj, mr, nr);
            }
        }
    }
}

void cpu_gemm_bf16_ex(const void *a, zinc_dtype adt, const void *b, zinc_dtype bdt, int m,
                      int n, int k, int trans_a, int trans_b, cpu_gemm_epi epi, void *ctx)
{
    assert(m >= 0 && n >= 0 && k >= 0 && epi);
    assert((adt == ZINC_DTYPE_F32 || adt == ZINC_DTYPE_BF16) &&
           (bdt == ZINC_DTYPE_F32 || bdt == ZINC_DTYPE_BF16));
    if (m == 0 || n == 0)
        return;
    assert((a && b) || k == 0);
    const gemm_opnd A = {a, adt, trans_a ? m : k, !trans_a, m, k};
    const gemm_opnd B = {b, bdt, trans_b ? k : n, trans_b, n, k};
    const gemm_impl *im = gemm_impl_get();
    const double macs = (double)m * n * (k ? k : 1);
    const int nth = omp_in_parallel() || macs < GEMM_PAR_MIN ? 1 : omp_get_max_threads();
    gemm_plan pl;
    gemm_plan_make(&pl, &A, &B, m, n, k, nth);
    const size_t per_thread = up64(pl.a_words * 4) + up64(pl.b_words * 4) + up64(pl.acc_floats * 4);
    const size_t shared = up64(pl.prea_words * 4) + up64(pl.preb_words * 4);
    char *pool = pool_get(shared + (size_t)pl.nth * per_thread);
    if (!pool) {
        /* Out of memory: the same chains through the C implementation,
         * one microtile at a time from small stack buffers. */
        pl.tm = 1, pl.tn = 1, pl.gm = pl.nbm, pl.gn = pl.nbn, pl.pre_a = pl.pre_b = 0;
        uint32_t abuf[MR * KP] __attribute__((aligned(64))); /* tm = 1 */
        uint32_t bbuf[NR * KP] __attribute__((aligned(64)));
        float acc[MR * NR] __attribute__((aligned(64)));
        for (int ti = 0; ti < pl.gm; ti++)
            for (int tj = 0; tj < pl.gn; tj++)
                gemm_tile(&impl_c, &pl, &A, &B, ti, tj, abuf, bbuf, acc, NULL, NULL, epi, ctx);
        return;
    }
    uint32_t *prea = pl.pre_a ? (uint32_t *)pool : NULL;
    uint32_t *preb = pl.pre_b ? (uint32_t *)(pool + up64(pl.prea_words * 4)) : NULL;
    char *thr = pool + shared;
    const int ntiles = pl.gm * pl.gn;
    /* shared packing in units of 8 panels (a panel is too little work to deal) */
    const int ua = prea ? (pl.nbm + 8 * NR / MR - 1) / (8 * NR / MR) : 0;
    const int ub = preb ? (pl.nbn + 7) / 8 : 0;
    const int npack = pl.nkb * (ua + ub);
    #pragma omp parallel num_threads(pl.nth) if (pl.nth > 1)
    {
        char *mine = thr + (size_t)omp_get_thread_num() * per_thread;
        uint32_t *abuf = (uint32_t *)mine;
        uint32_t *bbuf = (uint32_t *)(mine + up64(pl.a_words * 4));
        float *acc = (float *)(mine + up64(pl.a_words * 4) + up64(pl.b_words * 4));
        if (npack) {
            #pragma omp for schedule(dynamic, 1)
            for (int it = 0; it < npack; it++) {
                const int kb = it / (ua + ub), u = it % (ua + ub);
                const int k0 = kb * KC, kc = k - k0 < KC ? k - k0 : KC;
                if (kc == 0)
                    continue;
                if (u < ua) { /* 48 A panels of 8 rows: as many rows as 8 B panels */
                    const int per = 8 * NR / MR, q = u * per;
                    const int cnt = pl.nbm - q < per ? pl.nbm - q : per;
                    im->pack(prea + pre_off(&pl, MR, pl.nbm, kb, q), MR, &A, q * MR, cnt * MR,
                             k0, kc);
                } else {
                    const int q = (u - ua) * 8, cnt = pl.nbn - q < 8 ? pl.nbn - q : 8;
                    im->pack(preb + pre_off(&pl, NR, pl.nbn, kb, q), NR, &B, q * NR, cnt * NR,
                             k0, kc);
                }
            }
        }
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntiles; t++)
            gemm_tile(im, &pl, &A, &B, t / pl.gn, t % pl.gn, abuf, bbuf, acc, prea, preb, epi,
                      ctx);
    }
}

/* The epilogue of cpu_gemm_bf16: c = alpha s + beta c. */
typedef struct gemm_c_ctx {
    float *c;
    int ldc, m;
    float alpha, beta;
} gemm_c_ctx;

static void epi_c(void *vctx, const float *s, int ld, int i0, int j0, int mr, int nr)
{
    const gemm_c_ctx *x = vctx;
    const float alpha = x->alpha, beta = x->beta;
    /* The block 8 rows down comes a row of microtiles later: fetch it now
     * (8 short runs of a big C the hardware prefetcher picks up late;
     * measured 10% on the head's dwte += dlogits^T inp). */
    for (int i = 0; i < MR && i0 + MR + i < x->m; i++) {
        const char *r = (const char *)(x->c + (size_t)(i0 + MR + i) * x->ldc + j0);
        for (int q = 0; q < nr * (int)sizeof(float); q += 64)
            __builtin_prefetch(r + q, 1, 2);
    }
    for (int i = 0; i < mr; i++) {
        float *restrict c = x->c + (size_t)(i0 + i) * x->ldc + j0;
        const float *restrict si = s + (size_t)i * ld;
        if (beta == 0.0f) {
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                c[j] = alpha * si[j];
        } else {
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                c[j] = alpha * si[j] + beta * c[j];
        }
    }
}

void cpu_gemm_bf16(float *c, const void *a, zinc_dtype adt, const void *b, zinc_dtype bdt,
                   int m, int n, int k, int trans_a, int trans_b, float alpha, float beta)
{
    assert(c || m == 0 || n == 0);
    gemm_c_ctx x = {c, n, m, alpha, beta};
    cpu_gemm_bf16_ex(a, adt, b, bdt, m, n, k, trans_a, trans_b, epi_c, &x);
}
