/* ops_lora.cu - LoRA's low-rank path and the dropout on its input (zinc/ops.h), for both
 * tables. The rank r is small, so these are not GEMMs: t = inp A^T and dt = s dout B are
 * one warp per row; out += s t B^T and dinp += dt A one thread per element; the weight
 * gradients dB (OC x r) and dA (r x C) one thread per element walking the N rows in
 * order, so the bits do not depend on the launch. First versions, correct and
 * deterministic; dB and dA have OC r and r C threads and are the ones to split over the
 * rows (two-pass sums, as ops_colsum.cu does) when they show in a profile. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"
#include "zinc/ops.h"

enum { LO_WARPS = 8, LO_THREADS = 256 };

static unsigned lo_blocks(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }

/* y(n,k) = scale * sum_c x(n*ldx + c) w(k*kstride + c*cstride) for k < r: a warp per row */
template <class T>
static __global__ void __launch_bounds__(LO_WARPS * 32)
    lora_rows_kernel(float *y, const T *x, int ldx, const float *w, int kstride, int cstride, float scale, int N,
                     int C, int r)
{
    const int lane = threadIdx.x % 32, n = blockIdx.x * LO_WARPS + threadIdx.x / 32;
    if (n >= N) return;
    const T *xr = x + (size_t)n * ldx;
    for (int k = 0; k < r; k++) {
        float s = 0.0f;
        for (int c = lane; c < C; c += 32) s += act_ld(xr, c) * w[(size_t)k * kstride + (size_t)c * cstride];
        s = warp_sum(s);
        if (lane == 0) y[(size_t)n * r + k] = scale * s;
    }
}

/* out(n*ldo + j) += scale * sum_k t(n,k) w(j*jstride + k*kstride): a thread per element */
template <class T>
static __global__ void lora_expand_kernel(T *out, int ldo, const float *t, const float *w, int jstride, int kstride,
                                          float scale, int N, int OC, int r)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * OC) return;
    const int n = (int)(i / OC), j = (int)(i % OC);
    const float *tn = t + (size_t)n * r;
    float s = 0.0f;
    for (int k = 0; k < r; k++) s += tn[k] * w[(size_t)j * jstride + (size_t)k * kstride];
    const size_t o = (size_t)n * ldo + j;
    act_st(out, o, act_ld(out, o) + scale * s);
}

/* g(j*r + k) += scale * sum_n x(n*ldx + j) t(n,k), j < M: a thread per element, rows in order */
template <class T>
static __global__ void lora_wgrad_kernel(float *g, const T *x, int ldx, const float *t, float scale, int N, int M,
                                         int r, int transpose)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * r) return;
    /* dB (OC, r): j = i / r, k = i % r; dA (r, C) (transpose): k = i / M, j = i % M (coalesced over j) */
    const int j = transpose ? (int)(i % M) : (int)(i / r), k = transpose ? (int)(i / M) : (int)(i % r);
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += act_ld(x, (size_t)n * ldx + j) * t[(size_t)n * r + k];
    g[transpose ? (size_t)k * M + j : (size_t)j * r + k] += scale * s;
}

template <class T>
static __global__ void dropout_kernel(T *out, const T *inp, size_t n, float p, uint64_t seed, int accumulate)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = zinc_dropout_keep(seed, i, p) ? act_ld(inp, i) / (1.0f - p) : 0.0f;
    if (accumulate)
        act_st(out, i, act_ld(out, i) + v);
    else
        act_st(out, i, v);
}

template <class A>
void cuda_lora_down(float *t, const void *inp, int ldi, const float *Aw, int N, int C, int r)
{
    assert(t && inp && Aw && N >= 0 && C > 0 && r > 0 && ldi >= C);
    if (N == 0) return;
    lora_rows_kernel<A><<<lo_blocks((size_t)N, LO_WARPS), LO_WARPS * 32>>>(t, (const A *)inp, ldi, Aw, C, 1, 1.0f, N,
                                                                            C, r);
    LAUNCH_TRY(lora_rows_kernel);
cleanup:
    return;
}

template <class A>
void cuda_lora_up(void *out, int ldo, const float *t, const float *Bw, float s, int N, int OC, int r)
{
    assert(out && t && Bw && N >= 0 && OC > 0 && r > 0 && ldo >= OC);
    if (N == 0) return;
    lora_expand_kernel<A><<<lo_blocks((size_t)N * OC, LO_THREADS), LO_THREADS>>>((A *)out, ldo, t, Bw, r, 1, s, N,
                                                                                  OC, r);
    LAUNCH_TRY(lora_expand_kernel);
cleanup:
    return;
}

template <class A>
void cuda_lora_grad_up(float *dB, float *dt, const void *dout, int ldo, const float *t, const float *Bw, float s,
                       int N, int OC, int r)
{
    assert(dB && dt && dout && t && Bw && N >= 0 && OC > 0 && r > 0 && ldo >= OC);
    if (N == 0) return;
    /* dt(n,k) = s sum_j dout(n,j) B(j,k) */
    lora_rows_kernel<A><<<lo_blocks((size_t)N, LO_WARPS), LO_WARPS * 32>>>(dt, (const A *)dout, ldo, Bw, 1, r, s, N,
                                                                            OC, r);
    LAUNCH_TRY(lora_rows_kernel);
    lora_wgrad_kernel<A><<<lo_blocks((size_t)OC * r, LO_THREADS), LO_THREADS>>>(dB, (const A *)dout, ldo, t, s, N,
                                                                                 OC, r, 0);
    LAUNCH_TRY(lora_wgrad_kernel);
cleanup:
    return;
}

template <class A>
void cuda_lora_grad_down(void *dinp, float *dA, const float *dt, const void *inp, int ldi, const float *Aw, int N,
                         int C, int r)
{
    assert(dt && Aw && (!dA || inp) && N >= 0 && C > 0 && r > 0 && ldi >= C);
    if (N == 0) return;
    if (dA) {
        lora_wgrad_kernel<A><<<lo_blocks((size_t)C * r, LO_THREADS), LO_THREADS>>>(dA, (const A *)inp, ldi, dt, 1.0f,
                                                                                    N, C, r, 1);
        LAUNCH_TRY(lora_wgrad_kernel);
    }
    if (dinp) { /* dinp(n,c) += sum_k dt(n,k) A(k,c) */
        lora_expand_kernel<A><<<lo_blocks((size_t)N * C, LO_THREADS), LO_THREADS>>>((A *)dinp, ldi, dt, Aw, 1, C,
                                                                                     1.0f, N, C, r);
        LAUNCH_TRY(lora_expand_kernel);
    }
cleanup:
    return;
}

template <class A>
void cuda_dropout_forward(void *out, const void *inp, size_t n, float p, uint64_t seed)
{
    assert(out && inp && p >= 0.0f && p < 1.0f);
    if (n == 0) return;
    dropout_kernel<A><<<lo_blocks(n, LO_THREADS), LO_THREADS>>>((A *)out, (const A *)inp, n, p, seed, 0);
    LAUNCH_TRY(dropout_kernel);
cleanup:
    return;
}

template <class A>
void cuda_dropout_backward(void *dinp, const void *dout, size_t n, float p, uint64_t seed)
{
    assert(dinp && dout && p >= 0.0f && p < 1.0f);
    if (n == 0) return;
    dropout_kernel<A><<<lo_blocks(n, LO_THREADS), LO_THREADS>>>((A *)dinp, (const A *)dout, n, p, seed, 1);
    LAUNCH_TRY(dropout_kernel);
cleanup:
    return;
}

#define LORA_INST(A)                                                                                           \
    template void cuda_lora_down<A>(float *, const void *, int, const float *, int, int, int);                \
    template void cuda_lora_up<A>(void *, int, const float *, const float *, float, int, int, int);            \
    template void cuda_lora_grad_up<A>(float *, float *, const void *, int, const float *, const float *,     \
                                       float, int, int, int);                                                  \
    template void cuda_lora_grad_down<A>(void *, float *, const float *, const void *, int, const float *, int, \
                                         int, int);                                                            \
    template void cuda_dropout_forward<A>(void *, const void *, size_t, float, uint64_t);                      \
    template void cuda_dropout_backward<A>(void *, const void *, size_t, float, uint64_t);
LORA_INST(float)
LORA_INST(bf16)
