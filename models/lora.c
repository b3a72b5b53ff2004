/* lora.c - LoRA adapters beside a model's linears (Hu et al.; PEFT's LoraConfig):
 * y = base(x) + s * B A dropout(x), s = alpha / r (alpha / sqrt(r) with rsLoRA), A (r, in)
 * and B (out, r) stored as PEFT stores them, named "<module>.lora_A.weight" and
 * "<module>.lora_B.weight", so a PEFT adapter folder maps one to one. The models call
 * this beside their own products, so a fused product (Llama's q | k | v rows) gives each
 * of its parts its own adapter through the strided ops. With model.lora the engine
 * freezes every other parameter (zinc_lora_param_name). Init as PEFT's "default": A
 * Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B zeros, so training starts
 * from the base model exactly; "gaussian": A N(0, 1/r^2). Tensor parallelism is refused
 * at config time (adapters of split linears are not done yet). */
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
                               lora_site *s)
{
    *s = (lora_site){.a = -1, .b = -1, .in = in, .out = out};
    if (!m->on || !(m->mask & 1u << i)) return ZINC_OK;
    char na[96], nb[96];
    snprintf(na, sizeof na, "%s.lora_A.weight", module);
    snprintf(nb, sizeof nb, "%s.lora_B.weight", module);
    const int64_t sa[2] = {m->r, in}, sb[2] = {out, m->r};
    s->a = zinc_layer_param_add(l, na, 2, sa, -1, m->gaussian ? ZINC_INIT_NORMAL : ZINC_INIT_UNIFORM,
                                m->gaussian ? 1.0f / (float)m->r : 1.0f / sqrtf((float)in));
    s->b = zinc_layer_param_add(l, nb, 2, sb, -1, ZINC_INIT_ZEROS, 0);
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

/* The adapter's input: x, or its dropout (made again, the same, in the backward). */
static const void *lora_input(const model_lora *m, const lora_site *s, zinc_layer *l, const zinc_ctx *c, int site,
                              const void *x, const lora_scratch *sc)
{
    if (!(m->dropout > 0) || !c->train) return x;
    c->ops->dropout_forward(sc->xd, x, (size_t)c->B * c->T * s->in, m->dropout, site_seed(l, c, site));
    return sc->xd;
}

void model_lora_forward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site, void *y,
                        int ldy, const void *x, float *t, const lora_scratch *sc)
{
    if (s->a < 0) return;
    const void *xi = lora_input(m, s, l, c, site, x, sc);
    c->ops->lora_forward(y, ldy, t, xi, s->in, zinc_layer_param(l, s->a), zinc_layer_param(l, s->b), m->scale,
                         c->B * c->T, s->in, s->out, m->r);
}

void model_lora_backward(const model_lora *m, const lora_site *s, zinc_layer *l, zinc_ctx *c, int site, void *dx,
                         const void *dy, int ldy, const void *x, const float *t, const lora_scratch *sc)
{
    if (s->a < 0) return;
    const zinc_ops *o = c->ops;
    const size_t N = (size_t)c->B * c->T;
    const void *xi = lora_input(m, s, l, c, site, x, sc);
    const int drop = xi != x; /* the gradient goes through the dropout's mask */
    void *d = dx && drop ? sc->dxd : dx;
    if (dx && drop) o->zero(d, N * s->in * zinc_dtype_size(o->act));
    o->lora_backward(d, zinc_layer_grad(l, s->a), zinc_layer_grad(l, s->b), sc->dt, dy, ldy, xi, s->in, t,
                     zinc_layer_param(l, s->a), zinc_layer_param(l, s->b), m->scale, (int)N, s->in, s->out, m->r);
    if (dx && drop) o->dropout_backward(dx, d, N * s->in, m->dropout, site_seed(l, c, site));
}
