/* zero.c - flat units under ZeRO stages 0-3 (see engine_int.h for the
 * storage table).
 *
 * Communication per step (Psi elements, N ranks, in the storage dtype):
 *   stage 0: all-reduce of whole grads at the accumulation boundary (2 Psi (N-1)/N)
 *   stage 1: reduce-scatter at the boundary + all-gather of params after the step
 *   stage 2: reduce-scatter per unit right after its backward (every micro-batch)
 *            + all-gather after the step
 *   stage 3: all-gather of each sharded unit before forward and again before
 *            backward (unless kept: stage3_max_reuse_distance), reduce-scatter
 *            after backward; whole (persistent) units all-gather after the step.
 * Reduce-scatters run asynchronously when overlap_comm is set, with at most
 * reduce_bucket_size elements in flight; post-step all-gathers keep at most
 * allgather_bucket_size elements in flight.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/log.h"
#include "zinc/rng.h"

static void *xalloc(size_t bytes)
{
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p) memset(p, 0, bytes ? bytes : 64);
    return p;
}

/* ------------------------------------------------------------ conversions */

void zero_to_f32(float *dst, const void *src, zinc_dtype dt, size_t n)
{
    if (dt == ZINC_DTYPE_F32) {
        if (dst != src) memcpy(dst, src, n * sizeof(float));
    } else if (dt == ZINC_DTYPE_BF16) {
        const uint16_t *s = src;
#pragma omp parallel for simd if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++) dst[i] = zinc_bf16_to_f32(s[i]);
    } else {
        const uint16_t *s = src;
#pragma omp parallel for if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++) dst[i] = zinc_f16_to_f32(s[i]);
    }
}

void zero_from_f32(void *dst, const float *src, zinc_dtype dt, size_t n)
{
    if (dt == ZINC_DTYPE_F32) {
        if (dst != src) memcpy(dst, src, n * sizeof(float));
    } else if (dt == ZINC_DTYPE_BF16) {
        uint16_t *d = dst;
#pragma omp parallel for simd if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++) d[i] = zinc_f32_to_bf16(src[i]);
    } else {
        uint16_t *d = dst;
#pragma omp parallel for if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++) d[i] = zinc_f32_to_f16(src[i]);
    }
}

/* dst (P) += src (P), in fp32 arithmetic. */
static void add_into(void *dst, const void *src, zinc_dtype dt, size_t n)
{
    if (dt == ZINC_DTYPE_F32) {
        float *d = dst;
        const float *s = src;
#pragma omp parallel for simd if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++) d[i] += s[i];
    } else {
        uint16_t *d = dst;
        const uint16_t *s = src;
        int bf = dt == ZINC_DTYPE_BF16;
#pragma omp parallel for if (n > 65536) schedule(static)
        for (size_t i = 0; i < n; i++)
            d[i] = bf ? zinc_f32_to_bf16(zinc_bf16_to_f32(d[i]) + zinc_bf16_to_f32(s[i]))
                      : zinc_f32_to_f16(zinc_f16_to_f32(d[i]) + zinc_f16_to_f32(s[i]));
    }
}

/* dst (P) += src (fp32). */
static void add_f32_into(void *dst, const float *src, zinc_dtype dt, size_t n)
{
    if (dt == ZINC_DTYPE_F32) {
        add_into(dst, src, dt, n);
        return;
    }
    uint16_t *d = dst;
    int bf = dt == ZINC_DTYPE_BF16;
#pragma omp parallel for if (n > 65536) schedule(static)
    for (size_t i = 0; i < n; i++)
        d[i] = bf ? zinc_f32_to_bf16(zinc_bf16_to_f32(d[i]) + src[i])
                  : zinc_f32_to_f16(zinc_f16_to_f32(d[i]) + src[i]);
}

static char *at(void *base, size_t elem, size_t psz) { return (char *)base + elem * psz; }

/* ------------------------------------------------------------ layout */

void zero_units_layout(zinc_engine *e)
{
    size_t pad = (size_t)e->dp * ENGINE_UNIT_ALIGN;
    int64_t persist = e->cfg.zero.stage3_param_persistence_threshold;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        size_t off = 0;
        for (int p = u->n_params_first; p < u->n_params_end; p++) {
            e->params[p].uoff = off;
            off += ((size_t)e->params[p].numel + ENGINE_UNIT_ALIGN - 1) / ENGINE_UNIT_ALIGN *
                   ENGINE_UNIT_ALIGN;
        }
        u->numel = (off + pad - 1) / pad * pad;
        u->shard = u->numel / (size_t)e->dp;
        /* a unit with fewer elements than the persistence threshold stays whole */
        u->sharded = e->stage == 3 && u->numel > 0 && (int64_t)off >= persist;
        if (e->stage == 0) {
            u->opt_lo = 0;
            u->opt_n = u->numel;
        } else {
            u->opt_lo = (size_t)e->dp_rank * u->shard;
            u->opt_n = u->shard;
        }
    }
}

void zero_mem_stats(const zinc_engine *e, zinc_mem_stats *m)
{
    memset(m, 0, sizeof *m);
    for (int l = 0; l < e->n_layers; l++) {
        const engine_unit *u = &e->units[l];
        m->params += (u->sharded ? u->shard : u->numel) * e->psz;
        m->grads += (e->stage >= 2 ? u->shard : u->numel) * e->psz;
        m->master += e->pdt == ZINC_DTYPE_F32 ? 0 : u->opt_n * sizeof(float);
        m->optimizer += 2 * u->opt_n * sizeof(float);
    }
    m->total = m->params + m->grads + m->master + m->optimizer;
    /* buckets: gradient reductions in flight (at most reduce_bucket_size
     * elements past the unit being reduced) and the reduce-scatter output */
    if (e->stage >= 1) {
        uint64_t all = 0, big = 0;
        for (int l = 0; l < e->n_layers; l++) {
            all += e->units[l].numel;
            if (e->units[l].numel > big) big = e->units[l].numel;
        }
        uint64_t rb = (uint64_t)e->cfg.zero.reduce_bucket_size + big;
        m->buffers = (rb < all ? rb : all) * e->psz + big / (uint64_t)e->dp * e->psz;
    }
}

/* ------------------------------------------------------------ alloc / init */

static void init_param(const zinc_engine *e, const engine_param *p, float *d)
{
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

zinc_status zero_units_alloc(zinc_engine *e)
{
    size_t psz = e->psz;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->numel == 0) continue;
        size_t pn = u->sharded ? u->shard : u->numel;
        size_t gn = e->stage >= 2 ? u->shard : u->numel;
        u->p = xalloc(pn * psz);
        u->g = xalloc(gn * psz);
        u->m = xalloc(u->opt_n * sizeof(float));
        u->v = xalloc(u->opt_n * sizeof(float));
        float *full = xalloc(u->numel * sizeof(float));
        if (!u->p || !u->g || !u->m || !u->v || !full) {
            free(full);
            return zinc_error(ZINC_ERR_NOMEM, "model state of layer %d: %zu elements", l, u->numel);
        }
        /* every value is a function of (seed, name): the same at any layout */
        for (int p = u->n_params_first; p < u->n_params_end; p++)
            init_param(e, &e->params[p], full + e->params[p].uoff);
        zero_from_f32(u->p, full + (u->sharded ? u->opt_lo : 0), e->pdt, pn);
        if (e->pdt == ZINC_DTYPE_F32) {
            u->master = (float *)at(u->p, u->sharded ? 0 : u->opt_lo, psz);
        } else {
            u->master = xalloc(u->opt_n * sizeof(float));
            if (!u->master) {
                free(full);
                return zinc_error(ZINC_ERR_NOMEM, "master weights of layer %d", l);
            }
            memcpy(u->master, full + u->opt_lo, u->opt_n * sizeof(float));
        }
        free(full);
    }
    return ZINC_OK;
}

void zero_units_free(zinc_engine *e)
{
    if (!e->units) return;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        zero_unit_release(e, l);
        if (u->h_gather) zinc_comm_wait(&u->h_gather);
        free(u->gathered);
        if (u->wg_owned) free(u->wg);
        if (e->pdt != ZINC_DTYPE_F32) free(u->master);
        free(u->p);
        free(u->g);
        free(u->m);
        free(u->v);
    }
    for (int i = 0; i < e->n_pending; i++) {
        zinc_comm_wait(&e->pending[i].h);
        if (e->pending[i].send != e->units[e->pending[i].unit].wg) free(e->pending[i].send);
        free(e->pending[i].recv);
    }
    free(e->pending);
}

/* ------------------------------------------------------------ params */

zinc_status zero_unit_prefetch(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (!u->sharded || u->wp || u->h_gather) return ZINC_OK;
    if (!u->gathered) {
        u->gathered = xalloc(u->numel * e->psz);
        if (!u->gathered) return zinc_error(ZINC_ERR_NOMEM, "gather buffer of layer %d", ui);
    }
    return zinc_comm_all_gather(e->mesh->dp_group, u->p, u->gathered, u->shard, e->pdt,
                                &u->h_gather);
}

zinc_status zero_unit_materialize(zinc_engine *e, int ui)
{
    zinc_status st;
    engine_unit *u = &e->units[ui];
    if (u->wp || u->numel == 0) return ZINC_OK;
    const void *whole = u->p;
    if (u->sharded) {
        if (!u->h_gather && (st = zero_unit_prefetch(e, ui)) != ZINC_OK) return st;
        if ((st = zinc_comm_wait(&u->h_gather)) != ZINC_OK) return st;
        whole = u->gathered;
    }
    if (e->pdt == ZINC_DTYPE_F32) {
        u->wp = (float *)whole;
        u->wp_owned = u->sharded; /* the gathered buffer */
        if (u->sharded) u->gathered = NULL;
    } else {
        u->wp = xalloc(u->numel * sizeof(float));
        if (!u->wp) return zinc_error(ZINC_ERR_NOMEM, "working params of layer %d", ui);
        u->wp_owned = 1;
        zero_to_f32(u->wp, whole, e->pdt, u->numel);
        if (u->sharded) {
            free(u->gathered);
            u->gathered = NULL;
        }
    }
    if (u->wp_owned) e->live_elems += u->numel;
    return ZINC_OK;
}

int zero_unit_releasable(const zinc_engine *e, int ui)
{
    (void)e;
    return e->units[ui].wp_owned;
}

void zero_unit_release(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (u->wp_owned) {
        free(u->wp);
        e->live_elems -= u->numel;
    }
    u->wp = NULL;
    u->wp_owned = 0;
}

/* ------------------------------------------------------------ grads */

void zero_grads_zero(zinc_engine *e)
{
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->g) memset(u->g, 0, (e->stage >= 2 ? u->shard : u->numel) * e->psz);
    }
}

zinc_status zero_grad_open(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (u->wg || u->numel == 0) return ZINC_OK;
    if (e->stage < 2 && e->pdt == ZINC_DTYPE_F32) {
        u->wg = u->g; /* accumulate straight into the whole fp32 grads */
        u->wg_owned = 0;
        return ZINC_OK;
    }
    u->wg = xalloc(u->numel * sizeof(float));
    if (!u->wg) return zinc_error(ZINC_ERR_NOMEM, "working grads of layer %d", ui);
    u->wg_owned = 1;
    return ZINC_OK;
}

static zinc_status pending_finish(zinc_engine *e, engine_pending *pd)
{
    zinc_status st = zinc_comm_wait(&pd->h);
    engine_unit *u = &e->units[pd->unit];
    if (st == ZINC_OK) add_into(u->g, pd->recv, e->pdt, u->shard);
    if (pd->send == (void *)u->wg) {
        u->wg = NULL;
        u->wg_owned = 0;
    }
    free(pd->send);
    free(pd->recv);
    e->pending_bytes -= u->numel;
    return st;
}

zinc_status zero_wait_pending(zinc_engine *e, int all)
{
    zinc_status st = ZINC_OK;
    uint64_t limit = (uint64_t)e->cfg.zero.reduce_bucket_size;
    int done = 0;
    while (done < e->n_pending && (all || e->pending_bytes > limit)) {
        zinc_status s = pending_finish(e, &e->pending[done++]);
        if (st == ZINC_OK) st = s;
    }
    memmove(e->pending, e->pending + done, (size_t)(e->n_pending - done) * sizeof *e->pending);
    e->n_pending -= done;
    return st;
}

zinc_status zero_grad_close(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (!u->wg) return ZINC_OK;
    if (e->stage < 2) {
        if (u->wg_owned) {
            add_f32_into(u->g, u->wg, e->pdt, u->numel);
            free(u->wg);
        }
        u->wg = NULL;
        u->wg_owned = 0;
        return ZINC_OK;
    }
    /* stage >= 2: reduce-scatter the unit's grads (storage dtype) into the owner's shard */
    void *send = u->wg;
    if (e->pdt != ZINC_DTYPE_F32) {
        send = xalloc(u->numel * e->psz);
        if (!send) return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
        zero_from_f32(send, u->wg, e->pdt, u->numel);
        free(u->wg);
        u->wg = NULL;
        u->wg_owned = 0;
    }
    void *recv = xalloc(u->shard * e->psz);
    engine_pending *np = realloc(e->pending, (size_t)(e->n_pending + 1) * sizeof *np);
    if (!recv || !np) {
        free(recv);
        return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
    }
    e->pending = np;
    engine_pending *pd = &e->pending[e->n_pending++];
    *pd = (engine_pending){.unit = ui, .send = send, .recv = recv};
    e->pending_bytes += u->numel;
    zinc_status st = zinc_comm_reduce_scatter(e->mesh->dp_group, send, recv, u->shard, e->pdt,
                                              ZINC_REDOP_SUM, &pd->h);
    if (st != ZINC_OK) return st;
    return zero_wait_pending(e, !e->cfg.zero.overlap_comm);
}

zinc_status zero_reduce_boundary(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    if (e->dp == 1 || e->stage >= 2) return ZINC_OK;
    zinc_comm *g = e->mesh->dp_group;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->numel == 0) continue;
        if (e->stage == 0) {
            st = zinc_comm_all_reduce(g, u->g, u->g, u->numel, e->pdt, ZINC_REDOP_SUM, NULL);
        } else {
            void *tmp = xalloc(u->shard * e->psz);
            if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "reduce-scatter buffer of layer %d", l);
            st = zinc_comm_reduce_scatter(g, u->g, tmp, u->shard, e->pdt, ZINC_REDOP_SUM, NULL);
            if (st == ZINC_OK) memcpy(at(u->g, u->opt_lo, e->psz), tmp, u->shard * e->psz);
            free(tmp);
        }
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

/* This rank's reduced grads over its opt range. */
static void *grad_opt(const zinc_engine *e, const engine_unit *u)
{
    return e->stage >= 2 ? u->g : at(u->g, u->opt_lo, e->psz);
}

double zero_grad_sumsq(zinc_engine *e)
{
    double s = 0.0;
    float *tmp = NULL;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->opt_n == 0) continue;
        const void *g = grad_opt(e, u);
        if (e->pdt == ZINC_DTYPE_F32) {
            s += e->ops->sumsq(g, u->opt_n);
        } else {
            float *t = realloc(tmp, u->opt_n * sizeof(float));
            if (!t) { free(tmp); return NAN; }
            tmp = t;
            zero_to_f32(tmp, g, e->pdt, u->opt_n);
            s += e->ops->sumsq(tmp, u->opt_n);
        }
    }
    free(tmp);
    return s;
}

/* ------------------------------------------------------------ optimizer */

zinc_status zero_optimizer_step(zinc_engine *e, double lr, double coef, int t)
{
    const zinc_config *c = &e->cfg;
    float *gtmp = NULL;
    size_t gcap = 0;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->opt_n == 0) continue;
        void *g = grad_opt(e, u);
        float *g32 = g;
        if (e->pdt != ZINC_DTYPE_F32) {
            if (gcap < u->opt_n) {
                free(gtmp);
                gtmp = xalloc(u->opt_n * sizeof(float));
                gcap = gtmp ? u->opt_n : 0;
                if (!gtmp) return zinc_error(ZINC_ERR_NOMEM, "optimizer buffer");
            }
            zero_to_f32(gtmp, g, e->pdt, u->opt_n);
            g32 = gtmp;
        }
        if (coef != 1.0) e->ops->scale(g32, (float)coef, u->opt_n);
        /* AdamW per parameter piece inside the opt range (weight decay per param) */
        size_t lo = u->opt_lo, hi = u->opt_lo + u->opt_n;
        for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
            const engine_param *p = &e->params[pi];
            size_t a = p->uoff > lo ? p->uoff : lo;
            size_t b = p->uoff + (size_t)p->numel < hi ? p->uoff + (size_t)p->numel : hi;
            if (a >= b) continue;
            float wd = p->decay ? (float)c->optimizer.weight_decay : 0.0f;
            e->ops->adamw(u->master + (a - lo), g32 + (a - lo), u->m + (a - lo), u->v + (a - lo),
                          b - a, (float)lr, (float)c->optimizer.betas[0],
                          (float)c->optimizer.betas[1], (float)c->optimizer.eps, wd, t);
        }
        if (e->pdt != ZINC_DTYPE_F32)
            zero_from_f32(u->sharded ? u->p : at(u->p, lo, e->psz), u->master, e->pdt, u->opt_n);
    }
    free(gtmp);

    return zero_gather_whole_params(e);
}

zinc_status zero_gather_whole_params(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    const zinc_config *c = &e->cfg;
    if (e->stage == 0 || e->dp == 1) return ZINC_OK;
    zinc_comm_handle **hs = calloc((size_t)e->n_layers, sizeof *hs);
    if (!hs) return zinc_error(ZINC_ERR_NOMEM, "all-gather handles");
    uint64_t in_flight = 0, limit = (uint64_t)c->zero.allgather_bucket_size;
    int first = 0;
    for (int l = 0; l < e->n_layers && st == ZINC_OK; l++) {
        engine_unit *u = &e->units[l];
        if (u->numel == 0 || u->sharded) continue;
        st = zinc_comm_all_gather(e->mesh->dp_group, at(u->p, u->opt_lo, e->psz), u->p, u->shard,
                                  e->pdt, &hs[l]);
        in_flight += u->numel;
        while (st == ZINC_OK && in_flight > limit && first <= l) {
            if (hs[first]) {
                st = zinc_comm_wait(&hs[first]);
                in_flight -= e->units[first].numel;
            }
            first++;
        }
    }
    for (int l = 0; l < e->n_layers; l++) {
        zinc_status s2 = zinc_comm_wait(&hs[l]);
        if (st == ZINC_OK) st = s2;
    }
    free(hs);
    return st;
}

zinc_status zero_params_from_master(zinc_engine *e)
{
    if (e->pdt != ZINC_DTYPE_F32)
        for (int l = 0; l < e->n_layers; l++) {
            engine_unit *u = &e->units[l];
            if (u->opt_n)
                zero_from_f32(u->sharded ? u->p : at(u->p, u->opt_lo, e->psz), u->master, e->pdt,
                              u->opt_n);
        }
    return zero_gather_whole_params(e);
}
