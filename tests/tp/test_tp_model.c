/* test_tp_model.c - GPT-2's memory and checkpoints under tensor parallelism,
 * under 1, 2 and 4 ranks (tests/tp/mpi_ranks), the whole world one TP group:
 *  - model state per rank at TP 4 is 1/4 of TP 1's within 5% (GPT-2 124M,
 *    the estimate), kind by kind;
 *  - saved activations per rank, with and without sequence parallelism,
 *    within 10% of the formula below, and SP lowers them by its factor;
 *  - what the engine allocates at TP = world with SP equals the estimate;
 *  - one state saved at TP 1 and at TP = world exports (zinc-ckpt export) to
 *    the same safetensors bytes;
 *  - model.init_from of that file into TP = world gives the TP-1 loss and
 *    saves the same parameters (export bit for bit). Collective. */
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "zinc/aio.h"
#include "zinc/comm.h"
#include "zinc/config.h"
#include "zinc/data.h"
#include "zinc/device.h"
#include "zinc/engine.h"
#include "zinc/gpt2.h"

static zinc_comm *g_world, *g_self;
static int g_rank, g_size;
static char g_dir[256], g_shard[300], g_ckpt_tool[512];

static int config_for(zinc_config *c, const char *model, int tp, int sp, int micro,
                      const char *extra, int world)
{
    char j[2048];
    snprintf(j, sizeof j,
             "{\"train_micro_batch_size_per_gpu\": %d, \"gradient_accumulation_steps\": 1,"
             " \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.003}},"
             " \"model\": {\"type\": \"gpt2\", %s, \"seed\": 5},"
             " \"tensor_parallel\": {\"autotp_size\": %d, \"sequence_parallel\": %s}%s,"
             " \"data\": {\"train\": [\"%s\"]}, \"device\": \"cpu\"}",
             micro, model, tp, sp ? "true" : "false", extra, g_shard);
    zinc_status st = zinc_config_load_string(j, "tp-model", NULL, 0, c);
    if (st == ZINC_OK) st = zinc_config_resolve(c, world);
    if (st != ZINC_OK) fprintf(stderr, "rank %d: config: %s\n", g_rank, zinc_last_error());
    return st == ZINC_OK;
}

static const char *M124 = "\"n_layer\": 12, \"n_embd\": 768, \"n_head\": 12, \"vocab_size\": 50432,"
                          " \"block_size\": 1024";

static int estimate(int tp, int sp, zinc_mem_stats *m)
{
    zinc_config c;
    zinc_gpt2 *g = NULL;
    if (!config_for(&c, M124, tp, sp, 4, "", tp) || zinc_gpt2_create(&c, &g) != ZINC_OK) return 0;
    zinc_status st = zinc_engine_estimate_memory(&c, zinc_gpt2_model(g), 1, 1, m);
    if (st != ZINC_OK) fprintf(stderr, "estimate: %s\n", zinc_last_error());
    zinc_gpt2_destroy(g);
    return st == ZINC_OK;
}

static void test_state_quarter(void)
{
    zinc_mem_stats m1, m4;
    CU_ASSERT_FATAL(estimate(1, 0, &m1) && estimate(4, 0, &m4));
    const uint64_t a[] = {m1.params, m1.grads, m1.optimizer, m1.total};
    const uint64_t b[] = {m4.params, m4.grads, m4.optimizer, m4.total};
    for (int k = 0; k < 4; k++) {
        double r = 4.0 * (double)b[k] / (double)a[k];
        if (!(r >= 0.95 && r <= 1.05)) fprintf(stderr, "state kind %d: 4 x TP4 / TP1 = %.4f\n", k, r);
        CU_ASSERT(r >= 0.95 && r <= 1.05);
    }
}

/* Activation elements per token of one rank, at TP size P, s = P with
 * sequence parallelism else 1 (GPT-2, fp32 statistics left out):
 *   blocks  L (3C/s + 12C/P): ln1, res2, ln2 in the LayerNorm/residual
 *           region; qkv 3C/P, attention output C/P, c_fc and its GELU 8C/P
 *   outputs (L+1) C/s between the layers, 2 C/s input gradients
 *   head    C + V/P: ln_f's output (whole) and this rank's logits
 *   scratch C/P + C + 4C/P, + C + C/s with SP (a block's working set). */
static double act_formula(int P, int sp)
{
    const double L = 12, C = 768, V = 50432, N = 4.0 * 1024, s = sp ? P : 1;
    double per = L * (3 * C / s + 12 * C / P) + (L + 1) * C / s + 2 * C / s + C + V / P +
                 C / P + C + 4 * C / P + (sp ? C + C / s : 0);
    return per * N * 4;
}

static void test_activations(void)
{
    const int cases[3][2] = {{1, 0}, {4, 0}, {4, 1}};
    double got[3];
    for (int i = 0; i < 3; i++) {
        zinc_mem_stats m;
        CU_ASSERT_FATAL(estimate(cases[i][0], cases[i][1], &m));
        got[i] = (double)m.activations;
        double want = act_formula(cases[i][0], cases[i][1]);
        double d = fabs(got[i] - want) / want;
        if (g_rank == 0)
            printf("\n  activations TP %d%s: %.1f MiB (formula %.1f MiB, %.1f%%)", cases[i][0],
                   cases[i][1] ? " SP" : "", got[i] / 1048576.0, want / 1048576.0, 100 * d);
        CU_ASSERT(d <= 0.10);
    }
    /* SP's factor: what the formula predicts between TP 4 and TP 4 + SP */
    double pred = act_formula(4, 0) / act_formula(4, 1), seen = got[1] / got[2];
    CU_ASSERT(fabs(seen - pred) / pred <= 0.10);
    CU_ASSERT(got[2] < got[1] && got[1] < got[0]);
}

static const char *SMALL = "\"n_layer\": 2, \"n_embd\": 64, \"n_head\": 4, \"vocab_size\": 512,"
                           " \"block_size\": 32";

/* The engine at TP = world with SP allocates what the estimate says (model
 * state + activations), within the small buffers the estimate leaves out. */
static void test_allocation(void)
{
    zinc_config c;
    zinc_gpt2 *g = NULL;
    CU_ASSERT_FATAL(config_for(&c, SMALL, g_size, 1, 4, ", \"bf16\": {\"enabled\": true}", g_size));
    CU_ASSERT_FATAL(zinc_gpt2_create(&c, &g) == ZINC_OK);
    const zinc_device *dev = zinc_device_cpu();
    uint64_t before = 0, after = 0;
    dev->mem(&before, NULL, NULL);
    zinc_engine *e = NULL;
    zinc_engine_opts o = {.config = &c, .world = g_world, .model = zinc_gpt2_model(g)};
    CU_ASSERT_FATAL(zinc_engine_create(&o, &e) == ZINC_OK);
    dev->mem(&after, NULL, NULL);
    zinc_mem_stats m;
    CU_ASSERT_FATAL(zinc_engine_estimate_memory(&c, zinc_gpt2_model(g), 1, 0, &m) == ZINC_OK);
    double got = (double)(after - before), want = (double)(m.total + m.activations);
    if (!(got >= want && got <= want * 1.02 + 65536.0))
        fprintf(stderr, "rank %d: allocated %.0f bytes, estimated %.0f\n", g_rank, got, want);
    CU_ASSERT(got >= want && got <= want * 1.02 + 65536.0);
    zinc_engine_destroy(e);
    zinc_gpt2_destroy(g);
}

/* ---- checkpoints ---- */

typedef struct run {
    zinc_config c;
    zinc_gpt2 *g;
    zinc_engine *e;
} run;

static int run_open(run *r, zinc_comm *w, int tp, int stage)
{
    char extra[96];
    snprintf(extra, sizeof extra, ", \"zero_optimization\": {\"stage\": %d}", stage);
    memset(r, 0, sizeof *r);
    if (!config_for(&r->c, SMALL, tp, 0, 2, extra, tp) || zinc_gpt2_create(&r->c, &r->g) != ZINC_OK)
        return 0;
    zinc_engine_opts o = {.config = &r->c, .world = w, .model = zinc_gpt2_model(r->g)};
    if (zinc_engine_create(&o, &r->e) != ZINC_OK) {
        fprintf(stderr, "rank %d: engine: %s\n", g_rank, zinc_last_error());
        return 0;
    }
    return 1;
}

static void run_close(run *r)
{
    zinc_engine_destroy(r->e);
    zinc_gpt2_destroy(r->g);
}

static int export_to(const char *ckpt, const char *out)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' export '%s' --format safetensors '%s' >/dev/null", g_ckpt_tool,
             ckpt, out);
    return system(cmd) == 0;
}

static int same_file(const char *a, const char *b)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static void test_export_and_init_from(void)
{
    zinc_data *d = NULL;
    const char *p[] = {g_shard};
    CU_ASSERT_FATAL(zinc_data_open(p, 1, 32, 512, 1, &d) == ZINC_OK);
    zinc_aio *aio = NULL;
    zinc_aio_opts ao;
    zinc_aio_opts_default(&ao);
    CU_ASSERT_FATAL(zinc_aio_create(&ao, &aio) == ZINC_OK);
    /* one tag in three folders: the export records the tag */
    char ck[400], ck2[400], ck3[400], a[400], b[400], cst[400];
    snprintf(ck, sizeof ck, "%s/ck1", g_dir);
    snprintf(ck2, sizeof ck2, "%s/ck2", g_dir);
    snprintf(ck3, sizeof ck3, "%s/ck3", g_dir);
    snprintf(a, sizeof a, "%s/tp1.safetensors", g_dir);
    snprintf(b, sizeof b, "%s/tpn.safetensors", g_dir);
    snprintf(cst, sizeof cst, "%s/init.safetensors", g_dir);
    double l1 = 0;
    int ok = 1;
    /* rank 0: the state at TP 1 after 3 steps, saved and exported */
    if (g_rank == 0) {
        run r;
        ok = run_open(&r, g_self, 1, 1);
        for (int s = 0; ok && s < 3; s++) {
            zinc_step_stats st;
            ok = zinc_engine_train_batch(r.e, d, &st) == ZINC_OK;
        }
        ok = ok && zinc_engine_save_checkpoint(r.e, aio, ck, "s", 0) == ZINC_OK;
        ok = ok && zinc_engine_eval(r.e, d, 0, 1, &l1) == ZINC_OK && export_to(ck, a);
        if (!ok) fprintf(stderr, "TP 1 run: %s\n", zinc_last_error());
        run_close(&r);
    }
    CU_ASSERT_FATAL(zinc_comm_agree(g_world, ok ? ZINC_OK : ZINC_ERR_INTERNAL) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_comm_broadcast(g_world, &l1, 1, ZINC_DTYPE_F64, 0, NULL) == ZINC_OK);
    /* the same state loaded at TP = world (ZeRO-3) and saved again */
    run t;
    CU_ASSERT_FATAL(run_open(&t, g_world, g_size, 3));
    CU_ASSERT_EQUAL_FATAL(zinc_engine_load_checkpoint(t.e, aio, ck, "s"), ZINC_OK);
    CU_ASSERT_EQUAL_FATAL(zinc_engine_save_checkpoint(t.e, aio, ck2, "s", 0), ZINC_OK);
    double lt = 0;
    CU_ASSERT_EQUAL(zinc_engine_eval(t.e, d, 0, 1, &lt), ZINC_OK);
    CU_ASSERT(fabs(lt - l1) <= 1e-6 * fabs(l1));
    run_close(&t);
    if (g_rank == 0) {
        CU_ASSERT(export_to(ck2, b));
        CU_ASSERT(same_file(a, b)); /* TP-split pieces export whole, bit for bit */
    }
    zinc_comm_barrier(g_world);
    /* the exported file into TP = world from scratch */
    run u;
    CU_ASSERT_FATAL(run_open(&u, g_world, g_size, 0));
    CU_ASSERT_EQUAL_FATAL(zinc_comm_agree(g_world, zinc_engine_init_from(u.e, a)), ZINC_OK);
    double li = 0;
    CU_ASSERT_EQUAL(zinc_engine_eval(u.e, d, 0, 1, &li), ZINC_OK);
    if (g_rank == 0) printf("\n  eval loss TP 1 %.9g, TP %d loaded %.9g, init_from %.9g", l1, g_size, lt, li);
    CU_ASSERT(fabs(li - l1) <= 1e-6 * fabs(l1));
    CU_ASSERT_EQUAL_FATAL(zinc_engine_save_checkpoint(u.e, aio, ck3, "s", 0), ZINC_OK);
    run_close(&u);
    if (g_rank == 0) {
        CU_ASSERT(export_to(ck3, cst));
        CU_ASSERT(same_file(a, cst));
    }
    zinc_comm_barrier(g_world);
    zinc_aio_destroy(aio);
    zinc_data_close(d);
}

int main(int argc, char **argv)
{
    zinc_status st = zinc_comm_init_world("auto", &argc, &argv, &g_world);
    if (st != ZINC_OK) {
        fprintf(stderr, "comm init: %s: %s\n", zinc_status_str(st), zinc_last_error());
        return 1;
    }
    g_rank = zinc_comm_rank(g_world);
    g_size = zinc_comm_size(g_world);
    zinc_comm_set_timeout(g_world, 120);
    if (zinc_comm_split(g_world, g_rank, 0, "self", &g_self) != ZINC_OK) return 1;
    /* zinc-ckpt sits at the top of the build folder: <build>/tests/tp/<this> */
    char self[400];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(g_ckpt_tool, sizeof g_ckpt_tool, "%s/../../zinc-ckpt", dirname(self));
    if (access(g_ckpt_tool, X_OK) != 0) {
        fprintf(stderr, "%s: not found (build the tools first)\n", g_ckpt_tool);
        return 1;
    }
    /* one folder for the job (rank 0 makes it), holding the shard and the checkpoints */
    memset(g_dir, 0, sizeof g_dir);
    if (g_rank == 0) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/zinc-test-tpm-%d-XXXXXX", tmp && *tmp ? tmp : "/tmp",
                 (int)getpid());
        if (!mkdtemp(g_dir)) g_dir[0] = 0;
    }
    if (zinc_comm_broadcast(g_world, g_dir, sizeof g_dir, ZINC_DTYPE_U8, 0, NULL) != ZINC_OK ||
        !g_dir[0])
        return 1;
    snprintf(g_shard, sizeof g_shard, "%s/toks.bin", g_dir);
    int ok = 1;
    if (g_rank == 0) {
        uint16_t toks[8192];
        for (int i = 0; i < 8192; i++) toks[i] = (uint16_t)((i * 7 + (i / 5) * 3 + i / 97) % 512);
        ok = zinc_data_write_shard(g_shard, toks, 8192) == ZINC_OK;
    }
    if (zinc_comm_agree(g_world, ok ? ZINC_OK : ZINC_ERR_IO) != ZINC_OK) return 1;
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("GPT-2 under tensor parallelism", NULL, NULL);
    CU_add_test(s, "model state per rank at TP 4 = 1/4 (GPT-2 124M)", test_state_quarter);
    CU_add_test(s, "activations per rank = formula, SP's factor", test_activations);
    CU_add_test(s, "engine allocation at TP = world, SP = estimate", test_allocation);
    CU_add_test(s, "TP-split checkpoint exports as TP 1's; init_from into TP", test_export_and_init_from);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    unsigned n_fail = CU_get_number_of_failures();
    CU_cleanup_registry();
    zinc_comm_barrier(g_world);
    if (g_rank == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) n_fail++;
    }
    zinc_comm_destroy(g_self);
    zinc_comm_destroy(g_world);
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
