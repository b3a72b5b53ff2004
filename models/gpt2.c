/* gpt2.c - GPT-2 as engine layers.
 *
 *   layer 0        embed:  tokens (B,T) -> wte[tok] + wpe[t]           (B,T,C)
 *   layer 1..L     h.i:    x + attn(ln_1(x)) = r;  r + mlp(ln_2(r))      (B,T,C)
 *   layer L+1      head:   ln_f, logits = x @ wte^T (tied), fused softmax
 *                          cross-entropy; logits become dlogits in place.
 * Parameter names and layouts are Hugging Face GPT-2's (Conv1D weights
 * stored (in, out)), so checkpoints map one to one. Under tensor parallelism
 * (zinc/tp.h) each block's attention and MLP split Megatron's way: c_attn
 * and c_fc column-parallel, the c_projs row-parallel, heads split; wte split
 * by vocabulary rows for the embedding, the tied head and the cross-entropy;
 * with sequence parallelism the LayerNorm/residual regions hold this rank's
 * token rows. Init as GPT-2: N(0, 0.02),
 * residual projections N(0, 0.02/sqrt(2L)), LayerNorm 1/0, biases 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zinc/gpt2.h"
#include "model_int.h"

typedef struct gpt2_dims {
    int C, NH, V, maxT, L;
    model_head head; /* ln_f, the tied wte, the loss (head.Vreal: the real vocabulary) */
    int recompute; /* model.recompute: backward recomputes ln1, ln2, c_fc and its GELU */
    model_lora lora;        /* model.lora: adapters on the sites below */
    lora_site site[4];      /* the block's adapters (the same indices in every block) */
} gpt2_dims;

/* The block's linears LoRA may adapt (PEFT's module names), in site order. */
enum { S_ATTN, S_APROJ, S_FC, S_MPROJ };
static const char *const lora_modules[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", NULL};
static const char *const lora_defaults[] = {"c_attn", NULL}; /* PEFT's for gpt2 */


struct zinc_gpt2 {
    gpt2_dims d;
    zinc_layer_def *layers;
    zinc_model_def model;
};

/* What this TP rank holds of the model (Megatron's split): P ranks, heads
 * NH/P (attention width Cl = C/P, so c_attn's q | k | v columns of those
 * heads and c_proj's rows), MLP width Fl = 4C/P (c_fc's columns, mlp
 * c_proj's rows), vocabulary rows Vl = V/P of wte (embedding and tied head),
 * and the token rows between the parallel regions (sequence parallelism:
 * N/P, else N). LayerNorms, wpe and the row-parallel biases are replicated. */
typedef struct gpt2_local {
    int P, sp;
    int Cl, NHl, Fl, Vl;
} gpt2_local;

static gpt2_local local_of(const gpt2_dims *d, const zinc_tp *t)
{
    const int P = t->size;
    return (gpt2_local){.P = P, .sp = t->sequence_parallel && P > 1, .Cl = d->C / P,
                        .NHl = d->NH / P, .Fl = 4 * d->C / P, .Vl = d->V / P};
}

/* ------------------------------------------------------------------ embed */

enum { E_WTE, E_WPE };

static zinc_status embed_declare(zinc_layer *l)
{
    const gpt2_dims *d = zinc_layer_state(l);
    if (ADD(l, "wte.weight", 2, 0, 1, ZINC_INIT_NORMAL, 0.02f, d->V, d->C) != E_WTE ||
        ADD(l, "wpe.weight", 2, -1, 1, ZINC_INIT_NORMAL, 0.01f, d->maxT, d->C) != E_WPE)
        return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, d->C);
    return ZINC_OK;
}

/* The partial sum (forward) or the gathered gradient (backward) of the
 * B*T rows with sequence parallelism. */
static size_t embed_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, zinc_layer_tp(l));
    return g.sp ? (size_t)B * T * d->C * zinc_dtype_size(act) : 0;
}

static zinc_status embed_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, c->tp);
    return zinc_tp_embedding_forward(c->tp, y, c->scratch, x, c->pos, zinc_layer_param(l, E_WTE),
                                     zinc_layer_param(l, E_WPE), c->B, c->T, d->C, g.Vl);
}

static zinc_status embed_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy,
                                  void *dx)
{
    (void)dx;
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, c->tp);
    return zinc_tp_embedding_backward(c->tp, zinc_layer_grad(l, E_WTE), zinc_layer_grad(l, E_WPE),
                                      dy, c->scratch, x, c->pos, c->B, c->T, d->C, g.Vl);
}

static const zinc_layer_ops embed_ops = {
    .type = "gpt2.embed",
    .declare = embed_declare,
    .scratch_bytes = embed_scratch_bytes,
    .forward = embed_forward,
    .backward = embed_backward,
};

/* ------------------------------------------------------------------ block */

enum { B_LN1W, B_LN1B, B_QKVW, B_QKVB, B_PRJW, B_PRJB, B_LN2W, B_LN2B, B_FCW, B_FCB, B_FPW, B_FPB };

/* Saved activations of a block, per token unless noted; "rows" are this
 * rank's token rows between the parallel regions (N/P with sequence
 * parallelism), the others all N = B*T rows of this rank's heads and MLP
 * columns. With model.recompute the LayerNorm outputs and the MLP's inner
 * activations are not kept: backward recomputes them from what is (two
 * LayerNorms, the c_fc product and its GELU per layer, about 5% of a step),
 * which keeps 10C of 15C values per token out of activation memory (GPT-2
 * 124M, B=16, T=1024, bf16: 3 GB); those pointers are NULL then. With
 * sequence parallelism backward gathers the LayerNorm outputs again (as
 * Megatron does) instead of keeping them whole. */
typedef struct block_acts {
    float *ln1_mean, *ln1_rstd;       /* (rows) (rows) */
    void *ln1;                        /* (rows,C) act, NULL with recompute */
    void *qkv;                        /* (N,3Cl) act: this rank's heads' q | k | v */
    void *atty;                       /* (N,Cl) act */
    float *lse;                       /* (B,NHl,T) attention log-sum-exp */
    void *res2;                       /* (rows,C) act: x + attention branch */
    float *ln2_mean, *ln2_rstd;       /* (rows) (rows) */
    void *ln2;                        /* (rows,C) act, NULL with recompute */
    void *fch, *fch_gelu;             /* (N,Fl) act each: c_fc's output and its GELU, NULL with recompute */
    float *lt[4];                     /* (N,r) each: an adapted site's x A^T (NULL: not adapted) */
} block_acts;

static size_t block_carve(block_acts *a, void *base, const gpt2_dims *d, const gpt2_local *g,
                          int B, int T, zinc_dtype act)
{
    size_t N = (size_t)B * T, R = g->sp ? N / g->P : N, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_acts t;
    memset(&t, 0, sizeof t);
    t.ln1_mean = CARVE_F32(&k, R);
    t.ln1_rstd = CARVE_F32(&k, R);
    t.qkv = CARVE_ACT(&k, N * 3 * g->Cl);
    t.atty = CARVE_ACT(&k, N * g->Cl);
    t.lse = CARVE_F32(&k, (size_t)B * g->NHl * T);
    t.res2 = CARVE_ACT(&k, R * C);
    t.ln2_mean = CARVE_F32(&k, R);
    t.ln2_rstd = CARVE_F32(&k, R);
    if (!d->recompute) {
        t.ln1 = CARVE_ACT(&k, R * C);
        t.ln2 = CARVE_ACT(&k, R * C);
        t.fch = CARVE_ACT(&k, N * g->Fl);
        t.fch_gelu = CARVE_ACT(&k, N * g->Fl);
    }
    for (int i = 0; i < 4; i++)
        if (model_lora_adapts(&d->lora, i)) t.lt[i] = CARVE_F32(&k, N * (size_t)d->lora.r);
    if (a) *a = t;
    return k.off;
}

static zinc_status block_declare(zinc_layer *l)
{
    const gpt2_dims *d = zinc_layer_state(l);
    int64_t C = d->C;
    float std = 0.02f, pstd = 0.02f / sqrtf(2.0f * (float)d->L);
    /* c_attn, c_fc column-parallel (c_attn's q | k | v as 3 blocks, so a
     * rank holds its heads' q, k and v); the c_projs row-parallel */
    int ok = ADD(l, "ln_1.weight", 1, -1, 1, ZINC_INIT_ONES, 0, C) == B_LN1W &&
             ADD(l, "ln_1.bias", 1, -1, 1, ZINC_INIT_ZEROS, 0, C) == B_LN1B &&
             ADD(l, "attn.c_attn.weight", 2, 1, 3, ZINC_INIT_NORMAL, std, C, 3 * C) == B_QKVW &&
             ADD(l, "attn.c_attn.bias", 1, 0, 3, ZINC_INIT_ZEROS, 0, 3 * C) == B_QKVB &&
             ADD(l, "attn.c_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, pstd, C, C) == B_PRJW &&
             ADD(l, "attn.c_proj.bias", 1, -1, 1, ZINC_INIT_ZEROS, 0, C) == B_PRJB &&
             ADD(l, "ln_2.weight", 1, -1, 1, ZINC_INIT_ONES, 0, C) == B_LN2W &&
             ADD(l, "ln_2.bias", 1, -1, 1, ZINC_INIT_ZEROS, 0, C) == B_LN2B &&
             ADD(l, "mlp.c_fc.weight", 2, 1, 1, ZINC_INIT_NORMAL, std, C, 4 * C) == B_FCW &&
             ADD(l, "mlp.c_fc.bias", 1, 0, 1, ZINC_INIT_ZEROS, 0, 4 * C) == B_FCB &&
             ADD(l, "mlp.c_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, pstd, 4 * C, C) == B_FPW &&
             ADD(l, "mlp.c_proj.bias", 1, -1, 1, ZINC_INIT_ZEROS, 0, C) == B_FPB;
    if (!ok) return ZINC_ERR_INVALID_ARG;
    /* the adapters after the base (declare runs for every block alike: the same indices) */
    gpt2_dims *dm = zinc_layer_state(l);
    const int io[4][4] = {{d->C, 3 * d->C, LORA_COLUMN, 3}, {d->C, d->C, LORA_ROW, 1},
                          {d->C, 4 * d->C, LORA_COLUMN, 1}, {4 * d->C, d->C, LORA_ROW, 1}};
    zinc_status st = ZINC_OK;
    for (int i = 0; i < 4 && st == ZINC_OK; i++)
        st = model_lora_declare(&d->lora, l, i, lora_modules[i], io[i][0], io[i][1], io[i][2], io[i][3], &dm->site[i]);
    return st;
}

static size_t block_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, zinc_layer_tp(l));
    return block_carve(NULL, NULL, d, &g, B, T, act);
}

/* The block's scratch (act unless noted; rows as in block_acts):
 *   a, b    (N,Fl) each, with recompute: GELU(fch) and fch
 *   small   with recompute the LayerNorm output (rows,C) (forward: ln1 then
 *           ln2; backward: ln2, then datty, then ln1), else datty (N,Cl)
 *   full    (N,C) with sequence parallelism: the gathered LayerNorm output
 *   dln     (N,C): dln2 | dln1 (with SP their partial sums, and in forward
 *           the row-parallel linears' partial sums), aliased with the
 *           gathered incoming gradient (SP), never live at the same time
 *   dlnl    (rows,C) with SP: dln2 | dln1 reduce-scattered to this rank's rows
 *   dfch    (N,Fl), then dqkv (N,3Cl)
 *   lng     4C fp32 with SP: the LayerNorm gradients' partial sums
 *   att     the attention scratch, B NHl T fp32 on every device (zinc/ops.h).
 * The residual gradient is accumulated in dx itself (zeroed by the engine). */
typedef struct block_scratch {
    void *a, *b, *small, *full, *dln, *dlnl, *dfch;
    float *lng, *att;
    lora_scratch lo;  /* the adapters' (lora.c) */
    void *lg;         /* (N,Fl) with an adapted mlp.c_proj: its input gradient before the GELU */
} block_scratch;

static size_t block_scratch_carve(block_scratch *s, void *base, const gpt2_dims *d,
                                  const gpt2_local *g, int B, int T, zinc_dtype act)
{
    size_t N = (size_t)B * T, R = g->sp ? N / g->P : N, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_scratch t;
    memset(&t, 0, sizeof t);
    if (d->recompute) {
        t.a = CARVE_ACT(&k, N * g->Fl);
        t.b = CARVE_ACT(&k, N * g->Fl);
    }
    t.small = CARVE_ACT(&k, max_sz(N * g->Cl, d->recompute ? R * C : 0));
    t.dln = CARVE_ACT(&k, N * C);
    t.dfch = CARVE_ACT(&k, N * g->Fl);
    if (g->sp) {
        t.full = CARVE_ACT(&k, N * C);
        t.dlnl = CARVE_ACT(&k, R * C);
        t.lng = CARVE_F32(&k, 4 * C);
    }
    t.att = CARVE_F32(&k, (size_t)B * g->NHl * T);
    model_lora_carve(&d->lora, &k, &t.lo, N, model_lora_adapts(&d->lora, S_MPROJ) ? (size_t)g->Fl : C);
    if (model_lora_adapts(&d->lora, S_MPROJ)) t.lg = CARVE_ACT(&k, N * g->Fl);
    if (s) *s = t;
    return k.off;
}

static size_t block_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, zinc_layer_tp(l));
    return block_scratch_carve(NULL, NULL, d, &g, B, T, act);
}

/* c_fc and its GELU: out = gelu(pre), pre = ln2 @ W + b (+ the adapter's path: then
 * unfused, the GELU after the sum); pre may be NULL when the product is fused. */
static zinc_status fc_forward(zinc_layer *l, zinc_ctx *c, const block_acts *a, const block_scratch *s, void *out,
                              void *pre, const void *ln2f)
{
    const gpt2_dims *d = zinc_layer_state(l);
    gpt2_local g = local_of(d, c->tp);
    const int N = c->B * c->T;
    const float *w = zinc_layer_param(l, B_FCW), *b = zinc_layer_param(l, B_FCB);
    if (!model_lora_adapts(&d->lora, S_FC)) {
        c->ops->linear_gelu_forward(out, pre, ln2f, w, b, N, d->C, g.Fl);
        return ZINC_OK;
    }
    zinc_tp_column_forward(c->tp, pre, ln2f, w, b, N, d->C, g.Fl);
    zinc_status st = model_lora_forward(&d->lora, &d->site[S_FC], l, c, S_FC, pre, g.Fl, ln2f, a->lt[S_FC], &s->lo);
    c->ops->gelu_forward(out, pre, (size_t)N * g.Fl);
    return st;
}

static zinc_status block_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    gpt2_local g = local_of(d, tp);
    int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = d->C;
    zinc_status st = ZINC_OK;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, &g, c->B, c->T, o->act);
    block_scratch s;
    block_scratch_carve(&s, c->scratch, d, &g, c->B, c->T, o->act);
    float *p[12];
    for (int i = 0; i < 12; i++) p[i] = zinc_layer_param(l, i);

    /* with recompute, ln1 / ln2 and GELU(fch) live in the scratch */
    void *ln1 = a.ln1, *ln2 = a.ln2, *fch_gelu = a.fch_gelu;
    if (d->recompute) {
        ln1 = ln2 = s.small;
        fch_gelu = s.a;
    }
    /* attention: x + c_proj(attn(c_attn(ln1(x)))) over this rank's heads */
    o->layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, x, p[B_LN1W], p[B_LN1B], R, C);
    const void *ln1f = zinc_tp_region_enter(tp, s.full, ln1, N, C, &st);
    if (st != ZINC_OK) return st;
    zinc_tp_column_forward(tp, a.qkv, ln1f, p[B_QKVW], p[B_QKVB], N, C, 3 * g.Cl);
    ZINC_TRY(model_lora_forward(&d->lora, &d->site[S_ATTN], l, c, S_ATTN, a.qkv, 3 * g.Cl, ln1f, a.lt[S_ATTN], &s.lo));
    if (c->pos) /* documents packed in the rows: the multi-head case of the masked op */
        o->attention_gqa_forward(a.atty, a.lse, a.qkv, c->pos, c->B, c->T, g.NHl, g.NHl, g.Cl / g.NHl);
    else
        o->attention_forward(a.atty, a.lse, a.qkv, c->B, c->T, g.Cl, g.NHl);
    ZINC_TRY(zinc_tp_row_forward(tp, a.res2, s.dln, a.atty, p[B_PRJW], p[B_PRJB], N, g.Cl, C));
    ZINC_TRY(model_lora_forward(&d->lora, &d->site[S_APROJ], l, c, S_APROJ, a.res2, C, a.atty, a.lt[S_APROJ], &s.lo));
    o->residual_forward(a.res2, a.res2, x, (size_t)R * C);
    /* MLP: res2 + c_proj(gelu(c_fc(ln2(res2)))) over this rank's columns */
    o->layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.res2, p[B_LN2W], p[B_LN2B], R, C);
    const void *ln2f = zinc_tp_region_enter(tp, s.full, ln2, N, C, &st);
    if (st != ZINC_OK) return st;
    ZINC_TRY(fc_forward(l, c, &a, &s, fch_gelu, d->recompute && model_lora_adapts(&d->lora, S_FC) ? s.b : a.fch, ln2f));
    ZINC_TRY(zinc_tp_row_forward(tp, y, s.dln, fch_gelu, p[B_FPW], p[B_FPB], N, g.Fl, C));
    ZINC_TRY(model_lora_forward(&d->lora, &d->site[S_MPROJ], l, c, S_MPROJ, y, C, fch_gelu, a.lt[S_MPROJ], &s.lo));
    o->residual_forward(y, y, a.res2, (size_t)R * C);
cleanup:
    return st;
}

static zinc_status block_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy,
                                  void *dx)
{
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    gpt2_local g = local_of(d, tp);
    const size_t asz = zinc_dtype_size(o->act);
    int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = d->C;
    zinc_status st = ZINC_OK;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, &g, c->B, c->T, o->act);
    block_scratch s;
    block_scratch_carve(&s, c->scratch, d, &g, c->B, c->T, o->act);
    float *p[12], *gr[12];
    for (int i = 0; i < 12; i++) {
        p[i] = zinc_layer_param(l, i);
        gr[i] = zinc_layer_grad(l, i);
    }
    /* LayerNorm gradients: partial per rank with SP, summed at the end */
    float *dln2w = gr[B_LN2W], *dln2b = gr[B_LN2B], *dln1w = gr[B_LN1W], *dln1b = gr[B_LN1B];
    if (g.sp) {
        o->zero(s.lng, 4 * (size_t)C * sizeof(float));
        dln2w = s.lng, dln2b = s.lng + C, dln1w = s.lng + 2 * C, dln1b = s.lng + 3 * C;
    }
    void *dlnr = g.sp ? s.dlnl : s.dln; /* dln2 / dln1 on this rank's rows */

    /* MLP branch: y = res2 + fc_proj(gelu(fc(ln2(res2)))); dx accumulates
     * the residual stream's gradient: dy now, + the MLP's through ln2 below
     * (that sum is dres2), + the attention branch's through ln1 last */
    o->residual_forward(dx, dx, dy, (size_t)R * C);
    const void *dyf = zinc_tp_region_enter(tp, s.dln, dy, N, C, &st);
    if (st != ZINC_OK) return st;
    void *ln2 = a.ln2, *fch = a.fch, *fch_gelu = a.fch_gelu;
    if (d->recompute) {
        ln2 = s.small;
        o->layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.res2, p[B_LN2W], p[B_LN2B], R, C);
    }
    const void *ln2f = zinc_tp_region_enter(tp, s.full, ln2, N, C, &st);
    if (st != ZINC_OK) return st;
    if (d->recompute) { /* fch and GELU(fch) */
        fch_gelu = s.a;
        fch = s.b;
        ZINC_TRY(fc_forward(l, c, &a, &s, fch_gelu, fch, ln2f));
    }
    /* GELU's backward fused into c_proj's (row-parallel: no communication) */
    o->linear_gelu_backward(s.dfch, gr[B_FPW], gr[B_FPB], dyf, fch_gelu, fch, p[B_FPW], N, g.Fl,
                            C);
    if (model_lora_adapts(&d->lora, S_MPROJ)) { /* the adapter's input gradient through the GELU too */
        o->zero(s.lg, (size_t)N * g.Fl * asz);
        ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_MPROJ], l, c, S_MPROJ, s.lg, dyf, C, fch_gelu, a.lt[S_MPROJ],
                            &s.lo));
        o->gelu_backward(s.dfch, fch, s.lg, (size_t)N * g.Fl);
    }
    ZINC_TRY(zinc_tp_column_backward(tp, dlnr, s.dln, gr[B_FCW], gr[B_FCB], s.dfch, ln2f,
                                     p[B_FCW], N, C, g.Fl));
    ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_FC], l, c, S_FC, dlnr, s.dfch, g.Fl, ln2f, a.lt[S_FC], &s.lo));
    o->layernorm_backward(dx, dln2w, dln2b, dlnr, a.res2, p[B_LN2W], a.ln2_mean, a.ln2_rstd, R,
                          C);
    /* attention branch: res2 = x + proj(attn(qkv(ln1(x)))); dx holds dres2 */
    const void *dres2f = zinc_tp_region_enter(tp, s.dln, dx, N, C, &st);
    if (st != ZINC_OK) return st;
    void *datty = s.small;
    o->zero(datty, (size_t)N * g.Cl * asz);
    zinc_tp_row_backward(tp, datty, gr[B_PRJW], gr[B_PRJB], dres2f, a.atty, p[B_PRJW], N, g.Cl, C);
    ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_APROJ], l, c, S_APROJ, datty, dres2f, C, a.atty, a.lt[S_APROJ], &s.lo));
    void *dqkv = s.dfch; /* dfch is dead */
    o->zero(dqkv, (size_t)N * 3 * g.Cl * asz);
    if (c->pos)
        o->attention_gqa_backward(dqkv, s.att, datty, a.qkv, a.atty, a.lse, c->pos, c->B, c->T, g.NHl, g.NHl,
                                  g.Cl / g.NHl);
    else
        o->attention_backward(dqkv, s.att, datty, a.qkv, a.atty, a.lse, c->B, c->T, g.Cl, g.NHl);
    void *ln1 = a.ln1;
    if (d->recompute) { /* ln1 is recomputed in small: datty is dead */
        ln1 = s.small;
        o->layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, x, p[B_LN1W], p[B_LN1B], R, C);
    }
    const void *ln1f = zinc_tp_region_enter(tp, s.full, ln1, N, C, &st);
    if (st != ZINC_OK) return st;
    ZINC_TRY(zinc_tp_column_backward(tp, dlnr, s.dln, gr[B_QKVW], gr[B_QKVB], dqkv, ln1f,
                                     p[B_QKVW], N, C, 3 * g.Cl));
    ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_ATTN], l, c, S_ATTN, dlnr, dqkv, 3 * g.Cl, ln1f, a.lt[S_ATTN], &s.lo));
    o->layernorm_backward(dx, dln1w, dln1b, dlnr, x, p[B_LN1W], a.ln1_mean, a.ln1_rstd, R, C);
    if (g.sp) {
        static const int idx[4] = {B_LN2W, B_LN2B, B_LN1W, B_LN1B};
        ZINC_TRY(model_norm_grads_reduce(l, c, s.lng, idx, 4, C));
    }
cleanup:
    return st;
}

static const zinc_layer_ops block_ops = {
    .type = "gpt2.block",
    .declare = block_declare,
    .act_bytes = block_act_bytes,
    .scratch_bytes = block_scratch_bytes,
    .forward = block_forward,
    .backward = block_backward,
};

/* ------------------------------------------------------------------- head */

enum { H_LNFW, H_LNFB, H_WTE };

static zinc_status head_declare(zinc_layer *l)
{
    const gpt2_dims *d = zinc_layer_state(l);
    int ok = ADD(l, "ln_f.weight", 1, -1, 1, ZINC_INIT_ONES, 0, d->C) == H_LNFW &&
             ADD(l, "ln_f.bias", 1, -1, 1, ZINC_INIT_ZEROS, 0, d->C) == H_LNFB &&
             zinc_layer_param_tie(l, "wte.weight") == H_WTE;
    zinc_layer_set_out(l, 0);
    return ok ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}

static size_t head_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    return model_head_act_bytes(&d->head, zinc_layer_tp(l), B, T, act);
}

static size_t head_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    return model_head_scratch_bytes(&d->head, zinc_layer_tp(l), B, T, act);
}

static zinc_status head_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    (void)y;
    const gpt2_dims *d = zinc_layer_state(l);
    return model_head_forward(&d->head, l, c, x);
}

static zinc_status head_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    (void)dy;
    const gpt2_dims *d = zinc_layer_state(l);
    return model_head_backward(&d->head, l, c, x, dx);
}

static const zinc_layer_ops head_ops = {
    .type = "gpt2.head",
    .declare = head_declare,
    .act_bytes = head_act_bytes,
    .scratch_bytes = head_scratch_bytes,
    .forward = head_forward,
    .backward = head_backward,
};

/* ------------------------------------------------------------------ model */

zinc_status zinc_gpt2_create(const zinc_config *c, zinc_gpt2 **out)
{
    *out = NULL;
    if (strcmp(c->model.type, "gpt2") != 0)
        return zinc_error(ZINC_ERR_CONFIG, "model.type: expected \"gpt2\", found \"%s\"",
                          c->model.type);
    if (c->model.n_embd % c->model.n_head != 0)
        return zinc_error(ZINC_ERR_CONFIG, "model.n_embd %lld is not divisible by model.n_head %lld",
                          (long long)c->model.n_embd, (long long)c->model.n_head);
    zinc_status cst = zinc_config_check(c); /* every dimension below fits an int */
    if (cst != ZINC_OK) return cst;
    /* parameters: (V + maxT) C + L (12 C^2 + 13 C) + 2 C, in doubles (no overflow) */
    double pc = ((double)c->model.vocab_size + (double)c->model.block_size) * (double)c->model.n_embd +
                (double)c->model.n_layer * (12.0 * (double)c->model.n_embd * (double)c->model.n_embd +
                                            13.0 * (double)c->model.n_embd) +
                2.0 * (double)c->model.n_embd;
    if (pc > MODEL_PARAMS_MAX)
        return zinc_error(ZINC_ERR_CONFIG,
                          "model: n_layer %lld, n_embd %lld, vocab_size %lld, block_size %lld make "
                          "%.4g parameters; zinc handles at most %.4g (2^40)",
                          (long long)c->model.n_layer, (long long)c->model.n_embd,
                          (long long)c->model.vocab_size, (long long)c->model.block_size, pc,
                          MODEL_PARAMS_MAX);
    if (c->model.n_embd / c->model.n_head > 128) /* zinc/ops.h attention: HS <= 128 */
        return zinc_error(ZINC_ERR_CONFIG,
                          "model.n_embd / model.n_head = %lld: attention head size above 128",
                          (long long)(c->model.n_embd / c->model.n_head));
    zinc_gpt2 *g = calloc(1, sizeof *g);
    if (!g) return zinc_error(ZINC_ERR_NOMEM, "gpt2");
    g->d.C = (int)c->model.n_embd;
    g->d.NH = (int)c->model.n_head;
    g->d.V = (int)c->model.vocab_size;
    g->d.head = (model_head){.C = g->d.C, .V = g->d.V, .Vreal = g->d.V, .rms = 0, .eps = 1e-5f};
    g->d.maxT = (int)c->model.block_size;
    g->d.L = (int)c->model.n_layer;
    g->d.recompute = c->model.recompute != 0;
    zinc_status lst = model_lora_plan(&g->d.lora, c, "gpt2", lora_modules, lora_defaults);
    if (lst != ZINC_OK) {
        free(g);
        return lst;
    }
    int n = g->d.L + 2;
    g->layers = calloc((size_t)n, sizeof *g->layers);
    if (!g->layers) {
        free(g);
        return zinc_error(ZINC_ERR_NOMEM, "gpt2 layers");
    }
    g->layers[0] = (zinc_layer_def){.ops = &embed_ops, .name = "", .state = &g->d};
    for (int i = 0; i < g->d.L; i++) {
        g->layers[i + 1] = (zinc_layer_def){.ops = &block_ops, .state = &g->d};
        snprintf(g->layers[i + 1].name, sizeof g->layers[i + 1].name, "h.%d", i);
    }
    g->layers[n - 1] = (zinc_layer_def){.ops = &head_ops, .name = "", .state = &g->d};
    g->model.layers = g->layers;
    g->model.n_layers = n;
    g->model.tp_ready = 1; /* partition specs declared; layers run through zinc/tp.h */
    /* 6 FLOPs per matmul weight per token (forward + backward) plus the
     * attention products, 12 L T C (PaLM's formula, the usual MFU basis) */
    double C = g->d.C, V = g->d.V, L = g->d.L;
    double T = (double)zinc_config_seq_len(c);
    g->model.flops_per_token = 6.0 * (L * 12.0 * C * C + V * C) + 12.0 * L * T * C;
    *out = g;
    return ZINC_OK;
}

const zinc_model_def *zinc_gpt2_model(const zinc_gpt2 *g) { return &g->model; }

zinc_status gpt2_hf_config(zinc_config *c, json_t *j, const char *path)
{
    static const char *const keys[] = {"n_layer", "n_embd", "n_head", "n_positions", "vocab_size", NULL};
    int64_t v[5];
    for (int i = 0; keys[i]; i++) {
        json_t *x = json_object_get(j, keys[i]);
        if (!json_is_integer(x) || json_integer_value(x) < 1)
            return zinc_error(ZINC_ERR_CORRUPT, "model.from_pretrained: %s: %s: expected an integer >= 1", path,
                              keys[i]);
        v[i] = json_integer_value(x);
    }
    const char *act = json_string_value(json_object_get(j, "activation_function"));
    json_t *eps = json_object_get(j, "layer_norm_epsilon");
    json_t *tie = json_object_get(j, "tie_word_embeddings");
    if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: activation_function \"%s\": zinc's GPT-2 "
                          "uses the tanh GELU (gelu_new)", path, act);
    if (eps && (!json_is_number(eps) || fabs(json_number_value(eps) - 1e-5) > 1e-12))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: layer_norm_epsilon %g: zinc's LayerNorm "
                          "uses 1e-5", path, json_number_value(eps));
    if (json_is_false(tie))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: tie_word_embeddings false: zinc's GPT-2 "
                          "ties the head to wte", path);
    snprintf(c->model.type, sizeof c->model.type, "gpt2");
    c->model.n_layer = v[0];
    c->model.n_embd = v[1];
    c->model.n_head = v[2];
    c->model.block_size = v[3];
    c->model.vocab_size = v[4];
    return ZINC_OK;
}

zinc_status zinc_gpt2_set_vocab_real(zinc_gpt2 *g, int64_t n)
{
    if (n < 1 || n > g->d.V)
        return zinc_error(ZINC_ERR_CONFIG, "the real vocabulary %lld does not fit model.vocab_size %d", (long long)n,
                          g->d.V);
    g->d.head.Vreal = (int)n;
    static const char *const vocab_tensors[] = {"wte.weight", NULL};
    g->model.vocab_real = n < g->d.V ? n : 0;
    g->model.vocab_tensors = vocab_tensors;
    return ZINC_OK;
}

void zinc_gpt2_destroy(zinc_gpt2 *g)
{
    if (!g) return;
    free(g->layers);
    free(g);
}
