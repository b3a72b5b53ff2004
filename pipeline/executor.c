/* executor.c - runs one pipeline stage's instruction list for a step (zinc/pipeline.h).
 *
 * Buffers, per (micro-batch, chunk) k of this stage: act[k], the chunk's input (received,
 * or with one stage the previous chunk's output handed on); gout[k], the gradient of its
 * output (received, or handed back by the next chunk). Both live until the chunk's
 * backward is done (its weight part, for zero-bubble). A forward's output and a backward's
 * input gradient go out with a send started at SEND_ACT / SEND_GRAD; before each
 * instruction the sends in flight are tested and the buffers of finished ones freed, so a
 * stage holds only what its schedule has in flight; the rest are completed before
 * REDUCE_GRADS (never waited for mid-list: that could wait on a peer that waits on us). Receives block in place; the comm timeout turns a dead neighbour into an error
 * naming the group and the op instead of a hang.
 */
#include <stdlib.h>
#include <string.h>

#include "zinc/clock.h"
#include "zinc/comm.h"
#include "zinc/pipeline.h"

typedef struct pending {
    zinc_comm_handle *h;
    void *buf;
} pending;

typedef struct exec {
    const zinc_pp_plan *pl;
    const zinc_pp_stage_ops *ops;
    zinc_comm *pp;
    int s, J;
    size_t bytes;
    void **act, **gout, **sact, **sgrad; /* per mb * v + chunk */
    pending *sends;
    int n_sends;
    size_t held, peak;
    double wait_ms;
} exec;

static void *buf_new(exec *x)
{
    const size_t n = x->bytes ? x->bytes : 1;
    void *b = x->ops->buf_alloc ? x->ops->buf_alloc(x->ops->u, n) : malloc(n);
    if (b && ++x->held > x->peak) x->peak = x->held;
    return b;
}

static void buf_free(exec *x, void **b)
{
    if (*b) {
        if (x->ops->buf_free)
            x->ops->buf_free(x->ops->u, *b);
        else
            free(*b);
        x->held--;
        *b = NULL;
    }
}

/* Tag of an activation (kind 0) or gradient (kind 1) leaving model chunk j for mb. */
static int tag_of(const exec *x, int kind, int mb, int j)
{
    return (kind * x->pl->micro + mb) * x->J + j;
}

static zinc_status do_send(exec *x, void **slot, int kind, int mb, int j, int peer)
{
    if (!*slot) return zinc_error(ZINC_ERR_INTERNAL, "pipeline stage %d: nothing to send for micro-batch %d", x->s, mb);
    pending *p = &x->sends[x->n_sends++];
    p->buf = *slot;
    *slot = NULL;
    return zinc_comm_send(x->pp, p->buf, x->ops->act_elems, x->ops->act_dtype, peer, tag_of(x, kind, mb, j), &p->h);
}

static zinc_status do_recv(exec *x, void **slot, int kind, int mb, int j, int peer)
{
    *slot = buf_new(x);
    if (!*slot) return zinc_error(ZINC_ERR_NOMEM, "pipeline stage %d: no memory for a %zu-byte buffer", x->s, x->bytes);
    double t0 = zinc_now_ms();
    zinc_status st = zinc_comm_recv(x->pp, *slot, x->ops->act_elems, x->ops->act_dtype, peer, tag_of(x, kind, mb, j),
                                    NULL);
    x->wait_ms += zinc_now_ms() - t0;
    return st;
}

/* Frees the buffers of the sends that have finished (without waiting). */
static zinc_status reap_sends(exec *x)
{
    zinc_status st = ZINC_OK;
    int keep = 0;
    for (int i = 0; i < x->n_sends; i++) {
        int done = 0;
        zinc_status s2 = zinc_comm_test(&x->sends[i].h, &done);
        if (st == ZINC_OK) st = s2;
        if (done)
            buf_free(x, &x->sends[i].buf);
        else
            x->sends[keep++] = x->sends[i];
    }
    x->n_sends = keep;
    return st;
}

static zinc_status finish_sends(exec *x)
{
    zinc_status st = ZINC_OK;
    double t0 = zinc_now_ms();
    for (int i = 0; i < x->n_sends; i++) {
        zinc_status s2 = zinc_comm_wait(&x->sends[i].h);
        if (st == ZINC_OK) st = s2;
        buf_free(x, &x->sends[i].buf);
    }
    x->n_sends = 0;
    x->wait_ms += zinc_now_ms() - t0;
    return st;
}

static zinc_status run_one(exec *x, const zinc_pp_instr *in)
{
    const zinc_pp_stage_ops *o = x->ops;
    const int p = x->pl->stages, v = x->pl->virt, last = x->J - 1;
    if (in->op == ZINC_PP_REDUCE_GRADS) {
        zinc_status st = finish_sends(x);
        return st != ZINC_OK ? st : o->reduce_grads(o->u);
    }
    if (in->op == ZINC_PP_OPTIMIZER_STEP) return o->optimizer_step(o->u);
    const int k = in->mb * v + in->chunk, j = in->chunk * p + x->s;
    switch (in->op) {
    case ZINC_PP_LOAD: return o->load(o->u, in->mb, in->chunk);
    case ZINC_PP_RECV_ACT: return do_recv(x, &x->act[k], 0, in->mb, j - 1, in->peer);
    case ZINC_PP_RECV_GRAD: return do_recv(x, &x->gout[k], 1, in->mb, j + 1, in->peer);
    case ZINC_PP_SEND_ACT: return do_send(x, &x->sact[k], 0, in->mb, j, in->peer);
    case ZINC_PP_SEND_GRAD: return do_send(x, &x->sgrad[k], 1, in->mb, j, in->peer);
    case ZINC_PP_FORWARD: {
        void *out = NULL;
        if (j < last && !(out = buf_new(x)))
            return zinc_error(ZINC_ERR_NOMEM, "pipeline stage %d: no memory for a %zu-byte activation", x->s, x->bytes);
        zinc_status st = o->forward(o->u, in->mb, in->chunk, x->act[k], out);
        if (j < last) {
            if (p > 1) x->sact[k] = out;
            else x->act[k + 1] = out; /* one stage: the next chunk's input */
        }
        return st;
    }
    case ZINC_PP_BACKWARD:
    case ZINC_PP_BACKWARD_INPUT: {
        void *gin = NULL;
        if (j > 0 && !(gin = buf_new(x)))
            return zinc_error(ZINC_ERR_NOMEM, "pipeline stage %d: no memory for a %zu-byte gradient", x->s, x->bytes);
        zinc_status st = o->backward(o->u, in->mb, in->chunk, x->act[k], x->gout[k], gin,
                                     in->op == ZINC_PP_BACKWARD ? 0 : 1);
        if (in->op == ZINC_PP_BACKWARD) { /* the weight part keeps both for later */
            buf_free(x, &x->act[k]);
            buf_free(x, &x->gout[k]);
        }
        if (j > 0) {
            if (p > 1) x->sgrad[k] = gin;
            else x->gout[k - 1] = gin; /* one stage: the previous chunk's output gradient */
        }
        return st;
    }
    case ZINC_PP_BACKWARD_WEIGHT: {
        zinc_status st = o->backward(o->u, in->mb, in->chunk, x->act[k], x->gout[k], NULL, 2);
        buf_free(x, &x->act[k]);
        buf_free(x, &x->gout[k]);
        return st;
    }
    default: return zinc_error(ZINC_ERR_INTERNAL, "pipeline stage %d: unknown instruction %d", x->s, (int)in->op);
    }
}

zinc_status zinc_pp_execute(const zinc_pp_plan *plan, zinc_comm *pp, int stage, const zinc_pp_stage_ops *ops,
                            zinc_pp_exec_stats *stats)
{
    zinc_status st = ZINC_OK;
    zinc_pp_instr *ins = NULL;
    int n = 0;
    exec x = {0};
    if (!ops || !ops->load || !ops->forward || !ops->backward || !ops->reduce_grads || !ops->optimizer_step)
        return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline executor: a stage callback is missing");
    ZINC_TRY(zinc_pp_schedule(plan, stage, &ins, &n));
    if (plan->stages > 1 && (!pp || zinc_comm_size(pp) != plan->stages || zinc_comm_rank(pp) != stage)) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "pipeline executor: stage %d of %d needs a pipeline group of %d ranks "
                        "in which it is rank %d", stage, plan->stages, plan->stages, stage);
        goto cleanup;
    }
    const size_t nk = (size_t)plan->micro * plan->virt;
    x = (exec){.pl = plan, .ops = ops, .pp = pp, .s = stage, .J = plan->stages * plan->virt,
               .bytes = ops->act_elems * zinc_dtype_size(ops->act_dtype)};
    x.act = calloc(nk, sizeof *x.act);
    x.gout = calloc(nk, sizeof *x.gout);
    x.sact = calloc(nk, sizeof *x.sact);
    x.sgrad = calloc(nk, sizeof *x.sgrad);
    x.sends = calloc(2 * nk + 1, sizeof *x.sends);
    if (!x.act || !x.gout || !x.sact || !x.sgrad || !x.sends) {
        st = zinc_error(ZINC_ERR_NOMEM, "pipeline executor: out of memory");
        goto cleanup;
    }
    double t0 = zinc_now_ms();
    for (int i = 0; i < n && st == ZINC_OK; i++) {
        if (x.n_sends) st = reap_sends(&x);
        if (st == ZINC_OK) st = run_one(&x, &ins[i]);
    }
    if (stats) *stats = (zinc_pp_exec_stats){zinc_now_ms() - t0, x.wait_ms, x.peak};
cleanup:
    if (x.sends) {
        zinc_status s2 = finish_sends(&x); /* after an error too: no send left in flight */
        if (st == ZINC_OK) st = s2;
    }
    for (size_t k = 0; x.act && k < (size_t)plan->micro * plan->virt; k++) {
        buf_free(&x, &x.act[k]);
        buf_free(&x, &x.gout[k]);
        buf_free(&x, &x.sact[k]);
        buf_free(&x, &x.sgrad[k]);
    }
    free(x.act);
    free(x.gout);
    free(x.sact);
    free(x.sgrad);
    free(x.sends);
    free(ins);
    return st;
}
