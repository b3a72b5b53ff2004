/* test_llama_ops.c - the Llama-family ops of the CPU tables (RMSNorm, rotary
 * embeddings, SwiGLU, grouped-query attention) and the rotary tables, against float64 references
 * written here and central finite differences of L = sum(out * R); backward
 * ops are pre-filled to check that they accumulate. The act-bf16 table is
 * held to one bf16 rounding of the fp32 table on the same inputs, and the
 * ops are bitwise the same on 1 and 2 threads. */
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

static const zinc_ops *ops;

/* ---------- RMSNorm ---------- */

static void ref_rmsnorm(double *out, const double *x, const double *w, double eps, int N, int C, double *rstd)
{
    for (int i = 0; i < N; i++) {
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[i * C + c] * x[i * C + c];
        const double r = 1.0 / sqrt(s / C + eps);
        for (int c = 0; c < C; c++) out[i * C + c] = x[i * C + c] * r * w[c];
        if (rstd) rstd[i] = r;
    }
}

struct rms_ctx {
    double *x, *w, *R, *out, eps;
    int N, C;
};

static double rms_loss(void *p)
{
    struct rms_ctx *c = p;
    ref_rmsnorm(c->out, c->x, c->w, c->eps, c->N, c->C, NULL);
    return dot_d(c->out, c->R, (size_t)c->N * c->C);
}

static void test_rmsnorm(void)
{
    const int N = 9, C = 70; /* C past one 64-column block of the weight gradient */
    const size_t n = (size_t)N * C;
    const float eps = 1e-5f;
    float *x = frand(n, 2.0f), *w = frand(C, 1.0f), *R = frand(n, 1.0f);
    struct rms_ctx c = {to_double(x, n), to_double(w, C), to_double(R, n), malloc(n * sizeof(double)), eps, N, C};
    double *ref = malloc(n * sizeof *ref), rr[9];
    ref_rmsnorm(ref, c.x, c.w, eps, N, C, rr);
    float *out = frand(n, 1.0f), rstd[9];
    ops->rmsnorm_forward(out, rstd, x, w, eps, N, C);
    CU_ASSERT(close_to("rmsnorm out", out, ref, n, 1e-5, 1e-6));
    CU_ASSERT(close_to("rmsnorm rstd", rstd, rr, N, 1e-6, 1e-7));

    double *gx = malloc(n * sizeof *gx), *gw = malloc(C * sizeof *gw);
    fd_grad(gx, c.x, n, rms_loss, &c);
    fd_grad(gw, c.w, C, rms_loss, &c);
    float *dx0 = frand(n, 1.0f), *dw0 = frand(C, 1.0f), *dx = fcopy(dx0, n), *dw = fcopy(dw0, C);
    ops->rmsnorm_backward(dx, dw, R, x, w, rstd, N, C);
    double *rx = plus(dx0, gx, n), *rw = plus(dw0, gw, C);
    CU_ASSERT(close_to("rmsnorm dinp", dx, rx, n, 1e-4, 1e-5));
    CU_ASSERT(close_to("rmsnorm dweight", dw, rw, C, 1e-4, 1e-5));
    free(x), free(w), free(R), free(c.x), free(c.w), free(c.R), free(c.out), free(ref), free(out), free(gx);
    free(gw), free(dx0), free(dw0), free(dx), free(dw), free(rx), free(rw);
}

/* ---------- rotary tables ---------- */

/* transformers' computation, in its fp32 arithmetic (torch float32 tensors): inv_freq =
 * 1 / theta^(2i/HS); Llama-3: wavelen = 2 pi / inv, low/high wavelengths from the
 * original context, the medium band blended; angle = inv * pos in fp32. */
static void hf_inv_freq(float *inv, int HS, double theta, const zinc_rope_scaling *sc)
{
    for (int i = 0; i < HS / 2; i++) {
        const float e = (float)(2 * i) / (float)HS;
        inv[i] = 1.0f / powf((float)theta, e);
        if (!sc || sc->factor <= 0) continue;
        const float f = (float)sc->factor, lo = (float)sc->low_freq_factor, hi = (float)sc->high_freq_factor;
        const float old = (float)sc->original_max_position, lo_wl = old / lo, hi_wl = old / hi;
        const float wl = 2.0f * (float)M_PI / inv[i];
        float v = wl > lo_wl ? inv[i] / f : inv[i];
        const float smooth = (old / wl - lo) / (hi - lo);
        const float blended = (1.0f - smooth) * v / f + smooth * v;
        if (!(wl < hi_wl) && !(wl > lo_wl)) v = blended;
        inv[i] = v;
    }
}

static void test_rope_table(void)
{
    enum { HS = 128, H = HS / 2, P = 9000 };
    const zinc_rope_scaling l3 = {.factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                                  .original_max_position = 8192};
    float *cs = malloc((size_t)P * H * sizeof(float)), *sn = malloc((size_t)P * H * sizeof(float));
    float inv[H], inv0[H];
    for (int k = 0; k < 2; k++) {
        const zinc_rope_scaling *sc = k ? &l3 : NULL;
        zinc_rope_table(cs, sn, P, HS, 500000.0, sc);
        hf_inv_freq(inv, HS, 500000.0, sc);
        int bad = 0;
        for (int p = 0; p < P && !bad; p += 7)
            for (int i = 0; i < H; i++) {
                const float a = inv[i] * (float)p; /* the fp32 angle */
                /* frequencies may differ by an ulp of fp32 arithmetic order; at position
                 * 9000 that moves the angle by up to ~1e-3 rad for the fastest one */
                const double tol = 1e-6 + (double)p * fabsf(inv[i]) * 2.4e-7;
                if (fabs(cs[(size_t)p * H + i] - cos(a)) > tol || fabs(sn[(size_t)p * H + i] - sin(a)) > tol) {
                    printf("\n  rope table (%s) p %d i %d: cos %.9g vs %.9g, sin %.9g vs %.9g\n", k ? "llama3" : "plain",
                           p, i, cs[(size_t)p * H + i], cos(a), sn[(size_t)p * H + i], sin(a));
                    bad = 1;
                    break;
                }
            }
        CU_ASSERT(!bad);
        if (!k) memcpy(inv0, inv, sizeof inv);
    }
    /* Llama-3's bands: the fastest frequency is kept, the slowest divided by the factor,
     * and one between is blended (neither) */
    CU_ASSERT(inv[0] == inv0[0]);
    CU_ASSERT(fabsf(inv[H - 1] - inv0[H - 1] / 8.0f) <= 1e-6f * inv0[H - 1]);
    int blended = 0;
    for (int i = 0; i < H; i++)
        blended |= inv[i] != inv0[i] && fabsf(inv[i] - inv0[i] / 8.0f) > 1e-6f * inv0[i];
    CU_ASSERT(blended);
    /* position 0: the identity */
    zinc_rope_table(cs, sn, 1, HS, 10000.0, NULL);
    for (int i = 0; i < H; i++) CU_ASSERT(cs[i] == 1.0f && sn[i] == 0.0f);
    free(cs), free(sn);
}

/* ---------- rotary embedding ---------- */

/* rows of S elements: q (NQ heads) | k (NK heads) | v; the op rotates the first nh heads
 * of each row from offset off, at stride S */
enum { RB = 2, RT = 5, RN = RB * RT, HSZ = 8, NQ = 3, NK = 2, S = (NQ + 2 * NK) * HSZ };

struct rope_ctx {
    double *x, *R, *out, *cs, *sn;
    const int32_t *pos;
    int off, nh;
};

static void ref_rope(double *out, const double *x, const double *cs, const double *sn, const int32_t *pos, int off,
                     int nh, double sg)
{
    memcpy(out, x, (size_t)RN * S * sizeof *out);
    const int H = HSZ / 2;
    for (int r = 0; r < RN; r++) {
        const int p = pos ? pos[r] : r % RT;
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < H; i++) {
                const size_t a = (size_t)r * S + off + h * HSZ + i, b = a + H;
                const double c = cs[p * H + i], s = sg * sn[p * H + i];
                out[a] = x[a] * c - x[b] * s;
                out[b] = x[b] * c + x[a] * s;
            }
    }
}

static double rope_loss(void *u)
{
    struct rope_ctx *c = u;
    ref_rope(c->out, c->x, c->cs, c->sn, c->pos, c->off, c->nh, 1.0);
    return dot_d(c->out, c->R, (size_t)RN * S);
}

static void test_rope(void)
{
    const int H = HSZ / 2, P = 16;
    const size_t n = (size_t)RN * S;
    float cs[16 * 4], sn[16 * 4];
    zinc_rope_table(cs, sn, P, HSZ, 10000.0, NULL);
    const int32_t pos[RN] = {3, 0, 7, 7, 15, 1, 2, 9, 4, 11}; /* restarted / packed positions */
    for (int k = 0; k < 4; k++) {
        const int off = k & 1 ? NQ * HSZ : 0, nh = k & 1 ? NK : NQ; /* the k part, or the q part */
        const int32_t *pp = k & 2 ? pos : NULL;
        float *x = frand(n, 1.0f), *R = frand(n, 1.0f);
        struct rope_ctx c = {to_double(x, n), to_double(R, n), malloc(n * sizeof(double)), to_double(cs, (size_t)P * H),
                             to_double(sn, (size_t)P * H), pp, off, nh};
        double *ref = malloc(n * sizeof *ref);
        ref_rope(ref, c.x, c.cs, c.sn, pp, off, nh, 1.0);
        float *y = fcopy(x, n);
        ops->rope(y + off, RN, S, nh, HSZ, RT, pp, cs, sn, 1);
        char what[64];
        snprintf(what, sizeof what, "rope %s pos %s", off ? "k" : "q", pp ? "given" : "t");
        CU_ASSERT(close_to(what, y, ref, n, 1e-6, 1e-7)); /* the rest of each row untouched */
        /* the inverse rotation undoes it */
        ops->rope(y + off, RN, S, nh, HSZ, RT, pp, cs, sn, -1);
        CU_ASSERT(close_to("rope then its inverse", y, c.x, n, 1e-6, 1e-6));
        /* backward: the inverse rotation of the output's gradient is the input's */
        double *g = malloc(n * sizeof *g);
        fd_grad(g, c.x, n, rope_loss, &c);
        float *d = fcopy(R, n);
        ops->rope(d + off, RN, S, nh, HSZ, RT, pp, cs, sn, -1);
        CU_ASSERT(close_to("rope backward", d, g, n, 1e-5, 1e-6));
        free(x), free(R), free(c.x), free(c.R), free(c.out), free(c.cs), free(c.sn), free(ref), free(y), free(g);
        free(d);
    }
}

/* ---------- SwiGLU ---------- */

static double silu_d(double g) { return g / (1.0 + exp(-g)); }

struct sw_ctx {
    double *gu, *R;
    int N, F;
};

static double sw_loss(void *u)
{
    struct sw_ctx *c = u;
    double s = 0.0;
    for (int r = 0; r < c->N; r++)
        for (int i = 0; i < c->F; i++)
            s += silu_d(c->gu[r * 2 * c->F + i]) * c->gu[r * 2 * c->F + c->F + i] * c->R[r * c->F + i];
    return s;
}

static void test_swiglu(void)
{
    const int N = 7, F = 11;
    const size_t n = (size_t)N * F;
    float *gu = frand(2 * n, 4.0f), *R = frand(n, 1.0f);
    struct sw_ctx c = {to_double(gu, 2 * n), to_double(R, n), N, F};
    double *ref = malloc(n * sizeof *ref);
    for (int r = 0; r < N; r++)
        for (int i = 0; i < F; i++) ref[r * F + i] = silu_d(c.gu[r * 2 * F + i]) * c.gu[r * 2 * F + F + i];
    float *out = frand(n, 1.0f);
    ops->swiglu_forward(out, gu, N, F);
    CU_ASSERT(close_to("swiglu out", out, ref, n, 1e-6, 1e-7));
    double *g = malloc(2 * n * sizeof *g);
    fd_grad(g, c.gu, 2 * n, sw_loss, &c);
    float *d0 = frand(2 * n, 1.0f), *d = fcopy(d0, 2 * n);
    ops->swiglu_backward(d, R, gu, N, F);
    double *rd = plus(d0, g, 2 * n);
    CU_ASSERT(close_to("swiglu dgate | dup", d, rd, 2 * n, 1e-5, 1e-6));
    free(gu), free(R), free(c.gu), free(c.R), free(ref), free(out), free(g), free(d0), free(d), free(rd);
}

/* ---------- grouped-query attention ---------- */

/* Causal softmax attention in double, K/V head h / (NH / NKV). */
static void ref_gqa(double *out, const double *qkv, int B, int T, int NH, int NKV, int HS)
{
    const int R = (NH + 2 * NKV) * HS, C = NH * HS, G = NH / NKV;
    double *s = malloc((size_t)T * sizeof *s);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = qkv + ((size_t)b * T + t) * R + h * HS;
                double mx = -INFINITY, l = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *k = qkv + ((size_t)b * T + t2) * R + C + (h / G) * HS;
                    double d = 0.0;
                    for (int i = 0; i < HS; i++) d += q[i] * k[i];
                    s[t2] = d / sqrt((double)HS);
                    mx = fmax(mx, s[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++) l += s[t2] = exp(s[t2] - mx);
                double *o = out + ((size_t)b * T + t) * C + h * HS;
                for (int i = 0; i < HS; i++) {
                    double a = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        a += s[t2] / l * qkv[((size_t)b * T + t2) * R + C + NKV * HS + (h / G) * HS + i];
                    o[i] = a;
                }
            }
    free(s);
}

struct gqa_ctx {
    double *qkv, *R, *out;
    int B, T, NH, NKV, HS;
};

static double gqa_loss(void *u)
{
    struct gqa_ctx *c = u;
    ref_gqa(c->out, c->qkv, c->B, c->T, c->NH, c->NKV, c->HS);
    return dot_d(c->out, c->R, (size_t)c->B * c->T * c->NH * c->HS);
}

static void test_gqa(void)
{
    static const int cases[][5] = {{2, 7, 4, 2, 8}, {1, 70, 6, 1, 16}, {2, 5, 4, 4, 8}}; /* B T NH NKV HS */
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const int B = cases[k][0], T = cases[k][1], NH = cases[k][2], NKV = cases[k][3], HS = cases[k][4];
        const size_t nq = (size_t)B * T * (NH + 2 * NKV) * HS, no = (size_t)B * T * NH * HS, nl = (size_t)B * NH * T;
        float *qkv = frand(nq, 1.5f), *R = frand(no, 1.0f), *out = frand(no, 1.0f), *lse = malloc(nl * sizeof(float));
        struct gqa_ctx c = {to_double(qkv, nq), to_double(R, no), malloc(no * sizeof(double)), B, T, NH, NKV, HS};
        double *ref = malloc(no * sizeof *ref);
        ref_gqa(ref, c.qkv, B, T, NH, NKV, HS);
        ops->attention_gqa_forward(out, lse, qkv, NULL, B, T, NH, NKV, HS);
        char what[80];
        snprintf(what, sizeof what, "gqa forward NH %d NKV %d T %d", NH, NKV, T);
        CU_ASSERT(close_to(what, out, ref, no, 1e-5, 1e-6));
        if (T <= 7) { /* finite differences of the whole qkv (small cases) */
            double *g = malloc(nq * sizeof *g);
            fd_grad(g, c.qkv, nq, gqa_loss, &c);
            float *d0 = frand(nq, 1.0f), *d = fcopy(d0, nq), *sc = malloc(nl * sizeof(float));
            ops->attention_gqa_backward(d, sc, R, qkv, out, lse, NULL, B, T, NH, NKV, HS);
            double *rd = plus(d0, g, nq);
            snprintf(what, sizeof what, "gqa backward NH %d NKV %d", NH, NKV);
            CU_ASSERT(close_to(what, d, rd, nq, 1e-4, 1e-5));
            free(g), free(d0), free(d), free(sc), free(rd);
        }
        if (NKV == NH) { /* the multi-head op is the same computation, bit for bit */
            float *o2 = malloc(no * sizeof(float)), *l2 = malloc(nl * sizeof(float));
            ops->attention_forward(o2, l2, qkv, B, T, NH * HS, NH);
            CU_ASSERT(memcmp(o2, out, no * sizeof(float)) == 0 && memcmp(l2, lse, nl * sizeof(float)) == 0);
            free(o2), free(l2);
        }
        free(qkv), free(R), free(out), free(lse), free(c.qkv), free(c.R), free(c.out), free(ref);
    }
    /* the bf16 table: one rounding of the fp32 table's result on the same inputs */
    const zinc_ops *f = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    const int B = 2, T = 9, NH = 4, NKV = 2, HS = 8;
    const size_t nq = (size_t)B * T * (NH + 2 * NKV) * HS, no = (size_t)B * T * NH * HS, nl = (size_t)B * NH * T;
    float *r = frand(nq, 1.0f), *r2 = frand(no, 1.0f);
    uint16_t *hq = b16(r, nq), *hd = b16(r2, no), *ho = malloc(no * 2), *hg = calloc(nq, 2);
    float *xq = wide(hq, nq), *xd = wide(hd, no), *fo = malloc(no * 4), *l1 = malloc(nl * 4), *l2 = malloc(nl * 4);
    float *fg = calloc(nq, 4), *sc = malloc(nl * 4);
    f->attention_gqa_forward(fo, l1, xq, NULL, B, T, NH, NKV, HS);
    h->attention_gqa_forward(ho, l2, hq, NULL, B, T, NH, NKV, HS);
    CU_ASSERT(b16_close("bf16 gqa forward", ho, fo, no));
    float *xo = wide(ho, no);
    f->attention_gqa_backward(fg, sc, xd, xq, xo, l2, NULL, B, T, NH, NKV, HS);
    h->attention_gqa_backward(hg, sc, hd, hq, ho, l2, NULL, B, T, NH, NKV, HS);
    CU_ASSERT(b16_close("bf16 gqa backward", hg, fg, nq));
    /* 1 and 2 threads: bitwise the same (past the parallel threshold) */
    const int BB = 2, BT = 64, BNH = 8, BKV = 2, BHS = 32;
    const size_t bq = (size_t)BB * BT * (BNH + 2 * BKV) * BHS, bo = (size_t)BB * BT * BNH * BHS, bl = (size_t)BB * BNH * BT;
    float *x = frand(bq, 1.0f), *dy = frand(bo, 1.0f), *o[2], *ls[2], *dx[2], *scr = malloc(bl * 4);
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        o[t] = malloc(bo * 4), ls[t] = malloc(bl * 4), dx[t] = calloc(bq, 4);
        ops->attention_gqa_forward(o[t], ls[t], x, NULL, BB, BT, BNH, BKV, BHS);
        ops->attention_gqa_backward(dx[t], scr, dy, x, o[t], ls[t], NULL, BB, BT, BNH, BKV, BHS);
    }
    omp_set_num_threads(2);
    CU_ASSERT(memcmp(o[0], o[1], bo * 4) == 0 && memcmp(dx[0], dx[1], bq * 4) == 0);
    for (int t = 0; t < 2; t++) free(o[t]), free(ls[t]), free(dx[t]);
    free(x), free(dy), free(scr), free(r), free(r2), free(hq), free(hd), free(ho), free(hg), free(xq), free(xd);
    free(fo), free(l1), free(l2), free(fg), free(sc), free(xo);
}

/* Documents packed in a row (pos restarting per document): each document's outputs, lse
 * and gradients are bitwise those of the document run alone as its own sequence, for
 * grouped-query and multi-head attention (the masked op starts its key blocks at the
 * document's first key, so the arithmetic is the same). */
static void test_gqa_docs(void)
{
    static const int cases[][5] = {{2, 40, 4, 2, 16}, {1, 70, 2, 2, 8}}; /* B T NH NKV HS */
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const int B = cases[k][0], T = cases[k][1], NH = cases[k][2], NKV = cases[k][3], HS = cases[k][4];
        const int R = (NH + 2 * NKV) * HS, C = NH * HS;
        const size_t nq = (size_t)B * T * R, no = (size_t)B * T * C, nl = (size_t)B * NH * T;
        float *qkv = frand(nq, 1.5f), *dy = frand(no, 1.0f), *out = malloc(no * 4), *lse = malloc(nl * 4);
        float *dq = calloc(nq, 4), *sc = malloc(nl * 4);
        int32_t *pos = malloc((size_t)B * T * sizeof *pos);
        int n_docs = 0;
        for (int b = 0; b < B; b++) /* documents of 1 .. 2 ATT_KB + 5 tokens: blocks inside a document too */
            for (int t = 0, left = 0, p = 0; t < T; t++) {
                if (left == 0) left = 1 + (int)(rng_next() % 37), p = 0, n_docs++;
                pos[b * T + t] = p++;
                left--;
            }
        ops->attention_gqa_forward(out, lse, qkv, pos, B, T, NH, NKV, HS);
        ops->attention_gqa_backward(dq, sc, dy, qkv, out, lse, pos, B, T, NH, NKV, HS);
        int bad = 0, seen = 0;
        for (int b = 0; b < B; b++)
            for (int s0 = 0; s0 < T;) {
                int n = 1;
                while (s0 + n < T && pos[b * T + s0 + n] != 0) n++;
                float *x1 = malloc((size_t)n * R * 4), *y1 = malloc((size_t)n * C * 4), *o1 = malloc((size_t)n * C * 4);
                float *l1 = malloc((size_t)NH * n * 4), *d1 = calloc((size_t)n * R, 4), *s1 = malloc((size_t)NH * n * 4);
                memcpy(x1, qkv + ((size_t)b * T + s0) * R, (size_t)n * R * 4);
                memcpy(y1, dy + ((size_t)b * T + s0) * C, (size_t)n * C * 4);
                ops->attention_gqa_forward(o1, l1, x1, NULL, 1, n, NH, NKV, HS);
                ops->attention_gqa_backward(d1, s1, y1, x1, o1, l1, NULL, 1, n, NH, NKV, HS);
                bad += memcmp(o1, out + ((size_t)b * T + s0) * C, (size_t)n * C * 4) != 0;
                bad += memcmp(d1, dq + ((size_t)b * T + s0) * R, (size_t)n * R * 4) != 0;
                for (int h = 0; h < NH; h++)
                    bad += memcmp(l1 + (size_t)h * n, lse + ((size_t)b * NH + h) * T + s0, (size_t)n * 4) != 0;
                free(x1), free(y1), free(o1), free(l1), free(d1), free(s1);
                s0 += n;
                seen++;
            }
        CU_ASSERT(bad == 0 && seen == n_docs && n_docs > B);
        if (bad) printf("\n  packed documents (case %zu): %d of %d differ from the documents alone\n", k, bad, seen);
        /* and the mask matters: the causal op over the whole rows gives other outputs */
        float *o2 = malloc(no * 4), *l2 = malloc(nl * 4);
        ops->attention_gqa_forward(o2, l2, qkv, NULL, B, T, NH, NKV, HS);
        CU_ASSERT(memcmp(o2, out, no * 4) != 0);
        free(o2), free(l2), free(qkv), free(dy), free(out), free(lse), free(dq), free(sc), free(pos);
    }
}

/* ---------- the act-bf16 table, threads ---------- */

static void test_bf16_and_threads(void)
{
    const zinc_ops *f = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    const int N = 6, C = 40, F = 13, H = HSZ / 2;
    const size_t n = (size_t)N * C;
    float *r0 = frand(n, 1.0f), *r1 = frand(n, 1.0f), *w = frand(C, 1.0f);
    uint16_t *h0 = b16(r0, n), *h1 = b16(r1, n);
    float *x0 = wide(h0, n), *x1 = wide(h1, n);
    float *fo = malloc(n * sizeof(float)), *s1 = malloc(N * sizeof(float)), *s2 = malloc(N * sizeof(float));
    uint16_t *ho = malloc(n * sizeof(uint16_t));
    f->rmsnorm_forward(fo, s1, x0, w, 1e-6f, N, C);
    h->rmsnorm_forward(ho, s2, h0, w, 1e-6f, N, C);
    CU_ASSERT(b16_close("bf16 rmsnorm_forward", ho, fo, n));
    CU_ASSERT(memcmp(s1, s2, N * sizeof(float)) == 0);
    float *g1 = calloc(C, sizeof(float)), *g2 = calloc(C, sizeof(float));
    memset(fo, 0, n * sizeof(float));
    memset(ho, 0, n * sizeof(uint16_t));
    f->rmsnorm_backward(fo, g1, x1, x0, w, s1, N, C);
    h->rmsnorm_backward(ho, g2, h1, h0, w, s1, N, C);
    CU_ASSERT(b16_close("bf16 rmsnorm_backward dinp", ho, fo, n));
    CU_ASSERT(memcmp(g1, g2, C * sizeof(float)) == 0); /* same fp32 products, same order */
    /* rope over (N, C) rows: 4 heads of 8 from column 4; the rest stays as it was */
    float cs[8 * 4], sn[8 * 4];
    zinc_rope_table(cs, sn, 8, HSZ, 10000.0, NULL);
    memcpy(fo, x0, n * sizeof(float));
    memcpy(ho, h0, n * sizeof(uint16_t));
    f->rope(fo + 4, N, C, 4, HSZ, 3, NULL, cs, sn, 1);
    h->rope(ho + 4, N, C, 4, HSZ, 3, NULL, cs, sn, 1);
    CU_ASSERT(b16_close("bf16 rope", ho, fo, n));
    int same_rest = 1;
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++)
            if (c < 4 || c >= 4 + 4 * HSZ) same_rest &= ho[r * C + c] == h0[r * C + c];
    CU_ASSERT(same_rest);
    (void)H;
    /* swiglu on (N, 2F) */
    float *gu = frand((size_t)N * 2 * F, 3.0f);
    uint16_t *hgu = b16(gu, (size_t)N * 2 * F);
    float *xgu = wide(hgu, (size_t)N * 2 * F);
    f->swiglu_forward(fo, xgu, N, F);
    h->swiglu_forward(ho, hgu, N, F);
    CU_ASSERT(b16_close("bf16 swiglu_forward", ho, fo, (size_t)N * F));
    float *fd = calloc((size_t)N * 2 * F, sizeof(float));
    uint16_t *hd = calloc((size_t)N * 2 * F, sizeof(uint16_t));
    f->swiglu_backward(fd, x1, xgu, N, F);
    h->swiglu_backward(hd, h1, hgu, N, F);
    CU_ASSERT(b16_close("bf16 swiglu_backward", hd, fd, (size_t)N * 2 * F));
    CU_ASSERT_EQUAL(zinc_ops_cpu_last_status(), ZINC_OK);

    /* 1 and 2 threads: bitwise the same on a size past the parallel threshold */
    const int BN = 256, BC = 192;
    const size_t bn = (size_t)BN * BC;
    float *bx = frand(bn, 1.0f), *bdy = frand(bn, 1.0f), *bw = frand(BC, 1.0f), *brs = malloc(BN * sizeof(float));
    float *dx[2], *dw[2], *y[2];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        y[t] = malloc(bn * sizeof(float));
        dx[t] = calloc(bn, sizeof(float));
        dw[t] = calloc(BC, sizeof(float));
        ops->rmsnorm_forward(y[t], brs, bx, bw, 1e-5f, BN, BC);
        ops->rmsnorm_backward(dx[t], dw[t], bdy, bx, bw, brs, BN, BC);
    }
    omp_set_num_threads(2);
    CU_ASSERT(memcmp(y[0], y[1], bn * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dx[0], dx[1], bn * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dw[0], dw[1], BC * sizeof(float)) == 0);
    for (int t = 0; t < 2; t++) free(y[t]), free(dx[t]), free(dw[t]);
    free(bx), free(bdy), free(bw), free(brs);
    free(r0), free(r1), free(w), free(h0), free(h1), free(x0), free(x1), free(fo), free(s1), free(s2), free(ho);
    free(g1), free(g2), free(gu), free(hgu), free(xgu), free(fd), free(hd);
}

/* fill_cols: exactly the columns asked for, in both tables */
static void test_fill_cols(void)
{
    const int N = 5, ld = 13, c0 = 9, c1 = 13;
    float *x = frand((size_t)N * ld, 1.0f), *y = fcopy(x, (size_t)N * ld);
    uint16_t *h = b16(x, (size_t)N * ld), *h0 = malloc((size_t)N * ld * 2);
    memcpy(h0, h, (size_t)N * ld * 2);
    zinc_ops_cpu()->fill_cols(y, N, ld, c0, c1, -INFINITY);
    zinc_ops_cpu_bf16()->fill_cols(h, N, ld, c0, c1, -INFINITY);
    int ok = 1;
    for (int r = 0; r < N; r++)
        for (int c = 0; c < ld; c++) {
            const size_t i = (size_t)r * ld + c;
            if (c >= c0 && c < c1) ok &= isinf(y[i]) && y[i] < 0 && isinf(zinc_bf16_to_f32(h[i]));
            else ok &= y[i] == x[i] && h[i] == h0[i];
        }
    CU_ASSERT(ok);
    free(x), free(y), free(h), free(h0);
}

static void test_tables(void)
{
    const zinc_ops *t[2] = {zinc_ops_cpu(), zinc_ops_cpu_bf16()};
    for (int k = 0; k < 2; k++)
        CU_ASSERT(t[k]->rmsnorm_forward && t[k]->rmsnorm_backward && t[k]->rope && t[k]->swiglu_forward &&
                  t[k]->swiglu_backward && t[k]->attention_gqa_forward && t[k]->attention_gqa_backward &&
                  t[k]->fill_cols);
}

int main(void)
{
    static const unit_case cases[] = {
        {"tables", test_tables},     {"rmsnorm", test_rmsnorm},         {"rope_table", test_rope_table},
        {"rope", test_rope},         {"swiglu", test_swiglu},           {"gqa", test_gqa}, {"gqa_docs", test_gqa_docs},
        {"fill_cols", test_fill_cols}, {"bf16_and_threads", test_bf16_and_threads},
    };
    ops = zinc_ops_cpu();
    return unit_run("llama_ops_cpu", cases, sizeof cases / sizeof *cases, 1) ? 1 : 0;
}
