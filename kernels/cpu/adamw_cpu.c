/* adamw_cpu.c - AdamW on the CPU in one pass at memory bandwidth: the optimizer of CPU
 * ranks and the host optimizer of ZeRO-Offload (offload_optimizer on a GPU).
 *
 * One pass reads the gradient as stored (fp32, bf16 or fp16: no conversion pass), scales
 * it (the clipping and loss-scale coefficient: no scaling pass), updates the fp32 master
 * weights and both moments, and writes the new parameters rounded to their 16-bit
 * storage dtype (no conversion pass after): 28 bytes an element for 16-bit training,
 * against 48 for convert + scale + update + convert.
 *
 * The body is x86 vector code chosen at run time (AVX-512 where the CPU has it, else
 * AVX2 with F16C, else scalar; ZINC_CPU_ISA=scalar|avx2|avx512 caps it, for tests and
 * benches). gcc will not vectorize sqrtf without -fno-math-errno, and a scalar sqrt and
 * divide make the loop compute-bound, hence the intrinsics. Every variant does the same
 * IEEE operations in the same order (no FMA) and rounds as zinc_f32_to_bf16 /
 * zinc_f32_to_f16 (a vector whose fp16 gradients or 16-bit outputs hold a NaN or an
 * infinity takes the scalar code), so finite results do not depend on the variant or on
 * which lanes an element falls in (a NaN's payload might).
 * Blocks of ADAM_BLK elements are dealt statically to OpenMP threads.
 */
#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/ops.h"
#include "zinc/tensor.h"
#include "cpu_int.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* gcc in ISO C mode does not contract; clang would (scalar = vector) */
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ADAM_X86 1
#endif

typedef struct adam_k {
    float b1, b2, o1, o2, lr, eps, wd, i1, i2, coef;
    int scale;        /* coef != 1 */
    zinc_dtype gdt, odt;
} adam_k;

static inline float ld(const void *p, zinc_dtype dt, size_t i)
{
    if (dt == ZINC_DTYPE_F32) return ((const float *)p)[i];
    if (dt == ZINC_DTYPE_BF16) return zinc_bf16_to_f32(((const uint16_t *)p)[i]);
    return zinc_f16_to_f32(((const uint16_t *)p)[i]);
}

static inline void st(void *p, zinc_dtype dt, size_t i, float x)
{
    if (dt == ZINC_DTYPE_F32) ((float *)p)[i] = x;
    else if (dt == ZINC_DTYPE_BF16) ((uint16_t *)p)[i] = zinc_f32_to_bf16(x);
    else ((uint16_t *)p)[i] = zinc_f32_to_f16(x);
}

static void range_scalar(float *restrict p_, const void *g_, float *restrict m_, float *restrict v_, void *out,
                         size_t lo, size_t hi, const adam_k *k)
{
    for (size_t i = lo; i < hi; i++) {
        float g = ld(g_, k->gdt, i);
        if (k->scale) g *= k->coef;
        const float mi = k->b1 * m_[i] + k->o1 * g;
        const float vi = k->b2 * v_[i] + k->o2 * g * g;
        m_[i] = mi;
        v_[i] = vi;
        const float p = p_[i];
        const float np = p - k->lr * (mi * k->i1 / (sqrtf(vi * k->i2) + k->eps) + k->wd * p);
        p_[i] = np;
        if (out) st(out, k->odt, i, np);
    }
}

#ifdef ADAM_X86
/* The vector loop, once for both widths: W lanes of vector type V, intrinsics prefix P,
 * the gradient loader LD and the output storer ST (each 0 where the scalar code must
 * take the vector: a non-finite fp16 gradient or 16-bit output). */
#define ADAM_RANGE(name, TGT, W, V, P, LD, ST)                                                                \
    TGT static void name(float *restrict p_, const void *g_, float *restrict m_, float *restrict v_, void *out, \
                         size_t lo, size_t hi, const adam_k *k)                                              \
    {                                                                                                         \
        const V b1 = P##_set1_ps(k->b1), b2 = P##_set1_ps(k->b2), o1 = P##_set1_ps(k->o1),                   \
                o2 = P##_set1_ps(k->o2), lr = P##_set1_ps(k->lr), eps = P##_set1_ps(k->eps),                 \
                wd = P##_set1_ps(k->wd), i1 = P##_set1_ps(k->i1), i2 = P##_set1_ps(k->i2),                   \
                cf = P##_set1_ps(k->coef);                                                                    \
        size_t i = lo;                                                                                        \
        for (; i + W <= hi; i += W) {                                                                         \
            V g;                                                                                              \
            if (!LD(g_, k->gdt, i, &g)) {                                                                     \
                range_scalar(p_, g_, m_, v_, out, i, i + W, k);                                               \
                continue;                                                                                     \
            }                                                                                                 \
            if (k->scale) g = P##_mul_ps(g, cf);                                                              \
            const V mi = P##_add_ps(P##_mul_ps(b1, P##_loadu_ps(m_ + i)), P##_mul_ps(o1, g));                 \
            const V vi = P##_add_ps(P##_mul_ps(b2, P##_loadu_ps(v_ + i)), P##_mul_ps(P##_mul_ps(o2, g), g));  \
            P##_storeu_ps(m_ + i, mi);                                                                        \
            P##_storeu_ps(v_ + i, vi);                                                                        \
            const V p = P##_loadu_ps(p_ + i);                                                                 \
            const V den = P##_add_ps(P##_sqrt_ps(P##_mul_ps(vi, i2)), eps);                                   \
            const V upd = P##_add_ps(P##_div_ps(P##_mul_ps(mi, i1), den), P##_mul_ps(wd, p));                 \
            const V np = P##_sub_ps(p, P##_mul_ps(lr, upd));                                                  \
            P##_storeu_ps(p_ + i, np);                                                                        \
            if (out && !ST(out, k->odt, i, np))                                                               \
                for (size_t j = i; j < i + W; j++) st(out, k->odt, j, p_[j]);                                \
        }                                                                                                     \
        range_scalar(p_, g_, m_, v_, out, i, hi, k);                                                          \
    }

/* ---------------------------------------------------------------- AVX2 (8 lanes) */
#define T2 __attribute__((target("avx2,f16c")))

/* 8 gradients as fp32; 0 if one is NaN or infinite as stored (fp16: exponent 31) */
T2 static inline int ld8(const void *g, zinc_dtype dt, size_t i, __m256 *out)
{
    if (dt == ZINC_DTYPE_F32) {
        *out = _mm256_loadu_ps((const float *)g + i);
        return 1;
    }
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)g + i));
    if (dt == ZINC_DTYPE_BF16) {
        *out = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        return 1;
    }
    const __m128i e = _mm_and_si128(h, _mm_set1_epi16(0x7c00));
    if (_mm_movemask_epi8(_mm_cmpeq_epi16(e, _mm_set1_epi16(0x7c00)))) return 0;
    *out = _mm256_cvtph_ps(h);
    return 1;
}

/* 8 fp32 as odt; 0 (nothing stored) if one is NaN or infinite */
T2 static inline int st8(void *o, zinc_dtype dt, size_t i, __m256 x)
{
    if (dt == ZINC_DTYPE_F32) {
        _mm256_storeu_ps((float *)o + i, x);
        return 1;
    }
    const __m256i u = _mm256_castps_si256(x);
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    if (_mm256_movemask_epi8(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f7fffff)))) return 0;
    __m128i r;
    if (dt == ZINC_DTYPE_BF16) { /* nearest even on the bits, as zinc_f32_to_bf16 */
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i w = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
        const __m256i pk = _mm256_packus_epi32(w, w); /* words 0-3 | 4-7 in each half */
        r = _mm256_castsi256_si128(_mm256_permute4x64_epi64(pk, 0x08));
    } else {
        r = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm_storeu_si128((__m128i *)((uint16_t *)o + i), r);
    return 1;
}

ADAM_RANGE(range_avx2, T2, 8, __m256, _mm256, ld8, st8)
#undef T2

/* ---------------------------------------------------------------- AVX-512 (16 lanes) */
#define T5 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

T5 static inline int ld16(const void *g, zinc_dtype dt, size_t i, __m512 *out)
{
    if (dt == ZINC_DTYPE_F32) {
        *out = _mm512_loadu_ps((const float *)g + i);
        return 1;
    }
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)g + i));
    if (dt == ZINC_DTYPE_BF16) {
        *out = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        return 1;
    }
    const __m256i e = _mm256_and_si256(h, _mm256_set1_epi16(0x7c00));
    if (_mm256_cmpeq_epi16_mask(e, _mm256_set1_epi16(0x7c00))) return 0;
    *out = _mm512_cvtph_ps(h);
    return 1;
}

T5 static inline int st16(void *o, zinc_dtype dt, size_t i, __m512 x)
{
    if (dt == ZINC_DTYPE_F32) {
        _mm512_storeu_ps((float *)o + i, x);
        return 1;
    }
    const __m512i u = _mm512_castps_si512(x);
    const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    if (_mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f7fffff))) return 0;
    __m256i r;
    if (dt == ZINC_DTYPE_BF16) {
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        r = _mm512_cvtepi32_epi16(
            _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16));
    } else {
        r = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm256_storeu_si256((__m256i *)((uint16_t *)o + i), r);
    return 1;
}

ADAM_RANGE(range_avx512, T5, 16, __m512, _mm512, ld16, st16)
#undef T5
#endif /* ADAM_X86 */

/* ---------------------------------------------------------------- dispatch */

typedef void (*range_fn)(float *restrict, const void *, float *restrict, float *restrict, void *, size_t, size_t,
                         const adam_k *);

/* The best variant the CPU runs (and the OS saves the registers of), capped by
 * ZINC_CPU_ISA. A cached setting of the machine: any thread may fill it in. */
static atomic_int forced = -1; /* test hook: cpu_adamw_force_isa */

static int isa_best(void)
{
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v >= 0) return v;
    v = 0;
#ifdef ADAM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) v = 1;
    if (v && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        v = 2;
#endif
    const char *cap = getenv("ZINC_CPU_ISA");
    if (cap && !strcmp(cap, "scalar")) v = 0;
    else if (cap && !strcmp(cap, "avx2") && v > 1) v = 1;
    atomic_store_explicit(&cached, v, memory_order_relaxed);
    return v;
}

static int isa_level(void)
{
    const int f = atomic_load_explicit(&forced, memory_order_relaxed), b = isa_best();
    return f >= 0 && f < b ? f : b;
}

int cpu_adamw_force_isa(int level)
{
    atomic_store_explicit(&forced, level, memory_order_relaxed);
    return isa_level();
}

const char *cpu_adamw_isa(void)
{
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    return names[isa_level()];
}

static range_fn pick(void)
{
#ifdef ADAM_X86
    switch (isa_level()) {
    case 2: return range_avx512;
    case 1: return range_avx2;
    default: break;
    }
#endif
    return range_scalar;
}

void cpu_adamw_mixed(float *master, const void *grad, zinc_dtype gdt, float coef, float *m, float *v, void *out,
                     zinc_dtype odt, size_t n, float lr, float beta1, float beta2, float eps, float wd, int t)
{
    enum { ADAM_BLK = 16384 };
    assert(master && grad && m && v && t >= 1);
    const adam_k k = {.b1 = beta1, .b2 = beta2, .o1 = 1.0f - beta1, .o2 = 1.0f - beta2, .lr = lr, .eps = eps,
                      .wd = wd, .i1 = (float)(1.0 / (1.0 - pow((double)beta1, t))),
                      .i2 = (float)(1.0 / (1.0 - pow((double)beta2, t))), .coef = coef, .scale = coef != 1.0f,
                      .gdt = gdt, .odt = odt};
    const range_fn f = pick();
    const size_t nblk = (n + ADAM_BLK - 1) / ADAM_BLK;
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t bi = 0; bi < nblk; bi++) {
        const size_t lo = bi * ADAM_BLK;
        f(master, grad, m, v, out, lo, lo + ADAM_BLK < n ? lo + ADAM_BLK : n, &k);
    }
}

/* Bias corrections folded into two scalars: one sqrt and one division an element. */
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2,
               float eps, float wd, int t)
{
    cpu_adamw_mixed(param, grad, ZINC_DTYPE_F32, 1.0f, m, v, NULL, ZINC_DTYPE_F32, n, lr, beta1, beta2, eps, wd, t);
}
