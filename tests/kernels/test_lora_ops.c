/* test_lora_ops.c - LoRA's ops of the CPU tables (lora_down / lora_up and their gradients
 * with strided rows, dropout_forward / dropout_backward) against a float64 reference written here and
 * central finite differences of L = sum(out * R) over the strided output columns; backward
 * ops are pre-filled to check that they accumulate, and the rows outside the strided
 * columns must come back untouched. The act-bf16 table is held to one bf16 rounding of
 * the fp32 table on the same inputs; the ops are bitwise the same on 1 and 2 threads;
 * the dropout mask keeps a fraction 1 - p and is the same in both passes; every backward
 * op takes NULL for a frozen parameter's gradient. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/ops.h"
#include "kref.h"
#include "../unit.h"

/* The adapter's forward and backward as the models compose them from the four ops. */
static void lora_fwd(const zinc_ops *o, void *out, int ldo, float *t, const void *inp, int ldi, const float *A,
                     const float *B, float s, int N, int C, int OC, int r)
{
    o->lora_down(t, inp, ldi, A, N, C, r);
    o->lora_up(out, ldo, t, B, s, N, OC, r);
}

static void lora_bwd(const zinc_ops *o, void *dinp, float *dA, float *dB, float *dt, const void *dout, int ldo,
                     const void *inp, int ldi, const float *t, const float *A, const float *B, float s, int N, int C,
                     int OC, int r)
{
    o->lora_grad_up(dB, dt, dout, ldo, t, B, s, N, OC, r);
    o->lora_grad_down(dinp, dA, dt, inp, ldi, A, N, C, r);
}

/* the shapes: N rows; inp (N, C) in rows ldi apart; out (N, OC) at column c0 of rows ldo apart */
enum { N = 7, C = 37, OC = 23, R = 5, LDI = 41, LDO = 30, C0 = 4 };

struct lora_ctx {
    double *x, *A, *B, *Rw; /* x (N, LDI); Rw (N, OC): the loss weights */
    double s;
};

/* y(N,OC) = s (x A^T) B^T in float64 */
static void ref_lora(double *y, double *t, const struct lora_ctx *c)
{
    for (int n = 0; n < N; n++) {
        double tn[R];
        for (int k = 0; k < R; k++) {
            double a = 0;
            for (int i = 0; i < C; i++) a += c->x[n * LDI + i] * c->A[k * C + i];
            tn[k] = a;
            if (t) t[n * R + k] = a;
        }
        for (int j = 0; j < OC; j++) {
            double a = 0;
            for (int k = 0; k < R; k++) a += tn[k] * c->B[j * R + k];
            y[n * OC + j] = c->s * a;
        }
    }
}

static double lora_loss(void *p)
{
    struct lora_ctx *c = p;
    double y[N * OC];
    ref_lora(y, NULL, c);
    return dot_d(y, c->Rw, N * OC);
}

static void test_lora(void)
{
    const zinc_ops *o = zinc_ops_cpu();
    const float s = 1.75f;
    float *x = frand((size_t)N * LDI, 1.0f), *A = frand(R * C, 0.5f), *B = frand(OC * R, 0.5f);
    float *Rw = frand(N * OC, 1.0f);
    struct lora_ctx c = {to_double(x, (size_t)N * LDI), to_double(A, R * C), to_double(B, OC * R), to_double(Rw, N * OC), s};
    double ref[N * OC], rt[N * R];
    ref_lora(ref, rt, &c);
    /* forward: accumulates into the strided columns, leaves the rest */
    float *out0 = frand((size_t)N * LDO, 1.0f), *out = fcopy(out0, (size_t)N * LDO), t[N * R];
    lora_fwd(o, out + C0, LDO, t, x, LDI, A, B, s, N, C, OC, R);
    float got[N * OC];
    double want[N * OC];
    int rest = 1;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < LDO; j++) {
            const int in = j >= C0 && j < C0 + OC;
            if (in) got[n * OC + j - C0] = out[n * LDO + j], want[n * OC + j - C0] = out0[n * LDO + j] + ref[n * OC + j - C0];
            else rest &= out[n * LDO + j] == out0[n * LDO + j];
        }
    CU_ASSERT(rest);
    CU_ASSERT(close_to("lora out", got, want, N * OC, 1e-5, 1e-6));
    CU_ASSERT(close_to("lora t", t, rt, N * R, 1e-5, 1e-6));

    /* backward: dout = Rw in the strided columns; gradients against finite differences */
    float *dout = frand((size_t)N * LDO, 1.0f);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < OC; j++) dout[n * LDO + C0 + j] = Rw[n * OC + j];
    double *gx = malloc((size_t)N * LDI * sizeof(double)), gA[R * C], gB[OC * R];
    fd_grad(gx, c.x, (size_t)N * LDI, lora_loss, &c);
    fd_grad(gA, c.A, R * C, lora_loss, &c);
    fd_grad(gB, c.B, OC * R, lora_loss, &c);
    float *dx0 = frand((size_t)N * LDI, 1.0f), *dx = fcopy(dx0, (size_t)N * LDI);
    float *dA0 = frand(R * C, 1.0f), *dA = fcopy(dA0, R * C), *dB0 = frand(OC * R, 1.0f), *dB = fcopy(dB0, OC * R);
    float dt[N * R];
    lora_bwd(o, dx, dA, dB, dt, dout + C0, LDO, x, LDI, t, A, B, s, N, C, OC, R);
    double *rx = plus(dx0, gx, (size_t)N * LDI), *rA = plus(dA0, gA, R * C), *rB = plus(dB0, gB, OC * R);
    /* the padding columns of dinp get nothing (fd is 0 there: x's padding is not read) */
    CU_ASSERT(close_to("lora dinp", dx, rx, (size_t)N * LDI, 1e-4, 1e-5));
    CU_ASSERT(close_to("lora dA", dA, rA, R * C, 1e-4, 1e-5));
    CU_ASSERT(close_to("lora dB", dB, rB, OC * R, 1e-4, 1e-5));
    /* dinp NULL: the weight gradients alone, the same */
    float *dA2 = fcopy(dA0, R * C), *dB2 = fcopy(dB0, OC * R);
    lora_bwd(o, NULL, dA2, dB2, dt, dout + C0, LDO, x, LDI, t, A, B, s, N, C, OC, R);
    CU_ASSERT(memcmp(dA2, dA, R * C * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dB2, dB, OC * R * sizeof(float)) == 0);

    /* bitwise on 1 and 2 threads */
    const int th = omp_get_max_threads();
    omp_set_num_threads(th > 1 ? 1 : 2);
    float *dx3 = fcopy(dx0, (size_t)N * LDI), *dA3 = fcopy(dA0, R * C), *dB3 = fcopy(dB0, OC * R), t3[N * R];
    float *out3 = fcopy(out0, (size_t)N * LDO);
    lora_fwd(o, out3 + C0, LDO, t3, x, LDI, A, B, s, N, C, OC, R);
    lora_bwd(o, dx3, dA3, dB3, dt, dout + C0, LDO, x, LDI, t3, A, B, s, N, C, OC, R);
    omp_set_num_threads(th);
    CU_ASSERT(memcmp(out3, out, (size_t)N * LDO * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dx3, dx, (size_t)N * LDI * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dA3, dA, R * C * sizeof(float)) == 0 && memcmp(dB3, dB, OC * R * sizeof(float)) == 0);

    /* act bf16: one rounding of the fp32 op on the same inputs; fp32 weight gradients */
    const zinc_ops *h = zinc_ops_cpu_bf16();
    uint16_t *hx = b16(x, (size_t)N * LDI), *ho = b16(out0, (size_t)N * LDO), *hd = b16(dout, (size_t)N * LDO);
    uint16_t *hdx = b16(dx0, (size_t)N * LDI);
    float *wx = wide(hx, (size_t)N * LDI), *wo = wide(ho, (size_t)N * LDO), *wd = wide(hd, (size_t)N * LDO);
    float *wdx = wide(hdx, (size_t)N * LDI), ft[N * R], ht[N * R];
    lora_fwd(o, wo + C0, LDO, ft, wx, LDI, A, B, s, N, C, OC, R);
    lora_fwd(h, ho + C0, LDO, ht, hx, LDI, A, B, s, N, C, OC, R);
    CU_ASSERT(b16_close("bf16 lora out", ho, wo, (size_t)N * LDO));
    double *dft = to_double(ft, N * R); /* fp32 sums, in sgemm's order (f32) or the loops' (bf16) */
    CU_ASSERT(close_to("bf16 lora t", ht, dft, N * R, 1e-5, 1e-6));
    float *fA = fcopy(dA0, R * C), *hA = fcopy(dA0, R * C), *fB = fcopy(dB0, OC * R), *hB = fcopy(dB0, OC * R);
    lora_bwd(o, wdx, fA, fB, dt, wd + C0, LDO, wx, LDI, ft, A, B, s, N, C, OC, R);
    lora_bwd(h, hdx, hA, hB, dt, hd + C0, LDO, hx, LDI, ht, A, B, s, N, C, OC, R);
    CU_ASSERT(b16_close("bf16 lora dinp", hdx, wdx, (size_t)N * LDI));
    double *dfA = to_double(fA, R * C), *dfB = to_double(fB, OC * R);
    CU_ASSERT(close_to("bf16 lora dA", hA, dfA, R * C, 1e-5, 1e-6));
    CU_ASSERT(close_to("bf16 lora dB", hB, dfB, OC * R, 1e-5, 1e-6));
    free(dft), free(dfA), free(dfB);

    free(x), free(A), free(B), free(Rw), free(c.x), free(c.A), free(c.B), free(c.Rw), free(out0), free(out);
    free(dout), free(gx), free(dx0), free(dx), free(dA0), free(dA), free(dB0), free(dB), free(rx), free(rA), free(rB);
    free(dA2), free(dB2), free(dx3), free(dA3), free(dB3), free(out3), free(hx), free(ho), free(hd), free(hdx);
    free(wx), free(wo), free(wd), free(wdx), free(fA), free(hA), free(fB), free(hB);
}

static void test_dropout(void)
{
    const zinc_ops *o = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    const size_t n = 100000;
    const float p = 0.3f;
    const uint64_t seed = 12345;
    float *x = frand(n, 1.0f), *y = malloc(n * sizeof(float)), *d0 = frand(n, 1.0f), *d = fcopy(d0, n);
    o->dropout_forward(y, x, n, p, seed);
    size_t kept = 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        const int keep = zinc_dropout_keep(seed, i, p);
        kept += keep;
        ok &= keep ? fabsf(y[i] - x[i] / (1.0f - p)) <= 1e-6f * fabsf(x[i]) + 1e-7f : y[i] == 0.0f;
    }
    CU_ASSERT(ok);
    const double frac = (double)kept / (double)n; /* 1 - p within 5 sigma */
    CU_ASSERT(fabs(frac - (1.0 - p)) < 5.0 * sqrt(p * (1.0 - p) / (double)n));
    /* backward: the same mask, accumulated */
    o->dropout_backward(d, x, n, p, seed);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= fabsf(d[i] - (d0[i] + (zinc_dropout_keep(seed, i, p) ? x[i] / (1.0f - p) : 0))) <= 1e-6f;
    CU_ASSERT(ok);
    /* another seed, another mask; p = 0 keeps everything */
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += zinc_dropout_keep(seed, i, p) == zinc_dropout_keep(seed + 1, i, p);
    CU_ASSERT(same < n * 0.7);
    o->dropout_forward(y, x, n, 0.0f, seed);
    CU_ASSERT(memcmp(x, y, n * sizeof(float)) == 0);
    /* bf16: the same mask */
    uint16_t *hx = b16(x, n), *hy = malloc(n * 2);
    float *wx = wide(hx, n);
    o->dropout_forward(y, wx, n, p, seed);
    h->dropout_forward(hy, hx, n, p, seed);
    CU_ASSERT(b16_close("bf16 dropout", hy, y, n));
    free(x), free(y), free(d0), free(d), free(hx), free(hy), free(wx);
}

/* A frozen weight: every backward op takes NULL for its parameter gradients and gives the
 * same input gradient (both tables). */
static void test_frozen_null(void)
{
    enum { n_ = 6, c_ = 24, oc_ = 40 };
    for (int k = 0; k < 2; k++) {
        const zinc_ops *o = k ? zinc_ops_cpu_bf16() : zinc_ops_cpu();
        const size_t az = k ? 2 : 4;
        float *x = frand(n_ * oc_, 1.0f), *w = frand(c_ * oc_, 0.5f), *dy = frand(n_ * oc_, 1.0f);
        float *dw = calloc(c_ * oc_, 4), *db = calloc(oc_, 4), *mean = calloc(n_, 4), *rstd = calloc(n_, 4);
        void *xa = malloc(n_ * oc_ * az), *dya = malloc(n_ * oc_ * az), *d1 = calloc(n_ * oc_, az),
             *d2 = calloc(n_ * oc_, az), *pre = malloc(n_ * oc_ * az);
        o->convert(xa, o->act, x, ZINC_DTYPE_F32, n_ * oc_);
        o->convert(dya, o->act, dy, ZINC_DTYPE_F32, n_ * oc_);
        o->convert(pre, o->act, dy, ZINC_DTYPE_F32, n_ * oc_);
        o->linear_backward(d1, dw, db, dya, xa, w, n_, c_, oc_);
        o->linear_backward(d2, NULL, NULL, dya, xa, w, n_, c_, oc_);
        CU_ASSERT(memcmp(d1, d2, n_ * c_ * az) == 0);
        memset(d1, 0, n_ * oc_ * az), memset(d2, 0, n_ * oc_ * az);
        o->linear_t_backward(d1, dw, db, dya, xa, w, n_, c_, oc_);
        o->linear_t_backward(d2, NULL, NULL, dya, xa, w, n_, c_, oc_);
        CU_ASSERT(memcmp(d1, d2, n_ * c_ * az) == 0);
        o->linear_gelu_backward(d1, dw, db, dya, xa, pre, w, n_, c_, oc_);
        o->linear_gelu_backward(d2, NULL, NULL, dya, xa, pre, w, n_, c_, oc_);
        CU_ASSERT(memcmp(d1, d2, n_ * c_ * az) == 0);
        float *lw = frand(oc_, 1.0f);
        o->layernorm_forward(pre, mean, rstd, xa, lw, db, n_, oc_);
        memset(d1, 0, n_ * oc_ * az), memset(d2, 0, n_ * oc_ * az);
        o->layernorm_backward(d1, dw, db, dya, xa, lw, mean, rstd, n_, oc_);
        o->layernorm_backward(d2, NULL, NULL, dya, xa, lw, mean, rstd, n_, oc_);
        CU_ASSERT(memcmp(d1, d2, n_ * oc_ * az) == 0);
        o->rmsnorm_forward(pre, rstd, xa, lw, 1e-6f, n_, oc_);
        memset(d1, 0, n_ * oc_ * az), memset(d2, 0, n_ * oc_ * az);
        o->rmsnorm_backward(d1, dw, dya, xa, lw, rstd, n_, oc_);
        o->rmsnorm_backward(d2, NULL, dya, xa, lw, rstd, n_, oc_);
        CU_ASSERT(memcmp(d1, d2, n_ * oc_ * az) == 0);
        int32_t tok[n_] = {1, 2, 3, 1, 0, 2};
        float *pe = calloc(n_ * oc_, 4);
        o->embedding_backward(NULL, pe, dya, tok, NULL, 1, n_, oc_, 0, 4); /* dwte frozen, dwpe trained */
        int ok = 1;
        for (int i = 0; i < n_ * oc_; i++) ok &= fabsf(pe[i] - (k ? zinc_bf16_to_f32(((uint16_t *)dya)[i]) : dy[i])) == 0;
        CU_ASSERT(ok);
        o->embedding_backward(NULL, NULL, dya, tok, NULL, 1, n_, oc_, 0, 4);
        free(x), free(w), free(dy), free(dw), free(db), free(mean), free(rstd), free(xa), free(dya), free(d1);
        free(d2), free(pre), free(lw), free(pe);
    }
}

static void test_tables(void)
{
    const zinc_ops *t[2] = {zinc_ops_cpu(), zinc_ops_cpu_bf16()};
    for (int k = 0; k < 2; k++)
        CU_ASSERT(t[k]->lora_down && t[k]->lora_up && t[k]->lora_grad_up && t[k]->lora_grad_down && t[k]->dropout_forward && t[k]->dropout_backward);
}

int main(void)
{
    static const unit_case cases[] = {{"tables", test_tables}, {"lora", test_lora}, {"dropout", test_dropout},
                                      {"frozen_null", test_frozen_null}};
    return unit_run("lora_ops_cpu", cases, sizeof cases / sizeof *cases, 1) ? 1 : 0;
}
