/* engine.c - engine lifecycle and the training step (ZeRO stage 0: plain
 * data parallelism).
 *
 * Memory: parameters of layer l form flat unit l; all units sit back to back
 * in four slabs (fp32 params, grads, Adam m, Adam v) with the same layout.
 * Each unit is padded to a multiple of DP x ENGINE_UNIT_ALIGN elements so a
 * DP rank's 1/DP slice of it is contiguous and aligned (used by ZeRO).
 * Activations: every layer's saved activations and its output live in one
 * slab sized for a micro-batch; gradients of activations ping-pong between
 * two buffers as backward walks the layers in reverse.
 *
 * Step: for each micro-batch, forward all layers, backward all layers
 * (gradients accumulate in the grad slab); then one all-reduce (sum) of the
 * grad slab across DP, global norm, clipping, AdamW, lr schedule. The loss
 * gradient is scaled by 1/(B*T*ga*dp) per token so the summed gradient is the
 * mean over the global batch, whatever the layout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_int.h"
#include "zinc/log.h"
#include "zinc/rng.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *alloc_floats(size_t n)
{
    size_t bytes = (n ? n : 1) * sizeof(float);
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

/* ---------------------------------------------------------------- layer API */

int zinc_layer_param_add(zinc_layer *l, const char *name, int ndim, const int64_t *shape,
                         int tp_dim, zinc_init_kind init, float std)
{
    zinc_engine *e = l->e;
    if (!l->declaring) {
        zinc_error(ZINC_ERR_INTERNAL, "%s: parameters can only be added in declare", name);
        return -1;
    }
    if (ndim < 1 || ndim > ZINC_MAX_DIMS || l->n_params >= ENGINE_MAX_LAYER_PARAMS) {
        zinc_error(ZINC_ERR_INVALID_ARG, "%s: bad rank %d or too many parameters", name, ndim);
        return -1;
    }
    if (e->n_params == e->cap_params) {
        int cap = e->cap_params ? 2 * e->cap_params : 64;
        engine_param *np = realloc(e->params, (size_t)cap * sizeof *np);
        if (!np) {
            zinc_error(ZINC_ERR_NOMEM, "parameter table");
            return -1;
        }
        e->params = np;
        e->cap_params = cap;
    }
    engine_param *p = &e->params[e->n_params];
    memset(p, 0, sizeof *p);
    if (l->def->name[0])
        snprintf(p->name, sizeof p->name, "%s.%s", l->def->name, name);
    else
        snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            zinc_error(ZINC_ERR_INVALID_ARG, "%s: dimension %d is %lld", p->name, i,
                       (long long)shape[i]);
            return -1;
        }
        p->shape[i] = shape[i];
        p->numel *= shape[i];
    }
    p->tp_dim = tp_dim;
    p->init = init;
    p->std = std;
    p->layer = l->index;
    p->decay = ndim >= 2;
    l->params[l->n_params] = e->n_params++;
    return l->n_params++;
}

int zinc_layer_param_tie(zinc_layer *l, const char *full_name)
{
    zinc_engine *e = l->e;
    if (l->n_params >= ENGINE_MAX_LAYER_PARAMS) {
        zinc_error(ZINC_ERR_INVALID_ARG, "%s: too many parameters", full_name);
        return -1;
    }
    for (int i = 0; i < e->n_params; i++) {
        if (!strcmp(e->params[i].name, full_name) && e->params[i].layer < l->index) {
            l->params[l->n_params] = i;
            return l->n_params++;
        }
    }
    zinc_error(ZINC_ERR_INVALID_ARG, "tie %s: no such parameter in an earlier layer", full_name);
    return -1;
}

void zinc_layer_set_out(zinc_layer *l, int n_out) { l->n_out = n_out; }
int zinc_layer_n_in(const zinc_layer *l) { return l->n_in; }
void *zinc_layer_state(const zinc_layer *l) { return l->def->state; }
float *zinc_layer_acts(zinc_layer *l) { return l->acts; }

float *zinc_layer_param(zinc_layer *l, int idx)
{
    return l->e->param_slab + l->e->params[l->params[idx]].offset;
}

float *zinc_layer_grad(zinc_layer *l, int idx)
{
    return l->e->grad_slab + l->e->params[l->params[idx]].offset;
}

/* ---------------------------------------------------------------- scheduler */

double zinc_sched_lr(const zinc_config *c, int64_t step)
{
    double base = c->optimizer.lr;
    zinc_sched_type type = c->scheduler.type;
    if (type == ZINC_SCHED_NONE) return base;
    double min_lr = c->scheduler.warmup_min_lr, max_lr = c->scheduler.warmup_max_lr;
    /* DeepSpeed clamps warmup to >= 2 steps for the log form */
    double warm = (double)(c->scheduler.warmup_num_steps < 2 ? 2 : c->scheduler.warmup_num_steps);
    double x = (double)step;
    double gamma = 1.0; /* warmup progress in [0, 1] */
    int warming = x < warm;
    if (warming)
        gamma = c->scheduler.warmup_type == ZINC_WARMUP_LOG ? log(x + 1.0) / log(warm) : x / warm;
    switch (type) {
    case ZINC_SCHED_WARMUP_LR:
        return min_lr + (max_lr - min_lr) * gamma;
    case ZINC_SCHED_WARMUP_DECAY_LR: {
        if (warming) return min_lr + (max_lr - min_lr) * gamma;
        double total = (double)c->scheduler.total_num_steps;
        double left = (total - x) / fmax(1.0, total - warm);
        return max_lr * fmax(0.0, left);
    }
    case ZINC_SCHED_WARMUP_COSINE_LR: {
        double r0 = c->scheduler.warmup_min_ratio, rmin = c->scheduler.cos_min_ratio;
        if (warming) return base * (r0 + gamma * (1.0 - r0));
        double done = x - warm + 1.0, span = (double)c->scheduler.total_num_steps - warm;
        double cosr = (1.0 + cos(M_PI * done / fmax(1.0, span))) / 2.0;
        return base * fmax(0.0, rmin + (1.0 - rmin) * cosr);
    }
    case ZINC_SCHED_NONE:
        break;
    }
    return base;
}

/* ---------------------------------------------------------------- lifecycle */

static void init_params(zinc_engine *e)
{
    for (int i = 0; i < e->n_params; i++) {
        engine_param *p = &e->params[i];
        float *d = e->param_slab + p->offset;
        switch (p->init) {
        case ZINC_INIT_ZEROS:
            memset(d, 0, (size_t)p->numel * sizeof(float));
            break;
        case ZINC_INIT_ONES:
            for (int64_t k = 0; k < p->numel; k++) d[k] = 1.0f;
            break;
        case ZINC_INIT_NORMAL: {
            zinc_rng r;
            zinc_rng_seed(&r, (uint64_t)e->cfg.model.seed, zinc_hash_str(p->name));
            zinc_rng_normal(&r, d, p->numel, p->std);
            break;
        }
        }
    }
}

zinc_status zinc_engine_create(const zinc_engine_opts *o, zinc_engine **out)
{
    zinc_status st = ZINC_OK;
    *out = NULL;
    zinc_engine *e = calloc(1, sizeof *e);
    if (!e) return zinc_error(ZINC_ERR_NOMEM, "engine");
    e->cfg = *o->config;
    e->world = o->world;
    e->model = o->model;
    e->ops = zinc_ops_cpu();

    if (e->cfg.zero.stage != 0) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED,
                        "zero_optimization.stage %d: this build implements stage 0 only",
                        e->cfg.zero.stage);
        goto cleanup;
    }
    if (e->cfg.device == ZINC_DEVICE_CUDA) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "device cuda: this build has no CUDA support; "
                                              "use \"device\": \"cpu\" or \"auto\"");
        goto cleanup;
    }
    if (e->cfg.fp16.enabled || e->cfg.bf16.enabled) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "%s.enabled: mixed precision is not implemented yet; "
                        "set it to false", e->cfg.fp16.enabled ? "fp16" : "bf16");
        goto cleanup;
    }
    int world = zinc_comm_size(e->world);
    ZINC_TRY(zinc_mesh_create(e->world, 1, world, 1, &e->mesh));
    e->dp = e->mesh->dp;
    e->dp_rank = e->mesh->dp_rank;
    e->B = (int)e->cfg.train_micro_batch_size_per_gpu;
    e->ga = (int)e->cfg.gradient_accumulation_steps;
    e->T = (int)(e->cfg.data.seq_len > 0 ? e->cfg.data.seq_len : e->cfg.model.block_size);
    if (e->cfg.train_batch_size != (int64_t)e->B * e->ga * e->dp) {
        st = zinc_error(ZINC_ERR_CONFIG, "train_batch_size %lld != micro %d * grad_accum %d * dp %d",
                        (long long)e->cfg.train_batch_size, e->B, e->ga, e->dp);
        goto cleanup;
    }

    /* declare */
    e->n_layers = o->model->n_layers;
    e->layers = calloc((size_t)e->n_layers, sizeof *e->layers);
    e->out = calloc((size_t)e->n_layers, sizeof *e->out);
    if (!e->layers || !e->out) {
        st = zinc_error(ZINC_ERR_NOMEM, "layer table");
        goto cleanup;
    }
    size_t unit_pad = (size_t)e->dp * ENGINE_UNIT_ALIGN;
    int width = 0;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        l->e = e;
        l->def = &o->model->layers[i];
        l->index = i;
        l->n_in = width;
        l->n_out = width;
        l->declaring = 1;
        int first = e->n_params;
        ZINC_TRY(l->def->ops->declare(l));
        l->declaring = 0;
        width = l->n_out;
        /* lay out this layer's own params as its flat unit */
        l->unit_offset = e->slab_numel;
        size_t off = 0;
        for (int p = first; p < e->n_params; p++) {
            e->params[p].offset = l->unit_offset + off;
            off += ((size_t)e->params[p].numel + ENGINE_UNIT_ALIGN - 1) / ENGINE_UNIT_ALIGN *
                   ENGINE_UNIT_ALIGN;
        }
        l->unit_numel = (off + unit_pad - 1) / unit_pad * unit_pad;
        e->slab_numel += l->unit_numel;
    }

    e->param_slab = alloc_floats(e->slab_numel);
    e->grad_slab = alloc_floats(e->slab_numel);
    e->m_slab = alloc_floats(e->slab_numel);
    e->v_slab = alloc_floats(e->slab_numel);
    if (!e->param_slab || !e->grad_slab || !e->m_slab || !e->v_slab) {
        st = zinc_error(ZINC_ERR_NOMEM, "model state: %zu parameters x 16 bytes", e->slab_numel);
        goto cleanup;
    }
    init_params(e);
    e->state_bytes = (uint64_t)e->slab_numel * 4 * sizeof(float);

    /* activations: saved acts + outputs per layer, grads ping-pong, scratch */
    size_t BT = (size_t)e->B * e->T, act_total = 0, max_width = 0, scratch = 0;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        const zinc_layer_ops *lo = l->def->ops;
        l->act_floats = lo->act_floats ? lo->act_floats(l, e->B, e->T) : 0;
        act_total += (l->act_floats + 15) / 16 * 16;
        if (i + 1 < e->n_layers) act_total += BT * (size_t)l->n_out;
        if ((size_t)l->n_in > max_width) max_width = (size_t)l->n_in;
        size_t s = lo->scratch_floats ? lo->scratch_floats(l, e->B, e->T) : 0;
        if (s > scratch) scratch = s;
    }
    e->act_slab = alloc_floats(act_total);
    e->dbuf[0] = alloc_floats(BT * max_width);
    e->dbuf[1] = alloc_floats(BT * max_width);
    e->scratch = alloc_floats(scratch);
    e->tokens = malloc(BT * sizeof(int32_t));
    e->targets = malloc(BT * sizeof(int32_t));
    if (!e->act_slab || !e->dbuf[0] || !e->dbuf[1] || !e->scratch || !e->tokens || !e->targets) {
        st = zinc_error(ZINC_ERR_NOMEM, "activations: %zu floats", act_total);
        goto cleanup;
    }
    float *a = e->act_slab;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        l->acts = a;
        a += (l->act_floats + 15) / 16 * 16;
        if (i + 1 < e->n_layers) {
            e->out[i] = a;
            a += BT * (size_t)l->n_out;
        }
    }
    ZINC_TRY(zinc_comm_all_reduce(e->mesh->dp_group, &e->state_bytes, &e->state_bytes_max, 1,
                                  ZINC_DTYPE_I64, ZINC_REDOP_MAX, NULL));
    *out = e;
    return ZINC_OK;
cleanup:
    zinc_engine_destroy(e);
    return st;
}

void zinc_engine_destroy(zinc_engine *e)
{
    if (!e) return;
    zinc_mesh_destroy(e->mesh);
    free(e->layers);
    free(e->out);
    free(e->params);
    free(e->param_slab);
    free(e->grad_slab);
    free(e->m_slab);
    free(e->v_slab);
    free(e->act_slab);
    free(e->dbuf[0]);
    free(e->dbuf[1]);
    free(e->scratch);
    free(e->tokens);
    free(e->targets);
    free(e);
}

int64_t zinc_engine_n_params(const zinc_engine *e)
{
    int64_t n = 0;
    for (int i = 0; i < e->n_params; i++) n += e->params[i].numel;
    return n;
}

int zinc_engine_dp_rank(const zinc_engine *e) { return e->dp_rank; }
int zinc_engine_dp_size(const zinc_engine *e) { return e->dp; }

static float *slab_by_name(zinc_engine *e, float *slab, const char *name, int64_t *numel)
{
    for (int i = 0; i < e->n_params; i++)
        if (!strcmp(e->params[i].name, name)) {
            if (numel) *numel = e->params[i].numel;
            return slab + e->params[i].offset;
        }
    return NULL;
}

float *zinc_engine_param_by_name(zinc_engine *e, const char *name, int64_t *numel)
{
    return slab_by_name(e, e->param_slab, name, numel);
}

float *zinc_engine_grad_by_name(zinc_engine *e, const char *name, int64_t *numel)
{
    return slab_by_name(e, e->grad_slab, name, numel);
}

/* ---------------------------------------------------------------- the step */

/* Forward and backward of one micro-batch; adds its loss sum to *loss_sum. */
static zinc_status micro_step(zinc_engine *e, zinc_ctx *c, double *loss_sum)
{
    zinc_status st = ZINC_OK;
    size_t BT = (size_t)e->B * e->T;
    c->loss_sum = 0.0;
    const void *x = e->tokens;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        ZINC_TRY(l->def->ops->forward(l, c, x, e->out[i]));
        x = e->out[i];
    }
    const float *dy = NULL;
    for (int i = e->n_layers - 1; i >= 0; i--) {
        zinc_layer *l = &e->layers[i];
        float *dx = i > 0 ? e->dbuf[i & 1] : NULL;
        if (dx) memset(dx, 0, BT * (size_t)l->n_in * sizeof(float));
        const void *xi = i > 0 ? (const void *)e->out[i - 1] : (const void *)e->tokens;
        ZINC_TRY(l->def->ops->backward(l, c, xi, dy, dx));
        dy = dx;
    }
    *loss_sum += c->loss_sum;
cleanup:
    return st;
}

zinc_status zinc_engine_loss_and_grad(zinc_engine *e, const int32_t *tokens,
                                      const int32_t *targets, double *loss)
{
    size_t BT = (size_t)e->B * e->T;
    memcpy(e->tokens, tokens, BT * sizeof(int32_t));
    memcpy(e->targets, targets, BT * sizeof(int32_t));
    memset(e->grad_slab, 0, e->slab_numel * sizeof(float));
    zinc_ctx c = {
        .ops = e->ops, .B = e->B, .T = e->T, .tokens = e->tokens, .targets = e->targets,
        .dloss = 1.0f / (float)BT, .scratch = e->scratch,
    };
    double sum = 0.0;
    zinc_status st = micro_step(e, &c, &sum);
    *loss = sum / (double)BT;
    return st;
}

zinc_status zinc_engine_train_batch(zinc_engine *e, const zinc_data *data, zinc_step_stats *s)
{
    zinc_status st = ZINC_OK;
    const zinc_config *cfg = &e->cfg;
    zinc_comm *dpg = e->mesh->dp_group;
    double t0 = now_ms();
    zinc_comm_reset_bytes(dpg);

    memset(e->grad_slab, 0, e->slab_numel * sizeof(float));
    zinc_ctx c = {
        .ops = e->ops, .B = e->B, .T = e->T, .tokens = e->tokens, .targets = e->targets,
        .dloss = 1.0f / ((float)e->B * e->T * e->ga * e->dp), .scratch = e->scratch,
    };
    double loss_sum = 0.0;
    for (int m = 0; m < e->ga; m++) {
        uint64_t first = (uint64_t)e->samples + (uint64_t)m * e->B * e->dp +
                         (uint64_t)e->dp_rank * e->B;
        ZINC_TRY(zinc_data_get(data, first, e->B, e->tokens, e->targets));
        ZINC_TRY(micro_step(e, &c, &loss_sum));
    }

    if (e->dp > 1) {
        ZINC_TRY(zinc_comm_all_reduce(dpg, e->grad_slab, e->grad_slab, e->slab_numel,
                                      ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL));
        ZINC_TRY(zinc_comm_all_reduce(dpg, &loss_sum, &loss_sum, 1, ZINC_DTYPE_F64,
                                      ZINC_REDOP_SUM, NULL));
    }
    double norm = sqrt(e->ops->sumsq(e->grad_slab, e->slab_numel));
    if (!isfinite(norm)) {
        st = zinc_error(ZINC_ERR_INTERNAL, "step %lld: gradient norm is %g (loss %g); lower the "
                        "learning rate or check the data", (long long)e->step + 1, norm,
                        loss_sum / ((double)cfg->train_batch_size * e->T));
        goto cleanup;
    }
    if (cfg->gradient_clipping > 0 && norm > cfg->gradient_clipping)
        e->ops->scale(e->grad_slab, (float)(cfg->gradient_clipping / (norm + 1e-6)), e->slab_numel);

    double lr = zinc_sched_lr(cfg, e->step);
    int t = (int)(e->step + 1);
    for (int i = 0; i < e->n_params; i++) {
        engine_param *p = &e->params[i];
        float wd = p->decay ? (float)cfg->optimizer.weight_decay : 0.0f;
        e->ops->adamw(e->param_slab + p->offset, e->grad_slab + p->offset, e->m_slab + p->offset,
                      e->v_slab + p->offset, (size_t)p->numel, (float)lr,
                      (float)cfg->optimizer.betas[0], (float)cfg->optimizer.betas[1],
                      (float)cfg->optimizer.eps, wd, t);
    }
    e->step++;
    e->samples += cfg->train_batch_size;

    double ms = now_ms() - t0;
    s->step = e->step;
    s->loss = loss_sum / ((double)cfg->train_batch_size * e->T);
    s->lr = lr;
    s->grad_norm = norm;
    s->step_ms = ms;
    s->tokens_per_s = (double)cfg->train_batch_size * e->T / (ms / 1e3);
    s->model_state_bytes = e->state_bytes;
    s->model_state_bytes_max = e->state_bytes_max;
    s->comm_bytes = zinc_comm_bytes(dpg);
    s->samples_seen = e->samples;
cleanup:
    return st;
}
