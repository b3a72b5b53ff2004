/* grads.c - ZeRO gradients: working grads per layer, their fold-in or
 * reduce-scatter (async, bucketed by reduce_bucket_size when overlap_comm),
 * the accumulation boundary, the norm, and finding a non-finite one.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zero_int.h"
#include "zinc/log.h"

void zero_grads_zero(zero_state *z)
{
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (u->g) z->ops->zero(u->g, (z->plan.stage >= 2 ? u->shard : u->numel) * z->plan.psz);
    }
}

zinc_status zero_grad_open(zero_state *z, int ui)
{
    zero_unit *u = &z->units[ui];
    if (u->wg || u->numel == 0) return ZINC_OK;
    if (u->frozen) return ZINC_OK; /* no gradients: the layer's backward gets NULL and skips them */
    /* grads are stored whole below stage 2, and at any stage on one rank
     * (its shard is the whole unit) */
    if ((z->plan.stage < 2 || z->dp == 1) && z->plan.pdt == ZINC_DTYPE_F32) {
        u->wg = u->g; /* accumulate straight into the whole fp32 grads */
        u->wg_owned = 0;
        return ZINC_OK;
    }
    u->wg = xalloc(z, u->numel * sizeof(float));
    if (!u->wg) return zinc_error(ZINC_ERR_NOMEM, "working grads of layer %d", ui);
    u->wg_owned = 1;
    return ZINC_OK;
}

static zinc_status pending_finish(zero_state *z, zero_pending *pd)
{
    zinc_status st = zinc_comm_wait(&pd->h);
    zero_unit *u = &z->units[pd->unit];
    if (st == ZINC_OK) z->ops->add_into(u->g, z->plan.pdt, pd->recv, z->plan.pdt, u->shard);
    if (pd->send == (void *)u->wg) {
        u->wg = NULL;
        u->wg_owned = 0;
    }
    xfree(z, pd->send);
    xfree(z, pd->recv);
    z->pending_bytes -= u->numel;
    return st;
}

zinc_status zero_wait_pending(zero_state *z, int all)
{
    zinc_status st = ZINC_OK;
    uint64_t limit = (uint64_t)z->opt.reduce_bucket_size;
    int done = 0;
    while (done < z->n_pending && (all || z->pending_bytes > limit)) {
        zinc_status s = pending_finish(z, &z->pending[done++]);
        if (st == ZINC_OK) st = s;
    }
    if (done > 0) {
        memmove(z->pending, z->pending + done, (size_t)(z->n_pending - done) * sizeof *z->pending);
        z->n_pending -= done;
    }
    return st;
}

zinc_status zero_grad_close(zero_state *z, int ui)
{
    zero_unit *u = &z->units[ui];
    if (!u->wg) return ZINC_OK;
    if (z->plan.stage < 2) {
        if (u->wg_owned) {
            z->ops->add_into(u->g, z->plan.pdt, u->wg, ZINC_DTYPE_F32, u->numel);
            xfree(z, u->wg);
        }
        u->wg = NULL;
        u->wg_owned = 0;
        return ZINC_OK;
    }
    if (!u->wg_owned) { /* one rank, fp32: accumulated in place (zero_grad_open) */
        u->wg = NULL;
        return ZINC_OK;
    }
    /* stage >= 2: reduce-scatter the unit's grads (storage dtype) into the owner's shard */
    void *send = u->wg;
    if (z->plan.pdt != ZINC_DTYPE_F32) {
        send = xalloc_raw(z, u->numel * z->plan.psz);
        if (!send) return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
        zero_from_f32(z, send, u->wg, z->plan.pdt, u->numel);
        xfree(z, u->wg);
        u->wg = NULL;
        u->wg_owned = 0;
    }
    if (z->dp == 1) { /* the reduce-scatter over one rank is the identity: add directly */
        z->ops->add_into(u->g, z->plan.pdt, send, z->plan.pdt, u->numel);
        xfree(z, send);
        u->wg = NULL;
        u->wg_owned = 0;
        return ZINC_OK;
    }
    void *recv = xalloc_raw(z, u->shard * z->plan.psz);
    zero_pending *np = realloc(z->pending, (size_t)(z->n_pending + 1) * sizeof *np);
    if (np) z->pending = np;
    if (!recv || !np) {
        xfree(z, recv);
        if (send != (void *)u->wg) xfree(z, send);
        return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
    }
    zero_pending *pd = &z->pending[z->n_pending++];
    *pd = (zero_pending){.unit = ui, .send = send, .recv = recv};
    z->pending_bytes += u->numel;
    zinc_status st = zinc_comm_reduce_scatter(z->dp_group, send, recv, u->shard, z->plan.pdt,
                                              ZINC_REDOP_SUM, &pd->h);
    if (st != ZINC_OK) return st;
    return zero_wait_pending(z, !z->opt.overlap_comm);
}

zinc_status zero_reduce_boundary(zero_state *z)
{
    zinc_status st = ZINC_OK;
    if (z->dp == 1 || z->plan.stage >= 2) return ZINC_OK;
    zinc_comm *g = z->dp_group;
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (u->numel == 0 || u->frozen) continue;
        if (z->plan.stage == 0) {
            st = zinc_comm_all_reduce(g, u->g, u->g, u->numel, z->plan.pdt, ZINC_REDOP_SUM, NULL);
        } else {
            void *tmp = xalloc_raw(z, u->shard * z->plan.psz);
            if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "reduce-scatter buffer of layer %d", l);
            st = zinc_comm_reduce_scatter(g, u->g, tmp, u->shard, z->plan.pdt, ZINC_REDOP_SUM, NULL);
            if (st == ZINC_OK) z->ops->copy(at(u->g, u->opt_lo, z->plan.psz), tmp, u->shard * z->plan.psz);
            xfree(z, tmp);
        }
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

/* The sum of squares of grads g (this rank's opt range [lo, lo+n) of unit u,
 * fp32) split by whether each element's parameter is TP-split. */
static void sumsq_split(const zero_state *z, const zero_unit *u, const float *g, size_t lo,
                        size_t n, double out[2])
{
    size_t hi = lo + n; /* padding between params holds zeros: it adds nothing */
    for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
        const zero_param *p = &z->params[pi];
        if (p->unit != unit_id(z, u)) continue;
        size_t x = p->uoff > lo ? p->uoff : lo;
        size_t y = p->uoff + (size_t)p->numel < hi ? p->uoff + (size_t)p->numel : hi;
        if (x >= y) continue;
        out[p->tp_dim >= 0 ? 0 : 1] += z->ops->sumsq(g + (x - lo), y - x);
    }
}

zinc_status zero_shared_reduce(zero_state *z, zinc_comm *g)
{
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (!u->shared || u->opt_n == 0) continue;
        void *gr = grad_opt(z, u);
        zinc_status st = zinc_comm_all_reduce(g, gr, gr, u->opt_n, z->plan.pdt, ZINC_REDOP_SUM, NULL);
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

zinc_status zero_grad_sumsq(zero_state *z, double split[2])
{
    split[0] = split[1] = 0.0;
    float *tmp = NULL;
    size_t cap = 0;
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (u->opt_n == 0 || u->dup) continue;
        const void *g = grad_opt(z, u);
        const float *g32 = g;
        if (z->plan.pdt != ZINC_DTYPE_F32) {
            if (cap < u->opt_n) {
                xfree(z, tmp);
                tmp = xalloc_raw(z, u->opt_n * sizeof(float));
                cap = tmp ? u->opt_n : 0;
                if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "gradient norm buffer");
            }
            zero_to_f32(z, tmp, g, z->plan.pdt, u->opt_n);
            g32 = tmp;
        }
        if (z->tp > 1)
            sumsq_split(z, u, g32, u->opt_lo, u->opt_n, split);
        else
            split[1] += z->ops->sumsq(g32, u->opt_n);
    }
    xfree(z, tmp);
    return ZINC_OK;
}

/* Fault injection for tests: ZINC_FAULT_NAN="RANK:STEP" makes that rank's
 * gradients at that (1-based) step hold a NaN: the first element of the last
 * unit it steps, so that finding it means scanning past finite ones. */
void zero_fault_nan(zero_state *z, int64_t step)
{
    const char *f = getenv("ZINC_FAULT_NAN");
    int r;
    long long s;
    if (!f || sscanf(f, "%d:%lld", &r, &s) != 2 || r != z->dp_rank || s != step + 1) return;
    for (int l = z->n_units - 1; l >= 0; l--) {
        zero_unit *u = &z->units[l];
        if (u->opt_n == 0) continue;
        float nan = NAN;
        uint16_t h = z->plan.pdt == ZINC_DTYPE_BF16 ? zinc_f32_to_bf16(nan) : zinc_f32_to_f16(nan);
        z->dev->copy(grad_opt(z, u), z->plan.pdt == ZINC_DTYPE_F32 ? (void *)&nan : (void *)&h, z->plan.psz);
        for (int p = u->n_params_first; p < u->n_params_end; p++)
            if (z->params[p].unit == l && u->opt_lo >= z->params[p].uoff &&
                u->opt_lo < z->params[p].uoff + (size_t)z->params[p].numel)
                ZINC_INFO("fault: a NaN in the gradient of %s on rank %d at step %lld",
                          z->params[p].name, r, s);
        return;
    }
}

zinc_status zero_first_nonfinite(zero_state *z, int *param)
{
    int32_t first = INT32_MAX;
    void *host = NULL;
    size_t cap = 0;
    for (int l = 0; l < z->n_units && first == INT32_MAX; l++) {
        zero_unit *u = &z->units[l];
        if (u->opt_n == 0) continue;
        if (cap < u->opt_n) { /* the error path only: a host copy, any device */
            free(host);
            host = malloc(u->opt_n * z->plan.psz);
            cap = host ? u->opt_n : 0;
            if (!host) return zinc_error(ZINC_ERR_NOMEM, "out of memory: asked for %zu bytes of "
                                         "host memory to scan gradients", u->opt_n * z->plan.psz);
        }
        z->dev->copy(host, grad_opt(z, u), u->opt_n * z->plan.psz);
        for (size_t i = 0; i < u->opt_n; i++) {
            float g = z->plan.pdt == ZINC_DTYPE_F32    ? ((const float *)host)[i]
                      : z->plan.pdt == ZINC_DTYPE_BF16 ? zinc_bf16_to_f32(((const uint16_t *)host)[i])
                                                  : zinc_f16_to_f32(((const uint16_t *)host)[i]);
            if (isfinite(g)) continue;
            size_t at_unit = u->opt_lo + i; /* element inside the unit */
            for (int p = u->n_params_first; p < u->n_params_end; p++) {
                const zero_param *pp = &z->params[p];
                if (pp->unit == l && at_unit >= pp->uoff && at_unit < pp->uoff + (size_t)pp->numel) {
                    first = p;
                    break;
                }
            }
            if (first != INT32_MAX) break;
        }
    }
    free(host);
    if (z->dp > 1) {
        zinc_status st = zinc_comm_all_reduce(z->dp_group, &first, &first, 1,
                                              ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
        if (st != ZINC_OK) return st;
    }
    *param = first == INT32_MAX ? -1 : first;
    return ZINC_OK;
}
