/* optimizer.c - AdamW over this rank's opt ranges in sub-groups of
 * sub_group_size elements: from device memory, from pinned host memory
 * (opt_host: the optimizer offloaded to the CPU on a GPU), or streamed from
 * the optimizer swap file on NVMe (zinc_swap_stream); then the new
 * working-precision params, all-gathered where they are whole.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "zero_int.h"

/* AdamW over the parameter pieces of elements [lo, hi) of unit u (opt-range offsets), the
 * gradient g (as gdt, times coef) and master, m, v, out at element lo; out (NULL: none)
 * gets the new params as pdt, where elements outside every piece (padding) are the
 * master's too. With the fused op, one pass; else g is fp32 already scaled. */
static void pieces_update(zero_state *z, const zinc_ops *oo, zero_unit *u, size_t lo, size_t hi, const void *g,
                          zinc_dtype gdt, float coef, float *master, float *m, float *v, void *out, double lr, int t)
{
    const zero_opts *c = &z->opt;
    const zero_plan *pl = &z->plan;
    size_t done = lo; /* out is written up to here */
    /* one AdamW call per parameter piece: weight decay is per parameter */
    for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
        const zero_param *p = &z->params[pi];
        if (p->unit != unit_id(z, u)) continue;
        size_t x = p->uoff > lo ? p->uoff : lo;
        size_t y = p->uoff + (size_t)p->numel < hi ? p->uoff + (size_t)p->numel : hi;
        if (x >= y) continue;
        float wd = p->decay ? (float)c->weight_decay : 0.0f;
        const size_t o = x - lo;
        if (out && x > done) oo->convert(at(out, done - lo, pl->psz), pl->pdt, master + (done - lo), ZINC_DTYPE_F32, x - done);
        if (oo->adamw_mixed)
            oo->adamw_mixed(master + o, at((void *)g, o, zinc_dtype_size(gdt)), gdt, coef, m + o, v + o,
                            out ? at(out, o, pl->psz) : NULL, pl->pdt, y - x, (float)lr, (float)c->beta1,
                            (float)c->beta2, (float)c->eps, wd, t);
        else
            oo->adamw(master + o, (const float *)g + o, m + o, v + o, y - x, (float)lr, (float)c->beta1,
                      (float)c->beta2, (float)c->eps, wd, t);
        if (y > done) done = y;
    }
    if (out && done < hi) oo->convert(at(out, done - lo, pl->psz), pl->pdt, master + (done - lo), ZINC_DTYPE_F32, hi - done);
}

/* AdamW over elements [a, a+n) of unit u's opt range with fp32 master, m, v
 * at the given pointers, then the working-precision params of the range. With the
 * op table's fused AdamW (the CPU's) the 16-bit gradient is read and the 16-bit
 * params written in the same pass; else convert, scale, update, convert. */
static zinc_status group_update(zero_state *z, zero_unit *u, size_t a, size_t n, float *master,
                                float *m, float *v, double lr, double coef, int t, float *gtmp,
                                void *pbuf)
{
    const zero_plan *pl = &z->plan;
    /* the unit's state on the host: the sub-group's grads come down to pbuf (pinned),
     * AdamW runs on the CPU's ops, the new params go up from pbuf */
    const int host = u->opt_host;
    const zinc_ops *oo = host ? zinc_ops_cpu() : z->ops;
    void *g = at(grad_opt(z, u), a, pl->psz);
    if (host) {
        z->dev->copy(pbuf, g, n * pl->psz);
        g = pbuf;
    }
    const size_t lo = u->opt_lo + a, hi = lo + n;
    /* where the new params go: the params themselves (fp32 without a separate master:
     * nowhere), the swap staging, the host staging, the device shard */
    const int nvme = pl->master_sep && zero_param_on_nvme(z, u);
    void *pdst = pl->master_sep && !nvme ? at(u->p, (u->sharded ? 0 : u->opt_lo) + a, pl->psz) : NULL;
    void *out = !pl->master_sep ? NULL : nvme || host ? pbuf : pdst;
    if (oo->adamw_mixed && pl->pdt != ZINC_DTYPE_F32) {
        pieces_update(z, oo, u, lo, hi, g, pl->pdt, (float)coef, master, m, v, out, lr, t);
    } else {
        float *g32 = g;
        if (pl->pdt != ZINC_DTYPE_F32) {
            oo->convert(gtmp, ZINC_DTYPE_F32, g, pl->pdt, n);
            g32 = gtmp;
        }
        if (coef != 1.0) oo->scale(g32, (float)coef, n);
        pieces_update(z, oo, u, lo, hi, g32, ZINC_DTYPE_F32, 1.0f, master, m, v, NULL, lr, t);
        if (out) oo->convert(out, pl->pdt, master, ZINC_DTYPE_F32, n); /* oo: z->ops unless host */
    }
    if (nvme) return zinc_swap_io(z->param_swap, unit_id(z, u), 0, a * pl->psz, pbuf, n * pl->psz, 1);
    if (host && out) z->dev->copy(pdst, pbuf, n * pl->psz);
    return ZINC_OK;
}

/* The step's arguments, for the swap stream's update callback. */
typedef struct step_args {
    zero_state *z;
    double lr, coef;
    int t;
    float *gtmp;
    void *pbuf;
} step_args;

static zinc_status stream_update(void *user, const zinc_swap_group *g, float *master, float *m,
                                 float *v)
{
    step_args *s = user;
    return group_update(s->z, &s->z->units[g->region], g->first, g->n, master, m, v, s->lr,
                        s->coef, s->t, s->gtmp, s->pbuf);
}

/* Optimizer state streamed from NVMe: the sub-groups of every unit through
 * zinc_swap_stream (read ahead, update, write behind). */
static zinc_status step_nvme(zero_state *z, step_args *s, size_t G)
{
    const zero_opts *c = &z->opt;
    size_t cap = 0, K = 0;
    for (int l = 0; l < z->n_units; l++) cap += (z->units[l].opt_n + G - 1) / G;
    zinc_swap_group *grp = calloc(cap ? cap : 1, sizeof *grp);
    if (!grp) return zinc_error(ZINC_ERR_NOMEM, "optimizer swap buffers");
    for (int l = 0; l < z->n_units; l++)
        for (size_t a = 0; a < z->units[l].opt_n; a += G) {
            size_t n = z->units[l].opt_n - a < G ? z->units[l].opt_n - a : G;
            grp[K++] = (zinc_swap_group){.region = l, .first = a, .n = n};
        }
    zinc_status st = zinc_swap_stream(z->opt_swap, grp, K, G, c->pipeline_read,
                                      c->pipeline_write, stream_update, s,
                                      &z->t_opt_io);
    free(grp);
    return st;
}

/* ---------------------------------------------------------------- delayed update */

/* One update in flight: this step's reduced grads (stash) and the new params it writes
 * (next), per unit over its opt range, in host memory; master, m, v belong to the host
 * thread until the next step joins it. */
typedef struct zero_delay {
    void **stash, **next;
    int n_units;
    pthread_t th;
    int running;    /* th to join */
    int pending;    /* an update started, its params not yet in place */
    double lr, coef;
    int t;
    zero_state *z;
} zero_delay;

static void delay_update(zero_delay *d)
{
    zero_state *z = d->z;
    const zinc_ops *cpu = zinc_ops_cpu(); /* the host's AdamW (one pass, from 16-bit grads) */
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (!u->opt_n) continue;
        pieces_update(z, cpu, u, u->opt_lo, u->opt_lo + u->opt_n, d->stash[l], z->plan.pdt, (float)d->coef, u->master,
                      u->m, u->v, d->next[l], d->lr, d->t);
    }
}

static void *delay_main(void *arg)
{
    delay_update(arg);
    return NULL;
}

zinc_status zero_delay_flush(zero_state *z)
{
    zero_delay *d = z->delay;
    if (!d || !d->pending) return ZINC_OK;
    if (d->running) pthread_join(d->th, NULL);
    d->running = d->pending = 0;
    const size_t psz = z->plan.psz;
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (!u->opt_n) continue;
        if (zero_param_on_nvme(z, u)) {
            zinc_status st = zinc_swap_io(z->param_swap, l, 0, 0, d->next[l], u->opt_n * psz, 1);
            if (st != ZINC_OK) return st;
        } else {
            z->dev->copy(at(u->p, u->sharded ? 0 : u->opt_lo, psz), d->next[l], u->opt_n * psz);
        }
    }
    return zero_gather_whole_params(z);
}

void zero_delay_free(zero_state *z)
{
    zero_delay *d = z->delay;
    if (!d) return;
    if (d->running) pthread_join(d->th, NULL);
    for (int l = 0; l < d->n_units; l++) {
        if (d->stash) zinc_aio_buf_free(d->stash[l]);
        if (d->next) zinc_aio_buf_free(d->next[l]);
    }
    free(d->stash);
    free(d->next);
    free(d);
    z->delay = NULL;
}

static zinc_status delay_step(zero_state *z, double lr, double coef, int t)
{
    zinc_status fst = zero_delay_flush(z);
    if (fst != ZINC_OK) return fst;
    zero_delay *d = z->delay;
    const size_t psz = z->plan.psz;
    if (!d) { /* host buffers (page aligned: param swap writes go straight from next) */
        d = z->delay = calloc(1, sizeof *d);
        if (d) {
            d->z = z;
            d->n_units = z->n_units;
            d->stash = calloc((size_t)z->n_units, sizeof *d->stash);
            d->next = calloc((size_t)z->n_units, sizeof *d->next);
        }
        int ok = d && d->stash && d->next;
        for (int l = 0; ok && l < z->n_units; l++) {
            const size_t b = z->units[l].opt_n * psz;
            if (!b) continue;
            d->stash[l] = zinc_aio_buf_alloc(b);
            d->next[l] = zinc_aio_buf_alloc(b);
            ok = d->stash[l] && d->next[l];
        }
        if (!ok) {
            zero_delay_free(z);
            return zinc_error(ZINC_ERR_NOMEM, "offload_optimizer.delayed_update: host copies of the gradients and "
                              "parameters");
        }
    }
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (u->opt_n) z->dev->copy(d->stash[l], grad_opt(z, u), u->opt_n * psz);
    }
    d->lr = lr;
    d->coef = coef;
    d->t = t;
    d->pending = 1;
    /* the host thread overlaps the next step (on CPU ranks it shares their cores); inline
     * where host memory must stay still while device ops run (the strict device) */
    if ((z->dev->is_host || z->dev->host_async) && pthread_create(&d->th, NULL, delay_main, d) == 0) d->running = 1;
    else delay_update(d);
    return ZINC_OK;
}

zinc_status zero_optimizer_step(zero_state *z, double lr, double coef, int t)
{
    if (z->opt.delayed_update) return delay_step(z, lr, coef, t);
    zinc_status st = ZINC_OK;
    const zero_plan *pl = &z->plan;
    size_t G = zero_group_elems(z);
    if (G == 0) return ZINC_OK;
    /* gtmp: fp32 grads of a sub-group of a unit stepped on a device without the fused
     * AdamW (device memory; the CPU's is fused); pbuf: the param swap staging
     * (param_nvme) or the host staging of units whose state is the host's */
    int any_host = 0, any_dev = 0;
    for (int l = 0; l < z->n_units; l++) {
        any_host |= z->units[l].opt_host;
        any_dev |= z->units[l].opt_n > 0 && !z->units[l].opt_host;
    }
    const int need_gtmp = pl->pdt != ZINC_DTYPE_F32 && !z->ops->adamw_mixed && any_dev;
    float *gtmp = need_gtmp ? xalloc_raw(z, G * sizeof(float)) : NULL;
    void *pbuf = pl->param_nvme ? zinc_aio_buf_alloc(G * pl->psz)
                 : any_host     ? z->dev->host_alloc(G * pl->psz) : NULL;
    if ((need_gtmp && !gtmp) || ((pl->param_nvme || any_host) && !pbuf)) {
        st = zinc_error(ZINC_ERR_NOMEM, "optimizer buffers");
        goto cleanup;
    }
    if (pl->opt_nvme) {
        step_args s = {.z = z, .lr = lr, .coef = coef, .t = t, .gtmp = gtmp, .pbuf = pbuf};
        ZINC_TRY(zinc_swap_check(z->opt_swap));
        ZINC_TRY(zinc_swap_check(z->param_swap));
        ZINC_TRY(step_nvme(z, &s, G));
    } else {
        for (int l = 0; l < z->n_units; l++) {
            zero_unit *u = &z->units[l];
            for (size_t a = 0; a < u->opt_n; a += G) {
                size_t n = u->opt_n - a < G ? u->opt_n - a : G;
                ZINC_TRY(group_update(z, u, a, n, u->master + a, u->m + a, u->v + a, lr, coef, t,
                                      gtmp, pbuf));
            }
        }
    }
    /* whole params everywhere again: all-gather the updated slices */
    st = zero_gather_whole_params(z);
cleanup:
    xfree(z, gtmp);
    if (pl->param_nvme) zinc_aio_buf_free(pbuf);
    else z->dev->host_free(pbuf);
    return st;
}
