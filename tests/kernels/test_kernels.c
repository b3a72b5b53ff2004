/* test_kernels.c - the CPU op table against float64 references.
 *
 * Forward ops are compared with naive double-precision implementations
 * written here. Backward ops are compared with central finite differences
 * of a double scalar loss L = sum(out * R) (R random, fixed) evaluated on
 * those references, with gradients pre-filled with non-zero values to check
 * that they accumulate (+=). Sizes are small, odd and non-square. A last
 * group checks that ops are bitwise reproducible, run to run and between 1
 * and 2 OpenMP threads. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/ops.h"
#include "../../kernels/cpu/cpu_int.h" /* cpu_gemm_bf16_force_fallback */

static const zinc_ops *ops;

#include "kref.h"

/* ---------- float64 references ---------- */

static void ref_linear(double *out, const double *inp, const double *w, const double *b,
                       int N, int C, int OC)
{
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int c = 0; c < C; c++)
                s += inp[i * C + c] * w[c * OC + o];
            out[i * OC + o] = s;
        }
}

static void ref_layernorm(double *out, const double *inp, const double *w, const double *b,
                          int N, int C, double *mean, double *rstd)
{
    for (int i = 0; i < N; i++) {
        const double *x = inp + i * C;
        double m = 0.0, v = 0.0;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        for (int c = 0; c < C; c++)
            v += (x[c] - m) * (x[c] - m);
        v /= C;
        const double rs = 1.0 / sqrt(v + 1e-5);
        for (int c = 0; c < C; c++)
            out[i * C + c] = (x[c] - m) * rs * w[c] + b[c];
        if (mean)
            mean[i] = m;
        if (rstd)
            rstd[i] = rs;
    }
}

static double ref_gelu1(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* Causal attention in double: att (B,NH,T,T) the probabilities (0 above
 * the diagonal), lse (B,NH,T) the log-sum-exp of each row's scores. */
static void ref_attention(double *out, double *att, double *lse, const double *qkv, int B, int T,
                          int C, int NH)
{
    const int HS = C / NH, C3 = 3 * C;
    const double scale = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = qkv + (b * T + t) * C3 + h * HS;
                double *a = att + ((size_t)(b * NH + h) * T + t) * T;
                double mx = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *k = qkv + (b * T + t2) * C3 + C + h * HS;
                    a[t2] = dot_d(q, k, HS) * scale;
                    mx = fmax(mx, a[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    a[t2] = exp(a[t2] - mx);
                    sum += a[t2];
                }
                for (int t2 = 0; t2 < T; t2++)
                    a[t2] = t2 <= t ? a[t2] / sum : 0.0;
                lse[(b * NH + h) * T + t] = mx + log(sum);
                double *o = out + (b * T + t) * C + h * HS;
                for (int i = 0; i < HS; i++) {
                    double s = 0.0;
                    for (int t2 = 0; t2 <= t; t2++)
                        s += a[t2] * qkv[(b * T + t2) * C3 + 2 * C + h * HS + i];
                    o[i] = s;
                }
            }
}

/* dqkv (B,T,3C) += the gradient of sum(out * dout) through ref_attention,
 * analytically in double (checked against finite differences on small
 * shapes; the reference for shapes too large for them). att as given by
 * ref_attention. */
static void ref_attention_backward(double *dqkv, const double *dout, const double *qkv,
                                   const double *att, int B, int T, int C, int NH)
{
    const int HS = C / NH, C3 = 3 * C;
    const double scale = 1.0 / sqrt((double)HS);
    double *da = malloc((T ? T : 1) * sizeof *da);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *a = att + ((size_t)(b * NH + h) * T + t) * T;
                const double *dy = dout + (b * T + t) * C + h * HS;
                const double *q = qkv + (b * T + t) * C3 + h * HS;
                double *dq = dqkv + (b * T + t) * C3 + h * HS;
                double s = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *v = qkv + (b * T + t2) * C3 + 2 * C + h * HS;
                    double *dv = dqkv + (b * T + t2) * C3 + 2 * C + h * HS;
                    da[t2] = dot_d(dy, v, HS);
                    s += a[t2] * da[t2];
                    for (int i = 0; i < HS; i++)
                        dv[i] += a[t2] * dy[i];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    const double g = a[t2] * (da[t2] - s) * scale;
                    const double *k = qkv + (b * T + t2) * C3 + C + h * HS;
                    double *dk = dqkv + (b * T + t2) * C3 + C + h * HS;
                    for (int i = 0; i < HS; i++) {
                        dq[i] += g * k[i];
                        dk[i] += g * q[i];
                    }
                }
            }
    free(da);
}

/* losses[i] = -log softmax(logits[i])[target]; 0 for ignored rows. */
static double ref_xent(double *losses, const double *logits, const int32_t *tg, int N, int V)
{
    double total = 0.0;
    for (int i = 0; i < N; i++) {
        const double *x = logits + (size_t)i * V;
        double l = 0.0;
        if (tg[i] >= 0) {
            double mx = -INFINITY, s = 0.0;
            for (int j = 0; j < V; j++)
                mx = fmax(mx, x[j]);
            for (int j = 0; j < V; j++)
                s += exp(x[j] - mx);
            l = log(s) + mx - x[tg[i]];
        }
        if (losses)
            losses[i] = l;
        total += l;
    }
    return total;
}

/* ---------- matmul and linear ---------- */

static void test_matmul(void)
{
    const int m = 7, n = 5, k = 9;
    const float alpha = 0.7f, beta = 0.3f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float *a = frand((size_t)m * k, 1.0f), *b = frand((size_t)k * n, 1.0f);
            float *c = frand((size_t)m * n, 1.0f);
            double ref[7 * 5];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double s = 0.0;
                    for (int p = 0; p < k; p++) {
                        const double av = ta ? a[p * m + i] : a[i * k + p];
                        const double bv = tb ? b[j * k + p] : b[p * n + j];
                        s += av * bv;
                    }
                    ref[i * n + j] = alpha * s + beta * (double)c[i * n + j];
                }
            ops->matmul(c, a, b, m, n, k, ta, tb, alpha, beta);
            char what[32];
            snprintf(what, sizeof what, "matmul ta=%d tb=%d", ta, tb);
            CU_ASSERT(close_to(what, c, ref, (size_t)m * n, 1e-5, 1e-6));
            free(a);
            free(b);
            free(c);
        }
}

static void test_linear_forward(void)
{
    const int N = 10, C = 12, OC = 9;
    float *inp = frand((size_t)N * C, 1.0f), *w = frand((size_t)C * OC, 0.5f);
    float *bias = frand(OC, 1.0f), *out = frand((size_t)N * OC, 9.0f);
    double *di = to_double(inp, (size_t)N * C), *dw = to_double(w, (size_t)C * OC);
    double *db = to_double(bias, OC), ref[10 * 9];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        ref_linear(ref, di, dw, with_bias ? db : NULL, N, C, OC);
        ops->linear_forward(out, inp, w, with_bias ? bias : NULL, N, C, OC);
        CU_ASSERT(close_to(with_bias ? "linear bias" : "linear", out, ref, (size_t)N * OC,
                           1e-5, 1e-6));
    }
    free(inp), free(w), free(bias), free(out), free(di), free(dw), free(db);
}

struct lin_ctx {
    double *inp, *w, *b, *R, *out;
    int N, C, OC;
};

static double lin_loss(void *p)
{
    struct lin_ctx *c = p;
    ref_linear(c->out, c->inp, c->w, c->b, c->N, c->C, c->OC);
    return dot_d(c->out, c->R, (size_t)c->N * c->OC);
}

static void test_linear_backward(void)
{
    const int N = 10, C = 12, OC = 9;
    const size_t nI = (size_t)N * C, nW = (size_t)C * OC, nO = (size_t)N * OC;
    float *inp = frand(nI, 1.0f), *w = frand(nW, 0.5f), *bias = frand(OC, 1.0f);
    float *R = frand(nO, 1.0f);
    struct lin_ctx c = {to_double(inp, nI), to_double(w, nW), to_double(bias, OC),
                        to_double(R, nO), malloc(nO * sizeof(double)), N, C, OC};
    double *gi = malloc(nI * sizeof *gi), *gw = malloc(nW * sizeof *gw);
    double *gb = malloc(OC * sizeof *gb);
    fd_grad(gi, c.inp, nI, lin_loss, &c);
    fd_grad(gw, c.w, nW, lin_loss, &c);
    fd_grad(gb, c.b, OC, lin_loss, &c);
    float *di0 = frand(nI, 1.0f), *dw0 = frand(nW, 1.0f), *db0 = frand(OC, 1.0f);
    float *di = fcopy(di0, nI), *dw = fcopy(dw0, nW), *db = fcopy(db0, OC);
    ops->linear_backward(di, dw, db, R, inp, w, N, C, OC);
    double *ri = plus(di0, gi, nI), *rw = plus(dw0, gw, nW), *rb = plus(db0, gb, OC);
    CU_ASSERT(close_to("linear dinp", di, ri, nI, 1e-5, 1e-5));
    CU_ASSERT(close_to("linear dweight", dw, rw, nW, 1e-5, 1e-5));
    CU_ASSERT(close_to("linear dbias", db, rb, OC, 1e-5, 1e-5));
    /* NULL dinp / dbias are skipped; dweight accumulates again. */
    memcpy(dw, dw0, nW * sizeof *dw);
    ops->linear_backward(NULL, dw, NULL, R, inp, w, N, C, OC);
    CU_ASSERT(close_to("linear dweight (no dinp/dbias)", dw, rw, nW, 1e-5, 1e-5));
    free(inp), free(w), free(bias), free(R), free(c.inp), free(c.w), free(c.b), free(c.R);
    free(c.out), free(gi), free(gw), free(gb), free(di0), free(dw0), free(db0), free(di);
    free(dw), free(db), free(ri), free(rw), free(rb);
}

/* ---------- embedding ---------- */

enum { EB = 2, ET = 5, EC = 12, EV = 37, EMAXT = 7 };
static const int32_t etok[EB * ET] = {3, 36, 3, 0, 17, 3, 5, 36, 0, 3}; /* repeats on purpose */

/* The case under finite differences: the table holds token rows [ev0,
 * ev0+eV) (wte the slice, eV x EC), and adds wpe or not. */
static int ev0, eV, ewpe;
static const int32_t *epos; /* positions within documents, or NULL (0..ET-1) */
static const int32_t epos_docs[EB * ET] = {0, 1, 0, 1, 2, 0, 0, 1, 2, 3};

struct emb_ctx {
    double *wte, *wpe, *R;
};

/* out[bt,i] of the split embedding in double. */
static double emb_ref(const double *wte, const double *wpe, int bt, int i)
{
    const int r = etok[bt] - ev0;
    return (r >= 0 && r < eV ? wte[r * EC + i] : 0.0) + (ewpe ? wpe[(epos ? epos[bt] : bt % ET) * EC + i] : 0.0);
}

static double emb_loss(void *p)
{
    struct emb_ctx *c = p;
    double s = 0.0;
    for (int bt = 0; bt < EB * ET; bt++)
        for (int i = 0; i < EC; i++)
            s += emb_ref(c->wte, c->wpe, bt, i) * c->R[bt * EC + i];
    return s;
}

/* One table slice [v0, v0+V) of an EV-token vocabulary, with or without
 * wpe: forward (out pre-filled: rows of tokens outside the slice are
 * written 0) against the double reference, backward into pre-filled
 * gradients (accumulation) against finite differences of emb_loss. */
static void embedding_case(int v0, int V, int with_wpe)
{
    const size_t nTE = (size_t)V * EC, nPE = EMAXT * EC, nO = EB * ET * EC;
    float *wte = frand(nTE, 1.0f), *wpe = frand(nPE, 1.0f), *out = frand(nO, 1.0f);
    float *R = frand(nO, 1.0f);
    ev0 = v0, eV = V, ewpe = with_wpe;
    struct emb_ctx c = {to_double(wte, nTE), to_double(wpe, nPE), to_double(R, nO)};
    double ref[EB * ET * EC];
    char what[96];
    for (int bt = 0; bt < EB * ET; bt++)
        for (int i = 0; i < EC; i++)
            ref[bt * EC + i] = emb_ref(c.wte, c.wpe, bt, i);
    ops->embedding_forward(out, etok, epos, wte, with_wpe ? wpe : NULL, EB, ET, EC, v0, V);
    snprintf(what, sizeof what, "embedding fwd [%d,%d) wpe %d pos %d", v0, v0 + V, with_wpe, epos != NULL);
    CU_ASSERT(close_to(what, out, ref, nO, 1e-6, 1e-7));

    double *gte = malloc(nTE * sizeof *gte), *gpe = malloc(nPE * sizeof *gpe);
    fd_grad(gte, c.wte, nTE, emb_loss, &c);
    fd_grad(gpe, c.wpe, nPE, emb_loss, &c);
    float *dte0 = frand(nTE, 1.0f), *dpe0 = frand(nPE, 1.0f);
    float *dte = fcopy(dte0, nTE), *dpe = fcopy(dpe0, nPE);
    ops->embedding_backward(dte, with_wpe ? dpe : NULL, R, etok, epos, EB, ET, EC, v0, V);
    double *rte = plus(dte0, gte, nTE), *rpe = plus(dpe0, gpe, nPE);
    snprintf(what, sizeof what, "embedding dwte [%d,%d) wpe %d", v0, v0 + V, with_wpe);
    CU_ASSERT(close_to(what, dte, rte, nTE, 1e-5, 1e-5));
    snprintf(what, sizeof what, "embedding dwpe [%d,%d) wpe %d", v0, v0 + V, with_wpe);
    CU_ASSERT(close_to(what, dpe, rpe, nPE, 1e-5, 1e-5)); /* unchanged (gpe 0) without wpe */
    free(wte), free(wpe), free(out), free(R), free(c.wte), free(c.wpe), free(c.R);
    free(gte), free(gpe), free(dte0), free(dpe0), free(dte), free(dpe), free(rte), free(rpe);
}

static void test_embedding(void)
{
    embedding_case(0, EV, 1); /* the whole table, as GPT-2 runs it */
    epos = epos_docs;           /* documents packed in the rows: positions restart */
    embedding_case(0, EV, 1);
    embedding_case(10, 20, 1);
    epos = NULL;
}

/* ---------- layernorm ---------- */

struct ln_ctx {
    double *inp, *w, *b, *R, *out;
    int N, C;
};

static double ln_loss(void *p)
{
    struct ln_ctx *c = p;
    ref_layernorm(c->out, c->inp, c->w, c->b, c->N, c->C, NULL, NULL);
    return dot_d(c->out, c->R, (size_t)c->N * c->C);
}

static void test_layernorm(void)
{
    const int N = 10, C = 12;
    const size_t nI = (size_t)N * C;
    float *inp = frand(nI, 2.0f), *w = frand(C, 1.0f), *b = frand(C, 1.0f), *R = frand(nI, 1.0f);
    for (size_t i = 0; i < nI; i++)
        inp[i] += 3.0f; /* non-zero mean */
    struct ln_ctx c = {to_double(inp, nI), to_double(w, C), to_double(b, C), to_double(R, nI),
                       malloc(nI * sizeof(double)), N, C};
    double *ref = malloc(nI * sizeof *ref), rmean[10], rrstd[10];
    ref_layernorm(ref, c.inp, c.w, c.b, N, C, rmean, rrstd);
    float *out = frand(nI, 1.0f), mean[10], rstd[10];
    ops->layernorm_forward(out, mean, rstd, inp, w, b, N, C);
    CU_ASSERT(close_to("layernorm out", out, ref, nI, 1e-5, 1e-6));
    CU_ASSERT(close_to("layernorm mean", mean, rmean, N, 1e-6, 1e-7));
    CU_ASSERT(close_to("layernorm rstd", rstd, rrstd, N, 1e-5, 1e-7));

    double *gi = malloc(nI * sizeof *gi), gw[12], gb[12];
    fd_grad(gi, c.inp, nI, ln_loss, &c);
    fd_grad(gw, c.w, C, ln_loss, &c);
    fd_grad(gb, c.b, C, ln_loss, &c);
    float *di0 = frand(nI, 1.0f), *dw0 = frand(C, 1.0f), *db0 = frand(C, 1.0f);
    float *di = fcopy(di0, nI), *dw = fcopy(dw0, C), *db = fcopy(db0, C);
    ops->layernorm_backward(di, dw, db, R, inp, w, mean, rstd, N, C);
    double *ri = plus(di0, gi, nI), *rw = plus(dw0, gw, C), *rb = plus(db0, gb, C);
    CU_ASSERT(close_to("layernorm dinp", di, ri, nI, 1e-4, 1e-5));
    CU_ASSERT(close_to("layernorm dweight", dw, rw, C, 1e-4, 1e-5));
    CU_ASSERT(close_to("layernorm dbias", db, rb, C, 1e-4, 1e-5));
    free(inp), free(w), free(b), free(R), free(c.inp), free(c.w), free(c.b), free(c.R);
    free(c.out), free(ref), free(out), free(gi), free(di0), free(dw0), free(db0), free(di);
    free(dw), free(db), free(ri), free(rw), free(rb);
}

/* ---------- gelu, residual, scale ---------- */

struct gelu_ctx {
    double *x, *R;
    size_t n;
};

static double gelu_loss(void *p)
{
    struct gelu_ctx *c = p;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++)
        s += ref_gelu1(c->x[i]) * c->R[i];
    return s;
}

static void test_gelu(void)
{
    /* 40001 elements: takes the parallel path; inputs span the range where
     * tanh saturates (and a few far beyond it). */
    const size_t n = 40001;
    float *x = frand(n, 7.0f), *R = frand(n, 1.0f);
    x[0] = 0.0f, x[1] = 60.0f, x[2] = -60.0f, x[3] = 1e-6f, x[4] = -1e-6f;
    float *out = malloc(n * sizeof *out);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = ref_gelu1(x[i]);
    ops->gelu_forward(out, x, n);
    CU_ASSERT(close_to("gelu fwd", out, ref, n, 1e-5, 1e-7));

    struct gelu_ctx c = {to_double(x, n), to_double(R, n), n};
    double *g = malloc(n * sizeof *g);
    /* Per-element derivative by central differences of gelu itself (the
     * loss is separable, so this is fd of L at O(n) cost). */
    for (size_t i = 0; i < n; i++) {
        const double h = 1e-5, xi = c.x[i];
        g[i] = (ref_gelu1(xi + h) - ref_gelu1(xi - h)) / (2 * h) * c.R[i];
    }
    float *d0 = frand(n, 1.0f), *d = fcopy(d0, n);
    ops->gelu_backward(d, x, R, n);
    double *rd = plus(d0, g, n);
    CU_ASSERT(close_to("gelu dinp", d, rd, n, 1e-5, 1e-6));
    /* The full-loss fd on a few elements agrees with the separable one. */
    double g5[5];
    fd_grad(g5, c.x + 1000, 5, gelu_loss, &c);
    for (int i = 0; i < 5; i++)
        CU_ASSERT(fabs(g5[i] - g[1000 + i]) < 1e-4 * (1.0 + fabs(g[1000 + i])));
    free(x), free(R), free(out), free(ref), free(c.x), free(c.R), free(g), free(d0), free(d);
    free(rd);
}

static void test_residual_scale(void)
{
    const size_t n = 70001;
    float *a = frand(n, 1.0f), *b = frand(n, 1.0f), *out = malloc(n * sizeof *out);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = (double)a[i] + b[i];
    ops->residual_forward(out, a, b, n);
    CU_ASSERT(close_to("residual", out, ref, n, 1e-7, 0.0));
    ops->residual_forward(a, a, b, n); /* in place */
    CU_ASSERT(close_to("residual in place", a, ref, n, 1e-7, 0.0));
    for (size_t i = 0; i < n; i++)
        ref[i] = (double)a[i] * 0.37;
    ops->scale(a, 0.37f, n);
    CU_ASSERT(close_to("scale", a, ref, n, 1e-7, 0.0));
    ops->scale(a, 1.0f, 0); /* empty is fine */
    free(a), free(b), free(out), free(ref);
}

/* ---------- attention ---------- */

/* Shape of the attention case under finite differences (att_loss). */
static int fB, fT, fC, fNH;

struct att_ctx {
    double *qkv, *R, *out, *att, *lse;
};

static double att_loss(void *p)
{
    struct att_ctx *c = p;
    ref_attention(c->out, c->att, c->lse, c->qkv, fB, fT, fC, fNH);
    return dot_d(c->out, c->R, (size_t)fB * fT * fC);
}

/* One attention shape: forward (out, lse) against the double reference;
 * backward from the op's own saved out and lse, into a pre-filled dqkv
 * (accumulation), against finite differences (fd: small shapes) or the
 * analytic double backward. scratch is exactly attention_scratch_floats
 * long, so an overrun shows under ASan. */
static void attention_case(int B, int T, int C, int NH, int fd)
{
    const size_t nQ = (size_t)B * T * 3 * C, nO = (size_t)B * T * C;
    const size_t nL = (size_t)B * NH * T, nA = nL * T;
    char what[96];
    float *qkv = frand(nQ, 2.0f), *R = frand(nO, 1.0f);
    float *out = frand(nO, 1.0f), *lse = frand(nL, 1.0f);
    const size_t n_scratch = ops->attention_scratch_floats(B, T, C, NH);
    CU_ASSERT(n_scratch == nL);
    float *scratch = frand(n_scratch, 1.0f);
    struct att_ctx c = {to_double(qkv, nQ), to_double(R, nO), malloc((nO ? nO : 1) * sizeof(double)),
                        malloc((nA ? nA : 1) * sizeof(double)), malloc((nL ? nL : 1) * sizeof(double))};
    fB = B, fT = T, fC = C, fNH = NH;
    att_loss(&c);
    ops->attention_forward(out, lse, qkv, B, T, C, NH);
    snprintf(what, sizeof what, "attention out B%d T%d C%d NH%d", B, T, C, NH);
    CU_ASSERT(close_to(what, out, c.out, nO, 1e-5, 1e-6));
    snprintf(what, sizeof what, "attention lse B%d T%d C%d NH%d", B, T, C, NH);
    CU_ASSERT(close_to(what, lse, c.lse, nL, 1e-5, 1e-6));

    double *g = calloc(nQ ? nQ : 1, sizeof *g);
    if (fd) {
        fd_grad(g, c.qkv, nQ, att_loss, &c);
    } else {
        ref_attention_backward(g, c.R, c.qkv, c.att, B, T, C, NH);
    }
    float *d0 = frand(nQ, 1.0f), *d = fcopy(d0, nQ);
    ops->attention_backward(d, scratch, R, qkv, out, lse, B, T, C, NH);
    double *rd = plus(d0, g, nQ);
    snprintf(what, sizeof what, "attention dqkv B%d T%d C%d NH%d", B, T, C, NH);
    CU_ASSERT(close_to(what, d, rd, nQ, fd ? 1e-4 : 1e-5, 1e-5));
    free(qkv), free(R), free(out), free(lse), free(scratch), free(c.qkv), free(c.R);
    free(c.out), free(c.att), free(c.lse), free(g), free(d0), free(d), free(rd);
}

static void test_attention(void)
{
    attention_case(2, 5, 12, 3, 1);   /* HS 4 */
    attention_case(1, 1, 16, 2, 1);   /* T 1: one key per row, HS 8 */
    attention_case(2, 7, 16, 2, 1);   /* HS 8 */
    /* the analytic backward against finite differences on a 2-block row
     * (keys go in blocks of 64): the reference the larger cases use */
    attention_case(1, 67, 8, 1, 1);
    attention_case(2, 5, 16, 2, 0);   /* HS 8 */
    attention_case(1, 67, 128, 2, 0); /* HS 64, a partial second key block */
    attention_case(1, 130, 64, 1, 0); /* HS 64, three key blocks */
    attention_case(1, 40, 256, 2, 0); /* HS 128, the largest */
}

/* Large scores (hundreds): the online softmax must not overflow, as exp of
 * unshifted scores would. A score s rounded to fp32 is off by |s| eps, and so
 * is its probability, so the tolerance grows with the scores (not the
 * algorithm's error: the same bound holds for any fp32 implementation). */
static void test_attention_large_scores(void)
{
    enum { B = 1, T = 70, C = 16, NH = 2 };
    const size_t nQ = (size_t)B * T * 3 * C, nO = (size_t)B * T * C, nL = (size_t)B * NH * T;
    float *qkv = frand(nQ, 30.0f), *out = malloc(nO * sizeof *out), *lse = malloc(nL * sizeof *lse);
    double *dq = to_double(qkv, nQ), *ro = malloc(nO * sizeof *ro), *rl = malloc(nL * sizeof *rl);
    double *ra = malloc(nL * T * sizeof *ra);
    ref_attention(ro, ra, rl, dq, B, T, C, NH);
    ops->attention_forward(out, lse, qkv, B, T, C, NH);
    CU_ASSERT(close_to("attention out, large scores", out, ro, nO, 2e-4, 1e-5));
    CU_ASSERT(close_to("attention lse, large scores", lse, rl, nL, 1e-5, 1e-6));
    free(qkv), free(out), free(lse), free(dq), free(ro), free(rl), free(ra);
}

/* ---------- softmax + cross-entropy ---------- */

enum { XN = 6, XV = 37 };
static const int32_t xtg[XN] = {4, 36, -1, 0, 17, 17};

struct xent_ctx {
    double *logits;
    double dloss;
};

static double xent_loss(void *p)
{
    struct xent_ctx *c = p;
    return c->dloss * ref_xent(NULL, c->logits, xtg, XN, XV);
}

static void test_softmax_xent(void)
{
    const size_t n = XN * XV;
    float *logits = frand(n, 8.0f);
    for (int j = 0; j < XV; j++)
        logits[1 * XV + j] += 1000.0f; /* stability: would overflow expf without the max */
    logits[3 * XV + 0] = 60.0f;        /* a confidently right row */
    logits[4 * XV + 5] = 70.0f;        /* a confidently wrong row (p[target] ~ 1e-30) */
    const float dloss = 1.0f / 5.0f;   /* mean over the 5 non-ignored rows */
    struct xent_ctx c = {to_double(logits, n), dloss};
    double rl[XN];
    ref_xent(rl, c.logits, xtg, XN, XV);
    double *g = malloc(n * sizeof *g);
    fd_grad(g, c.logits, n, xent_loss, &c);
    float losses[XN];
    ops->softmax_xent(losses, logits, xtg, dloss, XN, XV);
    CU_ASSERT(close_to("xent losses", losses, rl, XN, 1e-5, 1e-6));
    CU_ASSERT(losses[2] == 0.0f);
    for (int j = 0; j < XV; j++)
        CU_ASSERT(logits[2 * XV + j] == 0.0f);
    CU_ASSERT(close_to("xent dlogits", logits, g, n, 1e-4, 1e-6));

    /* A wide row, at the benchmark's vocab: exact softmax, sum of gradient 0. */
    const int V = 50304;
    float *wide = frand(V, 10.0f), wl;
    double *dw = to_double(wide, V);
    const int32_t tg = 12345;
    double l, mx = -INFINITY, s = 0.0;
    l = ref_xent(NULL, dw, &tg, 1, V);
    for (int j = 0; j < V; j++)
        mx = fmax(mx, dw[j]);
    for (int j = 0; j < V; j++)
        s += exp(dw[j] - mx);
    for (int j = 0; j < V; j++)
        dw[j] = exp(dw[j] - mx) / s - (j == tg);
    ops->softmax_xent(&wl, wide, &tg, 1.0f, 1, V);
    CU_ASSERT(fabs(wl - l) <= 1e-5 * fabs(l));
    CU_ASSERT(close_to("xent wide dlogits", wide, dw, V, 1e-5, 1e-6));
    free(logits), free(c.logits), free(g), free(wide), free(dw);
}

/* The exp inside softmax_xent over its whole useful range: with logits
 * spanning [-80, 0] (max exactly 0) the probabilities run from 1e-36 to ~0.02 (all normal floats), and each must
 * be within a few float ulps of exp(x - max) / sum. */
static void test_softmax_exp_accuracy(void)
{
    const int V = 4099;
    float *x = malloc(V * sizeof *x), loss;
    double *ref = malloc(V * sizeof *ref), s = 0.0;
    for (int j = 0; j < V; j++)
        x[j] = -80.0f + 80.0f * (float)j / (float)(V - 1) + 1e-3f * rng_unif();
    x[V - 1] = 0.0f; /* max exactly 0, so x - max is exact and only exp errs */
    for (int j = 0; j < V; j++)
        s += exp((double)x[j] - x[V - 1]);
    for (int j = 0; j < V; j++)
        ref[j] = exp((double)x[j] - x[V - 1]) / s;
    const int32_t tg = -1 + V; /* the largest logit: its gradient is p - 1 */
    ref[tg] -= 1.0;
    ops->softmax_xent(&loss, x, &tg, 1.0f, 1, V);
    double worst = 0.0;
    for (int j = 0; j < V; j++)
        worst = fmax(worst, fabs(x[j] - ref[j]) / fabs(ref[j]));
    printf("\n  softmax exp: max relative error %.3g ... ", worst);
    CU_ASSERT(worst < 3e-7); /* ~5 float ulp: exp (<= 1.5 ulp), 1/sum and the product */
    free(x), free(ref);
}

/* ---------- optimizer and reductions ---------- */

static void test_adamw(void)
{
    const size_t sizes[2] = {37, 100003}; /* serial path; parallel path with a tail */
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    for (int si = 0; si < 2; si++) {
        const size_t n = sizes[si];
        float *p = frand(n, 1.0f), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
        double *rp = to_double(p, n), *rm = calloc(n, sizeof *rm), *rv = calloc(n, sizeof *rv);
        int ok = 1;
        for (int t = 1; t <= 5; t++) {
            float *g = frand(n, t == 3 ? 1e-3f : 1.0f);
            ops->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, t);
            const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
            for (size_t i = 0; i < n; i++) {
                rm[i] = (double)b1 * rm[i] + (1.0 - (double)b1) * g[i];
                rv[i] = (double)b2 * rv[i] + (1.0 - (double)b2) * (double)g[i] * g[i];
                const double mh = rm[i] / bc1, vh = rv[i] / bc2;
                rp[i] -= (double)lr * (mh / (sqrt(vh) + (double)eps) + (double)wd * rp[i]);
            }
            ok &= close_to("adamw param", p, rp, n, 1e-5, 1e-6);
            ok &= close_to("adamw m", m, rm, n, 1e-5, 1e-6);
            ok &= close_to("adamw v", v, rv, n, 1e-5, 1e-6);
            free(g);
        }
        CU_ASSERT(ok);
        free(p), free(m), free(v), free(rp), free(rm), free(rv);
    }
}

/* Elements give the same bits whichever code path (vector lanes or scalar
 * tail) handles them: the same update on a copy shifted by one element. */
static void test_adamw_lanes(void)
{
    const size_t n = 1001;
    float *p = frand(n, 1.0f), *g = frand(n, 1.0f), *m = frand(n, 0.1f), *v = frand(n, 0.1f);
    for (size_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    float *p2 = fcopy(p, n), *m2 = fcopy(m, n), *v2 = fcopy(v, n);
    ops->adamw(p, g, m, v, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
    ops->adamw(p2 + 1, g + 1, m2 + 1, v2 + 1, n - 1, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
    CU_ASSERT(!memcmp(p + 1, p2 + 1, (n - 1) * sizeof *p));
    CU_ASSERT(!memcmp(m + 1, m2 + 1, (n - 1) * sizeof *p));
    CU_ASSERT(!memcmp(v + 1, v2 + 1, (n - 1) * sizeof *p));
    free(p), free(g), free(m), free(v), free(p2), free(m2), free(v2);
}

static void test_sumsq(void)
{
    const size_t sizes[3] = {0, 1001, 3000017};
    for (int si = 0; si < 3; si++) {
        const size_t n = sizes[si];
        float *x = frand(n, 3.0f);
        double ref = 0.0;
        for (size_t i = 0; i < n; i++)
            ref += (double)x[i] * x[i];
        const double got = ops->sumsq(x, n);
        CU_ASSERT(fabs(got - ref) <= 1e-12 * ref);
        free(x);
    }
}

/* ---------- determinism ---------- */

/* Runs the non-BLAS ops on sizes that take their parallel paths with the
 * given thread count and returns a checksum-free copy of every output. */
enum { DB = 4, DT = 32, DC = 256, DNH = 4, DV = 1000 };

struct det_out {
    float *dwte, *dwpe, *ln_dx, *ln_dw, *ln_db, *att_out, *lse, *dqkv, *logits, *losses;
    float *dbias, *p;
    double ss;
};

static void det_run(struct det_out *o, int threads)
{
    const size_t BT = DB * DT, nO = BT * DC, nQ = BT * 3 * DC, nL = (size_t)DB * DNH * DT;
    omp_set_num_threads(threads);
    rng_state = 12345;
    int32_t tok[DB * DT];
    for (size_t i = 0; i < BT; i++)
        tok[i] = (int32_t)(rng_next() % 7); /* many repeats: scatter collisions */
    float *dout = frand(nO, 1.0f), *inp = frand(nO, 1.0f), *w = frand(DC, 1.0f);
    float *b = frand(DC, 1.0f), *qkv = frand(nQ, 2.0f), *dy = frand(nO, 1.0f);
    float *logits = frand(BT * DV, 5.0f), *g = frand(nO, 1.0f);
    int32_t tg[DB * DT];
    for (size_t i = 0; i < BT; i++)
        tg[i] = i % 9 == 4 ? -1 : (int32_t)(rng_next() % DV);
    float mean[DB * DT], rstd[DB * DT], *lnout = malloc(nO * sizeof(float));
    float *scratch = malloc(ops->attention_scratch_floats(DB, DT, DC, DNH) * sizeof(float));

    o->dwte = calloc(7 * DC, sizeof(float));
    o->dwpe = calloc(DT * DC, sizeof(float));
    ops->embedding_backward(o->dwte, o->dwpe, dout, tok, NULL, DB, DT, DC, 0, 7);
    ops->layernorm_forward(lnout, mean, rstd, inp, w, b, (int)BT, DC);
    o->ln_dx = calloc(nO, sizeof(float));
    o->ln_dw = calloc(DC, sizeof(float));
    o->ln_db = calloc(DC, sizeof(float));
    ops->layernorm_backward(o->ln_dx, o->ln_dw, o->ln_db, dout, inp, w, mean, rstd, (int)BT, DC);
    o->att_out = malloc(nO * sizeof(float));
    o->lse = malloc(nL * sizeof(float));
    ops->attention_forward(o->att_out, o->lse, qkv, DB, DT, DC, DNH);
    o->dqkv = calloc(nQ, sizeof(float));
    ops->attention_backward(o->dqkv, scratch, dy, qkv, o->att_out, o->lse, DB, DT, DC, DNH);
    o->losses = malloc(BT * sizeof(float));
    ops->softmax_xent(o->losses, logits, tg, 0.01f, (int)BT, DV);
    o->logits = logits;
    o->dbias = calloc(DC, sizeof(float));
    float *dw = calloc((size_t)DC * DC, sizeof(float));
    ops->linear_backward(NULL, dw, o->dbias, dout, inp, w, (int)BT, DC, DC);
    o->p = fcopy(inp, nO);
    float *m = calloc(nO, sizeof(float)), *v = calloc(nO, sizeof(float));
    ops->adamw(o->p, g, m, v, nO, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
    o->ss = ops->sumsq(dout, nO);
    free(dout), free(inp), free(w), free(b), free(qkv), free(dy), free(g), free(lnout);
    free(scratch), free(dw), free(m), free(v);
}

static void det_free(struct det_out *o)
{
    free(o->dwte), free(o->dwpe), free(o->ln_dx), free(o->ln_dw), free(o->ln_db);
    free(o->att_out), free(o->lse), free(o->dqkv), free(o->logits), free(o->losses);
    free(o->dbias), free(o->p);
}

static int det_same(const struct det_out *a, const struct det_out *b)
{
    const size_t BT = DB * DT, nO = BT * DC;
    const size_t nL = (size_t)DB * DNH * DT;
    return !memcmp(a->dwte, b->dwte, 7 * DC * sizeof(float)) &&
           !memcmp(a->dwpe, b->dwpe, DT * DC * sizeof(float)) &&
           !memcmp(a->ln_dx, b->ln_dx, nO * sizeof(float)) &&
           !memcmp(a->ln_dw, b->ln_dw, DC * sizeof(float)) &&
           !memcmp(a->ln_db, b->ln_db, DC * sizeof(float)) &&
           !memcmp(a->att_out, b->att_out, nO * sizeof(float)) &&
           !memcmp(a->lse, b->lse, nL * sizeof(float)) &&
           !memcmp(a->dqkv, b->dqkv, 3 * nO * sizeof(float)) &&
           !memcmp(a->logits, b->logits, BT * DV * sizeof(float)) &&
           !memcmp(a->losses, b->losses, BT * sizeof(float)) &&
           !memcmp(a->dbias, b->dbias, DC * sizeof(float)) &&
           !memcmp(a->p, b->p, nO * sizeof(float)) && a->ss == b->ss;
}

static void test_determinism(void)
{
    const int saved = omp_get_max_threads();
    struct det_out r1, r2, r3;
    det_run(&r1, 2);
    det_run(&r2, 2);
    det_run(&r3, 1);
    CU_ASSERT(det_same(&r1, &r2)); /* run to run */
    CU_ASSERT(det_same(&r1, &r3)); /* 2 threads vs 1 */
    det_free(&r1), det_free(&r2), det_free(&r3);
    omp_set_num_threads(saved);
}

/* ---------- linear + GELU, fused ---------- */

static double ref_gelu_grad1(double x)
{
    const double k = sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

static void test_linear_gelu(void)
{
    const int N = 9, C = 7, OC = 10;
    const size_t nin = (size_t)N * C, nout = (size_t)N * OC;
    float *inp = frand(nin, 1.0f), *w = frand((size_t)C * OC, 0.7f), *bias = frand(OC, 0.5f);
    float *out = frand(nout, 9.0f), *pre = frand(nout, 9.0f), *out2 = frand(nout, 9.0f);
    double *di = to_double(inp, nin), *dw = to_double(w, (size_t)C * OC), *db = to_double(bias, OC);
    double rpre[9 * 10], rout[9 * 10];
    ref_linear(rpre, di, dw, db, N, C, OC);
    for (size_t i = 0; i < nout; i++)
        rout[i] = ref_gelu1(rpre[i]);
    ops->linear_gelu_forward(out, pre, inp, w, bias, N, C, OC);
    CU_ASSERT(close_to("linear_gelu pre", pre, rpre, nout, 1e-5, 1e-6));
    CU_ASSERT(close_to("linear_gelu out", out, rout, nout, 1e-5, 1e-6));
    ops->linear_gelu_forward(out2, NULL, inp, w, bias, N, C, OC); /* pre not kept */
    CU_ASSERT(close_to("linear_gelu out, no pre", out2, rout, nout, 1e-5, 1e-6));

    /* backward of y = gelu(pre) @ w2 + b2 (the second product): dpre written */
    const int OC2 = 5;
    float *w2 = frand((size_t)OC * OC2, 0.7f), *dout = frand((size_t)N * OC2, 1.0f);
    float *dpre = frand(nout, 9.0f), *dw2 = frand((size_t)OC * OC2, 1.0f), *db2 = frand(OC2, 1.0f);
    double rdpre[9 * 10], rdw2[10 * 5], rdb2[5];
    for (int i = 0; i < N; i++)
        for (int c = 0; c < OC; c++) {
            double s = 0.0;
            for (int o = 0; o < OC2; o++)
                s += (double)dout[i * OC2 + o] * w2[c * OC2 + o];
            rdpre[i * OC + c] = s * ref_gelu_grad1(pre[i * OC + c]);
        }
    for (int c = 0; c < OC; c++)
        for (int o = 0; o < OC2; o++) {
            double s = dw2[c * OC2 + o];
            for (int i = 0; i < N; i++)
                s += (double)out[i * OC + c] * dout[i * OC2 + o];
            rdw2[c * OC2 + o] = s;
        }
    for (int o = 0; o < OC2; o++) {
        double s = db2[o];
        for (int i = 0; i < N; i++)
            s += dout[i * OC2 + o];
        rdb2[o] = s;
    }
    ops->linear_gelu_backward(dpre, dw2, db2, dout, out, pre, w2, N, OC, OC2);
    CU_ASSERT(close_to("linear_gelu_backward dpre (written)", dpre, rdpre, nout, 1e-5, 1e-6));
    CU_ASSERT(close_to("linear_gelu_backward dweight", dw2, rdw2, (size_t)OC * OC2, 1e-5, 1e-6));
    CU_ASSERT(close_to("linear_gelu_backward dbias", db2, rdb2, OC2, 1e-5, 1e-6));
    free(inp), free(w), free(bias), free(out), free(pre), free(out2), free(di), free(dw), free(db);
    free(w2), free(dout), free(dpre), free(dw2), free(db2);
}

/* ---------- the (out, in) linear: nn.Linear's layout and the tied LM head ---------- */

static void test_linear_t(void)
{
    const int N = 7, C = 6, V = 11;
    float *inp = frand((size_t)N * C, 1.0f), *wte = frand((size_t)V * C, 1.0f), *bias = frand(V, 1.0f);
    float *logits = frand((size_t)N * V, 9.0f), *dl = frand((size_t)N * V, 1.0f);
    float *dinp = frand((size_t)N * C, 1.0f), *dwte = frand((size_t)V * C, 1.0f), *db = frand(V, 1.0f);
    double ref[7 * 11], rdi[7 * 6], rdw[11 * 6], rdb[11];
    for (int pass = 0; pass < 2; pass++) { /* pass 0: no bias (the head); 1: with one */
        for (int i = 0; i < N; i++)
            for (int v = 0; v < V; v++) {
                double s = pass ? bias[v] : 0.0;
                for (int c = 0; c < C; c++)
                    s += (double)inp[i * C + c] * wte[v * C + c];
                ref[i * V + v] = s;
            }
        for (int i = 0; i < N; i++) /* dinp += dlogits @ wte, old value kept */
            for (int c = 0; c < C; c++) {
                double s = dinp[i * C + c];
                for (int v = 0; v < V; v++)
                    s += (double)dl[i * V + v] * wte[v * C + c];
                rdi[i * C + c] = s;
            }
        for (int v = 0; v < V; v++) { /* dwte += dlogits^T @ inp; dbias += column sums */
            for (int c = 0; c < C; c++) {
                double s = dwte[v * C + c];
                for (int i = 0; i < N; i++)
                    s += (double)dl[i * V + v] * inp[i * C + c];
                rdw[v * C + c] = s;
            }
            double s = db[v];
            for (int i = 0; i < N; i++)
                s += dl[i * V + v];
            rdb[v] = s;
        }
        float *dw0 = fcopy(dwte, (size_t)V * C), *db0 = fcopy(db, V);
        ops->linear_t_forward(logits, inp, wte, pass ? bias : NULL, N, C, V);
        CU_ASSERT(close_to("linear_t_forward", logits, ref, (size_t)N * V, 1e-5, 1e-6));
        ops->linear_t_backward(dinp, dwte, pass ? db : NULL, dl, inp, wte, N, C, V);
        CU_ASSERT(close_to("linear_t_backward dinp", dinp, rdi, (size_t)N * C, 1e-5, 1e-6));
        CU_ASSERT(close_to("linear_t_backward dweight", dwte, rdw, (size_t)V * C, 1e-5, 1e-6));
        if (pass) {
            CU_ASSERT(close_to("linear_t_backward dbias", db, rdb, V, 1e-5, 1e-6));
        } else {
            CU_ASSERT(memcmp(db, db0, V * sizeof(float)) == 0); /* NULL dbias: untouched */
        }
        /* dinp NULL: skipped; dweight accumulates the same delta again */
        float *dw2 = fcopy(dwte, (size_t)V * C);
        for (size_t i = 0; i < (size_t)V * C; i++)
            rdw[i] = (double)dwte[i] + (rdw[i] - dw0[i]);
        ops->linear_t_backward(NULL, dw2, NULL, dl, inp, wte, N, C, V);
        CU_ASSERT(close_to("linear_t_backward no dinp", dw2, rdw, (size_t)V * C, 1e-5, 1e-6));
        free(dw0), free(db0), free(dw2);
    }
    free(inp), free(wte), free(bias), free(logits), free(dl), free(dinp), free(dwte), free(db);
}

/* ---------- the act-bf16 table (cpu-bf16) ---------- */

/* A weight gradient of the bf16 table against the fp32 table's: both are
 * fp32 sums of the same n exact products (bf16 x bf16 fits in fp32) plus
 * the same old value, in different orders (the AVX512_BF16 product's
 * chain, sgemm's), so each lies within gamma(n+1) S of the exact sum, S =
 * |old| + sum |products| (Higham), and they within 2 gamma(n+1) S of each
 * other. got, ref, old (P,Q); old NULL for zeros; the products a(n,P)^T b(n,Q). */
static int sums_close(const char *what, const float *got, const float *ref, const float *old,
                      const float *a, const float *b, int n, int P, int Q)
{
    const double u = 0x1p-24, gam = (n + 1) * u / (1.0 - (n + 1) * u);
    for (int p = 0; p < P; p++)
        for (int q = 0; q < Q; q++) {
            double S = old ? fabs((double)old[p * Q + q]) : 0.0;
            for (int i = 0; i < n; i++)
                S += fabs((double)a[i * P + p] * b[i * Q + q]);
            const double err = fabs((double)got[p * Q + q] - ref[p * Q + q]);
            if (!(err <= 2.0 * gam * S)) {
                printf("\n  %s: element (%d,%d): %.9g vs %.9g (bound %.3g)\n", what, p, q,
                       (double)got[p * Q + q], (double)ref[p * Q + q], 2.0 * gam * S);
                return 0;
            }
        }
    return 1;
}

/* x = fp32(bf16(x)): the values a bf16 training run's fp32 parameters hold. */
static void round_b16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = zinc_bf16_to_f32(zinc_f32_to_bf16(x[i]));
}

static void test_bf16_table(void)
{
    const zinc_ops *f = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    CU_ASSERT_EQUAL(f->act, ZINC_DTYPE_F32);
    CU_ASSERT_EQUAL(h->act, ZINC_DTYPE_BF16);
    CU_ASSERT_STRING_EQUAL(h->name, "cpu-bf16");
    const int B = 2, T = 5, C = 8, NH = 2, V = 13, N = B * T, OC = 6;
    const size_t nc = (size_t)N * C;
    /* act inputs: bf16 (h*) and the same values in fp32 (x*) */
    float *r0 = frand(3 * nc, 1.0f), *r1 = frand(3 * nc, 1.0f), *r2 = frand(3 * nc, 1.0f);
    uint16_t *h0 = b16(r0, 3 * nc), *h1 = b16(r1, 3 * nc), *h2 = b16(r2, 3 * nc);
    float *x0 = wide(h0, 3 * nc), *x1 = wide(h1, 3 * nc), *x2 = wide(h2, 3 * nc);
    float *w = frand((size_t)V * C, 0.5f), *bias = frand(C, 0.5f), *wo = frand((size_t)C * OC, 0.5f);
    /* The weights of products bf16-representable, as zinc/ops.h promises an
     * act-bf16 table: its products may stage them to bf16 (the AVX512_BF16
     * path does), so both tables then multiply the same values. */
    round_b16(w, (size_t)V * C);
    round_b16(wo, (size_t)C * OC);
    float *fo = malloc(3 * nc * sizeof(float) + (size_t)N * V * sizeof(float));
    uint16_t *ho = malloc(3 * nc * sizeof(uint16_t) + (size_t)N * V * sizeof(uint16_t));
    float *g1 = calloc((size_t)V * C, sizeof(float)), *g2 = calloc((size_t)V * C, sizeof(float));
    float *b1 = calloc(C, sizeof(float)), *b2 = calloc(C, sizeof(float));
    float m1[10], s1[10], m2[10], s2[10], lse1[2 * 2 * 5], lse2[2 * 2 * 5];
    float sc1[64], sc2[64];
    int32_t tok[10] = {1, 12, 3, 3, 0, 7, 12, 5, 2, 9}, tg[10] = {2, -1, 4, 0, 12, 1, 1, 3, 11, 6};

    /* forward ops: out = op(inputs) */
    f->linear_forward(fo, x0, wo, bias, N, C, OC);
    h->linear_forward(ho, h0, wo, bias, N, C, OC);
    CU_ASSERT(b16_close("bf16 linear_forward", ho, fo, (size_t)N * OC));
    {   /* linear + GELU: out and pre (N x OC) */
        float *fp = malloc((size_t)N * OC * sizeof(float));
        uint16_t *hp = malloc((size_t)N * OC * sizeof(uint16_t));
        f->linear_gelu_forward(fo, fp, x0, wo, bias, N, C, OC);
        h->linear_gelu_forward(ho, hp, h0, wo, bias, N, C, OC);
        CU_ASSERT(b16_close("bf16 linear_gelu_forward out", ho, fo, (size_t)N * OC));
        CU_ASSERT(b16_close("bf16 linear_gelu_forward pre", hp, fp, (size_t)N * OC));
        /* backward of the second product: inp = gelu(pre) as act, dpre written */
        float *wi = wide(ho, (size_t)N * OC), *wp = wide(hp, (size_t)N * OC);
        float *w2 = frand((size_t)OC * C, 0.5f), *dw1 = calloc((size_t)OC * C, sizeof(float));
        round_b16(w2, (size_t)OC * C);
        float *dw2 = calloc((size_t)OC * C, sizeof(float)), *db1 = calloc(C, sizeof(float));
        float *db2 = calloc(C, sizeof(float)), *fd = malloc((size_t)N * OC * sizeof(float));
        uint16_t *hd = malloc((size_t)N * OC * sizeof(uint16_t));
        f->linear_gelu_backward(fd, dw1, db1, x1, wi, wp, w2, N, OC, C);
        h->linear_gelu_backward(hd, dw2, db2, h1, ho, hp, w2, N, OC, C);
        CU_ASSERT(b16_close("bf16 linear_gelu_backward dpre", hd, fd, (size_t)N * OC));
        CU_ASSERT(sums_close("bf16 linear_gelu_backward dweight", dw2, dw1, NULL, wi, x1, N, OC,
                             C));
        CU_ASSERT(memcmp(db1, db2, (size_t)C * sizeof(float)) == 0);
        free(fp), free(hp), free(wi), free(wp), free(w2), free(dw1), free(dw2), free(db1);
        free(db2), free(fd), free(hd);
    }
    f->linear_t_forward(fo, x0, w, NULL, N, C, V);
    h->linear_t_forward(ho, h0, w, NULL, N, C, V);
    CU_ASSERT(b16_close("bf16 linear_t_forward", ho, fo, (size_t)N * V));
    f->linear_t_forward(fo, x0, w, bias, N, C, V > C ? C : V);
    h->linear_t_forward(ho, h0, w, bias, N, C, V > C ? C : V);
    CU_ASSERT(b16_close("bf16 linear_t_forward bias", ho, fo, (size_t)N * (V > C ? C : V)));
    f->embedding_forward(fo, tok, NULL, w, bias, B, T, 1, 0, V); /* C = 1: wte (V,1), wpe (T,1) */
    h->embedding_forward(ho, tok, NULL, w, bias, B, T, 1, 0, V);
    CU_ASSERT(b16_close("bf16 embedding_forward", ho, fo, (size_t)N));
    f->layernorm_forward(fo, m1, s1, x0, w, bias, N, C);
    h->layernorm_forward(ho, m2, s2, h0, w, bias, N, C);
    CU_ASSERT(b16_close("bf16 layernorm_forward", ho, fo, nc));
    CU_ASSERT(memcmp(m1, m2, sizeof m1) == 0 && memcmp(s1, s2, sizeof s1) == 0);
    f->gelu_forward(fo, x0, nc);
    h->gelu_forward(ho, h0, nc);
    CU_ASSERT(b16_close("bf16 gelu_forward", ho, fo, nc));
    f->residual_forward(fo, x0, x1, nc);
    memcpy(ho, h0, nc * sizeof(uint16_t));
    h->residual_forward(ho, ho, h1, nc); /* out aliases a */
    CU_ASSERT(b16_close("bf16 residual_forward", ho, fo, nc));
    f->attention_forward(fo, lse1, x0, B, T, C, NH);
    h->attention_forward(ho, lse2, h0, B, T, C, NH);
    CU_ASSERT(b16_close("bf16 attention_forward", ho, fo, nc));
    CU_ASSERT(memcmp(lse1, lse2, sizeof lse1) == 0);
    {
        float l1[10], l2[10];
        float *xl = frand((size_t)N * V, 3.0f);
        uint16_t *hl = b16(xl, (size_t)N * V);
        float *wl = wide(hl, (size_t)N * V);
        f->softmax_xent(l1, wl, tg, 0.1f, N, V);
        h->softmax_xent(l2, hl, tg, 0.1f, N, V);
        CU_ASSERT(memcmp(l1, l2, sizeof l1) == 0);
        CU_ASSERT(b16_close("bf16 softmax_xent dlogits", hl, wl, (size_t)N * V));
        free(xl), free(hl), free(wl);
    }

    /* backward ops: act gradients accumulate onto old values (x2 / h2) */
#define BWD_START(n) (memcpy(fo, x2, (n) * sizeof(float)), memcpy(ho, h2, (n) * sizeof(uint16_t)))
    BWD_START((size_t)N * C);
    f->linear_backward(fo, g1, b1, x1, x0, wo, N, C, OC);
    h->linear_backward(ho, g2, b2, h1, h0, wo, N, C, OC);
    CU_ASSERT(b16_close("bf16 linear_backward dinp", ho, fo, nc));
    CU_ASSERT(sums_close("bf16 linear_backward dweight", g2, g1, NULL, x0, x1, N, C, OC));
    CU_ASSERT(memcmp(b1, b2, (size_t)OC * sizeof(float)) == 0);
    /* the next ops accumulate onto g: both tables start from the same values */
    memcpy(g2, g1, (size_t)V * C * sizeof(float));
    float *gold = fcopy(g1, (size_t)C * C);
    BWD_START((size_t)N * C);
    memcpy(b2, b1, (size_t)C * sizeof(float));
    f->linear_t_backward(fo, g1, b1, x1, x0, w, N, C, V > C ? C : V); /* V' = C: x1 holds N x C */
    h->linear_t_backward(ho, g2, b2, h1, h0, w, N, C, V > C ? C : V);
    CU_ASSERT(b16_close("bf16 linear_t_backward dinp", ho, fo, nc));
    CU_ASSERT(sums_close("bf16 linear_t_backward dweight", g2, g1, gold, x1, x0, N, C, C));
    CU_ASSERT(memcmp(b1, b2, (size_t)(V > C ? C : V) * sizeof(float)) == 0);
    memcpy(g2, g1, (size_t)V * C * sizeof(float));
    free(gold);
    f->embedding_backward(g1, b1, x1, tok, NULL, B, T, 1, 0, V);
    h->embedding_backward(g2, b2, h1, tok, NULL, B, T, 1, 0, V);
    CU_ASSERT(memcmp(g1, g2, (size_t)V * sizeof(float)) == 0 && memcmp(b1, b2, T * sizeof(float)) == 0);
    BWD_START(nc);
    f->layernorm_backward(fo, g1, b1, x1, x0, w, m1, s1, N, C);
    h->layernorm_backward(ho, g2, b2, h1, h0, w, m1, s1, N, C);
    CU_ASSERT(b16_close("bf16 layernorm_backward dinp", ho, fo, nc));
    CU_ASSERT(memcmp(g1, g2, (size_t)C * sizeof(float)) == 0 && memcmp(b1, b2, C * sizeof(float)) == 0);
    BWD_START(nc);
    f->gelu_backward(fo, x0, x1, nc);
    h->gelu_backward(ho, h0, h1, nc);
    CU_ASSERT(b16_close("bf16 gelu_backward", ho, fo, nc));
    {   /* attention: out as saved by forward; dqkv (3 nc) accumulates */
        uint16_t *hout = b16(x1, nc); /* any act values serve as "out" for D */
        float *xout = wide(hout, nc);
        f->attention_forward(xout, lse1, x0, B, T, C, NH);
        h->attention_forward(hout, lse2, h0, B, T, C, NH);
        free(xout);
        xout = wide(hout, nc); /* both sides see the same bf16 out */
        BWD_START(3 * nc);
        f->attention_backward(fo, sc1, x1, x0, xout, lse1, B, T, C, NH);
        h->attention_backward(ho, sc2, h1, h0, hout, lse1, B, T, C, NH);
        CU_ASSERT(b16_close("bf16 attention_backward", ho, fo, 3 * nc));
        free(hout), free(xout);
    }
#undef BWD_START
    CU_ASSERT_EQUAL(zinc_ops_cpu_last_status(), ZINC_OK);
    free(r0), free(r1), free(r2), free(h0), free(h1), free(h2), free(x0), free(x1), free(x2);
    free(w), free(bias), free(wo), free(fo), free(ho), free(g1), free(g2), free(b1), free(b2);
}

/* The bf16 table once more with its products on the widen path, the one
 * CPUs without AVX512_BF16 run (the test hook turns the native path off). */
static void test_bf16_table_widen(void)
{
    cpu_gemm_bf16_force_fallback(1);
    test_bf16_table();
    cpu_gemm_bf16_force_fallback(0);
}

/* ---------- the vocabulary split across ranks ---------- */

/* Slices of the table, and the whole one without wpe, as embedding_case.
 * Then the vocabulary split into P = 1, 2, 4 slices [EV p / P, EV (p+1) /
 * P), one "rank" each, wpe on slice 0 only: the sum over slices of the forward outputs is
 * the whole table's, and the slices' dwte side by side (dwpe from slice 0)
 * are the whole table's gradients, all bitwise (every element has the same
 * terms in the same order). The bf16 table against the fp32 table: forward
 * on each slice one rounding apart, backward bitwise (it widens dout and
 * runs the fp32 op). */
static void test_embedding_split(void)
{
    embedding_case(0, EV, 0);  /* no wpe */
    embedding_case(0, 10, 1);  /* the first slice */
    embedding_case(10, 17, 0); /* a middle slice: token 17 in, 36 / 0 / 3 / 5 out */
    embedding_case(30, 7, 0);  /* the last slice: token 36 only */
    embedding_case(20, 10, 1); /* a slice no token falls in: out = wpe */
    const zinc_ops *f = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    const size_t nTE = EV * EC, nPE = EMAXT * EC, nO = EB * ET * EC;
    float *wte = frand(nTE, 1.0f), *wpe = frand(nPE, 1.0f), *dout = frand(nO, 1.0f);
    uint16_t *hdout = b16(dout, nO);
    float *xdout = wide(hdout, nO);
    float *whole = malloc(nO * sizeof *whole), *part = malloc(nO * sizeof *part);
    float *sum = malloc(nO * sizeof *sum);
    uint16_t *hpart = malloc(nO * sizeof *hpart);
    float *gte = calloc(nTE, sizeof *gte), *gpe = calloc(nPE, sizeof *gpe);
    float *ste = calloc(nTE, sizeof *ste), *spe = calloc(nPE, sizeof *spe);
    float *hte = calloc(nTE, sizeof *hte), *hpe = calloc(nPE, sizeof *hpe);
    f->embedding_forward(whole, etok, NULL, wte, wpe, EB, ET, EC, 0, EV);
    f->embedding_backward(gte, gpe, xdout, etok, NULL, EB, ET, EC, 0, EV);
    for (int P = 1; P <= 4; P *= 2) {
        memset(sum, 0, nO * sizeof *sum);
        memset(ste, 0, nTE * sizeof *ste), memset(spe, 0, nPE * sizeof *spe);
        memset(hte, 0, nTE * sizeof *hte), memset(hpe, 0, nPE * sizeof *hpe);
        int ok = 1;
        for (int p = 0; p < P; p++) {
            const int v0 = EV * p / P, V = EV * (p + 1) / P - v0;
            const float *pe = p == 0 ? wpe : NULL;
            f->embedding_forward(part, etok, NULL, wte + (size_t)v0 * EC, pe, EB, ET, EC, v0, V);
            h->embedding_forward(hpart, etok, NULL, wte + (size_t)v0 * EC, pe, EB, ET, EC, v0, V);
            ok &= b16_close("bf16 embedding_forward slice", hpart, part, nO);
            for (size_t i = 0; i < nO; i++)
                sum[i] += part[i];
            f->embedding_backward(ste + (size_t)v0 * EC, p == 0 ? spe : NULL, xdout, etok, NULL, EB,
                                  ET, EC, v0, V);
            h->embedding_backward(hte + (size_t)v0 * EC, p == 0 ? hpe : NULL, hdout, etok, NULL, EB,
                                  ET, EC, v0, V);
        }
        for (size_t i = 0; i < nO; i++)
            ok &= sum[i] == whole[i];
        ok &= !memcmp(ste, gte, nTE * sizeof *ste) && !memcmp(spe, gpe, nPE * sizeof *spe);
        ok &= !memcmp(hte, gte, nTE * sizeof *hte) && !memcmp(hpe, gpe, nPE * sizeof *hpe);
        if (!ok)
            printf("\n  embedding split into %d slices differs from the whole table\n", P);
        CU_ASSERT(ok);
    }
    free(wte), free(wpe), free(dout), free(hdout), free(xdout), free(whole), free(part);
    free(sum), free(hpart), free(gte), free(gpe), free(ste), free(spe), free(hte), free(hpe);
}

/* softmax_xent through the vocab-parallel ops of table t, the row split
 * into P parts [V p / P, V (p+1) / P), one "rank" each, in turn: max on
 * each part, their MAX; sums on each part, their SUM (in part order);
 * finish on each part. logits (N,V) act is overwritten with the parts'
 * gradients side by side, as softmax_xent overwrites it; losses(N) are part
 * 0's (every part's must be the same bits). mx and sm, if not NULL, get the
 * combined rowmax (N) and sums (N,2). */
static void xent_vp_split(const zinc_ops *t, float *losses, void *logits, const int32_t *tg,
                          float dloss, int N, int V, int P, float *mx, float *sm)
{
    const size_t asz = zinc_dtype_size(t->act);
    float *rowmax = malloc((size_t)N * sizeof *rowmax), *m = malloc((size_t)N * sizeof *m);
    float *sums = calloc(2 * (size_t)N, sizeof *sums), *s = malloc(2 * (size_t)N * sizeof *s);
    float *l = malloc((size_t)N * sizeof *l);
    char *part[4];
    CU_ASSERT_FATAL(P >= 1 && P <= 4);
    for (int i = 0; i < N; i++)
        rowmax[i] = -INFINITY;
    for (int p = 0; p < P; p++) {
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        part[p] = malloc((size_t)N * Vp * asz);
        for (int i = 0; i < N; i++)
            memcpy(part[p] + (size_t)i * Vp * asz, (char *)logits + ((size_t)i * V + v0) * asz,
                   (size_t)Vp * asz);
        t->xent_vp_max(m, part[p], N, Vp);
        for (int i = 0; i < N; i++)
            rowmax[i] = fmaxf(rowmax[i], m[i]);
    }
    for (int p = 0; p < P; p++) {
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        t->xent_vp_sums(s, part[p], tg, rowmax, N, Vp, v0);
        for (int i = 0; i < 2 * N; i++)
            sums[i] += s[i];
    }
    for (int p = 0; p < P; p++) {
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        t->xent_vp_finish(p ? l : losses, part[p], tg, rowmax, sums, dloss, N, Vp, v0);
        if (p)
            CU_ASSERT(!memcmp(l, losses, (size_t)N * sizeof *l));
        for (int i = 0; i < N; i++)
            memcpy((char *)logits + ((size_t)i * V + v0) * asz, part[p] + (size_t)i * Vp * asz,
                   (size_t)Vp * asz);
        free(part[p]);
    }
    if (mx)
        memcpy(mx, rowmax, (size_t)N * sizeof *mx);
    if (sm)
        memcpy(sm, sums, 2 * (size_t)N * sizeof *sm);
    free(rowmax), free(m), free(sums), free(s), free(l);
}

/* One shape: logits of scale 8 with a row shifted by +1000 (stability) and
 * confidently right and wrong rows; targets tg in every part of every
 * split, at the parts' edges, and ignored rows. For P = 1, 2, 4:
 *  - fp32 table: losses and gradients equal softmax_xent's on the whole
 *    rows within 1e-6 relative (floor 1e-6 x the largest: the sum of exps
 *    is held in fp32 between the ops); ignored rows exactly 0;
 *  - bf16 table: the same against the fp32 softmax_xent on the widened
 *    logits, gradients within one bf16 rounding; and bitwise the fp32 split
 *    on the widened logits with its gradient rounded (the widen / narrow
 *    mechanism row by row). */
static void xent_vp_case(int N, int V, const int32_t *tg)
{
    const zinc_ops *f = zinc_ops_cpu(), *h = zinc_ops_cpu_bf16();
    const size_t n = (size_t)N * V;
    float *x = frand(n, 8.0f);
    for (int j = 0; j < V; j++)
        x[1 * V + j] += 1000.0f;
    x[3 * V + tg[3]] = 60.0f;           /* confidently right */
    x[4 * V + (tg[4] + V / 2) % V] = 70.0f; /* confidently wrong */
    uint16_t *hx = b16(x, n);
    float *wx = wide(hx, n);
    const float dloss = 0.25f;
    float *ref = fcopy(x, n), *wref = fcopy(wx, n), *got = malloc(n * sizeof *got);
    float *rl = malloc((size_t)N * sizeof *rl), *wrl = malloc((size_t)N * sizeof *wrl);
    float *gl = malloc((size_t)N * sizeof *gl), *hl = malloc((size_t)N * sizeof *hl);
    double *dref = malloc(n * sizeof *dref), *drl = malloc((size_t)N * sizeof *drl);
    uint16_t *hg = malloc(n * sizeof *hg), *hn = malloc(n * sizeof *hn);
    char what[96];
    f->softmax_xent(rl, ref, tg, dloss, N, V);
    f->softmax_xent(wrl, wref, tg, dloss, N, V);
    for (int P = 1; P <= 4; P *= 2) {
        /* fp32 */
        memcpy(got, x, n * sizeof *got);
        xent_vp_split(f, gl, got, tg, dloss, N, V, P, NULL, NULL);
        for (size_t i = 0; i < n; i++)
            dref[i] = ref[i];
        for (int i = 0; i < N; i++)
            drl[i] = rl[i];
        snprintf(what, sizeof what, "xent_vp N%d V%d P%d losses", N, V, P);
        CU_ASSERT(close_to(what, gl, drl, (size_t)N, 1e-6, 1e-6));
        snprintf(what, sizeof what, "xent_vp N%d V%d P%d dlogits", N, V, P);
        CU_ASSERT(close_to(what, got, dref, n, 1e-6, 1e-6));
        for (int i = 0; i < N; i++)
            if (tg[i] < 0) {
                CU_ASSERT(gl[i] == 0.0f);
                for (int j = 0; j < V; j++)
                    CU_ASSERT(got[(size_t)i * V + j] == 0.0f);
            }
        /* bf16 */
        memcpy(hg, hx, n * sizeof *hg);
        xent_vp_split(h, hl, hg, tg, dloss, N, V, P, NULL, NULL);
        for (int i = 0; i < N; i++)
            drl[i] = wrl[i];
        snprintf(what, sizeof what, "bf16 xent_vp N%d V%d P%d losses", N, V, P);
        CU_ASSERT(close_to(what, hl, drl, (size_t)N, 1e-6, 1e-6));
        snprintf(what, sizeof what, "bf16 xent_vp N%d V%d P%d dlogits", N, V, P);
        CU_ASSERT(b16_close(what, hg, wref, n));
        memcpy(got, wx, n * sizeof *got);
        xent_vp_split(f, gl, got, tg, dloss, N, V, P, NULL, NULL);
        for (size_t i = 0; i < n; i++)
            hn[i] = zinc_f32_to_bf16(got[i]);
        CU_ASSERT(!memcmp(gl, hl, (size_t)N * sizeof *gl));
        CU_ASSERT(!memcmp(hn, hg, n * sizeof *hn));
    }
    CU_ASSERT_EQUAL(zinc_ops_cpu_last_status(), ZINC_OK);
    free(x), free(hx), free(wx), free(ref), free(wref), free(got), free(rl), free(wrl);
    free(gl), free(hl), free(dref), free(drl), free(hg), free(hn);
}

static void test_xent_vp(void)
{
    /* V 103 in 4 parts: [0,25) [25,51) [51,77) [77,103); in 2: [0,51) [51,103) */
    static const int32_t tg1[12] = {0, 24, 25, 50, 51, 76, -1, 102, 77, 40, -1, 90};
    xent_vp_case(12, 103, tg1);
    /* a padded GPT-2 vocabulary: each part takes the parallel path */
    static const int32_t tg2[6] = {12345, 20000, -1, 50303, 30000, 0};
    xent_vp_case(6, 50304, tg2);
}

/* The split form against float64 and finite differences, as
 * test_softmax_xent (its logits and targets; part 2 of 4, [18,27), holds
 * no target): losses against ref_xent, the concatenated gradients against
 * finite differences of dloss * sum losses; the combined rowmax is the
 * row's max exactly, sums[2i] the double sum of exps (fp32-rounded),
 * sums[2i+1] the target's logit exactly; ignored rows 0, 0. */
static void test_xent_vp_fd(void)
{
    const size_t n = XN * XV;
    float *logits = frand(n, 8.0f);
    for (int j = 0; j < XV; j++)
        logits[1 * XV + j] += 1000.0f;
    logits[3 * XV + 0] = 60.0f;
    logits[4 * XV + 5] = 70.0f;
    const float dloss = 1.0f / 5.0f;
    struct xent_ctx c = {to_double(logits, n), dloss};
    double rl[XN], rmx[XN], rs[2 * XN];
    ref_xent(rl, c.logits, xtg, XN, XV);
    for (int i = 0; i < XN; i++) {
        double mx = -INFINITY, s = 0.0;
        for (int j = 0; j < XV; j++)
            mx = fmax(mx, c.logits[i * XV + j]);
        for (int j = 0; j < XV; j++)
            s += exp(c.logits[i * XV + j] - mx);
        rmx[i] = mx;
        rs[2 * i] = xtg[i] < 0 ? 0.0 : s;
        rs[2 * i + 1] = xtg[i] < 0 ? 0.0 : c.logits[i * XV + xtg[i]];
    }
    double *g = malloc(n * sizeof *g);
    fd_grad(g, c.logits, n, xent_loss, &c);
    for (int P = 2; P <= 4; P += 2) {
        float *x = fcopy(logits, n), losses[XN], mx[XN], sm[2 * XN];
        char what[64];
        xent_vp_split(ops, losses, x, xtg, dloss, XN, XV, P, mx, sm);
        int ok = 1;
        for (int i = 0; i < XN; i++)
            ok &= mx[i] == rmx[i] && sm[2 * i + 1] == rs[2 * i + 1];
        CU_ASSERT(ok);
        snprintf(what, sizeof what, "xent_vp P%d sums", P);
        CU_ASSERT(close_to(what, sm, rs, 2 * XN, 1e-6, 0.0));
        snprintf(what, sizeof what, "xent_vp P%d losses", P);
        CU_ASSERT(close_to(what, losses, rl, XN, 1e-5, 1e-6));
        CU_ASSERT(losses[2] == 0.0f);
        for (int j = 0; j < XV; j++)
            CU_ASSERT(x[2 * XV + j] == 0.0f);
        snprintf(what, sizeof what, "xent_vp P%d dlogits", P);
        CU_ASSERT(close_to(what, x, g, n, 1e-4, 1e-6));
        free(x);
    }
    free(logits), free(c.logits), free(g);
}

/* The wrapped tables (profiler, strict device) run the split ops between
 * their hooks, under their own names. */
static int wrap_last = -1, wrap_depth;
static void wrap_before(int op, void *user)
{
    (void)user;
    wrap_last = op;
    wrap_depth++;
}
static void wrap_after(int op, void *user)
{
    (void)user;
    CU_ASSERT(op == wrap_last);
    wrap_depth--;
}

static void test_wrap_vp(void)
{
    const zinc_ops_hooks hk = {wrap_before, wrap_after, NULL};
    const zinc_ops *w = zinc_ops_wrap(0, ops, &hk);
    float x[2 * 5] = {1, 2, 3, 4, 5, 5, 4, 3, 2, 1}, mx[2], sm[4], l[2], out[2 * 3 * 5];
    const int32_t tg[2] = {6, 1}, tok[2] = {1, 7};
    float wte[2 * 5] = {0};
    w->xent_vp_max(mx, x, 2, 5);
    CU_ASSERT_STRING_EQUAL(zinc_ops_op_name(wrap_last), "xent_vp_max");
    w->xent_vp_sums(sm, x, tg, mx, 2, 5, 0);
    CU_ASSERT_STRING_EQUAL(zinc_ops_op_name(wrap_last), "xent_vp_sums");
    w->xent_vp_finish(l, x, tg, mx, sm, 1.0f, 2, 5, 0);
    CU_ASSERT_STRING_EQUAL(zinc_ops_op_name(wrap_last), "xent_vp_finish");
    w->embedding_forward(out, tok, NULL, wte, NULL, 1, 2, 5, 0, 2);
    CU_ASSERT_STRING_EQUAL(zinc_ops_op_name(wrap_last), "embedding_forward");
    w->embedding_backward(wte, NULL, out, tok, NULL, 1, 2, 5, 0, 2);
    CU_ASSERT_STRING_EQUAL(zinc_ops_op_name(wrap_last), "embedding_backward");
    CU_ASSERT_EQUAL(wrap_depth, 0);
    /* targets 6 (not in [0,5)) and 1: sums[1] 0, sums[3] = x[5+1] */
    CU_ASSERT(sm[1] == 0.0f && sm[3] == 4.0f);
}

static void test_table(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(ops);
    CU_ASSERT_STRING_EQUAL(ops->name, "cpu");
    CU_ASSERT(ops->matmul && ops->linear_forward && ops->linear_backward &&
              ops->embedding_forward && ops->embedding_backward && ops->layernorm_forward &&
              ops->layernorm_backward && ops->gelu_forward && ops->gelu_backward &&
              ops->attention_forward && ops->attention_backward &&
              ops->attention_scratch_floats && ops->residual_forward &&
              ops->softmax_xent && ops->adamw && ops->sumsq && ops->scale &&
              ops->linear_t_forward && ops->linear_t_backward && ops->linear_gelu_forward &&
              ops->linear_gelu_backward && ops->xent_vp_max && ops->xent_vp_sums &&
              ops->xent_vp_finish && ops->act == ZINC_DTYPE_F32);
    const zinc_ops *h = zinc_ops_cpu_bf16();
    CU_ASSERT(h->xent_vp_max && h->xent_vp_sums && h->xent_vp_finish);
}

int main(void)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"table", test_table},
        {"matmul", test_matmul},
        {"linear_forward", test_linear_forward},
        {"linear_backward", test_linear_backward},
        {"embedding", test_embedding},
        {"layernorm", test_layernorm},
        {"gelu", test_gelu},
        {"residual_scale", test_residual_scale},
        {"attention", test_attention},
        {"attention_large_scores", test_attention_large_scores},
        {"softmax_xent", test_softmax_xent},
        {"linear_t (out, in) and head", test_linear_t},
        {"linear_gelu", test_linear_gelu},
        {"bf16_table", test_bf16_table},
        {"bf16_table_widen", test_bf16_table_widen},
        {"softmax_exp_accuracy", test_softmax_exp_accuracy},
        {"adamw", test_adamw},
        {"adamw_lanes", test_adamw_lanes},
        {"sumsq", test_sumsq},
        {"determinism", test_determinism},
        /* last: the tests above see the random numbers they always saw */
        {"embedding_split", test_embedding_split},
        {"xent_vp", test_xent_vp},
        {"xent_vp_fd", test_xent_vp_fd},
        {"wrap_vp", test_wrap_vp},
    };
    ops = zinc_ops_cpu();
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("kernels_cpu", NULL, NULL);
    if (!s)
        return 1;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (!CU_add_test(s, tests[i].name, tests[i].fn))
            return 1;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    const unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
