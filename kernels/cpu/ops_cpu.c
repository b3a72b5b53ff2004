/* ops_cpu.c - the CPU op table: dense algebra through OpenBLAS, elementwise
 * ops and the optimizer in C + OpenMP.
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
#if defined(__AVX__)
#include <immintrin.h>
#endif

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

/* AdamW over elements [lo, hi). gcc will not vectorize sqrtf without
 * -fno-math-errno (not ours to set, and the optimize attribute does not
 * reach the errno lowering), and a scalar sqrt + divide makes this loop
 * compute-bound, so the body is written with x86 vector intrinsics where
 * the target has them. Vector and scalar code do the same IEEE operations
 * in the same order (no FMA), so results do not depend on which lanes an
 * element falls in. */
static void adamw_range(float *restrict p_, const float *restrict g_, float *restrict m_,
                        float *restrict v_, size_t lo, size_t hi, float lr, float beta1,
                        float beta2, float eps, float wd, float ibc1, float ibc2)
{
    const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
    size_t i = lo;
#if defined(__AVX512F__)
    const __m512 vb1 = _mm512_set1_ps(beta1), vb2 = _mm512_set1_ps(beta2);
    const __m512 vo1 = _mm512_set1_ps(omb1), vo2 = _mm512_set1_ps(omb2);
    const __m512 vlr = _mm512_set1_ps(lr), veps = _mm512_set1_ps(eps);
    const __m512 vwd = _mm512_set1_ps(wd), vi1 = _mm512_set1_ps(ibc1);
    const __m512 vi2 = _mm512_set1_ps(ibc2);
    for (; i + 16 <= hi; i += 16) {
        const __m512 g = _mm512_loadu_ps(g_ + i);
        const __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_loadu_ps(m_ + i)),
                                        _mm512_mul_ps(vo1, g));
        const __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_loadu_ps(v_ + i)),
                                        _mm512_mul_ps(_mm512_mul_ps(vo2, g), g));
        _mm512_storeu_ps(m_ + i, mi);
        _mm512_storeu_ps(v_ + i, vi);
        const __m512 p = _mm512_loadu_ps(p_ + i);
        const __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, vi2)), veps);
        const __m512 upd = _mm512_add_ps(_mm512_div_ps(_mm512_mul_ps(mi, vi1), den),
                                         _mm512_mul_ps(vwd, p));
        _mm512_storeu_ps(p_ + i, _mm512_sub_ps(p, _mm512_mul_ps(vlr, upd)));
    }
#elif defined(__AVX__)
    const __m256 vb1 = _mm256_set1_ps(beta1), vb2 = _mm256_set1_ps(beta2);
    const __m256 vo1 = _mm256_set1_ps(omb1), vo2 = _mm256_set1_ps(omb2);
    const __m256 vlr = _mm256_set1_ps(lr), veps = _mm256_set1_ps(eps);
    const __m256 vwd = _mm256_set1_ps(wd), vi1 = _mm256_set1_ps(ibc1);
    const __m256 vi2 = _mm256_set1_ps(ibc2);
    for (; i + 8 <= hi; i += 8) {
        const __m256 g = _mm256_loadu_ps(g_ + i);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m_ + i)),
                                        _mm256_mul_ps(vo1, g));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v_ + i)),
                                        _mm256_mul_ps(_mm256_mul_ps(vo2, g), g));
        _mm256_storeu_ps(m_ + i, mi);
        _mm256_storeu_ps(v_ + i, vi);
        const __m256 p = _mm256_loadu_ps(p_ + i);
        const __m256 den = _mm256_add_ps(_mm256_sqrt_ps(_mm256_mul_ps(vi, vi2)), veps);
        const __m256 upd = _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(mi, vi1), den),
                                         _mm256_mul_ps(vwd, p));
        _mm256_storeu_ps(p_ + i, _mm256_sub_ps(p, _mm256_mul_ps(vlr, upd)));
    }
#endif
    for (; i < hi; i++) {
        const float g = g_[i];
        const float mi = beta1 * m_[i] + omb1 * g;
        const float vi = beta2 * v_[i] + omb2 * g * g;
        m_[i] = mi;
        v_[i] = vi;
        const float p = p_[i];
        p_[i] = p - lr * (mi * ibc1 / (sqrtf(vi * ibc2) + eps) + wd * p);
    }
}

/* One fused, memory-bound pass over param, grad, m, v (28 bytes/element),
 * in blocks dealt statically to threads. Bias corrections are folded into
 * two scalars, leaving one sqrt and one division per element. */
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
               float beta1, float beta2, float eps, float wd, int t)
{
    enum { ADAM_BLK = 16384 };
    assert(param && grad && m && v && t >= 1);
    const float ibc1 = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    const float ibc2 = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    const size_t nblk = (n + ADAM_BLK - 1) / ADAM_BLK;
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t bi = 0; bi < nblk; bi++) {
        const size_t lo = bi * ADAM_BLK;
        const size_t hi = lo + ADAM_BLK < n ? lo + ADAM_BLK : n;
        adamw_range(param, grad, m, v, lo, hi, lr, beta1, beta2, eps, wd, ibc1, ibc2);
    }
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
