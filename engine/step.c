/* step.c - the training step, run as a pipeline schedule (zinc/pipeline.h).
 *
 * A step is the schedule of this rank's stage run by the executor
 * (pipeline/executor.c) over the stage's layers: without pipeline parallelism the
 * one-stage, one-chunk schedule (1f1b: forward and backward of each micro-batch in
 * turn, which is plain gradient accumulation). The executor owns the activations
 * that cross stages; the engine owns, per (micro-batch, chunk) in flight, a slab
 * with the saved activations and inner outputs of the chunk's layers, and the
 * tokens and targets of every micro-batch of the step.
 *
 * Around each layer the ZeRO hooks run as before (zero/policy.c); after each
 * chunk's backward the micro-batch's working copies are dropped. At the
 * accumulation boundary (the schedule's REDUCE_GRADS): the DP reduction, and the
 * sum of shared units' gradients over the stages holding them (the tied
 * embedding of the first and last stages). Then, after the list: the loss (the
 * last stage's) and the squared grad norm (each stage's own units) summed over
 * TP, DP and the pipeline, fp16 overflow check and loss-scale update, clipping,
 * AdamW on each stage's shards. The loss gradient is scaled by
 * loss_scale/(B*T*ga*dp) per token so the summed gradient is the mean over the
 * global batch, whatever the layout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/clock.h"
#include "zinc/log.h"
#include "zinc/rng.h"
#include "zinc/sysmem.h"

#define TRY_RET(expr)                          \
    do {                                       \
        zinc_status try_st_ = (expr);          \
        if (try_st_ != ZINC_OK) return try_st_; \
    } while (0)

/* Rounds fp32 activations to the storage precision (fp16 training's
 * numerics; bf16 activations are stored in bf16 already). */
static void round_storage(const zinc_engine *e, void *x, size_t n)
{
    if (e->z.plan.pdt != ZINC_DTYPE_F32 && e->ops->act == ZINC_DTYPE_F32)
        e->ops->round_to(x, e->z.plan.pdt, n);
}

/* What a layer sees while it runs micro-batch mb of the step (zinc_ctx). */
static zinc_ctx engine_ctx(const zinc_engine *e, int mb, float dloss, int train)
{
    const size_t BT = (size_t)e->B * e->T;
    zinc_rng r; /* the micro-batch's stream: (data seed; step, micro-batch, DP rank) */
    zinc_rng_seed(&r, (uint64_t)e->cfg.data.seed,
                  ((uint64_t)e->step * 65536u + (uint64_t)mb) * 65536u + (uint64_t)e->z.dp_rank);
    return (zinc_ctx){.ops = e->ops, .B = e->B, .T = e->T, .tokens = e->tokens + (size_t)mb * BT,
                      .targets = e->targets + (size_t)mb * BT, .pos = e->docs ? e->pos + (size_t)mb * BT : NULL,
                      .dloss = dloss, .scratch = e->scratch,
                      .tp = &e->tp, .consts = e->consts, .train = train, .seed = zinc_rng_u64(&r)};
}

/* Copies a micro-batch the data loader wrote to host memory onto the device, as micro-batch mb. */
static void batch_to_device(zinc_engine *e, int mb, const int32_t *tok, const int32_t *tgt)
{
    const size_t BT = (size_t)e->B * e->T, bytes = BT * sizeof(int32_t);
    e->dev->copy(e->tokens + (size_t)mb * BT, tok, bytes);
    e->dev->copy(e->targets + (size_t)mb * BT, tgt, bytes);
}

/* The first of this rank's B samples in micro-batch mb of the global batch from sample first. */
static uint64_t micro_first(const zinc_engine *e, uint64_t first, int mb)
{
    return first + (uint64_t)mb * e->B * e->z.dp + (uint64_t)e->z.dp_rank * e->B;
}

/* This rank's B samples from global sample first, as micro-batch mb. */
static zinc_status batch_load(zinc_engine *e, const zinc_data *data, uint64_t first, int mb)
{
    const size_t BT = (size_t)e->B * e->T;
    int32_t *tok = e->htokens ? e->htokens : e->tokens + (size_t)mb * BT;
    int32_t *tgt = e->htargets ? e->htargets : e->targets + (size_t)mb * BT;
    zinc_status st = zinc_data_get_docs(data, first, e->B, tok, tgt, e->docs ? e->pos + (size_t)mb * BT : NULL);
    if (st == ZINC_OK && e->htokens) batch_to_device(e, mb, tok, tgt);
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

/* ---------------------------------------------------------------- one chunk */

/* Forward of model chunk j's layers on micro-batch mb: in is the chunk's input (NULL:
 * the tokens), out its output (NULL: the last chunk, whose loss layer adds to
 * e->loss_acc); the layers' saved activations go to slab (acts.c: checkpointed layers'
 * to the shared recompute buffer). */
static zinc_status chunk_forward(zinc_engine *e, int mb, int j, engine_slab slab, const void *in, void *out,
                                 int backward)
{
    zinc_status st = ZINC_OK;
    const size_t rows = (size_t)zinc_tp_rows(&e->tp, e->B * e->T);
    zinc_ctx c = engine_ctx(e, mb, e->step_dloss, backward);
    const void *x = in ? in : (const void *)c.tokens;
    double t0 = zinc_now_ms(), t1;
    for (int i = e->bounds[j]; i < e->bounds[j + 1]; i++) {
        zinc_layer *l = &e->layers[i];
        void *y = engine_act_out(e, slab, i, out);
        l->acts = engine_act_saved(e, slab, i);
        ZINC_TRY(zero_forward_begin(&e->z, i, backward));
        ZINC_TRY(l->def->ops->forward(l, &c, x, y));
        if (y) round_storage(e, y, rows * (size_t)l->n_out);
        zero_forward_end(&e->z, i);
        if (backward) ZINC_TRY(engine_act_keep(e, slab, i, y));
        x = y;
    }
    e->loss_acc += c.loss_sum;
    ZINC_TRY(phase_ms(e, &t1));
    e->t_fwd += t1 - t0;
    return ZINC_OK;
cleanup:
    zero_micro_end(&e->z);
    return st;
}

/* Activation checkpointing: the forward of layer last's group again, from the group's
 * input, into the recompute buffer (the same input and random stream: the same
 * activations, bit for bit), its units kept for the backward that follows. */
static zinc_status group_recompute(zinc_engine *e, zinc_ctx *c, engine_slab slab, int last, int lo, const void *in)
{
    const size_t rows = (size_t)zinc_tp_rows(&e->tp, e->B * e->T);
    const int first = e->ac.first[last];
    zinc_status st;
    const void *x = engine_act_input(e, slab, first, lo, in, &st);
    for (int k = first; st == ZINC_OK && k <= last; k++) {
        zinc_layer *l = &e->layers[k];
        void *y = engine_act_recompute_out(e, k);
        l->acts = engine_act_saved(e, slab, k);
        TRY_RET(zero_recompute_begin(&e->z, k));
        TRY_RET(l->def->ops->forward(l, c, x, y));
        round_storage(e, y, rows * (size_t)l->n_out);
        x = y;
    }
    return st;
}

/* Backward of model chunk j's layers on micro-batch mb: gout is the gradient of the
 * chunk's output (NULL for the last chunk), gin where its input's gradient goes (NULL
 * for chunk 0); in and slab as its forward had them. Drops the micro-batch's working
 * copies after. */
static zinc_status chunk_backward(zinc_engine *e, int mb, int j, engine_slab slab, const void *in, const void *gout,
                                  void *gin)
{
    zinc_status st = ZINC_OK;
    const size_t rows = (size_t)zinc_tp_rows(&e->tp, e->B * e->T); /* rows between layers */
    const int lo = e->bounds[j];
    zinc_ctx c = engine_ctx(e, mb, e->step_dloss, 1);
    const void *dy = gout, *x0 = in ? in : (const void *)c.tokens;
    double t0 = zinc_now_ms(), t1;
    e->ac.ckin_of = -1; /* a loaded checkpoint is this micro-batch's only */
    for (int i = e->bounds[j + 1] - 1; i >= lo; i--) {
        zinc_layer *l = &e->layers[i];
        if (e->ac.on && e->ac.first[i] >= 0 && e->ac.last[i] == i) {
            double r0, r1;
            ZINC_TRY(phase_ms(e, &r0)); /* wall_clock_breakdown: the recompute's own device time */
            ZINC_TRY(group_recompute(e, &c, slab, i, lo, x0));
            ZINC_TRY(phase_ms(e, &r1));
            e->t_recompute += r1 - r0;
        }
        l->acts = engine_act_saved(e, slab, i);
        ZINC_TRY(zero_backward_begin(&e->z, i));
        void *dx = i > lo ? e->dbuf[i & 1] : gin;
        if (dx) e->ops->zero(dx, rows * (size_t)l->n_in * zinc_dtype_size(e->ops->act));
        const void *xi = engine_act_input(e, slab, i, lo, x0, &st);
        if (st != ZINC_OK) goto cleanup;
        ZINC_TRY(l->def->ops->backward(l, &c, xi, dy, dx));
        if (dx) round_storage(e, dx, rows * (size_t)l->n_in);
        ZINC_TRY(zero_backward_end(&e->z, i));
        dy = dx;
    }
    ZINC_TRY(zero_backward_done(&e->z));
    ZINC_TRY(phase_ms(e, &t1));
    e->t_bwd += t1 - t0;
cleanup:
    zero_micro_end(&e->z);
    return st;
}

/* ---------------------------------------------------------------- the stage's callbacks */

static zinc_status cb_load(void *u, int mb, int chunk)
{
    zinc_engine *e = u;
    const int J = e->pp.stages * e->pp.virt, j = chunk * e->pp.stages + e->stage;
    if (J > 1 && j == J - 1 && e->pp.stages == 1) return ZINC_OK; /* chunk 0 of this stage loaded it */
    uint64_t first = micro_first(e, (uint64_t)e->samples, mb);
    return batch_load(e, e->step_data, first, mb);
}

static zinc_status cb_forward(void *u, int mb, int chunk, const void *in, void *out)
{
    zinc_engine *e = u;
    engine_slab slab;
    TRY_RET(engine_slab_take(e, mb * e->pp.virt + chunk, &slab));
    return chunk_forward(e, mb, chunk * e->pp.stages + e->stage, slab, in, out, 1);
}

/* part 2 (zero-bubble's weight part) has nothing left to do: the layers compute their
 * weight gradients with the input gradient (zinc_layer_ops has one backward) */
static zinc_status cb_backward(void *u, int mb, int chunk, const void *in, const void *gout, void *gin, int part)
{
    zinc_engine *e = u;
    if (part == 2) return ZINC_OK;
    const int k = mb * e->pp.virt + chunk;
    engine_slab slab;
    TRY_RET(engine_slab_take(e, k, &slab));
    zinc_status st = chunk_backward(e, mb, chunk * e->pp.stages + e->stage, slab, in, gout, gin);
    engine_slab_give(e, k);
    return st;
}

static zinc_status cb_reduce(void *u)
{
    zinc_engine *e = u;
    e->t_reduce = -zinc_now_ms(); /* the boundary's time, completed after the norm */
    TRY_RET(zero_reduce_boundary(&e->z));
    zero_fault_nan(&e->z, e->step);
    if (e->tied_group) TRY_RET(zero_shared_reduce(&e->z, e->tied_group));
    return ZINC_OK;
}

/* the update needs the norm over every stage: the engine steps after the list */
static zinc_status cb_step(void *u)
{
    (void)u;
    return ZINC_OK;
}

static void *cb_alloc(void *u, size_t bytes) { return ((zinc_engine *)u)->dev->alloc(bytes); }
static void cb_free(void *u, void *p) { ((zinc_engine *)u)->dev->free(p); }

/* ---------------------------------------------------------------- entry points */

/* Takes the data's kind for the coming batches (e->docs, e->masked) and counts the targets of
 * n_batches global batches from sample first into *count: what the mean loss divides by (every
 * token of every sample without masks, else only the targets the masks keep). Each rank counts
 * its own samples and the DP group sums the counts (integers: exact in a double). */
static zinc_status batches_begin(zinc_engine *e, const zinc_data *data, uint64_t first, int n_batches,
                                 double *count)
{
    const uint64_t tbs = (uint64_t)e->cfg.train_batch_size;
    e->docs = zinc_data_has_docs(data);
    e->masked = zinc_data_has_masks(data);
    if (e->docs && !e->dev->is_host)
        return zinc_error(ZINC_ERR_UNSUPPORTED,
                          "data: the shards hold documents with loss masks (version 3), whose attention "
                          "stays inside each document: not done on %s yet (cpu ranks train them)",
                          e->dev->name);
    *count = (double)n_batches * (double)tbs * e->T;
    if (!e->masked) return ZINC_OK;
    *count = 0.0;
    for (int b = 0; b < n_batches; b++)
        for (int m = 0; m < e->ga; m++) {
            uint64_t c, f = micro_first(e, first + (uint64_t)b * tbs, m);
            TRY_RET(zinc_data_count_targets(data, f, (uint64_t)e->B, &c));
            *count += (double)c;
        }
    if (e->z.dp > 1)
        TRY_RET(zinc_comm_all_reduce(e->mesh->dp_group, count, count, 1, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL));
    return ZINC_OK;
}

zinc_status zinc_engine_loss_and_grad_docs(zinc_engine *e, const int32_t *tokens, const int32_t *targets,
                                           const int32_t *pos, double *loss)
{
    if (e->z.plan.stage != 0 || e->z.plan.pdt != ZINC_DTYPE_F32 || e->pp.stages * e->pp.virt != 1)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "loss_and_grad: fp32 at ZeRO stage 0 without pipeline stages only");
    if (pos && !e->dev->is_host)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "loss_and_grad: positions within documents on %s", e->dev->name);
    size_t BT = (size_t)e->B * e->T, n = BT;
    e->docs = e->masked = pos != NULL;
    if (pos) {
        memcpy(e->pos, pos, BT * sizeof *pos);
        n = 0;
        for (size_t i = 0; i < BT; i++) n += targets[i] >= 0;
    }
    batch_to_device(e, 0, tokens, targets);
    zero_grads_zero(&e->z);
    e->step_dloss = !pos ? 1.0f / (float)BT : n ? (float)(1.0 / (double)n) : 0.0f;
    e->loss_acc = 0.0;
    zinc_status st = chunk_forward(e, 0, 0, engine_slab0(e), NULL, NULL, 1);
    if (st == ZINC_OK) st = chunk_backward(e, 0, 0, engine_slab0(e), NULL, NULL, NULL);
    if (st == ZINC_OK) st = engine_sync(e);
    *loss = n ? e->loss_acc / (double)n : 0.0;
    return st;
}

zinc_status zinc_engine_loss_and_grad(zinc_engine *e, const int32_t *tokens,
                                      const int32_t *targets, double *loss)
{
    return zinc_engine_loss_and_grad_docs(e, tokens, targets, NULL, loss);
}

/* Forward of one micro-batch through every stage's chunks in model order: each chunk's
 * output goes to the next chunk's stage (blocking point-to-point: every rank walks the
 * chunks in the same order, so each send meets its receive). */
static zinc_status eval_micro(zinc_engine *e, void *buf[2])
{
    const int p = e->pp.stages, J = p * e->pp.virt;
    const zinc_dtype act = engine_act_dtype(e);
    int cur = 0; /* buf[cur]: the input of the next chunk this stage runs */
    for (int j = 0; j < J; j++) {
        if (j % p != e->stage) continue;
        if (j > 0 && p > 1)
            TRY_RET(zinc_comm_recv(e->mesh->pp_group, buf[cur], e->io_elems, act, (j - 1) % p, j, NULL));
        void *out = j + 1 < J ? buf[1 - cur] : NULL;
        TRY_RET(chunk_forward(e, 0, j, engine_slab0(e), j > 0 ? buf[cur] : NULL, out, 0));
        zero_micro_end(&e->z);
        if (out && p > 1) TRY_RET(zinc_comm_send(e->mesh->pp_group, out, e->io_elems, act, (j + 1) % p, j + 1, NULL));
        else if (out) cur = 1 - cur; /* one stage: the next chunk's input */
    }
    return ZINC_OK;
}

zinc_status zinc_engine_eval(zinc_engine *e, const zinc_data *data, int64_t first_sample,
                             int n_batches, double *loss)
{
    zinc_status st = ZINC_OK;
    void *buf[2] = {NULL, NULL};
    if (n_batches < 1 || first_sample < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "eval: %d batches from sample %lld", n_batches,
                          (long long)first_sample);
    const size_t io = e->io_elems * zinc_dtype_size(engine_act_dtype(e));
    if (e->pp.stages * e->pp.virt > 1) {
        buf[0] = e->dev->alloc(io ? io : 1);
        buf[1] = e->dev->alloc(io ? io : 1);
        if (!buf[0] || !buf[1]) {
            st = zinc_error(ZINC_ERR_NOMEM, "eval: activation buffers of %zu bytes", io);
            goto cleanup;
        }
    }
    double n_targets = 0.0;
    ZINC_TRY(batches_begin(e, data, (uint64_t)first_sample, n_batches, &n_targets));
    e->step_dloss = 0.0f;
    e->loss_acc = 0.0;
    for (int b = 0; b < n_batches; b++)
        for (int m = 0; m < e->ga; m++) {
            uint64_t first = micro_first(e, (uint64_t)first_sample + (uint64_t)b * e->cfg.train_batch_size, m);
            ZINC_TRY(batch_load(e, data, first, 0));
            ZINC_TRY(eval_micro(e, buf));
        }
    ZINC_TRY(engine_sync(e));
    double sum = e->loss_acc; /* the last stage's */
    if (e->z.dp > 1)
        ZINC_TRY(zinc_comm_all_reduce(e->mesh->dp_group, &sum, &sum, 1, ZINC_DTYPE_F64,
                                      ZINC_REDOP_SUM, NULL));
    if (e->pp.stages > 1)
        ZINC_TRY(zinc_comm_all_reduce(e->mesh->pp_group, &sum, &sum, 1, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL));
    *loss = n_targets > 0 ? sum / n_targets : 0.0;
cleanup:
    if (buf[0]) e->dev->free(buf[0]);
    if (buf[1]) e->dev->free(buf[1]);
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
    zinc_comm *dpg = e->mesh->dp_group, *ppg = e->pp.stages > 1 ? e->mesh->pp_group : NULL;
    double t0 = zinc_now_ms();
    uint64_t io0[2];
    zinc_proc_io(&io0[0], &io0[1]);
    zinc_comm_reset_bytes(dpg);
    if (e->tp.group) zinc_comm_reset_bytes(e->tp.group);
    if (ppg) zinc_comm_reset_bytes(ppg);
    e->dev->mem_reset_peak();

    zero_grads_zero(&e->z);
    e->t_fwd = e->t_bwd = e->t_recompute = e->t_reduce = e->t_opt = e->z.t_opt_io = 0.0;
    double scale = e->scaler.scale;
    e->step_data = data;
    double n_targets = 0.0;
    ZINC_TRY(batches_begin(e, data, (uint64_t)e->samples, 1, &n_targets));
    e->step_dloss = !e->masked ? (float)(scale / ((double)e->B * e->T * e->ga * e->z.dp))
                    : n_targets > 0 ? (float)(scale / n_targets) : 0.0f;
    e->loss_acc = 0.0;
    const zinc_pp_stage_ops ops = {.u = e, .act_elems = e->io_elems, .act_dtype = engine_act_dtype(e),
                                   .load = cb_load, .forward = cb_forward, .backward = cb_backward,
                                   .reduce_grads = cb_reduce, .optimizer_step = cb_step,
                                   .buf_alloc = cb_alloc, .buf_free = cb_free};
    st = zinc_pp_execute(&e->pp, ppg, e->stage, &ops, &e->pst);
    for (int k = 0; k < e->pp.micro * e->pp.virt; k++) engine_slab_give(e, k); /* after an error too */
    if (st != ZINC_OK) goto cleanup;
    double loss_sum = e->loss_acc;

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
    /* each stage its own layers' squares, the last stage the loss */
    if (ppg) ZINC_TRY(zinc_comm_all_reduce(ppg, red, red, 2, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL));
    double tr_end;
    ZINC_TRY(phase_ms(e, &tr_end));
    e->t_reduce += tr_end;
    double loss = !e->masked ? red[0] / ((double)cfg->train_batch_size * e->T)
                  : n_targets > 0 ? red[0] / n_targets : 0.0; /* a batch with no target: 0 */
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
        ZINC_INFO("step %lld time (ms): forward %.1f | backward %.1f (recompute %.1f) | reduce+norm %.1f | "
                  "optimizer %.1f (waiting on NVMe %.1f)", (long long)e->step + 1, e->t_fwd,
                  e->t_bwd, e->t_recompute, e->t_reduce, e->t_opt, e->z.t_opt_io);
    e->step++;
    e->samples += cfg->train_batch_size;

    double ms = zinc_now_ms() - t0;
    uint64_t io1[2];
    zinc_proc_io(&io1[0], &io1[1]);
    memset(s, 0, sizeof *s);
    s->storage_read_bytes = io1[0] - io0[0]; /* this rank's: no collective of its own */
    s->storage_write_bytes = io1[1] - io0[1];
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
    /* activations held at once: slabs, crossing buffers, gradient ping-pong, scratch */
    const size_t asz = zinc_dtype_size(engine_act_dtype(e));
    double mine[2] = {e->pst.step_ms > 0 ? e->pst.wait_ms / e->pst.step_ms : 0.0,
                      (double)e->n_slabs * e->slab_bytes + (double)e->pst.peak_buffers * e->io_elems * asz +
                          (double)e->act_fixed};
    s->act_peak_bytes = (uint64_t)mine[1];
    if (ppg) { /* every stage's (bubble, activations) */
        s->pp_comm_bytes = zinc_comm_bytes(ppg);
        double *all = calloc((size_t)e->pp.stages * 2, sizeof *all);
        if (!all) {
            st = zinc_error(ZINC_ERR_NOMEM, "step stats");
            goto cleanup;
        }
        st = zinc_comm_all_gather(ppg, mine, all, 2, ZINC_DTYPE_F64, NULL);
        for (int k = 0; st == ZINC_OK && k < e->pp.stages; k++) {
            if (all[2 * k] > s->pp_bubble) s->pp_bubble = all[2 * k];
            if ((uint64_t)all[2 * k + 1] > s->act_peak_bytes) s->act_peak_bytes = (uint64_t)all[2 * k + 1];
            if (k < 64) s->act_peak_stage[k] = (uint64_t)all[2 * k + 1];
        }
        free(all);
        if (st != ZINC_OK) goto cleanup;
        s->pp_bubble_theory = zinc_pp_bubble_theory(&e->pp);
    }
    s->samples_seen = e->samples;
    s->loss_scale = scale;
    s->skipped = overflow;
cleanup:
    return st;
}
