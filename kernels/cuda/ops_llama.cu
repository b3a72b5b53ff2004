/* ops_llama.cu - the Llama-family layer ops of both tables (zinc/ops.h):
 * RMSNorm (one warp per row; the weight gradient as column sums, one thread
 * per column walking the rows in order, so the bits do not depend on the
 * launch), rotary embeddings in place (one thread per rotated pair) and
 * SwiGLU (elementwise), and fill_cols (the padded vocabulary's logits). First versions: correct and deterministic; the
 * RMSNorm weight gradient has only C threads and is the one to widen (the
 * two-pass column sums of ops_colsum.cu) when it shows in a profile. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

enum { LL_WARPS = 8, LL_THREADS = 256 };

template <class T>
static __global__ void __launch_bounds__(LL_WARPS * 32)
    rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const float *weight, float eps, int N, int C)
{
    const int lane = threadIdx.x % 32, row = blockIdx.x * LL_WARPS + threadIdx.x / 32;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C;
    T *o = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float v = act_ld(x, c);
        s += v * v;
    }
    const float rs = 1.0f / sqrtf(warp_sum(s) / (float)C + eps);
    for (int c = lane; c < C; c += 32) act_st(o, c, act_ld(x, c) * rs * weight[c]);
    if (lane == 0) rstd[row] = rs;
}

template <class T>
static __global__ void __launch_bounds__(LL_WARPS * 32)
    rmsnorm_dinp_kernel(T *dinp, const T *dout, const T *inp, const float *weight, const float *rstd, int N, int C)
{
    const int lane = threadIdx.x % 32, row = blockIdx.x * LL_WARPS + threadIdx.x / 32;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C, *dy = dout + (size_t)row * C;
    T *dx = dinp + (size_t)row * C;
    const float rs = rstd[row];
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += weight[c] * act_ld(dy, c) * act_ld(x, c) * rs;
    const float m = warp_sum(s) / (float)C;
    for (int c = lane; c < C; c += 32) {
        const float xv = act_ld(x, c);
        act_st(dx, c, act_ld(dx, c) + (weight[c] * act_ld(dy, c) - xv * rs * m) * rs);
    }
}

template <class T>
static __global__ void rmsnorm_dweight_kernel(float *dweight, const T *dout, const T *inp, const float *rstd, int N,
                                              int C)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int i = 0; i < N; i++) acc += act_ld(inp, (size_t)i * C + c) * rstd[i] * act_ld(dout, (size_t)i * C + c);
    dweight[c] += acc;
}

template <class T>
static __global__ void rope_kernel(T *x, int N, int stride, int n_heads, int HS, int T_, const int32_t *pos,
                                   const float *cos_t, const float *sin_t, float sg)
{
    const int H = HS / 2;
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x, n = (size_t)N * n_heads * H;
    if (k >= n) return;
    const int i = (int)(k % H), h = (int)(k / H % n_heads), r = (int)(k / ((size_t)H * n_heads));
    const int p = pos ? pos[r] : r % T_;
    T *a = x + (size_t)r * stride + (size_t)h * HS;
    const float x1 = act_ld(a, i), x2 = act_ld(a, i + H);
    const float co = cos_t[(size_t)p * H + i], s = sg * sin_t[(size_t)p * H + i];
    act_st(a, i, x1 * co - x2 * s);
    act_st(a, i + H, x2 * co + x1 * s);
}

template <class T>
static __global__ void swiglu_forward_kernel(T *out, const T *gu, int N, int F)
{
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)N * F) return;
    const size_t r = k / F, i = k % F;
    const float g = act_ld(gu, r * 2 * F + i), u = act_ld(gu, r * 2 * F + F + i);
    const float sg = 1.0f / (1.0f + expf(-g));
    act_st(out, k, g * sg * u);
}

template <class T>
static __global__ void swiglu_backward_kernel(T *dgu, const T *dout, const T *gu, int N, int F)
{
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)N * F) return;
    const size_t r = k / F, i = k % F, gi = r * 2 * F + i, ui = gi + F;
    const float g = act_ld(gu, gi), u = act_ld(gu, ui), dy = act_ld(dout, k);
    const float sg = 1.0f / (1.0f + expf(-g));
    act_st(dgu, gi, act_ld(dgu, gi) + dy * u * sg * (1.0f + g * (1.0f - sg)));
    act_st(dgu, ui, act_ld(dgu, ui) + dy * g * sg);
}

template <class T>
static __global__ void fill_cols_kernel(T *x, int N, int ld, int c0, int w, float v)
{
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)N * w) return;
    act_st(x, (k / w) * ld + c0 + k % w, v);
}

static unsigned blocks_of(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }

template <class A>
void cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const float *weight, float eps, int N, int C)
{
    assert(out && rstd && inp && weight && N >= 0 && C > 0);
    if (N == 0) return;
    rmsnorm_forward_kernel<A><<<blocks_of((size_t)N, LL_WARPS), LL_WARPS * 32>>>((A *)out, rstd, (const A *)inp,
                                                                                weight, eps, N, C);
    LAUNCH_TRY(rmsnorm_forward_kernel);
cleanup:
    return;
}

template <class A>
void cuda_rmsnorm_backward(void *dinp, float *dweight, const void *dout, const void *inp, const float *weight,
                           const float *rstd, int N, int C)
{
    assert(dinp && dout && inp && weight && rstd && N >= 0 && C > 0);
    if (N == 0) return;
    rmsnorm_dinp_kernel<A><<<blocks_of((size_t)N, LL_WARPS), LL_WARPS * 32>>>(
        (A *)dinp, (const A *)dout, (const A *)inp, weight, rstd, N, C);
    LAUNCH_TRY(rmsnorm_dinp_kernel);
    if (!dweight) return; /* a frozen weight */
    rmsnorm_dweight_kernel<A><<<blocks_of((size_t)C, LL_THREADS), LL_THREADS>>>(dweight, (const A *)dout,
                                                                               (const A *)inp, rstd, N, C);
    LAUNCH_TRY(rmsnorm_dweight_kernel);
cleanup:
    return;
}

template <class A>
void cuda_rope(void *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
               const float *sin_t, int dir)
{
    assert(x && cos_t && sin_t && N >= 0 && n_heads >= 0 && HS > 0 && HS % 2 == 0 && T > 0);
    assert(stride >= n_heads * HS && (dir == 1 || dir == -1));
    const size_t n = (size_t)N * n_heads * (HS / 2);
    if (n == 0) return;
    rope_kernel<A><<<blocks_of(n, LL_THREADS), LL_THREADS>>>((A *)x, N, stride, n_heads, HS, T, pos, cos_t, sin_t,
                                                             (float)dir);
    LAUNCH_TRY(rope_kernel);
cleanup:
    return;
}

template <class A>
void cuda_swiglu_forward(void *out, const void *gu, int N, int F)
{
    assert(out && gu && N >= 0 && F > 0);
    const size_t n = (size_t)N * F;
    if (n == 0) return;
    swiglu_forward_kernel<A><<<blocks_of(n, LL_THREADS), LL_THREADS>>>((A *)out, (const A *)gu, N, F);
    LAUNCH_TRY(swiglu_forward_kernel);
cleanup:
    return;
}

template <class A>
void cuda_swiglu_backward(void *dgu, const void *dout, const void *gu, int N, int F)
{
    assert(dgu && dout && gu && N >= 0 && F > 0);
    const size_t n = (size_t)N * F;
    if (n == 0) return;
    swiglu_backward_kernel<A><<<blocks_of(n, LL_THREADS), LL_THREADS>>>((A *)dgu, (const A *)dout, (const A *)gu,
                                                                        N, F);
    LAUNCH_TRY(swiglu_backward_kernel);
cleanup:
    return;
}

template <class A>
void cuda_fill_cols(void *x, int N, int ld, int c0, int c1, float v)
{
    assert(x && N >= 0 && ld > 0 && c0 >= 0 && c0 <= c1 && c1 <= ld);
    const size_t n = (size_t)N * (c1 - c0);
    if (n == 0) return;
    fill_cols_kernel<A><<<blocks_of(n, LL_THREADS), LL_THREADS>>>((A *)x, N, ld, c0, c1 - c0, v);
    LAUNCH_TRY(fill_cols_kernel);
cleanup:
    return;
}

/* The tables' two act types (ops_tables.cu). */
#define LLAMA_INST(A)                                                                                      \
    template void cuda_rmsnorm_forward<A>(void *, float *, const void *, const float *, float, int, int);   \
    template void cuda_rmsnorm_backward<A>(void *, float *, const void *, const void *, const float *,      \
                                           const float *, int, int);                                      \
    template void cuda_rope<A>(void *, int, int, int, int, int, const int32_t *, const float *, const float *, \
                               int);                                                                      \
    template void cuda_swiglu_forward<A>(void *, const void *, int, int);                                  \
    template void cuda_swiglu_backward<A>(void *, const void *, const void *, int, int);                   \
    template void cuda_fill_cols<A>(void *, int, int, int, int, float);
LLAMA_INST(float)
LLAMA_INST(bf16)
