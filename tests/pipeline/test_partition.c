/* test_partition.c - pipeline.partition (pipeline/partition.c) alone: "parameters" and
 * "type:REGEX" give the least largest part against an exhaustive search over every split
 * of small random stacks; every split is contiguous, non-empty and covers the stack;
 * "uniform" is DeepSpeed's partition_uniform; GPT-2-like stacks split as expected; bad
 * methods, regexes and stage counts are one line naming the key. */
#include <CUnit/Basic.h>

#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/log.h"
#include "zinc/pipeline.h"
#include "../unit.h"

static int valid(const int *b, int n, int parts)
{
    if (b[0] != 0 || b[parts] != n) return 0;
    for (int k = 0; k < parts; k++)
        if (b[k + 1] <= b[k]) return 0;
    return 1;
}

static long long max_part(const long long *w, const int *b, int parts)
{
    long long m = 0;
    for (int k = 0; k < parts; k++) {
        long long s = 0;
        for (int i = b[k]; i < b[k + 1]; i++) s += w[i];
        if (s > m) m = s;
    }
    return m;
}

/* The least largest part over every split of w[0..n) into `parts` non-empty runs. */
static long long brute(const long long *w, int n, int parts, int *b, int k)
{
    if (k == parts) return b[parts] == n ? max_part(w, b, parts) : -1;
    long long best = -1;
    int last = k == parts - 1 ? n : n - (parts - k - 1);
    for (int e = b[k] + 1; e <= last; e++) {
        if (k == parts - 1 && e != n) continue;
        b[k + 1] = e;
        long long v = brute(w, n, parts, b, k + 1);
        if (v >= 0 && (best < 0 || v < best)) best = v;
    }
    return best;
}

static unsigned g_seed = 12345;
static unsigned rnd(void)
{
    g_seed = g_seed * 1103515245u + 12345u;
    return g_seed >> 8;
}

static void test_balanced_is_optimal(void)
{
    static const char *types[] = {"embedding", "block", "mlp_block", "head"};
    int cases = 0;
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(rnd() % 10), parts = 1 + (int)(rnd() % (n < 5 ? n : 5));
        zinc_pp_layer_info L[10];
        long long wp[10], wt[10];
        int any = 0;
        for (int i = 0; i < n; i++) {
            L[i].type = types[rnd() % 4];
            /* zero-parameter layers and very uneven ones included */
            L[i].params = rnd() % 5 == 0 ? 0 : (long long)(rnd() % (trial % 2 ? 1000 : 10));
            wp[i] = L[i].params;
            wt[i] = strstr(L[i].type, "block") != NULL;
            any |= (int)wt[i];
        }
        int b[11], bb[11] = {0};
        CU_ASSERT_FATAL(zinc_pp_partition("parameters", L, n, parts, b) == ZINC_OK);
        CU_ASSERT(valid(b, n, parts));
        CU_ASSERT_EQUAL(max_part(wp, b, parts), brute(wp, n, parts, bb, 0));
        if (any) {
            CU_ASSERT_FATAL(zinc_pp_partition("type:BLOCK", L, n, parts, b) == ZINC_OK);
            CU_ASSERT(valid(b, n, parts));
            CU_ASSERT_EQUAL(max_part(wt, b, parts), brute(wt, n, parts, bb, 0));
        }
        cases++;
    }
    CU_ASSERT(cases == 400);
}

static void test_uniform(void)
{
    zinc_pp_layer_info L[64];
    for (int i = 0; i < 64; i++) L[i] = (zinc_pp_layer_info){"block", 7};
    for (int n = 1; n <= 64; n++)
        for (int parts = 1; parts <= n && parts <= 16; parts++) {
            int b[17];
            CU_ASSERT_FATAL(zinc_pp_partition("uniform", L, n, parts, b) == ZINC_OK);
            CU_ASSERT(valid(b, n, parts));
            /* DeepSpeed: chunk n / parts, the first n % parts parts one more */
            for (int k = 0; k < parts; k++) CU_ASSERT_EQUAL(b[k + 1] - b[k], n / parts + (k < n % parts));
        }
}

/* GPT-2 124M as zinc's layers: the embedding (wte + wpe), 12 blocks, the final LayerNorm
 * with the tied head. */
static void test_gpt2(void)
{
    zinc_pp_layer_info L[14];
    L[0] = (zinc_pp_layer_info){"embedding", 50304LL * 768 + 1024LL * 768};
    for (int i = 1; i <= 12; i++) L[i] = (zinc_pp_layer_info){"block", 7087872};
    L[13] = (zinc_pp_layer_info){"head", 1536};
    int b[5];
    /* by parameters at 2 stages: the 39.4 M embedding weighs as ~5.6 blocks */
    CU_ASSERT_FATAL(zinc_pp_partition("parameters", L, 14, 2, b) == ZINC_OK);
    printf("\n  gpt2 124M, 2 stages by parameters: [%d, %d) [%d, %d)\n", b[0], b[1], b[1], b[2]);
    CU_ASSERT(b[1] == 4); /* embedding + 3 blocks = 60.7 M | 9 blocks + head = 63.8 M */
    /* by blocks at 4 stages: 3 blocks each, the embedding with the first, the head with the last */
    CU_ASSERT_FATAL(zinc_pp_partition("type:^block$", L, 14, 4, b) == ZINC_OK);
    int want[5] = {0, 4, 7, 10, 14};
    for (int k = 0; k <= 4; k++) CU_ASSERT_EQUAL(b[k], want[k]);
    CU_ASSERT_FATAL(zinc_pp_partition("uniform", L, 14, 4, b) == ZINC_OK);
    int wu[5] = {0, 4, 8, 11, 14};
    for (int k = 0; k <= 4; k++) CU_ASSERT_EQUAL(b[k], wu[k]);
}

static void test_bad(void)
{
    zinc_pp_layer_info L[3] = {{"embedding", 10}, {"block", 10}, {"head", 1}};
    int b[8];
    static const struct {
        const char *method;
        int parts;
        const char *msg;
    } bad[] = {
        {"parameters", 4, "pipeline.stages 4: the model has 3 layers"},
        {"parameters", 0, "pipeline.stages 0"},
        {"params", 2, "pipeline.partition \"params\": expected \"parameters\", \"uniform\" or \"type:REGEX\""},
        {"type:transformer", 2, "matches no layer (the layer types: embedding, block, head)"},
        {"type:(", 2, "bad regular expression"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CU_ASSERT(zinc_pp_partition(bad[i].method, L, 3, bad[i].parts, b) == ZINC_ERR_INVALID_ARG);
        if (!strstr(zinc_last_error(), bad[i].msg)) fprintf(stderr, "\n  message: %s\n", zinc_last_error());
        CU_ASSERT(strstr(zinc_last_error(), bad[i].msg) != NULL);
    }
    L[1].params = -1;
    CU_ASSERT(zinc_pp_partition("parameters", L, 3, 2, b) == ZINC_ERR_INVALID_ARG);
}

int main(void)
{
    static const unit_case cases[] = {
        {"parameters and type:REGEX are optimal (exhaustive search)", test_balanced_is_optimal},
        {"uniform is DeepSpeed's", test_uniform},
        {"GPT-2 124M stacks", test_gpt2},
        {"bad methods, regexes, stage counts", test_bad},
    };
    return unit_run("pipeline partition", cases, sizeof cases / sizeof *cases, 1) ? 1 : 0;
}
