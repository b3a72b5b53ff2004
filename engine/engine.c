/* engine.c - engine lifecycle and the training step.
 *
 * Memory: parameters of layer l form flat unit l (zero.c holds them under
 * the configured ZeRO stage). Activations: every layer's saved activations
 * and its output live in one slab sized for a micro-batch; gradients of
 * activations ping-pong between two buffers as backward walks the layers in
 * reverse. With 16-bit storage, layer outputs and input gradients are rounded
 * to 16 bits at layer boundaries (the numerics of 16-bit activations; the CPU
 * kernels themselves compute in fp32).
 *
 * Step: for each micro-batch, forward all layers, backward all layers; before
 * a layer runs its units are made whole (ZeRO-3 gathers them, prefetching the
 * units of the layers ahead up to stage3_prefetch_bucket_size elements),
 * after it they are released unless reused soon; after a
 * unit's last backward use its grads are folded in or reduce-scattered. At
 * the accumulation boundary: reduction (stage 0/1), global norm from the
 * shards (one all-reduce), fp16 overflow check and loss-scale update,
 * clipping, AdamW on this rank's shards, params gathered back. The loss
 * gradient is scaled by loss_scale/(B*T*ga*dp) per token so the summed
 * gradient is the mean over the global batch, whatever the layout.
 */
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/clock.h"
#include "zinc/log.h"
#include "zinc/rng.h"
#include "zinc/sysmem.h"

static void *alloc_bytes(const zinc_engine *e, size_t n)
{
    return e->dev->alloc(n ? n : 1);
}

/* The dtype activations are stored in: bf16 in bf16 training (every
 * device's ops_bf16 table has act bf16), else fp32 (fp16 training rounds
 * fp32 activations at layer boundaries instead). */
zinc_dtype engine_act_dtype(const zinc_engine *e)
{
    return e->z.plan.pdt == ZINC_DTYPE_BF16 ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F32;
}

/* ---------------------------------------------------------------- layer API */

int zinc_layer_param_add(zinc_layer *l, const char *name, int ndim, const int64_t *shape,
                         int tp_dim, zinc_init_kind init, float std)
{
    return zinc_layer_param_add_split(l, name, ndim, shape, tp_dim, 1, init, std);
}

int zinc_layer_param_add_split(zinc_layer *l, const char *name, int ndim, const int64_t *shape,
                               int tp_dim, int tp_blocks, zinc_init_kind init, float std)
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
    char full[96];
    if (l->def->name[0])
        snprintf(full, sizeof full, "%s.%s", l->def->name, name);
    else
        snprintf(full, sizeof full, "%s", name);
    /* model.freeze: a name a pattern matches is frozen (each pattern must match one) */
    int frozen = e->cfg.model.lora.enabled && !zinc_lora_param_name(full); /* LoRA: the adapters alone train */
    e->n_lora += zinc_lora_param_name(full);
    for (int i = 0; i < e->cfg.model.n_freeze; i++)
        if (fnmatch(e->cfg.model.freeze[i], full, 0) == 0) {
            frozen = 1;
            e->freeze_hits |= 1u << i;
        }
    int id = zero_param_add(&e->z, l->index, full, ndim, shape, tp_dim, tp_blocks, init, std, frozen);
    if (id < 0) return -1;
    l->params[l->n_params] = id;
    return l->n_params++;
}

int zinc_layer_param_tie(zinc_layer *l, const char *full_name)
{
    zinc_engine *e = l->e;
    if (l->n_params >= ENGINE_MAX_LAYER_PARAMS) {
        zinc_error(ZINC_ERR_INVALID_ARG, "%s: too many parameters", full_name);
        return -1;
    }
    for (int i = 0; i < e->z.n_params; i++) {
        if (!strcmp(e->z.params[i].name, full_name) && e->z.units[e->z.params[i].unit].layer < l->index) {
            l->params[l->n_params] = i;
            return l->n_params++;
        }
    }
    zinc_error(ZINC_ERR_INVALID_ARG, "tie %s: no such parameter in an earlier layer", full_name);
    return -1;
}

void zinc_layer_set_out(zinc_layer *l, int n_out) { l->n_out = n_out; }
int zinc_layer_n_in(const zinc_layer *l) { return l->n_in; }
int zinc_layer_index(const zinc_layer *l) { return l->index; }

int zinc_lora_param_name(const char *name)
{
    const char *s = strstr(name, ".lora_");
    return s && (!strncmp(s, ".lora_A.", 8) || !strncmp(s, ".lora_B.", 8));
}
void *zinc_layer_state(const zinc_layer *l) { return l->def->state; }
const zinc_tp *zinc_layer_tp(const zinc_layer *l) { return &l->e->tp; }
void *zinc_layer_acts(zinc_layer *l) { return l->acts; }

float *zinc_layer_param(zinc_layer *l, int idx) { return zero_param_data(&l->e->z, l->params[idx]); }
float *zinc_layer_grad(zinc_layer *l, int idx) { return zero_grad_data(&l->e->z, l->params[idx]); }

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

/* Which layers each model chunk runs (pipeline.partition over the p x v chunks, from
 * the declared parameters) and which of them this stage runs (chunks c*p + stage).
 * Needs e->pp and e->stage (one stage of one chunk: every layer). */
static zinc_status engine_stage_layers(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    const int J = e->pp.stages * e->pp.virt, L = e->n_layers;
    zinc_pp_layer_info *info = NULL;
    free(e->bounds);
    free(e->held);
    e->bounds = calloc((size_t)J + 1, sizeof *e->bounds);
    e->held = calloc((size_t)(L ? L : 1), 1);
    if (!e->bounds || !e->held) return zinc_error(ZINC_ERR_NOMEM, "layer table");
    if (J > L)
        return zinc_error(ZINC_ERR_CONFIG, "pipeline.stages %d x pipeline.virtual_stages %d = %d model chunks: "
                          "more than the model's %d layers", e->pp.stages, e->pp.virt, J, L);
    e->bounds[J] = L;
    if (J > 1) {
        info = calloc((size_t)L, sizeof *info);
        if (!info) return zinc_error(ZINC_ERR_NOMEM, "layer table");
        /* a layer counts every parameter it uses, tied ones too (as DeepSpeed counts a tied
         * layer in each place): GPT-2's head weighs its wte, whose product it computes */
        for (int i = 0; i < L; i++) {
            const zinc_layer *l = &e->layers[i];
            info[i].type = l->def->ops->type ? l->def->ops->type : "";
            for (int k = 0; k < l->n_params; k++) info[i].params += e->z.params[l->params[k]].gnumel;
        }
        st = zinc_pp_partition(e->cfg.pp.partition, info, L, J, e->bounds);
        if (st != ZINC_OK) st = zinc_error(ZINC_ERR_CONFIG, "%s", zinc_last_error());
        free(info);
        if (st != ZINC_OK) return st;
    }
    for (int c = 0; c < e->pp.virt; c++) {
        const int j = c * e->pp.stages + e->stage;
        for (int i = e->bounds[j]; i < e->bounds[j + 1]; i++) e->held[i] = 1;
    }
    e->z.layer_held = J > 1 ? e->held : NULL;
    return ZINC_OK;
}

/* Runs every layer's declare, records which units each layer touches, and
 * lays the units out for zero's plan, dp and dp_rank. Needs e->model, cfg,
 * e->z's plan, dp, dp_rank. */
static zinc_status engine_declare(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    e->n_layers = e->model->n_layers;
    e->layers = calloc((size_t)(e->n_layers ? e->n_layers : 1), sizeof *e->layers);
    if (!e->layers) return zinc_error(ZINC_ERR_NOMEM, "layer table");
    ZINC_TRY(zero_tables_alloc(&e->z, e->n_layers));
    int width = 0;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        l->e = e;
        l->def = &e->model->layers[i];
        l->index = i;
        l->n_in = width;
        l->n_out = width;
        l->declaring = 1;
        ZINC_TRY(l->def->ops->declare(l));
        l->declaring = 0;
        width = l->n_out;
        for (int k = 0; k < l->n_params; k++)
            ZINC_TRY(zero_layer_use(&e->z, i, e->z.params[l->params[k]].unit));
    }
    for (int i = 0; i < e->cfg.model.n_freeze; i++)
        if (!(e->freeze_hits & 1u << i)) {
            st = zinc_error(ZINC_ERR_CONFIG, "model.freeze[%d] \"%s\" matches no parameter (names look like "
                            "\"%s\")", i, e->cfg.model.freeze[i], e->z.n_params > 1 ? e->z.params[1].name : "");
            goto cleanup;
        }
    if (e->cfg.model.lora.enabled && e->n_lora == 0) {
        st = zinc_error(ZINC_ERR_CONFIG, "model.lora: the model (layers of type \"%s\"...) declares no LoRA adapters: "
                        "it has no layer LoRA adapts", e->n_layers > 1 ? e->layers[1].def->ops->type : "?");
        goto cleanup;
    }
    ZINC_TRY(engine_stage_layers(e));
    zero_units_layout(&e->z);
cleanup:
    return st;
}

static void engine_free_tables(zinc_engine *e)
{
    free(e->layers);
    e->layers = NULL;
    free(e->bounds);
    free(e->held);
    e->bounds = NULL;
    e->held = NULL;
    engine_layout_free(e);
    zero_tables_free(&e->z);
}

/* What zero/ takes from the config, for an estimate and an engine alike. */
static void engine_zero_opts(const zinc_config *c, zero_opts *o)
{
    memset(o, 0, sizeof *o);
    o->pdt = c->bf16.enabled ? ZINC_DTYPE_BF16 : c->fp16.enabled ? ZINC_DTYPE_F16 : ZINC_DTYPE_F32;
    o->offload_optimizer = c->zero.offload_optimizer.device;
    o->offload_param = c->zero.offload_param.device;
    o->optimizer_nvme_path = c->zero.offload_optimizer.nvme_path;
    o->param_nvme_path = c->zero.offload_param.nvme_path;
    o->pipeline_read = c->zero.offload_optimizer.pipeline_read;
    o->pipeline_write = c->zero.offload_optimizer.pipeline_write;
    o->overlap_comm = c->zero.overlap_comm;
    o->reduce_bucket_size = c->zero.reduce_bucket_size;
    o->allgather_bucket_size = c->zero.allgather_bucket_size;
    o->prefetch_bucket_size = c->zero.stage3_prefetch_bucket_size;
    o->max_live_parameters = c->zero.stage3_max_live_parameters;
    o->max_reuse_distance = c->zero.stage3_max_reuse_distance;
    o->persistence_threshold = c->zero.stage3_param_persistence_threshold;
    o->sub_group_size = c->zero.sub_group_size;
    o->opt_ratio = c->zero.offload_optimizer.ratio;
    o->delayed_update = c->zero.offload_optimizer.delayed_update;
    o->weight_decay = c->optimizer.weight_decay;
    o->beta1 = c->optimizer.betas[0];
    o->beta2 = c->optimizer.betas[1];
    o->eps = c->optimizer.eps;
    o->seed = (uint64_t)c->model.seed;
}

/* What a rank needs of each memory tier. */
void zinc_mem_tiers_of(const zinc_mem_stats *m, int device_is_host, zinc_mem_tiers *t)
{
    const uint64_t state = m->total - m->nvme; /* in memory: device, or host when offloaded */
    t->nvme = m->nvme;
    if (device_is_host) {
        t->device = 0;
        t->host = state + m->buffers + m->activations;
    } else {
        t->device = state - m->host + m->buffers - m->buffers_host + m->activations - m->activations_host;
        t->host = m->host + m->buffers_host + m->activations_host;
    }
}

/* Activations a rank of e's stage holds at once (into m): the schedule's (micro-batch,
 * chunk) pairs in flight, each a slab of its chunk, their inputs and output gradients
 * crossing stages and the sends in flight, the gradient buffers, scratch and the
 * checkpointing buffers; the part in host memory apart. Needs e's layers declared. */
static zinc_status engine_act_need(zinc_engine *e, int host_device, zinc_mem_stats *m, int *inflight_out)
{
    const int p = e->pp.stages, pp_stage = e->stage;
    int inflight = 1;
    zinc_status st = ZINC_OK;
    if (p > 1 || e->pp.virt > 1) {
        zinc_pp_sim sim;
        const zinc_pp_cost cost = {1.0, 2.0, 1.0, 1.0};
        st = p <= 64 ? zinc_pp_simulate(&e->pp, &cost, &sim)
                     : zinc_error(ZINC_ERR_UNSUPPORTED, "estimate: more than 64 pipeline stages");
        if (st == ZINC_OK) inflight = sim.inflight[pp_stage];
    }
    size_t slab, dbuf, scratch, io, ac_dev, ac_host;
    if (st == ZINC_OK) st = engine_act_layout(e, &slab, &dbuf, &scratch, &io);
    if (st != ZINC_OK) return st;
    engine_ac_bytes(e, &ac_dev, &ac_host);
    const size_t J = (size_t)p * e->pp.virt;
    size_t bufs = 0; /* crossing buffers held at once */
    if (J > 1) bufs = (pp_stage == 0 && e->pp.virt == 1 ? 0 : (size_t)inflight) + 2;
    m->activations_host = host_device ? 0 : (uint64_t)inflight * ac_host;
    m->activations = (uint64_t)inflight * (slab + ac_host) + bufs * io * zinc_dtype_size(engine_act_dtype(e)) +
                     2 * dbuf + scratch + ac_dev;
    if (inflight_out) *inflight_out = inflight;
    return ZINC_OK;
}

static double gib(uint64_t b) { return (double)b / 1073741824.0; }

/* train.check_memory: before any model state is allocated, the plan against what the node
 * has: the GPU's free memory, the host memory (the node's ranks each planning the same),
 * the swap files' file systems. One line naming the tier and the shortfall. */
static zinc_status engine_check_fit(zinc_engine *e)
{
    if (!e->cfg.train.check_memory) return ZINC_OK;
    const int node = zinc_comm_local_size(e->world) > 0 ? zinc_comm_local_size(e->world) : 1;
    zinc_mem_stats m;
    zero_mem_stats(&e->z, &m);
    zinc_status st = engine_act_need(e, e->dev->is_host, &m, NULL);
    if (st != ZINC_OK) return st;
    zinc_mem_tiers t;
    zinc_mem_tiers_of(&m, e->dev->is_host, &t);
    if (e->z.plan.opt_nvme || e->z.plan.param_nvme) {
        st = zero_offload_room(&e->z, zinc_comm_rank(e->world), node);
        if (st != ZINC_OK) return st;
    }
    static const char *const fix =
        "offload to NVMe (zero_optimization.offload_optimizer / offload_param \"nvme\"), a higher ZeRO stage, "
        "activation checkpointing or more ranks reduce it (zinc-train --estimate-memory shows each tier; "
        "train.check_memory false skips this check)";
    if (!e->dev->is_host && e->dev->mem_info) {
        uint64_t free_b = 0, total = 0;
        e->dev->mem_info(&free_b, &total);
        if (free_b && t.device > free_b)
            return zinc_error(ZINC_ERR_CONFIG, "device memory (%s %d): a rank needs %.2f GiB (model state %.2f, buffers "
                              "%.2f, activations %.2f) and %.2f GiB is free: %.2f GiB short; %s", e->dev->name,
                              e->dev->index, gib(t.device), gib(m.total - m.nvme - m.host), gib(m.buffers - m.buffers_host),
                              gib(m.activations - m.activations_host), gib(free_b), gib(t.device - free_b), fix);
    }
    uint64_t avail, total;
    zinc_host_mem(&avail, &total);
    const uint64_t need = t.host * (uint64_t)node;
    if (avail && need > avail)
        return zinc_error(ZINC_ERR_CONFIG, "host memory: this node's %d rank%s need%s %.2f GiB (%.2f GiB each: %s %.2f, "
                          "activations %.2f) and %.2f GiB is available: %.2f GiB short; %s", node,
                          node == 1 ? "" : "s", node == 1 ? "s" : "", gib(need), gib(t.host),
                          e->dev->is_host ? "model state and buffers" : "offloaded optimizer state",
                          gib(e->dev->is_host ? m.total - m.nvme + m.buffers : m.host + m.buffers_host),
                          gib(e->dev->is_host ? m.activations : m.activations_host), gib(avail), gib(need - avail),
                          fix);
    return ZINC_OK;
}

/* The device an estimate plans for: a GPU when the config asks for one, or
 * for "auto" when this machine has one (NULL: host memory). */
/* A TP size the model cannot run (its layers do not split) is refused. */
static zinc_status check_model_tp(const zinc_config *c, const zinc_model_def *m)
{
    if (c->tp.size > 1 && !m->tp_ready)
        return zinc_error(ZINC_ERR_CONFIG, "tensor_parallel.autotp_size %lld: this model's layers "
                          "do not split over TP ranks (its zinc_model_def has no tp_ready); use 1",
                          (long long)c->tp.size);
    return ZINC_OK;
}

static const char *estimate_device(const zinc_config *c)
{
    if (c->device == ZINC_DEVICE_CUDA) return "cuda";
    if (c->device == ZINC_DEVICE_AUTO && zinc_device_cuda_count() > 0) return "cuda";
    return NULL;
}

zinc_status zinc_engine_estimate_stage(const zinc_config *c, const zinc_model_def *m, int dp, int stage,
                                       int pp_stage, zinc_mem_stats *out, zinc_stage_estimate *where)
{
    const int p = c->pp.stages > 0 ? (int)c->pp.stages : 1;
    if (dp < 1 || stage < 0 || stage > 3 || pp_stage < 0 || pp_stage >= p)
        return zinc_error(ZINC_ERR_INVALID_ARG, "estimate: dp %d, stage %d, pipeline stage %d of %d", dp, stage,
                          pp_stage, p);
    zinc_status cst = zinc_config_check(c);
    if (cst == ZINC_OK) cst = check_model_tp(c, m);
    if (cst != ZINC_OK) return cst;
    zinc_engine e;
    memset(&e, 0, sizeof e);
    e.cfg = *c;
    /* a row for a stage the config does not pick: parameter offload needs stage 3 */
    if (stage != 3) e.cfg.zero.offload_param.device = ZINC_OFFLOAD_NONE;
    e.model = m;
    engine_zero_opts(&e.cfg, &e.z.opt);
    e.z.dp = dp;
    e.z.tp = (int)c->tp.size; /* every TP rank holds the same sizes */
    e.tp = (zinc_tp){.size = e.z.tp, .sequence_parallel = c->tp.sequence_parallel};
    zinc_status st = zero_plan_make(&e.z.opt, stage, estimate_device(&e.cfg), &e.z.plan);
    if (st != ZINC_OK) return st;
    e.B = (int)c->train_micro_batch_size_per_gpu;
    e.T = (int)zinc_config_seq_len(c);
    const int ga = c->gradient_accumulation_steps > 0 ? (int)c->gradient_accumulation_steps : 1;
    e.pp = (zinc_pp_plan){.kind = (zinc_pp_kind)c->pp.schedule, .stages = p, .micro = ga,
                          .virt = c->pp.virtual_stages > 0 ? (int)c->pp.virtual_stages : 1};
    e.stage = pp_stage;
    if (p == 1 && e.pp.virt == 1) e.pp.kind = ZINC_PP_1F1B; /* plain accumulation: one micro-batch in flight */
    st = engine_declare(&e);
    if (st == ZINC_OK) zero_mem_stats(&e.z, out);
    int inflight = 1;
    if (st == ZINC_OK && e.B > 0 && e.T > 0) st = engine_act_need(&e, estimate_device(&e.cfg) == NULL, out, &inflight);
    if (st == ZINC_OK && where) {
        *where = (zinc_stage_estimate){.inflight = inflight, .n_chunks = e.pp.virt};
        for (int k = 0; k < e.pp.virt && k < 8; k++) {
            where->first_layer[k] = e.bounds[k * p + pp_stage];
            where->end_layer[k] = e.bounds[k * p + pp_stage + 1];
        }
    }
    engine_free_tables(&e);
    return st;
}

zinc_status zinc_engine_estimate_memory(const zinc_config *c, const zinc_model_def *m, int dp,
                                        int stage, zinc_mem_stats *out)
{
    return zinc_engine_estimate_stage(c, m, dp, stage, 0, out, NULL);
}

zinc_status zinc_engine_aio_create(const zinc_config *c, zinc_aio **out)
{
    zinc_aio_opts ao;
    zinc_aio_opts_default(&ao);
    ao.block_size = (size_t)c->aio.block_size;
    ao.queue_depth = (int)c->aio.queue_depth;
    ao.intra_op_parallelism = (int)c->aio.intra_op_parallelism;
    ao.single_submit = c->aio.single_submit;
    ao.overlap_events = c->aio.overlap_events;
    return zinc_aio_create(&ao, out);
}

/* The rank-local part of engine creation: declare, swap files, model
 * state, activations. */
/* The rank-local planning before engine_alloc_local: declare, and the plan checked
 * against the node (engine_check_fit). Every rank plans before any allocates, so no
 * rank's allocation counts against another's check. */
static zinc_status engine_plan_local(zinc_engine *e)
{
    zinc_status st = engine_declare(e);
    if (st != ZINC_OK) return st;
    for (int l = 0; l < e->z.n_units; l++) /* MPI counts are int */
        if (e->z.units[l].numel > (size_t)INT32_MAX)
            return zinc_error(ZINC_ERR_UNSUPPORTED, "layer %d has %zu parameters; zinc handles at "
                              "most %d per layer (one collective each)", l, e->z.units[l].numel,
                              INT32_MAX);
    return engine_check_fit(e);
}

static zinc_status engine_alloc_local(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    if (e->z.plan.opt_nvme || e->z.plan.param_nvme) {
        if (!e->aio) {
            ZINC_TRY(zinc_engine_aio_create(&e->cfg, &e->aio));
            e->aio_owned = 1;
        }
        ZINC_TRY(zero_offload_open(&e->z, e->aio, zinc_comm_rank(e->world)));
    }
    ZINC_TRY(zero_units_alloc(&e->z));
    zero_mem_stats(&e->z, &e->mem);

    /* activations: a slab per (micro-batch, chunk) in flight (made as the step needs
     * them), gradients ping-pong, scratch, the step's tokens */
    size_t BT = (size_t)e->B * e->T, dbuf, scratch;
    ZINC_TRY(engine_act_layout(e, &e->slab_bytes, &dbuf, &scratch, &e->io_elems));
    ZINC_TRY(engine_acts_alloc(e));
    e->dbuf[0] = alloc_bytes(e, dbuf);
    e->dbuf[1] = alloc_bytes(e, dbuf);
    e->scratch = alloc_bytes(e, scratch);
    if (e->model->consts_bytes) { /* the model's constant tables, on the device once */
        e->consts = e->dev->alloc(e->model->consts_bytes);
        if (!e->consts) {
            st = zinc_error(ZINC_ERR_NOMEM, "the model's constant tables (%zu bytes)", e->model->consts_bytes);
            goto cleanup;
        }
        e->dev->copy(e->consts, e->model->consts, e->model->consts_bytes);
    }
    size_t ac_dev, ac_host;
    engine_ac_bytes(e, &ac_dev, &ac_host);
    e->act_fixed = 2 * dbuf + scratch + ac_dev;
    e->tokens = e->dev->alloc(BT * (size_t)e->ga * sizeof(int32_t));
    e->targets = e->dev->alloc(BT * (size_t)e->ga * sizeof(int32_t));
    e->pos = e->dev->alloc(BT * (size_t)e->ga * sizeof(int32_t));
    if (!e->dev->is_host) {
        e->htokens = e->dev->host_alloc(BT * sizeof(int32_t));
        e->htargets = e->dev->host_alloc(BT * sizeof(int32_t));
    }
    if (!e->dbuf[0] || !e->dbuf[1] || !e->scratch || !e->tokens || !e->targets || !e->pos ||
        (!e->dev->is_host && (!e->htokens || !e->htargets))) {
        st = zinc_error(ZINC_ERR_NOMEM,
                        "activations of micro-batch %d x %d tokens on %s: %zu + 2 x %zu + %zu bytes "
                        "(saved, gradients, scratch): %s",
                        e->B, e->T, e->dev->name, e->slab_bytes, dbuf, scratch, zinc_last_error());
        goto cleanup;
    }
    if (e->ac.on && zinc_comm_rank(e->world) == 0) {
        ZINC_INFO("activation checkpointing: %d groups of layers recomputed in backward, their inputs kept%s%s; "
                  "%zu bytes of activations a micro-batch, %zu in the recompute buffers",
                  e->ac.n_groups, e->ac.cpu ? " in host memory" : "", e->ac.part ? ", split over the TP group" : "",
                  e->slab_bytes + e->ac.host_bytes, ac_dev);
    }

    /* fp16 loss scaler, DeepSpeed's DynamicLossScaler semantics */
    e->scaler.scale = 1.0;
    if (e->cfg.fp16.enabled) {
        e->scaler.dynamic = e->cfg.fp16.loss_scale == 0;
        e->scaler.scale = e->scaler.dynamic ? ldexp(1.0, (int)e->cfg.fp16.initial_scale_power)
                                            : e->cfg.fp16.loss_scale;
        e->scaler.cur_hysteresis = (int)e->cfg.fp16.hysteresis;
        e->scaler.last_overflow_iter = -1;
    }

cleanup:
    return st;
}

/* The group over which the stages holding the same shared units (the tied embedding of
 * the first and last stages) sum their gradients: ranks at the same DP and TP position
 * of those stages. Collective over the pipeline group. */
static zinc_status engine_tied_group(zinc_engine *e)
{
    const int p = e->pp.stages, J = p * e->pp.virt;
    if (p == 1) return ZINC_OK;
    if (p > 63) {
        for (int u = 0; u < e->z.n_units; u++)
            if (e->z.units[u].shared)
                return zinc_error(ZINC_ERR_UNSUPPORTED, "pipeline.stages %d: tied parameters across more than 63 "
                                  "stages are not supported", p);
        return ZINC_OK;
    }
    uint64_t mask = 0;
    for (int u = 0; u < e->z.n_units; u++) {
        if (!e->z.units[u].shared) continue;
        uint64_t m = 0;
        for (int j = 0; j < J; j++)
            for (int i = e->bounds[j]; i < e->bounds[j + 1]; i++)
                for (int k = 0; k < e->z.layers[i].n_units; k++)
                    if (e->z.layers[i].units[k] == u) m |= 1ull << (j % p);
        if (mask && m != mask)
            return zinc_error(ZINC_ERR_UNSUPPORTED, "stage %d holds parameters tied with different sets of stages; "
                              "zinc sums tied gradients over one set per stage", e->stage);
        mask = m;
    }
    int color = mask ? __builtin_ctzll(mask) : p + e->stage, mine = mask != 0;
    zinc_comm *g = NULL;
    zinc_status st = zinc_comm_split(e->mesh->pp_group, color, e->stage, "tied", &g);
    if (st != ZINC_OK) return st;
    if (mine) e->tied_group = g;
    else zinc_comm_destroy(g);
    return ZINC_OK;
}

/* offload_optimizer.ratio: the split it made, once (rank 0), or why it does nothing. */
static void engine_report_split(const zinc_engine *e)
{
    const double r = e->cfg.zero.offload_optimizer.ratio;
    if (r >= 1 || e->cfg.zero.offload_optimizer.device == ZINC_OFFLOAD_NONE || zinc_comm_rank(e->world) != 0) return;
    if (!e->z.plan.opt_host) {
        ZINC_WARN("zero_optimization.offload_optimizer.ratio %g has no effect on %s ranks: their device memory is "
                  "host memory", r, e->dev->name);
        return;
    }
    const uint64_t all = e->mem.master + e->mem.optimizer; /* zero's split, as its memory stats count it */
    ZINC_INFO("zero_optimization.offload_optimizer.ratio %g: the optimizer state of %llu of %llu bytes a rank "
              "(%.3f) in host memory, stepped on the CPU; the rest on %s", r, (unsigned long long)e->mem.host,
              (unsigned long long)all, all ? (double)e->mem.host / (double)all : 0.0, e->dev->name);
}

zinc_status zinc_engine_open_device(const zinc_config *c, zinc_comm *world,
                                    const zinc_device **out)
{
    *out = zinc_device_cpu();
    if (c->device == ZINC_DEVICE_CPU || (c->device == ZINC_DEVICE_AUTO && !zinc_device_cuda_count())) {
        const char *strict = getenv("ZINC_STRICT_DEVICE"); /* tests: the device paths on a CPU */
        if (strict && atoi(strict) > 0) *out = zinc_device_strict();
        return ZINC_OK;
    }
    return zinc_device_cuda_open(zinc_comm_local_rank(world), out);
}

zinc_status zinc_engine_create(const zinc_engine_opts *o, zinc_engine **out)
{
    zinc_status st = ZINC_OK;
    *out = NULL;
    st = zinc_config_check(o->config); /* a struct filled through the C API */
    if (st != ZINC_OK) return st;
    zinc_engine *e = calloc(1, sizeof *e);
    if (!e) return zinc_error(ZINC_ERR_NOMEM, "engine");
    e->cfg = *o->config;
    e->world = o->world;
    e->model = o->model;
    e->aio = o->aio;
    engine_zero_opts(&e->cfg, &e->z.opt);
    /* the storage dtype, for the op table check below; the plan is made for
     * the device once it is known */
    e->z.plan.pdt = e->z.opt.pdt;

    /* the device: every rank opens its own, then all agree (one GPU may be
     * missing on one node) */
    ZINC_TRY(zinc_comm_agree(e->world, zinc_engine_open_device(&e->cfg, e->world, &e->dev)));
    { /* "auto" may find GPUs on some nodes only: one kind of device per job */
        int mine[2] = {e->dev->is_host, -e->dev->is_host}, all[2];
        ZINC_TRY(zinc_comm_all_reduce(e->world, mine, all, 2, ZINC_DTYPE_I32, ZINC_REDOP_MAX, NULL));
        if (all[0] != -all[1]) {
            st = zinc_error(ZINC_ERR_CONFIG, "device auto: some ranks see a GPU and others do "
                            "not (this rank: %s); set \"device\" to \"cpu\" or \"cuda\"",
                            e->dev->name);
            goto cleanup;
        }
    }
    e->ops = e->z.plan.pdt == ZINC_DTYPE_BF16 ? e->dev->ops_bf16 : e->dev->ops;
    if (e->ops->act != engine_act_dtype(e)) {
        st = zinc_error(ZINC_ERR_INTERNAL, "device %s: op table %s stores activations in %s, "
                        "the engine expects %s", e->dev->name, e->ops->name,
                        zinc_dtype_name(e->ops->act), zinc_dtype_name(engine_act_dtype(e)));
        goto cleanup;
    }
    if (getenv("ZINC_PROFILE_OPS") && atoi(getenv("ZINC_PROFILE_OPS")) > 0) {
        e->ops = engine_ops_profiled(e->ops, e->dev->sync);
        e->profiling = 1;
    }
    /* collectives take device buffers from here on (groups split later inherit) */
    if (!e->dev->is_host) ZINC_TRY(zinc_comm_set_device(e->world, e->dev));
    /* what is sharded and where it lives: one plan, as --estimate-memory makes it */
    ZINC_TRY(zero_plan_make(&e->z.opt, (int)e->cfg.zero.stage, e->dev->is_host ? NULL : e->dev->name,
                            &e->z.plan));
    e->z.dev = e->dev;
    e->z.ops = e->ops;
    int world = zinc_comm_size(e->world);
    ZINC_TRY(zinc_config_check_mesh(&e->cfg, world)); /* a config filled through the C API */
    ZINC_TRY(check_model_tp(&e->cfg, e->model));
    const int tp = (int)e->cfg.tp.size, pp = (int)e->cfg.pp.stages; /* TP innermost, PP outermost */
    ZINC_TRY(zinc_mesh_create(e->world, pp, world / (tp * pp), tp, &e->mesh));
    e->stage = e->mesh->pp_rank;
    e->pp = (zinc_pp_plan){.kind = (zinc_pp_kind)e->cfg.pp.schedule, .stages = pp,
                           .micro = (int)e->cfg.gradient_accumulation_steps,
                           .virt = (int)e->cfg.pp.virtual_stages};
    ZINC_TRY(zinc_pp_plan_check(&e->pp));
    if (e->pp.kind == ZINC_PP_ZERO_BUBBLE && zinc_comm_rank(e->world) == 0)
        ZINC_WARN("pipeline.schedule \"zero-bubble\": zinc's layers compute their weight gradients with the input "
                  "gradients (one backward per layer), so the weight half is not deferred and the bubble stays "
                  "near 1f1b's");
    e->tp = (zinc_tp){.group = tp > 1 ? e->mesh->tp_group : NULL, .size = tp,
                      .rank = e->mesh->tp_rank, .sequence_parallel = e->cfg.tp.sequence_parallel,
                      .ops = e->ops};
    e->z.dp = e->mesh->dp;
    e->z.dp_rank = e->mesh->dp_rank;
    e->z.tp = e->mesh->tp;
    e->z.tp_rank = e->mesh->tp_rank;
    e->z.dp_group = e->mesh->dp_group;
    e->B = (int)e->cfg.train_micro_batch_size_per_gpu;
    e->ga = (int)e->cfg.gradient_accumulation_steps;
    e->T = (int)zinc_config_seq_len(&e->cfg);
    if (e->cfg.train_batch_size != (int64_t)e->B * e->ga * e->z.dp) {
        st = zinc_error(ZINC_ERR_CONFIG, "train_batch_size %lld != micro %d * grad_accum %d * dp %d",
                        (long long)e->cfg.train_batch_size, e->B, e->ga, e->z.dp);
        goto cleanup;
    }

    /* local work that can fail on one rank alone (a swap file, memory):
     * every rank reaches the agreement, so none is left waiting */
    ZINC_TRY(zinc_comm_agree(e->world, engine_plan_local(e)));
    ZINC_TRY(zinc_comm_agree(e->world, engine_alloc_local(e)));
    ZINC_TRY(engine_tied_group(e));
    engine_report_split(e);

    /* the largest model state over ranks, kind by kind */
    int64_t mine[8] = {(int64_t)e->mem.params, (int64_t)e->mem.grads, (int64_t)e->mem.master,
                       (int64_t)e->mem.optimizer, (int64_t)e->mem.total, (int64_t)e->mem.buffers,
                       (int64_t)e->mem.nvme, (int64_t)e->mem.frozen};
    int64_t mx[8];
    ZINC_TRY(zinc_comm_all_reduce(e->world, mine, mx, 8, ZINC_DTYPE_I64, ZINC_REDOP_MAX, NULL));
    e->mem_max = (zinc_mem_stats){.params = (uint64_t)mx[0], .grads = (uint64_t)mx[1], .master = (uint64_t)mx[2],
                                  .optimizer = (uint64_t)mx[3], .total = (uint64_t)mx[4], .buffers = (uint64_t)mx[5],
                                  .nvme = (uint64_t)mx[6], .frozen = (uint64_t)mx[7]};
    *out = e;
    return ZINC_OK;
cleanup:
    zinc_engine_destroy(e);
    return st;
}

void zinc_engine_destroy(zinc_engine *e)
{
    if (!e) return;
    if (e->profiling && e->z.dp_rank == 0) engine_ops_profile_report();
    zero_delay_free(&e->z);
    zero_units_free(&e->z);
    zero_offload_close(&e->z);
    if (e->aio_owned) zinc_aio_destroy(e->aio);
    zinc_comm_destroy(e->tied_group);
    zinc_mesh_destroy(e->mesh);
    engine_free_tables(e);
    if (e->dev) {
        engine_acts_free(e);
        e->dev->free(e->dbuf[0]);
        e->dev->free(e->dbuf[1]);
        e->dev->free(e->scratch);
        e->dev->free(e->consts);
        e->dev->free(e->tokens);
        e->dev->free(e->targets);
        e->dev->free(e->pos);
        e->dev->host_free(e->htokens);
        e->dev->host_free(e->htargets);
    }
    free(e);
}

int64_t zinc_engine_n_params(const zinc_engine *e)
{
    int64_t n = 0;
    for (int i = 0; i < e->z.n_params; i++) n += e->z.params[i].numel;
    return n;
}

zinc_status engine_sync(zinc_engine *e)
{
    zinc_status st = e->dev->sync();
    if (e->profiling && st == ZINC_OK) st = engine_ops_profile_error();
    return st;
}

int zinc_engine_dp_rank(const zinc_engine *e) { return e->z.dp_rank; }
const zinc_device *zinc_engine_device(const zinc_engine *e) { return e->dev; }
int zinc_engine_dp_size(const zinc_engine *e) { return e->z.dp; }
int zinc_engine_tp_size(const zinc_engine *e) { return e->tp.size; }
int zinc_engine_pp_size(const zinc_engine *e) { return e->pp.stages; }
int zinc_engine_pp_stage(const zinc_engine *e) { return e->stage; }

static const zero_param *param_named(const zinc_engine *e, const char *name)
{
    for (int i = 0; i < e->z.n_params; i++)
        if (!strcmp(e->z.params[i].name, name)) return &e->z.params[i];
    return NULL;
}

float *zinc_engine_param_by_name(zinc_engine *e, const char *name, int64_t *numel)
{
    const zero_param *p = param_named(e, name);
    if (!p || e->z.plan.pdt != ZINC_DTYPE_F32 || e->z.units[p->unit].sharded ||
        !e->z.units[p->unit].p)
        return NULL;
    if (numel) *numel = p->numel;
    return (float *)e->z.units[p->unit].p + p->uoff;
}

float *zinc_engine_grad_by_name(zinc_engine *e, const char *name, int64_t *numel)
{
    const zero_param *p = param_named(e, name);
    if (!p || p->frozen || e->z.plan.pdt != ZINC_DTYPE_F32 || e->z.plan.stage >= 2) return NULL; /* frozen: none */
    if (numel) *numel = p->numel;
    return (float *)e->z.units[p->unit].g + p->uoff;
}

