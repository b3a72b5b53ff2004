/* test_config.c - the config module: data-driven valid/invalid cases under
 * tests/config/cases (run from the repository root), then unit tests of
 * defaults, overrides, integral reals, "auto", the batch rule for DP 1..4,
 * the dump round trip and the key reference (zinc_config_list_keys).
 *
 * cases/invalid/NAME.json must fail (load, then resolve for DP 1) with
 * ZINC_ERR_CONFIG or ZINC_ERR_IO and a one-line detail containing the first
 * line of NAME.expect; NAME.set, when present, holds overrides one per line.
 * cases/valid/NAME.json must load, resolve for DP 1 (and 2 where the batch
 * divides), and survive dump -> load -> resolve unchanged. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "zinc/config.h"
#include "zinc/pipeline.h"
#include "zinc/log.h"

#define CASES "tests/config/cases"
#define MAX_CASES 256

/* ---------------------------------------------------------------- helpers */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

static int cmp_names(const void *a, const void *b) { return strcmp(a, b); }

/* Sorted base names (without .json) of dir's *.json files. */
static int list_cases(const char *dir, char (*names)[128], int max)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len > 5 && len < 120 && !strcmp(e->d_name + len - 5, ".json")) {
            memcpy(names[n], e->d_name, len - 5);
            names[n][len - 5] = '\0';
            n++;
        }
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_names);
    return n;
}

/* stderr capture, to check warnings */
static int g_saved_fd = -1;
static FILE *g_capture;

static void capture_begin(void)
{
    fflush(stderr);
    g_capture = tmpfile();
    g_saved_fd = dup(2);
    dup2(fileno(g_capture), 2);
}

/* Returns what was written to stderr since capture_begin (caller frees). */
static char *capture_end(void)
{
    fflush(stderr);
    dup2(g_saved_fd, 2);
    close(g_saved_fd);
    long n = ftell(g_capture);
    char *s = calloc(1, (size_t)n + 1);
    rewind(g_capture);
    if (s && n > 0 && fread(s, 1, (size_t)n, g_capture) != (size_t)n) s[0] = '\0';
    fclose(g_capture);
    return s;
}

/* Two configs equal in every field except the private "given" record. */
static int same_config(const zinc_config *a, const zinc_config *b)
{
    zinc_config x = *a, y = *b;
    memset(&x.given, 0, sizeof x.given);
    memset(&y.given, 0, sizeof y.given);
    return !memcmp(&x, &y, sizeof x);
}

static zinc_status load_str(const char *json, zinc_config *c)
{
    return zinc_config_load_string(json, "t.json", NULL, 0, c);
}

/* Loads and resolves for dp; prints the detail on failure. */
static int load_ok(const char *json, const char *const *ovr, int n, int dp, zinc_config *c)
{
    zinc_status st = zinc_config_load_string(json, "t.json", ovr, n, c);
    if (st == ZINC_OK) st = zinc_config_resolve(c, dp);
    if (st != ZINC_OK) printf("\n  unexpected failure: %s\n", zinc_last_error());
    return st == ZINC_OK;
}

/* Loads (and resolves for DP 1); true when it fails with a detail containing frag. */
static int fails_with(const char *json, const char *const *ovr, int n, const char *frag)
{
    zinc_config c;
    zinc_status st = zinc_config_load_string(json, "t.json", ovr, n, &c);
    if (st == ZINC_OK) st = zinc_config_resolve(&c, 1);
    int ok = st == ZINC_ERR_CONFIG && strstr(zinc_last_error(), frag) != NULL;
    if (!ok) printf("\n  want error containing '%s', got %d '%s'\n", frag, (int)st, zinc_last_error());
    return ok;
}

/* ---------------------------------------------------------------- data-driven */

static void test_invalid_cases(void)
{
    static char names[MAX_CASES][128];
    int n = list_cases(CASES "/invalid", names, MAX_CASES);
    CU_ASSERT_FATAL(n >= 30);
    zinc_log_level lvl = zinc_log_get_level();
    zinc_log_set_level(ZINC_LOG_ERROR);
    for (int i = 0; i < n; i++) {
        char path[512], exp_path[512], set_path[512];
        snprintf(path, sizeof path, CASES "/invalid/%.127s.json", names[i]);
        snprintf(exp_path, sizeof exp_path, CASES "/invalid/%.127s.expect", names[i]);
        snprintf(set_path, sizeof set_path, CASES "/invalid/%.127s.set", names[i]);
        char *expect = read_text(exp_path);
        CU_ASSERT_PTR_NOT_NULL(expect);
        if (!expect) {
            printf("\n  %s: missing .expect\n", names[i]);
            continue;
        }
        expect[strcspn(expect, "\n")] = '\0';
        CU_ASSERT(expect[0] != '\0');

        const char *ovr[16];
        int n_ovr = 0;
        char *sets = read_text(set_path);
        for (char *line = sets ? strtok(sets, "\n") : NULL; line && n_ovr < 16; line = strtok(NULL, "\n"))
            ovr[n_ovr++] = line;

        zinc_config c;
        zinc_status st = zinc_config_load(path, ovr, n_ovr, &c);
        if (st == ZINC_OK) st = zinc_config_resolve(&c, 1);
        const char *d = zinc_last_error();
        int ok = (st == ZINC_ERR_CONFIG || st == ZINC_ERR_IO) && strstr(d, expect) &&
                 !strchr(d, '\n') && (!strncmp(d, path, strlen(path)) || !strncmp(d, "--set ", 6));
        if (!ok) printf("\n  %s: status %d, detail '%s'\n  want '%s'\n", names[i], (int)st, d, expect);
        CU_ASSERT(ok);
        free(sets);
        free(expect);
    }
    zinc_log_set_level(lvl);
}

static void test_valid_cases(void)
{
    static char names[MAX_CASES][128];
    int n = list_cases(CASES "/valid", names, MAX_CASES);
    CU_ASSERT_FATAL(n >= 6);
    zinc_log_level lvl = zinc_log_get_level();
    zinc_log_set_level(ZINC_LOG_ERROR);
    for (int i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof path, CASES "/valid/%.127s.json", names[i]);
        zinc_config c;
        zinc_status st = zinc_config_load(path, NULL, 0, &c);
        if (st != ZINC_OK) printf("\n  %s: %s\n", names[i], zinc_last_error());
        CU_ASSERT_FATAL(st == ZINC_OK);
        for (int dp = 1; dp <= 2; dp++) {
            st = zinc_config_resolve(&c, dp);
            if (st != ZINC_OK) {
                /* DP 2 may legitimately not divide the batch the file fixes */
                int fine = dp == 2 && strstr(zinc_last_error(), "data-parallel size 2");
                if (!fine) printf("\n  %s dp %d: %s\n", names[i], dp, zinc_last_error());
                CU_ASSERT(fine);
                continue;
            }
            CU_ASSERT(c.train_batch_size ==
                      c.train_micro_batch_size_per_gpu * c.gradient_accumulation_steps * dp);
            CU_ASSERT(c.train_micro_batch_size_per_gpu >= 1 && c.gradient_accumulation_steps >= 1);

            /* dump -> load -> resolve gives the same config */
            char *s = zinc_config_dump(&c);
            CU_ASSERT_PTR_NOT_NULL_FATAL(s);
            zinc_config r;
            st = zinc_config_load_string(s, "dump", NULL, 0, &r);
            if (st == ZINC_OK) st = zinc_config_resolve(&r, dp);
            if (st != ZINC_OK) printf("\n  %s dump reload: %s\n%s\n", names[i], zinc_last_error(), s);
            CU_ASSERT(st == ZINC_OK);
            int same = st == ZINC_OK && same_config(&c, &r);
            if (!same) printf("\n  %s dp %d: dump round trip differs\n%s\n", names[i], dp, s);
            CU_ASSERT(same);
            free(s);
        }
    }
    zinc_log_set_level(lvl);
}

/* ---------------------------------------------------------------- unit tests */

static void test_defaults(void)
{
    zinc_config c;
    zinc_config_defaults(&c);
    CU_ASSERT_EQUAL(c.train_batch_size, 0);
    CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 0);
    CU_ASSERT_EQUAL(c.gradient_accumulation_steps, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.gradient_clipping, 1.0, 0);
    CU_ASSERT_EQUAL(c.steps_per_print, 10);
    CU_ASSERT_EQUAL(c.wall_clock_breakdown, 0);
    CU_ASSERT_EQUAL(c.optimizer.type, ZINC_OPT_ADAM);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.lr, 1e-3, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[0], 0.9, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[1], 0.999, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.eps, 1e-8, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.weight_decay, 0, 0);
    CU_ASSERT_EQUAL(c.optimizer.adam_w_mode, 1);
    CU_ASSERT_EQUAL(c.scheduler.type, ZINC_SCHED_NONE);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_min_lr, 0, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_max_lr, 1e-3, 0);
    CU_ASSERT_EQUAL(c.scheduler.warmup_num_steps, 1000);
    CU_ASSERT_EQUAL(c.scheduler.warmup_type, ZINC_WARMUP_LOG);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_min_ratio, 0, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.cos_min_ratio, 1e-4, 0);
    CU_ASSERT_EQUAL(c.fp16.enabled, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.fp16.loss_scale, 0, 0);
    CU_ASSERT_EQUAL(c.fp16.initial_scale_power, 16);
    CU_ASSERT_EQUAL(c.fp16.loss_scale_window, 1000);
    CU_ASSERT_EQUAL(c.fp16.hysteresis, 2);
    CU_ASSERT_DOUBLE_EQUAL(c.fp16.min_loss_scale, 1, 0);
    CU_ASSERT_EQUAL(c.bf16.enabled, 0);
    CU_ASSERT_EQUAL(c.zero.stage, 0);
    CU_ASSERT_EQUAL(c.zero.contiguous_gradients, 1);
    CU_ASSERT_EQUAL(c.zero.overlap_comm, 0);
    CU_ASSERT_EQUAL(c.zero.reduce_scatter, 1);
    CU_ASSERT_EQUAL(c.zero.reduce_bucket_size, 500000000);
    CU_ASSERT_EQUAL(c.zero.allgather_bucket_size, 500000000);
    CU_ASSERT_EQUAL(c.zero.stage3_prefetch_bucket_size, 50000000);
    CU_ASSERT_EQUAL(c.zero.stage3_param_persistence_threshold, 100000);
    CU_ASSERT_EQUAL(c.zero.stage3_max_live_parameters, 1000000000);
    CU_ASSERT_EQUAL(c.zero.stage3_max_reuse_distance, 1000000000);
    CU_ASSERT_EQUAL(c.zero.sub_group_size, 1000000000);
    CU_ASSERT_EQUAL(c.zero.stage3_gather_16bit_weights_on_model_save, 0);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.device, ZINC_OFFLOAD_NONE);
    CU_ASSERT_STRING_EQUAL(c.zero.offload_optimizer.nvme_path, "");
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.pin_memory, 1);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.buffer_count, 4);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.pipeline_read, 0);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.pipeline_write, 0);
    CU_ASSERT_EQUAL(c.zero.offload_param.device, ZINC_OFFLOAD_NONE);
    CU_ASSERT_EQUAL(c.zero.offload_param.pin_memory, 1);
    CU_ASSERT_EQUAL(c.zero.offload_param.buffer_count, 5);
    CU_ASSERT_EQUAL(c.zero.offload_param.buffer_size, 100000000);
    CU_ASSERT_EQUAL(c.zero.offload_param.max_in_cpu, 1000000000);
    CU_ASSERT_EQUAL(c.aio.block_size, 1048576);
    CU_ASSERT_EQUAL(c.aio.queue_depth, 8);
    CU_ASSERT_EQUAL(c.aio.intra_op_parallelism, 1);
    CU_ASSERT_EQUAL(c.aio.single_submit, 0);
    CU_ASSERT_EQUAL(c.aio.overlap_events, 1);
    CU_ASSERT_STRING_EQUAL(c.model.type, "gpt2");
    CU_ASSERT_EQUAL(c.model.n_layer, 4);
    CU_ASSERT_EQUAL(c.model.n_embd, 128);
    CU_ASSERT_EQUAL(c.model.n_head, 4);
    CU_ASSERT_EQUAL(c.model.vocab_size, 50304);
    CU_ASSERT_EQUAL(c.model.block_size, 64);
    CU_ASSERT_EQUAL(c.model.seed, 1337);
    CU_ASSERT_STRING_EQUAL(c.model.init_from, "");
    CU_ASSERT_EQUAL(c.data.n_train, 0);
    CU_ASSERT_EQUAL(c.data.n_text, 0);
    CU_ASSERT_STRING_EQUAL(c.data.tokenizer, "bytes");
    CU_ASSERT_STRING_EQUAL(c.data.text_exts, ".c,.h,.md,.sh,.json,.txt");
    CU_ASSERT_EQUAL(c.data.seq_len, 0);
    CU_ASSERT_EQUAL(c.data.seed, 1234);
    CU_ASSERT_EQUAL(c.train.max_steps, 100);
    CU_ASSERT_EQUAL(c.train.log_every, 0);
    CU_ASSERT_STRING_EQUAL(c.train.save_dir, "");
    CU_ASSERT_STRING_EQUAL(c.train.metrics_file, "");
    CU_ASSERT_EQUAL(c.train.save_every, 0);
    CU_ASSERT_EQUAL(c.train.keep_last, 0);
    CU_ASSERT_STRING_EQUAL(c.train.resume, "");
    CU_ASSERT_EQUAL(c.train.threads, 0);
    CU_ASSERT_EQUAL(c.device, ZINC_DEVICE_AUTO);
    CU_ASSERT_EQUAL(c.comm_backend, ZINC_COMM_AUTO);
    CU_ASSERT_DOUBLE_EQUAL(c.comm_timeout_s, 300, 0);

    /* a minimal file gives exactly the defaults plus its batch key */
    zinc_config l;
    CU_ASSERT_FATAL(load_str("{\"train_micro_batch_size_per_gpu\": 2}", &l) == ZINC_OK);
    CU_ASSERT_EQUAL(l.train_micro_batch_size_per_gpu, 2);
    CU_ASSERT_EQUAL(l.train_batch_size, 0); /* not given: filled by resolve */
    l.train_micro_batch_size_per_gpu = 0;
    CU_ASSERT(same_config(&l, &c));
}

static void test_zero_shorthand_and_overlap(void)
{
    zinc_config c;
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": true}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.zero.stage, 1);
    CU_ASSERT_EQUAL(c.zero.overlap_comm, 0);
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": false}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.zero.stage, 0);
    /* overlap_comm defaults to true at stage 3 only */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": {\"stage\": 3}}", NULL, 0,
                            1, &c));
    CU_ASSERT_EQUAL(c.zero.overlap_comm, 1);
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": {\"stage\": 3, "
                            "\"overlap_comm\": false}}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.zero.overlap_comm, 0);
    /* a --set can refine the shorthand */
    const char *ov[] = {"zero_optimization.stage=2"};
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": true}", ov, 1, 1, &c));
    CU_ASSERT_EQUAL(c.zero.stage, 2);
    /* pydantic field names are the same settings */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4, \"zero_optimization\": {\"stage\": 3, "
                            "\"prefetch_bucket_size\": 1234, \"max_live_parameters\": 5e6}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.zero.stage3_prefetch_bucket_size, 1234);
    CU_ASSERT_EQUAL(c.zero.stage3_max_live_parameters, 5000000);
    CU_ASSERT(fails_with("{\"train_batch_size\": 4, \"zero_optimization\": {\"stage\": 3, "
                         "\"prefetch_bucket_size\": 1, \"stage3_prefetch_bucket_size\": 2}}",
                         NULL, 0, "names the same setting"));
}

static void test_overrides(void)
{
    const char *base = "{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 1},"
                       " \"optimizer\": {\"type\": \"Adam\", \"params\": {\"lr\": 1e-3}}}";
    const char *ov[] = {
        "zero_optimization.stage=3",
        "optimizer.params.lr=3e-4",
        "optimizer.params.betas=[0.8, 0.9]",
        "model.type=gpt2",                    /* not JSON: taken as a string */
        "train.save_dir=/tmp/run one",        /* likewise, spaces kept */
        "data.train=[\"a.bin\", \"b_*.bin\"]",  /* created section, array value */
        "scheduler.type=WarmupLR",            /* nested objects created */
        "scheduler.params.warmup_num_steps=10",
        "zero_optimization.offload_optimizer.device=cpu",
        "fp16.enabled=true",
        "train.max_steps=1e3",
        "train.max_steps=50",                 /* the last one wins */
        "device=\"cpu\"",
        "model.init_from=",                   /* empty value: empty string */
    };
    zinc_config c;
    CU_ASSERT_FATAL(load_ok(base, ov, (int)(sizeof ov / sizeof ov[0]), 1, &c));
    CU_ASSERT_EQUAL(c.zero.stage, 3);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.lr, 3e-4, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[0], 0.8, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[1], 0.9, 0);
    CU_ASSERT_STRING_EQUAL(c.model.type, "gpt2");
    CU_ASSERT_STRING_EQUAL(c.train.save_dir, "/tmp/run one");
    CU_ASSERT_EQUAL(c.data.n_train, 2);
    CU_ASSERT_STRING_EQUAL(c.data.train[0], "a.bin");
    CU_ASSERT_STRING_EQUAL(c.data.train[1], "b_*.bin");
    CU_ASSERT_EQUAL(c.scheduler.type, ZINC_SCHED_WARMUP_LR);
    CU_ASSERT_EQUAL(c.scheduler.warmup_num_steps, 10);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.device, ZINC_OFFLOAD_CPU);
    CU_ASSERT_EQUAL(c.fp16.enabled, 1);
    CU_ASSERT_EQUAL(c.train.max_steps, 50);
    CU_ASSERT_EQUAL(c.device, ZINC_DEVICE_CPU);
    CU_ASSERT_STRING_EQUAL(c.model.init_from, "");

    /* a bad override names itself */
    const char *bad1[] = {"foo"};
    CU_ASSERT(fails_with(base, bad1, 1, "--set foo: expected key.path=value"));
    const char *bad2[] = {"=3"};
    CU_ASSERT(fails_with(base, bad2, 1, "--set =3: expected key.path=value"));
    const char *bad3[] = {"zero_optimization.=3"};
    CU_ASSERT(fails_with(base, bad3, 1, "expected key.path=value"));
    const char *bad4[] = {"zero_optimization.stage=\"two\""};
    CU_ASSERT(fails_with(base, bad4, 1,
                         "--set zero_optimization.stage: expected an integer in 0..3, found string \"two\""));
    const char *bad5[] = {"optimizer.params.lr.x=1"};
    CU_ASSERT(fails_with(base, bad5, 1, "--set optimizer.params.lr.x: optimizer.params.lr is not an object"));
    const char *bad6[] = {"zero_optimisation.stage=2"}; /* unknown top-level: a warning, then fine */
    zinc_log_level lvl = zinc_log_get_level();
    zinc_log_set_level(ZINC_LOG_ERROR);
    CU_ASSERT(load_ok(base, bad6, 1, 1, &c));
    zinc_log_set_level(lvl);
    /* an error in a key the file gave names the file, not --set */
    const char *unrelated[] = {"train.max_steps=5"};
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 9}}", unrelated, 1,
                         "t.json: zero_optimization.stage: expected an integer in 0..3, found 9"));
}

static void test_integral_reals(void)
{
    zinc_config c;
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 3.2e1, \"train_micro_batch_size_per_gpu\": 4.0,"
                            " \"zero_optimization\": {\"stage\": 3.0, \"reduce_bucket_size\": 5e8,"
                            " \"stage3_max_live_parameters\": 1e9, \"sub_group_size\": 1e12},"
                            " \"train\": {\"max_steps\": 1e4}}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.train_batch_size, 32);
    CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 4);
    CU_ASSERT_EQUAL(c.gradient_accumulation_steps, 8);
    CU_ASSERT_EQUAL(c.zero.stage, 3);
    CU_ASSERT_EQUAL(c.zero.reduce_bucket_size, 500000000);
    CU_ASSERT_EQUAL(c.zero.stage3_max_live_parameters, 1000000000);
    CU_ASSERT_EQUAL(c.zero.sub_group_size, 1000000000000LL);
    CU_ASSERT_EQUAL(c.train.max_steps, 10000);
    CU_ASSERT(fails_with("{\"train_batch_size\": 2.5}", NULL, 0,
                         "train_batch_size: expected an integer in 1..2147483647, found 2.5"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 1.5}}", NULL, 0,
                         "zero_optimization.stage: expected an integer in 0..3, found 1.5"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"zero_optimization\": {\"reduce_bucket_size\": 5e8.5}}",
                         NULL, 0, "malformed JSON"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 1e19}", NULL, 0, "found 1e+19"));
    /* numbers in number fields may be integers */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"gradient_clipping\": 2,"
                            " \"optimizer\": {\"type\": \"adamw\", \"params\": {\"lr\": 1}}}", NULL, 0, 1, &c));
    CU_ASSERT_DOUBLE_EQUAL(c.gradient_clipping, 2.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.lr, 1.0, 0);
    CU_ASSERT_EQUAL(c.optimizer.type, ZINC_OPT_ADAMW); /* case-insensitive type */
}

static void test_auto(void)
{
    zinc_config c;
    /* lr auto takes the scheduler's warmup_max_lr */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": \"auto\", \"optimizer\": {\"type\": \"AdamW\","
                            " \"params\": {\"lr\": \"auto\", \"betas\": \"auto\", \"eps\": \"auto\","
                            " \"weight_decay\": \"auto\"}}, \"scheduler\": {\"type\": \"WarmupLR\","
                            " \"params\": {\"warmup_max_lr\": 3e-4, \"warmup_num_steps\": \"auto\"}},"
                            " \"gradient_clipping\": \"auto\", \"fp16\": {\"enabled\": \"auto\"},"
                            " \"bf16\": {\"enabled\": \"auto\"}, \"train\": {\"max_steps\": 300}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.lr, 3e-4, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[0], 0.9, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.betas[1], 0.999, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.eps, 1e-8, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.weight_decay, 0, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.gradient_clipping, 1.0, 0);
    CU_ASSERT_EQUAL(c.fp16.enabled, 0);
    CU_ASSERT_EQUAL(c.bf16.enabled, 0);
    CU_ASSERT_EQUAL(c.scheduler.warmup_num_steps, 300); /* 1000 capped at max_steps (WarmupLR) */
    CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 1);
    CU_ASSERT_EQUAL(c.gradient_accumulation_steps, 1);
    CU_ASSERT_EQUAL(c.train_batch_size, 1);

    /* both auto: 1e-3; warmup_max_lr follows the optimizer */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\","
                            " \"params\": {\"lr\": \"auto\"}}, \"scheduler\": {\"type\": \"WarmupLR\","
                            " \"params\": {\"warmup_max_lr\": \"auto\", \"warmup_min_lr\": \"auto\"}}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_DOUBLE_EQUAL(c.optimizer.lr, 1e-3, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_max_lr, 1e-3, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_min_lr, 0, 0);
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\","
                            " \"params\": {\"lr\": 5e-4}}, \"scheduler\": {\"type\": \"WarmupDecayLR\","
                            " \"params\": {\"warmup_max_lr\": \"auto\", \"total_num_steps\": \"auto\","
                            " \"warmup_num_steps\": \"auto\"}}, \"train\": {\"max_steps\": 5000}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_DOUBLE_EQUAL(c.scheduler.warmup_max_lr, 5e-4, 0);
    CU_ASSERT_EQUAL(c.scheduler.total_num_steps, 5000);
    CU_ASSERT_EQUAL(c.scheduler.warmup_num_steps, 1000);
    /* warmup capped at total_num_steps */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"scheduler\": {\"type\": \"WarmupCosineLR\","
                            " \"params\": {\"total_num_steps\": 40, \"warmup_num_steps\": \"auto\"}}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.scheduler.warmup_num_steps, 40);
    /* ZeRO bucket sizes from the model width */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"model\": {\"n_embd\": 256, \"n_head\": 8},"
                            " \"zero_optimization\": {\"stage\": 3, \"reduce_bucket_size\": \"auto\","
                            " \"stage3_prefetch_bucket_size\": \"auto\","
                            " \"stage3_param_persistence_threshold\": \"auto\"}}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.zero.reduce_bucket_size, 256 * 256);
    CU_ASSERT_EQUAL(c.zero.stage3_prefetch_bucket_size, (int64_t)(0.9 * 256 * 256));
    CU_ASSERT_EQUAL(c.zero.stage3_param_persistence_threshold, 2560);
    /* "auto" where HF never puts it is an error */
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": \"auto\"}}", NULL, 0,
                         "zero_optimization.stage: expected an integer in 0..3, found string \"auto\""));
}

typedef struct batch_case {
    int64_t t, m, a; /* given: 0 absent, -1 "auto" */
    int dp;
    int64_t et, em, ea; /* expected; et 0: error */
    const char *err;
} batch_case;

static void test_batch_rule(void)
{
    static const batch_case cases[] = {
        {32, 4, 0, 1, 32, 4, 8, NULL},
        {32, 4, 0, 2, 32, 4, 4, NULL},
        {32, 4, 0, 3, 0, 0, 0, "train_batch_size 32 is not divisible by train_micro_batch_size_per_gpu 4 * data-parallel size 3"},
        {32, 4, 0, 4, 32, 4, 2, NULL},
        {32, 0, 2, 1, 32, 16, 2, NULL},
        {32, 0, 2, 2, 32, 8, 2, NULL},
        {32, 0, 2, 3, 0, 0, 0, "not divisible by gradient_accumulation_steps 2 * data-parallel size 3"},
        {32, 0, 2, 4, 32, 4, 2, NULL},
        {0, 4, 2, 1, 8, 4, 2, NULL},
        {0, 4, 2, 3, 24, 4, 2, NULL},
        {0, 4, 0, 4, 16, 4, 1, NULL},
        {12, 0, 0, 1, 12, 12, 1, NULL},
        {12, 0, 0, 2, 12, 6, 1, NULL},
        {12, 0, 0, 3, 12, 4, 1, NULL},
        {12, 0, 0, 4, 12, 3, 1, NULL},
        {24, 3, 2, 4, 24, 3, 2, NULL},
        {24, 3, 2, 2, 0, 0, 0, "train_batch_size 24 != train_micro_batch_size_per_gpu 3 * gradient_accumulation_steps 2 * data-parallel size 2"},
        {-1, -1, -1, 1, 1, 1, 1, NULL},
        {-1, -1, -1, 4, 4, 1, 1, NULL},
        {-1, 2, -1, 3, 6, 2, 1, NULL},
        {16, -1, -1, 2, 16, 8, 1, NULL},
        {0, -1, 4, 2, 8, 1, 4, NULL},
        {0, 0, 4, 1, 0, 0, 0, "neither train_batch_size nor train_micro_batch_size_per_gpu is set"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const batch_case *b = &cases[i];
        char json[256], part[96];
        size_t n = (size_t)snprintf(json, sizeof json, "{\"steps_per_print\": 1");
        const int64_t g[3] = {b->t, b->m, b->a};
        static const char *names[3] = {"train_batch_size", "train_micro_batch_size_per_gpu",
                                       "gradient_accumulation_steps"};
        for (int k = 0; k < 3; k++) {
            if (!g[k]) continue;
            if (g[k] < 0)
                snprintf(part, sizeof part, ", \"%s\": \"auto\"", names[k]);
            else
                snprintf(part, sizeof part, ", \"%s\": %lld", names[k], (long long)g[k]);
            n += (size_t)snprintf(json + n, sizeof json - n, "%s", part);
        }
        snprintf(json + n, sizeof json - n, "}");
        zinc_config c;
        zinc_status st = load_str(json, &c);
        if (st == ZINC_OK) st = zinc_config_resolve(&c, b->dp);
        if (b->et) {
            int ok = st == ZINC_OK && c.train_batch_size == b->et &&
                     c.train_micro_batch_size_per_gpu == b->em && c.gradient_accumulation_steps == b->ea;
            if (!ok)
                printf("\n  case %zu (%s, dp %d): st %d '%s' got %lld %lld %lld\n", i, json, b->dp, (int)st,
                       zinc_last_error(), (long long)c.train_batch_size,
                       (long long)c.train_micro_batch_size_per_gpu, (long long)c.gradient_accumulation_steps);
            CU_ASSERT(ok);
        } else {
            int ok = st == ZINC_ERR_CONFIG && strstr(zinc_last_error(), b->err);
            if (!ok) printf("\n  case %zu (%s, dp %d): st %d '%s'\n", i, json, b->dp, (int)st, zinc_last_error());
            CU_ASSERT(ok);
        }
    }
}

static void test_resolve_rerun(void)
{
    zinc_config c;
    CU_ASSERT_FATAL(load_str("{\"train_batch_size\": 32, \"train_micro_batch_size_per_gpu\": 4}", &c) ==
                    ZINC_OK);
    static const int64_t want_gas[] = {0, 8, 4, 0, 2};
    for (int dp = 1; dp <= 4; dp++) {
        zinc_config before = c;
        zinc_status st = zinc_config_resolve(&c, dp);
        if (dp == 3) {
            CU_ASSERT_EQUAL(st, ZINC_ERR_CONFIG);
            CU_ASSERT_NSTRING_EQUAL(zinc_last_error(), "t.json: ", 8);
            CU_ASSERT(!memcmp(&before, &c, sizeof c)); /* unchanged on failure */
            continue;
        }
        CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
        CU_ASSERT_EQUAL(c.train_batch_size, 32);
        CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 4);
        CU_ASSERT_EQUAL(c.gradient_accumulation_steps, want_gas[dp]);
    }
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 0), ZINC_ERR_INVALID_ARG);

    /* through the C API: fields set by hand are what is given */
    zinc_config d;
    zinc_config_defaults(&d);
    CU_ASSERT_EQUAL(zinc_config_resolve(&d, 1), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "neither train_batch_size") != NULL);
    d.train_micro_batch_size_per_gpu = 4;
    CU_ASSERT_EQUAL_FATAL(zinc_config_resolve(&d, 2), ZINC_OK);
    CU_ASSERT_EQUAL(d.train_batch_size, 8);
    CU_ASSERT_EQUAL(d.gradient_accumulation_steps, 1);
    CU_ASSERT_EQUAL_FATAL(zinc_config_resolve(&d, 4), ZINC_OK);
    CU_ASSERT_EQUAL(d.train_batch_size, 16);
    d.gradient_accumulation_steps = 3; /* edited after a resolve: the three are now given */
    CU_ASSERT_EQUAL(zinc_config_resolve(&d, 4), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "train_batch_size 16 != train_micro_batch_size_per_gpu 4 * "
                     "gradient_accumulation_steps 3 * data-parallel size 4") != NULL);
}

static void test_dump(void)
{
    zinc_config c, r;
    /* before resolve, the batch keys are dumped as given */
    CU_ASSERT_FATAL(load_str("{\"train_batch_size\": \"auto\", \"train_micro_batch_size_per_gpu\": 2,"
                             " \"scheduler\": {\"type\": \"WarmupCosineLR\", \"params\": {\"total_num_steps\": 5000}},"
                             " \"zero_optimization\": {\"stage\": 3, \"offload_param\": {\"device\": \"cpu\"}},"
                             " \"data\": {\"train\": [\"a.bin\", \"b.bin\"]}, \"optimizer\": {\"type\": \"AdamW\","
                             " \"params\": {\"lr\": 6e-4, \"betas\": [0.9, 0.95]}}}", &c) == ZINC_OK);
    char *s = zinc_config_dump(&c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT(strstr(s, "\"train_batch_size\": \"auto\"") != NULL);
    CU_ASSERT(strstr(s, "\"train_micro_batch_size_per_gpu\": 2") != NULL);
    CU_ASSERT(strstr(s, "\"gradient_accumulation_steps\"") == NULL);
    CU_ASSERT(strstr(s, "\"type\": \"WarmupCosineLR\"") != NULL);
    CU_ASSERT(strstr(s, "\"cos_min_ratio\"") != NULL);
    CU_ASSERT(strstr(s, "\"warmup_max_lr\"") == NULL); /* not a WarmupCosineLR parameter */
    CU_ASSERT(strstr(s, "\"stage3_prefetch_bucket_size\": 50000000") != NULL);
    CU_ASSERT(strstr(s, "\"lr\": 0.0006") != NULL);
    CU_ASSERT(strstr(s, "\"overlap_comm\": true") != NULL);
    CU_ASSERT(strstr(s, "\"text_exts\"") != NULL);
    CU_ASSERT(strstr(s, "\"device\": \"cpu\"") != NULL);
    CU_ASSERT(strstr(s, "\"comm_backend\": \"auto\"") != NULL);
    CU_ASSERT_FATAL(zinc_config_load_string(s, "dump", NULL, 0, &r) == ZINC_OK);
    CU_ASSERT(same_config(&c, &r));
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 2), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_config_resolve(&r, 2), ZINC_OK);
    CU_ASSERT(same_config(&c, &r));
    CU_ASSERT_EQUAL(r.train_batch_size, 4);
    free(s);

    /* no scheduler: no scheduler section; no data: no data section */
    CU_ASSERT_FATAL(load_str("{\"train_batch_size\": 8}", &c) == ZINC_OK);
    s = zinc_config_dump(&c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT(strstr(s, "\"scheduler\"") == NULL);
    CU_ASSERT(strstr(s, "\"data\"") == NULL);
    CU_ASSERT(strstr(s, "\"model\"") != NULL);
    CU_ASSERT(strstr(s, "\"gradient_clipping\": 1.0") != NULL);
    free(s);
}

static void test_errors_and_warnings(void)
{
    zinc_config c, before;
    zinc_config_defaults(&c);
    c.model.n_layer = 99;
    before = c;
    zinc_status st = zinc_config_load("tests/config/cases/no_such_file.json", NULL, 0, &c);
    CU_ASSERT_EQUAL(st, ZINC_ERR_IO);
    CU_ASSERT_STRING_EQUAL(zinc_last_error(),
                           "tests/config/cases/no_such_file.json: cannot open config: No such file or directory");
    CU_ASSERT_EQUAL(zinc_config_load("tests/config/cases", NULL, 0, &c), ZINC_ERR_IO);
    CU_ASSERT(strstr(zinc_last_error(), "cannot open config: Is a directory") != NULL);
    CU_ASSERT(!memcmp(&c, &before, sizeof c)); /* untouched on failure */
    st = zinc_config_load_string("{\"train_batch_size\": 8, \"fp16\": {\"enabled\": tru}}", "inline", NULL, 0, &c);
    CU_ASSERT_EQUAL(st, ZINC_ERR_CONFIG);
    CU_ASSERT_NSTRING_EQUAL(zinc_last_error(), "inline:1:", 9);
    CU_ASSERT(strstr(zinc_last_error(), "malformed JSON") != NULL);
    CU_ASSERT(!memcmp(&c, &before, sizeof c));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"bf16\": {\"enable\": true}}", NULL, 0,
                         "t.json: bf16.enable: unknown key (did you mean \"enabled\"?)"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"bf16\": {\"zzz\": true}}", NULL, 0,
                         "bf16.zzz: unknown key (known keys: enabled, immediate_grad_update)"));

    /* unknown top-level keys warn (with a did-you-mean) but load */
    capture_begin();
    st = load_str("{\"train_batch_size\": 8, \"gradient_clip\": 1.0, \"my_custom_field\": 3}", &c);
    char *err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && strstr(err, "t.json: gradient_clip: unknown top-level key, ignored "
                                 "(did you mean \"gradient_clipping\"?)"));
    CU_ASSERT(err && strstr(err, "t.json: my_custom_field: unknown top-level key, ignored"));
    free(err);
    capture_begin(); /* a key put in the wrong place is pointed to its section */
    st = load_str("{\"train_batch_size\": 8, \"offload_param\": {\"device\": \"cpu\"}, \"foo\": 1}", &c);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && strstr(err, "offload_param: unknown top-level key, ignored (it belongs in "
                                 "\"zero_optimization\")"));
    CU_ASSERT(err && strstr(err, "foo: unknown top-level key, ignored\n")); /* no far-fetched guess */
    free(err);

    /* legacy names load with warnings naming the new ones */
    capture_begin();
    st = zinc_config_load(CASES "/valid/legacy_names.json", NULL, 0, &c);
    err = capture_end();
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    CU_ASSERT_EQUAL(c.bf16.enabled, 1);
    CU_ASSERT_EQUAL(c.zero.offload_optimizer.device, ZINC_OFFLOAD_CPU);
    CU_ASSERT_EQUAL(c.aio.intra_op_parallelism, 2);
    CU_ASSERT_EQUAL(c.optimizer.type, ZINC_OPT_ADAM);
    CU_ASSERT(err && strstr(err, "bfloat16: deprecated name, use \"bf16\""));
    CU_ASSERT(err && strstr(err, "zero_optimization.cpu_offload: deprecated, use \"offload_optimizer\""));
    CU_ASSERT(err && strstr(err, "aio.thread_count: deprecated name, use \"intra_op_parallelism\""));
    CU_ASSERT(err && strstr(err, "stage3_gather_fp16_weights_on_model_save: deprecated name"));
    free(err);

    /* stage3 knobs below stage 3: one warning */
    capture_begin();
    st = load_str("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 2,"
                  " \"stage3_max_live_parameters\": 1e6, \"stage3_prefetch_bucket_size\": 1e6}}", &c);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && strstr(err, "stage3_max_live_parameters, stage3_prefetch_bucket_size have no effect at stage 2"));
    free(err);
    capture_begin(); /* defaults written out (a dump) do not warn */
    st = load_str("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 2,"
                  " \"stage3_max_live_parameters\": 1e9}}", &c);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && !strstr(err, "no effect"));
    free(err);
}

/* ---------------------------------------------------------------- bounds */

/* Every integer leaf of a dump, as "a.b.c" paths. */
static int int_leaves(json_t *o, const char *prefix, char (*out)[128], int n, int max)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        char p[128];
        snprintf(p, sizeof p, "%s%s%s", prefix, prefix[0] ? "." : "", k);
        if (json_is_object(v))
            n = int_leaves(v, p, out, n, max);
        else if (json_is_integer(v) && n < max)
            snprintf(out[n++], 128, "%s", p);
    }
    return n;
}

/* An integer in the dump, by path. */
static int dumped_int(const zinc_config *c, const char *path, long long *out)
{
    char *s = zinc_config_dump(c);
    json_t *v = s ? json_loads(s, 0, NULL) : NULL, *root = v;
    free(s);
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *seg = strtok(buf, "."); v && seg; seg = strtok(NULL, ".")) v = json_object_get(v, seg);
    int ok = json_is_integer(v);
    if (ok) *out = (long long)json_integer_value(v);
    json_decref(root);
    return ok;
}

/* Each integer key has an upper bound that its consumer holds: 2^62 is
 * refused naming the key, except the seeds (uint64 in the consumer), which
 * keep it exactly; 2^32 + 2 (an int narrowing to 2) is refused or held
 * exactly by every key. */
static void test_int_bounds(void)
{
    static const char *cfg =
        "{\"train_batch_size\": 8, \"train_micro_batch_size_per_gpu\": 4,"
        " \"scheduler\": {\"type\": \"WarmupDecayLR\", \"params\": {\"total_num_steps\": 5000}},"
        " \"fp16\": {\"enabled\": true},"
        " \"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": {\"device\": \"cpu\"},"
        " \"offload_param\": {\"device\": \"cpu\"}}, \"data\": {\"train\": \"a.bin\"}}";
    zinc_config c;
    zinc_status st0 = load_str(cfg, &c);
    if (st0 != ZINC_OK) printf("\n  %s\n", zinc_last_error());
    CU_ASSERT_FATAL(st0 == ZINC_OK);
    char *s = zinc_config_dump(&c);
    json_t *root = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root);
    static char keys[128][128];
    int n = int_leaves(root, "", keys, 0, 128);
    json_decref(root);
    CU_ASSERT(n >= 30); /* the dump holds every stored integer key of this config */
    int refused = 0;
    for (int i = 0; i < n; i++) {
        int seed = strstr(keys[i], "seed") != NULL;
        char ov[300];
        snprintf(ov, sizeof ov, "%.127s=4611686018427387904", keys[i]);
        const char *o[] = {ov};
        zinc_config d;
        zinc_status st = zinc_config_load_string(cfg, "t.json", o, 1, &d);
        if (seed) {
            long long got = 0;
            CU_ASSERT(st == ZINC_OK && dumped_int(&d, keys[i], &got) && got == 4611686018427387904LL);
        } else {
            char want[300];
            snprintf(want, sizeof want, "--set %.127s: expected an integer", keys[i]);
            int ok = st == ZINC_ERR_CONFIG && strstr(zinc_last_error(), want);
            if (!ok) printf("\n  %s=2^62: status %d '%s'\n", keys[i], (int)st, zinc_last_error());
            CU_ASSERT(ok);
            refused += ok;
        }
        snprintf(ov, sizeof ov, "%.127s=4294967298", keys[i]);
        st = zinc_config_load_string(cfg, "t.json", o, 1, &d);
        if (st == ZINC_OK) st = zinc_config_resolve(&d, 1);
        long long got = 0;
        int ok = st == ZINC_ERR_CONFIG ? strstr(zinc_last_error(), keys[i]) != NULL
                                       : st == ZINC_OK && dumped_int(&d, keys[i], &got) && got == 4294967298LL;
        if (!ok) printf("\n  %s=2^32+2: status %d '%s' got %lld\n", keys[i], (int)st, zinc_last_error(), got);
        CU_ASSERT(ok);
    }
    CU_ASSERT(refused >= n - 2);

    /* the reproductions: each would have narrowed to a small int */
    CU_ASSERT(fails_with("{\"train_batch_size\": 8}", (const char *[]){"model.n_layer=4294967298"}, 1,
                         "--set model.n_layer: expected an integer in 1..16384, found 4294967298"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8}", (const char *[]){"train.keep_last=4294967297"}, 1,
                         "--set train.keep_last: expected an integer in 0..1000000"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8}", (const char *[]){"aio.queue_depth=2147483648"}, 1,
                         "--set aio.queue_depth: expected an integer in 1..4096"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8}", (const char *[]){"aio.intra_op_parallelism=100000"}, 1,
                         "--set aio.intra_op_parallelism: expected an integer in 1..256"));
    CU_ASSERT(fails_with("{\"train_micro_batch_size_per_gpu\": 1099511627776}", NULL, 0,
                         "train_micro_batch_size_per_gpu: expected an integer in 1..1048576"));

    /* derived: tokens per micro-batch fit the kernels' int; resolved values their bounds */
    CU_ASSERT(fails_with("{\"train_micro_batch_size_per_gpu\": 1048576, \"model\": {\"block_size\": 4096}}",
                         NULL, 0, "1048576 * sequence length 4096 = 4294967296 tokens per micro-batch; at most"));
    zinc_config r;
    CU_ASSERT_FATAL(load_str("{\"train_batch_size\": 2147483647}", &r) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_config_resolve(&r, 1), ZINC_ERR_CONFIG); /* micro 2^31-1 */
    CU_ASSERT(strstr(zinc_last_error(), "train_micro_batch_size_per_gpu resolves to 2147483647") != NULL);

    /* "auto" from a large n_embd stays within the keys' bounds, never 0 or negative */
    CU_ASSERT_FATAL(load_str("{\"train_batch_size\": 8, \"model\": {\"n_embd\": 1048576, \"n_head\": 8192},"
                             " \"zero_optimization\": {\"stage\": 3, \"reduce_bucket_size\": \"auto\","
                             " \"stage3_prefetch_bucket_size\": \"auto\"}}", &r) == ZINC_OK);
    CU_ASSERT_EQUAL(r.zero.reduce_bucket_size, 1048576LL * 1048576LL);
    CU_ASSERT(r.zero.stage3_prefetch_bucket_size > 0);

    /* a struct filled through the C API is checked against the same ranges */
    zinc_config_defaults(&r);
    r.train_micro_batch_size_per_gpu = 1;
    CU_ASSERT_EQUAL(zinc_config_check(&r), ZINC_OK);
    r.model.n_layer = 4294967298LL;
    CU_ASSERT_EQUAL(zinc_config_check(&r), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "model.n_layer: expected an integer in 1..16384, found 4294967298") != NULL);
    CU_ASSERT_EQUAL(zinc_config_resolve(&r, 1), ZINC_ERR_CONFIG);
    r.model.n_layer = 4;
    r.optimizer.lr = -1;
    CU_ASSERT_EQUAL(zinc_config_check(&r), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "optimizer.params.lr: expected a number >= 0, found -1") != NULL);
}

/* An error that a --set caused names the override, also when the rule that
 * failed ties it to a key from the file. */
static void test_override_blame(void)
{
    const char *file = "{\"train_batch_size\": 8, \"model\": {\"n_embd\": 192, \"n_head\": 6}}";
    CU_ASSERT(fails_with(file, (const char *[]){"model.n_head=5"}, 1,
                         "--set model.n_head=5: model.n_embd: 192 is not divisible by model.n_head 5"));
    zinc_config c;
    CU_ASSERT(load_str(file, &c) == ZINC_OK);
    CU_ASSERT(fails_with(file, (const char *[]){"fp16.enabled=true", "bf16.enabled=true"}, 2,
                         "--set fp16.enabled=true: fp16: fp16.enabled and bf16.enabled are both true"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"data\": {\"train\": \"a.bin\", \"seq_len\": 64}}",
                         (const char *[]){"model.block_size=32"}, 1,
                         "--set model.block_size=32: data.seq_len: 64 exceeds model.block_size 32"));
    CU_ASSERT(fails_with(file, (const char *[]){"train_micro_batch_size_per_gpu=3"}, 1,
                         "--set train_micro_batch_size_per_gpu=3: train_batch_size: 8 is not divisible"));
    CU_ASSERT(fails_with(file, (const char *[]){"zero_optimization.offload_param.device=cpu"}, 1,
                         "--set zero_optimization.offload_param.device: \"cpu\" requires zero_optimization.stage 3"));
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 3,"
                         " \"offload_param\": {\"device\": \"cpu\"}}}",
                         (const char *[]){"zero_optimization.stage=1"}, 1,
                         "--set zero_optimization.stage=1: zero_optimization.offload_param.device"));
    /* the batch rule at resolve time names the override too */
    CU_ASSERT_FATAL(zinc_config_load_string(file, "t.json", (const char *[]){"train_micro_batch_size_per_gpu=2"},
                                            1, &c) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 3), ZINC_ERR_CONFIG);
    CU_ASSERT(strstr(zinc_last_error(), "--set train_micro_batch_size_per_gpu=2: train_batch_size 8 is not "
                                        "divisible") != NULL);
    /* and a file's own error still names the file */
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"model\": {\"n_embd\": 192, \"n_head\": 5}}", NULL, 0,
                         "t.json: model.n_embd: 192 is not divisible by model.n_head 5"));
}

/* ---------------------------------------------------------------- honest keys */

/* Every key given either takes effect or is listed, once, as having none;
 * zinc_config_load_effects says which for each. */
static void test_honest_keys(void)
{
    zinc_config c;
    char *eff = NULL;
    const char *ovr[] = {"zero_optimization.stage3_max_live_parameters=1000", "wandb.enabled=false"};
    capture_begin();
    zinc_status st = zinc_config_load_effects(CASES "/valid/ds_extra_sections.json", ovr, 2, &c, &eff);
    char *err = capture_end();
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(eff);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    /* one warning line lists the keys without effect */
    const char *w = strstr(err, "no effect in zinc (accepted for DeepSpeed compatibility");
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT(strstr(w + 1, "no effect in zinc") == NULL);
    const char *eol = strchr(w, '\n');
    size_t wl = eol ? (size_t)(eol - w) : strlen(w);
    static const char *const listed[] = {"seed", "zero_allow_untested_optimizer", "memory_breakdown",
                                         "zero_optimization.load_from_fp32_weights", "comms_logger",
                                         "activation_checkpointing.profile", "pipeline.seed_layers",
                                         "checkpoint.tag_validation", "wandb", "autotuning", NULL};
    for (int i = 0; listed[i]; i++) {
        char needle[128];
        snprintf(needle, sizeof needle, " %s", listed[i]);
        const char *hit = strstr(w, needle);
        int ok = hit && (size_t)(hit - w) < wl;
        if (!ok) printf("\n  not in the warning: %s\n  %.*s\n", listed[i], (int)wl, w);
        CU_ASSERT(ok);
    }
    /* and each key given has its effect, with the reason */
    static const char *const lines[] = {
        "train_batch_size = 256: applied\n",
        "tensorboard.enabled = true: applied\n",
        "tensorboard.job_name = \"gpt\": applied\n",
        "pipeline.stages = \"auto\": applied (\"auto\", resolved as shown)\n",
        "pipeline.partition = \"parameters\": applied (the default; one model chunk)\n",
        "activation_checkpointing.partition_activations = false: applied\n",
        "data_types.grad_accum_dtype = \"fp32\": applied (the only value zinc supports)\n",
        "zero_optimization.load_from_fp32_weights = true: no effect (zinc always restores fp32 master weights)\n",
        "seed = 42: no effect (zinc seeds from model.seed (weights) and data.seed (sample order))\n",
        "communication_data_type = null: default\n",
        "zero_optimization.stage3_max_live_parameters = 1000: no effect at stage 1 (stage 3 only)\n",
        "fp16.initial_scale_power = 12: applied\n",
        NULL};
    for (int i = 0; lines[i]; i++) {
        int ok = strstr(eff, lines[i]) != NULL;
        if (!ok) printf("\n  missing effect line: %s", lines[i]);
        CU_ASSERT(ok);
    }
    free(eff);
    free(err);

    /* a dump loads back without a no-effect warning: it holds only what zinc uses */
    char *d = zinc_config_dump(&c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    zinc_config r;
    capture_begin();
    st = zinc_config_load_string(d, "dump", NULL, 0, &r);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && !strstr(err, "no effect in zinc")); /* (the stage 3 knob set above still warns) */
    free(err);
    free(d);

    /* stored keys nothing reads yet: a value other than zinc's behaviour is listed */
    capture_begin();
    st = load_str("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 2, \"contiguous_gradients\": false,"
                  " \"offload_optimizer\": {\"device\": \"cpu\", \"pin_memory\": true}}}", &r);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && strstr(err, "no effect in zinc") && strstr(err, "zero_optimization.contiguous_gradients") &&
              !strstr(err, "pin_memory"));
    free(err);
    /* a config with only what zinc uses warns about nothing */
    capture_begin();
    st = load_str("{\"train_batch_size\": 8, \"zero_optimization\": {\"stage\": 1}}", &r);
    err = capture_end();
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(err && err[0] == '\0');
    free(err);
}

/* elasticity: DeepSpeed's version 0.1 rule. The first case is DeepSpeed's
 * own unit test (tests/unit/elasticity/test_elastic.py, test_basic_10k):
 * batch 9792 with 23 valid GPU counts. The rest are worked by hand:
 * micro [2, 3], max 30 gives candidates 24 (2*12, 6*4; valid 1,2,3,4,6,8)
 * and 18 (3*6; valid 1,2,3,6), so 24. */
/* tensor_parallel: the TP layout is checked against the world, the heads,
 * the MLP width and the padded vocabulary, each a line naming the key and
 * the numbers; DP = world / TP drives the batch rule (whether the model
 * splits its layers is the engine's check: tests/tp/test_tp_engine.c). */
/* Resolving c for world ranks fails with a detail containing frag and leaves c as it was. */
static int resolve_fails(zinc_config *c, int world, const char *frag)
{
    zinc_config before = *c;
    zinc_status st = zinc_config_resolve(c, world);
    int ok = st == ZINC_ERR_CONFIG && strstr(zinc_last_error(), frag) != NULL;
    if (!ok) printf("\n  want '%s', got %d '%s'\n", frag, (int)st, zinc_last_error());
    return ok && !memcmp(&before, c, sizeof *c);
}

static void test_tensor_parallel(void)
{
    const char *base = "{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 1,"
                       " \"model\": {\"n_embd\": 96, \"n_head\": 6, \"vocab_size\": 512},"
                       " \"tensor_parallel\": {\"autotp_size\": %d, \"sequence_parallel\": true}}";
    char j[512];
    zinc_config c;
    snprintf(j, sizeof j, base, 1);
    CU_ASSERT_FATAL(load_str(j, &c) == ZINC_OK);
    CU_ASSERT_EQUAL(c.tp.size, 1);
    CU_ASSERT_EQUAL(c.tp.sequence_parallel, 1);
    /* sequence parallelism without a TP group: one warning line */
    capture_begin();
    CU_ASSERT_FATAL(load_str(j, &c) == ZINC_OK);
    char *err = capture_end();
    CU_ASSERT(err && strstr(err, "tensor_parallel.sequence_parallel: true has no effect with "
                                 "tensor_parallel.autotp_size 1"));
    free(err);
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 4), ZINC_OK);
    CU_ASSERT_EQUAL(c.train_batch_size, 8); /* 2 x 1 x DP 4 */
    CU_ASSERT_EQUAL(zinc_config_dp_size(&c, 4), 4);
    static const struct { int tp, world; const char *frag; } bad[] = {
        {3, 4, "tensor_parallel.autotp_size 3 does not divide the world size 4"},
        {4, 4, "tensor_parallel.autotp_size 4 does not divide model.n_head 6"},
        {6, 6, "model.vocab_size 512 is not a multiple of 64 x tensor_parallel.autotp_size = 384; "
               "pad it to 768"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(j, sizeof j, base, bad[i].tp);
        CU_ASSERT_FATAL(load_str(j, &c) == ZINC_OK);
        CU_ASSERT(resolve_fails(&c, bad[i].world, bad[i].frag));
    }
    /* a valid layout: DP = world / TP drives the batch rule */
    snprintf(j, sizeof j, base, 2);
    CU_ASSERT_FATAL(load_str(j, &c) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 4), ZINC_OK);
    CU_ASSERT_EQUAL(c.train_batch_size, 4); /* 2 x 1 x DP 2 */
    CU_ASSERT_EQUAL(zinc_config_dp_size(&c, 4), 2);
    CU_ASSERT(fails_with("{\"train_micro_batch_size_per_gpu\": 1, \"tensor_parallel\": {\"autotp_size\": 0}}",
                         NULL, 0, "tensor_parallel.autotp_size"));
    CU_ASSERT(fails_with("{\"train_micro_batch_size_per_gpu\": 1, \"tensor_parallel\": {\"tp\": {\"tp_size\": 2}}}",
                         NULL, 0, "tensor_parallel.tp.tp_size"));
}

/* pipeline: DP = world / (PP x TP); the schedule keys and their layout checks */
static void test_pipeline_layout(void)
{
    zinc_config c;
    CU_ASSERT_FATAL(load_ok("{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 4,"
                            " \"model\": {\"n_head\": 4, \"vocab_size\": 512},"
                            " \"tensor_parallel\": {\"autotp_size\": 2},"
                            " \"pipeline\": {\"stages\": 2, \"partition\": \"type:block\", \"schedule\": \"Interleaved\","
                            " \"virtual_stages\": 2}}", NULL, 0, 8, &c));
    CU_ASSERT_EQUAL(c.pp.stages, 2);
    CU_ASSERT_EQUAL(c.pp.schedule, ZINC_PP_INTERLEAVED);
    CU_ASSERT_EQUAL(c.pp.virtual_stages, 2);
    CU_ASSERT_STRING_EQUAL(c.pp.partition, "type:block");
    CU_ASSERT_EQUAL(zinc_config_dp_size(&c, 8), 2);
    CU_ASSERT_EQUAL(c.train_batch_size, 16); /* 2 x 4 x DP 2 */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 4}", NULL, 0, 1, &c)); /* the defaults */
    CU_ASSERT_EQUAL(c.pp.stages, 1);
    CU_ASSERT_EQUAL(c.pp.schedule, ZINC_PP_1F1B);
    CU_ASSERT_EQUAL(c.pp.virtual_stages, 1);
    CU_ASSERT_STRING_EQUAL(c.pp.partition, "parameters");
    static const struct { const char *json; int world; const char *frag; } bad[] = {
        {"{\"train_batch_size\": 8, \"pipeline\": {\"stages\": 3}}", 4,
         "pipeline.stages 3 x tensor_parallel.autotp_size 1 = 3 does not divide the world size 4"},
        {"{\"train_batch_size\": 8, \"model\": {\"vocab_size\": 512}, \"pipeline\": {\"stages\": 2},"
         " \"tensor_parallel\": {\"autotp_size\": 2}}", 6,
         "pipeline.stages 2 x tensor_parallel.autotp_size 2 = 4 does not divide the world size 6"},
        {"{\"train_micro_batch_size_per_gpu\": 1, \"gradient_accumulation_steps\": 3, \"pipeline\": {\"stages\": 2,"
         " \"schedule\": \"interleaved\"}}", 2,
         "pipeline.schedule \"interleaved\": gradient_accumulation_steps 3 (the micro-batches of a step) is not a "
         "multiple of pipeline.stages 2"},
        {"{\"train_batch_size\": 6, \"pipeline\": {\"stages\": 2, \"schedule\": \"interleaved\"}}", 2,
         "gradient_accumulation_steps 1 (the micro-batches"}, /* resolved: 6 = 6 x 1 x DP 1 */
        {"{\"train_batch_size\": 8, \"pipeline\": {\"stages\": 2, \"virtual_stages\": 2, \"schedule\": \"gpipe\"}}",
         2, "pipeline.virtual_stages 2 needs pipeline.schedule \"interleaved\" (found \"gpipe\")"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CU_ASSERT_FATAL(load_str(bad[i].json, &c) == ZINC_OK);
        CU_ASSERT(resolve_fails(&c, bad[i].world, bad[i].frag));
        if (i != 3) /* the batch is not resolved yet: nothing to say about its micro-batches */
            CU_ASSERT_EQUAL(zinc_config_check_mesh(&c, bad[i].world), ZINC_ERR_CONFIG);
    }
    /* with one model chunk the partition says it has no effect; the schedule always has one */
    char *eff = NULL, path[] = "/tmp/zinc-pp-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    const char *j = "{\"train_batch_size\": 4, \"pipeline\": {\"schedule\": \"gpipe\", \"partition\": \"uniform\"}}";
    CU_ASSERT_FATAL(write(fd, j, strlen(j)) == (ssize_t)strlen(j));
    close(fd);
    capture_begin();
    zinc_status st = zinc_config_load_effects(path, NULL, 0, &c, &eff);
    char *warn = capture_end();
    unlink(path);
    CU_ASSERT(warn && strstr(warn, "no effect in zinc") && strstr(warn, "pipeline.partition")); /* the one line */
    free(warn);
    /* train.eval_batches without data.valid does nothing, and says so */
    capture_begin();
    CU_ASSERT(load_str("{\"train_batch_size\": 4, \"train\": {\"eval_batches\": 3}}", &c) == ZINC_OK);
    warn = capture_end();
    CU_ASSERT(warn && strstr(warn, "no effect in zinc") && strstr(warn, "train.eval_batches"));
    free(warn);
    CU_ASSERT_EQUAL(st, ZINC_OK);
    CU_ASSERT(eff && strstr(eff, "pipeline.partition = \"uniform\": no effect (one model chunk"));
    CU_ASSERT(eff && strstr(eff, "pipeline.schedule = \"gpipe\": applied"));
    free(eff);
}

static void test_elasticity(void)
{
    zinc_config c;
    CU_ASSERT_FATAL(load_ok("{\"elasticity\": {\"enabled\": true, \"max_train_batch_size\": 10000,"
                            " \"micro_batch_sizes\": [8, 12, 16, 17], \"min_gpus\": 32,"
                            " \"max_gpus\": 1500, \"min_time\": 20, \"version\": 0.1}}",
                            NULL, 0, 32, &c));
    int64_t b = zinc_elastic_batch(&c);
    CU_ASSERT_EQUAL(b, 9792);
    int n_valid = 0, bad = 0;
    for (int g = 1; g <= 2000; g++) {
        int64_t m = 0;
        int fits = g >= 32 && g <= 1500 && zinc_elastic_fits(&c, b, g, &m);
        n_valid += fits;
        if (fits) bad += b % (m * g) != 0;
    }
    CU_ASSERT_EQUAL(n_valid, 23);
    CU_ASSERT_EQUAL(bad, 0);
    /* resolved at DP 32: the largest micro-batch that divides 9792/32 = 306 is 17 */
    CU_ASSERT_EQUAL(c.train_batch_size, 9792);
    CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 17);
    CU_ASSERT_EQUAL(c.gradient_accumulation_steps, 18);

    const char *small = "{\"elasticity\": {\"enabled\": true, \"max_train_batch_size\": 30,"
                        " \"micro_batch_sizes\": [2, 3], \"max_gpus\": 8}}";
    static const struct { int dp; int64_t micro, gas; } want[] = {
        {1, 3, 8}, {2, 3, 4}, {3, 2, 4}, {4, 3, 2}, {6, 2, 2}, {8, 3, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        CU_ASSERT_FATAL(load_ok(small, NULL, 0, want[i].dp, &c));
        CU_ASSERT_EQUAL(c.train_batch_size, 24);
        CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, want[i].micro);
        CU_ASSERT_EQUAL(c.gradient_accumulation_steps, want[i].gas);
    }
    /* re-resolving the same config for another size works from the section */
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 3), ZINC_OK);
    CU_ASSERT_EQUAL(c.train_micro_batch_size_per_gpu, 2);
    CU_ASSERT_EQUAL(zinc_config_resolve(&c, 5), ZINC_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "elasticity: 5 ranks cannot run its train "
                                  "batch of 24 (valid rank counts: 1, 2, 3, 4, 6, 8)"));
    CU_ASSERT_EQUAL(zinc_elastic_ranks(&c, 7), 6);
    CU_ASSERT_EQUAL(zinc_elastic_ranks(&c, 5), 4);
    CU_ASSERT_EQUAL(zinc_elastic_ranks(&c, 100), 8);
    /* prefer_larger_batch false takes the smaller of two equally elastic
     * batches: micro [4], max 100: 4*24 = 96 is the only candidate */
    CU_ASSERT_FATAL(load_ok("{\"elasticity\": {\"enabled\": true, \"max_train_batch_size\": 100,"
                            " \"micro_batch_sizes\": [4], \"prefer_larger_batch\": false}}",
                            NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.train_batch_size, 96);
    /* disabled: any count; not enabled by default */
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8}", NULL, 0, 1, &c));
    CU_ASSERT_EQUAL(c.elasticity.enabled, 0);
    CU_ASSERT_EQUAL(zinc_elastic_ranks(&c, 5), 5);
    /* errors */
    CU_ASSERT(fails_with("{\"train_batch_size\": 8, \"elasticity\": {\"enabled\": true}}", NULL, 0,
                         "train_batch_size: not allowed with elasticity.enabled"));
    CU_ASSERT_FATAL(load_ok("{\"train_batch_size\": 8, \"elasticity\": {\"enabled\": true,"
                            " \"ignore_non_elastic_batch_info\": true}}", NULL, 0, 1, &c));
    /* the default sizes [2, 4, 6], max 2000: 2*840 = 1680 has more valid counts than 1440 */
    CU_ASSERT_EQUAL(c.train_batch_size, 1680);
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"micro_batch_sizes\": []}}", NULL, 0,
                         "elasticity.micro_batch_sizes: expected an array of 1 to 16"));
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"micro_batch_sizes\": [2, 2]}}", NULL,
                         0, "entry 1: 2 is listed twice"));
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"micro_batch_sizes\": [2.5]}}", NULL,
                         0, "entry 0: expected an integer from 1"));
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"version\": 0.2}}", NULL, 0,
                         "elasticity.version: 0.2 is not supported yet; only 0.1"));
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"max_train_batch_size\": 1,"
                         " \"micro_batch_sizes\": [2]}}", NULL, 0,
                         "no micro_batch_sizes entry fits max_train_batch_size 1"));
    CU_ASSERT(fails_with("{\"elasticity\": {\"enabled\": true, \"min_gpus\": 4, \"max_gpus\": 2}}",
                         NULL, 0, "elasticity.min_gpus 4 > max_gpus 2"));
}

/* ---------------------------------------------------------------- key reference */

/* Whether the parser knows path: "path=null" on a base config either loads
 * without an unknown-key warning or fails with an error about path itself
 * (expected a ..., only ..., not a parameter of ...), never "unknown key",
 * nor at a shorter path (a leaf given an object). */
static int path_known(const char *path)
{
    static const char *base = "{\"train_batch_size\": 8, \"optimizer\": {\"type\": \"Adam\"},"
                              " \"scheduler\": {\"type\": \"WarmupLR\"}, \"data\": {\"train\": \"a.bin\"}}";
    char ov[300], want[300];
    snprintf(ov, sizeof ov, "%s=null", path);
    snprintf(want, sizeof want, "--set %s:", path);
    const char *o[] = {ov};
    zinc_config c;
    capture_begin();
    zinc_status st = zinc_config_load_string(base, "t.json", o, 1, &c);
    char *err = capture_end();
    const char *e = zinc_last_error();
    int ok = st == ZINC_OK ? err && !strstr(err, "unknown")
                           : strstr(e, want) && !strstr(e, "unknown key") && !strstr(e, "is not an object");
    free(err);
    return ok;
}

/* zinc_config_list_keys: a markdown table of every key, each one the parser knows. */
static void test_list_keys(void)
{
    FILE *f = tmpfile();
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL_FATAL(zinc_config_list_keys(f), ZINC_OK);
    long len = ftell(f);
    rewind(f);
    char *s = calloc(1, (size_t)len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(fread(s, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    static const char head[] = "| key | type | default | accepts | effect in zinc | from |\n|---|---|---|---|---|---|\n";
    CU_ASSERT(!strncmp(s, head, sizeof head - 1));
    /* rows of each kind, whole */
    static const char *const rows[] = {
        "\n| `zero_optimization.stage` | integer | `0` | an integer in 0..3 | honoured | DeepSpeed |\n",
        "\n| `train_batch_size` | integer | none | an integer in 1..2147483647, or \"auto\" | honoured | DeepSpeed |\n",
        "\n| `optimizer.params.betas` | [number, number] | `[0.9, 0.999]` | an array of 2 numbers in [0, 1), or "
        "\"auto\" | honoured | DeepSpeed |\n",
        "\n| `zero_optimization.offload_param.buffer_count` | integer | `5` | an integer in 1..1024 | the default is "
        "what zinc does, another value has no effect: zinc stages one unit at a time | DeepSpeed |\n",
        "\n| `zero_optimization.round_robin_gradients` | bool |  | true or false | no effect: zinc reduces gradients "
        "per layer unit | DeepSpeed |\n",
        "\n| `zero_optimization.mics_shard_size` | integer | `-1` | an integer >= -1 | only `-1`: MiCS sharding is not "
        "implemented | DeepSpeed |\n",
        "\n| `bfloat16` | object |  | an object | deprecated alias of `bf16` | DeepSpeed |\n",
        "\n| `zero_optimization.cpu_offload_params` | bool | `false` | true or false | deprecated: true means "
        "`zero_optimization.offload_param.device` \"cpu\" | DeepSpeed |\n",
        "\n| `elasticity.micro_batch_sizes` | [integer] | `[2, 4, 6]` | 1 to 16 distinct integers in 1..1048576 | "
        "honoured | DeepSpeed |\n",
        "\n| `model.rope_scaling` | object |  | an object | section | zinc |\n",
        "\n| `model.rope_scaling.rope_type` | string |  | one of \"\", \"llama3\" | alias of `model.rope_scaling.type` | "
        "zinc |\n",
        "\n| `pipeline.schedule` | string | `\"1f1b\"` | one of \"gpipe\", \"1f1b\", \"interleaved\", \"zero-bubble\" (any "
        "case) | honoured | zinc |\n",
        "\n| `tensor_parallel.sequence_parallel` | bool | `false` | true or false | honoured with "
        "tensor_parallel.autotp_size > 1 | zinc |\n",
        "\n| `optimizer.params.max_grad_norm` | any |  | nothing | error: not supported in optimizer params, use "
        "gradient_clipping (top level) | DeepSpeed |\n",
        "\n| `amp` | object |  | an object | error unless empty or \"enabled\": false: Apex AMP is not available; use "
        "fp16 or bf16 | DeepSpeed |\n",
        NULL};
    for (int i = 0; rows[i]; i++) {
        int ok = strstr(s, rows[i]) != NULL;
        if (!ok) printf("\n  row missing:%s", rows[i]);
        CU_ASSERT(ok);
    }
    /* every row: 6 cells, a path listed once, known to the parser */
    static char paths[1024][128];
    int n = 0, bad = 0, dups = 0, unknown = 0;
    for (char *line = s, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        if (strncmp(line, "| `", 3)) continue;
        int cells = 0;
        for (const char *p = line; *p; p++) cells += *p == '|' && (p == line || p[-1] != '\\');
        const char *end = strchr(line + 3, '`');
        if (cells != 7 || !end || end - (line + 3) >= 128 || n == 1024) {
            printf("\n  bad row: %s", line);
            bad++;
            continue;
        }
        snprintf(paths[n], sizeof paths[n], "%.*s", (int)(end - (line + 3)), line + 3);
        for (int j = 0; j < n; j++) dups += !strcmp(paths[j], paths[n]);
        if (!path_known(paths[n])) {
            printf("\n  listed, but the parser does not know it: %s (%s)", paths[n], zinc_last_error());
            unknown++;
        }
        n++;
    }
    free(s);
    CU_ASSERT(n >= 250);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(dups, 0);
    CU_ASSERT_EQUAL(unknown, 0);
    /* the check above can fail */
    CU_ASSERT(!path_known("zero_optimization.no_such_key"));
    CU_ASSERT(!path_known("zero_optimization.offload_optimizer.devise"));
    CU_ASSERT(!path_known("no_such_top_level_key"));
    CU_ASSERT(!path_known("train_batch_size.below_a_leaf"));
    CU_ASSERT(!path_known("scheduler.params.no_such_param"));
    CU_ASSERT(path_known("zero_optimization.offload_optimizer.device"));

    /* a stream that cannot be written is an error */
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        CU_ASSERT_EQUAL(zinc_config_list_keys(full), ZINC_ERR_IO);
        fclose(full);
    }
    CU_ASSERT_EQUAL(zinc_config_list_keys(NULL), ZINC_ERR_INVALID_ARG);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("config", NULL, NULL);
    if (!s || !CU_add_test(s, "invalid cases", test_invalid_cases) ||
        !CU_add_test(s, "valid cases", test_valid_cases) || !CU_add_test(s, "defaults", test_defaults) ||
        !CU_add_test(s, "zero shorthand and overlap_comm", test_zero_shorthand_and_overlap) ||
        !CU_add_test(s, "overrides", test_overrides) || !CU_add_test(s, "integral reals", test_integral_reals) ||
        !CU_add_test(s, "auto", test_auto) || !CU_add_test(s, "batch rule dp 1..4", test_batch_rule) ||
        !CU_add_test(s, "resolve re-run", test_resolve_rerun) || !CU_add_test(s, "dump", test_dump) ||
        !CU_add_test(s, "errors and warnings", test_errors_and_warnings) ||
        !CU_add_test(s, "integer bounds", test_int_bounds) ||
        !CU_add_test(s, "override blame", test_override_blame) ||
        !CU_add_test(s, "honest keys", test_honest_keys) ||
        !CU_add_test(s, "elasticity", test_elasticity) ||
        !CU_add_test(s, "tensor parallel layout", test_tensor_parallel) ||
        !CU_add_test(s, "pipeline layout", test_pipeline_layout) ||
        !CU_add_test(s, "key reference", test_list_keys)) {
        CU_cleanup_registry();
        return 1;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
