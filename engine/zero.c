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
 *
 * On one rank nothing moves: a shard is the whole unit, so fp32 working
 * params and grads alias the store as they do below stage 2, and the
 * reduce-scatter of 16-bit grads becomes a plain add of the rounded grads
 * (the same numbers as the reduce-scatter over one rank gave).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_int.h"
#include "zinc/log.h"
#include "zinc/rng.h"

/* Model-state memory lives on the rank's device (e->dev). On the cpu
 * device large blocks are page aligned so checkpoint and offload I/O can go
 * straight to and from them with O_DIRECT. xalloc_raw leaves the contents
 * undefined (for buffers that are fully overwritten); xalloc zeroes them. */
static void *xalloc_raw(const zinc_engine *e, size_t bytes)
{
    return e->dev->alloc_raw ? e->dev->alloc_raw(bytes) : e->dev->alloc(bytes);
}

static void *xalloc(const zinc_engine *e, size_t bytes) { return e->dev->alloc(bytes); }
static void xfree(const zinc_engine *e, void *p) { e->dev->free(p); }

/* Optimizer state (master, m, v): device memory, or pinned host memory when
 * the optimizer is offloaded to the CPU on a GPU (opt_host). */
static void *opt_alloc(const zinc_engine *e, size_t bytes)
{
    return e->opt_host ? e->dev->host_alloc(bytes) : e->dev->alloc(bytes);
}
static void opt_free(const zinc_engine *e, void *p)
{
    if (e->opt_host)
        e->dev->host_free(p);
    else
        e->dev->free(p);
}

/* ------------------------------------------------------------ conversions */

void zero_to_f32(const zinc_engine *e, float *dst, const void *src, zinc_dtype dt, size_t n)
{
    e->ops->convert(dst, ZINC_DTYPE_F32, src, dt, n);
}

void zero_from_f32(const zinc_engine *e, void *dst, const float *src, zinc_dtype dt, size_t n)
{
    e->ops->convert(dst, dt, src, ZINC_DTYPE_F32, n);
}

/* dst (P, device) = host fp32 values: converted in place on a host device,
 * else staged through a device fp32 buffer. */
static zinc_status store_host_f32(zinc_engine *e, void *dst, const float *src, size_t n)
{
    if (e->dev->is_host) {
        zero_from_f32(e, dst, src, e->pdt, n);
        return ZINC_OK;
    }
    if (e->pdt == ZINC_DTYPE_F32) {
        e->dev->copy(dst, src, n * sizeof(float));
        return ZINC_OK;
    }
    float *tmp = xalloc_raw(e, n * sizeof(float));
    if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "parameter staging: %zu elements", n);
    e->dev->copy(tmp, src, n * sizeof(float));
    zero_from_f32(e, dst, tmp, e->pdt, n);
    xfree(e, tmp);
    return ZINC_OK;
}

static char *at(void *base, size_t elem, size_t psz) { return (char *)base + elem * psz; }

static double wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

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

static size_t group_elems(const zinc_engine *e);

void zero_mem_stats(const zinc_engine *e, zinc_mem_stats *m)
{
    memset(m, 0, sizeof *m);
    for (int l = 0; l < e->n_layers; l++) {
        const engine_unit *u = &e->units[l];
        uint64_t pb = (u->sharded ? u->shard : u->numel) * e->psz;
        uint64_t mb = e->master_sep ? u->opt_n * sizeof(float) : 0;
        uint64_t ob = 2 * u->opt_n * sizeof(float);
        m->params += pb;
        m->grads += (e->stage >= 2 ? u->shard : u->numel) * e->psz;
        m->master += mb;
        m->optimizer += ob;
        if (e->opt_nvme) m->nvme += mb + ob;
        if (offload_param_on_nvme(e, u)) m->nvme += pb;
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
    if (e->opt_nvme) { /* sub-group buffers of the NVMe optimizer pipeline */
        uint64_t g = group_elems(e), most = 0;
        for (int l = 0; l < e->n_layers; l++)
            if (e->units[l].opt_n > most) most = e->units[l].opt_n;
        if (g > most) g = (most + 1023) / 1024 * 1024;
        int nb = 1 + e->cfg.zero.offload_optimizer.pipeline_read + e->cfg.zero.offload_optimizer.pipeline_write;
        m->buffers += (uint64_t)nb * 3 * g * sizeof(float);
    }
}

/* ------------------------------------------------------------ alloc / init */

/* Elements [first, first+n) of parameter p's initial value: a function of
 * (seed, name) alone, so every layout starts from the same model. */
static void init_param_range(const zinc_engine *e, const engine_param *p, float *d, int64_t first,
                             int64_t n)
{
    switch (p->init) {
    case ZINC_INIT_ZEROS:
        memset(d, 0, (size_t)n * sizeof(float));
        break;
    case ZINC_INIT_ONES:
        for (int64_t k = 0; k < n; k++) d[k] = 1.0f;
        break;
    case ZINC_INIT_NORMAL:
        zinc_rng_normal_range((uint64_t)e->cfg.model.seed, zinc_hash_str(p->name), d, first, n,
                              p->std);
        break;
    }
}

zinc_status zero_units_alloc(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    size_t psz = e->psz;
    float *vals = NULL;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->numel == 0) continue;
        int p_nvme = offload_param_on_nvme(e, u);
        /* the params this rank stores: whole unit, or its shard (which holds the opt range) */
        size_t plo = u->sharded ? u->opt_lo : 0, pn = u->sharded ? u->shard : u->numel;
        size_t gn = e->stage >= 2 ? u->shard : u->numel;
        u->g = xalloc(e, gn * psz);
        if (!p_nvme) u->p = xalloc(e, pn * psz);
        if (!e->opt_nvme) {
            u->m = opt_alloc(e, u->opt_n * sizeof(float));
            u->v = opt_alloc(e, u->opt_n * sizeof(float));
        }
        free(vals); /* initial values are computed on the host */
        vals = calloc(pn ? pn : 1, sizeof(float));
        if (!u->g || (!p_nvme && !u->p) || (!e->opt_nvme && (!u->m || !u->v)) || !vals) {
            st = zinc_error(ZINC_ERR_NOMEM, "model state of layer %d: %zu elements", l, u->numel);
            goto cleanup;
        }
        for (int p = u->n_params_first; p < u->n_params_end; p++) {
            const engine_param *ep = &e->params[p];
            size_t a = ep->uoff > plo ? ep->uoff : plo;
            size_t z = ep->uoff + (size_t)ep->numel < plo + pn ? ep->uoff + (size_t)ep->numel : plo + pn;
            if (a < z) init_param_range(e, ep, vals + (a - plo), (int64_t)(a - ep->uoff),
                                        (int64_t)(z - a));
        }
        if (e->master_sep && !e->opt_nvme) {
            u->master = opt_alloc(e, u->opt_n * sizeof(float));
            if (!u->master) {
                st = zinc_error(ZINC_ERR_NOMEM, "master weights of layer %d", l);
                goto cleanup;
            }
        } else if (!e->master_sep) {
            u->master = (float *)at(u->p, u->sharded ? 0 : u->opt_lo, psz);
        }
        /* the moments start as zeros (memory, or the sparse swap file) */
        ZINC_TRY(zero_unit_store(e, l, vals));
    }
cleanup:
    free(vals);
    return st;
}

zinc_status zero_unit_store(zinc_engine *e, int l, const float *vals)
{
    zinc_status st = ZINC_OK;
    engine_unit *u = &e->units[l];
    size_t plo = u->sharded ? u->opt_lo : 0, pn = u->sharded ? u->shard : u->numel;
    if (offload_param_on_nvme(e, u)) {
        void *pio = zinc_aio_buf_alloc(pn * e->psz);
        if (!pio) return zinc_error(ZINC_ERR_NOMEM, "param staging of layer %d", l);
        zero_from_f32(e, pio, vals, e->pdt, pn); /* nvme: host device only */
        st = zinc_aio_pwrite(e->param_swap, pio, pn * e->psz, u->pswap_off);
        zinc_aio_buf_free(pio);
        if (st != ZINC_OK) return st;
    } else if ((st = store_host_f32(e, u->p, vals, pn)) != ZINC_OK) {
        return st;
    }
    const float *mv = vals + (u->opt_lo - plo); /* master values of the opt range */
    if (e->opt_nvme) {
        if (u->opt_n) st = zinc_aio_pwrite(e->opt_swap, mv, u->opt_n * sizeof(float), u->swap_off);
    } else if (e->master_sep) {
        e->dev->copy(u->master, mv, u->opt_n * sizeof(float));
    }
    return st;
}

void zero_units_free(zinc_engine *e)
{
    if (!e->units) return;
    /* reductions in flight still use their buffers: finish them first */
    for (int i = 0; i < e->n_pending; i++) {
        zinc_comm_wait(&e->pending[i].h);
        if (e->pending[i].send != e->units[e->pending[i].unit].wg) xfree(e, e->pending[i].send);
        xfree(e, e->pending[i].recv);
    }
    free(e->pending);
    e->pending = NULL;
    e->n_pending = 0;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        zero_unit_release(e, l);
        if (u->h_gather) zinc_comm_wait(&u->h_gather);
        xfree(e, u->gathered);
        if (u->wg_owned) xfree(e, u->wg);
        if (u->pread) zinc_aio_wait(&u->pread);
        zinc_aio_buf_free(u->pstage);
        if (e->master_sep && !e->opt_nvme) opt_free(e, u->master);
        xfree(e, u->p);
        xfree(e, u->g);
        opt_free(e, u->m);
        opt_free(e, u->v);
    }
}

/* ------------------------------------------------------------ params */

static zinc_status gather_start(zinc_engine *e, int ui, const void *src);

int zero_unit_gathers(const zinc_engine *e, int ui)
{
    const engine_unit *u = &e->units[ui];
    return u->sharded && (e->dp > 1 || offload_param_on_nvme(e, u));
}

zinc_status zero_unit_prefetch(zinc_engine *e, int ui)
{
    zinc_status st;
    engine_unit *u = &e->units[ui];
    if (!zero_unit_gathers(e, ui) || u->wp || u->h_gather || u->pread) return ZINC_OK;
    if (offload_param_on_nvme(e, u)) {
        /* the shard comes off NVMe first; the all-gather follows in materialize */
        u->pstage = zinc_aio_buf_alloc(u->shard * e->psz);
        if (!u->pstage) return zinc_error(ZINC_ERR_NOMEM, "param staging of layer %d", ui);
        st = zinc_aio_pread_async(e->param_swap, u->pstage, u->shard * e->psz, u->pswap_off,
                                  &u->pread);
        if (st != ZINC_OK) {
            zinc_aio_buf_free(u->pstage);
            u->pstage = NULL;
        }
    } else {
        st = gather_start(e, ui, u->p);
    }
    if (st == ZINC_OK) e->fetch_elems += u->numel; /* until materialize takes it */
    return st;
}

/* Starts the all-gather of unit ui's shard (at src) into its gathered buffer. */
static zinc_status gather_start(zinc_engine *e, int ui, const void *src)
{
    engine_unit *u = &e->units[ui];
    if (!u->gathered) {
        u->gathered = xalloc_raw(e, u->numel * e->psz);
        if (!u->gathered) return zinc_error(ZINC_ERR_NOMEM, "gather buffer of layer %d", ui);
    }
    return zinc_comm_all_gather(e->mesh->dp_group, src, u->gathered, u->shard, e->pdt,
                                &u->h_gather);
}

zinc_status zero_unit_materialize(zinc_engine *e, int ui)
{
    zinc_status st;
    engine_unit *u = &e->units[ui];
    if (u->wp || u->numel == 0) return ZINC_OK;
    const void *whole = u->p; /* whole already, or the shard of one rank: all of it */
    const int gathered = zero_unit_gathers(e, ui);
    if (gathered) {
        if (!u->h_gather && (st = zero_unit_prefetch(e, ui)) != ZINC_OK) return st;
        e->fetch_elems -= u->numel;
        if (u->pread) { /* NVMe shard: finish the read, then gather */
            if ((st = zinc_aio_wait(&u->pread)) == ZINC_OK) st = gather_start(e, ui, u->pstage);
            if (st == ZINC_OK) st = zinc_comm_wait(&u->h_gather);
            zinc_aio_buf_free(u->pstage);
            u->pstage = NULL;
            if (st != ZINC_OK) return st;
        }
        if ((st = zinc_comm_wait(&u->h_gather)) != ZINC_OK) return st;
        whole = u->gathered;
    }
    if (e->pdt == ZINC_DTYPE_F32) { /* the working copy is the gathered buffer or the store */
        u->wp = (float *)whole;
        u->wp_owned = gathered;
        if (gathered) u->gathered = NULL;
    } else {
        u->wp = xalloc_raw(e, u->numel * sizeof(float));
        if (!u->wp) return zinc_error(ZINC_ERR_NOMEM, "working params of layer %d", ui);
        u->wp_owned = 1;
        zero_to_f32(e, u->wp, whole, e->pdt, u->numel);
        if (gathered) {
            xfree(e, u->gathered);
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
        xfree(e, u->wp);
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
        if (u->g) e->ops->zero(u->g, (e->stage >= 2 ? u->shard : u->numel) * e->psz);
    }
}

zinc_status zero_grad_open(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (u->wg || u->numel == 0) return ZINC_OK;
    /* grads are stored whole below stage 2, and at any stage on one rank
     * (its shard is the whole unit) */
    if ((e->stage < 2 || e->dp == 1) && e->pdt == ZINC_DTYPE_F32) {
        u->wg = u->g; /* accumulate straight into the whole fp32 grads */
        u->wg_owned = 0;
        return ZINC_OK;
    }
    u->wg = xalloc(e, u->numel * sizeof(float));
    if (!u->wg) return zinc_error(ZINC_ERR_NOMEM, "working grads of layer %d", ui);
    u->wg_owned = 1;
    return ZINC_OK;
}

static zinc_status pending_finish(zinc_engine *e, engine_pending *pd)
{
    zinc_status st = zinc_comm_wait(&pd->h);
    engine_unit *u = &e->units[pd->unit];
    if (st == ZINC_OK) e->ops->add_into(u->g, e->pdt, pd->recv, e->pdt, u->shard);
    if (pd->send == (void *)u->wg) {
        u->wg = NULL;
        u->wg_owned = 0;
    }
    xfree(e, pd->send);
    xfree(e, pd->recv);
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
    if (done > 0) {
        memmove(e->pending, e->pending + done, (size_t)(e->n_pending - done) * sizeof *e->pending);
        e->n_pending -= done;
    }
    return st;
}

zinc_status zero_grad_close(zinc_engine *e, int ui)
{
    engine_unit *u = &e->units[ui];
    if (!u->wg) return ZINC_OK;
    if (e->stage < 2) {
        if (u->wg_owned) {
            e->ops->add_into(u->g, e->pdt, u->wg, ZINC_DTYPE_F32, u->numel);
            xfree(e, u->wg);
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
    if (e->pdt != ZINC_DTYPE_F32) {
        send = xalloc_raw(e, u->numel * e->psz);
        if (!send) return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
        zero_from_f32(e, send, u->wg, e->pdt, u->numel);
        xfree(e, u->wg);
        u->wg = NULL;
        u->wg_owned = 0;
    }
    if (e->dp == 1) { /* the reduce-scatter over one rank is the identity: add directly */
        e->ops->add_into(u->g, e->pdt, send, e->pdt, u->numel);
        xfree(e, send);
        u->wg = NULL;
        u->wg_owned = 0;
        return ZINC_OK;
    }
    void *recv = xalloc_raw(e, u->shard * e->psz);
    engine_pending *np = realloc(e->pending, (size_t)(e->n_pending + 1) * sizeof *np);
    if (np) e->pending = np;
    if (!recv || !np) {
        xfree(e, recv);
        if (send != (void *)u->wg) xfree(e, send);
        return zinc_error(ZINC_ERR_NOMEM, "gradient bucket of layer %d", ui);
    }
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
            void *tmp = xalloc_raw(e, u->shard * e->psz);
            if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "reduce-scatter buffer of layer %d", l);
            st = zinc_comm_reduce_scatter(g, u->g, tmp, u->shard, e->pdt, ZINC_REDOP_SUM, NULL);
            if (st == ZINC_OK) e->ops->copy(at(u->g, u->opt_lo, e->psz), tmp, u->shard * e->psz);
            xfree(e, tmp);
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

zinc_status zero_grad_sumsq(zinc_engine *e, double *out)
{
    double sum = 0.0;
    float *tmp = NULL;
    size_t cap = 0;
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        if (u->opt_n == 0) continue;
        const void *g = grad_opt(e, u);
        if (e->pdt == ZINC_DTYPE_F32) {
            sum += e->ops->sumsq(g, u->opt_n);
            continue;
        }
        if (cap < u->opt_n) {
            xfree(e, tmp);
            tmp = xalloc_raw(e, u->opt_n * sizeof(float));
            cap = tmp ? u->opt_n : 0;
            if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "gradient norm buffer");
        }
        zero_to_f32(e, tmp, g, e->pdt, u->opt_n);
        sum += e->ops->sumsq(tmp, u->opt_n);
    }
    xfree(e, tmp);
    *out = sum;
    return ZINC_OK;
}

/* Fault injection for tests: ZINC_FAULT_NAN="RANK:STEP" makes that rank's
 * gradients at that (1-based) step hold a NaN: the first element of the last
 * unit it steps, so that finding it means scanning past finite ones. */
void zero_fault_nan(zinc_engine *e)
{
    const char *f = getenv("ZINC_FAULT_NAN");
    int r;
    long long s;
    if (!f || sscanf(f, "%d:%lld", &r, &s) != 2 || r != e->dp_rank || s != e->step + 1) return;
    for (int l = e->n_layers - 1; l >= 0; l--) {
        engine_unit *u = &e->units[l];
        if (u->opt_n == 0) continue;
        float nan = NAN;
        uint16_t h = e->pdt == ZINC_DTYPE_BF16 ? zinc_f32_to_bf16(nan) : zinc_f32_to_f16(nan);
        e->dev->copy(grad_opt(e, u), e->pdt == ZINC_DTYPE_F32 ? (void *)&nan : (void *)&h, e->psz);
        for (int p = u->n_params_first; p < u->n_params_end; p++)
            if (u->opt_lo >= e->params[p].uoff &&
                u->opt_lo < e->params[p].uoff + (size_t)e->params[p].numel)
                ZINC_INFO("fault: a NaN in the gradient of %s on rank %d at step %lld",
                          e->params[p].name, r, s);
        return;
    }
}

zinc_status zero_first_nonfinite(zinc_engine *e, int *param)
{
    int32_t first = INT32_MAX;
    void *host = NULL;
    size_t cap = 0;
    for (int l = 0; l < e->n_layers && first == INT32_MAX; l++) {
        engine_unit *u = &e->units[l];
        if (u->opt_n == 0) continue;
        if (cap < u->opt_n) { /* the error path only: a host copy, any device */
            free(host);
            host = malloc(u->opt_n * e->psz);
            cap = host ? u->opt_n : 0;
            if (!host) return zinc_error(ZINC_ERR_NOMEM, "out of memory: asked for %zu bytes of "
                                         "host memory to scan gradients", u->opt_n * e->psz);
        }
        e->dev->copy(host, grad_opt(e, u), u->opt_n * e->psz);
        for (size_t i = 0; i < u->opt_n; i++) {
            float g = e->pdt == ZINC_DTYPE_F32    ? ((const float *)host)[i]
                      : e->pdt == ZINC_DTYPE_BF16 ? zinc_bf16_to_f32(((const uint16_t *)host)[i])
                                                  : zinc_f16_to_f32(((const uint16_t *)host)[i]);
            if (isfinite(g)) continue;
            size_t at_unit = u->opt_lo + i; /* element inside the unit */
            for (int p = u->n_params_first; p < u->n_params_end; p++) {
                const engine_param *pp = &e->params[p];
                if (at_unit >= pp->uoff && at_unit < pp->uoff + (size_t)pp->numel) {
                    first = p;
                    break;
                }
            }
            if (first != INT32_MAX) break;
        }
    }
    free(host);
    if (e->dp > 1) {
        zinc_status st = zinc_comm_all_reduce(e->mesh->dp_group, &first, &first, 1,
                                              ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
        if (st != ZINC_OK) return st;
    }
    *param = first == INT32_MAX ? -1 : first;
    return ZINC_OK;
}

/* ------------------------------------------------------------ optimizer */

/* Elements per optimizer sub-group: sub_group_size, in whole 4 KiB pages of
 * fp32 so NVMe transfers stay aligned. */
static size_t group_elems(const zinc_engine *e)
{
    int64_t g = e->cfg.zero.sub_group_size;
    if (g < 1024) g = 1024;
    return (size_t)g / 1024 * 1024;
}

/* AdamW over elements [a, a+n) of unit u's opt range with fp32 master, m, v
 * at the given pointers, then the working-precision params of the range. */
static zinc_status group_update(zinc_engine *e, engine_unit *u, size_t a, size_t n, float *master,
                                float *m, float *v, double lr, double coef, int t, float *gtmp,
                                void *pbuf)
{
    const zinc_config *c = &e->cfg;
    /* opt_host: the sub-group's grads come down to pbuf (pinned), AdamW runs
     * on the CPU's ops, the new params go up from pbuf */
    const zinc_ops *oo = e->opt_host ? zinc_ops_cpu() : e->ops;
    void *g = at(grad_opt(e, u), a, e->psz);
    if (e->opt_host) {
        e->dev->copy(pbuf, g, n * e->psz);
        g = pbuf;
    }
    float *g32 = g;
    if (e->pdt != ZINC_DTYPE_F32) {
        oo->convert(gtmp, ZINC_DTYPE_F32, g, e->pdt, n);
        g32 = gtmp;
    }
    if (coef != 1.0) oo->scale(g32, (float)coef, n);
    /* one AdamW call per parameter piece: weight decay is per parameter */
    size_t lo = u->opt_lo + a, hi = lo + n;
    for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
        const engine_param *p = &e->params[pi];
        size_t x = p->uoff > lo ? p->uoff : lo;
        size_t z = p->uoff + (size_t)p->numel < hi ? p->uoff + (size_t)p->numel : hi;
        if (x >= z) continue;
        float wd = p->decay ? (float)c->optimizer.weight_decay : 0.0f;
        oo->adamw(master + (x - lo), g32 + (x - lo), m + (x - lo), v + (x - lo), z - x,
                  (float)lr, (float)c->optimizer.betas[0], (float)c->optimizer.betas[1],
                  (float)c->optimizer.eps, wd, t);
    }
    if (!e->master_sep) return ZINC_OK; /* the master weights are the params */
    if (offload_param_on_nvme(e, u)) {
        zero_from_f32(e, pbuf, master, e->pdt, n);
        return zinc_aio_pwrite(e->param_swap, pbuf, n * e->psz, u->pswap_off + a * e->psz);
    }
    void *pdst = at(u->p, (u->sharded ? 0 : u->opt_lo) + a, e->psz);
    if (e->opt_host) {
        oo->convert(pbuf, e->pdt, master, ZINC_DTYPE_F32, n);
        e->dev->copy(pdst, pbuf, n * e->psz);
        return ZINC_OK;
    }
    zero_from_f32(e, pdst, master, e->pdt, n);
    return ZINC_OK;
}

/* Optimizer state streamed from NVMe: sub-groups in rotating buffers, the
 * read of group i+1 ahead of the update of i (pipeline_read), the write of
 * i behind (pipeline_write). */
static zinc_status step_nvme(zinc_engine *e, double lr, double coef, int t, float *gtmp,
                             void *pbuf, size_t G)
{
    zinc_status st = ZINC_OK;
    const zinc_config *c = &e->cfg;
    int pr = c->zero.offload_optimizer.pipeline_read, pw = c->zero.offload_optimizer.pipeline_write;
    int nb = 1 + pr + pw; /* the group in work, the one read ahead, the one written behind */
    /* the sub-groups: (unit, first element, count) */
    size_t cap = 0, K = 0;
    for (int l = 0; l < e->n_layers; l++) cap += (e->units[l].opt_n + G - 1) / G;
    size_t (*grp)[3] = calloc(cap ? cap : 1, sizeof *grp);
    float **buf = calloc((size_t)nb, sizeof *buf);
    zinc_aio_req *(*reqs)[3] = calloc((size_t)nb, sizeof *reqs);
    int *nreq = calloc((size_t)nb, sizeof *nreq);
    ssize_t *loaded = calloc((size_t)nb, sizeof *loaded); /* group read into each buffer */
    if (!grp || !buf || !reqs || !nreq || !loaded) {
        st = zinc_error(ZINC_ERR_NOMEM, "optimizer swap buffers");
        goto cleanup;
    }
    for (int l = 0; l < e->n_layers; l++)
        for (size_t a = 0; a < e->units[l].opt_n; a += G) {
            size_t n = e->units[l].opt_n - a < G ? e->units[l].opt_n - a : G;
            grp[K][0] = (size_t)l, grp[K][1] = a, grp[K][2] = n;
            K++;
        }
    for (int b = 0; b < nb; b++) {
        loaded[b] = -1;
        buf[b] = zinc_aio_buf_alloc(3 * G * sizeof(float));
        if (!buf[b]) {
            st = zinc_error(ZINC_ERR_NOMEM, "optimizer swap buffers: %d x %zu bytes", nb,
                            3 * G * sizeof(float));
            goto cleanup;
        }
    }
#define WAIT_BUF(b)                                                                          \
    do {                                                                                     \
        double tw = wall_ms();                                                               \
        for (int q = 0; q < nreq[b]; q++) {                                                  \
            zinc_status s2 = zinc_aio_wait(&reqs[b][q]);                                     \
            if (st == ZINC_OK) st = s2;                                                      \
        }                                                                                    \
        nreq[b] = 0;                                                                         \
        e->t_opt_io += wall_ms() - tw;                                                       \
    } while (0)
    for (size_t i = 0; i < K && st == ZINC_OK; i++) {
        for (size_t j = i; j <= i + (size_t)pr && j < K && st == ZINC_OK; j++) {
            int b = (int)(j % (size_t)nb);
            if (loaded[b] == (ssize_t)j) continue;
            WAIT_BUF(b); /* its earlier write must land before it is reused */
            if (st != ZINC_OK) break;
            engine_unit *u = &e->units[grp[j][0]];
            st = offload_opt_io(e, u, grp[j][1], grp[j][2], buf[b], G, 0, reqs[b], &nreq[b]);
            loaded[b] = (ssize_t)j;
        }
        if (st != ZINC_OK) break;
        int b = (int)(i % (size_t)nb);
        WAIT_BUF(b);
        if (st != ZINC_OK) break;
        engine_unit *u = &e->units[grp[i][0]];
        size_t a = grp[i][1], n = grp[i][2];
        st = group_update(e, u, a, n, buf[b], buf[b] + G, buf[b] + 2 * G, lr, coef, t, gtmp, pbuf);
        if (st == ZINC_OK) {
            st = offload_opt_io(e, u, a, n, buf[b], G, 1, reqs[b], &nreq[b]);
            loaded[b] = -1;
        }
        if (!pw) { WAIT_BUF(b); }
    }
cleanup:
    for (int b = 0; reqs && nreq && b < nb; b++) {
        WAIT_BUF(b);
    }
#undef WAIT_BUF
    for (int b = 0; buf && b < nb; b++) zinc_aio_buf_free(buf[b]);
    free(grp);
    free(buf);
    free(reqs);
    free(nreq);
    free(loaded);
    return st;
}

zinc_status zero_optimizer_step(zinc_engine *e, double lr, double coef, int t)
{
    zinc_status st = ZINC_OK;
    size_t G = group_elems(e), maxn = 0;
    for (int l = 0; l < e->n_layers; l++)
        if (e->units[l].opt_n > maxn) maxn = e->units[l].opt_n;
    if (G > maxn) G = (maxn + 1023) / 1024 * 1024;
    if (G == 0) return ZINC_OK;
    /* gtmp: fp32 grads of a sub-group (host memory for opt_host); pbuf: the
     * param swap staging (param_nvme) or the host staging (opt_host) */
    float *gtmp = e->pdt == ZINC_DTYPE_F32 ? NULL
                  : e->opt_host           ? e->dev->host_alloc(G * sizeof(float))
                                          : xalloc_raw(e, G * sizeof(float));
    void *pbuf = e->param_nvme ? zinc_aio_buf_alloc(G * e->psz)
                 : e->opt_host ? e->dev->host_alloc(G * e->psz) : NULL;
    if ((e->pdt != ZINC_DTYPE_F32 && !gtmp) || ((e->param_nvme || e->opt_host) && !pbuf)) {
        st = zinc_error(ZINC_ERR_NOMEM, "optimizer buffers");
        goto cleanup;
    }
    if (e->opt_nvme) {
        ZINC_TRY(offload_check(e));
        ZINC_TRY(step_nvme(e, lr, coef, t, gtmp, pbuf, G));
    } else {
        for (int l = 0; l < e->n_layers; l++) {
            engine_unit *u = &e->units[l];
            for (size_t a = 0; a < u->opt_n; a += G) {
                size_t n = u->opt_n - a < G ? u->opt_n - a : G;
                ZINC_TRY(group_update(e, u, a, n, u->master + a, u->m + a, u->v + a, lr, coef, t,
                                      gtmp, pbuf));
            }
        }
    }
    /* whole params everywhere again: all-gather the updated slices */
    st = zero_gather_whole_params(e);
cleanup:
    if (e->opt_host) {
        e->dev->host_free(gtmp);
        e->dev->host_free(pbuf);
    } else {
        xfree(e, gtmp);
        zinc_aio_buf_free(pbuf);
    }
    return st;
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
    zinc_status st = ZINC_OK;
    if (!e->master_sep) return zero_gather_whole_params(e); /* the master weights are the params */
    const size_t G = (size_t)1 << 20; /* elements per chunk when streaming swap files */
    int m_swap = e->opt_nvme;
    float *mbuf = m_swap ? zinc_aio_buf_alloc(G * sizeof(float)) : NULL;
    void *pbuf = e->param_nvme ? zinc_aio_buf_alloc(G * e->psz)
                 : e->opt_host ? e->dev->host_alloc(G * e->psz) : NULL;
    if ((m_swap && !mbuf) || ((e->param_nvme || e->opt_host) && !pbuf)) {
        st = zinc_error(ZINC_ERR_NOMEM, "parameter rebuild buffers");
        goto cleanup;
    }
    for (int l = 0; l < e->n_layers; l++) {
        engine_unit *u = &e->units[l];
        for (size_t a = 0; a < u->opt_n; a += G) {
            size_t n = u->opt_n - a < G ? u->opt_n - a : G;
            const float *m = u->master ? u->master + a : mbuf;
            if (m_swap)
                ZINC_TRY(zinc_aio_pread(e->opt_swap, mbuf, n * sizeof(float),
                                        u->swap_off + a * sizeof(float)));
            if (offload_param_on_nvme(e, u)) {
                zero_from_f32(e, pbuf, m, e->pdt, n);
                ZINC_TRY(zinc_aio_pwrite(e->param_swap, pbuf, n * e->psz, u->pswap_off + a * e->psz));
            } else if (e->opt_host) { /* master in host memory: convert there, copy up */
                zinc_ops_cpu()->convert(pbuf, e->pdt, m, ZINC_DTYPE_F32, n);
                e->dev->copy(at(u->p, (u->sharded ? 0 : u->opt_lo) + a, e->psz), pbuf, n * e->psz);
            } else {
                zero_from_f32(e, at(u->p, (u->sharded ? 0 : u->opt_lo) + a, e->psz), m, e->pdt, n);
            }
        }
    }
    st = zero_gather_whole_params(e);
cleanup:
    zinc_aio_buf_free(mbuf);
    if (e->opt_host)
        e->dev->host_free(pbuf);
    else
        zinc_aio_buf_free(pbuf);
    return st;
}
