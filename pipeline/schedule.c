/* schedule.c - pipeline schedules (zinc/pipeline.h): each stage's instruction list, a
 * simulator that runs all stages' lists against each other, and the bubble theory.
 *
 * A schedule is first a compute order per stage (forwards and backwards of (micro-batch,
 * chunk)); expand() adds the loads, sends and receives each compute step implies and the
 * step's end. gpipe, 1f1b and interleaved orders are closed forms (Megatron's
 * forward_backward_pipelining_with_interleaving for the last); zero-bubble is made by a
 * list scheduler over unit-cost ticks that runs all stages at once: a stage free at a tick
 * takes an input-gradient backward whose gradient has arrived, else a forward whose input
 * has arrived while it holds fewer than p - s micro-batches, else a deferred weight
 * gradient. Until its last p forwards a stage runs each W right after its B (so W's do
 * not pile up); in that tail W's wait for what would be idle time, the stage's share of the
 * bubble. With unit costs this gives ZB-H1's bubble, (p-1)/(3m+p-1) for m >= p. The simulator knows nothing of how an order was made: it checks every
 * dependency (a receive waits for its send, a compute step for the steps it needs on its
 * own stage) and reports a list that can never finish as deadlock.
 */
#include <stdlib.h>
#include <string.h>

#include "zinc/pipeline.h"

#define MAX_SIM_STAGES 64

typedef enum { C_F, C_B, C_BI, C_W } cstep_kind;

typedef struct cstep {
    cstep_kind k;
    int mb, chunk;
} cstep;

static const char *const kind_names[] = {"gpipe", "1f1b", "interleaved", "zero-bubble"};
static const char *const op_names[ZINC_PP_N_OPS] = {
    "load", "recv_act", "forward", "send_act", "recv_grad", "backward", "backward_input", "backward_weight",
    "send_grad", "reduce_grads", "optimizer_step"};

const char *zinc_pp_kind_name(zinc_pp_kind k)
{
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : NULL;
}

int zinc_pp_kind_parse(const char *s, zinc_pp_kind *k)
{
    for (unsigned i = 0; s && i < sizeof kind_names / sizeof kind_names[0]; i++)
        if (strcmp(s, kind_names[i]) == 0) {
            *k = (zinc_pp_kind)i;
            return 0;
        }
    return -1;
}

const char *zinc_pp_op_name(zinc_pp_op op)
{
    return (unsigned)op < ZINC_PP_N_OPS ? op_names[op] : "?";
}

zinc_status zinc_pp_plan_check(const zinc_pp_plan *plan)
{
    if (!plan) return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline schedule: NULL plan");
    const char *name = zinc_pp_kind_name(plan->kind);
    if (!name) return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline schedule: unknown kind %d", (int)plan->kind);
    if (plan->stages < 1 || plan->micro < 1 || plan->virt < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "pipeline schedule %s: stages %d, micro-batches %d and virtual stages %d must all be >= 1",
                          name, plan->stages, plan->micro, plan->virt);
    if (plan->virt > 1 && plan->kind != ZINC_PP_INTERLEAVED)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "pipeline schedule %s: %d virtual stages per rank need the interleaved schedule", name,
                          plan->virt);
    if (plan->kind == ZINC_PP_INTERLEAVED && plan->micro % plan->stages != 0)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "pipeline schedule interleaved: %d micro-batches is not a multiple of the %d stages", plan->micro,
                          plan->stages);
    /* sizes whose products overflow an int are refused rather than wrapped */
    if ((long long)plan->stages * plan->virt * plan->micro > (1 << 24))
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "pipeline schedule %s: %d stages x %d virtual stages x %d micro-batches is too many (max 2^24)",
                          name, plan->stages, plan->virt, plan->micro);
    return ZINC_OK;
}

/* ---- compute orders ---- */

static void order_gpipe(int m, cstep *o, int *n)
{
    for (int i = 0; i < m; i++) o[(*n)++] = (cstep){C_F, i, 0};
    for (int i = 0; i < m; i++) o[(*n)++] = (cstep){C_B, i, 0};
}

static void order_1f1b(int p, int m, int s, cstep *o, int *n)
{
    int w = p - s - 1 < m ? p - s - 1 : m;
    for (int i = 0; i < w; i++) o[(*n)++] = (cstep){C_F, i, 0};
    for (int i = 0; i < m - w; i++) {
        o[(*n)++] = (cstep){C_F, w + i, 0};
        o[(*n)++] = (cstep){C_B, i, 0};
    }
    for (int i = m - w; i < m; i++) o[(*n)++] = (cstep){C_B, i, 0};
}

/* Megatron's virtual micro-batch k: the chunk (reversed for backwards) and micro-batch. */
static cstep virtual_step(int p, int v, int k, int forward)
{
    int in_group = k % (p * v), chunk = in_group / p;
    if (!forward) chunk = v - 1 - chunk;
    return (cstep){forward ? C_F : C_B, (k / (p * v)) * p + k % p, chunk};
}

static void order_interleaved(int p, int m, int v, int s, cstep *o, int *n)
{
    int total = m * v, w = (p - s - 1) * 2 + (v - 1) * p;
    if (w > total) w = total;
    for (int k = 0; k < w; k++) o[(*n)++] = virtual_step(p, v, k, 1);
    for (int k = 0; k < total - w; k++) {
        o[(*n)++] = virtual_step(p, v, w + k, 1);
        o[(*n)++] = virtual_step(p, v, k, 0);
    }
    for (int k = total - w; k < total; k++) o[(*n)++] = virtual_step(p, v, k, 0);
}

/* ZB-H1 by list scheduling over unit-cost ticks (see the top); fills o with stage want's
 * order. Returns 0, -1 when out of memory, -2 if the stages stopped working (a bug). */
static int order_zero_bubble(int p, int m, int want, cstep *o, int *n)
{
    /* act[s*m+i]: tick the input of micro-batch i is at stage s (-1: not yet);
     * grad[s*m+i]: tick the gradient of its output is */
    long *act = malloc((size_t)p * m * sizeof *act), *grad = malloc((size_t)p * m * sizeof *grad);
    int *fi = calloc((size_t)p, sizeof *fi), *bi = calloc((size_t)p, sizeof *bi), *wi = calloc((size_t)p, sizeof *wi);
    long *busy = calloc((size_t)p, sizeof *busy);
    int rc = -1;
    if (!act || !grad || !fi || !bi || !wi || !busy) goto out;
    for (long i = 0; i < (long)p * m; i++) act[i] = grad[i] = -1;
    for (int i = 0; i < m; i++) act[i] = 0;
    int left = p;
    for (long tick = 0; left > 0; tick++) {
        for (int s = 0; s < p; s++) {
            if (busy[s] > tick || wi[s] == m) continue;
            int held = fi[s] - bi[s], deferred = bi[s] - wi[s];
            cstep c;
            if (bi[s] < fi[s] && grad[s * m + bi[s]] >= 0 && grad[s * m + bi[s]] <= tick) {
                c = (cstep){C_BI, bi[s]++, 0};
                if (s > 0) grad[(s - 1) * m + c.mb] = tick + 1;
            } else if (deferred > 0 && fi[s] + p < m) { /* W waits only in the tail */
                c = (cstep){C_W, wi[s]++, 0};
                if (wi[s] == m) left--;
            } else if (fi[s] < m && held < p - s && act[s * m + fi[s]] >= 0 && act[s * m + fi[s]] <= tick) {
                c = (cstep){C_F, fi[s]++, 0};
                if (s + 1 < p) act[(s + 1) * m + c.mb] = tick + 1;
                else grad[s * m + c.mb] = tick + 1;
            } else if (wi[s] < bi[s]) {
                c = (cstep){C_W, wi[s]++, 0};
                if (wi[s] == m) left--;
            } else {
                continue; /* idle this tick */
            }
            busy[s] = tick + 1;
            if (s == want) o[(*n)++] = c;
        }
        if (tick > 4L * p * m + 4L * p) { /* cannot happen: some stage works every p ticks */
            rc = -2;
            goto out;
        }
    }
    rc = 0;
out:
    free(act);
    free(grad);
    free(fi);
    free(bi);
    free(wi);
    free(busy);
    return rc;
}

/* ---- instructions ---- */

static void put(zinc_pp_instr *ins, int *n, zinc_pp_op op, int mb, int chunk, int peer)
{
    ins[(*n)++] = (zinc_pp_instr){op, mb, chunk, peer};
}

/* The instructions of compute order o of stage s. */
static void expand(const zinc_pp_plan *pl, int s, const cstep *o, int n_o, zinc_pp_instr *ins, int *n)
{
    const int p = pl->stages, last = p * pl->virt - 1;
    const int prev = (s + p - 1) % p, next = (s + 1) % p, comm = p > 1;
    for (int i = 0; i < n_o; i++) {
        const cstep *c = &o[i];
        int j = c->chunk * p + s;
        switch (c->k) {
        case C_F:
            if (j == 0 || j == last) put(ins, n, ZINC_PP_LOAD, c->mb, c->chunk, -1);
            if (j > 0 && comm) put(ins, n, ZINC_PP_RECV_ACT, c->mb, c->chunk, prev);
            put(ins, n, ZINC_PP_FORWARD, c->mb, c->chunk, -1);
            if (j < last && comm) put(ins, n, ZINC_PP_SEND_ACT, c->mb, c->chunk, next);
            break;
        case C_B:
        case C_BI:
            if (j < last && comm) put(ins, n, ZINC_PP_RECV_GRAD, c->mb, c->chunk, next);
            put(ins, n, c->k == C_B ? ZINC_PP_BACKWARD : ZINC_PP_BACKWARD_INPUT, c->mb, c->chunk, -1);
            if (j > 0 && comm) put(ins, n, ZINC_PP_SEND_GRAD, c->mb, c->chunk, prev);
            break;
        case C_W:
            put(ins, n, ZINC_PP_BACKWARD_WEIGHT, c->mb, c->chunk, -1);
            break;
        }
    }
    put(ins, n, ZINC_PP_REDUCE_GRADS, -1, -1, -1);
    put(ins, n, ZINC_PP_OPTIMIZER_STEP, -1, -1, -1);
}

zinc_status zinc_pp_schedule(const zinc_pp_plan *plan, int stage, zinc_pp_instr **out, int *n)
{
    zinc_status st = zinc_pp_plan_check(plan);
    if (st != ZINC_OK) return st;
    if (!out || !n) return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline schedule: NULL output");
    if (stage < 0 || stage >= plan->stages)
        return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline schedule: stage %d outside 0..%d", stage, plan->stages - 1);
    const int p = plan->stages, m = plan->micro, v = plan->virt;
    /* at most 3 compute steps per (mb, chunk) (zero-bubble: F, B, W), each at most 4
     * instructions (load, receive, compute, send), and the 2 at the end */
    size_t n_c = (size_t)3 * m * v;
    cstep *o = malloc(n_c * sizeof *o);
    zinc_pp_instr *ins = malloc((n_c * 4 + 2) * sizeof *ins);
    int n_o = 0, n_i = 0;
    if (!o || !ins) goto nomem;
    switch (plan->kind) {
    case ZINC_PP_GPIPE: order_gpipe(m, o, &n_o); break;
    case ZINC_PP_1F1B: order_1f1b(p, m, stage, o, &n_o); break;
    case ZINC_PP_INTERLEAVED: order_interleaved(p, m, v, stage, o, &n_o); break;
    case ZINC_PP_ZERO_BUBBLE: {
        int rc = order_zero_bubble(p, m, stage, o, &n_o);
        if (rc == -1) goto nomem;
        if (rc != 0) {
            free(o);
            free(ins);
            return zinc_error(ZINC_ERR_INTERNAL, "pipeline schedule zero-bubble: stalled at %d stages x %d micro-batches",
                              p, m);
        }
        break;
    }
    }
    expand(plan, stage, o, n_o, ins, &n_i);
    free(o);
    *out = ins;
    *n = n_i;
    return ZINC_OK;
nomem:
    free(o);
    free(ins);
    return zinc_error(ZINC_ERR_NOMEM, "pipeline schedule: out of memory for %d stages x %d micro-batches", p, m);
}

/* ---- simulation ---- */

typedef struct sim_stage {
    zinc_pp_instr *ins;
    int n, at;
    double t, busy;
    int held, max_held;         /* forward done, input backward not yet */
    int deferred, max_deferred; /* input backward done, weight backward not yet */
} sim_stage;

zinc_status zinc_pp_simulate_lists(const zinc_pp_plan *plan, zinc_pp_instr *const *lists, const int *n,
                                   const zinc_pp_cost *cost, zinc_pp_sim *out)
{
    zinc_status st = zinc_pp_plan_check(plan);
    if (st != ZINC_OK) return st;
    if (!lists || !n || !cost || !out) return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline simulation: NULL argument");
    if (plan->stages > MAX_SIM_STAGES)
        return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline simulation: %d stages (at most %d)", plan->stages,
                          MAX_SIM_STAGES);
    const int p = plan->stages, m = plan->micro, J = p * plan->virt;
    const size_t nk = (size_t)m * J;
    sim_stage S[MAX_SIM_STAGES];
    memset(S, 0, sizeof S);
    memset(out, 0, sizeof *out);
    /* per (mb, model chunk): when its activation / input gradient was sent (-1: not yet),
     * whether the receiver took it, and when its forward, input backward and weight
     * backward finished */
    double *sent_act = malloc(nk * sizeof(double)), *sent_grad = malloc(nk * sizeof(double));
    double *f_done = malloc(nk * sizeof(double)), *b_done = malloc(nk * sizeof(double));
    double *w_done = malloc(nk * sizeof(double));
    unsigned char *got_act = calloc(nk, 1), *got_grad = calloc(nk, 1);
    if (!sent_act || !sent_grad || !f_done || !b_done || !w_done || !got_act || !got_grad) {
        st = zinc_error(ZINC_ERR_NOMEM, "pipeline simulation: out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < nk; i++) sent_act[i] = sent_grad[i] = f_done[i] = b_done[i] = w_done[i] = -1;
    for (int s = 0; s < p; s++) {
        S[s].ins = lists[s];
        S[s].n = n[s];
    }
    for (int progress = 1; progress;) {
        progress = 0;
        for (int s = 0; s < p; s++) {
            sim_stage *g = &S[s];
            while (g->at < g->n) {
                const zinc_pp_instr *in = &g->ins[g->at];
                if ((in->mb < 0 || in->mb >= m || in->chunk < 0 || in->chunk >= plan->virt) &&
                    in->op != ZINC_PP_REDUCE_GRADS && in->op != ZINC_PP_OPTIMIZER_STEP)
                    break; /* names no (mb, chunk) of this plan: the list never finishes */
                int j = in->chunk * p + s;
                size_t k = (size_t)in->mb * J + (size_t)j; /* valid when mb, chunk >= 0 */
                int ok = 1;
                switch (in->op) {
                case ZINC_PP_LOAD:
                case ZINC_PP_REDUCE_GRADS:
                case ZINC_PP_OPTIMIZER_STEP: break;
                case ZINC_PP_RECV_ACT: /* the previous model chunk's output, from its stage */
                    ok = j > 0 && in->peer == (j - 1) % p && sent_act[k - 1] >= 0;
                    if (ok) {
                        if (sent_act[k - 1] > g->t) g->t = sent_act[k - 1];
                        got_act[k] = 1;
                    }
                    break;
                case ZINC_PP_SEND_ACT:
                    ok = j < J - 1 && in->peer == (j + 1) % p && f_done[k] >= 0 && sent_act[k] < 0;
                    if (ok) sent_act[k] = g->t;
                    break;
                case ZINC_PP_RECV_GRAD:
                    ok = j < J - 1 && in->peer == (j + 1) % p && sent_grad[k + 1] >= 0;
                    if (ok) {
                        if (sent_grad[k + 1] > g->t) g->t = sent_grad[k + 1];
                        got_grad[k] = 1;
                    }
                    break;
                case ZINC_PP_SEND_GRAD:
                    ok = j > 0 && in->peer == (j - 1) % p && b_done[k] >= 0 && sent_grad[k] < 0;
                    if (ok) sent_grad[k] = g->t;
                    break;
                case ZINC_PP_FORWARD: /* input: received, handed on in place (p = 1), or the tokens */
                    ok = f_done[k] < 0 && (j == 0 || (p > 1 ? got_act[k] : f_done[k - 1] >= 0));
                    if (ok) {
                        g->t += cost->forward;
                        g->busy += cost->forward;
                        f_done[k] = g->t;
                        if (++g->held > g->max_held) g->max_held = g->held;
                    }
                    break;
                case ZINC_PP_BACKWARD:
                case ZINC_PP_BACKWARD_INPUT:
                    ok = f_done[k] >= 0 && b_done[k] < 0 &&
                         (j == J - 1 || (p > 1 ? got_grad[k] : b_done[k + 1] >= 0));
                    if (ok) {
                        double c = in->op == ZINC_PP_BACKWARD ? cost->backward : cost->backward_input;
                        g->t += c;
                        g->busy += c;
                        b_done[k] = g->t;
                        g->held--;
                        if (in->op == ZINC_PP_BACKWARD) w_done[k] = g->t;
                        else if (++g->deferred > g->max_deferred) g->max_deferred = g->deferred;
                    }
                    break;
                case ZINC_PP_BACKWARD_WEIGHT:
                    ok = b_done[k] >= 0 && w_done[k] < 0;
                    if (ok) {
                        g->t += cost->backward_weight;
                        g->busy += cost->backward_weight;
                        w_done[k] = g->t;
                        g->deferred--;
                    }
                    break;
                default: ok = 0;
                }
                if (!ok) break;
                g->at++;
                progress = 1;
            }
        }
    }
    for (int s = 0; s < p; s++)
        if (S[s].at < S[s].n) out->deadlock = 1;
    /* every activation and gradient sent was received, every (mb, chunk) fully done */
    for (size_t k = 0; k < nk && !out->deadlock; k++) {
        int j = (int)(k % (size_t)J);
        if (f_done[k] < 0 || w_done[k] < 0) out->deadlock = 1;
        if (p > 1 && j < J - 1 && (sent_act[k] < 0 || !got_act[k + 1])) out->deadlock = 1;
        if (p > 1 && j > 0 && (sent_grad[k] < 0 || !got_grad[k - 1])) out->deadlock = 1;
    }
    if (out->deadlock) goto cleanup;
    for (int s = 0; s < p; s++)
        if (S[s].t > out->makespan) out->makespan = S[s].t;
    out->bubble_min = 1.0;
    for (int s = 0; s < p; s++) {
        double b = out->makespan > 0 ? (out->makespan - S[s].busy) / out->makespan : 0.0;
        if (b > out->bubble) out->bubble = b;
        if (b < out->bubble_min) out->bubble_min = b;
        out->inflight[s] = S[s].max_held;
        out->deferred[s] = S[s].max_deferred;
        if (S[s].max_held > out->max_inflight) out->max_inflight = S[s].max_held;
    }
cleanup:
    free(sent_act);
    free(sent_grad);
    free(f_done);
    free(b_done);
    free(w_done);
    free(got_act);
    free(got_grad);
    return st;
}

zinc_status zinc_pp_simulate(const zinc_pp_plan *plan, const zinc_pp_cost *cost, zinc_pp_sim *out)
{
    zinc_status st = zinc_pp_plan_check(plan);
    if (st != ZINC_OK) return st;
    if (plan->stages > MAX_SIM_STAGES)
        return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline simulation: %d stages (at most %d)", plan->stages,
                          MAX_SIM_STAGES);
    zinc_pp_instr *lists[MAX_SIM_STAGES] = {NULL};
    int n[MAX_SIM_STAGES] = {0};
    for (int s = 0; s < plan->stages && st == ZINC_OK; s++) st = zinc_pp_schedule(plan, s, &lists[s], &n[s]);
    if (st == ZINC_OK) st = zinc_pp_simulate_lists(plan, lists, n, cost, out);
    for (int s = 0; s < plan->stages; s++) free(lists[s]);
    return st;
}

double zinc_pp_bubble_theory(const zinc_pp_plan *plan)
{
    double p = plan->stages, m = plan->micro, v = plan->virt;
    switch (plan->kind) {
    case ZINC_PP_GPIPE:
    case ZINC_PP_1F1B: return (p - 1) / (m + p - 1);
    case ZINC_PP_INTERLEAVED: return (p - 1) / (v * m + p - 1);
    case ZINC_PP_ZERO_BUBBLE: return (p - 1) / (3 * m + p - 1);
    }
    return 0.0;
}
