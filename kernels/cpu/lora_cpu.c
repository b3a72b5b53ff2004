/* lora_cpu.c - LoRA's low-rank path (four ops: down, up and their gradients) and the
 * dropout on its input (zinc/ops.h), for both
 * CPU tables: one set of loops over act elements read and written through the table's
 * act type (bf16: widened on load, rounded once on store), fp32 everywhere else. The rank
 * act-f32 table hands the products to sgemm (strides as lda / ldc); the act-bf16 table's
 * are loops, each row (or column) one thread's, the sums in a fixed order (the bits do not
 * depend on the thread count), r being small (4..64). */
#include <assert.h>
#include <stdint.h>

#include <cblas.h>
#include <omp.h>

#include "zinc/ops.h"
#include "cpu_int.h"

static inline float ld_act(const void *p, size_t i, int bf16)
{
    return bf16 ? zinc_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void st_act(void *p, size_t i, float v, int bf16)
{
    if (bf16)
        ((uint16_t *)p)[i] = zinc_f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

void cpu_lora_down(int bf16, float *t, const void *inp, int ldi, const float *A, int N, int C, int r)
{
    assert(t && inp && A && N >= 0 && C > 0 && r > 0 && ldi >= C);
    if (!bf16) { /* t = inp A^T */
        if (N > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, C, 1.0f, inp, ldi, A, C, 0.0f, t, r);
        return;
    }
    #pragma omp parallel for schedule(static) if ((size_t)N * C * r >= CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const size_t xi = (size_t)n * ldi;
        for (int k = 0; k < r; k++) {
            const float *a = A + (size_t)k * C;
            float acc = 0.0f;
            for (int c = 0; c < C; c++) acc += ld_act(inp, xi + c, bf16) * a[c];
            t[(size_t)n * r + k] = acc;
        }
    }
}

void cpu_lora_up(int bf16, void *out, int ldo, const float *t, const float *B, float s, int N, int OC, int r)
{
    assert(out && t && B && N >= 0 && OC > 0 && r > 0 && ldo >= OC);
    if (!bf16) { /* out += s t B^T */
        if (N > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, r, s, t, r, B, r, 1.0f, out, ldo);
        return;
    }
    #pragma omp parallel for schedule(static) if ((size_t)N * OC * r >= CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *tn = t + (size_t)n * r;
        const size_t oi = (size_t)n * ldo;
        for (int j = 0; j < OC; j++) {
            const float *b = B + (size_t)j * r;
            float acc = 0.0f;
            for (int k = 0; k < r; k++) acc += tn[k] * b[k];
            st_act(out, oi + j, ld_act(out, oi + j, bf16) + s * acc, bf16);
        }
    }
}

void cpu_lora_grad_up(int bf16, float *dB, float *dt, const void *dout, int ldo, const float *t, const float *B,
                      float s, int N, int OC, int r)
{
    assert(dB && dt && dout && t && B && N >= 0 && OC > 0 && r > 0 && ldo >= OC);
    if (!bf16) { /* dt = s dout B; dB += s dout^T t */
        if (N == 0) return;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, OC, s, dout, ldo, B, r, 0.0f, dt, r);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, r, N, s, dout, ldo, t, r, 1.0f, dB, r);
        return;
    }
    const int par = (size_t)N * OC * r >= CPU_PAR_MIN;
    /* dt = s dout B: per row */
    #pragma omp parallel for schedule(static) if (par)
    for (int n = 0; n < N; n++) {
        const size_t oi = (size_t)n * ldo;
        float *d = dt + (size_t)n * r;
        for (int k = 0; k < r; k++) d[k] = 0.0f;
        for (int j = 0; j < OC; j++) {
            const float g = ld_act(dout, oi + j, bf16);
            const float *b = B + (size_t)j * r;
            for (int k = 0; k < r; k++) d[k] += g * b[k];
        }
        for (int k = 0; k < r; k++) d[k] *= s;
    }
    /* dB(j,k) += s sum_n dout(n,j) t(n,k): per output column, rows in order */
    #pragma omp parallel for schedule(static) if (par)
    for (int j = 0; j < OC; j++) {
        float acc[64];
        for (int k0 = 0; k0 < r; k0 += 64) {
            const int kn = r - k0 < 64 ? r - k0 : 64;
            for (int k = 0; k < kn; k++) acc[k] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float g = ld_act(dout, (size_t)n * ldo + j, bf16);
                const float *tn = t + (size_t)n * r + k0;
                for (int k = 0; k < kn; k++) acc[k] += g * tn[k];
            }
            for (int k = 0; k < kn; k++) dB[(size_t)j * r + k0 + k] += s * acc[k];
        }
    }
}

void cpu_lora_grad_down(int bf16, void *dinp, float *dA, const float *dt, const void *inp, int ldi, const float *A,
                        int N, int C, int r)
{
    assert(dt && A && (!dA || inp) && N >= 0 && C > 0 && r > 0 && ldi >= C);
    if (!bf16) { /* dinp += dt A; dA += dt^T inp */
        if (N == 0) return;
        if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, r, 1.0f, dt, r, A, C, 1.0f, dinp, ldi);
        if (dA) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, C, N, 1.0f, dt, r, inp, ldi, 1.0f, dA, C);
        return;
    }
    const int par = (size_t)N * C * r >= CPU_PAR_MIN;
    /* dinp += dt A: per row */
    #pragma omp parallel for schedule(static) if (par)
    for (int n = 0; n < (dinp ? N : 0); n++) {
        const float *d = dt + (size_t)n * r;
        const size_t xi = (size_t)n * ldi;
        for (int c = 0; c < C; c++) {
            float acc = 0.0f;
            for (int k = 0; k < r; k++) acc += d[k] * A[(size_t)k * C + c];
            st_act(dinp, xi + c, ld_act(dinp, xi + c, bf16) + acc, bf16);
        }
    }
    /* dA(k,c) += sum_n dt(n,k) inp(n,c): per input column, rows in order */
    #pragma omp parallel for schedule(static) if (par)
    for (int c = 0; c < (dA ? C : 0); c++) {
        float acc[64];
        for (int k0 = 0; k0 < r; k0 += 64) {
            const int kn = r - k0 < 64 ? r - k0 : 64;
            for (int k = 0; k < kn; k++) acc[k] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float x = ld_act(inp, (size_t)n * ldi + c, bf16);
                const float *d = dt + (size_t)n * r + k0;
                for (int k = 0; k < kn; k++) acc[k] += d[k] * x;
            }
            for (int k = 0; k < kn; k++) dA[(size_t)(k0 + k) * C + c] += acc[k];
        }
    }
}

void cpu_dropout_forward(int bf16, void *out, const void *inp, size_t n, float p, uint64_t seed)
{
    assert(out && inp && p >= 0.0f && p < 1.0f);
    const float sc = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        st_act(out, i, zinc_dropout_keep(seed, i, p) ? ld_act(inp, i, bf16) * sc : 0.0f, bf16);
}

void cpu_dropout_backward(int bf16, void *dinp, const void *dout, size_t n, float p, uint64_t seed)
{
    assert(dinp && dout && p >= 0.0f && p < 1.0f);
    const float sc = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        if (zinc_dropout_keep(seed, i, p)) st_act(dinp, i, ld_act(dinp, i, bf16) + ld_act(dout, i, bf16) * sc, bf16);
}
