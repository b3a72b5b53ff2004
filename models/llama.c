/* llama.c - the Llama family (Llama 2/3, Mistral, Qwen2) as engine layers.
 *
 *   layer 0        model:           tokens (B,T) -> embed_tokens[tok]              (B,T,C)
 *   layer 1..L     model.layers.i:  r = x + o_proj(attn(rope(q,k), v)), q|k|v = qkv_proj(rms(x));
 *                                   y = r + down_proj(silu(gate(rms(r))) * up(rms(r)))
 *   layer L+1      head:            model.norm (RMSNorm), logits = x @ lm_head^T (or the tied
 *                                   embed_tokens), fused softmax cross-entropy.
 * Parameter names and layouts are Hugging Face's (nn.Linear weights stored (out, in)), so
 * a model folder's tensors map one to one. Grouped-query attention: NKV key/value heads,
 * each serving NH / NKV query heads, never expanded in memory. q_proj, k_proj and v_proj
 * are declared one after the other, so their rows lie back to back in the layer's unit
 * and form one (NH + 2 NKV) HS x C product (likewise gate_proj | up_proj: one 2F x C
 * product whose rows are the SwiGLU's gate | up). Under tensor parallelism (zinc/tp.h)
 * q/k/v/gate/up are column-parallel (rows of the weights: each rank its heads and MLP
 * columns), o_proj and down_proj row-parallel, embed_tokens and lm_head split by
 * vocabulary rows; with sequence parallelism the RMSNorm/residual regions hold this
 * rank's token rows. Init as transformers: N(0, 0.02) for the linears and the embedding,
 * RMSNorm weights 1, biases 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/llama.h"
#include "model_int.h"

typedef struct llama_dims {
    int C, NH, NKV, HS, F, V, L, T;
    model_head head; /* model.norm, lm_head (or the tied embedding), the loss; head.Vreal: the real vocabulary */
    int tie;        /* lm_head is embed_tokens */
    int qkv_bias;   /* q/k/v biases (Qwen2) */
    float eps;      /* RMSNorm epsilon */
    int recompute;  /* model.recompute: backward recomputes both RMSNorm outputs, gate | up and SwiGLU */
    model_lora lora;        /* model.lora: adapters on the sites below */
    lora_site site[7];      /* the block's adapters (the same indices in every block) */
} llama_dims;

/* The block's linears LoRA may adapt (Hugging Face's module names), in site order. */
enum { S_Q, S_K, S_V, S_O, S_GATE, S_UP, S_DOWN, N_SITES };
static const char *const lora_modules[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj",    NULL};
static const char *const lora_defaults[] = {"q_proj", "v_proj", NULL}; /* PEFT's for llama */


struct zinc_llama {
    llama_dims d;
    zinc_layer_def *layers;
    zinc_model_def model;
    float *rope; /* cos (T, HS/2) | sin (T, HS/2): the model's constant tables */
};

/* What this TP rank holds: query heads NHl, key/value heads NKVl, the qkv width
 * QKV = (NHl + 2 NKVl) HS, MLP columns Fl, vocabulary rows Vl; sp: sequence parallelism. */
typedef struct llama_local {
    int P, sp;
    int NHl, NKVl, QKV, Fl, Vl;
} llama_local;

static llama_local local_of(const llama_dims *d, const zinc_tp *t)
{
    const int P = t->size;
    llama_local g = {.P = P, .sp = t->sequence_parallel && P > 1, .NHl = d->NH / P, .NKVl = d->NKV / P,
                     .Fl = d->F / P, .Vl = d->V / P};
    g.QKV = (g.NHl + 2 * g.NKVl) * d->HS;
    return g;
}

/* The rotary tables in device memory: cos (T, HS/2) then sin. */
static const float *rope_cos(const zinc_ctx *c) { return c->consts; }
static const float *rope_sin(const zinc_ctx *c, const llama_dims *d)
{
    return (const float *)c->consts + (size_t)d->T * (d->HS / 2);
}

/* Parameters declared one after another that the layer multiplies as one matrix: the
 * unit holds them back to back when their sizes are multiples of ZERO_UNIT_ALIGN
 * elements (zinc_llama_create makes sure they are); checked where they are used.
 * Parameter first + 1 starts each_first elements after first, each next one each
 * after that (and their gradients likewise when grads). */
static int is_adjacent(zinc_layer *l, int first, int n, size_t each_first, size_t each, int grads)
{
    const float *p0 = zinc_layer_param(l, first), *g0 = grads ? zinc_layer_grad(l, first) : NULL;
    if (!g0) grads = 0; /* frozen: no gradients to line up (each is NULL, as check_fused checks) */
    size_t off = each_first;
    for (int i = first + 1; i < first + n; i++, off += each)
        if (zinc_layer_param(l, i) != p0 + off || (grads && zinc_layer_grad(l, i) != g0 + off))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ embed */

static zinc_status embed_declare(zinc_layer *l)
{
    const llama_dims *d = zinc_layer_state(l);
    if (ADD(l, "embed_tokens.weight", 2, 0, 1, ZINC_INIT_NORMAL, 0.02f, d->V, d->C) != 0)
        return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, d->C);
    return ZINC_OK;
}

static size_t embed_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, zinc_layer_tp(l));
    return g.sp ? (size_t)B * T * d->C * zinc_dtype_size(act) : 0;
}

static zinc_status embed_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, c->tp);
    return zinc_tp_embedding_forward(c->tp, y, c->scratch, x, NULL, zinc_layer_param(l, 0), NULL, c->B, c->T, d->C, g.Vl);
}

static zinc_status embed_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    (void)dx;
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, c->tp);
    return zinc_tp_embedding_backward(c->tp, zinc_layer_grad(l, 0), NULL, dy, c->scratch, x, NULL, c->B, c->T, d->C,
                                      g.Vl);
}

static const zinc_layer_ops embed_ops = {
    .type = "llama.embed",
    .declare = embed_declare,
    .scratch_bytes = embed_scratch_bytes,
    .forward = embed_forward,
    .backward = embed_backward,
};

/* ------------------------------------------------------------------ block */

/* q, k, v adjacent (one qkv product), gate, up adjacent (one gate | up product); the
 * biases last, adjacent too */
enum { B_LN1, B_Q, B_K, B_V, B_O, B_LN2, B_G, B_U, B_D, B_QB, B_KB, B_VB };

/* Saved activations of a block; "rows" are this rank's token rows between the parallel
 * regions (N/P with sequence parallelism), the others all N = B*T rows of this rank's
 * heads and MLP columns. With model.recompute ln1, ln2, gu and h are not kept (NULL): the
 * forward makes them in the scratch and the backward again (two RMSNorms, the gate | up
 * product and SwiGLU, the same arithmetic: the gradients are bitwise those without),
 * which keeps 2C + 3F of the C(4 + ...) values per token out of activation memory. */
typedef struct block_acts {
    float *rstd1, *rstd2; /* (rows) each */
    void *ln1, *ln2;      /* (rows,C) act: the RMSNorm outputs */
    void *qkv;            /* (N,QKV) act: q | k after the rotation, v */
    void *atty;           /* (N,NHl HS) act */
    float *lse;           /* (B,NHl,T) */
    void *res2;           /* (rows,C) act: x + attention branch */
    void *gu;             /* (N,2Fl) act: gate | up */
    void *h;              /* (N,Fl) act: silu(gate) * up */
    float *lt[N_SITES];   /* (N,r) each: an adapted site's x A^T (NULL: not adapted) */
} block_acts;

static size_t block_carve(block_acts *a, void *base, const llama_dims *d, const llama_local *g, int B, int T,
                          zinc_dtype act)
{
    size_t N = (size_t)B * T, R = g->sp ? N / g->P : N, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_acts t;
    t.rstd1 = CARVE_F32(&k, R);
    t.rstd2 = CARVE_F32(&k, R);
    t.ln1 = d->recompute ? NULL : CARVE_ACT(&k, R * C);
    t.ln2 = d->recompute ? NULL : CARVE_ACT(&k, R * C);
    t.qkv = CARVE_ACT(&k, N * g->QKV);
    t.atty = CARVE_ACT(&k, N * g->NHl * d->HS);
    t.lse = CARVE_F32(&k, (size_t)B * g->NHl * T);
    t.res2 = CARVE_ACT(&k, R * C);
    t.gu = d->recompute ? NULL : CARVE_ACT(&k, N * 2 * g->Fl);
    t.h = d->recompute ? NULL : CARVE_ACT(&k, N * g->Fl);
    for (int i = 0; i < N_SITES; i++) t.lt[i] = model_lora_adapts(&d->lora, i) ? CARVE_F32(&k, N * (size_t)d->lora.r) : NULL;
    if (a) *a = t;
    return k.off;
}

static zinc_status block_declare(zinc_layer *l)
{
    const llama_dims *d = zinc_layer_state(l);
    const int64_t C = d->C, Q = (int64_t)d->NH * d->HS, KV = (int64_t)d->NKV * d->HS, F = d->F;
    const float std = 0.02f;
    int ok = ADD(l, "input_layernorm.weight", 1, -1, 1, ZINC_INIT_ONES, 0, C) == B_LN1 &&
             ADD(l, "self_attn.q_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, std, Q, C) == B_Q &&
             ADD(l, "self_attn.k_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, std, KV, C) == B_K &&
             ADD(l, "self_attn.v_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, std, KV, C) == B_V &&
             ADD(l, "self_attn.o_proj.weight", 2, 1, 1, ZINC_INIT_NORMAL, std, C, Q) == B_O &&
             ADD(l, "post_attention_layernorm.weight", 1, -1, 1, ZINC_INIT_ONES, 0, C) == B_LN2 &&
             ADD(l, "mlp.gate_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, std, F, C) == B_G &&
             ADD(l, "mlp.up_proj.weight", 2, 0, 1, ZINC_INIT_NORMAL, std, F, C) == B_U &&
             ADD(l, "mlp.down_proj.weight", 2, 1, 1, ZINC_INIT_NORMAL, std, C, F) == B_D;
    if (ok && d->qkv_bias)
        ok = ADD(l, "self_attn.q_proj.bias", 1, 0, 1, ZINC_INIT_ZEROS, 0, Q) == B_QB &&
             ADD(l, "self_attn.k_proj.bias", 1, 0, 1, ZINC_INIT_ZEROS, 0, KV) == B_KB &&
             ADD(l, "self_attn.v_proj.bias", 1, 0, 1, ZINC_INIT_ZEROS, 0, KV) == B_VB;
    if (!ok) return ZINC_ERR_INVALID_ARG;
    /* the adapters after the base (declare runs for every block alike: the same indices) */
    llama_dims *dm = zinc_layer_state(l);
    const int io[N_SITES][3] = {{d->C, (int)Q, LORA_COLUMN}, {d->C, (int)KV, LORA_COLUMN}, {d->C, (int)KV, LORA_COLUMN},
                                {(int)Q, d->C, LORA_ROW},    {d->C, d->F, LORA_COLUMN},    {d->C, d->F, LORA_COLUMN},
                                {d->F, d->C, LORA_ROW}};
    zinc_status st = ZINC_OK;
    for (int i = 0; i < N_SITES && st == ZINC_OK; i++)
        st = model_lora_declare(&d->lora, l, i, lora_modules[i], io[i][0], io[i][1], io[i][2], 1, &dm->site[i]);
    return st;
}

static size_t block_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, zinc_layer_tp(l));
    return block_carve(NULL, NULL, d, &g, B, T, act);
}

/* The block's scratch (act unless noted):
 *   full   (N,C) with sequence parallelism: the gathered RMSNorm output
 *   dln    (N,C): the row-parallel products' partial sums (forward), the gathered
 *          incoming gradient (SP), dln2 | dln1 partial sums (backward)
 *   dlnl   (rows,C) with SP: dln2 | dln1 reduce-scattered to this rank's rows
 *   big    dgu (N,2Fl), then dqkv (N,QKV)
 *   small  dh (N,Fl), then datty (N,NHl HS)
 *   lng    2C fp32 with SP: the RMSNorm gradients' partial sums
 *   att    the attention scratch, B NHl T fp32
 *   rln, rgu, rh  with model.recompute: ln1 or ln2 (rows,C), gu (N,2Fl), h (N,Fl).
 * The residual gradient is accumulated in dx itself (zeroed by the engine). */
typedef struct block_scratch {
    void *full, *dln, *dlnl, *big, *small, *rln, *rgu, *rh;
    float *lng, *att;
    lora_scratch lo; /* the adapters' (lora.c) */
} block_scratch;

static size_t block_scratch_carve(block_scratch *s, void *base, const llama_dims *d, const llama_local *g, int B,
                                  int T, zinc_dtype act)
{
    size_t N = (size_t)B * T, R = g->sp ? N / g->P : N, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_scratch t;
    memset(&t, 0, sizeof t);
    t.dln = CARVE_ACT(&k, N * C);
    t.big = CARVE_ACT(&k, max_sz(N * 2 * g->Fl, N * g->QKV));
    t.small = CARVE_ACT(&k, max_sz(N * g->Fl, N * g->NHl * d->HS));
    if (g->sp) {
        t.full = CARVE_ACT(&k, N * C);
        t.dlnl = CARVE_ACT(&k, R * C);
        t.lng = CARVE_F32(&k, 2 * C);
    }
    t.att = CARVE_F32(&k, (size_t)B * g->NHl * T);
    if (d->recompute) {
        t.rln = CARVE_ACT(&k, R * C);
        t.rgu = CARVE_ACT(&k, N * 2 * g->Fl);
        t.rh = CARVE_ACT(&k, N * g->Fl);
    }
    size_t in_max = C;
    if (model_lora_adapts(&d->lora, S_O)) in_max = max_sz(in_max, (size_t)g->NHl * d->HS);
    if (model_lora_adapts(&d->lora, S_DOWN)) in_max = max_sz(in_max, (size_t)g->Fl);
    model_lora_carve(&d->lora, &k, &t.lo, N, in_max);
    if (s) *s = t;
    return k.off;
}

static size_t block_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, zinc_layer_tp(l));
    return block_scratch_carve(NULL, NULL, d, &g, B, T, act);
}

/* The k part of a qkv row block: NHl heads into the row. */
static void *k_part(void *qkv, const llama_dims *d, const llama_local *g, size_t asz)
{
    return (char *)qkv + (size_t)g->NHl * d->HS * asz;
}

/* Rotates q and k of the N rows of qkv in place: dir 1 forward, -1 its backward. */
static void rope_qk(const zinc_ctx *c, const llama_dims *d, const llama_local *g, void *qkv, int dir)
{
    const zinc_ops *o = c->ops;
    const int N = c->B * c->T;
    o->rope(qkv, N, g->QKV, g->NHl, d->HS, c->T, c->pos, rope_cos(c), rope_sin(c, d), dir);
    o->rope(k_part(qkv, d, g, zinc_dtype_size(o->act)), N, g->QKV, g->NKVl, d->HS, c->T, c->pos, rope_cos(c),
            rope_sin(c, d), dir);
}

/* The fused products' operands must lie back to back in the unit (see the top). */
static zinc_status check_fused(zinc_layer *l, const llama_dims *d, const llama_local *g, int grads)
{
    const size_t C = (size_t)d->C, q = (size_t)g->NHl * d->HS, kv = (size_t)g->NKVl * d->HS;
    const size_t f = (size_t)g->Fl * C;
    if (!is_adjacent(l, B_Q, 3, q * C, kv * C, grads) || !is_adjacent(l, B_G, 2, f, f, grads) ||
        (d->qkv_bias && !is_adjacent(l, B_QB, 3, q, kv, grads)))
        return zinc_error(ZINC_ERR_INTERNAL, "llama: q/k/v or gate/up projections are not adjacent in their unit");
    return ZINC_OK;
}

/* The column offsets of each site's output in its fused product's rows (q | k | v of
 * qkv, gate | up of gu), and the row widths. */
static int site_col(const llama_dims *d, const llama_local *g, int site)
{
    switch (site) {
    case S_K: return g->NHl * d->HS;
    case S_V: return (g->NHl + g->NKVl) * d->HS;
    case S_UP: return g->Fl;
    default: return 0;
    }
}

/* The adapters of the fused products: sites lo..hi-1 into y (rows ld apart) from x. */
static zinc_status fused_lora_forward(zinc_layer *l, zinc_ctx *c, const block_acts *a, const block_scratch *s,
                                      int lo, int hi, void *y, int ld, const void *x)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, c->tp);
    const size_t asz = zinc_dtype_size(c->ops->act);
    zinc_status st = ZINC_OK;
    for (int i = lo; i < hi && st == ZINC_OK; i++)
        st = model_lora_forward(&d->lora, &d->site[i], l, c, i, (char *)y + (size_t)site_col(d, &g, i) * asz, ld, x,
                                a->lt[i], &s->lo);
    return st;
}

static zinc_status fused_lora_backward(zinc_layer *l, zinc_ctx *c, const block_acts *a, const block_scratch *s,
                                       int lo, int hi, void *dx, const void *dy, int ld, const void *x)
{
    const llama_dims *d = zinc_layer_state(l);
    llama_local g = local_of(d, c->tp);
    const size_t asz = zinc_dtype_size(c->ops->act);
    zinc_status st = ZINC_OK;
    for (int i = lo; i < hi && st == ZINC_OK; i++)
        st = model_lora_backward(&d->lora, &d->site[i], l, c, i, dx,
                                 (const char *)dy + (size_t)site_col(d, &g, i) * asz, ld, x, a->lt[i], &s->lo);
    return st;
}

static zinc_status block_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const llama_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    llama_local g = local_of(d, tp);
    int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = d->C;
    zinc_status st = check_fused(l, d, &g, 0);
    if (st != ZINC_OK) return st;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, &g, c->B, c->T, o->act);
    block_scratch s;
    block_scratch_carve(&s, c->scratch, d, &g, c->B, c->T, o->act);
    const float *qb = d->qkv_bias ? zinc_layer_param(l, B_QB) : NULL;
    if (d->recompute) a.ln1 = s.rln, a.ln2 = s.rln, a.gu = s.rgu, a.h = s.rh; /* not kept */

    /* attention: x + o_proj(attn(rope(q), rope(k), v)) over this rank's heads */
    o->rmsnorm_forward(a.ln1, a.rstd1, x, zinc_layer_param(l, B_LN1), d->eps, R, C);
    const void *ln1f = zinc_tp_region_enter(tp, s.full, a.ln1, N, C, &st);
    if (st != ZINC_OK) return st;
    zinc_tp_column_t_forward(tp, a.qkv, ln1f, zinc_layer_param(l, B_Q), qb, N, C, g.QKV);
    ZINC_TRY(fused_lora_forward(l, c, &a, &s, S_Q, S_V + 1, a.qkv, g.QKV, ln1f));
    rope_qk(c, d, &g, a.qkv, 1);
    o->attention_gqa_forward(a.atty, a.lse, a.qkv, c->pos, c->B, c->T, g.NHl, g.NKVl, d->HS);
    ZINC_TRY(zinc_tp_row_t_forward(tp, a.res2, s.dln, a.atty, zinc_layer_param(l, B_O), NULL, N, g.NHl * d->HS, C));
    ZINC_TRY(model_lora_forward(&d->lora, &d->site[S_O], l, c, S_O, a.res2, C, a.atty, a.lt[S_O], &s.lo));
    o->residual_forward(a.res2, a.res2, x, (size_t)R * C);
    /* MLP: res2 + down_proj(silu(gate(ln2)) * up(ln2)) over this rank's columns */
    o->rmsnorm_forward(a.ln2, a.rstd2, a.res2, zinc_layer_param(l, B_LN2), d->eps, R, C);
    const void *ln2f = zinc_tp_region_enter(tp, s.full, a.ln2, N, C, &st);
    if (st != ZINC_OK) return st;
    zinc_tp_column_t_forward(tp, a.gu, ln2f, zinc_layer_param(l, B_G), NULL, N, C, 2 * g.Fl);
    ZINC_TRY(fused_lora_forward(l, c, &a, &s, S_GATE, S_UP + 1, a.gu, 2 * g.Fl, ln2f));
    o->swiglu_forward(a.h, a.gu, N, g.Fl);
    ZINC_TRY(zinc_tp_row_t_forward(tp, y, s.dln, a.h, zinc_layer_param(l, B_D), NULL, N, g.Fl, C));
    ZINC_TRY(model_lora_forward(&d->lora, &d->site[S_DOWN], l, c, S_DOWN, y, C, a.h, a.lt[S_DOWN], &s.lo));
    o->residual_forward(y, y, a.res2, (size_t)R * C);
cleanup:
    return st;
}

static zinc_status block_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    const llama_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const zinc_tp *tp = c->tp;
    llama_local g = local_of(d, tp);
    const size_t asz = zinc_dtype_size(o->act);
    int N = c->B * c->T, R = zinc_tp_rows(tp, N), C = d->C;
    zinc_status st = check_fused(l, d, &g, 1);
    if (st != ZINC_OK) return st;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, &g, c->B, c->T, o->act);
    block_scratch s;
    block_scratch_carve(&s, c->scratch, d, &g, c->B, c->T, o->act);
    /* RMSNorm gradients: partial per rank with SP, summed at the end */
    float *dln2w = zinc_layer_grad(l, B_LN2), *dln1w = zinc_layer_grad(l, B_LN1);
    if (g.sp) {
        o->zero(s.lng, 2 * (size_t)C * sizeof(float));
        dln2w = s.lng, dln1w = s.lng + C;
    }
    void *dlnr = g.sp ? s.dlnl : s.dln; /* dln2 / dln1 on this rank's rows */

    /* MLP branch; dx accumulates the residual stream's gradient: dy, + the MLP's through
     * ln2 (that sum is dres2), + the attention branch's through ln1 */
    o->residual_forward(dx, dx, dy, (size_t)R * C);
    const void *dyf = zinc_tp_region_enter(tp, s.dln, dy, N, C, &st);
    if (st != ZINC_OK) return st;
    void *dh = s.small, *dgu = s.big;
    if (d->recompute) { /* ln2, gate | up and SwiGLU again, as the forward made them */
        a.ln2 = s.rln, a.gu = s.rgu, a.h = s.rh;
        o->rmsnorm_forward(a.ln2, a.rstd2, a.res2, zinc_layer_param(l, B_LN2), d->eps, R, C);
        const void *l2f = zinc_tp_region_enter(tp, s.full, a.ln2, N, C, &st);
        if (st != ZINC_OK) return st;
        zinc_tp_column_t_forward(tp, a.gu, l2f, zinc_layer_param(l, B_G), NULL, N, C, 2 * g.Fl);
        ZINC_TRY(fused_lora_forward(l, c, &a, &s, S_GATE, S_UP + 1, a.gu, 2 * g.Fl, l2f));
        o->swiglu_forward(a.h, a.gu, N, g.Fl);
    }
    o->zero(dh, (size_t)N * g.Fl * asz);
    zinc_tp_row_t_backward(tp, dh, zinc_layer_grad(l, B_D), NULL, dyf, a.h, zinc_layer_param(l, B_D), N, g.Fl, C);
    ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_DOWN], l, c, S_DOWN, dh, dyf, C, a.h, a.lt[S_DOWN], &s.lo));
    o->zero(dgu, (size_t)N * 2 * g.Fl * asz);
    o->swiglu_backward(dgu, dh, a.gu, N, g.Fl);
    const void *ln2f = zinc_tp_region_enter(tp, s.full, a.ln2, N, C, &st);
    if (st != ZINC_OK) return st;
    ZINC_TRY(zinc_tp_column_t_backward(tp, dlnr, s.dln, zinc_layer_grad(l, B_G), NULL, dgu, ln2f,
                                       zinc_layer_param(l, B_G), N, C, 2 * g.Fl));
    ZINC_TRY(fused_lora_backward(l, c, &a, &s, S_GATE, S_UP + 1, dlnr, dgu, 2 * g.Fl, ln2f));
    o->rmsnorm_backward(dx, dln2w, dlnr, a.res2, zinc_layer_param(l, B_LN2), a.rstd2, R, C);
    /* attention branch; dx holds dres2 */
    const void *dres2f = zinc_tp_region_enter(tp, s.dln, dx, N, C, &st);
    if (st != ZINC_OK) return st;
    void *datty = s.small, *dqkv = s.big; /* dh and dgu are dead */
    o->zero(datty, (size_t)N * g.NHl * d->HS * asz);
    zinc_tp_row_t_backward(tp, datty, zinc_layer_grad(l, B_O), NULL, dres2f, a.atty, zinc_layer_param(l, B_O), N,
                           g.NHl * d->HS, C);
    ZINC_TRY(model_lora_backward(&d->lora, &d->site[S_O], l, c, S_O, datty, dres2f, C, a.atty, a.lt[S_O], &s.lo));
    o->zero(dqkv, (size_t)N * g.QKV * asz);
    o->attention_gqa_backward(dqkv, s.att, datty, a.qkv, a.atty, a.lse, c->pos, c->B, c->T, g.NHl, g.NKVl, d->HS);
    rope_qk(c, d, &g, dqkv, -1); /* the gradients of q and k before the rotation */
    if (d->recompute) { /* ln1 again (ln2 is dead) */
        a.ln1 = s.rln;
        o->rmsnorm_forward(a.ln1, a.rstd1, x, zinc_layer_param(l, B_LN1), d->eps, R, C);
    }
    const void *ln1f = zinc_tp_region_enter(tp, s.full, a.ln1, N, C, &st);
    if (st != ZINC_OK) return st;
    ZINC_TRY(zinc_tp_column_t_backward(tp, dlnr, s.dln, zinc_layer_grad(l, B_Q),
                                       d->qkv_bias ? zinc_layer_grad(l, B_QB) : NULL, dqkv, ln1f,
                                       zinc_layer_param(l, B_Q), N, C, g.QKV));
    ZINC_TRY(fused_lora_backward(l, c, &a, &s, S_Q, S_V + 1, dlnr, dqkv, g.QKV, ln1f));
    o->rmsnorm_backward(dx, dln1w, dlnr, x, zinc_layer_param(l, B_LN1), a.rstd1, R, C);
    if (g.sp) {
        static const int idx[2] = {B_LN2, B_LN1};
        ZINC_TRY(model_norm_grads_reduce(l, c, s.lng, idx, 2, C));
    }
cleanup:
    return st;
}

static const zinc_layer_ops block_ops = {
    .type = "llama.block",
    .declare = block_declare,
    .act_bytes = block_act_bytes,
    .scratch_bytes = block_scratch_bytes,
    .forward = block_forward,
    .backward = block_backward,
};

/* ------------------------------------------------------------------- head */

enum { H_NORM, H_W };

static zinc_status head_declare(zinc_layer *l)
{
    const llama_dims *d = zinc_layer_state(l);
    int ok = ADD(l, "model.norm.weight", 1, -1, 1, ZINC_INIT_ONES, 0, d->C) == H_NORM &&
             (d->tie ? zinc_layer_param_tie(l, "model.embed_tokens.weight")
                     : ADD(l, "lm_head.weight", 2, 0, 1, ZINC_INIT_NORMAL, 0.02f, d->V, d->C)) == H_W;
    zinc_layer_set_out(l, 0);
    return ok ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}

static size_t head_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const llama_dims *d = zinc_layer_state(l);
    return model_head_act_bytes(&d->head, zinc_layer_tp(l), B, T, act);
}

static size_t head_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const llama_dims *d = zinc_layer_state(l);
    return model_head_scratch_bytes(&d->head, zinc_layer_tp(l), B, T, act);
}

static zinc_status head_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    (void)y;
    const llama_dims *d = zinc_layer_state(l);
    return model_head_forward(&d->head, l, c, x);
}

static zinc_status head_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    (void)dy;
    const llama_dims *d = zinc_layer_state(l);
    return model_head_backward(&d->head, l, c, x, dx);
}

static const zinc_layer_ops head_ops = {
    .type = "llama.head",
    .declare = head_declare,
    .act_bytes = head_act_bytes,
    .scratch_bytes = head_scratch_bytes,
    .forward = head_forward,
    .backward = head_backward,
};

/* ------------------------------------------------------------------ model */

zinc_status zinc_llama_create(const zinc_config *c, zinc_llama **out)
{
    *out = NULL;
    if (strcmp(c->model.type, "llama") != 0)
        return zinc_error(ZINC_ERR_CONFIG, "model.type: expected \"llama\", found \"%s\"", c->model.type);
    zinc_status cst = zinc_config_check(c); /* every dimension below fits an int */
    if (cst != ZINC_OK) return cst;
    const int64_t C = c->model.n_embd, NH = c->model.n_head, NKV = zinc_config_kv_heads(c), F = zinc_config_ffn(c);
    const int64_t V = c->model.vocab_size, L = c->model.n_layer, HS = C / NH;
    if (C % NH || NH % NKV)
        return zinc_error(ZINC_ERR_CONFIG, "model: n_embd %lld, n_head %lld, n_kv_head %lld: n_head must divide "
                          "n_embd and n_kv_head n_head", (long long)C, (long long)NH, (long long)NKV);
    if (HS > 128 || HS % 2)
        return zinc_error(ZINC_ERR_CONFIG, "model.n_embd / model.n_head = %lld: the head size must be even and at "
                          "most 128", (long long)HS);
    /* the fused q|k|v and gate|up products need each projection's rows to end on the
     * unit's 16-element alignment: C a multiple of 16 (and the head size, for biases) */
    if (C % ZERO_UNIT_ALIGN || (c->model.attention_bias && HS % ZERO_UNIT_ALIGN))
        return zinc_error(ZINC_ERR_CONFIG, "model.n_embd %lld%s: zinc's Llama needs a multiple of %d", (long long)C,
                          c->model.attention_bias ? " and its head size (attention_bias)" : "", ZERO_UNIT_ALIGN);
    double pc = (double)V * C * (c->model.tie_word_embeddings ? 1 : 2) + C +
                (double)L * ((double)C * HS * (NH + 2 * NKV) + (double)C * NH * HS + 3.0 * C * F + 2.0 * C +
                             (c->model.attention_bias ? (double)HS * (NH + 2 * NKV) : 0));
    if (pc > MODEL_PARAMS_MAX)
        return zinc_error(ZINC_ERR_CONFIG, "model: %.4g parameters; zinc handles at most %.4g (2^40)", pc,
                          MODEL_PARAMS_MAX);
    zinc_llama *m = calloc(1, sizeof *m);
    if (!m) return zinc_error(ZINC_ERR_NOMEM, "llama");
    llama_dims *d = &m->d;
    d->C = (int)C, d->NH = (int)NH, d->NKV = (int)NKV, d->HS = (int)HS, d->F = (int)F, d->V = (int)V;
    d->L = (int)L, d->T = (int)zinc_config_seq_len(c);
    d->tie = c->model.tie_word_embeddings != 0;
    d->qkv_bias = c->model.attention_bias != 0;
    d->eps = (float)c->model.rms_norm_eps;
    d->recompute = c->model.recompute != 0;
    zinc_status lst = model_lora_plan(&d->lora, c, "llama", lora_modules, lora_defaults);
    if (lst != ZINC_OK) {
        zinc_llama_destroy(m);
        return lst;
    }
    d->head = (model_head){.C = d->C, .V = d->V, .Vreal = d->V, .rms = 1, .eps = d->eps};
    const int n = d->L + 2;
    const size_t half = (size_t)d->T * (d->HS / 2);
    m->layers = calloc((size_t)n, sizeof *m->layers);
    m->rope = malloc(2 * half * sizeof(float));
    if (!m->layers || !m->rope) {
        zinc_llama_destroy(m);
        return zinc_error(ZINC_ERR_NOMEM, "llama layers");
    }
    zinc_rope_scaling sc = {0};
    if (!strcmp(c->model.rope_scaling.type, "llama3"))
        sc = (zinc_rope_scaling){.factor = c->model.rope_scaling.factor,
                                 .low_freq_factor = c->model.rope_scaling.low_freq_factor,
                                 .high_freq_factor = c->model.rope_scaling.high_freq_factor,
                                 .original_max_position = (int)c->model.rope_scaling.original_max_position_embeddings};
    zinc_rope_table(m->rope, m->rope + half, d->T, d->HS, c->model.rope_theta, sc.factor > 0 ? &sc : NULL);
    m->layers[0] = (zinc_layer_def){.ops = &embed_ops, .name = "model", .state = d};
    for (int i = 0; i < d->L; i++) {
        m->layers[i + 1] = (zinc_layer_def){.ops = &block_ops, .state = d};
        snprintf(m->layers[i + 1].name, sizeof m->layers[i + 1].name, "model.layers.%d", i);
    }
    m->layers[n - 1] = (zinc_layer_def){.ops = &head_ops, .name = "", .state = d};
    m->model.layers = m->layers;
    m->model.n_layers = n;
    m->model.tp_ready = 1;
    m->model.consts = m->rope;
    m->model.consts_bytes = 2 * half * sizeof(float);
    /* 6 FLOPs per matmul weight per token plus the attention products 12 L T C */
    double Cd = C, T = d->T;
    m->model.flops_per_token = 6.0 * ((double)L * (Cd * HS * (NH + 2 * NKV) + Cd * NH * HS + 3.0 * Cd * F) +
                                      (double)V * Cd) + 12.0 * (double)L * T * Cd;
    *out = m;
    return ZINC_OK;
}

const zinc_model_def *zinc_llama_model(const zinc_llama *m) { return &m->model; }

zinc_status zinc_llama_set_vocab_real(zinc_llama *m, int64_t n)
{
    if (n < 1 || n > m->d.V)
        return zinc_error(ZINC_ERR_CONFIG, "the real vocabulary %lld does not fit model.vocab_size %d", (long long)n,
                          m->d.V);
    m->d.head.Vreal = (int)n;
    static const char *const tied[] = {"model.embed_tokens.weight", NULL};
    static const char *const untied[] = {"model.embed_tokens.weight", "lm_head.weight", NULL};
    m->model.vocab_real = n < m->d.V ? n : 0;
    m->model.vocab_tensors = m->d.tie ? tied : untied;
    return ZINC_OK;
}

void zinc_llama_destroy(zinc_llama *m)
{
    if (!m) return;
    free(m->layers);
    free(m->rope);
    free(m);
}

/* ------------------------------------------------- Hugging Face config.json */

static zinc_status hf_int(json_t *j, const char *path, const char *key, int required, int64_t *v)
{
    json_t *x = json_object_get(j, key);
    if (!x && !required) return ZINC_OK;
    if (!json_is_integer(x) || json_integer_value(x) < 1)
        return zinc_error(ZINC_ERR_CORRUPT, "model.from_pretrained: %s: %s: expected an integer >= 1", path, key);
    *v = json_integer_value(x);
    return ZINC_OK;
}

static zinc_status hf_num(json_t *j, const char *path, const char *key, double *v)
{
    json_t *x = json_object_get(j, key);
    if (!x || json_is_null(x)) return ZINC_OK;
    if (!json_is_number(x) || json_number_value(x) <= 0)
        return zinc_error(ZINC_ERR_CORRUPT, "model.from_pretrained: %s: %s: expected a number > 0", path, key);
    *v = json_number_value(x);
    return ZINC_OK;
}

zinc_status llama_hf_config(zinc_config *c, json_t *j, const char *path, const char *mt)
{
    zinc_status st = ZINC_OK;
    int64_t L = 0, C = 0, NH = 0, NKV = 0, F = 0, V = 0, P = 0;
    ZINC_TRY(hf_int(j, path, "num_hidden_layers", 1, &L));
    ZINC_TRY(hf_int(j, path, "hidden_size", 1, &C));
    ZINC_TRY(hf_int(j, path, "num_attention_heads", 1, &NH));
    NKV = NH;
    ZINC_TRY(hf_int(j, path, "num_key_value_heads", 0, &NKV));
    ZINC_TRY(hf_int(j, path, "intermediate_size", 1, &F));
    ZINC_TRY(hf_int(j, path, "vocab_size", 1, &V));
    ZINC_TRY(hf_int(j, path, "max_position_embeddings", 1, &P));
    double theta = 10000, eps = 1e-6;
    ZINC_TRY(hf_num(j, path, "rope_theta", &theta));
    ZINC_TRY(hf_num(j, path, "rms_norm_eps", &eps));
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (act && strcmp(act, "silu")) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: hidden_act \"%s\": zinc's Llama MLP is "
                        "SwiGLU (silu)", path, act);
        goto cleanup;
    }
    json_t *hd = json_object_get(j, "head_dim");
    if (json_is_integer(hd) && json_integer_value(hd) * NH != C) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: head_dim %lld: zinc needs hidden_size / "
                        "num_attention_heads = %lld", path, (long long)json_integer_value(hd),
                        (long long)(C / NH));
        goto cleanup;
    }
    if (json_is_true(json_object_get(j, "mlp_bias"))) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: mlp_bias true: zinc's Llama MLP has no "
                        "biases", path);
        goto cleanup;
    }
    json_t *drop = json_object_get(j, "attention_dropout");
    if (json_is_number(drop) && json_number_value(drop) != 0) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: attention_dropout %g: zinc has no "
                        "attention dropout", path, json_number_value(drop));
        goto cleanup;
    }
    /* Qwen2 has q/k/v biases always, Mistral none; Llama's attention_bias puts one on o_proj too */
    int bias = !strcmp(mt, "qwen2");
    if (json_is_true(json_object_get(j, "attention_bias"))) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: attention_bias true: zinc's attention "
                        "biases are Qwen2's (q/k/v only), %s's has an o_proj bias too", path, mt);
        goto cleanup;
    }
    /* a sliding window shorter than the sequence changes the attention (Mistral, Qwen2) */
    json_t *sw = json_object_get(j, "sliding_window"), *usw = json_object_get(j, "use_sliding_window");
    const int64_t T = c->data.seq_len > 0 ? c->data.seq_len : P;
    if (json_is_integer(sw) && json_integer_value(sw) < T && !json_is_false(usw)) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: sliding_window %lld is shorter than the "
                        "sequence length %lld: zinc's attention has no sliding window", path,
                        (long long)json_integer_value(sw), (long long)T);
        goto cleanup;
    }
    json_t *rs = json_object_get(j, "rope_scaling");
    char rtype[16] = "";
    double factor = 8, lo = 1, hi = 4;
    int64_t orig = 8192;
    if (rs && !json_is_null(rs)) {
        const char *t = json_string_value(json_object_get(rs, "rope_type"));
        if (!t) t = json_string_value(json_object_get(rs, "type"));
        if (t && !strcmp(t, "llama3")) {
            snprintf(rtype, sizeof rtype, "llama3");
            ZINC_TRY(hf_num(rs, path, "factor", &factor));
            ZINC_TRY(hf_num(rs, path, "low_freq_factor", &lo));
            ZINC_TRY(hf_num(rs, path, "high_freq_factor", &hi));
            ZINC_TRY(hf_int(rs, path, "original_max_position_embeddings", 0, &orig));
        } else if (!t || strcmp(t, "default")) {
            st = zinc_error(ZINC_ERR_UNSUPPORTED, "model.from_pretrained: %s: rope_scaling type %s%s%s: zinc knows "
                            "\"llama3\"", path, t ? "\"" : "", t ? t : "missing", t ? "\"" : "");
            goto cleanup;
        }
    }
    snprintf(c->model.type, sizeof c->model.type, "llama");
    c->model.n_layer = L;
    c->model.n_embd = C;
    c->model.n_head = NH;
    c->model.n_kv_head = NKV;
    c->model.intermediate_size = F;
    c->model.vocab_size = V;
    c->model.block_size = P;
    c->model.rope_theta = theta;
    c->model.rms_norm_eps = eps;
    c->model.tie_word_embeddings = json_is_true(json_object_get(j, "tie_word_embeddings"));
    c->model.attention_bias = bias;
    snprintf(c->model.rope_scaling.type, sizeof c->model.rope_scaling.type, "%s", rtype);
    c->model.rope_scaling.factor = factor;
    c->model.rope_scaling.low_freq_factor = lo;
    c->model.rope_scaling.high_freq_factor = hi;
    c->model.rope_scaling.original_max_position_embeddings = orig;
cleanup:
    return st;
}
