/* ops_cpu.c - the CPU op table: dense algebra through OpenBLAS, elementwise
 * ops in C + OpenMP (the optimizer: adamw_cpu.c).
 *
 * Matrix products go straight to cblas_sgemm with the transposes expressed
 * as flags and leading dimensions (no copies); bias add and bias-gradient
 * reductions are plain C. Elementwise loops are written so that gcc
 * vectorizes them at -O2 -march=native (contiguous, no calls but inlined
 * helpers), and split over OpenMP threads only above CPU_PAR_MIN elements.
 * Every reduction has a fixed order that does not depend on the thread
 * count, so results are bitwise reproducible run to run and across thread
 * counts (OpenBLAS itself is reproducible for a fixed thread count). */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cblas.h>

#include "zinc/ops.h"
#include "cpu_int.h"

/* c(m,n) = alpha op(a) op(b) + beta c, all row-major. */
void cpu_matmul(float *c, const float *a, const float *b, int m, int n, int k,
                int trans_a, int trans_b, float alpha, float beta)
{
    assert(c && a && b && m >= 0 && n >= 0 && k >= 0);
    if (m == 0 || n == 0)
        return;
    /* Stored shapes: a (m,k) or (k,m); b (k,n) or (n,k). */
    const int lda = trans_a ? m : k;
    const int ldb = trans_b ? k : n;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda > 0 ? lda : 1,
                b, ldb > 0 ? ldb : 1, beta, c, n);
}

/* out(N,OC) = inp(N,C) @ W + bias(OC), W = weight(C,OC) (tw 0) or weight(OC,C)^T (tw 1).
 * With a bias the rows of out are first filled with it and sgemm accumulates (beta = 1):
 * one pass over out instead of sgemm's store plus a read-modify-write. */
static void linear_fwd(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC,
                       int tw)
{
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0)
        return;
    if (bias) {
        #pragma omp parallel for schedule(static) if ((size_t)N * OC >= CPU_PAR_MIN)
        for (int i = 0; i < N; i++) {
            float *restrict o = out + (size_t)i * OC;
            for (int j = 0; j < OC; j++)
                o[j] = bias[j];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tw ? CblasTrans : CblasNoTrans, N, OC, C, 1.0f, inp, C, weight,
                tw ? C : OC, bias ? 1.0f : 0.0f, out, OC);
}

void cpu_linear_forward(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int C, int OC)
{
    linear_fwd(out, inp, weight, bias, N, C, OC, 0);
}

void cpu_linear_t_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    linear_fwd(out, inp, weight, bias, N, C, OC, 1);
}

/* dst(C) += column sums of src(N,C), src f32 or bf16. Columns are split
 * in blocks of 64; each block sums its rows in order into a local fp32
 * accumulator, so the result is the same for any thread count (and a bf16
 * src gives bitwise the sums of its widened copy). */
static void colsum_acc(float *dst, const void *src, zinc_dtype dt, int N, int C)
{
    enum { BLK = 64 };
    const int nblk = (C + BLK - 1) / BLK;
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= CPU_PAR_MIN)
    for (int bi = 0; bi < nblk; bi++) {
        const int c0 = bi * BLK;
        const int cw = C - c0 < BLK ? C - c0 : BLK;
        float acc[BLK] = {0};
        for (int i = 0; i < N; i++) {
            if (dt == ZINC_DTYPE_BF16) {
                const uint16_t *restrict row = (const uint16_t *)src + (size_t)i * C + c0;
                #pragma omp simd
                for (int j = 0; j < cw; j++)
                    acc[j] += zinc_bf16_to_f32(row[j]);
            } else {
                const float *restrict row = (const float *)src + (size_t)i * C + c0;
                #pragma omp simd
                for (int j = 0; j < cw; j++)
                    acc[j] += row[j];
            }
        }
        for (int j = 0; j < cw; j++)
            dst[c0 + j] += acc[j];
    }
}

void cpu_colsum_acc(float *dst, const float *src, int N, int C)
{
    colsum_acc(dst, src, ZINC_DTYPE_F32, N, C);
}

void cpu_colsum_acc_bf16(float *dst, const uint16_t *src, int N, int C)
{
    colsum_acc(dst, src, ZINC_DTYPE_BF16, N, C);
}

/* dinp(N,C) += dout(N,OC) @ W^T; dW += inp^T @ dout, W as linear_fwd's (tw 1: dweight(OC,C)
 * += dout^T @ inp); dbias(OC) += column sums of dout. */
static void linear_bwd(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                       const float *weight, int N, int C, int OC, int tw)
{
    assert(dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0)
        return;
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tw ? CblasNoTrans : CblasTrans, N, C, OC, 1.0f, dout, OC,
                    weight, tw ? C : OC, 1.0f, dinp, C);
    if (!dweight) /* a frozen weight: no gradient */
        ;
    else if (tw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f, dweight, OC);
    if (dbias)
        cpu_colsum_acc(dbias, dout, N, OC);
}

void cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int C, int OC)
{
    linear_bwd(dinp, dweight, dbias, dout, inp, weight, N, C, OC, 0);
}

void cpu_linear_t_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                           const float *weight, int N, int C, int OC)
{
    linear_bwd(dinp, dweight, dbias, dout, inp, weight, N, C, OC, 1);
}

/* out = gelu(inp) (cpu_gelu: the tanh form, as GPT-2). */
void cpu_gelu_forward(float *out, const float *inp, size_t n)
{
    assert(out && inp);
    #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = cpu_gelu(inp[i]);
}

/* dinp += gelu'(inp) * dout. */
void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    assert(dinp && inp && dout);
    #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dinp[i] += cpu_gelu_grad(inp[i]) * dout[i];
}

/* out = gelu(pre) with pre = inp @ weight + bias (kept when pre is not NULL). */
void cpu_linear_gelu_forward(float *out, float *pre, const float *inp, const float *weight,
                             const float *bias, int N, int C, int OC)
{
    float *p = pre ? pre : out; /* gelu_forward is elementwise: in place is fine */
    cpu_linear_forward(p, inp, weight, bias, N, C, OC);
    cpu_gelu_forward(out, p, (size_t)N * OC);
}

/* dpre = (dout @ weight^T) * gelu'(pre), written; dweight, dbias accumulate. */
void cpu_linear_gelu_backward(float *dpre, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *pre, const float *weight, int N,
                              int C, int OC)
{
    const size_t n = (size_t)N * C;
    cpu_zero(dpre, n * sizeof(float));
    cpu_linear_backward(dpre, dweight, dbias, dout, inp, weight, N, C, OC);
    #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dpre[i] *= cpu_gelu_grad(pre[i]);
}

/* out = a + b; out may alias a or b (same index only, so no restrict). */
void cpu_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    assert(out && a && b);
    #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* Sum (or sum of squares) in double. The range is cut into at most
 * SUM_CHUNKS chunks whose bounds depend only on n; chunk sums are added in
 * order, so the result does not depend on the thread count. */
double cpu_sum_impl(const float *x, size_t n, int square)
{
    enum { SUM_CHUNKS = 256, SUM_MIN_CHUNK = 8192 };
    assert(x || n == 0);
    size_t chunk = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
    if (chunk < SUM_MIN_CHUNK)
        chunk = SUM_MIN_CHUNK;
    const int nchunks = (int)((n + chunk - 1) / chunk);
    double part[SUM_CHUNKS];
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (int ci = 0; ci < nchunks; ci++) {
        const size_t lo = (size_t)ci * chunk;
        const size_t hi = lo + chunk < n ? lo + chunk : n;
        double s = 0.0;
        if (square) {
            #pragma omp simd reduction(+ : s)
            for (size_t i = lo; i < hi; i++)
                s += (double)x[i] * (double)x[i];
        } else {
            #pragma omp simd reduction(+ : s)
            for (size_t i = lo; i < hi; i++)
                s += (double)x[i];
        }
        part[ci] = s;
    }
    double total = 0.0;
    for (int ci = 0; ci < nchunks; ci++)
        total += part[ci];
    return total;
}

double cpu_sumsq(const float *x, size_t n)
{
    return cpu_sum_impl(x, n, 1);
}

/* x *= s. */
void cpu_scale(float *x, float s, size_t n)
{
    assert(x || n == 0);
    #pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}
