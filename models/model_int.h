/* model_int.h - what the models in models/ share: the bump carving of a layer's
 * activations and scratch, the declaration macro, and the sum over the TP group of the
 * norm gradients that sequence parallelism leaves partial. Private to models/. */
#ifndef ZINC_MODEL_INT_H
#define ZINC_MODEL_INT_H

#include <stddef.h>

#include <jansson.h>

#include "zinc/engine.h"
#include "zinc/tp.h"

/* 2^40 parameters: byte counts of every state (<= 16 bytes per parameter) fit int64 */
#define MODEL_PARAMS_MAX 1099511627776.0

/* A parameter of the given logical shape; tp_dim/blocks: its partition spec
 * (-1 replicated over the TP group; zinc/engine.h) */
#define ADD(l, name, nd, tp_dim, blocks, init, std, ...)                                      \
    (zinc_layer_param_add_split((l), (name), (nd), (const int64_t[]){__VA_ARGS__}, (tp_dim),     \
                                (blocks), (init), (std)))

/* Bump allocation of a layer's saved activations and scratch: act tensors
 * in the table's act dtype, statistics in fp32, each piece 64-byte aligned.
 * With base NULL it only counts. */
typedef struct carver {
    char *base;
    size_t off, asz; /* bytes so far; bytes per act element */
} carver;

static inline void *carve(carver *k, size_t n, size_t esz)
{
    void *p = k->base ? k->base + k->off : NULL;
    k->off += (n * esz + 63) / 64 * 64;
    return p;
}
#define CARVE_ACT(k, n) carve((k), (n), (k)->asz)
#define CARVE_F32(k, n) ((float *)carve((k), (n), sizeof(float)))

static inline size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Adds a sequence-parallel layer's norm gradients, partial on each rank (each saw its own
 * token rows), summed over the TP group, to the parameters' gradients: n arrays of C
 * floats in part, array i to parameter idx[i]. */
static inline zinc_status model_norm_grads_reduce(zinc_layer *l, zinc_ctx *c, float *part, const int *idx, int n,
                                                  int C)
{
    zinc_status st = zinc_tp_all_reduce_f32(c->tp, part, (size_t)n * C);
    for (int i = 0; st == ZINC_OK && i < n; i++)
        if (zinc_layer_grad(l, idx[i])) /* NULL: frozen */
            c->ops->add_into(zinc_layer_grad(l, idx[i]), ZINC_DTYPE_F32, part + (size_t)i * C, ZINC_DTYPE_F32,
                             (size_t)C);
    return st;
}

/* The language-model head (lm_head.c): a final norm, logits over this TP rank's
 * vocabulary rows (W (V/TP, C), the layer's parameter after the norm's), the padded rows
 * [Vreal, V) kept out of the softmax, the vocab-parallel cross-entropy. The layer's
 * parameters: the norm weight (0), its bias (1, LayerNorm only), W. */
typedef struct model_head {
    int C, V, Vreal;
    int rms;   /* 1: RMSNorm (eps), 0: LayerNorm with bias (eps 1e-5) */
    float eps;
} model_head;
size_t model_head_act_bytes(const model_head *h, const zinc_tp *tp, int B, int T, zinc_dtype act);
size_t model_head_scratch_bytes(const model_head *h, const zinc_tp *tp, int B, int T, zinc_dtype act);
zinc_status model_head_forward(const model_head *h, zinc_layer *l, zinc_ctx *c, const void *x);
zinc_status model_head_backward(const model_head *h, zinc_layer *l, zinc_ctx *c, const void *x, void *dx);

/* A Hugging Face config.json (j, read from path) into c->model: type and shape
 * (vocab_size the folder's, padded by the caller), or one line naming a setting zinc
 * cannot honour. */
zinc_status gpt2_hf_config(zinc_config *c, json_t *j, const char *path);
/* model_type llama, mistral, qwen2 (mt). */
zinc_status llama_hf_config(zinc_config *c, json_t *j, const char *path, const char *mt);

/* ------------------------------------------------------------------ LoRA (lora.c) */

#define MODEL_LORA_SITES 8 /* adaptable linears per layer */

/* model.lora as a plan, made once at model creation: which of the model's linears
 * (its list of module names within a layer) carry adapters, their rank and scale. */
typedef struct model_lora {
    int on;        /* model.lora is given */
    int r;
    float scale;   /* alpha / r, or alpha / sqrt(r) with use_rslora */
    float dropout; /* on the adapter's input, training only */
    int gaussian;  /* init "gaussian": A N(0, 1/r^2); else Kaiming-uniform, bound 1/sqrt(in) */
    unsigned mask; /* bit i: module i is adapted */
} model_lora;

/* 1 if the plan adapts the layer's linear number site. */
static inline int model_lora_adapts(const model_lora *m, int site) { return m->on && (m->mask >> site & 1u); }

/* One linear's adapter in a layer: lora_A (r, in) and lora_B (out, r), their indices among
 * the layer's parameters (a < 0: the linear has none). */
enum { LORA_COLUMN, LORA_ROW }; /* the adapted linear's TP split (zinc/tp.h) */
typedef struct lora_site {
    int a, b;
    int in, out; /* the logical widths */
    int kind;    /* LORA_COLUMN or LORA_ROW */
} lora_site;

/* Reads model.lora for a model of type `model` whose layers have the linears `modules`
 * (names within a layer, "attn.c_attn"; NULL-terminated, at most MODEL_LORA_SITES);
 * `defaults` are PEFT's targets for the model type (target_modules not given). A target
 * matches a module whose name is it or ends in "." + it (PEFT's rule); a target that
 * matches none is one line naming it and the modules. */
zinc_status model_lora_plan(model_lora *m, const zinc_config *c, const char *model, const char *const *modules,
                            const char *const *defaults);
/* Declares module i's adapter (in -> out; a linear split `kind` under TP, a column-parallel
 * one's output of `blocks` sub-blocks) when the plan adapts it, else marks it off. */
zinc_status model_lora_declare(const model_lora *m, zinc_layer *l, int i, const char *module, int in, int out,
                               int kind, int blocks, lora_site *s);

/* A layer's LoRA scratch: dt (N, r) fp32; with dropout the dropped input and its
 * gradient (N, in_max) act each. */
typedef struct lora_scratch {
    float *dt;
    void *xd, *dxd;
} lora_scratch;
void model_lora_carve(const model_lora *m, carver *k, lora_scratch *s, size_t N, size_t in_max);

/* y (rows ldy apart) += the adapter's path of x (N rows of this TP rank's input width):
 * t (N, r) fp32 saved for backward; site numbers the adapter in its layer (its dropout
 * stream). A row-parallel linear's y holds this rank's rows (N/P with sequence
 * parallelism), a column-parallel one's all N of this rank's columns. */
zinc_status model_lora_forward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site,
                               void *y, int ldy, const void *x, float *t, const lora_scratch *sc);
/* The adapter's gradients from dy (N rows, ldy apart: a row-parallel linear's dy is the
 * whole gathered one), and dx += its input gradient unless dx is NULL (a column-parallel
 * linear's dx: this rank's rows of the reduced gradient; a row-parallel one's: N rows of
 * this rank's columns). */
zinc_status model_lora_backward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site,
                                void *dx, const void *dy, int ldy, const void *x, const float *t,
                                const lora_scratch *sc);

#endif
