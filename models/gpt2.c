/* gpt2.c - GPT-2 as engine layers.
 *
 *   layer 0        embed:  tokens (B,T) -> wte[tok] + wpe[t]           (B,T,C)
 *   layer 1..L     h.i:    x + attn(ln_1(x)) = r;  r + mlp(ln_2(r))      (B,T,C)
 *   layer L+1      head:   ln_f, logits = x @ wte^T (tied), fused softmax
 *                          cross-entropy; logits become dlogits in place.
 * Parameter names and layouts are Hugging Face GPT-2's (Conv1D weights
 * stored (in, out)), so checkpoints map one to one. Init as GPT-2: N(0, 0.02),
 * residual projections N(0, 0.02/sqrt(2L)), LayerNorm 1/0, biases 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/gpt2.h"

/* 2^40 parameters: byte counts of every state (<= 16 bytes per parameter) fit int64 */
#define GPT2_PARAMS_MAX 1099511627776.0

typedef struct gpt2_dims {
    int C, NH, V, maxT, L;
    int recompute; /* model.recompute: backward recomputes ln1, ln2, c_fc and its GELU */
} gpt2_dims;

struct zinc_gpt2 {
    gpt2_dims d;
    zinc_layer_def *layers;
    zinc_model_def model;
};

#define ADD(l, name, nd, init, std, ...)                                                     \
    (zinc_layer_param_add((l), (name), (nd), (const int64_t[]){__VA_ARGS__}, -1, (init), (std)))

/* ------------------------------------------------------------------ embed */

enum { E_WTE, E_WPE };

static zinc_status embed_declare(zinc_layer *l)
{
    const gpt2_dims *d = zinc_layer_state(l);
    if (ADD(l, "wte.weight", 2, ZINC_INIT_NORMAL, 0.02f, d->V, d->C) != E_WTE ||
        ADD(l, "wpe.weight", 2, ZINC_INIT_NORMAL, 0.01f, d->maxT, d->C) != E_WPE)
        return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, d->C);
    return ZINC_OK;
}

static zinc_status embed_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const gpt2_dims *d = zinc_layer_state(l);
    c->ops->embedding_forward(y, x, zinc_layer_param(l, E_WTE), zinc_layer_param(l, E_WPE),
                              c->B, c->T, d->C, 0, d->V);
    return ZINC_OK;
}

static zinc_status embed_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy,
                                  void *dx)
{
    (void)dx;
    const gpt2_dims *d = zinc_layer_state(l);
    c->ops->embedding_backward(zinc_layer_grad(l, E_WTE), zinc_layer_grad(l, E_WPE), dy, x, c->B,
                               c->T, d->C, 0, d->V);
    return ZINC_OK;
}

static const zinc_layer_ops embed_ops = {
    .type = "gpt2.embed",
    .declare = embed_declare,
    .forward = embed_forward,
    .backward = embed_backward,
};

/* ------------------------------------------------------------------ block */

enum { B_LN1W, B_LN1B, B_QKVW, B_QKVB, B_PRJW, B_PRJB, B_LN2W, B_LN2B, B_FCW, B_FCB, B_FPW, B_FPB };

/* Bump allocation of a layer's saved activations and scratch: act tensors
 * in the table's act dtype, statistics in fp32, each piece 64-byte aligned.
 * With base NULL it only counts. */
typedef struct carver {
    char *base;
    size_t off, asz; /* bytes so far; bytes per act element */
} carver;

static void *carve(carver *k, size_t n, size_t esz)
{
    void *p = k->base ? k->base + k->off : NULL;
    k->off += (n * esz + 63) / 64 * 64;
    return p;
}
#define CARVE_ACT(k, n) carve((k), (n), (k)->asz)
#define CARVE_F32(k, n) ((float *)carve((k), (n), sizeof(float)))

/* Element i of an act tensor. */
static void *act_at(void *p, size_t i, size_t asz) { return (char *)p + i * asz; }

/* Saved activations of a block, per token unless noted. With
 * model.recompute the LayerNorm outputs and the MLP's inner activations
 * are not kept: backward recomputes them from what is (two LayerNorms, the
 * c_fc product and its GELU per layer, about 5% of a step), which keeps
 * 10C of 15C values per token out of activation memory (GPT-2 124M, B=16,
 * T=1024, bf16: 3 GB); those pointers are NULL then. */
typedef struct block_acts {
    float *ln1_mean, *ln1_rstd;       /* (BT) (BT) */
    void *ln1;                        /* (BT,C) act, NULL with recompute */
    void *qkv;                        /* (BT,3C) act */
    void *atty;                       /* (BT,C) act */
    float *lse;                       /* (B,NH,T) attention log-sum-exp */
    void *res2;                       /* (BT,C) act: x + attention branch */
    float *ln2_mean, *ln2_rstd;       /* (BT) (BT) */
    void *ln2;                        /* (BT,C) act, NULL with recompute */
    void *fch, *fch_gelu;             /* (BT,4C) act each: c_fc's output and its GELU, NULL with recompute */
} block_acts;

static size_t block_carve(block_acts *a, void *base, const gpt2_dims *d, int B, int T,
                          zinc_dtype act)
{
    size_t BT = (size_t)B * T, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_acts t;
    memset(&t, 0, sizeof t);
    t.ln1_mean = CARVE_F32(&k, BT);
    t.ln1_rstd = CARVE_F32(&k, BT);
    t.qkv = CARVE_ACT(&k, BT * 3 * C);
    t.atty = CARVE_ACT(&k, BT * C);
    t.lse = CARVE_F32(&k, (size_t)B * d->NH * T);
    t.res2 = CARVE_ACT(&k, BT * C);
    t.ln2_mean = CARVE_F32(&k, BT);
    t.ln2_rstd = CARVE_F32(&k, BT);
    if (!d->recompute) {
        t.ln1 = CARVE_ACT(&k, BT * C);
        t.ln2 = CARVE_ACT(&k, BT * C);
        t.fch = CARVE_ACT(&k, BT * 4 * C);
        t.fch_gelu = CARVE_ACT(&k, BT * 4 * C);
    }
    if (a) *a = t;
    return k.off;
}

static zinc_status block_declare(zinc_layer *l)
{
    const gpt2_dims *d = zinc_layer_state(l);
    int64_t C = d->C;
    float std = 0.02f, pstd = 0.02f / sqrtf(2.0f * (float)d->L);
    int ok = ADD(l, "ln_1.weight", 1, ZINC_INIT_ONES, 0, C) == B_LN1W &&
             ADD(l, "ln_1.bias", 1, ZINC_INIT_ZEROS, 0, C) == B_LN1B &&
             ADD(l, "attn.c_attn.weight", 2, ZINC_INIT_NORMAL, std, C, 3 * C) == B_QKVW &&
             ADD(l, "attn.c_attn.bias", 1, ZINC_INIT_ZEROS, 0, 3 * C) == B_QKVB &&
             ADD(l, "attn.c_proj.weight", 2, ZINC_INIT_NORMAL, pstd, C, C) == B_PRJW &&
             ADD(l, "attn.c_proj.bias", 1, ZINC_INIT_ZEROS, 0, C) == B_PRJB &&
             ADD(l, "ln_2.weight", 1, ZINC_INIT_ONES, 0, C) == B_LN2W &&
             ADD(l, "ln_2.bias", 1, ZINC_INIT_ZEROS, 0, C) == B_LN2B &&
             ADD(l, "mlp.c_fc.weight", 2, ZINC_INIT_NORMAL, std, C, 4 * C) == B_FCW &&
             ADD(l, "mlp.c_fc.bias", 1, ZINC_INIT_ZEROS, 0, 4 * C) == B_FCB &&
             ADD(l, "mlp.c_proj.weight", 2, ZINC_INIT_NORMAL, pstd, 4 * C, C) == B_FPW &&
             ADD(l, "mlp.c_proj.bias", 1, ZINC_INIT_ZEROS, 0, C) == B_FPB;
    return ok ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}

static size_t block_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    return block_carve(NULL, NULL, zinc_layer_state(l), B, T, act);
}

/* The block's scratch, act per token. Forward with recompute: ln (C),
 * then GELU(fch) (4C). Backward: a, b (4C each: with recompute GELU(fch)
 * and fch, then the recomputed ln1 in a), dfch (4C, then dqkv), dsmall
 * (2C: the recomputed ln2 | dln2, then datty, then dln1); then the
 * attention scratch, B NH T fp32 on every device (zinc/ops.h). The
 * residual gradient is accumulated in dx itself (zeroed by the engine). */
typedef struct block_scratch {
    void *a, *b, *dfch, *dsmall;
    float *att;
} block_scratch;

static size_t block_scratch_carve(block_scratch *s, void *base, const gpt2_dims *d, int B,
                                  int T, zinc_dtype act)
{
    size_t BT = (size_t)B * T, C = (size_t)d->C;
    carver k = {base, 0, zinc_dtype_size(act)};
    block_scratch t;
    memset(&t, 0, sizeof t);
    if (d->recompute) {
        t.a = CARVE_ACT(&k, BT * 4 * C);
        t.b = CARVE_ACT(&k, BT * 4 * C);
    }
    t.dfch = CARVE_ACT(&k, BT * 4 * C);
    t.dsmall = CARVE_ACT(&k, BT * 2 * C);
    t.att = CARVE_F32(&k, (size_t)B * d->NH * T);
    if (s) *s = t;
    return k.off;
}

static size_t block_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    return block_scratch_carve(NULL, NULL, zinc_layer_state(l), B, T, act);
}

static zinc_status block_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const size_t asz = zinc_dtype_size(o->act);
    int BT = c->B * c->T, C = d->C;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, c->B, c->T, o->act);
    float *p[12];
    for (int i = 0; i < 12; i++) p[i] = zinc_layer_param(l, i);

    /* with recompute, ln1 / ln2 and GELU(fch) live in the scratch */
    void *ln1 = a.ln1, *ln2 = a.ln2, *fch_gelu = a.fch_gelu;
    if (d->recompute) {
        ln1 = ln2 = c->scratch;
        fch_gelu = act_at(c->scratch, (size_t)BT * C, asz);
    }
    o->layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, x, p[B_LN1W], p[B_LN1B], BT, C);
    o->linear_forward(a.qkv, ln1, p[B_QKVW], p[B_QKVB], BT, C, 3 * C);
    o->attention_forward(a.atty, a.lse, a.qkv, c->B, c->T, C, d->NH);
    o->linear_forward(a.res2, a.atty, p[B_PRJW], p[B_PRJB], BT, C, C);
    o->residual_forward(a.res2, a.res2, x, (size_t)BT * C);
    o->layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.res2, p[B_LN2W], p[B_LN2B], BT, C);
    o->linear_gelu_forward(fch_gelu, a.fch, ln2, p[B_FCW], p[B_FCB], BT, C, 4 * C);
    o->linear_forward(y, fch_gelu, p[B_FPW], p[B_FPB], BT, 4 * C, C);
    o->residual_forward(y, y, a.res2, (size_t)BT * C);
    return ZINC_OK;
}

static zinc_status block_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy,
                                  void *dx)
{
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    const size_t asz = zinc_dtype_size(o->act);
    int BT = c->B * c->T, C = d->C;
    size_t n = (size_t)BT * C;
    block_acts a;
    block_carve(&a, zinc_layer_acts(l), d, c->B, c->T, o->act);
    block_scratch s;
    block_scratch_carve(&s, c->scratch, d, c->B, c->T, o->act);
    float *p[12], *g[12];
    for (int i = 0; i < 12; i++) {
        p[i] = zinc_layer_param(l, i);
        g[i] = zinc_layer_grad(l, i);
    }

    /* MLP branch: y = res2 + fc_proj(gelu(fc(ln2(res2)))); dx accumulates
     * the residual stream's gradient: dy now, + the MLP's through ln2 below
     * (that sum is dres2), + the attention branch's through ln1 last */
    o->residual_forward(dx, dx, dy, n);
    void *ln2 = a.ln2, *fch = a.fch, *fch_gelu = a.fch_gelu;
    if (d->recompute) { /* ln2 in dsmall until c_fc's backward, fch and GELU(fch) */
        ln2 = s.dsmall;
        fch_gelu = s.a;
        fch = s.b;
        o->layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.res2, p[B_LN2W], p[B_LN2B], BT, C);
        o->linear_gelu_forward(fch_gelu, fch, ln2, p[B_FCW], p[B_FCB], BT, C, 4 * C);
    }
    /* GELU's backward fused into c_proj's */
    o->linear_gelu_backward(s.dfch, g[B_FPW], g[B_FPB], dy, fch_gelu, fch, p[B_FPW], BT, 4 * C,
                            C);
    void *dln2 = act_at(s.dsmall, n, asz);
    o->zero(dln2, n * asz);
    o->linear_backward(dln2, g[B_FCW], g[B_FCB], s.dfch, ln2, p[B_FCW], BT, C, 4 * C);
    o->layernorm_backward(dx, g[B_LN2W], g[B_LN2B], dln2, a.res2, p[B_LN2W], a.ln2_mean,
                          a.ln2_rstd, BT, C);
    /* attention branch: res2 = x + proj(attn(qkv(ln1(x)))); dx holds dres2 */
    void *datty = s.dsmall;
    o->zero(datty, n * asz);
    o->linear_backward(datty, g[B_PRJW], g[B_PRJB], dx, a.atty, p[B_PRJW], BT, C, C);
    void *dqkv = s.dfch; /* dfch is dead */
    o->zero(dqkv, (size_t)BT * 3 * C * asz);
    o->attention_backward(dqkv, s.att, datty, a.qkv, a.atty, a.lse, c->B, c->T, C, d->NH);
    void *dln1 = s.dsmall, *ln1 = a.ln1;
    if (d->recompute) { /* ln1 is recomputed in a: GELU(fch) is dead */
        ln1 = s.a;
        o->layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, x, p[B_LN1W], p[B_LN1B], BT, C);
    }
    o->zero(dln1, n * asz);
    o->linear_backward(dln1, g[B_QKVW], g[B_QKVB], dqkv, ln1, p[B_QKVW], BT, C, 3 * C);
    o->layernorm_backward(dx, g[B_LN1W], g[B_LN1B], dln1, x, p[B_LN1W], a.ln1_mean, a.ln1_rstd,
                          BT, C);
    return ZINC_OK;
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
    int ok = ADD(l, "ln_f.weight", 1, ZINC_INIT_ONES, 0, d->C) == H_LNFW &&
             ADD(l, "ln_f.bias", 1, ZINC_INIT_ZEROS, 0, d->C) == H_LNFB &&
             zinc_layer_param_tie(l, "wte.weight") == H_WTE;
    zinc_layer_set_out(l, 0);
    return ok ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}

/* Saved: lnf (BT,C) act, mean (BT), rstd (BT), logits/dlogits (BT,V) act,
 * losses (BT). */
typedef struct head_acts {
    void *lnf, *logits;
    float *mean, *rstd, *losses;
} head_acts;

static size_t head_carve(head_acts *a, void *base, const gpt2_dims *d, int B, int T,
                         zinc_dtype act)
{
    size_t BT = (size_t)B * T;
    carver k = {base, 0, zinc_dtype_size(act)};
    head_acts t;
    t.lnf = CARVE_ACT(&k, BT * d->C);
    t.mean = CARVE_F32(&k, BT);
    t.rstd = CARVE_F32(&k, BT);
    t.logits = CARVE_ACT(&k, BT * d->V);
    t.losses = CARVE_F32(&k, BT);
    if (a) *a = t;
    return k.off;
}

static size_t head_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    return head_carve(NULL, NULL, zinc_layer_state(l), B, T, act);
}

static size_t head_scratch_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const gpt2_dims *d = zinc_layer_state(l);
    return (size_t)B * T * d->C * zinc_dtype_size(act); /* dlnf */
}

static zinc_status head_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    (void)y;
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    int BT = c->B * c->T, C = d->C, V = d->V;
    head_acts a;
    head_carve(&a, zinc_layer_acts(l), d, c->B, c->T, o->act);
    o->layernorm_forward(a.lnf, a.mean, a.rstd, x, zinc_layer_param(l, H_LNFW),
                         zinc_layer_param(l, H_LNFB), BT, C);
    o->head_forward(a.logits, a.lnf, zinc_layer_param(l, H_WTE), BT, C, V);
    o->softmax_xent(a.losses, a.logits, c->targets, c->dloss, BT, V);
    c->loss_sum += o->sum(a.losses, (size_t)BT); /* device memory: summed there */
    return ZINC_OK;
}

static zinc_status head_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy,
                                 void *dx)
{
    (void)dy;
    const gpt2_dims *d = zinc_layer_state(l);
    const zinc_ops *o = c->ops;
    int BT = c->B * c->T, C = d->C, V = d->V;
    head_acts a;
    head_carve(&a, zinc_layer_acts(l), d, c->B, c->T, o->act);
    void *dlnf = c->scratch;
    /* dlnf(BT,C) = dlogits(BT,V) @ wte(V,C); dwte(V,C) += dlogits^T @ lnf */
    o->zero(dlnf, (size_t)BT * C * zinc_dtype_size(o->act));
    o->head_backward(dlnf, zinc_layer_grad(l, H_WTE), a.logits, a.lnf,
                     zinc_layer_param(l, H_WTE), BT, C, V);
    o->layernorm_backward(dx, zinc_layer_grad(l, H_LNFW), zinc_layer_grad(l, H_LNFB), dlnf, x,
                          zinc_layer_param(l, H_LNFW), a.mean, a.rstd, BT, C);
    return ZINC_OK;
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
    if (pc > GPT2_PARAMS_MAX)
        return zinc_error(ZINC_ERR_CONFIG,
                          "model: n_layer %lld, n_embd %lld, vocab_size %lld, block_size %lld make "
                          "%.4g parameters; zinc handles at most %.4g (2^40)",
                          (long long)c->model.n_layer, (long long)c->model.n_embd,
                          (long long)c->model.vocab_size, (long long)c->model.block_size, pc,
                          GPT2_PARAMS_MAX);
    if (c->model.n_embd / c->model.n_head > 128) /* zinc/ops.h attention: HS <= 128 */
        return zinc_error(ZINC_ERR_CONFIG,
                          "model.n_embd / model.n_head = %lld: attention head size above 128",
                          (long long)(c->model.n_embd / c->model.n_head));
    zinc_gpt2 *g = calloc(1, sizeof *g);
    if (!g) return zinc_error(ZINC_ERR_NOMEM, "gpt2");
    g->d.C = (int)c->model.n_embd;
    g->d.NH = (int)c->model.n_head;
    g->d.V = (int)c->model.vocab_size;
    g->d.maxT = (int)c->model.block_size;
    g->d.L = (int)c->model.n_layer;
    g->d.recompute = c->model.recompute != 0;
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
    /* 6 FLOPs per matmul weight per token (forward + backward) plus the
     * attention products, 12 L T C (PaLM's formula, the usual MFU basis) */
    double C = g->d.C, V = g->d.V, L = g->d.L;
    double T = (double)zinc_config_seq_len(c);
    g->model.flops_per_token = 6.0 * (L * 12.0 * C * C + V * C) + 12.0 * L * T * C;
    *out = g;
    return ZINC_OK;
}

const zinc_model_def *zinc_gpt2_model(const zinc_gpt2 *g) { return &g->model; }

void zinc_gpt2_destroy(zinc_gpt2 *g)
{
    if (!g) return;
    free(g->layers);
    free(g);
}
