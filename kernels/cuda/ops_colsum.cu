/* ops_colsum.cu - the deterministic column sums of the backward ops: the
 * linear bias gradient (cuda_colsum_acc, ops_matmul.cu) and the layernorm
 * weight and bias gradients of rows too wide for the fused layernorm
 * backward kernel (cuda_colsum_ln_acc, ops_layernorm.cu). */

/* Column sums (bias, layernorm weight/bias gradients) are two-pass: row
 * chunks whose bounds depend only on N write partials to the scratch
 * buffer, then they are added in chunk order. layernorm_backward makes
 * its partials in the same pass as dinp (dout and inp read once). */
#include <stddef.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

enum {
    COLSUM_MAX_CHUNKS = 64,    /* row chunks of the two-pass column sums */
    COLSUM_MIN_ROWS = 64,      /* fewest rows per chunk */
};

/* ------------------------------------------------------------------ */
/* column sums (two passes, deterministic)                             */
/* ------------------------------------------------------------------ */

/* Rows per chunk for N rows; depends on N only, so the summation order
 * (hence the bits) is fixed for a shape. */
int cuda_colsum_rows_per_chunk(int N)
{
    int rpc = (N + COLSUM_MAX_CHUNKS - 1) / COLSUM_MAX_CHUNKS;
    return rpc < COLSUM_MIN_ROWS ? COLSUM_MIN_ROWS : rpc;
}

/* Pass 1. grid (ceil(C/32), nchunk), block (32, 8). part (Q, nchunk, C):
 * LN false: Q = 1, column sums of dout(N,C);
 * LN true:  Q = 2, sums of norm * dout (norm = (inp - mean) rstd) and of dout. */
template <bool LN, class T>
static __global__ void colsum_partial_kernel(float *part, const T *dout, const T *inp,
                                             const float *mean, const float *rstd, int N, int C,
                                             int rows_per_chunk)
{
    __shared__ float s0[8][33], s1[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(N, r0 + rows_per_chunk);
    float a0 = 0.0f, a1 = 0.0f;
    if (c < C) {
        for (int r = r0 + ty; r < r1; r += 8) {
            const float dy = act_ld(dout, (size_t)r * C + c);
            if (LN) {
                a0 += (act_ld(inp, (size_t)r * C + c) - mean[r]) * rstd[r] * dy;
                a1 += dy;
            } else {
                a0 += dy;
            }
        }
    }
    s0[ty][tx] = a0;
    s1[ty][tx] = a1;
    __syncthreads();
    if (ty == 0 && c < C) {
        float t0 = 0.0f, t1 = 0.0f;
        for (int y = 0; y < 8; y++) {
            t0 += s0[y][tx];
            t1 += s1[y][tx];
        }
        part[(size_t)blockIdx.y * C + c] = t0;
        if (LN)
            part[((size_t)gridDim.y + blockIdx.y) * C + c] = t1;
    }
}

/* Pass 2. dst(C) += sum over chunks of part(nchunk, C), chunks in order. */
static __global__ void colsum_finish_kernel(float *dst, const float *part, int nchunk, int C)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float s = 0.0f;
    for (int k = 0; k < nchunk; k++)
        s += part[(size_t)k * C + c];
    dst[c] += s;
}

/* Both passes over the N rows in chunks of rows_per_chunk: the partials
 * of Q = LN ? 2 : 1 sums into part (Q, nchunk, C), then dst0(C) (and, LN,
 * dst1(C)) += their sums over the chunks. Returns 0 after recording an
 * error. */
template <bool LN, class T>
static int colsum_passes(float *dst0, float *dst1, float *part, const T *dout, const T *inp,
                         const float *mean, const float *rstd, int N, int C, int rows_per_chunk)
{
    const int nchunk = (N + rows_per_chunk - 1) / rows_per_chunk;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunk), block(32, 8);
    int ok = 0;
    colsum_partial_kernel<LN, T><<<grid, block>>>(part, dout, inp, mean, rstd, N, C,
                                                  rows_per_chunk);
    LAUNCH_TRY(colsum_partial_kernel);
    colsum_finish_kernel<<<(C + 255) / 256, 256>>>(dst0, part, nchunk, C);
    LAUNCH_TRY(colsum_finish_kernel);
    if (LN) {
        colsum_finish_kernel<<<(C + 255) / 256, 256>>>(dst1, part + (size_t)nchunk * C, nchunk,
                                                       C);
        LAUNCH_TRY(colsum_finish_kernel);
    }
    ok = 1;
cleanup:
    return ok;
}

/* dst(C) += column sums of src(N,C) (act, read as T). Returns 0 after
 * recording an error. */
template <class T>
int cuda_colsum_acc(float *dst, const T *src, int N, int C)
{
    const int rpc = cuda_colsum_rows_per_chunk(N);
    const int nchunk = (N + rpc - 1) / rpc;
    float *part = (float *)cuda_scratch((size_t)nchunk * C * sizeof(float));
    if (!part)
        return 0;
    return colsum_passes<false, T>(dst, NULL, part, src, (const T *)NULL, NULL, NULL, N, C, rpc);
}

/* layernorm_backward's dweight(C) += column sums of norm * dout and
 * dbias(C) += those of dout, part (2, nchunk, C) taken by the caller from
 * the scratch. Returns 0 after recording an error. */
template <class T>
int cuda_colsum_ln_acc(float *dweight, float *dbias, float *part, const T *dout, const T *inp,
                       const float *mean, const float *rstd, int N, int C, int rows_per_chunk)
{
    return colsum_passes<true, T>(dweight, dbias, part, dout, inp, mean, rstd, N, C,
                                  rows_per_chunk);
}

/* The tables' two act types. */
template int cuda_colsum_acc<float>(float *, const float *, int, int);
template int cuda_colsum_acc<bf16>(float *, const bf16 *, int, int);
template int cuda_colsum_ln_acc<float>(float *, float *, float *, const float *, const float *,
                                       const float *, const float *, int, int, int);
template int cuda_colsum_ln_acc<bf16>(float *, float *, float *, const bf16 *, const bf16 *,
                                      const float *, const float *, int, int, int);
