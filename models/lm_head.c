/* lm_head.c - the language-model head both models end with (model_int.h): a final norm
 * (LayerNorm with bias for GPT-2, RMSNorm for Llama), logits = x @ W^T over this TP rank's
 * vocabulary rows, the padded rows' logits -inf, the vocab-parallel softmax cross-entropy;
 * with sequence parallelism the norm runs on this rank's token rows and its output is
 * gathered. The layer's parameters are: the norm weight (0), its bias (1, LayerNorm only),
 * then W (the tied embedding or an untied lm_head). */
#include <math.h>
#include <string.h>

#include "model_int.h"

/* Saved: lnf (N,C) act (whole: gathered with sequence parallelism), the norm's mean
 * (LayerNorm) and rstd (rows), this rank's vocabulary columns of the logits, then dlogits
 * (N,Vl) act, losses (N) (each row's whole loss, the same on every TP rank). */
typedef struct head_acts {
    void *lnf, *logits;
    float *mean, *rstd, *losses;
} head_acts;

static int w_index(const model_head *h) { return h->rms ? 1 : 2; }

static size_t head_carve(head_acts *a, void *base, const model_head *h, const zinc_tp *tp, int B, int T,
                         zinc_dtype act)
{
    size_t N = (size_t)B * T, R = (size_t)zinc_tp_rows(tp, (int)N);
    carver k = {base, 0, zinc_dtype_size(act)};
    head_acts t;
    memset(&t, 0, sizeof t);
    t.lnf = CARVE_ACT(&k, N * h->C);
    if (!h->rms) t.mean = CARVE_F32(&k, R);
    t.rstd = CARVE_F32(&k, R);
    t.logits = CARVE_ACT(&k, N * (size_t)(h->V / tp->size));
    t.losses = CARVE_F32(&k, N);
    if (a) *a = t;
    return k.off;
}

size_t model_head_act_bytes(const model_head *h, const zinc_tp *tp, int B, int T, zinc_dtype act)
{
    return head_carve(NULL, NULL, h, tp, B, T, act);
}

/* The head's scratch: dlnf (N,C) act (with SP its partial sum); with TP the
 * cross-entropy's 3N fp32 statistics; with SP this rank's rows of lnf before the gather
 * (forward) and of dlnf after the reduce-scatter (backward) (rows,C) act, and the norm's
 * partial gradients (weight, bias) fp32. */
typedef struct head_scratch {
    void *dlnf, *rows;
    float *stats, *lng;
} head_scratch;

static size_t head_scratch_carve(head_scratch *s, void *base, const model_head *h, const zinc_tp *tp, int B,
                                 int T, zinc_dtype act)
{
    size_t N = (size_t)B * T, R = (size_t)zinc_tp_rows(tp, (int)N), C = (size_t)h->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    head_scratch t;
    memset(&t, 0, sizeof t);
    t.dlnf = CARVE_ACT(&k, N * C);
    if (tp->size > 1) t.stats = CARVE_F32(&k, 3 * N);
    if (R < N) { /* sequence parallelism */
        t.rows = CARVE_ACT(&k, R * C);
        t.lng = CARVE_F32(&k, (h->rms ? 1 : 2) * C);
    }
    if (s) *s = t;
    return k.off;
}

size_t model_head_scratch_bytes(const model_head *h, const zinc_tp *tp, int B, int T, zinc_dtype act)
{
    return head_scratch_carve(NULL, NULL, h, tp, B, T, act);
}

zinc_status model_head_forward(const model_head *h, zinc_layer *l, zinc_ctx *c, const void *x)
{
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    const int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = h->C, Vl = h->V / tp->size, sp = R < N;
    zinc_status st = ZINC_OK;
    head_acts a;
    head_carve(&a, zinc_layer_acts(l), h, tp, c->B, c->T, o->act);
    head_scratch s;
    head_scratch_carve(&s, c->scratch, h, tp, c->B, c->T, o->act);
    void *lnr = sp ? s.rows : a.lnf;
    if (h->rms)
        o->rmsnorm_forward(lnr, a.rstd, x, zinc_layer_param(l, 0), h->eps, R, C);
    else
        o->layernorm_forward(lnr, a.mean, a.rstd, x, zinc_layer_param(l, 0), zinc_layer_param(l, 1), R, C);
    if (sp) ZINC_TRY(zinc_tp_gather_rows(tp, a.lnf, lnr, (size_t)R, (size_t)C));
    zinc_tp_column_t_forward(tp, a.logits, a.lnf, zinc_layer_param(l, w_index(h)), NULL, N, C, Vl);
    { /* the padded rows of this rank's vocabulary slice [v0, v0 + Vl): -inf logits, so they
       * take no part in the softmax and get no gradient */
        const int v0 = tp->rank * Vl, lo = h->Vreal - v0 < 0 ? 0 : h->Vreal - v0;
        if (lo < Vl) o->fill_cols(a.logits, N, Vl, lo, Vl, -INFINITY);
    }
    ZINC_TRY(zinc_tp_softmax_xent(tp, a.losses, a.logits, c->targets, c->dloss, s.stats, N, Vl));
    c->loss_sum += o->sum(a.losses, (size_t)N); /* device memory: summed there */
cleanup:
    return st;
}

zinc_status model_head_backward(const model_head *h, zinc_layer *l, zinc_ctx *c, const void *x, void *dx)
{
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    const int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = h->C, Vl = h->V / tp->size, sp = R < N;
    zinc_status st = ZINC_OK;
    head_acts a;
    head_carve(&a, zinc_layer_acts(l), h, tp, c->B, c->T, o->act);
    head_scratch s;
    head_scratch_carve(&s, c->scratch, h, tp, c->B, c->T, o->act);
    /* dlnf(N,C) = dlogits(N,Vl) @ W(Vl,C) summed over the group (this rank's rows of it
     * with SP); dW(Vl,C) += dlogits^T @ lnf */
    void *dlnr = sp ? s.rows : s.dlnf;
    const int wi = w_index(h);
    ZINC_TRY(zinc_tp_column_t_backward(tp, dlnr, s.dlnf, zinc_layer_grad(l, wi), NULL, a.logits, a.lnf,
                                       zinc_layer_param(l, wi), N, C, Vl));
    float *dw = sp ? s.lng : zinc_layer_grad(l, 0);
    if (sp) o->zero(s.lng, (size_t)(h->rms ? 1 : 2) * C * sizeof(float));
    if (h->rms) {
        o->rmsnorm_backward(dx, dw, dlnr, x, zinc_layer_param(l, 0), a.rstd, R, C);
    } else {
        float *db = sp ? s.lng + C : zinc_layer_grad(l, 1);
        o->layernorm_backward(dx, dw, db, dlnr, x, zinc_layer_param(l, 0), a.mean, a.rstd, R, C);
    }
    if (sp) {
        static const int idx[2] = {0, 1};
        ZINC_TRY(model_norm_grads_reduce(l, c, s.lng, idx, h->rms ? 1 : 2, C));
    }
cleanup:
    return st;
}
