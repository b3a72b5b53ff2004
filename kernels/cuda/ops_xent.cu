/* ops_xent.cu - the fused softmax + cross-entropy op of both tables: per
 * row of logits the loss, and the gradient written over the logits. */

/* softmax_xent: one block per row, three fp32 passes (max, sum of exps,
 * gradient) with fixed-order block reductions; a bf16 row (98 KiB at V =
 * 50304) waits in shared memory between the passes, so the logits are
 * read once and written once. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

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

/* One block of XENT_BLOCK threads per row of logits(N,V) (act T). A row is
 * split as the layernorm rows are: thread t takes the groups q = t, t +
 * XENT_BLOCK, ... of VW = ACT_VW(T) logits (q < V / VW), then the tail
 * elements VW (V / VW) + t; VEC (V % VW == 0 and logits 16-byte aligned,
 * so every row is) only says whether a group moves in one 16-byte access
 * or element by element, and stash only where the groups are read from, so
 * neither changes a bit. Three passes over the row, all in fp32: its max
 * mx; the sum of exp(x - mx) (each thread's in order, then the block's in
 * a fixed tree); the gradient exp(x - mx) dloss / sum - dloss [target],
 * overwriting the row. With stash (the groups fit the dynamic shared
 * memory: a bf16 row of 50304 logits is 98 KiB, and two blocks share an
 * SM) the first pass moves the groups there (cp.async when VEC) and the
 * others read them there: the logits are read from memory once and written
 * once. Without, each pass reads the row again. */
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
    float v[VW];
    if (tgt < 0) { /* ignored row: uniform across the block */
        for (int q = threadIdx.x; q < NG; q += XENT_BLOCK)
            act_stq<VEC>(x + (size_t)q * VW, make_uint4(0u, 0u, 0u, 0u));
        for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
            act_st(x, j, 0.0f);
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    assert(tgt < V);
    /* read before the barriers below, so before any thread writes the row */
    const float xt = threadIdx.x == 0 ? act_ld(x, tgt) : 0.0f;

    /* pass 1: the row's max */
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
    float m = -INFINITY;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            m = fmaxf(m, v[u]);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        m = fmaxf(m, act_ld(x, j));
    const float mx = xent_block_reduce<true>(m, red_max);

    /* pass 2: sum of exp(x - mx) */
    float s = 0.0f;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            s += xent_exp(v[u], mx);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        s += xent_exp(act_ld(x, j), mx);
    const float sum = xent_block_reduce<false>(s, red_sum);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = (float)(log((double)sum) - ((double)xt - (double)mx));

    /* pass 3: the gradient, in place (each thread rewrites what it read) */
    const float f = dloss / sum;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            v[u] = __fmul_rn(xent_exp(v[u], mx), f);
        const int jt = tgt - q * VW;
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
        if (j == tgt)
            g -= dloss;
        act_st(x, j, g);
    }
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

template <class A>
void cuda_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss, int N,
                       int V)
{
    assert(losses && logits && targets && N >= 0 && V > 0);
    if (N == 0)
        return;
    if (V % ACT_VW(A) == 0 && cuda_al16(logits))
        xent_launch<A, true>(losses, (A *)logits, targets, dloss, N, V);
    else
        xent_launch<A, false>(losses, (A *)logits, targets, dloss, N, V);
    LAUNCH_TRY(softmax_xent_kernel);
cleanup:
    return;
}

/* The tables' two act types (ops_tables.cu). */
template void cuda_softmax_xent<float>(float *, void *, const int32_t *, float, int, int);
template void cuda_softmax_xent<bf16>(float *, void *, const int32_t *, float, int, int);
