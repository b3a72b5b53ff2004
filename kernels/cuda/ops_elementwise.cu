/* ops_elementwise.cu - the elementwise act ops of both tables: GELU
 * forward and backward (and gelu' times a gradient, for the fused linear +
 * GELU backward of ops_matmul.cu) and the residual add, each an op struct
 * run by the vectorized launcher of cuda_int.h. */

/* Elementwise ops that the CPU writes without FMA (adamw, residual, scale)
 * use explicitly rounded intrinsics, so they match the CPU bitwise. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_CUBE 0.044715f

/* ------------------------------------------------------------------ */
/* elementwise                                                         */
/* ------------------------------------------------------------------ */

/* tanh(u) = 1 - 2 / (exp(2u) + 1), the CPU reference's form. */
__device__ __forceinline__ float gelu_tanh(float u)
{
    return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
}

/* gelu(x), the CPU reference's expression. */
__device__ __forceinline__ float gelu_fwd1(float x)
{
    const float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
    return 0.5f * x * (1.0f + gelu_tanh(u));
}

/* acc + gelu'(x) d, the expression of dinp[i] += gr * dout[i]. */
__device__ __forceinline__ float gelu_bwd1(float x, float d, float acc)
{
    const float x2 = x * x;
    const float u = GELU_SCALE * (x + GELU_CUBE * x2 * x);
    const float th = gelu_tanh(u);
    const float sech2 = 1.0f - th * th;
    const float gr = 0.5f * (1.0f + th) +
                     0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x2);
    return acc + gr * d;
}

template <class T>
struct gelu_fwd_op {
    static constexpr int W = ACT_VW(T);
    T *out;
    const T *inp;
    __device__ void one(size_t i) const { act_st(out, i, gelu_fwd1(act_ld(inp, i))); }
    __device__ void vec(size_t i) const
    {
        float x[W];
        act_ldv(inp + i, x);
#pragma unroll
        for (int u = 0; u < W; u++)
            x[u] = gelu_fwd1(x[u]);
        act_stv(out + i, x);
    }
};

template <class T>
struct gelu_bwd_op {
    static constexpr int W = ACT_VW(T);
    T *dinp;
    const T *inp, *dout;
    __device__ void one(size_t i) const
    {
        act_st(dinp, i, gelu_bwd1(act_ld(inp, i), act_ld(dout, i), act_ld(dinp, i)));
    }
    __device__ void vec(size_t i) const
    {
        float x[W], d[W], a[W];
        act_ldv(inp + i, x);
        act_ldv(dout + i, d);
        act_ldv(dinp + i, a);
#pragma unroll
        for (int u = 0; u < W; u++)
            a[u] = gelu_bwd1(x[u], d[u], a[u]);
        act_stv(dinp + i, a);
    }
};

/* d = gelu'(pre) d, in place (the fused linear + GELU backward's fallback). */
template <class T>
struct gelu_grad_mul_op {
    static constexpr int W = ACT_VW(T);
    T *d;
    const T *pre;
    __device__ void one(size_t i) const
    {
        act_st(d, i, gelu_bwd1(act_ld(pre, i), act_ld(d, i), 0.0f));
    }
    __device__ void vec(size_t i) const
    {
        float x[W], g[W];
        act_ldv(pre + i, x);
        act_ldv(d + i, g);
#pragma unroll
        for (int u = 0; u < W; u++)
            g[u] = gelu_bwd1(x[u], g[u], 0.0f);
        act_stv(d + i, g);
    }
};

/* out may alias a or b: each element is read before it is written. */
template <class T>
struct residual_op {
    static constexpr int W = ACT_VW(T);
    T *out;
    const T *a, *b;
    __device__ void one(size_t i) const { act_st(out, i, __fadd_rn(act_ld(a, i), act_ld(b, i))); }
    __device__ void vec(size_t i) const
    {
        float x[W], y[W];
        act_ldv(a + i, x);
        act_ldv(b + i, y);
#pragma unroll
        for (int u = 0; u < W; u++)
            x[u] = __fadd_rn(x[u], y[u]);
        act_stv(out + i, x);
    }
};

/* ------------------------------------------------------------------ */
/* GELU, residual                                                      */
/* ------------------------------------------------------------------ */

/* Runs the elementwise act op over n elements of the act tensors ptrs
 * (all of type A), with the vector plan their alignment allows; a failed
 * launch is recorded under name. */
template <class A, class Op, class... P>
static void act_ew(const char *name, const Op &op, size_t n, P... ptrs)
{
    const void *p[] = {ptrs...};
    unsigned esz[sizeof...(P)];
    cudaError_t e;
    for (unsigned &x : esz)
        x = sizeof(A);
    if (n == 0)
        return;
    ew_launch(op, cuda_ew_plan(n, p, esz, (int)sizeof...(P), Op::W));
    e = cudaGetLastError();
    if (e != cudaSuccess)
        cuda_fail(ZINC_ERR_CUDA, name, __FILE__, __LINE__, cudaGetErrorString(e));
}

template <class A>
void cuda_gelu_forward(void *out, const void *inp, size_t n)
{
    assert(out && inp);
    act_ew<A>("launch gelu_forward", gelu_fwd_op<A>{(A *)out, (const A *)inp}, n, out, inp);
}

template <class A>
void cuda_gelu_backward(void *dinp, const void *inp, const void *dout, size_t n)
{
    assert(dinp && inp && dout);
    act_ew<A>("launch gelu_backward", gelu_bwd_op<A>{(A *)dinp, (const A *)inp, (const A *)dout},
              n, dinp, inp, dout);
}

template <class A>
void cuda_gelu_grad_mul(void *d, const void *pre, size_t n)
{
    act_ew<A>("launch gelu_grad_mul", gelu_grad_mul_op<A>{(A *)d, (const A *)pre}, n, d, pre);
}

template <class A>
void cuda_residual_forward(void *out, const void *a, const void *b, size_t n)
{
    assert(out && a && b);
    act_ew<A>("launch residual_forward", residual_op<A>{(A *)out, (const A *)a, (const A *)b}, n,
              out, a, b);
}

/* The tables' two act types (ops_tables.cu, ops_matmul.cu). */
template void cuda_gelu_forward<float>(void *, const void *, size_t);
template void cuda_gelu_forward<bf16>(void *, const void *, size_t);
template void cuda_gelu_backward<float>(void *, const void *, const void *, size_t);
template void cuda_gelu_backward<bf16>(void *, const void *, const void *, size_t);
template void cuda_gelu_grad_mul<float>(void *, const void *, size_t);
template void cuda_gelu_grad_mul<bf16>(void *, const void *, size_t);
template void cuda_residual_forward<float>(void *, const void *, const void *, size_t);
template void cuda_residual_forward<bf16>(void *, const void *, const void *, size_t);
