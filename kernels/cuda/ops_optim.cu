/* ops_optim.cu - the optimizer-step ops of both tables: AdamW, the sum and
 * sum of squares (gradient norms, in double, reproducible) and the scale
 * (gradient clipping). */

/* sumsq: a fixed grid (size from n only) of double partials, then one
 * block adds them in a fixed tree. AdamW and scale use explicitly rounded
 * intrinsics (the CPU writes them without FMA), so they match the CPU
 * bitwise. */
#include <assert.h>
#include <math.h>
#include <stddef.h>

#include <cuda_runtime.h>

#include "cuda_int.h"

enum {
    SUMSQ_BLOCK = 256,
    SUMSQ_MAX_BLOCKS = 1024,
    SUMSQ_MIN_PER_BLOCK = 4096,
};

/* ------------------------------------------------------------------ */
/* optimizer, norms                                                    */
/* ------------------------------------------------------------------ */

struct scale_op {
    static constexpr int W = 4;
    float *x;
    float s;
    __device__ void one(size_t i) const { x[i] = __fmul_rn(x[i], s); }
    __device__ void vec(size_t i) const
    {
        const float4 v = ld_f4(x + i);
        st_f4(x + i, make_float4(__fmul_rn(v.x, s), __fmul_rn(v.y, s), __fmul_rn(v.z, s),
                                 __fmul_rn(v.w, s)));
    }
};

/* The CPU's AdamW, operation for operation (rounded intrinsics keep nvcc
 * from fusing multiply-adds the CPU does not fuse). */
static __global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float wd,
                             float ibc1, float ibc2)
{
    const float omb1 = __fsub_rn(1.0f, beta1), omb2 = __fsub_rn(1.0f, beta2);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float gi = grad[i];
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(omb1, gi));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(omb2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float p = param[i];
        const float den = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, ibc2)), eps);
        const float upd = __fadd_rn(__fdiv_rn(__fmul_rn(mi, ibc1), den), __fmul_rn(wd, p));
        param[i] = __fsub_rn(p, __fmul_rn(lr, upd));
    }
}

void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                float beta1, float beta2, float eps, float wd, int t)
{
    assert(param && grad && m && v && t >= 1);
    /* bias corrections folded into two scalars, computed as the CPU does */
    const float ibc1 = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    const float ibc2 = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    if (n == 0)
        return;
    adamw_kernel<<<cuda_ew_grid(n), EW_BLOCK>>>(param, grad, m, v, n, lr, beta1, beta2, eps, wd,
                                                ibc1, ibc2);
    LAUNCH_TRY(adamw_kernel);
cleanup:
    return;
}

/* Fixed tree over SUMSQ_BLOCK doubles in shared memory; result in sh[0]. */
static __device__ void block_sum_double(double *sh)
{
    for (int s = SUMSQ_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
}

/* Pass 1: block b sums x^2 over [b chunk, (b+1) chunk) into part[b]. */
template <bool SQUARE>
static __global__ void __launch_bounds__(SUMSQ_BLOCK)
    sumsq_partial_kernel(double *part, const float *x, size_t n, size_t chunk)
{
    __shared__ double sh[SUMSQ_BLOCK];
    const size_t lo = blockIdx.x * chunk;
    const size_t hi = lo + chunk < n ? lo + chunk : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += SUMSQ_BLOCK)
        s += SQUARE ? (double)x[i] * (double)x[i] : (double)x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    block_sum_double(sh);
    if (threadIdx.x == 0)
        part[blockIdx.x] = sh[0];
}

/* Pass 2: out[0] = sum of part[0..nparts), one block. */
static __global__ void __launch_bounds__(SUMSQ_BLOCK)
    sumsq_finish_kernel(double *out, const double *part, int nparts)
{
    __shared__ double sh[SUMSQ_BLOCK];
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += SUMSQ_BLOCK)
        s += part[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    block_sum_double(sh);
    if (threadIdx.x == 0)
        out[0] = sh[0];
}

/* sum x^2 in double; synchronizes (returns a host value). The grid depends
 * on n only, so the bits do too. Returns 0 after recording an error. */
template <bool SQUARE>
static double sum_impl(const float *x, size_t n)
{
    assert(x || n == 0);
    size_t nblk = (n + SUMSQ_MIN_PER_BLOCK - 1) / SUMSQ_MIN_PER_BLOCK;
    double result = 0.0;
    double *buf = NULL;
    size_t chunk;
    if (n == 0)
        return 0.0;
    if (nblk > SUMSQ_MAX_BLOCKS)
        nblk = SUMSQ_MAX_BLOCKS;
    chunk = (n + nblk - 1) / nblk;
    nblk = (n + chunk - 1) / chunk;
    if (!cuda_state_get())
        goto cleanup;
    buf = (double *)cuda_scratch((nblk + 1) * sizeof(double));
    if (!buf)
        goto cleanup;
    sumsq_partial_kernel<SQUARE><<<(unsigned)nblk, SUMSQ_BLOCK>>>(buf + 1, x, n, chunk);
    LAUNCH_TRY(sumsq_partial_kernel);
    sumsq_finish_kernel<<<1, SUMSQ_BLOCK>>>(buf, buf + 1, (int)nblk);
    LAUNCH_TRY(sumsq_finish_kernel);
    CUDA_TRY(cudaMemcpy(&result, buf, sizeof result, cudaMemcpyDeviceToHost));
cleanup:
    return result;
}

double cuda_sumsq(const float *x, size_t n) { return sum_impl<true>(x, n); }
double cuda_sum(const float *x, size_t n) { return sum_impl<false>(x, n); }

void cuda_scale(float *x, float s, size_t n)
{
    assert(x || n == 0);
    if (n == 0)
        return;
    {
        const void *p[1] = {x};
        const unsigned esz[1] = {4};
        ew_launch(scale_op{x, s}, cuda_ew_plan(n, p, esz, 1, scale_op::W));
    }
    LAUNCH_TRY(scale);
cleanup:
    return;
}
