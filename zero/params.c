/* params.c - ZeRO parameter storage: allocation and initial values, the
 * swap files of NVMe offload, ZeRO-3 gathers (prefetch, materialize,
 * release), and whole params rebuilt after a step or a checkpoint load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zero_int.h"
#include "zinc/rng.h"
#include "zinc/sysmem.h"

/* dst (P, device) = host fp32 values: converted in place on a host device,
 * else staged through a device fp32 buffer. */
static zinc_status store_host_f32(zero_state *z, void *dst, const float *src, size_t n)
{
    if (z->dev->is_host) {
        zero_from_f32(z, dst, src, z->plan.pdt, n);
        return ZINC_OK;
    }
    if (z->plan.pdt == ZINC_DTYPE_F32) {
        z->dev->copy(dst, src, n * sizeof(float));
        return ZINC_OK;
    }
    float *tmp = xalloc_raw(z, n * sizeof(float));
    if (!tmp) return zinc_error(ZINC_ERR_NOMEM, "parameter staging: %zu elements", n);
    z->dev->copy(tmp, src, n * sizeof(float));
    zero_from_f32(z, dst, tmp, z->plan.pdt, n);
    xfree(z, tmp);
    return ZINC_OK;
}

/* Elements [first, first+n) of this rank's slice of parameter p: the
 * logical tensor's initial value is a function of (seed, name) alone, so
 * every layout (DP, ZeRO stage, TP size) starts from the same model. */
typedef struct init_run {
    const zero_state *z;
    const zero_param *p;
    float *d;
    int64_t first, n;
} init_run;

static void init_one_run(void *u, int64_t local, int64_t logical, int64_t n)
{
    const init_run *r = u;
    int64_t a = local > r->first ? local : r->first;
    int64_t e = local + n < r->first + r->n ? local + n : r->first + r->n;
    if (a >= e) return;
    float *d = r->d + (a - r->first);
    switch (r->p->init) {
    case ZINC_INIT_ZEROS:
        memset(d, 0, (size_t)(e - a) * sizeof(float));
        break;
    case ZINC_INIT_ONES:
        for (int64_t k = 0; k < e - a; k++) d[k] = 1.0f;
        break;
    case ZINC_INIT_NORMAL:
        zinc_rng_normal_range(r->z->opt.seed, zinc_hash_str(r->p->name), d, logical + (a - local),
                              e - a, r->p->std);
        break;
    case ZINC_INIT_UNIFORM:
        zinc_rng_uniform_range(r->z->opt.seed, zinc_hash_str(r->p->name), d, logical + (a - local), e - a,
                               r->p->std);
        break;
    }
}

static void init_param_range(const zero_state *z, const zero_param *p, float *d, int64_t first,
                             int64_t n)
{
    init_run r = {z, p, d, first, n};
    zero_param_runs(p, z->tp, z->tp_rank, init_one_run, &r);
}

void zero_param_init(const zero_state *z, int id, float *dst)
{
    const zero_param *p = &z->params[id];
    init_param_range(z, p, dst, 0, (int64_t)p->numel);
}

zinc_status zero_units_alloc(zero_state *z)
{
    zinc_status st = ZINC_OK;
    size_t psz = z->plan.psz;
    float *vals = NULL;
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (u->numel == 0) continue;
        int p_nvme = zero_param_on_nvme(z, u);
        /* the params this rank stores: whole unit, or its shard (which holds the opt range) */
        size_t plo = u->sharded ? u->opt_lo : 0, pn = u->sharded ? u->shard : u->numel;
        size_t gn = z->plan.stage >= 2 ? u->shard : u->numel;
        if (!u->frozen) u->g = xalloc(z, gn * psz);
        if (zero_param_on_host(z, u)) u->p = z->dev->host_alloc(pn * psz); /* offload_param cpu on a GPU */
        else if (!p_nvme) u->p = xalloc(z, pn * psz);
        if (!z->plan.opt_nvme && !u->frozen) {
            u->m = opt_alloc(z, u, u->opt_n * sizeof(float));
            u->v = opt_alloc(z, u, u->opt_n * sizeof(float));
        }
        free(vals); /* initial values are computed on the host */
        vals = calloc(pn ? pn : 1, sizeof(float));
        if ((!u->frozen && !u->g) || (!p_nvme && !u->p) ||
            (!z->plan.opt_nvme && !u->frozen && (!u->m || !u->v)) || !vals) {
            st = zinc_error(ZINC_ERR_NOMEM, "model state of layer %d: %zu elements", l, u->numel);
            goto cleanup;
        }
        for (int p = u->n_params_first; p < u->n_params_end; p++) {
            const zero_param *ep = &z->params[p];
            if (ep->unit != l) continue;
            size_t a = ep->uoff > plo ? ep->uoff : plo;
            size_t hi = ep->uoff + (size_t)ep->numel < plo + pn ? ep->uoff + (size_t)ep->numel : plo + pn;
            if (a < hi) init_param_range(z, ep, vals + (a - plo), (int64_t)(a - ep->uoff),
                                         (int64_t)(hi - a));
        }
        if (u->frozen) {
            u->master = NULL; /* frozen: the params are all there is */
        } else if (z->plan.master_sep && !z->plan.opt_nvme) {
            u->master = opt_alloc(z, u, u->opt_n * sizeof(float));
            if (!u->master) {
                st = zinc_error(ZINC_ERR_NOMEM, "master weights of layer %d", l);
                goto cleanup;
            }
        } else if (!z->plan.master_sep) {
            u->master = (float *)at(u->p, u->sharded ? 0 : u->opt_lo, psz);
        }
        /* the moments start as zeros (memory, or the sparse swap file) */
        ZINC_TRY(zero_unit_store(z, l, vals));
    }
cleanup:
    free(vals);
    return st;
}

zinc_status zero_unit_store(zero_state *z, int l, const float *vals)
{
    zinc_status st = ZINC_OK;
    zero_unit *u = &z->units[l];
    size_t plo = u->sharded ? u->opt_lo : 0, pn = u->sharded ? u->shard : u->numel;
    if (zero_param_on_nvme(z, u)) {
        void *pio = zinc_aio_buf_alloc(pn * z->plan.psz);
        if (!pio) return zinc_error(ZINC_ERR_NOMEM, "param staging of layer %d", l);
        zinc_ops_cpu()->convert(pio, z->plan.pdt, vals, ZINC_DTYPE_F32, pn); /* pio: host memory */
        st = zinc_swap_io(z->param_swap, l, 0, 0, pio, pn * z->plan.psz, 1);
        zinc_aio_buf_free(pio);
        if (st != ZINC_OK) return st;
    } else if (zero_param_on_host(z, u)) {
        zinc_ops_cpu()->convert(u->p, z->plan.pdt, vals, ZINC_DTYPE_F32, pn);
    } else if ((st = store_host_f32(z, u->p, vals, pn)) != ZINC_OK) {
        return st;
    }
    const float *mv = vals + (u->opt_lo - plo); /* master values of the opt range */
    if (u->opt_n == 0) return st; /* frozen, or an empty range */
    if (z->plan.opt_nvme) {
        st = zinc_swap_io(z->opt_swap, l, 0, 0, (void *)mv, u->opt_n * sizeof(float), 1);
    } else if (z->plan.master_sep) {
        z->dev->copy(u->master, mv, u->opt_n * sizeof(float));
    }
    return st;
}

void zero_units_free(zero_state *z)
{
    if (!z->units) return;
    /* reductions in flight still use their buffers: finish them first */
    for (int i = 0; i < z->n_pending; i++) {
        zinc_comm_wait(&z->pending[i].h);
        if (z->pending[i].send != z->units[z->pending[i].unit].wg) xfree(z, z->pending[i].send);
        xfree(z, z->pending[i].recv);
    }
    free(z->pending);
    z->pending = NULL;
    z->n_pending = 0;
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        zero_unit_release(z, l);
        if (u->h_gather) zinc_comm_wait(&u->h_gather);
        xfree(z, u->gathered);
        if (u->wg_owned) xfree(z, u->wg);
        if (u->pread) zinc_aio_wait(&u->pread);
        zinc_aio_buf_free(u->pstage);
        if (z->plan.master_sep && !z->plan.opt_nvme && !u->frozen) opt_free(z, u, u->master);
        if (zero_param_on_host(z, u)) z->dev->host_free(u->p);
        else xfree(z, u->p);
        xfree(z, u->g);
        xfree(z, u->dstage);
        opt_free(z, u, u->m);
        opt_free(z, u, u->v);
    }
}

static zinc_status gather_start(zero_state *z, int ui, const void *src);

int zero_unit_gathers(const zero_state *z, int ui)
{
    const zero_unit *u = &z->units[ui];
    return u->sharded && (z->dp > 1 || zero_param_on_nvme(z, u) || zero_param_on_host(z, u));
}

/* Starts making unit ui whole from a shard in host memory (offload_param cpu, or read
 * off NVMe into host staging): a host device gathers from it directly; a GPU copies it up
 * first, into the gather buffer itself over one rank (ready: nothing to gather), else
 * into the unit's device staging to all-gather from. */
static zinc_status gather_from_host(zero_state *z, int ui, const void *host_shard)
{
    zero_unit *u = &z->units[ui];
    if (z->dev->is_host) return gather_start(z, ui, host_shard);
    const size_t bytes = u->shard * z->plan.psz;
    void **dst = z->dp == 1 ? &u->gathered : &u->dstage;
    if (!*dst && !(*dst = xalloc_raw(z, bytes ? bytes : 1)))
        return zinc_error(ZINC_ERR_NOMEM, "param staging of layer %d (%zu elements) on %s", ui, u->shard, z->dev->name);
    z->dev->copy(*dst, host_shard, bytes);
    if (z->dp == 1) {
        u->ready = 1;
        return ZINC_OK;
    }
    return gather_start(z, ui, u->dstage);
}

zinc_status zero_unit_prefetch(zero_state *z, int ui)
{
    zinc_status st;
    zero_unit *u = &z->units[ui];
    if (!zero_unit_gathers(z, ui) || u->wp || u->h_gather || u->pread || u->ready) return ZINC_OK;
    if (zero_param_on_nvme(z, u)) {
        /* the shard comes off NVMe first; the all-gather follows in materialize */
        u->pstage = zinc_aio_buf_alloc(u->shard * z->plan.psz);
        if (!u->pstage) return zinc_error(ZINC_ERR_NOMEM, "param staging of layer %d", ui);
        st = zinc_swap_io_async(z->param_swap, ui, 0, 0, u->pstage, u->shard * z->plan.psz, 0,
                                &u->pread);
        if (st != ZINC_OK) {
            zinc_aio_buf_free(u->pstage);
            u->pstage = NULL;
        }
    } else if (zero_param_on_host(z, u)) {
        st = gather_from_host(z, ui, u->p);
    } else {
        st = gather_start(z, ui, u->p);
    }
    if (st == ZINC_OK) z->fetch_elems += u->numel; /* until materialize takes it */
    return st;
}

/* Starts the all-gather of unit ui's shard (at src) into its gathered buffer. */
static zinc_status gather_start(zero_state *z, int ui, const void *src)
{
    zero_unit *u = &z->units[ui];
    if (!u->gathered) {
        u->gathered = xalloc_raw(z, u->numel * z->plan.psz);
        if (!u->gathered) return zinc_error(ZINC_ERR_NOMEM, "gather buffer of layer %d", ui);
    }
    return zinc_comm_all_gather(z->dp_group, src, u->gathered, u->shard, z->plan.pdt,
                                &u->h_gather);
}

zinc_status zero_unit_materialize(zero_state *z, int ui)
{
    zinc_status st;
    zero_unit *u = &z->units[ui];
    if (u->wp || u->numel == 0) return ZINC_OK;
    const void *whole = u->p; /* whole already, or the shard of one rank: all of it */
    const int gathered = zero_unit_gathers(z, ui);
    if (gathered) {
        if (!u->h_gather && !u->ready && (st = zero_unit_prefetch(z, ui)) != ZINC_OK) return st;
        z->fetch_elems -= u->numel;
        if (u->pread) { /* NVMe shard: finish the read, then gather */
            if ((st = zinc_aio_wait(&u->pread)) == ZINC_OK) st = gather_from_host(z, ui, u->pstage);
            if (st == ZINC_OK) st = zinc_comm_wait(&u->h_gather);
            zinc_aio_buf_free(u->pstage);
            u->pstage = NULL;
            if (st != ZINC_OK) return st;
        }
        st = zinc_comm_wait(&u->h_gather);
        xfree(z, u->dstage); /* the shard's device copy only served the gather */
        u->dstage = NULL;
        u->ready = 0;
        if (st != ZINC_OK) return st;
        whole = u->gathered;
    }
    if (z->plan.pdt == ZINC_DTYPE_F32) { /* the working copy is the gathered buffer or the store */
        u->wp = (float *)whole;
        u->wp_owned = gathered;
        if (gathered) u->gathered = NULL;
    } else {
        u->wp = xalloc_raw(z, u->numel * sizeof(float));
        if (!u->wp) return zinc_error(ZINC_ERR_NOMEM, "working params of layer %d", ui);
        u->wp_owned = 1;
        zero_to_f32(z, u->wp, whole, z->plan.pdt, u->numel);
        if (gathered) {
            xfree(z, u->gathered);
            u->gathered = NULL;
        }
    }
    if (u->wp_owned) z->live_elems += u->numel;
    return ZINC_OK;
}

void zero_unit_drop_ready(zero_state *z, int ui)
{
    zero_unit *u = &z->units[ui];
    if (!u->ready) return;
    xfree(z, u->gathered);
    u->gathered = NULL;
    u->ready = 0;
    z->fetch_elems -= u->numel;
}

int zero_unit_releasable(const zero_state *z, int ui)
{
    return z->units[ui].wp_owned;
}

void zero_unit_release(zero_state *z, int ui)
{
    zero_unit *u = &z->units[ui];
    if (u->wp_owned) {
        xfree(z, u->wp);
        z->live_elems -= u->numel;
    }
    u->wp = NULL;
    u->wp_owned = 0;
}

zinc_status zero_gather_whole_params(zero_state *z)
{
    zinc_status st = ZINC_OK;
    const zero_opts *c = &z->opt;
    if (z->plan.stage == 0 || z->dp == 1) return ZINC_OK;
    zinc_comm_handle **hs = calloc((size_t)z->n_units, sizeof *hs);
    if (!hs) return zinc_error(ZINC_ERR_NOMEM, "all-gather handles");
    uint64_t in_flight = 0, limit = (uint64_t)c->allgather_bucket_size;
    int first = 0;
    for (int l = 0; l < z->n_units && st == ZINC_OK; l++) {
        zero_unit *u = &z->units[l];
        if (u->numel == 0 || u->sharded || u->frozen) continue; /* frozen: whole and unchanged */
        st = zinc_comm_all_gather(z->dp_group, at(u->p, u->opt_lo, z->plan.psz), u->p, u->shard,
                                  z->plan.pdt, &hs[l]);
        in_flight += u->numel;
        while (st == ZINC_OK && in_flight > limit && first <= l) {
            if (hs[first]) {
                st = zinc_comm_wait(&hs[first]);
                in_flight -= z->units[first].numel;
            }
            first++;
        }
    }
    for (int l = 0; l < z->n_units; l++) {
        zinc_status s2 = zinc_comm_wait(&hs[l]);
        if (st == ZINC_OK) st = s2;
    }
    free(hs);
    return st;
}

zinc_status zero_params_from_master(zero_state *z)
{
    zinc_status st = ZINC_OK;
    if (!z->plan.master_sep) return zero_gather_whole_params(z); /* the master weights are the params */
    const size_t G = (size_t)1 << 20; /* elements per chunk when streaming swap files */
    int m_swap = z->plan.opt_nvme;
    float *mbuf = m_swap ? zinc_aio_buf_alloc(G * sizeof(float)) : NULL;
    void *pbuf = z->plan.param_nvme ? zinc_aio_buf_alloc(G * z->plan.psz)
                 : z->plan.opt_host ? z->dev->host_alloc(G * z->plan.psz) : NULL;
    if ((m_swap && !mbuf) || ((z->plan.param_nvme || z->plan.opt_host) && !pbuf)) { /* opt_host: some unit's */
        st = zinc_error(ZINC_ERR_NOMEM, "parameter rebuild buffers");
        goto cleanup;
    }
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        for (size_t a = 0; a < u->opt_n; a += G) {
            size_t n = u->opt_n - a < G ? u->opt_n - a : G;
            const float *m = u->master ? u->master + a : mbuf;
            if (m_swap)
                ZINC_TRY(zinc_swap_io(z->opt_swap, l, 0, a * sizeof(float), mbuf,
                                      n * sizeof(float), 0));
            if (zero_param_on_nvme(z, u)) {
                zinc_ops_cpu()->convert(pbuf, z->plan.pdt, m, ZINC_DTYPE_F32, n); /* host memory */
                ZINC_TRY(zinc_swap_io(z->param_swap, l, 0, a * z->plan.psz, pbuf, n * z->plan.psz, 1));
            } else if (u->opt_host) { /* master in host memory: convert there, copy up */
                zinc_ops_cpu()->convert(pbuf, z->plan.pdt, m, ZINC_DTYPE_F32, n);
                z->dev->copy(at(u->p, (u->sharded ? 0 : u->opt_lo) + a, z->plan.psz), pbuf, n * z->plan.psz);
            } else {
                zero_from_f32(z, at(u->p, (u->sharded ? 0 : u->opt_lo) + a, z->plan.psz), m, z->plan.pdt, n);
            }
        }
    }
    st = zero_gather_whole_params(z);
cleanup:
    zinc_aio_buf_free(mbuf);
    if (z->plan.param_nvme) /* as allocated above */
        zinc_aio_buf_free(pbuf);
    else
        z->dev->host_free(pbuf);
    return st;
}


/* Swap files: <nvme_path>/rank<r>/optimizer.swp holds, per unit, the fp32
 * master weights, exp_avg and exp_avg_sq of this rank's opt range (three
 * parts); <nvme_path>/rank<r>/params.swp holds the storage-dtype shard of
 * every sharded unit (zinc/offload.h). */
/* The swap files' sizes (what zero_offload_open makes) per rank: optimizer, params. */
static zinc_status swap_sizes(const zero_state *z, uint64_t *ob, uint64_t *pb)
{
    uint64_t *bytes = calloc((size_t)z->n_units + 1, sizeof *bytes);
    if (!bytes) return zinc_error(ZINC_ERR_NOMEM, "swap file table");
    for (int l = 0; l < z->n_units; l++) bytes[l] = z->units[l].opt_n * sizeof(float);
    *ob = z->plan.opt_nvme ? zinc_swap_file_bytes(z->n_units, 3, bytes) : 0;
    for (int l = 0; l < z->n_units; l++)
        bytes[l] = zero_param_on_nvme(z, &z->units[l]) ? z->units[l].shard * z->plan.psz : 0;
    *pb = z->plan.param_nvme ? zinc_swap_file_bytes(z->n_units, 1, bytes) : 0;
    free(bytes);
    return ZINC_OK;
}

zinc_status zero_offload_room(const zero_state *z, int rank, int node_ranks)
{
    const zero_opts *c = &z->opt;
    static const char *const names[] = {"optimizer.swp", "params.swp", NULL};
    uint64_t ob = 0, pb = 0, od = 0, pd = 1, fb;
    zinc_status st = swap_sizes(z, &ob, &pb);
    if (st != ZINC_OK) return st;
    const int on = ob > 0 && zinc_fs_free(c->optimizer_nvme_path, &fb, &od) == ZINC_OK;
    const int pn = pb > 0 && zinc_fs_free(c->param_nvme_path, &fb, &pd) == ZINC_OK;
    const int one_fs = on && pn && od == pd; /* both on one file system: their sum must fit */
    const uint64_t n = (uint64_t)node_ranks;
    if (ob > 0) {
        const uint64_t mine = ob + (one_fs ? pb : 0);
        st = zinc_swap_room("zero_optimization.offload_optimizer.nvme_path", c->optimizer_nvme_path, rank, names,
                            n * mine, node_ranks, mine);
    }
    if (st == ZINC_OK && pb > 0 && !one_fs)
        st = zinc_swap_room("zero_optimization.offload_param.nvme_path", c->param_nvme_path, rank, names, n * pb,
                            node_ranks, pb);
    return st;
}

zinc_status zero_offload_open(zero_state *z, zinc_aio *aio, int rank)
{
    zinc_status st = ZINC_OK;
    const zero_opts *c = &z->opt;
    z->aio = aio;
    uint64_t *bytes = calloc((size_t)z->n_units + 1, sizeof *bytes);
    if (!bytes) return zinc_error(ZINC_ERR_NOMEM, "swap file table");
    if (z->plan.opt_nvme) {
        for (int l = 0; l < z->n_units; l++) bytes[l] = z->units[l].opt_n * sizeof(float);
        ZINC_TRY(zinc_swap_create(aio, "zero_optimization.offload_optimizer.nvme_path",
                                  c->optimizer_nvme_path, rank, "optimizer.swp",
                                  z->n_units, 3, bytes, &z->opt_swap));
    }
    if (z->plan.param_nvme) {
        for (int l = 0; l < z->n_units; l++)
            bytes[l] = zero_param_on_nvme(z, &z->units[l]) ? z->units[l].shard * z->plan.psz : 0;
        ZINC_TRY(zinc_swap_create(aio, "zero_optimization.offload_param.nvme_path",
                                  c->param_nvme_path, rank, "params.swp", z->n_units,
                                  1, bytes, &z->param_swap));
    }
cleanup:
    free(bytes);
    return st;
}

void zero_offload_close(zero_state *z)
{
    zinc_swap_destroy(z->opt_swap);
    zinc_swap_destroy(z->param_swap);
    z->opt_swap = z->param_swap = NULL;
}

float *zero_param_data(const zero_state *z, int id)
{
    const zero_param *p = &z->params[id];
    return z->units[p->unit].wp + p->uoff;
}

float *zero_grad_data(const zero_state *z, int id)
{
    const zero_param *p = &z->params[id];
    const zero_unit *u = &z->units[p->unit];
    return u->frozen || !u->wg ? NULL : u->wg + p->uoff;
}

