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
#include "zinc/zero.h"

/* A model of n layers whose layer l holds params of the given sizes (0
 * terminated per layer, at most 4), each layer using its own unit; layer
 * tie_layer (if >= 0) also uses unit 0. */
typedef struct model {
    int n;
    int64_t sizes[8][5];
    int tie_layer;
} model;

static const model M = {
    .n = 5,
    .sizes = {{50257 * 8, 1024 * 8, 0}, {8, 8, 24 * 8, 24, 0}, {3, 0}, {0}, {8, 8, 0}},
    .tie_layer = 4,
};

static zinc_config g_cfg;

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
}

static void build(zero_state *z, const model *m, int stage, int dp, int rank, zinc_dtype pdt)
{
    memset(z, 0, sizeof *z);
    zinc_config *c = &g_cfg;
    c->bf16.enabled = pdt == ZINC_DTYPE_BF16;
    c->fp16.enabled = pdt == ZINC_DTYPE_F16;
    opts_of(c, &z->opt);
    CU_ASSERT_FATAL(zero_plan_make(&z->opt, stage, NULL, &z->plan) == ZINC_OK);
    z->dp = dp;
    z->dp_rank = rank;
    CU_ASSERT_FATAL(zero_tables_alloc(z, m->n) == ZINC_OK);
    for (int l = 0; l < m->n; l++) {
        for (int k = 0; m->sizes[l][k]; k++) {
            char name[32];
            snprintf(name, sizeof name, "l%d.p%d", l, k);
            int64_t shape[1] = {m->sizes[l][k]};
            int id = zero_param_add(z, l, name, 1, shape, -1, ZINC_INIT_ZEROS, 0.0f);
            CU_ASSERT_FATAL(id >= 0);
            CU_ASSERT_FATAL(zero_layer_use(z, l, l) == ZINC_OK);
        }
        if (l == m->tie_layer) CU_ASSERT_FATAL(zero_layer_use(z, l, 0) == ZINC_OK);
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
            size_t cover[5] = {0};
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
    zero_tables_free(&z);
    g_cfg.zero.offload_param.device = ZINC_OFFLOAD_NONE;
    build(&z, &M, 1, 2, 0, ZINC_DTYPE_F32);
    zero_mem_stats(&z, &m);
    CU_ASSERT_EQUAL(m.nvme, m.master + m.optimizer);
    zero_tables_free(&z);
    g_cfg.zero.offload_optimizer.device = ZINC_OFFLOAD_NONE;
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
    /* parameter offload: stage 3 only, and not on a GPU yet, each one line */
    c.zero.offload_param.device = ZINC_OFFLOAD_CPU;
    CU_ASSERT_EQUAL(plan_of(&c, 2, NULL, &p), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "zero_optimization.offload_param.device: \"cpu\" requires "
                     "zero_optimization.stage 3, found stage 2") != NULL);
    CU_ASSERT_EQUAL(plan_of(&c, 3, "cuda", &p), ZINC_ERR_UNSUPPORTED);
    CU_ASSERT(strstr(zinc_last_error(), "not supported with device cuda") != NULL);
    CU_ASSERT_EQUAL(plan_of(&c, 3, NULL, &p), ZINC_OK);
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
    CU_ASSERT_EQUAL(zero_param_add(&z, 0, "w", 2, bad, -1, ZINC_INIT_ZEROS, 0.0f), -1);
    CU_ASSERT(strstr(zinc_last_error(), "w: dimension 1 is 0") != NULL);
    zero_tables_free(&z);
}

int main(void)
{
    zinc_config_defaults(&g_cfg);
    g_cfg.zero.stage3_param_persistence_threshold = 0;
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("zero partition", NULL, NULL);
    CU_add_test(s, "layout tiles units over ranks", test_layout);
    CU_add_test(s, "persistence threshold", test_persistence);
    CU_add_test(s, "memory = ZeRO's formulas", test_memory_formulas);
    CU_add_test(s, "nvme memory", test_nvme_memory);
    CU_add_test(s, "plan from the config", test_plan);
    CU_add_test(s, "first users, tie limit, sub-groups", test_first_user_and_groups);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
