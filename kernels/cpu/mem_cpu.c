/* mem_cpu.c - the CPU op table's memory and precision ops: zero, copy,
 * dtype conversion, accumulation across dtypes, rounding to a storage
 * dtype, and a deterministic sum. Loops are contiguous and vectorize;
 * large ones split over OpenMP threads with a fixed element partition. */
#include <assert.h>
#include <string.h>

#include "zinc/tensor.h"
#include "cpu_int.h"

void cpu_zero(void *p, size_t bytes)
{
    assert(p || bytes == 0);
    if (bytes) memset(p, 0, bytes);
}

void cpu_copy(void *dst, const void *src, size_t bytes)
{
    assert((dst && src) || bytes == 0);
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

/* Element i of a f32 / bf16 / f16 array as fp32. */
static inline float load_f32(const void *p, zinc_dtype dt, size_t i)
{
    if (dt == ZINC_DTYPE_F32) return ((const float *)p)[i];
    if (dt == ZINC_DTYPE_BF16) return zinc_bf16_to_f32(((const uint16_t *)p)[i]);
    return zinc_f16_to_f32(((const uint16_t *)p)[i]);
}

static inline void store_f32(void *p, zinc_dtype dt, size_t i, float x)
{
    if (dt == ZINC_DTYPE_F32)
        ((float *)p)[i] = x;
    else if (dt == ZINC_DTYPE_BF16)
        ((uint16_t *)p)[i] = zinc_f32_to_bf16(x);
    else
        ((uint16_t *)p)[i] = zinc_f32_to_f16(x);
}

void cpu_convert(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (ddt == sdt) {
        cpu_copy(dst, src, n * zinc_dtype_size(ddt));
        return;
    }
    /* the common pairs get their own loops so they vectorize */
    if (sdt == ZINC_DTYPE_F32 && ddt == ZINC_DTYPE_BF16) {
        const float *s = src;
        uint16_t *d = dst;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) d[i] = zinc_f32_to_bf16(s[i]);
        return;
    }
    if (sdt == ZINC_DTYPE_BF16 && ddt == ZINC_DTYPE_F32) {
        const uint16_t *s = src;
        float *d = dst;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) d[i] = zinc_bf16_to_f32(s[i]);
        return;
    }
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) store_f32(dst, ddt, i, load_f32(src, sdt, i));
}

void cpu_add_into(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (ddt == ZINC_DTYPE_F32 && sdt == ZINC_DTYPE_F32) {
        float *d = dst;
        const float *s = src;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) d[i] += s[i];
        return;
    }
    /* the pairs 16-bit training uses get their own loops so they vectorize
     * (the same operations as the general loop below) */
    if (ddt == ZINC_DTYPE_BF16 && sdt == ZINC_DTYPE_F32) {
        uint16_t *d = dst;
        const float *s = src;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) d[i] = zinc_f32_to_bf16(zinc_bf16_to_f32(d[i]) + s[i]);
        return;
    }
    if (ddt == ZINC_DTYPE_BF16 && sdt == ZINC_DTYPE_BF16) {
        uint16_t *d = dst;
        const uint16_t *s = src;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++)
            d[i] = zinc_f32_to_bf16(zinc_bf16_to_f32(d[i]) + zinc_bf16_to_f32(s[i]));
        return;
    }
    if (ddt == ZINC_DTYPE_F32 && sdt == ZINC_DTYPE_BF16) {
        float *d = dst;
        const uint16_t *s = src;
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) d[i] += zinc_bf16_to_f32(s[i]);
        return;
    }
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        store_f32(dst, ddt, i, load_f32(dst, ddt, i) + load_f32(src, sdt, i));
}

void cpu_round_to(float *x, zinc_dtype dt, size_t n)
{
    assert(x || n == 0);
    if (dt == ZINC_DTYPE_BF16) {
        #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) x[i] = zinc_bf16_to_f32(zinc_f32_to_bf16(x[i]));
    } else if (dt == ZINC_DTYPE_F16) {
        #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
        for (size_t i = 0; i < n; i++) x[i] = zinc_f16_to_f32(zinc_f32_to_f16(x[i]));
    }
}

double cpu_sum(const float *x, size_t n)
{
    return cpu_sum_impl(x, n, 0);
}
