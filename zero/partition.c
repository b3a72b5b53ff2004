/* partition.c - the ZeRO plan from the config and the layout of flat units
 * over the data-parallel group, with their memory (zinc/zero.h). Pure: no
 * device memory, no communication; tests/zero/ checks it alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zero_int.h"

zinc_status zero_plan_make(const zero_opts *o, int stage, const char *dev_name, zero_plan *p)
{
    memset(p, 0, sizeof *p);
    const zinc_offload_device od = o->offload_optimizer, pd = o->offload_param;
    if (pd != ZINC_OFFLOAD_NONE && stage != 3)
        return zinc_error(ZINC_ERR_CONFIG, "zero_optimization.offload_param.device: \"%s\" requires "
                          "zero_optimization.stage 3, found stage %d",
                          pd == ZINC_OFFLOAD_NVME ? "nvme" : "cpu", stage);
    /* on a GPU the offloaded parameter shards are written by the host optimizer (the
     * new params go from its host buffers straight to their host or NVMe home) */
    if (dev_name && pd != ZINC_OFFLOAD_NONE && (od == ZINC_OFFLOAD_NONE || o->opt_ratio < 1.0))
        return zinc_error(ZINC_ERR_CONFIG, "zero_optimization.offload_param.device \"%s\" on %s needs "
                          "zero_optimization.offload_optimizer.device \"cpu\" or \"nvme\" with ratio 1 (the host "
                          "optimizer writes the offloaded parameters)", pd == ZINC_OFFLOAD_NVME ? "nvme" : "cpu",
                          dev_name);
    if (o->delayed_update && (od != ZINC_OFFLOAD_CPU || o->opt_ratio < 1.0))
        return zinc_error(ZINC_ERR_CONFIG, "zero_optimization.offload_optimizer.delayed_update needs "
                          "offload_optimizer.device \"cpu\" with ratio 1 (found \"%s\", ratio %g)",
                          od == ZINC_OFFLOAD_NVME ? "nvme" : od == ZINC_OFFLOAD_CPU ? "cpu" : "none", o->opt_ratio);
    p->stage = stage;
    p->pdt = o->pdt;
    p->psz = zinc_dtype_size(p->pdt);
    /* an offloaded optimizer on a GPU runs on the host: master, m, v in
     * pinned host memory ("cpu") or streamed from swap files through host
     * buffers ("nvme"); grads come down and params go up per sub-group.
     * On the cpu device "cpu" is where the state already lives. */
    p->opt_host = dev_name && od != ZINC_OFFLOAD_NONE;
    p->opt_nvme = od == ZINC_OFFLOAD_NVME;
    p->param_nvme = pd == ZINC_OFFLOAD_NVME;
    p->param_host = dev_name && pd == ZINC_OFFLOAD_CPU;
    /* delayed_update: the host updates its own master copy while the params are in use */
    p->master_sep = p->pdt != ZINC_DTYPE_F32 || p->opt_nvme || p->param_nvme || p->opt_host || o->delayed_update;
    return ZINC_OK;
}

zinc_status zero_tables_alloc(zero_state *z, int n_layers)
{
    z->n_layers = n_layers;
    z->n_units = 2 * n_layers;
    z->units = calloc((size_t)(n_layers ? 2 * n_layers : 1), sizeof *z->units);
    z->layers = calloc((size_t)(n_layers ? n_layers : 1), sizeof *z->layers);
    if (!z->units || !z->layers) return zinc_error(ZINC_ERR_NOMEM, "layer table");
    for (int l = 0; l < z->n_units; l++) {
        z->units[l].layer = l % n_layers;
        z->units[l].frozen = l >= n_layers;
    }
    return ZINC_OK;
}

void zero_tables_free(zero_state *z)
{
    free(z->units);
    free(z->layers);
    free(z->params);
    z->units = NULL;
    z->layers = NULL;
    z->params = NULL;
    z->n_params = z->cap_params = 0;
}

int zero_param_add(zero_state *z, int layer, const char *name, int ndim, const int64_t *shape,
                   int tp_dim, int tp_blocks, zinc_init_kind init, float std, int frozen)
{
    const int tp = z->tp > 1 ? z->tp : 1;
    if (ndim < 1 || ndim > ZINC_MAX_DIMS) {
        zinc_error(ZINC_ERR_INVALID_ARG, "%s: bad rank %d or too many parameters", name, ndim);
        return -1;
    }
    if (z->n_params == z->cap_params) {
        int cap = z->cap_params ? 2 * z->cap_params : 64;
        zero_param *np = realloc(z->params, (size_t)cap * sizeof *np);
        if (!np) {
            zinc_error(ZINC_ERR_NOMEM, "parameter table");
            return -1;
        }
        z->params = np;
        z->cap_params = cap;
    }
    zero_param *p = &z->params[z->n_params];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    if (tp_dim < -1 || tp_dim >= ndim || tp_blocks < 1) {
        zinc_error(ZINC_ERR_INVALID_ARG, "%s: tp_dim %d, tp_blocks %d for a rank-%d tensor",
                   p->name, tp_dim, tp_blocks, ndim);
        return -1;
    }
    p->numel = p->gnumel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            zinc_error(ZINC_ERR_INVALID_ARG, "%s: dimension %d is %lld", p->name, i,
                       (long long)shape[i]);
            return -1;
        }
        p->shape[i] = p->lshape[i] = shape[i];
        if (i == tp_dim && shape[i] % ((int64_t)tp * tp_blocks)) {
            zinc_error(ZINC_ERR_INVALID_ARG, "%s: dimension %d (%lld) does not split into %d "
                       "block(s) over %d TP ranks", p->name, i, (long long)shape[i], tp_blocks, tp);
            return -1;
        }
        if (i == tp_dim) p->lshape[i] = shape[i] / tp;
        p->numel *= p->lshape[i];
        p->gnumel *= shape[i];
    }
    p->tp_dim = tp_dim;
    p->tp_blocks = tp_blocks;
    p->init = init;
    p->std = std;
    p->frozen = frozen != 0;
    p->unit = frozen ? z->n_layers + layer : layer;
    p->decay = ndim >= 2;
    zero_unit *u = &z->units[p->unit];
    if (frozen && zero_layer_use(z, layer, p->unit) != ZINC_OK) return -1;
    /* [first, end) spans the unit's params; the other unit's may sit between (unit says) */
    if (u->n_params_end == 0) u->n_params_first = z->n_params;
    u->n_params_end = z->n_params + 1;
    return z->n_params++;
}

zinc_status zero_layer_use(zero_state *z, int layer, int u)
{
    zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++)
        if (l->units[j] == u) return ZINC_OK;
    if (l->n_units == ZERO_MAX_LAYER_UNITS)
        return zinc_error(ZINC_ERR_INVALID_ARG, "layer %d ties too many layers", layer);
    l->units[l->n_units++] = u;
    return ZINC_OK;
}

void zero_param_runs(const zero_param *p, int tp, int tp_rank,
                     void (*fn)(void *u, int64_t local, int64_t logical, int64_t n), void *u)
{
    if (tp <= 1 || p->tp_dim < 0) {
        fn(u, 0, 0, p->numel);
        return;
    }
    /* the tensor as (outer, D, inner) around tp_dim: each block of D holds
     * sub = D / blocks rows, of which this rank keeps lsub = sub / tp */
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < p->tp_dim; i++) outer *= p->shape[i];
    for (int i = p->tp_dim + 1; i < p->ndim; i++) inner *= p->shape[i];
    const int64_t D = p->shape[p->tp_dim], sub = D / p->tp_blocks, lsub = sub / tp;
    int64_t local = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int b = 0; b < p->tp_blocks; b++) {
            fn(u, local, (o * D + b * sub + (int64_t)tp_rank * lsub) * inner, lsub * inner);
            local += lsub * inner;
        }
}

int zero_param_on_nvme(const zero_state *z, const zero_unit *u)
{
    return z->plan.param_nvme && u->sharded;
}

int zero_param_on_host(const zero_state *z, const zero_unit *u)
{
    return z->plan.param_host && u->sharded;
}

/* Lays out each unit: its params at ZERO_UNIT_ALIGN offsets, padded to a
 * multiple of dp x ZERO_UNIT_ALIGN, and this rank's ranges. */
void zero_units_layout(zero_state *z)
{
    size_t pad = (size_t)z->dp * ZERO_UNIT_ALIGN;
    int64_t persist = z->opt.persistence_threshold;
    for (int l = 0; l < z->n_units; l++) {
        z->units[l].first_user = -1;
        z->units[l].held = z->units[l].shared = z->units[l].dup = 0;
    }
    for (int i = 0; i < z->n_layers; i++) {
        const int mine = !z->layer_held || z->layer_held[i];
        for (int j = 0; j < z->layers[i].n_units; j++) {
            zero_unit *u = &z->units[z->layers[i].units[j]];
            if (mine) {
                u->held = 1;
                if (u->first_user < 0) u->first_user = i;
            } else {
                u->shared = 1; /* used elsewhere: shared if held here too (below) */
            }
        }
    }
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        if (!z->layer_held) { /* no pipeline: every unit lives here, even one no layer uses */
            u->held = 1;
            u->shared = u->dup = 0;
            continue;
        }
        u->shared = u->shared && u->held;
        u->dup = u->shared && !z->layer_held[u->layer];
    }
    for (int l = 0; l < z->n_units; l++) {
        zero_unit *u = &z->units[l];
        size_t off = 0;
        for (int p = u->n_params_first; p < u->n_params_end; p++) {
            if (z->params[p].unit != l) continue;
            z->params[p].uoff = off;
            off += ((size_t)z->params[p].numel + ZERO_UNIT_ALIGN - 1) / ZERO_UNIT_ALIGN *
                   ZERO_UNIT_ALIGN;
        }
        u->numel = u->held ? (off + pad - 1) / pad * pad : 0;
        u->shard = u->numel / (size_t)z->dp;
        /* a unit with fewer elements than the persistence threshold stays whole */
        u->sharded = z->plan.stage == 3 && u->numel > 0 && (int64_t)off >= persist;
        if (z->plan.stage == 0) {
            u->opt_lo = 0;
            u->opt_n = u->numel;
        } else {
            u->opt_lo = (size_t)z->dp_rank * u->shard;
            u->opt_n = u->shard;
        }
        if (u->frozen) u->opt_n = 0; /* nothing to update; opt_lo still starts the shard */
    }
    /* offload_optimizer.ratio: whole units go to the host, largest first (ties: the
     * earlier), each while the state there stays within the ratio; a unit that does not
     * fit stays on the device and smaller ones may still go */
    size_t all = 0, host = 0;
    for (int l = 0; l < z->n_units; l++) {
        all += z->units[l].opt_n;
        z->units[l].opt_host = 0;
    }
    const double cap = z->opt.opt_ratio >= 1.0 ? (double)all : z->opt.opt_ratio * (double)all;
    for (int k = 0; z->plan.opt_host && k < z->n_units; k++) {
        int best = -1;
        for (int l = 0; l < z->n_units; l++) {
            const zero_unit *u = &z->units[l];
            if (u->opt_host || u->opt_n == 0 || (double)(host + u->opt_n) > cap + 0.5) continue;
            if (best < 0 || u->opt_n > z->units[best].opt_n) best = l;
        }
        if (best < 0) break;
        z->units[best].opt_host = 1;
        host += z->units[best].opt_n;
    }
}

void zero_mem_stats(const zero_state *z, zinc_mem_stats *m)
{
    memset(m, 0, sizeof *m);
    for (int l = 0; l < z->n_units; l++) {
        const zero_unit *u = &z->units[l];
        uint64_t pb = (u->sharded ? u->shard : u->numel) * z->plan.psz;
        uint64_t mb = z->plan.master_sep ? u->opt_n * sizeof(float) : 0;
        uint64_t ob = 2 * u->opt_n * sizeof(float);
        m->params += pb;
        if (u->frozen) m->frozen += pb;
        else m->grads += (z->plan.stage >= 2 ? u->shard : u->numel) * z->plan.psz;
        m->master += mb;
        m->optimizer += ob;
        if (z->plan.opt_nvme) m->nvme += mb + ob;
        else if (u->opt_host) m->host += mb + ob;
        if (zero_param_on_nvme(z, u)) m->nvme += pb;
        else if (zero_param_on_host(z, u)) m->host += pb;
    }
    m->total = m->params + m->grads + m->master + m->optimizer;
    /* buckets: gradient reductions in flight (at most reduce_bucket_size
     * elements past the unit being reduced) and the reduce-scatter output */
    if (z->plan.stage >= 1) {
        uint64_t all = 0, big = 0;
        for (int l = 0; l < z->n_units; l++) {
            if (z->units[l].frozen) continue; /* no gradient to reduce */
            all += z->units[l].numel;
            if (z->units[l].numel > big) big = z->units[l].numel;
        }
        uint64_t rb = (uint64_t)z->opt.reduce_bucket_size + big;
        m->buffers = (rb < all ? rb : all) * z->plan.psz + big / (uint64_t)z->dp * z->plan.psz;
    }
    if (z->opt.delayed_update) { /* the host copies of one step's grads and new params */
        uint64_t d = 0;
        for (int l = 0; l < z->n_units; l++) d += 2 * z->units[l].opt_n * z->plan.psz;
        m->buffers += d;
        m->buffers_host += d;
    }
    if (z->plan.opt_nvme) { /* sub-group buffers of the NVMe optimizer pipeline */
        uint64_t g = zero_group_elems(z);
        int nb = 1 + z->opt.pipeline_read + z->opt.pipeline_write;
        m->buffers += (uint64_t)nb * 3 * g * sizeof(float);
        m->buffers_host += (uint64_t)nb * 3 * g * sizeof(float); /* aio buffers: host memory */
    }
}

/* Elements per optimizer sub-group: sub_group_size, in whole 4 KiB pages of
 * fp32 so NVMe transfers stay aligned, and no larger than the largest opt
 * range (rounded to a page). */
size_t zero_group_elems(const zero_state *z)
{
    int64_t g = z->opt.sub_group_size;
    if (g < 1024) g = 1024;
    size_t G = (size_t)g / 1024 * 1024, most = 0;
    for (int l = 0; l < z->n_units; l++)
        if (z->units[l].opt_n > most) most = z->units[l].opt_n;
    if (G > most) G = (most + 1023) / 1024 * 1024;
    return G;
}
