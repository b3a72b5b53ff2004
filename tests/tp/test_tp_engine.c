/* test_tp_engine.c - the engine under tensor parallelism with a small model
 * written here against the layer API and tensor_parallel/: an embedding
 * (replicated), an MLP block with a column-parallel c_fc (its bias split)
 * and a row-parallel c_proj (its bias replicated), and a replicated tied
 * head with the loss. Under 1, 2 and 4 ranks (tests/tp/mpi_ranks) the whole
 * world is one TP group (DP 1) and each rank also runs the same model on a
 * TP-1 engine of its own: the losses and grad norms of 6 training steps
 * (AdamW, clipping) agree within 1e-5, at ZeRO stages 0 and 1, fp32; a
 * checkpoint saved under TP resumes on the TP-1 engine and continues as the
 * uninterrupted TP-1 run; a model that does not split is refused at TP > 1.
 * Collective. */
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
#include "zinc/engine.h"
#include "zinc/tp.h"

static zinc_comm *g_world, *g_self;
static int g_rank, g_size;
static char g_dir[256], g_shard[300], g_shared[256];

enum { C = 16, H = 64, V = 256, T = 8 };

/* ---- the model ---- */

static zinc_status emb_declare(zinc_layer *l)
{
    if (zinc_layer_param_add(l, "wte", 2, (const int64_t[]){V, C}, -1, ZINC_INIT_NORMAL, 0.5f) != 0 ||
        zinc_layer_param_add(l, "wpe", 2, (const int64_t[]){T, C}, -1, ZINC_INIT_NORMAL, 0.1f) != 1)
        return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, C);
    return ZINC_OK;
}
static zinc_status emb_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    c->ops->embedding_forward(y, x, NULL, zinc_layer_param(l, 0), zinc_layer_param(l, 1), c->B, c->T, C, 0, V);
    return ZINC_OK;
}
static zinc_status emb_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    (void)dx;
    c->ops->embedding_backward(zinc_layer_grad(l, 0), zinc_layer_grad(l, 1), dy, x, NULL, c->B, c->T, C, 0, V);
    return ZINC_OK;
}
static const zinc_layer_ops emb_ops = {.type = "t.emb", .declare = emb_declare,
                                       .forward = emb_forward, .backward = emb_backward};

/* y = x + row(gelu(col(x))); saves pre (N, H/TP) and h (N, H/TP) */
static int hl(const zinc_ctx *c) { return H / c->tp->size; }
static zinc_status mlp_declare(zinc_layer *l)
{
    if (zinc_layer_param_add(l, "fc.w", 2, (const int64_t[]){C, H}, 1, ZINC_INIT_NORMAL, 0.3f) != 0 ||
        zinc_layer_param_add(l, "fc.b", 1, (const int64_t[]){H}, 0, ZINC_INIT_NORMAL, 0.1f) != 1 ||
        zinc_layer_param_add(l, "proj.w", 2, (const int64_t[]){H, C}, 0, ZINC_INIT_NORMAL, 0.2f) != 2 ||
        zinc_layer_param_add(l, "proj.b", 1, (const int64_t[]){C}, -1, ZINC_INIT_NORMAL, 0.1f) != 3)
        return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, C);
    return ZINC_OK;
}
static size_t mlp_act_bytes(const zinc_layer *l, int B, int Tn, zinc_dtype act)
{
    (void)l;
    return 2 * (size_t)B * Tn * H * zinc_dtype_size(act); /* at TP 1: the most */
}
static size_t mlp_scratch_bytes(const zinc_layer *l, int B, int Tn, zinc_dtype act)
{
    (void)l;
    return 2 * (size_t)B * Tn * (H + C) * zinc_dtype_size(act);
}
static zinc_status mlp_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const int N = c->B * c->T, Hl = hl(c);
    const size_t as = zinc_dtype_size(c->ops->act);
    char *pre = zinc_layer_acts(l), *h = pre + (size_t)N * Hl * as;
    zinc_tp_column_forward(c->tp, pre, x, zinc_layer_param(l, 0), zinc_layer_param(l, 1), N, C, Hl);
    c->ops->gelu_forward(h, pre, (size_t)N * Hl);
    zinc_status st = zinc_tp_row_forward(c->tp, y, NULL, h, zinc_layer_param(l, 2), zinc_layer_param(l, 3),
                                         N, Hl, C);
    c->ops->residual_forward(y, y, x, (size_t)N * C);
    return st;
}
static zinc_status mlp_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    const int N = c->B * c->T, Hl = hl(c);
    const size_t as = zinc_dtype_size(c->ops->act);
    char *pre = zinc_layer_acts(l), *h = pre + (size_t)N * Hl * as;
    char *dh = c->scratch, *dpre = dh + (size_t)N * Hl * as, *dxm = dpre + (size_t)N * Hl * as;
    c->ops->zero(dh, (size_t)N * Hl * as);
    c->ops->zero(dpre, (size_t)N * Hl * as);
    zinc_tp_row_backward(c->tp, dh, zinc_layer_grad(l, 2), zinc_layer_grad(l, 3), dy, h,
                         zinc_layer_param(l, 2), N, Hl, C);
    c->ops->gelu_backward(dpre, pre, dh, (size_t)N * Hl);
    zinc_status st = zinc_tp_column_backward(c->tp, dxm, NULL, zinc_layer_grad(l, 0), zinc_layer_grad(l, 1),
                                             dpre, x, zinc_layer_param(l, 0), N, C, Hl);
    c->ops->add_into(dx, c->ops->act, dxm, c->ops->act, (size_t)N * C); /* the MLP branch */
    c->ops->add_into(dx, c->ops->act, dy, c->ops->act, (size_t)N * C);  /* the residual */
    return st;
}
static const zinc_layer_ops mlp_ops = {.type = "t.mlp", .declare = mlp_declare,
                                       .act_bytes = mlp_act_bytes, .scratch_bytes = mlp_scratch_bytes,
                                       .forward = mlp_forward, .backward = mlp_backward};

static zinc_status head_declare(zinc_layer *l)
{
    return zinc_layer_param_tie(l, "wte") == 0 ? ZINC_OK : ZINC_ERR_INVALID_ARG;
}
static size_t head_act_bytes(const zinc_layer *l, int B, int Tn, zinc_dtype act)
{
    (void)l;
    return (size_t)B * Tn * V * zinc_dtype_size(act) + (size_t)B * Tn * sizeof(float) + 64;
}
static zinc_status head_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    (void)y;
    const int N = c->B * c->T;
    char *logits = zinc_layer_acts(l);
    float *losses = (float *)(logits + ((size_t)N * V * zinc_dtype_size(c->ops->act) + 63) / 64 * 64);
    c->ops->linear_t_forward(logits, x, zinc_layer_param(l, 0), NULL, N, C, V);
    c->ops->softmax_xent(losses, logits, c->targets, c->dloss, N, V);
    c->loss_sum += c->ops->sum(losses, (size_t)N);
    return ZINC_OK;
}
static zinc_status head_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    (void)dy;
    const int N = c->B * c->T;
    c->ops->linear_t_backward(dx, zinc_layer_grad(l, 0), NULL, zinc_layer_acts(l), x, zinc_layer_param(l, 0),
                          N, C, V);
    return ZINC_OK;
}
static const zinc_layer_ops head_ops = {.type = "t.head", .declare = head_declare,
                                        .act_bytes = head_act_bytes, .forward = head_forward,
                                        .backward = head_backward};

static zinc_layer_def g_layers[3];
static zinc_model_def g_model = {.layers = g_layers, .n_layers = 3, .tp_ready = 1};

/* ---- runs ---- */

static int make_config(zinc_config *c, int tp, int stage, const char *save_dir)
{
    char j[1024];
    snprintf(j, sizeof j,
             "{\"train_micro_batch_size_per_gpu\": 3, \"gradient_accumulation_steps\": 2,"
             " \"gradient_clipping\": 0.5,"
             " \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01, \"weight_decay\": 0.1}},"
             " \"zero_optimization\": {\"stage\": %d},"
             " \"model\": {\"n_embd\": %d, \"n_head\": 4, \"vocab_size\": %d, \"block_size\": %d, \"seed\": 3},"
             " \"tensor_parallel\": {\"autotp_size\": %d},"
             " \"data\": {\"train\": [\"%s\"]}, \"train\": {\"save_dir\": \"%s\"}, \"device\": \"cpu\"}",
             stage, C, V, T, tp, g_shard, save_dir);
    zinc_status st = zinc_config_load_string(j, "tp-test", NULL, 0, c);
    if (st == ZINC_OK) st = zinc_config_resolve(c, tp);
    if (st != ZINC_OK) fprintf(stderr, "rank %d: config: %s\n", g_rank, zinc_last_error());
    return st == ZINC_OK;
}

/* Trains steps steps on world w at the given TP size; losses and norms out. */
static zinc_engine *engine_on(zinc_comm *w, zinc_config *c)
{
    zinc_engine *e = NULL;
    zinc_engine_opts o = {.config = c, .world = w, .model = &g_model};
    zinc_status st = zinc_engine_create(&o, &e);
    if (st != ZINC_OK) fprintf(stderr, "rank %d: engine: %s\n", g_rank, zinc_last_error());
    return e;
}

static void train(zinc_engine *e, const zinc_data *d, int steps, double *loss, double *norm)
{
    for (int s = 0; s < steps; s++) {
        zinc_step_stats st;
        CU_ASSERT_EQUAL_FATAL(zinc_engine_train_batch(e, d, &st), ZINC_OK);
        loss[s] = st.loss;
        norm[s] = st.grad_norm;
    }
}

static void check_close(const char *what, const double *a, const double *b, int n, double tol)
{
    double d = 0;
    for (int i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i]) / fmax(fabs(b[i]), 1e-12));
    if (!(d <= tol)) fprintf(stderr, "rank %d: %s: rel diff %.3g\n", g_rank, what, d);
    CU_ASSERT(d <= tol);
}

enum { STEPS = 6 };

static void test_tp_equals_tp1(void)
{
    zinc_data *d = NULL;
    const char *p[] = {g_shard};
    CU_ASSERT_FATAL(zinc_data_open(p, 1, T, V, 1, &d) == ZINC_OK);
    for (int stage = 0; stage <= 1; stage++) {
        zinc_config c1, ct;
        CU_ASSERT_FATAL(make_config(&c1, 1, stage, "") && make_config(&ct, g_size, stage, ""));
        zinc_engine *e1 = engine_on(g_self, &c1), *et = engine_on(g_world, &ct);
        CU_ASSERT_FATAL(e1 && et);
        double l1[STEPS], n1[STEPS], lt[STEPS], nt[STEPS];
        train(e1, d, STEPS, l1, n1);
        train(et, d, STEPS, lt, nt);
        check_close("loss", lt, l1, STEPS, 1e-5);
        check_close("grad norm", nt, n1, STEPS, 1e-5);
        CU_ASSERT(l1[STEPS - 1] < l1[0]); /* it learns */
        zinc_engine_destroy(e1);
        zinc_engine_destroy(et);
    }
    zinc_data_close(d);
}

/* Saved under TP, resumed on one rank without TP: the continuation equals
 * the uninterrupted TP-1 run. */
static void test_save_tp_resume_tp1(void)
{
    zinc_data *d = NULL;
    const char *p[] = {g_shard};
    CU_ASSERT_FATAL(zinc_data_open(p, 1, T, V, 1, &d) == ZINC_OK);
    zinc_aio *aio = NULL;
    zinc_aio_opts ao;
    zinc_aio_opts_default(&ao);
    CU_ASSERT_FATAL(zinc_aio_create(&ao, &aio) == ZINC_OK);
    char sd[400], mine[420];
    snprintf(sd, sizeof sd, "%s/ck", g_shared); /* one checkpoint folder for the TP group */
    zinc_config ct, c1;
    CU_ASSERT_FATAL(make_config(&ct, g_size, 1, sd) && make_config(&c1, 1, 0, ""));
    zinc_engine *et = engine_on(g_world, &ct);
    CU_ASSERT_FATAL(et != NULL);
    double lt[STEPS], nt[STEPS];
    train(et, d, 3, lt, nt);
    zinc_status sst = zinc_engine_save_checkpoint(et, aio, sd, "tp", 0);
    if (sst != ZINC_OK) fprintf(stderr, "rank %d: save: %s\n", g_rank, zinc_last_error());
    CU_ASSERT_EQUAL_FATAL(sst, ZINC_OK);
    zinc_engine_destroy(et);
    /* the uninterrupted TP-1 run, and the TP-1 run resumed from the TP checkpoint */
    zinc_engine *ref = engine_on(g_self, &c1), *res = engine_on(g_self, &c1);
    CU_ASSERT_FATAL(ref && res);
    double lr[STEPS], nr[STEPS], lc[STEPS], nc[STEPS];
    train(ref, d, STEPS, lr, nr);
    snprintf(mine, sizeof mine, "%s", sd);
    zinc_status lst = zinc_engine_load_checkpoint(res, aio, mine, "tp");
    if (lst != ZINC_OK) fprintf(stderr, "rank %d: load: %s\n", g_rank, zinc_last_error());
    CU_ASSERT_EQUAL_FATAL(lst, ZINC_OK);
    CU_ASSERT_EQUAL(zinc_engine_step(res), 3);
    train(res, d, STEPS - 3, lc, nc);
    check_close("resumed loss", lc, lr + 3, STEPS - 3, 1e-5);
    check_close("resumed grad norm", nc, nr + 3, STEPS - 3, 1e-5);
    zinc_engine_destroy(ref);
    zinc_engine_destroy(res);
    zinc_aio_destroy(aio);
    zinc_data_close(d);
}

static void test_refused(void)
{
    if (g_size < 2) return;
    zinc_config c;
    CU_ASSERT_FATAL(make_config(&c, g_size, 0, ""));
    zinc_model_def plain = g_model;
    plain.tp_ready = 0;
    zinc_engine *e = (zinc_engine *)1;
    zinc_engine_opts o = {.config = &c, .world = g_world, .model = &plain};
    CU_ASSERT_EQUAL(zinc_engine_create(&o, &e), ZINC_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(e);
    CU_ASSERT(strstr(zinc_last_error(), "do not split over TP ranks") != NULL);
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
    zinc_comm_set_timeout(g_world, 60);
    if (zinc_comm_split(g_world, g_rank, 0, "self", &g_self) != ZINC_OK) return 1;
    g_layers[0] = (zinc_layer_def){.ops = &emb_ops, .name = ""};
    g_layers[1] = (zinc_layer_def){.ops = &mlp_ops, .name = "mlp"};
    g_layers[2] = (zinc_layer_def){.ops = &head_ops, .name = ""};
    /* a folder per rank (each saves and loads its own checkpoint) */
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/zinc-test-tp-%d-%d-XXXXXX", tmp && *tmp ? tmp : "/tmp",
             (int)getpid(), g_rank);
    if (!mkdtemp(g_dir)) return 1;
    /* rank 0's folder also holds the TP group's checkpoint */
    memset(g_shared, 0, sizeof g_shared);
    if (g_rank == 0) snprintf(g_shared, sizeof g_shared, "%s", g_dir);
    if (zinc_comm_broadcast(g_world, g_shared, sizeof g_shared, ZINC_DTYPE_U8, 0, NULL) != ZINC_OK)
        return 1;
    uint16_t toks[4096];
    for (int i = 0; i < 4096; i++) toks[i] = (uint16_t)((i * 7 + (i / 5) * 3) % V);
    snprintf(g_shard, sizeof g_shard, "%s/toks.bin", g_dir);
    if (zinc_data_write_shard(g_shard, toks, 4096) != ZINC_OK) return 1;
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("tensor parallel engine", NULL, NULL);
    CU_add_test(s, "TP = TP 1 (stages 0, 1)", test_tp_equals_tp1);
    CU_add_test(s, "save at TP, resume at TP 1", test_save_tp_resume_tp1);
    CU_add_test(s, "a model that does not split is refused", test_refused);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    unsigned n_fail = CU_get_number_of_failures();
    CU_cleanup_registry();
    zinc_comm_barrier(g_world); /* the others have read rank 0's checkpoint */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) n_fail++;
    zinc_comm_destroy(g_self);
    zinc_comm_destroy(g_world);
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
