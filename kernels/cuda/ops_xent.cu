/* ops_xent.cu - the softmax + cross-entropy ops of both tables: the fused
 * softmax_xent (per row of logits the loss, and the gradient written over
 * the logits) and its vocab-parallel form (xent_vp_max, xent_vp_sums,
 * xent_vp_finish: the same row passes, split at the two all-reduces the
 * caller makes). */

/* softmax_xent: one block per row, three fp32 passes (max, sum of exps,
 * gradient) with fixed-order block reductions; a bf16 row (98 KiB at V =
 * 50304) waits in shared memory between the passes, so the logits are
 * read once and written once. The vocab-parallel ops: one block per row
 * of this rank's slice, each op one of those passes (its row read from
 * memory), so on one rank they give softmax_xent's sum and gradient bits. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

enum {
    XENT_BLOCK = 512,          /* threads per row of softmax_xent */
    XENT_STASH_MAX = 112 << 10, /* bytes of a row softmax_xent keeps in shared memory
                                  (two blocks fit an SM: 228 KiB on Hopper) */
};

/* ------------------------------------------------------------------ */
/* softmax + cross-entropy                                             */
/* ------------------------------------------------------------------ */

/* 2^x on the special function unit (relative error about 2^-22; results
 * below 2^-126 flush to 0). */
__device__ __forceinline__ float xent_ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* exp(x - mx): the difference first (exact when x is within a factor 2 of
 * mx), so the error does not grow with |mx|. */
__device__ __forceinline__ float xent_exp(float x, float mx)
{
    return xent_ex2((x - mx) * 1.4426950408889634f);
}

/* A 16-byte group of gradients packed for storing: fp32 as is; bf16 by the
 * hardware conversion (round to nearest even, as f32_to_bf16_rne for every
 * non-NaN value; a NaN stays NaN) at one instruction per pair. */
__device__ __forceinline__ uint4 xent_pack(const float *p, const float *v)
{
    return act_pack(p, v);
}
__device__ __forceinline__ uint4 xent_pack(const bf16 *, const float *v)
{
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]); /* .x low */
        w[k] = *reinterpret_cast<const uint32_t *>(&h);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* 16 bytes global -> shared without registers (sm_80+); both addresses
 * 16-byte aligned. */
__device__ __forceinline__ void xent_cp16(uint4 *dst, const void *src)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" : : "r"(a), "l"(src) : "memory");
}

/* Max (MAX) or sum over the block: butterflies in each warp, the warps'
 * results through red (XENT_BLOCK / 32 floats, one barrier), then every
 * warp takes them (lane l warp l's) and butterflies again: every thread
 * gets the same bits, in a fixed order. */
template <bool MAX>
__device__ __forceinline__ float xent_block_reduce(float v, float *red)
{
    const int lane = threadIdx.x % 32;
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    v = lane < XENT_BLOCK / 32 ? red[lane] : MAX ? -INFINITY : 0.0f;
    return MAX ? warp_max(v) : warp_sum(v);
}

/* The row passes, run by every thread of a block of XENT_BLOCK. A row x of
 * V logits (act T) is split as the layernorm rows are: thread t takes the
 * groups q = t, t + XENT_BLOCK, ... of VW = ACT_VW(T) logits (q < V / VW),
 * then the tail elements VW (V / VW) + t; VEC (V % VW == 0 and the logits
 * 16-byte aligned, so every row is) only says whether a group moves in one
 * 16-byte access or element by element, and row_s (the groups kept in
 * shared memory, or NULL) only where the groups are read from, so neither
 * changes a bit. All in fp32. */

/* Group q of the row, unpacked into v. */
template <class T, bool VEC>
__device__ __forceinline__ void xent_group(const T *x, const uint4 *row_s, int q, float *v)
{
    act_unpack(x, row_s ? row_s[q] : act_ldq<VEC>(x + (size_t)q * ACT_VW(T)), v);
}

/* The row's max; every thread gets it (red: XENT_BLOCK / 32 floats). */
template <class T, bool VEC>
__device__ __forceinline__ float xent_row_max(const T *x, const uint4 *row_s, int V, float *red)
{
    constexpr int VW = ACT_VW(T);
    const int NG = V / VW;
    float v[VW], m = -INFINITY;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        xent_group<T, VEC>(x, row_s, q, v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            m = fmaxf(m, v[u]);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        m = fmaxf(m, act_ld(x, j));
    return xent_block_reduce<true>(m, red);
}

/* The row's sum of exp(x - mx): each thread's in order, then the block's
 * in a fixed tree; every thread gets it. */
template <class T, bool VEC>
__device__ __forceinline__ float xent_row_sum(const T *x, const uint4 *row_s, int V, float mx,
                                              float *red)
{
    constexpr int VW = ACT_VW(T);
    const int NG = V / VW;
    float v[VW], s = 0.0f;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        xent_group<T, VEC>(x, row_s, q, v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            s += xent_exp(v[u], mx);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        s += xent_exp(act_ld(x, j), mx);
    return xent_block_reduce<false>(s, red);
}

/* The row becomes its gradient exp(x - mx) f - dloss [j == tl], in place
 * (each thread rewrites what it read); tl < 0: the row holds no target. */
template <class T, bool VEC>
__device__ __forceinline__ void xent_row_grad(T *x, const uint4 *row_s, int V, float mx, float f,
                                              int tl, float dloss)
{
    constexpr int VW = ACT_VW(T);
    const int NG = V / VW;
    float v[VW];
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        xent_group<T, VEC>(x, row_s, q, v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            v[u] = __fmul_rn(xent_exp(v[u], mx), f);
        const int jt = tl - q * VW;
        if ((unsigned)jt < (unsigned)VW) {
#pragma unroll
            for (int u = 0; u < VW; u++)
                if (u == jt)
                    v[u] -= dloss;
        }
        act_stq<VEC>(x + (size_t)q * VW, xent_pack(x, v));
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK) {
        float g = __fmul_rn(xent_exp(act_ld(x, j), mx), f);
        if (j == tl)
            g -= dloss;
        act_st(x, j, g);
    }
}

/* An ignored row: gradient 0. */
template <class T, bool VEC>
__device__ __forceinline__ void xent_row_zero(T *x, int V)
{
    constexpr int VW = ACT_VW(T);
    const int NG = V / VW;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK)
        act_stq<VEC>(x + (size_t)q * VW, make_uint4(0u, 0u, 0u, 0u));
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        act_st(x, j, 0.0f);
}

/* -log softmax[target] from the row's sum of exps, max and target logit. */
__device__ __forceinline__ float xent_loss(float sum, float mx, float xt)
{
    return (float)(log((double)sum) - ((double)xt - (double)mx));
}

/* One block of XENT_BLOCK threads per row of logits(N,V) (act T): the
 * three passes over the row, its max mx, the sum of exp(x - mx), the
 * gradient exp(x - mx) dloss / sum - dloss [target] overwriting the row.
 * With stash (the groups fit the dynamic shared memory: a bf16 row of
 * 50304 logits is 98 KiB, and two blocks share an SM) the first pass moves
 * the groups there (cp.async when VEC) and the others read them there: the
 * logits are read from memory once and written once. Without, each pass
 * reads the row again. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(XENT_BLOCK, 2)
    softmax_xent_kernel(float *losses, T *logits, const int32_t *targets, float dloss, int V,
                        int stash)
{
    constexpr int VW = ACT_VW(T);
    extern __shared__ uint4 row_s[]; /* (V / VW) groups when stash */
    __shared__ float red_max[XENT_BLOCK / 32], red_sum[XENT_BLOCK / 32];
    T *x = logits + (size_t)blockIdx.x * V;
    const int tgt = targets[blockIdx.x];
    const int NG = V / VW;
    if (tgt < 0) { /* ignored row: uniform across the block */
        xent_row_zero<T, VEC>(x, V);
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    assert(tgt < V);
    /* read before the barriers below, so before any thread writes the row */
    const float xt = threadIdx.x == 0 ? act_ld(x, tgt) : 0.0f;

    if (stash) {
        for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
            if (VEC)
                xent_cp16(row_s + q, x + (size_t)q * VW);
            else
                row_s[q] = act_ldq<false>(x + (size_t)q * VW);
        }
        if (VEC) /* this thread's copies; it alone reads its groups */
            asm volatile("cp.async.wait_all;\n" ::: "memory");
    }
    const uint4 *rs = stash ? row_s : NULL;
    const float mx = xent_row_max<T, VEC>(x, rs, V, red_max);
    const float sum = xent_row_sum<T, VEC>(x, rs, V, mx, red_sum);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = xent_loss(sum, mx, xt);
    xent_row_grad<T, VEC>(x, rs, V, mx, dloss / sum, tgt, dloss);
}

/* Where target tgt (>= 0) stands in this rank's columns [v0, v0+V) of the
 * row, or -1 when they do not hold it. */
__device__ __forceinline__ int xent_vp_col(int tgt, int v0, int V)
{
    const int j = tgt - v0; /* tgt, v0 >= 0: no overflow */
    return j >= 0 && j < V ? j : -1;
}

/* The vocab-parallel ops (zinc/ops.h), a block per row of this rank's
 * logits (N,V). xent_vp_max: rowmax = the row's max. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(XENT_BLOCK)
    xent_vp_max_kernel(float *rowmax, const T *logits, int V)
{
    __shared__ float red[XENT_BLOCK / 32];
    const float mx = xent_row_max<T, VEC>(logits + (size_t)blockIdx.x * V, NULL, V, red);
    if (threadIdx.x == 0)
        rowmax[blockIdx.x] = mx;
}

/* xent_vp_sums: sums(N,2) = the sum of exp(x - rowmax), the target's logit
 * where this rank holds it (else 0); an ignored row 0, 0. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(XENT_BLOCK)
    xent_vp_sums_kernel(float *sums, const T *logits, const int32_t *targets, const float *rowmax,
                        int V, int v0)
{
    __shared__ float red[XENT_BLOCK / 32];
    const T *x = logits + (size_t)blockIdx.x * V;
    const int tgt = targets[blockIdx.x];
    float *s = sums + 2 * (size_t)blockIdx.x;
    if (tgt < 0) { /* uniform across the block */
        if (threadIdx.x == 0)
            s[0] = s[1] = 0.0f;
        return;
    }
    const float sum = xent_row_sum<T, VEC>(x, NULL, V, rowmax[blockIdx.x], red);
    if (threadIdx.x == 0) {
        const int j = xent_vp_col(tgt, v0, V);
        s[0] = sum;
        s[1] = j >= 0 ? act_ld(x, j) : 0.0f;
    }
}

/* xent_vp_finish: the loss from the all-reduced rowmax and sums, and this
 * rank's columns of the gradient over the logits; an ignored row 0. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(XENT_BLOCK)
    xent_vp_finish_kernel(float *losses, T *logits, const int32_t *targets, const float *rowmax,
                          const float *sums, float dloss, int V, int v0)
{
    T *x = logits + (size_t)blockIdx.x * V;
    const int tgt = targets[blockIdx.x];
    if (tgt < 0) { /* uniform across the block */
        xent_row_zero<T, VEC>(x, V);
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    const float mx = rowmax[blockIdx.x], sum = sums[2 * (size_t)blockIdx.x];
    if (threadIdx.x == 0)
        losses[blockIdx.x] = xent_loss(sum, mx, sums[2 * (size_t)blockIdx.x + 1]);
    xent_row_grad<T, VEC>(x, NULL, V, mx, dloss / sum, xent_vp_col(tgt, v0, V), dloss);
}

/* Whether softmax_xent_kernel<T, VEC> may take bytes of dynamic shared
 * memory (raised above the default 48 KiB once per instantiation, with the
 * largest shared memory carveout so that two blocks fit an SM). */
template <class T, bool VEC>
static int xent_stash_ok(size_t bytes)
{
    static const int ok = [] {
        const cudaError_t e = cudaFuncSetAttribute(
            softmax_xent_kernel<T, VEC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
            XENT_STASH_MAX);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        if (cudaFuncSetAttribute(softmax_xent_kernel<T, VEC>,
                                 cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared) != cudaSuccess)
            (void)cudaGetLastError(); /* a hint only */
        return 1;
    }();
    return ok && bytes <= XENT_STASH_MAX;
}

template <class T, bool VEC>
static void xent_launch(float *losses, T *logits, const int32_t *targets, float dloss, int N,
                        int V)
{
    const size_t bytes = (size_t)(V / ACT_VW(T)) * 16; /* the groups */
    const int stash = bytes > 0 && xent_stash_ok<T, VEC>(bytes);
    softmax_xent_kernel<T, VEC><<<(unsigned)N, XENT_BLOCK, stash ? bytes : 0>>>(
        losses, logits, targets, dloss, V, stash);
}

/* Calls launch(std::true_type()) when rows of V act elements A from p
 * move in 16-byte groups (V a multiple of the vector width and p 16-byte
 * aligned: then every row is), else launch(std::false_type()). */
template <class A, class F>
static void xent_dispatch(const void *p, int V, F launch)
{
    if (V % ACT_VW(A) == 0 && cuda_al16(p))
        launch(std::true_type());
    else
        launch(std::false_type());
}

template <class A>
void cuda_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss, int N,
                       int V)
{
    assert(losses && logits && targets && N >= 0 && V > 0);
    if (N == 0)
        return;
    xent_dispatch<A>(logits, V, [&](auto vec) {
        xent_launch<A, decltype(vec)::value>(losses, (A *)logits, targets, dloss, N, V);
    });
    LAUNCH_TRY(softmax_xent_kernel);
cleanup:
    return;
}

template <class A>
void cuda_xent_vp_max(float *rowmax, const void *logits, int N, int V)
{
    assert(rowmax && logits && N >= 0 && V > 0);
    if (N == 0)
        return;
    xent_dispatch<A>(logits, V, [&](auto vec) {
        xent_vp_max_kernel<A, decltype(vec)::value><<<(unsigned)N, XENT_BLOCK>>>(
            rowmax, (const A *)logits, V);
    });
    LAUNCH_TRY(xent_vp_max_kernel);
cleanup:
    return;
}

template <class A>
void cuda_xent_vp_sums(float *sums, const void *logits, const int32_t *targets,
                       const float *rowmax, int N, int V, int v0)
{
    assert(sums && logits && targets && rowmax && N >= 0 && V > 0 && v0 >= 0);
    if (N == 0)
        return;
    xent_dispatch<A>(logits, V, [&](auto vec) {
        xent_vp_sums_kernel<A, decltype(vec)::value><<<(unsigned)N, XENT_BLOCK>>>(
            sums, (const A *)logits, targets, rowmax, V, v0);
    });
    LAUNCH_TRY(xent_vp_sums_kernel);
cleanup:
    return;
}

template <class A>
void cuda_xent_vp_finish(float *losses, void *logits, const int32_t *targets,
                         const float *rowmax, const float *sums, float dloss, int N, int V,
                         int v0)
{
    assert(losses && logits && targets && rowmax && sums && N >= 0 && V > 0 && v0 >= 0);
    if (N == 0)
        return;
    xent_dispatch<A>(logits, V, [&](auto vec) {
        xent_vp_finish_kernel<A, decltype(vec)::value><<<(unsigned)N, XENT_BLOCK>>>(
            losses, (A *)logits, targets, rowmax, sums, dloss, V, v0);
    });
    LAUNCH_TRY(xent_vp_finish_kernel);
cleanup:
    return;
}

/* The tables' two act types (ops_tables.cu). */
#define XENT_INSTANTIATE(A)                                                                  \
    template void cuda_softmax_xent<A>(float *, void *, const int32_t *, float, int, int);  \
    template void cuda_xent_vp_max<A>(float *, const void *, int, int);                      \
    template void cuda_xent_vp_sums<A>(float *, const void *, const int32_t *, const float *,  \
                                       int, int, int);                                       \
    template void cuda_xent_vp_finish<A>(float *, void *, const int32_t *, const float *,      \
                                         const float *, float, int, int, int);
XENT_INSTANTIATE(float)
XENT_INSTANTIATE(bf16)
