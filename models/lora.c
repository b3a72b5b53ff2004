/* lora.c - LoRA adapters beside a model's linears (Hu et al.; PEFT's LoraConfig):
 * y = base(x) + s * B A dropout(x), s = alpha / r (alpha / sqrt(r) with rsLoRA), A (r, in)
 * and B (out, r) stored as PEFT stores them, named "<module>.lora_A.weight" and
 * "<module>.lora_B.weight", so a PEFT adapter folder maps one to one. The models call
 * this beside their own products, so a fused product (Llama's q | k | v rows) gives each
 * of its parts its own adapter through the strided ops. With model.lora the engine
 * freezes every other parameter (zinc_lora_param_name). Init as PEFT's "default": A
 * Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B zeros, so training starts
 * from the base model exactly; "gaussian": A N(0, 1/r^2). Under tensor parallelism an
 * adapter splits with its linear: a column-parallel linear's B by output rows (A
 * replicated; the rank-r input gradient dt is summed over the group, N r floats), a
 * row-parallel one's A by input columns (B replicated; the rank-r t is summed over the
 * group before B). Its other products need no communication. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_int.h"
#include "zinc/rng.h"

static int target_matches(const char *target, const char *module)
{
    size_t lt = strlen(target), lm = strlen(module);
    if (!strcmp(target, module)) return 1;
    return lm > lt && module[lm - lt - 1] == '.' && !strcmp(module + lm - lt, target);
}

zinc_status model_lora_plan(model_lora *m, const zinc_config *c, const char *model, const char *const *modules,
                            const char *const *defaults)
{
    memset(m, 0, sizeof *m);
    if (!c->model.lora.enabled) return ZINC_OK;
    m->on = 1;
    m->r = (int)c->model.lora.r;
    m->scale = (float)(c->model.lora.alpha / (c->model.lora.use_rslora ? sqrt((double)m->r) : (double)m->r));
    m->dropout = (float)c->model.lora.dropout;
    m->gaussian = !strcmp(c->model.lora.init, "gaussian");
    char names[512] = "";
    for (int i = 0; modules[i]; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", modules[i]);
    int n = c->model.lora.n_target_modules;
    for (int t = 0; t < (n ? n : ZINC_MAX_PATHS); t++) {
        const char *target = n ? c->model.lora.target_modules[t] : defaults[t];
        if (!target) break;
        unsigned hit = 0;
        for (int i = 0; modules[i] && i < MODEL_LORA_SITES; i++)
            if (target_matches(target, modules[i])) hit |= 1u << i;
        if (!hit)
            return zinc_error(ZINC_ERR_CONFIG, "model.lora.target_modules: \"%s\" is no linear of a %s layer (its "
                              "modules: %s)", target, model, names);
        m->mask |= hit;
    }
    return ZINC_OK;
}

zinc_status model_lora_declare(const model_lora *m, zinc_layer *l, int i, const char *module, int in, int out,
                               int kind, int blocks, lora_site *s)
{
    *s = (lora_site){.a = -1, .b = -1, .in = in, .out = out, .kind = kind};
    if (!m->on || !(m->mask & 1u << i)) return ZINC_OK;
    char na[96], nb[96];
    snprintf(na, sizeof na, "%s.lora_A.weight", module);
    snprintf(nb, sizeof nb, "%s.lora_B.weight", module);
    const int64_t sa[2] = {m->r, in}, sb[2] = {out, m->r};
    /* under TP: a column-parallel linear's B split as its output rows (A replicated), a
     * row-parallel one's A as its input columns (B replicated) */
    const int col = kind == LORA_COLUMN;
    s->a = zinc_layer_param_add_split(l, na, 2, sa, col ? -1 : 1, 1, m->gaussian ? ZINC_INIT_NORMAL : ZINC_INIT_UNIFORM,
                                      m->gaussian ? 1.0f / (float)m->r : 1.0f / sqrtf((float)in));
    s->b = zinc_layer_param_add_split(l, nb, 2, sb, col ? 0 : -1, col ? blocks : 1, ZINC_INIT_ZEROS, 0);
    return s->a >= 0 && s->b >= 0 ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}

void model_lora_carve(const model_lora *m, carver *k, lora_scratch *s, size_t N, size_t in_max)
{
    memset(s, 0, sizeof *s);
    if (!m->on || !m->mask) return;
    s->dt = CARVE_F32(k, N * (size_t)m->r);
    if (m->dropout > 0) {
        s->xd = CARVE_ACT(k, N * in_max);
        s->dxd = CARVE_ACT(k, N * in_max);
    }
}

/* The dropout stream of adapter `site` of layer l in this micro-batch. */
static uint64_t site_seed(const zinc_layer *l, const zinc_ctx *c, int site)
{
    zinc_rng r;
    zinc_rng_seed(&r, c->seed, (uint64_t)zinc_layer_index(l) * MODEL_LORA_SITES + (uint64_t)site);
    return zinc_rng_u64(&r);
}

/* This TP rank's widths of the adapter's input and output. */
static int in_local(const lora_site *s, const zinc_tp *tp) { return s->kind == LORA_ROW ? s->in / tp->size : s->in; }
static int out_local(const lora_site *s, const zinc_tp *tp)
{
    return s->kind == LORA_COLUMN ? s->out / tp->size : s->out;
}

/* The rows of this rank's part of the residual stream (sequence parallelism: N/P from
 * row0), where a row-parallel output and a column-parallel input gradient live. */
static int rows_of(const zinc_tp *tp, int N, int *row0)
{
    const int R = zinc_tp_rows(tp, N);
    *row0 = R < N ? tp->rank * R : 0;
    return R;
}

/* The adapter's input: x, or its dropout (made again, the same, in the backward). */
static const void *lora_input(const model_lora *m, const lora_site *s, zinc_layer *l, const zinc_ctx *c, int site,
                              const void *x, const lora_scratch *sc)
{
    if (!(m->dropout > 0) || !c->train) return x;
    c->ops->dropout_forward(sc->xd, x, (size_t)c->B * c->T * in_local(s, c->tp), m->dropout, site_seed(l, c, site));
    return sc->xd;
}

zinc_status model_lora_forward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site,
                               void *y, int ldy, const void *x, float *t, const lora_scratch *sc)
{
    if (s->a < 0) return ZINC_OK;
    const zinc_ops *o = c->ops;
    const int N = c->B * c->T, in = in_local(s, c->tp), out = out_local(s, c->tp);
    const float *A = zinc_layer_param(l, s->a), *B = zinc_layer_param(l, s->b);
    o->lora_down(t, lora_input(m, s, l, c, site, x, sc), in, A, N, in, m->r);
    if (s->kind == LORA_ROW && c->tp->size > 1) { /* t from this rank's input columns: the sum over the group */
        zinc_status st = zinc_tp_all_reduce_f32(c->tp, t, (size_t)N * m->r);
        if (st != ZINC_OK) return st;
        int row0;
        const int R = rows_of(c->tp, N, &row0);
        o->lora_up(y, ldy, t + (size_t)row0 * m->r, B, m->scale, R, out, m->r);
        return ZINC_OK;
    }
    o->lora_up(y, ldy, t, B, m->scale, N, out, m->r);
    return ZINC_OK;
}

zinc_status model_lora_backward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site,
                                void *dx, const void *dy, int ldy, const void *x, const float *t,
                                const lora_scratch *sc)
{
    if (s->a < 0) return ZINC_OK;
    const zinc_ops *o = c->ops;
    const int N = c->B * c->T, in = in_local(s, c->tp), out = out_local(s, c->tp);
    float *A = zinc_layer_param(l, s->a), *B = zinc_layer_param(l, s->b);
    float *dA = zinc_layer_grad(l, s->a), *dB = zinc_layer_grad(l, s->b);
    o->lora_grad_up(dB, sc->dt, dy, ldy, t, B, m->scale, N, out, m->r);
    if (s->kind == LORA_COLUMN && c->tp->size > 1) { /* dt from this rank's output columns: summed */
        zinc_status st = zinc_tp_all_reduce_f32(c->tp, sc->dt, (size_t)N * m->r);
        if (st != ZINC_OK) return st;
    }
    const void *xi = lora_input(m, s, l, c, site, x, sc);
    if (xi != x) { /* dropout: the input gradient through its mask (all rows: no sequence parallelism) */
        o->lora_grad_down(NULL, dA, sc->dt, xi, in, A, N, in, m->r);
        if (dx) {
            o->zero(sc->dxd, (size_t)N * in * zinc_dtype_size(o->act));
            o->lora_grad_down(sc->dxd, NULL, sc->dt, NULL, in, A, N, in, m->r);
            o->dropout_backward(dx, sc->dxd, (size_t)N * in, m->dropout, site_seed(l, c, site));
        }
        return ZINC_OK;
    }
    int row0 = 0;
    const int R = s->kind == LORA_COLUMN ? rows_of(c->tp, N, &row0) : N; /* dx: this rank's rows */
    if (R == N) {
        o->lora_grad_down(dx, dA, sc->dt, x, in, A, N, in, m->r);
        return ZINC_OK;
    }
    o->lora_grad_down(NULL, dA, sc->dt, x, in, A, N, in, m->r);
    if (dx) o->lora_grad_down(dx, NULL, sc->dt + (size_t)row0 * m->r, NULL, in, A, R, in, m->r);
    return ZINC_OK;
}
