/* ops_precision.cu - the memory and precision ops of both tables: zero,
 * copy, and the conversions between fp32, bf16 and fp16 (convert, add_into,
 * round_to), each dtype pair a template instance of an op struct run by the
 * vectorized launcher of cuda_int.h. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

/* ------------------------------------------------------------------ */
/* memory and precision                                                */
/* ------------------------------------------------------------------ */

/* The dtypes of the precision ops as template arguments: F32, BF16, and
 * anything else is F16 (as the per-element switch always treated it). */
static int dt_kind(zinc_dtype dt)
{
    return dt == ZINC_DTYPE_F32 ? ZINC_DTYPE_F32
                                : dt == ZINC_DTYPE_BF16 ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F16;
}

static __device__ __forceinline__ float from_16(int dt, uint32_t h)
{
    if (dt == ZINC_DTYPE_BF16)
        return __uint_as_float(h << 16);
    return __half2float(__ushort_as_half((unsigned short)h));
}

static __device__ __forceinline__ uint32_t to_16(int dt, float x)
{
    if (dt == ZINC_DTYPE_BF16)
        return f32_to_bf16_rne(x);
    return __half_as_ushort(__float2half_rn(x));
}

/* Element i of a DT array as fp32, and back (round to nearest even). */
template <int DT>
static __device__ __forceinline__ float ld1(const void *p, size_t i)
{
    if (DT == ZINC_DTYPE_F32)
        return ((const float *)p)[i];
    return from_16(DT, ((const uint16_t *)p)[i]);
}

template <int DT>
static __device__ __forceinline__ void st1(void *p, size_t i, float x)
{
    if (DT == ZINC_DTYPE_F32)
        ((float *)p)[i] = x;
    else
        ((uint16_t *)p)[i] = (uint16_t)to_16(DT, x);
}

/* Elements i..i+3 (i on a 4-element boundary of an aligned array) in one
 * access: float4, or uint2 of four 16-bit values (element i in the low
 * half of .x, little endian). */
template <int DT>
static __device__ __forceinline__ float4 ld4(const void *p, size_t i)
{
    if (DT == ZINC_DTYPE_F32)
        return ld_f4((const float *)p + i);
    const uint2 u = *reinterpret_cast<const uint2 *>((const uint16_t *)p + i);
    return make_float4(from_16(DT, u.x & 0xffffu), from_16(DT, u.x >> 16),
                       from_16(DT, u.y & 0xffffu), from_16(DT, u.y >> 16));
}

template <int DT>
static __device__ __forceinline__ void st4(void *p, size_t i, float4 v)
{
    if (DT == ZINC_DTYPE_F32) {
        st_f4((float *)p + i, v);
        return;
    }
    uint2 u;
    u.x = to_16(DT, v.x) | (to_16(DT, v.y) << 16);
    u.y = to_16(DT, v.z) | (to_16(DT, v.w) << 16);
    *reinterpret_cast<uint2 *>((uint16_t *)p + i) = u;
}

template <int DDT, int SDT>
struct convert_op {
    static constexpr int W = 4;
    void *dst;
    const void *src;
    __device__ void one(size_t i) const { st1<DDT>(dst, i, ld1<SDT>(src, i)); }
    __device__ void vec(size_t i) const { st4<DDT>(dst, i, ld4<SDT>(src, i)); }
};

template <int DDT, int SDT>
struct add_into_op {
    static constexpr int W = 4;
    void *dst;
    const void *src;
    __device__ void one(size_t i) const
    {
        st1<DDT>(dst, i, __fadd_rn(ld1<DDT>(dst, i), ld1<SDT>(src, i)));
    }
    __device__ void vec(size_t i) const
    {
        const float4 d = ld4<DDT>(dst, i), x = ld4<SDT>(src, i);
        st4<DDT>(dst, i, make_float4(__fadd_rn(d.x, x.x), __fadd_rn(d.y, x.y),
                                     __fadd_rn(d.z, x.z), __fadd_rn(d.w, x.w)));
    }
};

/* x = fp32(DT(x)) in place. */
template <int DT>
struct round_to_op {
    static constexpr int W = 4;
    float *x;
    __device__ static float r(float v)
    {
        if (DT == ZINC_DTYPE_BF16)
            return __uint_as_float((uint32_t)f32_to_bf16_rne(v) << 16);
        return __half2float(__float2half_rn(v));
    }
    __device__ void one(size_t i) const { x[i] = r(x[i]); }
    __device__ void vec(size_t i) const
    {
        const float4 v = ld_f4(x + i);
        st_f4(x + i, make_float4(r(v.x), r(v.y), r(v.z), r(v.w)));
    }
};

/* Op<D, S> over n elements of dst (dtype D) and src (dtype S). */
template <template <int, int> class Op, int D, int S>
static void precision_launch(void *dst, const void *src, size_t n)
{
    const void *p[2] = {dst, src};
    const unsigned esz[2] = {D == ZINC_DTYPE_F32 ? 4u : 2u, S == ZINC_DTYPE_F32 ? 4u : 2u};
    ew_launch(Op<D, S>{dst, src}, cuda_ew_plan(n, p, esz, 2, 4));
}

template <template <int, int> class Op, int D>
static void precision_launch_s(void *dst, int sdt, const void *src, size_t n)
{
    if (sdt == ZINC_DTYPE_F32)
        precision_launch<Op, D, ZINC_DTYPE_F32>(dst, src, n);
    else if (sdt == ZINC_DTYPE_BF16)
        precision_launch<Op, D, ZINC_DTYPE_BF16>(dst, src, n);
    else
        precision_launch<Op, D, ZINC_DTYPE_F16>(dst, src, n);
}

template <template <int, int> class Op>
static void precision_launch_ds(void *dst, int ddt, const void *src, int sdt, size_t n)
{
    if (ddt == ZINC_DTYPE_F32)
        precision_launch_s<Op, ZINC_DTYPE_F32>(dst, sdt, src, n);
    else if (ddt == ZINC_DTYPE_BF16)
        precision_launch_s<Op, ZINC_DTYPE_BF16>(dst, sdt, src, n);
    else
        precision_launch_s<Op, ZINC_DTYPE_F16>(dst, sdt, src, n);
}

void cuda_zero(void *p, size_t bytes)
{
    assert(p || bytes == 0);
    if (bytes)
        CUDA_TRY(cudaMemsetAsync(p, 0, bytes, 0));
cleanup:
    return;
}

void cuda_copy(void *dst, const void *src, size_t bytes)
{
    assert((dst && src) || bytes == 0);
    if (bytes && dst != src)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
cleanup:
    return;
}

void cuda_convert(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (n == 0)
        return;
    if (ddt == sdt) {
        cuda_copy(dst, src, n * (ddt == ZINC_DTYPE_F32 ? 4 : 2));
        return;
    }
    precision_launch_ds<convert_op>(dst, dt_kind(ddt), src, dt_kind(sdt), n);
    LAUNCH_TRY(convert);
cleanup:
    return;
}

void cuda_add_into(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (n == 0)
        return;
    precision_launch_ds<add_into_op>(dst, dt_kind(ddt), src, dt_kind(sdt), n);
    LAUNCH_TRY(add_into);
cleanup:
    return;
}

void cuda_round_to(float *x, zinc_dtype dt, size_t n)
{
    assert(x || n == 0);
    if (n == 0 || dt == ZINC_DTYPE_F32)
        return;
    {
        const void *p[1] = {x};
        const unsigned esz[1] = {4};
        const ew_split sp = cuda_ew_plan(n, p, esz, 1, 4);
        if (dt == ZINC_DTYPE_BF16)
            ew_launch(round_to_op<ZINC_DTYPE_BF16>{x}, sp);
        else
            ew_launch(round_to_op<ZINC_DTYPE_F16>{x}, sp);
    }
    LAUNCH_TRY(round_to);
cleanup:
    return;
}
