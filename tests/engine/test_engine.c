/* test_engine - the engine and the GPT-2 model wired together: the gradient
 * of the whole model (tied embedding/head, residuals, attention) against
 * central finite differences of the loss; the lr schedulers against
 * DeepSpeed's formulas; deterministic, layout-independent initialization. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/comm.h"
#include "zinc/config.h"
#include "zinc/device.h"
#include "zinc/engine.h"
#include "zinc/gpt2.h"

static zinc_comm *g_world;

static const char *TINY =
    "{\"train_micro_batch_size_per_gpu\": 2,"
    " \"model\": {\"type\": \"gpt2\", \"n_layer\": 2, \"n_embd\": 16, \"n_head\": 2,"
    "             \"vocab_size\": 256, \"block_size\": 8, \"seed\": 7},"
    " \"data\": {\"train\": [\"unused.bin\"]}, \"device\": \"cpu\"}";

typedef struct fixture {
    zinc_config cfg;
    zinc_gpt2 *gpt;
    zinc_engine *eng;
} fixture;

static int fixture_make(fixture *f, const char *json)
{
    if (zinc_config_load_string(json, "tiny", NULL, 0, &f->cfg) != ZINC_OK ||
        zinc_config_resolve(&f->cfg, 1) != ZINC_OK) {
        fprintf(stderr, "config: %s\n", zinc_last_error());
        return 0;
    }
    if (zinc_gpt2_create(&f->cfg, &f->gpt) != ZINC_OK) return 0;
    zinc_engine_opts o = {.config = &f->cfg, .world = g_world, .model = zinc_gpt2_model(f->gpt)};
    if (zinc_engine_create(&o, &f->eng) != ZINC_OK) {
        fprintf(stderr, "engine: %s\n", zinc_last_error());
        return 0;
    }
    return 1;
}

static void fixture_free(fixture *f)
{
    zinc_engine_destroy(f->eng);
    zinc_gpt2_destroy(f->gpt);
}

static void batch(int32_t *tok, int32_t *tgt, int n)
{
    for (int i = 0; i < n; i++) {
        tok[i] = (int32_t)((i * 37 + 11) % 256);
        tgt[i] = (int32_t)((i * 91 + 5) % 256);
    }
}

static void test_model_gradient(void)
{
    fixture f;
    CU_ASSERT_FATAL(fixture_make(&f, TINY));
    int32_t tok[16], tgt[16];
    batch(tok, tgt, 16);
    double loss;
    CU_ASSERT_FATAL(zinc_engine_loss_and_grad(f.eng, tok, tgt, &loss) == ZINC_OK);
    CU_ASSERT(fabs(loss - log(256.0)) < 0.5); /* near-uniform predictions at init */

    static const char *names[] = {
        "wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias", "h.1.attn.c_proj.weight", "h.1.attn.c_proj.bias", "h.1.ln_2.weight",
        "h.1.mlp.c_fc.weight", "h.1.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.1.mlp.c_proj.bias",
        "ln_f.weight", "ln_f.bias",
    };
    int checked = 0;
    for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
        int64_t n = 0;
        float *p = zinc_engine_param_by_name(f.eng, names[t], &n);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        float *g = zinc_engine_grad_by_name(f.eng, names[t], NULL);
        float *gcopy = malloc((size_t)n * sizeof(float));
        memcpy(gcopy, g, (size_t)n * sizeof(float));
        /* check the 3 entries with the largest gradient magnitude */
        for (int k = 0; k < 3; k++) {
            int64_t best = 0;
            for (int64_t i = 1; i < n; i++)
                if (fabsf(gcopy[i]) > fabsf(gcopy[best])) best = i;
            float analytic = gcopy[best];
            gcopy[best] = 0.0f;
            float orig = p[best], h = 1e-2f;
            double lp, lm;
            p[best] = orig + h;
            zinc_engine_loss_and_grad(f.eng, tok, tgt, &lp);
            p[best] = orig - h;
            zinc_engine_loss_and_grad(f.eng, tok, tgt, &lm);
            p[best] = orig;
            double fd = (lp - lm) / (2.0 * h);
            if (fabs(fd - analytic) > 0.05 * fabs(analytic) + 2e-4) {
                fprintf(stderr, "%s[%lld]: analytic %g finite-diff %g\n", names[t], (long long)best,
                        analytic, fd);
                CU_FAIL("gradient mismatch");
            }
            checked++;
        }
        free(gcopy);
    }
    CU_ASSERT(checked == 45);
    fixture_free(&f);
}

static void test_init_deterministic(void)
{
    fixture a, b;
    CU_ASSERT_FATAL(fixture_make(&a, TINY));
    CU_ASSERT_FATAL(fixture_make(&b, TINY));
    int64_t n;
    float *pa = zinc_engine_param_by_name(a.eng, "h.1.attn.c_attn.weight", &n);
    float *pb = zinc_engine_param_by_name(b.eng, "h.1.attn.c_attn.weight", NULL);
    CU_ASSERT(memcmp(pa, pb, (size_t)n * sizeof(float)) == 0);
    double sq = 0;
    for (int64_t i = 0; i < n; i++) sq += (double)pa[i] * pa[i];
    CU_ASSERT(fabs(sqrt(sq / n) - 0.02) < 0.004); /* N(0, 0.02) */
    float *ln = zinc_engine_param_by_name(a.eng, "ln_f.weight", &n);
    CU_ASSERT(ln[0] == 1.0f && ln[n - 1] == 1.0f);
    CU_ASSERT(zinc_engine_n_params(a.eng) == 256 * 16 + 8 * 16 + 2 * (12 * 16 * 16 + 13 * 16) + 32);
    fixture_free(&a);
    fixture_free(&b);
}

static void test_schedulers(void)
{
    zinc_config c;
    zinc_config_defaults(&c);
    c.optimizer.lr = 1e-3;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 5), 1e-3, 1e-15); /* no scheduler: constant */

    c.scheduler.type = ZINC_SCHED_WARMUP_LR;
    c.scheduler.warmup_min_lr = 0.0;
    c.scheduler.warmup_max_lr = 1e-3;
    c.scheduler.warmup_num_steps = 100;
    c.scheduler.warmup_type = ZINC_WARMUP_LOG;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 0), 0.0, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 9), 1e-3 * log(10.0) / log(100.0), 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 100), 1e-3, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 5000), 1e-3, 1e-15);
    c.scheduler.warmup_type = ZINC_WARMUP_LINEAR;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 25), 0.25e-3, 1e-15);

    c.scheduler.type = ZINC_SCHED_WARMUP_DECAY_LR;
    c.scheduler.total_num_steps = 300;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 100), 1e-3, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 200), 0.5e-3, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 300), 0.0, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 400), 0.0, 1e-15);

    c.scheduler.type = ZINC_SCHED_WARMUP_COSINE_LR;
    c.scheduler.warmup_min_ratio = 0.1;
    c.scheduler.cos_min_ratio = 0.01;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 0), 1e-4, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 50), 1e-3 * (0.1 + 0.9 * 0.5), 1e-15);
    /* DeepSpeed: real step = step - warmup + 1 over total - warmup */
    double mid = (1.0 + cos(M_PI * 100.0 / 200.0)) / 2.0;
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 199), 1e-3 * (0.01 + 0.99 * mid), 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(zinc_sched_lr(&c, 299), 1e-3 * 0.01, 1e-15);
}

/* The memory estimate matches what the engine allocates on its device:
 * model state + one micro-batch's activations, within the few small
 * buffers the estimate leaves out (token ids, allocator rounding). */
static void test_memory_estimate(void)
{
    static const char *CFG =
        "{\"train_micro_batch_size_per_gpu\": 4, \"bf16\": {\"enabled\": true},"
        " \"zero_optimization\": {\"stage\": 1},"
        " \"model\": {\"type\": \"gpt2\", \"n_layer\": 3, \"n_embd\": 64, \"n_head\": 4,"
        "             \"vocab_size\": 512, \"block_size\": 32, \"seed\": 7},"
        " \"data\": {\"train\": [\"unused.bin\"]}, \"device\": \"cpu\"}";
    const zinc_device *dev = zinc_device_cpu();
    uint64_t before = 0, after = 0;
    dev->mem(&before, NULL, NULL);
    fixture f;
    CU_ASSERT_FATAL(fixture_make(&f, CFG));
    dev->mem(&after, NULL, NULL);
    zinc_mem_stats m;
    CU_ASSERT_FATAL(zinc_engine_estimate_memory(&f.cfg, zinc_gpt2_model(f.gpt), 1, 1, &m) ==
                    ZINC_OK);
    double got = (double)(after - before), want = (double)(m.total + m.activations);
    CU_ASSERT(m.activations > 0);
    CU_ASSERT(got >= want);
    CU_ASSERT(got <= want * 1.02 + 65536.0);
    if (!(got >= want && got <= want * 1.02 + 65536.0))
        fprintf(stderr, "memory: allocated %.0f bytes, estimated %.0f\n", got, want);
    fixture_free(&f);
}

/* The cpu device reuses freed large blocks: a block handed back by alloc
 * (zeroing) after a free is all zeros again whatever the last user wrote,
 * alloc_raw may return it as is, and live bytes count only blocks in use. */
static void test_cpu_block_cache(void)
{
    const zinc_device *d = zinc_device_cpu();
    const size_t n = (size_t)3 << 20;
    uint64_t live0 = 0, live1 = 0;
    d->mem(&live0, NULL, NULL);
    unsigned char *a = d->alloc_raw(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    memset(a, 0xAB, n);
    d->free(a);
    d->mem(&live1, NULL, NULL);
    CU_ASSERT_EQUAL(live1, live0);
    unsigned char *b = d->alloc(n - 4096); /* within the reuse range of a */
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    size_t nonzero = 0;
    for (size_t i = 0; i < n - 4096; i++) nonzero += b[i] != 0;
    CU_ASSERT_EQUAL(nonzero, 0);
#if !defined(__SANITIZE_ADDRESS__)
    CU_ASSERT_PTR_EQUAL(b, a); /* the cached block came back */
#endif
    CU_ASSERT_EQUAL((uintptr_t)b % 4096, 0);
    d->free(b);
}

static void test_offload_unsupported(void)
{
    zinc_config c;
    zinc_gpt2 *g = NULL;
    zinc_engine *e = NULL;
    CU_ASSERT_FATAL(zinc_config_load_string(TINY, "tiny", NULL, 0, &c) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_config_resolve(&c, 1) == ZINC_OK);
    c.zero.stage = 2;
    c.zero.offload_optimizer.device = ZINC_OFFLOAD_NVME;
    snprintf(c.zero.offload_optimizer.nvme_path, sizeof c.zero.offload_optimizer.nvme_path,
             "/nonexistent/zinc-swap");
    CU_ASSERT_FATAL(zinc_gpt2_create(&c, &g) == ZINC_OK);
    zinc_engine_opts o = {.config = &c, .world = g_world, .model = zinc_gpt2_model(g)};
    CU_ASSERT(zinc_engine_create(&o, &e) == ZINC_ERR_IO);
    CU_ASSERT(e == NULL);
    CU_ASSERT(strstr(zinc_last_error(), "offload_optimizer.nvme_path: /nonexistent/zinc-swap") != NULL);
    zinc_gpt2_destroy(g);
}

/* LoRA: with B set away from zero, the adapters' gradients (A and B of c_attn, both c_projs
 * and c_fc in both blocks) against central finite differences of the loss; the base
 * weights are frozen and have no gradient. */
static void test_lora_gradient(void)
{
    static const char *J =
        "{\"train_micro_batch_size_per_gpu\": 2,"
        " \"model\": {\"type\": \"gpt2\", \"n_layer\": 2, \"n_embd\": 16, \"n_head\": 2,"
        "             \"vocab_size\": 256, \"block_size\": 8, \"seed\": 7,"
        "             \"lora\": {\"r\": 3, \"alpha\": 6, \"target_modules\": [\"c_attn\", \"c_proj\", \"c_fc\"]}},"
        " \"data\": {\"train\": [\"unused.bin\"]}, \"device\": \"cpu\"}";
    fixture f;
    CU_ASSERT_FATAL(fixture_make(&f, J));
    static const char *mods[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    char name[128];
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < 4; m++) { /* B = 0 at init: give it values, so dA is not zero */
            snprintf(name, sizeof name, "h.%d.%s.lora_B.weight", l, mods[m]);
            int64_t n = 0;
            float *b = zinc_engine_param_by_name(f.eng, name, &n);
            CU_ASSERT_PTR_NOT_NULL_FATAL(b);
            for (int64_t i = 0; i < n; i++) b[i] = 0.3f * (float)sin(0.7 * (double)i + l + 3 * m);
        }
    int32_t tok[16], tgt[16];
    batch(tok, tgt, 16);
    double loss;
    CU_ASSERT_FATAL(zinc_engine_loss_and_grad(f.eng, tok, tgt, &loss) == ZINC_OK);
    CU_ASSERT(zinc_engine_grad_by_name(f.eng, "h.0.attn.c_attn.weight", NULL) == NULL); /* frozen */
    CU_ASSERT(zinc_engine_grad_by_name(f.eng, "wte.weight", NULL) == NULL);
    int checked = 0;
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < 4; m++)
            for (int ab = 0; ab < 2; ab++) {
                snprintf(name, sizeof name, "h.%d.%s.lora_%c.weight", l, mods[m], ab ? 'B' : 'A');
                int64_t n = 0;
                float *p = zinc_engine_param_by_name(f.eng, name, &n);
                float *g = zinc_engine_grad_by_name(f.eng, name, NULL);
                CU_ASSERT_PTR_NOT_NULL_FATAL(p);
                CU_ASSERT_PTR_NOT_NULL_FATAL(g);
                float *gc = malloc((size_t)n * sizeof(float));
                memcpy(gc, g, (size_t)n * sizeof(float));
                for (int k = 0; k < 2; k++) {
                    int64_t best = 0;
                    for (int64_t i = 1; i < n; i++)
                        if (fabsf(gc[i]) > fabsf(gc[best])) best = i;
                    const float analytic = gc[best], orig = p[best], h = 1e-3f;
                    gc[best] = 0.0f;
                    double lp, lm;
                    p[best] = orig + h;
                    zinc_engine_loss_and_grad(f.eng, tok, tgt, &lp);
                    p[best] = orig - h;
                    zinc_engine_loss_and_grad(f.eng, tok, tgt, &lm);
                    p[best] = orig;
                    const double fd = (lp - lm) / (2.0 * h);
                    if (!(fabs(fd - analytic) <= 0.05 * fabs(analytic) + 2e-4) || analytic == 0.0f) {
                        fprintf(stderr, "%s[%lld]: analytic %g finite-diff %g\n", name, (long long)best, analytic, fd);
                        CU_FAIL("LoRA gradient mismatch");
                    }
                    checked++;
                }
                free(gc);
            }
    CU_ASSERT(checked == 32);
    fixture_free(&f);
}

/* A model whose layers declare no adapters refuses model.lora in one line. */
static zinc_status plain_declare(zinc_layer *l)
{
    const int64_t shape[2] = {4, 4};
    if (zinc_layer_param_add(l, "weight", 2, shape, -1, ZINC_INIT_NORMAL, 0.1f) < 0) return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, 4);
    return ZINC_OK;
}

static void test_lora_no_layers(void)
{
    static const zinc_layer_ops ops = {.type = "plain.linear", .declare = plain_declare};
    zinc_layer_def defs[2] = {{.ops = &ops, .name = "a"}, {.ops = &ops, .name = "b"}};
    const zinc_model_def md = {.layers = defs, .n_layers = 2};
    zinc_config c;
    CU_ASSERT_FATAL(zinc_config_load_string("{\"train_micro_batch_size_per_gpu\": 1, \"model\": {\"lora\": {}},"
                                            " \"data\": {\"train\": [\"x.bin\"]}, \"device\": \"cpu\"}",
                                            "t", NULL, 0, &c) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_config_resolve(&c, 1) == ZINC_OK);
    zinc_engine *e = NULL;
    zinc_engine_opts o = {.config = &c, .world = g_world, .model = &md};
    CU_ASSERT(zinc_engine_create(&o, &e) == ZINC_ERR_CONFIG);
    CU_ASSERT(e == NULL);
    CU_ASSERT(strstr(zinc_last_error(), "model.lora") && strstr(zinc_last_error(), "plain.linear"));
}

int main(int argc, char **argv)
{
    if (zinc_comm_init_world("mpi", &argc, &argv, &g_world) != ZINC_OK) {
        fprintf(stderr, "comm: %s\n", zinc_last_error());
        return 1;
    }
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("engine", NULL, NULL);
    /* first: no other test's freed blocks in the cache yet */
    CU_add_test(s, "cpu device reuses freed large blocks, zeroed on alloc", test_cpu_block_cache);
    CU_add_test(s, "whole-model gradient vs finite differences", test_model_gradient);
    CU_add_test(s, "deterministic init", test_init_deterministic);
    CU_add_test(s, "lr schedulers (DeepSpeed formulas)", test_schedulers);
    CU_add_test(s, "missing nvme_path is a clear error", test_offload_unsupported);
    CU_add_test(s, "LoRA adapters' gradients vs finite differences", test_lora_gradient);
    CU_add_test(s, "model.lora on a model without adapters is refused", test_lora_no_layers);
    CU_add_test(s, "memory estimate = what the engine allocates", test_memory_estimate);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    zinc_comm_destroy(g_world);
    return fails ? 1 : 0;
}
