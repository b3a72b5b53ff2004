/* ops_profile.c - an op table that times every call of another one
 * (ZINC_PROFILE_OPS=1): the device is synchronized before and after each
 * op, so the times are device times, at the cost of the overlap between
 * the host and the device. A diagnostic, one table per process. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine_int.h"
#include "zinc/log.h"

enum {
    P_MATMUL, P_LINEAR_FWD, P_LINEAR_BWD, P_EMB_FWD, P_EMB_BWD, P_LN_FWD, P_LN_BWD, P_GELU_FWD,
    P_GELU_BWD, P_ATT_FWD, P_ATT_BWD, P_RESIDUAL, P_XENT, P_ADAMW, P_SUMSQ, P_SCALE, P_ZERO,
    P_COPY, P_CONVERT, P_ADD_INTO, P_ROUND_TO, P_SUM, P_N
};
static const char *const p_names[P_N] = {
    "matmul", "linear_forward", "linear_backward", "embedding_forward", "embedding_backward",
    "layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward",
    "attention_forward", "attention_backward", "residual_forward", "softmax_xent", "adamw",
    "sumsq", "scale", "zero", "copy", "convert", "add_into", "round_to", "sum"};

static struct {
    const zinc_ops *in;
    zinc_status (*sync)(void);
    zinc_ops table;
    double ms[P_N];
    long calls[P_N];
    double t0;
    zinc_status err;     /* the first error a sync reported (consumed there) */
    char err_msg[512];
} P;

static double p_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A device sync that keeps the first error for engine_ops_profile_error:
 * the device reports (and clears) errors at its sync, and the engine must
 * still see them. */
static void p_sync(void)
{
    zinc_status st = P.sync();
    if (st != ZINC_OK && P.err == ZINC_OK) {
        P.err = st;
        snprintf(P.err_msg, sizeof P.err_msg, "%s", zinc_last_error());
    }
}

static void p_begin(void)
{
    p_sync();
    P.t0 = p_now();
}

static void p_end(int op)
{
    p_sync();
    P.ms[op] += p_now() - P.t0;
    P.calls[op]++;
}

zinc_status engine_ops_profile_error(void)
{
    zinc_status st = P.err;
    if (st != ZINC_OK) zinc_error(st, "%s", P.err_msg);
    P.err = ZINC_OK;
    return st;
}

#define WRAP(op, name, params, args)                                                          \
    static void p_##name params                                                              \
    {                                                                                        \
        p_begin();                                                                           \
        P.in->name args;                                                                     \
        p_end(op);                                                                           \
    }

WRAP(P_MATMUL, matmul, (float *c, const float *a, const float *b, int m, int n, int k, int ta,
                        int tb, float alpha, float beta), (c, a, b, m, n, k, ta, tb, alpha, beta))
WRAP(P_LINEAR_FWD, linear_forward, (float *out, const float *inp, const float *w, const float *b,
                                    int N, int C, int OC), (out, inp, w, b, N, C, OC))
WRAP(P_LINEAR_BWD, linear_backward, (float *dinp, float *dw, float *db, const float *dout,
                                     const float *inp, const float *w, int N, int C, int OC),
     (dinp, dw, db, dout, inp, w, N, C, OC))
WRAP(P_EMB_FWD, embedding_forward, (float *out, const int32_t *tok, const float *wte,
                                    const float *wpe, int B, int T, int C),
     (out, tok, wte, wpe, B, T, C))
WRAP(P_EMB_BWD, embedding_backward, (float *dwte, float *dwpe, const float *dout,
                                     const int32_t *tok, int B, int T, int C),
     (dwte, dwpe, dout, tok, B, T, C))
WRAP(P_LN_FWD, layernorm_forward, (float *out, float *mean, float *rstd, const float *inp,
                                   const float *w, const float *b, int N, int C),
     (out, mean, rstd, inp, w, b, N, C))
WRAP(P_LN_BWD, layernorm_backward, (float *dinp, float *dw, float *db, const float *dout,
                                    const float *inp, const float *w, const float *mean,
                                    const float *rstd, int N, int C),
     (dinp, dw, db, dout, inp, w, mean, rstd, N, C))
WRAP(P_GELU_FWD, gelu_forward, (float *out, const float *inp, size_t n), (out, inp, n))
WRAP(P_GELU_BWD, gelu_backward, (float *dinp, const float *inp, const float *dout, size_t n),
     (dinp, inp, dout, n))
WRAP(P_ATT_FWD, attention_forward, (float *out, float *lse, const float *qkv, int B, int T, int C,
                                    int NH), (out, lse, qkv, B, T, C, NH))
WRAP(P_ATT_BWD, attention_backward, (float *dqkv, float *scratch, const float *dout,
                                     const float *qkv, const float *out, const float *lse, int B,
                                     int T, int C, int NH),
     (dqkv, scratch, dout, qkv, out, lse, B, T, C, NH))
WRAP(P_RESIDUAL, residual_forward, (float *out, const float *a, const float *b, size_t n),
     (out, a, b, n))
WRAP(P_XENT, softmax_xent, (float *losses, float *logits, const int32_t *t, float dloss, int N,
                            int V), (losses, logits, t, dloss, N, V))
WRAP(P_ADAMW, adamw, (float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                      float b2, float eps, float wd, int t), (p, g, m, v, n, lr, b1, b2, eps, wd, t))
WRAP(P_SCALE, scale, (float *x, float s, size_t n), (x, s, n))
WRAP(P_ZERO, zero, (void *p, size_t bytes), (p, bytes))
WRAP(P_COPY, copy, (void *dst, const void *src, size_t bytes), (dst, src, bytes))
WRAP(P_CONVERT, convert, (void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n),
     (dst, ddt, src, sdt, n))
WRAP(P_ADD_INTO, add_into, (void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n),
     (dst, ddt, src, sdt, n))
WRAP(P_ROUND_TO, round_to, (float *x, zinc_dtype dt, size_t n), (x, dt, n))
#undef WRAP

static double p_sumsq(const float *x, size_t n)
{
    p_begin();
    double r = P.in->sumsq(x, n);
    p_end(P_SUMSQ);
    return r;
}

static double p_sum(const float *x, size_t n)
{
    p_begin();
    double r = P.in->sum(x, n);
    p_end(P_SUM);
    return r;
}

const zinc_ops *engine_ops_profiled(const zinc_ops *in, zinc_status (*sync)(void))
{
    P.in = in;
    P.sync = sync;
    P.table = *in;
    P.table.matmul = p_matmul;
    P.table.linear_forward = p_linear_forward;
    P.table.linear_backward = p_linear_backward;
    P.table.embedding_forward = p_embedding_forward;
    P.table.embedding_backward = p_embedding_backward;
    P.table.layernorm_forward = p_layernorm_forward;
    P.table.layernorm_backward = p_layernorm_backward;
    P.table.gelu_forward = p_gelu_forward;
    P.table.gelu_backward = p_gelu_backward;
    P.table.attention_forward = p_attention_forward;
    P.table.attention_backward = p_attention_backward;
    P.table.residual_forward = p_residual_forward;
    P.table.softmax_xent = p_softmax_xent;
    P.table.adamw = p_adamw;
    P.table.sumsq = p_sumsq;
    P.table.scale = p_scale;
    P.table.zero = p_zero;
    P.table.copy = p_copy;
    P.table.convert = p_convert;
    P.table.add_into = p_add_into;
    P.table.round_to = p_round_to;
    P.table.sum = p_sum;
    return &P.table;
}

void engine_ops_profile_report(void)
{
    double total = 0.0;
    for (int i = 0; i < P_N; i++) total += P.ms[i];
    if (total <= 0.0) return;
    ZINC_INFO("op profile (%s, device time with a sync around each op): %.1f ms in ops", P.in->name,
              total);
    int order[P_N];
    for (int i = 0; i < P_N; i++) order[i] = i;
    for (int i = 0; i < P_N; i++) /* by time, largest first */
        for (int j = i + 1; j < P_N; j++)
            if (P.ms[order[j]] > P.ms[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    for (int i = 0; i < P_N && P.calls[order[i]]; i++) {
        int k = order[i];
        ZINC_INFO("  %-20s %8ld calls %10.2f ms %5.1f%% %9.3f ms/call", p_names[k], P.calls[k],
                  P.ms[k], 100.0 * P.ms[k] / total, P.ms[k] / (double)P.calls[k]);
    }
}
