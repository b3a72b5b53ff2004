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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/clock.h"
#include "zinc/log.h"
#include "zinc/rng.h"

static void *alloc_bytes(const zinc_engine *e, size_t n)
{
    return e->dev->alloc(n ? n : 1);
}

/* The dtype activations are stored in: bf16 in bf16 training (every
 * device's ops_bf16 table has act bf16), else fp32 (fp16 training rounds
 * fp32 activations at layer boundaries instead). */
static zinc_dtype act_dtype(const zinc_engine *e)
{
    return e->z.plan.pdt == ZINC_DTYPE_BF16 ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F32;
}

#define ACT_ALIGN(n) (((n) + 63) / 64 * 64) /* bytes: 64-byte aligned carving */

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
    int id = zero_param_add(&e->z, l->index, full, ndim, shape, tp_dim, tp_blocks, init, std);
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
        if (!strcmp(e->z.params[i].name, full_name) && e->z.params[i].unit < l->index) {
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
    zero_units_layout(&e->z);
cleanup:
    return st;
}

static void engine_free_tables(zinc_engine *e)
{
    free(e->layers);
    e->layers = NULL;
    zero_tables_free(&e->z);
}

/* Bytes of activation memory for one (B, T) micro-batch: every layer's
 * saved activations and outputs (act_total), one gradient buffer for the
 * widest layer input (dbuf, two of them are used), and the largest
 * scratch. Sets each layer's act_bytes. */
static void act_sizes(zinc_engine *e, size_t *act_total, size_t *dbuf, size_t *scratch)
{
    const zinc_dtype act = act_dtype(e);
    const size_t BT = (size_t)zinc_tp_rows(&e->tp, e->B * e->T), asz = zinc_dtype_size(act);
    size_t max_width = 0;
    *act_total = *scratch = 0;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        const zinc_layer_ops *lo = l->def->ops;
        l->act_bytes = lo->act_bytes ? lo->act_bytes(l, e->B, e->T, act) : 0;
        *act_total += ACT_ALIGN(l->act_bytes);
        if (i + 1 < e->n_layers) *act_total += ACT_ALIGN(BT * (size_t)l->n_out * asz);
        if ((size_t)l->n_in > max_width) max_width = (size_t)l->n_in;
        size_t sc = lo->scratch_bytes ? lo->scratch_bytes(l, e->B, e->T, act) : 0;
        if (sc > *scratch) *scratch = sc;
    }
    *dbuf = BT * max_width * asz;
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
    o->weight_decay = c->optimizer.weight_decay;
    o->beta1 = c->optimizer.betas[0];
    o->beta2 = c->optimizer.betas[1];
    o->eps = c->optimizer.eps;
    o->seed = (uint64_t)c->model.seed;
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

zinc_status zinc_engine_estimate_memory(const zinc_config *c, const zinc_model_def *m, int dp,
                                        int stage, zinc_mem_stats *out)
{
    if (dp < 1 || stage < 0 || stage > 3)
        return zinc_error(ZINC_ERR_INVALID_ARG, "estimate: dp %d, stage %d", dp, stage);
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
    st = engine_declare(&e);
    if (st == ZINC_OK) {
        zero_mem_stats(&e.z, out);
        if (e.B > 0 && e.T > 0) {
            size_t act, dbuf, scratch;
            act_sizes(&e, &act, &dbuf, &scratch);
            out->activations = act + 2 * dbuf + scratch;
        }
    }
    engine_free_tables(&e);
    return st;
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
static zinc_status engine_alloc_local(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    ZINC_TRY(engine_declare(e));
    for (int l = 0; l < e->n_layers; l++) /* MPI counts are int */
        if (e->z.units[l].numel > (size_t)INT32_MAX) {
            st = zinc_error(ZINC_ERR_UNSUPPORTED, "layer %d has %zu parameters; zinc handles at "
                            "most %d per layer (one collective each)", l, e->z.units[l].numel,
                            INT32_MAX);
            goto cleanup;
        }
    if (e->z.plan.opt_nvme || e->z.plan.param_nvme) {
        if (!e->aio) {
            ZINC_TRY(zinc_engine_aio_create(&e->cfg, &e->aio));
            e->aio_owned = 1;
        }
        ZINC_TRY(zero_offload_open(&e->z, e->aio, zinc_comm_rank(e->world)));
    }
    e->out = calloc((size_t)e->n_layers, sizeof *e->out);
    if (!e->out) {
        st = zinc_error(ZINC_ERR_NOMEM, "layer table");
        goto cleanup;
    }
    ZINC_TRY(zero_units_alloc(&e->z));
    zero_mem_stats(&e->z, &e->mem);

    /* activations: saved acts + outputs per layer, grads ping-pong, scratch */
    size_t BT = (size_t)e->B * e->T, act_total, dbuf, scratch;
    const size_t asz = zinc_dtype_size(act_dtype(e));
    act_sizes(e, &act_total, &dbuf, &scratch);
    e->act_slab = alloc_bytes(e, act_total);
    e->dbuf[0] = alloc_bytes(e, dbuf);
    e->dbuf[1] = alloc_bytes(e, dbuf);
    e->scratch = alloc_bytes(e, scratch);
    e->tokens = e->dev->alloc(BT * sizeof(int32_t));
    e->targets = e->dev->alloc(BT * sizeof(int32_t));
    if (!e->dev->is_host) {
        e->htokens = e->dev->host_alloc(BT * sizeof(int32_t));
        e->htargets = e->dev->host_alloc(BT * sizeof(int32_t));
    }
    if (!e->act_slab || !e->dbuf[0] || !e->dbuf[1] || !e->scratch || !e->tokens || !e->targets ||
        (!e->dev->is_host && (!e->htokens || !e->htargets))) {
        st = zinc_error(ZINC_ERR_NOMEM,
                        "activations of micro-batch %d x %d tokens on %s: %zu + 2 x %zu + %zu bytes "
                        "(saved, gradients, scratch): %s",
                        e->B, e->T, e->dev->name, act_total, dbuf, scratch, zinc_last_error());
        goto cleanup;
    }
    char *a = e->act_slab;
    for (int i = 0; i < e->n_layers; i++) {
        zinc_layer *l = &e->layers[i];
        l->acts = a;
        a += ACT_ALIGN(l->act_bytes);
        if (i + 1 < e->n_layers) {
            e->out[i] = a; /* this rank's rows of it (sequence parallelism) */
            a += ACT_ALIGN((size_t)zinc_tp_rows(&e->tp, (int)BT) * l->n_out * asz);
        }
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
    if (e->ops->act != act_dtype(e)) {
        st = zinc_error(ZINC_ERR_INTERNAL, "device %s: op table %s stores activations in %s, "
                        "the engine expects %s", e->dev->name, e->ops->name,
                        zinc_dtype_name(e->ops->act), zinc_dtype_name(act_dtype(e)));
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
    if (e->cfg.pp.stages > 1) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "pipeline.stages %lld: the engine does not run pipeline stages yet",
                        (long long)e->cfg.pp.stages);
        goto cleanup;
    }
    const int tp = (int)e->cfg.tp.size; /* TP innermost: adjacent ranks */
    ZINC_TRY(zinc_mesh_create(e->world, 1, world / tp, tp, &e->mesh));
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
    ZINC_TRY(zinc_comm_agree(e->world, engine_alloc_local(e)));

    /* the largest model state over ranks, kind by kind */
    int64_t mine[7] = {(int64_t)e->mem.params, (int64_t)e->mem.grads, (int64_t)e->mem.master,
                       (int64_t)e->mem.optimizer, (int64_t)e->mem.total, (int64_t)e->mem.buffers,
                       (int64_t)e->mem.nvme};
    int64_t mx[7];
    ZINC_TRY(zinc_comm_all_reduce(e->mesh->dp_group, mine, mx, 7, ZINC_DTYPE_I64, ZINC_REDOP_MAX,
                                  NULL));
    e->mem_max = (zinc_mem_stats){(uint64_t)mx[0], (uint64_t)mx[1], (uint64_t)mx[2],
                                  (uint64_t)mx[3], (uint64_t)mx[4], (uint64_t)mx[5],
                                  (uint64_t)mx[6], 0};
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
    zero_units_free(&e->z);
    zero_offload_close(&e->z);
    if (e->aio_owned) zinc_aio_destroy(e->aio);
    zinc_mesh_destroy(e->mesh);
    engine_free_tables(e);
    free(e->out);
    if (e->dev) {
        e->dev->free(e->act_slab);
        e->dev->free(e->dbuf[0]);
        e->dev->free(e->dbuf[1]);
        e->dev->free(e->scratch);
        e->dev->free(e->tokens);
        e->dev->free(e->targets);
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
    if (!p || e->z.plan.pdt != ZINC_DTYPE_F32 || e->z.plan.stage >= 2) return NULL;
    if (numel) *numel = p->numel;
    return (float *)e->z.units[p->unit].g + p->uoff;
}

/* ---------------------------------------------------------------- the step */

/* Rounds fp32 activations to the storage precision (fp16 training's
 * numerics; bf16 activations are stored in bf16 already). */
static void round_storage(const zinc_engine *e, void *x, size_t n)
{
    if (e->z.plan.pdt != ZINC_DTYPE_F32 && e->ops->act == ZINC_DTYPE_F32)
        e->ops->round_to(x, e->z.plan.pdt, n);
}

/* What a layer sees while it runs (zinc_ctx), for a loss gradient dloss. */
static zinc_ctx engine_ctx(const zinc_engine *e, float dloss)
{
    return (zinc_ctx){.ops = e->ops, .B = e->B, .T = e->T, .tokens = e->tokens,
                      .targets = e->targets, .dloss = dloss, .scratch = e->scratch, .tp = &e->tp};
}

/* Copies a micro-batch the data loader wrote to host memory onto the device. */
static void batch_to_device(zinc_engine *e, const int32_t *tok, const int32_t *tgt)
{
    size_t bytes = (size_t)e->B * e->T * sizeof(int32_t);
    e->dev->copy(e->tokens, tok, bytes);
    e->dev->copy(e->targets, tgt, bytes);
}

/* The next micro-batch of this rank, from global sample first. */
static zinc_status batch_load(zinc_engine *e, const zinc_data *data, uint64_t first)
{
    int32_t *tok = e->htokens ? e->htokens : e->tokens;
    int32_t *tgt = e->htargets ? e->htargets : e->targets;
    zinc_status st = zinc_data_get(data, first, e->B, tok, tgt);
    if (st == ZINC_OK && e->htokens) batch_to_device(e, tok, tgt);
    return st;
}

/* A phase boundary for wall_clock_breakdown: the device's queued work is
 * waited for first (as DeepSpeed's timers synchronize), so each phase gets
 * its own device time; without the breakdown nothing waits. */
static zinc_status phase_ms(zinc_engine *e, double *t)
{
    zinc_status st = e->cfg.wall_clock_breakdown ? engine_sync(e) : ZINC_OK;
    *t = zinc_now_ms();
    return st;
}

/* Forward and (if backward) backward of one micro-batch; adds its loss sum
 * to *loss_sum. */
static zinc_status micro_step(zinc_engine *e, zinc_ctx *c, double *loss_sum, int backward)
{
    zinc_status st = ZINC_OK;
    size_t BT = (size_t)zinc_tp_rows(&e->tp, e->B * e->T); /* rows between layers */
    int L = e->n_layers;
    c->loss_sum = 0.0;
    const void *x = e->tokens;
    double t0 = zinc_now_ms();
    for (int i = 0; i < L; i++) {
        zinc_layer *l = &e->layers[i];
        ZINC_TRY(zero_forward_begin(&e->z, i, backward));
        ZINC_TRY(l->def->ops->forward(l, c, x, e->out[i]));
        if (e->out[i]) round_storage(e, e->out[i], BT * (size_t)l->n_out);
        zero_forward_end(&e->z, i);
        x = e->out[i];
    }
    double t1;
    ZINC_TRY(phase_ms(e, &t1));
    e->t_fwd += t1 - t0;
    const void *dy = NULL;
    for (int i = backward ? L - 1 : -1; i >= 0; i--) {
        zinc_layer *l = &e->layers[i];
        ZINC_TRY(zero_backward_begin(&e->z, i));
        void *dx = i > 0 ? e->dbuf[i & 1] : NULL;
        if (dx) e->ops->zero(dx, BT * (size_t)l->n_in * zinc_dtype_size(e->ops->act));
        const void *xi = i > 0 ? (const void *)e->out[i - 1] : (const void *)e->tokens;
        ZINC_TRY(l->def->ops->backward(l, c, xi, dy, dx));
        if (dx) round_storage(e, dx, BT * (size_t)l->n_in);
        ZINC_TRY(zero_backward_end(&e->z, i));
        dy = dx;
    }
    ZINC_TRY(zero_backward_done(&e->z));
    double t2;
    ZINC_TRY(phase_ms(e, &t2));
    e->t_bwd += t2 - t1;
    *loss_sum += c->loss_sum;
cleanup:
    zero_micro_end(&e->z);
    return st;
}

zinc_status zinc_engine_loss_and_grad(zinc_engine *e, const int32_t *tokens,
                                      const int32_t *targets, double *loss)
{
    if (e->z.plan.stage != 0 || e->z.plan.pdt != ZINC_DTYPE_F32)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "loss_and_grad: fp32 at ZeRO stage 0 only");
    size_t BT = (size_t)e->B * e->T;
    batch_to_device(e, tokens, targets);
    zero_grads_zero(&e->z);
    zinc_ctx c = engine_ctx(e, 1.0f / (float)BT);
    double sum = 0.0;
    zinc_status st = micro_step(e, &c, &sum, 1);
    if (st == ZINC_OK) st = engine_sync(e);
    *loss = sum / (double)BT;
    return st;
}

zinc_status zinc_engine_eval(zinc_engine *e, const zinc_data *data, int64_t first_sample,
                             int n_batches, double *loss)
{
    zinc_status st = ZINC_OK;
    if (n_batches < 1 || first_sample < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "eval: %d batches from sample %lld", n_batches,
                          (long long)first_sample);
    zinc_ctx c = engine_ctx(e, 0.0f);
    double sum = 0.0;
    for (int b = 0; b < n_batches; b++)
        for (int m = 0; m < e->ga; m++) {
            uint64_t first = (uint64_t)first_sample + (uint64_t)b * e->cfg.train_batch_size +
                             (uint64_t)m * e->B * e->z.dp + (uint64_t)e->z.dp_rank * e->B;
            ZINC_TRY(batch_load(e, data, first));
            ZINC_TRY(micro_step(e, &c, &sum, 0));
        }
    ZINC_TRY(engine_sync(e));
    if (e->z.dp > 1)
        ZINC_TRY(zinc_comm_all_reduce(e->mesh->dp_group, &sum, &sum, 1, ZINC_DTYPE_F64,
                                      ZINC_REDOP_SUM, NULL));
    *loss = sum / ((double)n_batches * e->cfg.train_batch_size * e->T);
cleanup:
    return st;
}

/* DeepSpeed's DynamicLossScaler.update_scale. */
static void scaler_update(engine_scaler *s, const zinc_config *c, int overflow)
{
    if (!s->dynamic) return;
    if (overflow) {
        if (c->fp16.hysteresis == 1 || s->cur_hysteresis == 1)
            s->scale = fmax(s->scale / 2.0, c->fp16.min_loss_scale);
        else
            s->cur_hysteresis--;
        s->last_overflow_iter = s->cur_iter;
    } else if ((s->cur_iter - s->last_overflow_iter) % c->fp16.loss_scale_window == 0) {
        s->cur_hysteresis = (int)c->fp16.hysteresis;
        s->scale *= 2.0;
    }
    s->cur_iter++;
}

zinc_status zinc_engine_train_batch(zinc_engine *e, const zinc_data *data, zinc_step_stats *s)
{
    zinc_status st = ZINC_OK;
    const zinc_config *cfg = &e->cfg;
    zinc_comm *dpg = e->mesh->dp_group;
    double t0 = zinc_now_ms();
    zinc_comm_reset_bytes(dpg);
    if (e->tp.group) zinc_comm_reset_bytes(e->tp.group);
    e->dev->mem_reset_peak();

    zero_grads_zero(&e->z);
    e->t_fwd = e->t_bwd = e->t_reduce = e->t_opt = e->z.t_opt_io = 0.0;
    double scale = e->scaler.scale;
    zinc_ctx c = engine_ctx(e, (float)(scale / ((double)e->B * e->T * e->ga * e->z.dp)));
    double loss_sum = 0.0;
    for (int m = 0; m < e->ga; m++) {
        uint64_t first = (uint64_t)e->samples + (uint64_t)m * e->B * e->z.dp +
                         (uint64_t)e->z.dp_rank * e->B;
        ZINC_TRY(batch_load(e, data, first));
        ZINC_TRY(micro_step(e, &c, &loss_sum, 1));
    }
    double tr = zinc_now_ms();
    ZINC_TRY(zero_reduce_boundary(&e->z));
    zero_fault_nan(&e->z, e->step);

    /* loss and global grad norm: one all-reduce of (loss, sum of squares) */
    double red[2] = {loss_sum, 0.0}, sq[2];
    ZINC_TRY(zero_grad_sumsq(&e->z, sq));
    /* each parameter's squares once: TP-split ones summed over the TP group,
     * replicated ones (the same on every TP rank) taken once */
    if (e->tp.size > 1)
        ZINC_TRY(zinc_comm_all_reduce(e->tp.group, &sq[0], &sq[0], 1, ZINC_DTYPE_F64,
                                      ZINC_REDOP_SUM, NULL));
    red[1] = sq[0] + sq[1];
    if (e->z.dp > 1) {
        if (e->z.plan.stage == 0) /* whole grads everywhere: only the loss needs summing */
            ZINC_TRY(zinc_comm_all_reduce(dpg, red, red, 1, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL));
        else
            ZINC_TRY(zinc_comm_all_reduce(dpg, red, red, 2, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL));
    }
    double tr_end;
    ZINC_TRY(phase_ms(e, &tr_end));
    e->t_reduce = tr_end - tr;
    double loss = red[0] / ((double)cfg->train_batch_size * e->T);
    double norm = sqrt(red[1]) / scale;
    int overflow = !isfinite(norm) || !isfinite(loss);
    if (overflow && !cfg->fp16.enabled) { /* train.on_nan */
        int p;
        ZINC_TRY(zero_first_nonfinite(&e->z, &p));
        char what[160];
        if (p >= 0) snprintf(what, sizeof what, "the gradient of %s is not finite", e->z.params[p].name);
        else snprintf(what, sizeof what, "the loss is not finite");
        e->nonfinite_run++;
        if (cfg->train.on_nan == ZINC_ON_NAN_ERROR) {
            st = zinc_error(ZINC_ERR_INTERNAL, "step %lld: %s (grad norm %g, loss %g); lower the "
                            "learning rate or check the data, or set train.on_nan \"skip\"",
                            (long long)e->step + 1, what, norm, loss);
            goto cleanup;
        }
        if (e->nonfinite_run > cfg->train.max_skipped) {
            st = zinc_error(ZINC_ERR_INTERNAL, "step %lld: %s, and the %lld steps before it were "
                            "skipped too (train.max_skipped %lld); stopping",
                            (long long)e->step + 1, what, (long long)e->nonfinite_run - 1,
                            (long long)cfg->train.max_skipped);
            goto cleanup;
        }
        if (e->z.dp_rank == 0)
            ZINC_WARN("step %lld: %s (grad norm %g, loss %g); update skipped (train.on_nan "
                      "\"skip\", %lld in a row, at most %lld)", (long long)e->step + 1, what, norm,
                      loss, (long long)e->nonfinite_run, (long long)cfg->train.max_skipped);
    } else {
        e->nonfinite_run = 0;
    }
    if (cfg->fp16.enabled) scaler_update(&e->scaler, cfg, overflow);
    double lr = zinc_sched_lr(cfg, e->opt_step);
    if (overflow) {
        if (e->z.dp_rank == 0 && cfg->fp16.enabled)
            ZINC_INFO("step %lld: fp16 gradient overflow, skipping the update; loss scale %g -> %g",
                      (long long)e->step + 1, scale, e->scaler.scale);
    } else {
        double coef = 1.0 / scale;
        if (cfg->gradient_clipping > 0 && norm > cfg->gradient_clipping)
            coef *= cfg->gradient_clipping / (norm + 1e-6);
        e->opt_step++;
        double to = zinc_now_ms();
        ZINC_TRY(zero_optimizer_step(&e->z, lr, coef, (int)e->opt_step));
        double to_end;
        ZINC_TRY(phase_ms(e, &to_end));
        e->t_opt = to_end - to;
    }
    ZINC_TRY(engine_sync(e)); /* device time belongs to the step; faults surface here */
    if (cfg->wall_clock_breakdown && e->z.dp_rank == 0)
        ZINC_INFO("step %lld time (ms): forward %.1f | backward %.1f | reduce+norm %.1f | "
                  "optimizer %.1f (waiting on NVMe %.1f)", (long long)e->step + 1, e->t_fwd,
                  e->t_bwd, e->t_reduce, e->t_opt, e->z.t_opt_io);
    e->step++;
    e->samples += cfg->train_batch_size;

    double ms = zinc_now_ms() - t0;
    memset(s, 0, sizeof *s);
    s->step = e->step;
    s->loss = loss;
    s->lr = lr;
    s->grad_norm = norm;
    s->step_ms = ms;
    s->tokens_per_s = (double)cfg->train_batch_size * e->T / (ms / 1e3);
    s->model_tflops = e->model->flops_per_token * s->tokens_per_s / 1e12;
    e->dev->mem(NULL, &s->dev_mem_peak, NULL);
    s->model_state_bytes = e->mem.total;
    s->model_state_bytes_max = e->mem_max.total;
    s->mem = e->mem;
    s->mem_max = e->mem_max;
    s->comm_bytes = zinc_comm_bytes(dpg);
    for (int k = 0; k < ZINC_COMM_N_OPS; k++) s->comm_bytes_op[k] = zinc_comm_bytes_op(dpg, k);
    if (e->tp.group) {
        s->tp_comm_bytes = zinc_comm_bytes(e->tp.group);
        for (int k = 0; k < ZINC_COMM_N_OPS; k++)
            s->tp_comm_bytes_op[k] = zinc_comm_bytes_op(e->tp.group, k);
    }
    s->samples_seen = e->samples;
    s->loss_scale = scale;
    s->skipped = overflow;
cleanup:
    return st;
}
