/* test_partition.c - ZeRO's pure partition math (zero/partition.c) alone: the
 * plan from the config, unit layout over DP ranks, the memory each rank holds
 * against ZeRO's formulas, first users of tied units, and sub-group sizes.
 * No device memory and no communication: states are built by hand. */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/config.h"
#include "zinc/device.h"
#include "zinc/ops.h"
#include "zinc/zero.h"

/* A model of n layers whose layer l holds params of the given sizes (0
 * terminated per layer, at most 4), each layer using its own unit; layer
 * tie_layer (if >= 0) also uses unit 0. */
typedef struct model {
    int n;
    int64_t sizes[8][5];
    int tie_layer;
    unsigned frozen[8]; /* bit k: layer l's parameter k is frozen */
} model;

static const model M = {
    .n = 5,
    .sizes = {{50257 * 8, 1024 * 8, 0}, {8, 8, 24 * 8, 24, 0}, {3, 0}, {0}, {8, 8, 0}},
    .tie_layer = 4,
};

static zinc_config g_cfg;
static const char *g_dev; /* the device build() plans for (NULL: host memory) */

/* zero's options from g_cfg, as the engine fills them */
static void opts_of(const zinc_config *c, zero_opts *o)
{
    memset(o, 0, sizeof *o);
    o->pdt = c->bf16.enabled ? ZINC_DTYPE_BF16 : c->fp16.enabled ? ZINC_DTYPE_F16 : ZINC_DTYPE_F32;
    o->offload_optimizer = c->zero.offload_optimizer.device;
    o->offload_param = c->zero.offload_param.device;
    o->reduce_bucket_size = c->zero.reduce_bucket_size;
    o->persistence_threshold = c->zero.stage3_param_persistence_threshold;
    o->sub_group_size = c->zero.sub_group_size;
    o->opt_ratio = c->zero.offload_optimizer.ratio;
}

static void build(zero_state *z, const model *m, int stage, int dp, int rank, zinc_dtype pdt)
{
    memset(z, 0, sizeof *z);
    zinc_config *c = &g_cfg;
    c->bf16.enabled = pdt == ZINC_DTYPE_BF16;
    c->fp16.enabled = pdt == ZINC_DTYPE_F16;
    opts_of(c, &z->opt);
    CU_ASSERT_FATAL(zero_plan_make(&z->opt, stage, g_dev, &z->plan) == ZINC_OK);
    z->dp = dp;
    z->dp_rank = rank;
    CU_ASSERT_FATAL(zero_tables_alloc(z, m->n) == ZINC_OK);
    for (int l = 0; l < m->n; l++) {
        for (int k = 0; m->sizes[l][k]; k++) {
            char name[32];
            snprintf(name, sizeof name, "l%d.p%d", l, k);
            int64_t shape[1] = {m->sizes[l][k]};
            int id = zero_param_add(z, l, name, 1, shape, -1, 1, ZINC_INIT_ZEROS, 0.0f, (m->frozen[l] >> k) & 1);
            CU_ASSERT_FATAL(id >= 0);
            CU_ASSERT_FATAL(zero_layer_use(z, l, l) == ZINC_OK);
        }
        /* tied to layer 0's first parameter, wherever it is stored (as zinc_layer_param_tie) */
        if (l == m->tie_layer) CU_ASSERT_FATAL(zero_layer_use(z, l, z->params[0].unit) == ZINC_OK);
    }
    zero_units_layout(z);
}

static uint64_t padded_total(const zero_state *z)
{
    uint64_t n = 0;
    for (int u = 0; u < z->n_units; u++) n += z->units[u].numel;
    return n;
}

static void test_layout(void)
{
    for (int dp = 1; dp <= 8; dp++)
        for (int stage = 0; stage <= 3; stage++) {
            size_t cover[2 * 5] = {0};
            for (int r = 0; r < dp; r++) {
                zero_state z;
                build(&z, &M, stage, dp, r, ZINC_DTYPE_F32);
                for (int u = 0; u < z.n_units; u++) {
                    const zero_unit *un = &z.units[u];
                    CU_ASSERT_EQUAL(un->numel % ((size_t)dp * ZERO_UNIT_ALIGN), 0);
                    CU_ASSERT_EQUAL(un->shard * (size_t)dp, un->numel);
                    size_t end = 0; /* params in order, aligned, inside the unit */
                    for (int p = un->n_params_first; p < un->n_params_end; p++) {
                        CU_ASSERT_EQUAL(z.params[p].unit, u);
                        CU_ASSERT_EQUAL(z.params[p].uoff % ZERO_UNIT_ALIGN, 0);
                        CU_ASSERT(z.params[p].uoff >= end);
                        end = z.params[p].uoff + (size_t)z.params[p].numel;
                    }
                    CU_ASSERT(end <= un->numel);
                    CU_ASSERT(un->numel < end + (size_t)dp * ZERO_UNIT_ALIGN + ZERO_UNIT_ALIGN ||
                              end == 0);
                    CU_ASSERT_EQUAL(un->frozen, u >= z.n_layers); /* M freezes nothing: empty */
                    if (un->frozen) CU_ASSERT_EQUAL(un->numel, 0);
                    if (stage == 0) {
                        CU_ASSERT_EQUAL(un->opt_lo, 0);
                        CU_ASSERT_EQUAL(un->opt_n, un->numel);
                    } else { /* rank r's slices tile the unit, in rank order */
                        CU_ASSERT_EQUAL(un->opt_lo, (size_t)r * un->shard);
                        CU_ASSERT_EQUAL(un->opt_n, un->shard);
                        cover[u] += un->opt_n;
                    }
                }
                zero_tables_free(&z);
            }
            if (stage > 0) {
                zero_state z;
                build(&z, &M, stage, dp, 0, ZINC_DTYPE_F32);
                for (int u = 0; u < z.n_units; u++) CU_ASSERT_EQUAL(cover[u], z.units[u].numel);
                zero_tables_free(&z);
            }
        }
}

/* model.freeze: frozen params go to their layer's second unit, which the layer uses and
 * which holds params only: no optimizer range, no grads in the memory formulas */
static void test_frozen(void)
{
    model fm = M;
    fm.frozen[1] = 1u << 2; /* l1.p2 (192 elements) */
    fm.frozen[0] = 3u;      /* all of layer 0 (the tied embedding) */
    for (int stage = 0; stage <= 3; stage++) {
        zero_state z, full;
        build(&z, &fm, stage, 2, 1, ZINC_DTYPE_BF16);
        build(&full, &M, stage, 2, 1, ZINC_DTYPE_BF16);
        const int L = z.n_layers;
        CU_ASSERT_EQUAL(z.n_units, 2 * L);
        for (int p = 0; p < z.n_params; p++) {
            const zero_param *pp = &z.params[p];
            int want = (!strcmp(pp->name, "l1.p2") || !strncmp(pp->name, "l0.", 3));
            CU_ASSERT_EQUAL(pp->frozen, want);
            CU_ASSERT_EQUAL(pp->unit, want ? L + (pp->name[1] - '0') : pp->name[1] - '0');
            CU_ASSERT_EQUAL(z.units[pp->unit].layer, pp->name[1] - '0');
        }
        CU_ASSERT_EQUAL(z.units[0].numel, 0); /* layer 0: all frozen */
        CU_ASSERT(z.units[L].numel >= (size_t)(50257 * 8 + 1024 * 8));
        CU_ASSERT_EQUAL(z.units[L].opt_n, 0);
        CU_ASSERT_EQUAL(z.units[L + 1].opt_n, 0);
        CU_ASSERT_EQUAL(z.units[L + 1].numel, 192);
        /* layer 1 uses its frozen unit; layer 4 (tied to layer 0) its frozen unit too */
        int uses = 0, tied = 0;
        for (int j = 0; j < z.layers[1].n_units; j++) uses += z.layers[1].units[j] == L + 1;
        for (int j = 0; j < z.layers[4].n_units; j++) tied += z.layers[4].units[j] == L;
        CU_ASSERT_EQUAL(uses, 1);
        CU_ASSERT_EQUAL(tied, 1);
        zinc_mem_stats m, f;
        zero_mem_stats(&z, &m);
        zero_mem_stats(&full, &f);
        uint64_t fro = 0, tr_g = 0, tr_opt = 0;
        for (int u = 0; u < z.n_units; u++) {
            const zero_unit *un = &z.units[u];
            uint64_t pb = (un->sharded ? un->shard : un->numel) * 2;
            if (un->frozen) fro += pb;
            else tr_g += (stage >= 2 ? un->shard : un->numel) * 2;
            tr_opt += un->opt_n;
        }
        CU_ASSERT_EQUAL(m.frozen, fro);
        CU_ASSERT_EQUAL(m.grads, tr_g);
        CU_ASSERT_EQUAL(m.optimizer, tr_opt * 8);
        CU_ASSERT_EQUAL(m.master, tr_opt * 4);
        CU_ASSERT(m.total < f.total); /* the frozen elements' grads, master and moments are gone */
        CU_ASSERT(m.frozen > 0 && m.frozen <= m.params);
        zero_tables_free(&z);
        zero_tables_free(&full);
    }
}

static void test_persistence(void)
{
    g_cfg.zero.stage3_param_persistence_threshold = 100;
    zero_state z;
    build(&z, &M, 3, 4, 1, ZINC_DTYPE_BF16);
    CU_ASSERT_EQUAL(z.units[0].sharded, 1); /* 410k elements */
    CU_ASSERT_EQUAL(z.units[1].sharded, 1); /* 8+8+192+24 -> 256 padded from 240 */
    CU_ASSERT_EQUAL(z.units[2].sharded, 0); /* 3 elements: under the threshold, whole */
    CU_ASSERT_EQUAL(z.units[3].sharded, 0); /* empty */
    CU_ASSERT_EQUAL(z.units[4].sharded, 0); /* 8+8 -> 32 elements */
    zinc_mem_stats m;
    zero_mem_stats(&z, &m);
    uint64_t whole = (uint64_t)(z.units[2].numel + z.units[4].numel) * 2;
    uint64_t shards = (uint64_t)(z.units[0].shard + z.units[1].shard) * 2;
    CU_ASSERT_EQUAL(m.params, whole + shards);
    zero_tables_free(&z);
    build(&z, &M, 2, 4, 1, ZINC_DTYPE_BF16); /* below stage 3 nothing is sharded */
    for (int u = 0; u < z.n_units; u++) CU_ASSERT_EQUAL(z.units[u].sharded, 0);
    zero_tables_free(&z);
    g_cfg.zero.stage3_param_persistence_threshold = 0;
}

/* ZeRO's model-state formulas in mixed precision, K = 12 (Psi padded
 * elements, N ranks): stage 0 16 Psi, 1 4 Psi + 12 Psi / N, 2 2 Psi + 14 Psi / N,
 * 3 16 Psi / N; fp32 has no separate master copy (12 Psi at stage 0). */
static void test_memory_formulas(void)
{
    for (int dp = 1; dp <= 8; dp *= 2) {
        for (int stage = 0; stage <= 3; stage++) {
            zero_state z;
            build(&z, &M, stage, dp, dp - 1, ZINC_DTYPE_BF16);
            uint64_t psi = padded_total(&z), n = (uint64_t)dp;
            uint64_t want[4] = {16 * psi, 4 * psi + 12 * psi / n, 2 * psi + 14 * psi / n, 16 * psi / n};
            zinc_mem_stats m;
            zero_mem_stats(&z, &m);
            CU_ASSERT_EQUAL(m.total, want[stage]);
            CU_ASSERT_EQUAL(m.total, m.params + m.grads + m.master + m.optimizer);
            CU_ASSERT_EQUAL(m.nvme, 0);
            if (m.total != want[stage])
                printf("\nstage %d dp %d: total %llu, want %llu\n", stage, dp,
                       (unsigned long long)m.total, (unsigned long long)want[stage]);
            zero_tables_free(&z);
            build(&z, &M, stage, dp, 0, ZINC_DTYPE_F32);
            zero_mem_stats(&z, &m);
            uint64_t want32[4] = {16 * psi, 8 * psi + 8 * psi / n, 4 * psi + 12 * psi / n,
                                  16 * psi / n};
            CU_ASSERT_EQUAL(m.master, 0); /* the fp32 params are the master weights */
            CU_ASSERT_EQUAL(m.total, want32[stage]);
            zero_tables_free(&z);
        }
    }
}

static void test_nvme_memory(void)
{
    g_cfg.zero.offload_optimizer.device = ZINC_OFFLOAD_NVME;
    g_cfg.zero.offload_param.device = ZINC_OFFLOAD_NVME;
    zero_state z;
    build(&z, &M, 3, 2, 0, ZINC_DTYPE_F32);
    CU_ASSERT(z.plan.master_sep); /* a master copy in the swap file even for fp32 */
    zinc_mem_stats m;
    zero_mem_stats(&z, &m);
    CU_ASSERT_EQUAL(m.nvme, m.total - m.grads); /* everything but the grads is on NVMe */
    CU_ASSERT_EQUAL(m.host, 0);
    zero_tables_free(&z);
    g_cfg.zero.offload_param.device = ZINC_OFFLOAD_NONE;
    build(&z, &M, 1, 2, 0, ZINC_DTYPE_F32);
    zero_mem_stats(&z, &m);
    CU_ASSERT_EQUAL(m.nvme, m.master + m.optimizer);
    zero_tables_free(&z);
    g_cfg.zero.offload_optimizer.device = ZINC_OFFLOAD_NONE;
}

/* offload_optimizer.ratio on a GPU: whole units on the host, their state within the ratio
 * and short of it by less than one unit; mem.host counts them; none on CPU ranks */
static void test_ratio(void)
{
    static const model R = {.n = 7,
                            .sizes = {{5000, 0}, {1000, 0}, {1000, 0}, {1200, 0}, {1000, 0}, {800, 0}, {3000, 0}},
                            .tie_layer = -1};
    g_cfg.zero.offload_optimizer.device = ZINC_OFFLOAD_CPU;
    g_cfg.bf16.enabled = 1;
    const double ratios[] = {0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0};
    for (int k = 0; k < 7; k++)
        for (int dp = 1; dp <= 2; dp++) {
            g_cfg.zero.offload_optimizer.ratio = ratios[k];
            g_dev = "cuda";
            zero_state z;
            build(&z, &R, 2, dp, 0, ZINC_DTYPE_BF16);
            size_t all = 0, host = 0, big = 0;
            uint64_t hb = 0;
            for (int u = 0; u < z.n_units; u++) {
                all += z.units[u].opt_n;
                if (z.units[u].opt_n > big) big = z.units[u].opt_n;
                if (z.units[u].opt_host) host += z.units[u].opt_n, hb += 3 * 4 * z.units[u].opt_n;
                if (z.units[u].opt_n == 0) CU_ASSERT(!z.units[u].opt_host);
            }
            const double cap = ratios[k] * (double)all;
            CU_ASSERT((double)host <= cap + 0.5);
            CU_ASSERT((double)host > cap - (double)big);
            if (ratios[k] == 1.0) CU_ASSERT_EQUAL(host, all);
            if (ratios[k] == 0.0) CU_ASSERT_EQUAL(host, 0);
            zinc_mem_stats m;
            zero_mem_stats(&z, &m);
            CU_ASSERT_EQUAL(m.host, hb);
            zero_tables_free(&z);
            g_dev = NULL; /* CPU ranks: the state is where it already lives */
            build(&z, &R, 2, dp, 0, ZINC_DTYPE_BF16);
            for (int u = 0; u < z.n_units; u++) CU_ASSERT(!z.units[u].opt_host);
            zero_mem_stats(&z, &m);
            CU_ASSERT_EQUAL(m.host, 0);
            zero_tables_free(&z);
        }
    g_cfg.zero.offload_optimizer.device = ZINC_OFFLOAD_NONE;
    g_cfg.zero.offload_optimizer.ratio = 1.0;
    g_cfg.bf16.enabled = 0;
}

static zinc_status plan_of(const zinc_config *c, int stage, const char *dev, zero_plan *p)
{
    zero_opts o;
    opts_of(c, &o);
    return zero_plan_make(&o, stage, dev, p);
}

static void test_plan(void)
{
    zinc_config c;
    zinc_config_defaults(&c);
    zero_plan p;

    CU_ASSERT_EQUAL(plan_of(&c, 2, NULL, &p), ZINC_OK);
    CU_ASSERT(p.pdt == ZINC_DTYPE_F32 && p.psz == 4 && !p.master_sep && !p.opt_host);
    c.bf16.enabled = 1;
    CU_ASSERT_EQUAL(plan_of(&c, 2, NULL, &p), ZINC_OK);
    CU_ASSERT(p.pdt == ZINC_DTYPE_BF16 && p.psz == 2 && p.master_sep);
    c.bf16.enabled = 0;
    /* an offloaded optimizer on a GPU runs on the host, with its own master copy */
    c.zero.offload_optimizer.device = ZINC_OFFLOAD_CPU;
    CU_ASSERT_EQUAL(plan_of(&c, 1, NULL, &p), ZINC_OK);
    CU_ASSERT(!p.opt_host && !p.master_sep);
    CU_ASSERT_EQUAL(plan_of(&c, 1, "cuda", &p), ZINC_OK);
    CU_ASSERT(p.opt_host && p.master_sep);
    /* parameter offload: stage 3 only; on a GPU with the optimizer offloaded (ratio 1) */
    c.zero.offload_param.device = ZINC_OFFLOAD_CPU;
    CU_ASSERT_EQUAL(plan_of(&c, 2, NULL, &p), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "zero_optimization.offload_param.device: \"cpu\" requires "
                     "zero_optimization.stage 3, found stage 2") != NULL);
    CU_ASSERT_EQUAL(plan_of(&c, 3, "cuda", &p), ZINC_OK);
    CU_ASSERT(p.param_host && p.opt_host && !p.param_nvme);
    CU_ASSERT_EQUAL(plan_of(&c, 3, NULL, &p), ZINC_OK);
    CU_ASSERT(!p.param_host); /* CPU ranks: the params are in host memory already */
    c.zero.offload_optimizer.ratio = 0.5;
    CU_ASSERT_EQUAL(plan_of(&c, 3, "cuda", &p), ZINC_ERR_CONFIG);
    c.zero.offload_optimizer.ratio = 1.0;
    c.zero.offload_optimizer.device = ZINC_OFFLOAD_NONE;
    CU_ASSERT_EQUAL(plan_of(&c, 3, "cuda", &p), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "offload_param.device \"cpu\" on cuda needs "
                     "zero_optimization.offload_optimizer.device \"cpu\" or \"nvme\" with ratio 1") != NULL);
    c.zero.offload_param.device = ZINC_OFFLOAD_NVME;
    c.zero.offload_optimizer.device = ZINC_OFFLOAD_CPU;
    CU_ASSERT_EQUAL(plan_of(&c, 3, "cuda", &p), ZINC_OK);
    CU_ASSERT(p.param_nvme && !p.param_host);
}

static void test_first_user_and_groups(void)
{
    zero_state z;
    build(&z, &M, 1, 2, 0, ZINC_DTYPE_F32);
    CU_ASSERT_EQUAL(z.units[0].first_user, 0); /* used by layers 0 and 4: first is 0 */
    CU_ASSERT_EQUAL(z.units[4].first_user, 4);
    CU_ASSERT_EQUAL(z.layers[4].n_units, 2);
    CU_ASSERT_EQUAL(zero_layer_use(&z, 4, 0), ZINC_OK); /* again: no second entry */
    CU_ASSERT_EQUAL(z.layers[4].n_units, 2);
    for (int u = 1; u < ZERO_MAX_LAYER_UNITS - 1; u++) CU_ASSERT_EQUAL(zero_layer_use(&z, 4, u), ZINC_OK);
    CU_ASSERT_EQUAL(zero_layer_use(&z, 4, 3), ZINC_ERR_INVALID_ARG); /* a fifth unit */
    /* sub-groups: whole pages of fp32, at most the largest opt range rounded up */
    z.opt.sub_group_size = 5000;
    CU_ASSERT_EQUAL(zero_group_elems(&z), 4096);
    z.opt.sub_group_size = 10;
    CU_ASSERT_EQUAL(zero_group_elems(&z), 1024);
    z.opt.sub_group_size = 1000000000;
    size_t most = 0;
    for (int u = 0; u < z.n_units; u++) if (z.units[u].opt_n > most) most = z.units[u].opt_n;
    CU_ASSERT_EQUAL(zero_group_elems(&z), (most + 1023) / 1024 * 1024);
    zero_tables_free(&z);
    /* bad shapes are refused with the parameter's name */
    build(&z, &(model){.n = 1, .sizes = {{0}}, .tie_layer = -1}, 0, 1, 0, ZINC_DTYPE_F32);
    int64_t bad[2] = {4, 0};
    CU_ASSERT_EQUAL(zero_param_add(&z, 0, "w", 2, bad, -1, 1, ZINC_INIT_ZEROS, 0.0f, 0), -1);
    CU_ASSERT(strstr(zinc_last_error(), "w: dimension 1 is 0") != NULL);
    zero_tables_free(&z);
}

/* ---- tensor-parallel slices ---- */

typedef struct runs_seen {
    int64_t local_next;   /* runs come in the slice's element order */
    unsigned char *hit;   /* logical elements covered (over all ranks) */
    int64_t n_runs;
} runs_seen;

static void see_run(void *u, int64_t local, int64_t logical, int64_t n)
{
    runs_seen *r = u;
    CU_ASSERT_EQUAL(local, r->local_next);
    r->local_next = local + n;
    for (int64_t k = 0; k < n; k++) r->hit[logical + k]++;
    r->n_runs++;
}

/* A state of one layer holding one parameter of the given spec at TP (tp, rank). */
static int one_param(zero_state *z, int tp, int rank, int ndim, const int64_t *shape, int tp_dim,
                     int blocks, zinc_init_kind init)
{
    memset(z, 0, sizeof *z);
    opts_of(&g_cfg, &z->opt);
    z->opt.seed = 7;
    CU_ASSERT_FATAL(zero_plan_make(&z->opt, 0, NULL, &z->plan) == ZINC_OK);
    z->dp = 1;
    z->tp = tp;
    z->tp_rank = rank;
    z->dev = zinc_device_cpu();
    z->ops = zinc_ops_cpu();
    CU_ASSERT_FATAL(zero_tables_alloc(z, 1) == ZINC_OK);
    int id = zero_param_add(z, 0, "w", ndim, shape, tp_dim, blocks, init, 0.02f, 0);
    if (id >= 0) CU_ASSERT_FATAL(zero_layer_use(z, 0, 0) == ZINC_OK);
    return id;
}

static void test_tp_slices(void)
{
    static const struct { int ndim; int64_t shape[3]; int tp_dim, blocks; } specs[] = {
        {2, {8, 24}, 1, 3},  /* c_attn: (C, 3C), columns q | k | v */
        {2, {16, 8}, 0, 1},  /* a row-parallel weight */
        {2, {8, 32}, 1, 1},  /* a column-parallel weight */
        {1, {24}, 0, 3},     /* c_attn's bias */
        {3, {4, 8, 6}, 1, 2},
    };
    for (size_t s = 0; s < sizeof specs / sizeof *specs; s++)
        for (int tp = 1; tp <= 4; tp *= 2) {
            int64_t total = 1;
            for (int i = 0; i < specs[s].ndim; i++) total *= specs[s].shape[i];
            unsigned char *hit = calloc((size_t)total, 1);
            for (int r = 0; r < tp; r++) {
                zero_state z;
                CU_ASSERT_FATAL(one_param(&z, tp, r, specs[s].ndim, specs[s].shape,
                                          specs[s].tp_dim, specs[s].blocks, ZINC_INIT_ZEROS) == 0);
                const zero_param *p = &z.params[0];
                CU_ASSERT_EQUAL(p->gnumel, total);
                CU_ASSERT_EQUAL(p->numel * tp, total);
                CU_ASSERT_EQUAL(p->lshape[p->tp_dim] * tp, p->shape[p->tp_dim]);
                runs_seen rs = {0, hit, 0};
                zero_param_runs(p, tp, r, see_run, &rs);
                CU_ASSERT_EQUAL(rs.local_next, p->numel);
                if (tp == 1) CU_ASSERT_EQUAL(rs.n_runs, 1);
                zero_tables_free(&z);
            }
            for (int64_t k = 0; k < total; k++) CU_ASSERT_EQUAL(hit[k], 1); /* each once */
            free(hit);
        }
    /* c_attn at TP 2, rank 1: row 0 holds q, k, v columns 4..7 of each block */
    zero_state z;
    CU_ASSERT_FATAL(one_param(&z, 2, 1, 2, (const int64_t[]){8, 24}, 1, 3, ZINC_INIT_ZEROS) == 0);
    runs_seen rs = {0, calloc(192, 1), 0};
    zero_param_runs(&z.params[0], 2, 1, see_run, &rs);
    CU_ASSERT_EQUAL(rs.n_runs, 8 * 3);
    CU_ASSERT(rs.hit[4] && rs.hit[7] && !rs.hit[8] && rs.hit[12] && rs.hit[20] && !rs.hit[3]);
    free(rs.hit);
    zero_tables_free(&z);
    /* a dimension that does not split evenly is refused with the numbers */
    CU_ASSERT_EQUAL(one_param(&z, 4, 0, 2, (const int64_t[]){8, 18}, 1, 3, ZINC_INIT_ZEROS), -1);
    CU_ASSERT(strstr(zinc_last_error(), "w: dimension 1 (18) does not split into 3 block(s) over 4 TP ranks") != NULL);
    zero_tables_free(&z);
}

/* Every TP size starts from the same model: a rank's initial slice equals
 * those elements of the TP-1 initial tensor. */
static void test_tp_init(void)
{
    const int64_t shape[2] = {8, 24};
    zero_state whole;
    CU_ASSERT_FATAL(one_param(&whole, 1, 0, 2, shape, 1, 3, ZINC_INIT_NORMAL) == 0);
    zero_units_layout(&whole);
    CU_ASSERT_FATAL(zero_units_alloc(&whole) == ZINC_OK);
    const float *w = whole.units[0].p;
    for (int tp = 2; tp <= 4; tp *= 2)
        for (int r = 0; r < tp; r++) {
            zero_state z;
            CU_ASSERT_FATAL(one_param(&z, tp, r, 2, shape, 1, 3, ZINC_INIT_NORMAL) == 0);
            zero_units_layout(&z);
            CU_ASSERT_FATAL(zero_units_alloc(&z) == ZINC_OK);
            const float *s = z.units[0].p;
            int64_t lcols = 24 / tp, lsub = 8 / tp, bad = 0;
            for (int64_t i = 0; i < 8; i++)
                for (int64_t j = 0; j < lcols; j++) {
                    int64_t b = j / lsub, col = b * 8 + r * lsub + j % lsub;
                    bad += s[i * lcols + j] != w[i * 24 + col];
                }
            CU_ASSERT_EQUAL(bad, 0);
            /* the grad norm splits: this parameter is TP-split */
            for (int64_t k = 0; k < z.params[0].numel; k++) ((float *)z.units[0].g)[k] = 1.0f;
            double sq[2];
            CU_ASSERT_EQUAL(zero_grad_sumsq(&z, sq), ZINC_OK);
            CU_ASSERT_EQUAL(sq[0], (double)z.params[0].numel);
            CU_ASSERT_EQUAL(sq[1], 0.0);
            zero_units_free(&z);
            zero_tables_free(&z);
        }
    double sq[2];
    CU_ASSERT_EQUAL(zero_grad_sumsq(&whole, sq), ZINC_OK); /* TP 1: everything counted once */
    CU_ASSERT_EQUAL(sq[0], 0.0);
    zero_units_free(&whole);
    zero_tables_free(&whole);
}

int main(void)
{
    zinc_config_defaults(&g_cfg);
    g_cfg.zero.stage3_param_persistence_threshold = 0;
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("zero partition", NULL, NULL);
    CU_add_test(s, "layout tiles units over ranks", test_layout);
    CU_add_test(s, "persistence threshold", test_persistence);
    CU_add_test(s, "frozen parameters", test_frozen);
    CU_add_test(s, "memory = ZeRO's formulas", test_memory_formulas);
    CU_add_test(s, "nvme memory", test_nvme_memory);
    CU_add_test(s, "offload_optimizer.ratio", test_ratio);
    CU_add_test(s, "plan from the config", test_plan);
    CU_add_test(s, "first users, tie limit, sub-groups", test_first_user_and_groups);
    CU_add_test(s, "tensor-parallel slices", test_tp_slices);
    CU_add_test(s, "tensor-parallel init and norm split", test_tp_init);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
