/* test_data.c - the token-shard loader: sample contents, the seeded order,
 * DP slicing, resume, every open error, and the byte tokenizer. Shards are
 * written into a fresh temporary directory that is removed at the end. */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/data.h"

static char g_dir[256];

/* Returns g_dir/name in a static rotating buffer. */
static const char *tpath(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", g_dir, name);
    return b;
}

static void write_raw(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_FATAL(fwrite(buf, 1, n, f) == n);
    fclose(f);
}

static void mkdir_p(const char *path) { CU_ASSERT_FATAL(mkdir(path, 0755) == 0 || errno == EEXIST); }

/* A 1000-token stream, token i == i, over shards of 300, 0, 400 and 300. */
#define N_STREAM 1000
static const char *g_stream_glob;

static void make_stream_shards(void)
{
    static uint16_t toks[N_STREAM];
    for (int i = 0; i < N_STREAM; i++) toks[i] = (uint16_t)i;
    /* Names sort in stream order only through glob's sorting. */
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("s_2.bin"), toks + 300, 400) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("s_0.bin"), toks, 300) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("s_3.bin"), toks + 700, 300) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("s_1.bin"), toks, 0) == ZINC_OK);
    g_stream_glob = strdup(tpath("s_*.bin"));
}

static zinc_data *open_stream(int seq_len, uint64_t seed)
{
    zinc_data *d = NULL;
    const char *p[] = {g_stream_glob};
    zinc_status st = zinc_data_open(p, 1, seq_len, 50257, seed, &d);
    if (st != ZINC_OK) fprintf(stderr, "open: %s\n", zinc_last_error());
    CU_ASSERT_FATAL(st == ZINC_OK);
    return d;
}

/* Sample ids of global samples first..first+n-1 (token i == i, so the
 * sample id is inputs[0] / T), checking every token of each sample. */
static void get_ids(const zinc_data *d, int T, uint64_t first, int n, uint64_t *ids)
{
    int32_t *in = malloc(sizeof *in * (size_t)n * (size_t)T);
    int32_t *tg = malloc(sizeof *tg * (size_t)n * (size_t)T);
    CU_ASSERT_FATAL(zinc_data_get(d, first, n, in, tg) == ZINC_OK);
    for (int b = 0; b < n; b++) {
        int32_t s0 = in[(size_t)b * T];
        CU_ASSERT(s0 % T == 0);
        bool ok = true;
        for (int j = 0; j < T; j++) {
            ok &= in[(size_t)b * T + j] == s0 + j;
            ok &= tg[(size_t)b * T + j] == s0 + j + 1;
        }
        CU_ASSERT(ok);
        ids[b] = (uint64_t)(s0 / T);
    }
    free(in);
    free(tg);
}

static void test_counts_and_contents(void)
{
    const int T = 16;
    zinc_data *d = open_stream(T, 1);
    CU_ASSERT_EQUAL(zinc_data_n_tokens(d), N_STREAM);
    CU_ASSERT_EQUAL(zinc_data_n_samples(d), (N_STREAM - 1) / T); /* 62 */
    uint64_t n = zinc_data_n_samples(d);
    uint64_t *ids = malloc(n * sizeof *ids);
    get_ids(d, T, 0, (int)n, ids); /* crosses every shard boundary somewhere */
    free(ids);
    /* seq_len that uses every token: 999 / 999 = 1 sample = the whole stream. */
    zinc_data_close(d);
    d = open_stream(N_STREAM - 1, 7);
    CU_ASSERT_EQUAL(zinc_data_n_samples(d), 1);
    uint64_t id;
    get_ids(d, N_STREAM - 1, 5, 1, &id);
    CU_ASSERT_EQUAL(id, 0);
    zinc_data_close(d);
    CU_ASSERT(zinc_data_get(NULL, 0, 1, NULL, NULL) == ZINC_ERR_INVALID_ARG);
    zinc_data_close(NULL);
}

static bool is_perm(const uint64_t *ids, uint64_t n)
{
    char *seen = calloc(n, 1);
    bool ok = true;
    for (uint64_t i = 0; i < n; i++) {
        if (ids[i] >= n || seen[ids[i]]) ok = false;
        else seen[ids[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_permutation_per_epoch(void)
{
    const int T = 8;
    zinc_data *d = open_stream(T, 42);
    uint64_t n = zinc_data_n_samples(d); /* 124 */
    uint64_t *e0 = malloc(n * sizeof *e0), *e1 = malloc(n * sizeof *e1),
             *e2 = malloc(n * sizeof *e2);
    get_ids(d, T, 0, (int)n, e0);
    get_ids(d, T, n, (int)n, e1);
    get_ids(d, T, 2 * n, (int)n, e2);
    CU_ASSERT(is_perm(e0, n));
    CU_ASSERT(is_perm(e1, n));
    CU_ASSERT(is_perm(e2, n));
    CU_ASSERT(memcmp(e0, e1, n * sizeof *e0) != 0);
    CU_ASSERT(memcmp(e1, e2, n * sizeof *e0) != 0);
    /* Shuffled, not the identity. */
    uint64_t fixed = 0;
    for (uint64_t i = 0; i < n; i++) fixed += e0[i] == i;
    CU_ASSERT(fixed < n / 4);
    /* Going back to epoch 0 after the cache moved on gives the same order,
     * and one get spanning the epoch boundary agrees with the parts. */
    uint64_t again[10];
    get_ids(d, T, n - 5, 10, again);
    CU_ASSERT(memcmp(again, e0 + n - 5, 5 * sizeof *again) == 0);
    CU_ASSERT(memcmp(again + 5, e1, 5 * sizeof *again) == 0);
    zinc_data_close(d);
    free(e0);
    free(e1);
    free(e2);
}

static void test_determinism(void)
{
    const int T = 8;
    zinc_data *a = open_stream(T, 1234), *b = open_stream(T, 1234), *c = open_stream(T, 1235);
    uint64_t n = 3 * zinc_data_n_samples(a);
    uint64_t *ia = malloc(n * sizeof *ia), *ib = malloc(n * sizeof *ib),
             *ic = malloc(n * sizeof *ic);
    get_ids(a, T, 0, (int)n, ia);
    /* b reads the same range in odd-sized pieces, out of order. */
    for (uint64_t k = n; k > 0;) {
        uint64_t len = k >= 7 ? 7 : k;
        k -= len;
        get_ids(b, T, k, (int)len, ib + k);
    }
    get_ids(c, T, 0, (int)n, ic);
    CU_ASSERT(memcmp(ia, ib, n * sizeof *ia) == 0);
    CU_ASSERT(memcmp(ia, ic, n * sizeof *ia) != 0);
    zinc_data_close(a);
    zinc_data_close(b);
    zinc_data_close(c);
    free(ia);
    free(ib);
    free(ic);
}

/* A global batch of B samples at step s is samples s*B .. s*B+B-1; DP rank r
 * of dp takes its contiguous B/dp slice. The concatenated slices must equal
 * the single-rank batch, token for token. */
static void test_dp_slices(void)
{
    const int T = 8, B = 12;
    zinc_data *d = open_stream(T, 99);
    size_t batch = (size_t)B * T;
    int32_t *ref_in = malloc(batch * sizeof *ref_in), *ref_tg = malloc(batch * sizeof *ref_tg);
    int32_t *in = malloc(batch * sizeof *in), *tg = malloc(batch * sizeof *tg);
    for (uint64_t step = 0; step < 25; step += 4) { /* 25 * 12 > 2 epochs of 124 */
        CU_ASSERT_FATAL(zinc_data_get(d, step * B, B, ref_in, ref_tg) == ZINC_OK);
        for (int dp = 1; dp <= 4; dp++) {
            int micro = B / dp;
            memset(in, 0xff, batch * sizeof *in);
            memset(tg, 0xff, batch * sizeof *tg);
            for (int r = 0; r < dp; r++) {
                size_t off = (size_t)r * micro * T;
                CU_ASSERT(zinc_data_get(d, step * B + (uint64_t)r * micro, micro, in + off,
                                        tg + off) == ZINC_OK);
            }
            CU_ASSERT(memcmp(in, ref_in, batch * sizeof *in) == 0);
            CU_ASSERT(memcmp(tg, ref_tg, batch * sizeof *tg) == 0);
        }
    }
    zinc_data_close(d);
    free(ref_in);
    free(ref_tg);
    free(in);
    free(tg);
}

static void test_resume(void)
{
    const int T = 16;
    zinc_data *d = open_stream(T, 5);
    uint64_t n = zinc_data_n_samples(d);
    uint64_t k = 3 * n - 4; /* resume point just before an epoch boundary */
    uint64_t before[10], after[10];
    uint64_t warm[3];
    get_ids(d, T, 0, 3, warm); /* the loader has been used before saving */
    get_ids(d, T, k, 10, before);
    zinc_data_close(d);
    d = open_stream(T, 5);
    get_ids(d, T, k, 10, after);
    CU_ASSERT(memcmp(before, after, sizeof before) == 0);
    zinc_data_close(d);
}

static void test_glob_and_list_order(void)
{
    /* Explicit list order is kept; a glob's matches are sorted. */
    uint16_t a[5] = {1, 2, 3, 4, 5}, b[5] = {6, 7, 8, 9, 10};
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("ord_a.bin"), a, 5) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("ord_b.bin"), b, 5) == ZINC_OK);
    const char *p1[] = {tpath("ord_b.bin"), tpath("ord_a.bin")};
    zinc_data *d = NULL;
    CU_ASSERT_FATAL(zinc_data_open(p1, 2, 9, 11, 0, &d) == ZINC_OK);
    int32_t in[9], tg[9];
    CU_ASSERT(zinc_data_get(d, 0, 1, in, tg) == ZINC_OK);
    CU_ASSERT(in[0] == 6 && in[4] == 10 && in[5] == 1 && tg[8] == 5);
    zinc_data_close(d);
    const char *p2[] = {tpath("ord_?.bin")};
    CU_ASSERT_FATAL(zinc_data_open(p2, 1, 9, 11, 0, &d) == ZINC_OK);
    CU_ASSERT(zinc_data_get(d, 0, 1, in, tg) == ZINC_OK);
    CU_ASSERT(in[0] == 1 && in[5] == 6 && tg[8] == 10);
    zinc_data_close(d);
    /* A file whose name merely looks like a pattern opens by that name. */
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("lit[1].bin"), b, 5) == ZINC_OK);
    const char *p3[] = {tpath("lit[1].bin")};
    d = NULL;
    CU_ASSERT(zinc_data_open(p3, 1, 4, 11, 0, &d) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_data_n_tokens(d), 5);
    zinc_data_close(d);
}

/* Opens path and expects status want with every needle in the detail. */
static void expect_open_error(const char *path, int seq_len, int vocab, zinc_status want,
                              const char *n1, const char *n2)
{
    zinc_data *d = (zinc_data *)&d; /* must come back NULL */
    const char *p[] = {path};
    zinc_status st = zinc_data_open(p, 1, seq_len, vocab, 0, &d);
    const char *msg = zinc_last_error();
    CU_ASSERT_EQUAL(st, want);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, n1));
    if (n2) CU_ASSERT_PTR_NOT_NULL(strstr(msg, n2));
    if (st != want || !strstr(msg, n1) || (n2 && !strstr(msg, n2)))
        fprintf(stderr, "\n  %s -> %s: %s\n", path, zinc_status_str(st), msg);
}

static void test_errors(void)
{
    uint16_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = (uint16_t)i;
    /* Missing file and a glob without matches. */
    expect_open_error(tpath("nope.bin"), 4, 100, ZINC_ERR_IO, "nope.bin", NULL);
    expect_open_error(tpath("nope_*.bin"), 4, 100, ZINC_ERR_IO, "nope_*.bin", NULL);
    /* Header shorter than 1024 bytes. */
    write_raw(tpath("tiny.bin"), toks, 100);
    expect_open_error(tpath("tiny.bin"), 4, 100, ZINC_ERR_CORRUPT, "tiny.bin", "100 bytes");
    /* Bad magic. */
    int32_t hdr[256] = {0};
    hdr[0] = 12345;
    hdr[1] = 1;
    hdr[2] = 0;
    write_raw(tpath("magic.bin"), hdr, sizeof hdr);
    expect_open_error(tpath("magic.bin"), 4, 100, ZINC_ERR_CORRUPT, "magic.bin", "12345");
    /* Unknown version. */
    hdr[0] = ZINC_SHARD_MAGIC;
    hdr[1] = 7;
    write_raw(tpath("version.bin"), hdr, sizeof hdr);
    expect_open_error(tpath("version.bin"), 4, 100, ZINC_ERR_UNSUPPORTED, "version.bin", "7");
    /* Truncated and padded: header says 64 tokens. */
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("good.bin"), toks, 64) == ZINC_OK);
    CU_ASSERT_FATAL(truncate(tpath("good.bin"), 1024 + 100) == 0);
    expect_open_error(tpath("good.bin"), 4, 100, ZINC_ERR_CORRUPT, "good.bin", "truncated");
    CU_ASSERT_FATAL(truncate(tpath("good.bin"), 1024 + 130) == 0);
    expect_open_error(tpath("good.bin"), 4, 100, ZINC_ERR_CORRUPT, "1154 bytes", "padded");
    /* Token >= vocab: tokens 0..63 with vocab 50 fail at index 50. */
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("vocab.bin"), toks, 64) == ZINC_OK);
    expect_open_error(tpath("vocab.bin"), 4, 50, ZINC_ERR_CORRUPT, "vocab.bin", "index 50");
    /* ... and vocab 64 is fine. */
    zinc_data *d = NULL;
    const char *p[] = {tpath("vocab.bin")};
    CU_ASSERT(zinc_data_open(p, 1, 4, 64, 0, &d) == ZINC_OK);
    zinc_data_close(d);
    /* Too few tokens for one sample: 64 tokens, seq_len 64 needs 65. */
    expect_open_error(tpath("vocab.bin"), 64, 100, ZINC_ERR_INVALID_ARG, "vocab.bin", "64 tokens");
    /* Error in the second of two shards names the second. */
    const char *two[] = {tpath("vocab.bin"), tpath("magic.bin")};
    d = NULL;
    CU_ASSERT(zinc_data_open(two, 2, 4, 100, 0, &d) == ZINC_ERR_CORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "magic.bin"));
    CU_ASSERT_PTR_NULL(d);
    /* Bad arguments. */
    CU_ASSERT(zinc_data_open(p, 1, 0, 100, 0, &d) == ZINC_ERR_INVALID_ARG);
    CU_ASSERT(zinc_data_open(p, 1, 4, 0, 0, &d) == ZINC_ERR_INVALID_ARG);
    CU_ASSERT(zinc_data_open(p, 0, 4, 100, 0, &d) == ZINC_ERR_INVALID_ARG);
    /* Writing into a missing directory names the file. */
    CU_ASSERT(zinc_data_write_shard(tpath("no/such/dir.bin"), toks, 4) == ZINC_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "no/such/dir.bin"));
}

/* Reads a whole file; *n gets its size. */
static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void test_text_tokenizer(void)
{
    char *root = strdup(tpath("txt")); /* tpath's buffers rotate */
    mkdir_p(root);
    mkdir_p(tpath("txt/sub"));
    mkdir_p(tpath("txt/.git"));
    mkdir_p(tpath("txt/build-asan"));
    unsigned char hi[3] = {0x00, 0x80, 0xff}; /* every byte value maps to itself */
    write_raw(tpath("txt/b.h"), "int b;\n", 7);
    write_raw(tpath("txt/a.c"), "int a;\n", 7);
    write_raw(tpath("txt/sub/c.c"), hi, 3);
    write_raw(tpath("txt/z.txt"), "zzz", 3);
    write_raw(tpath("txt/.hidden.c"), "hidden", 6);
    write_raw(tpath("txt/.git/x.c"), "git", 3);
    write_raw(tpath("txt/build-asan/y.c"), "build", 5);
    write_raw(tpath("extra.md"), "# md", 4);

    /* Filtered walk + an explicitly named file (always taken). */
    const char *in[] = {root, tpath("extra.md")};
    uint64_t n = 0;
    zinc_status st = zinc_data_write_shard_from_text(in, 2, ".c, .h", NULL, tpath("text.bin"), &n);
    CU_ASSERT_FATAL(st == ZINC_OK);
    const unsigned char want[] = "int a;\nint b;\n\x00\x80\xff# md";
    size_t want_n = sizeof want - 1;
    CU_ASSERT_EQUAL(n, want_n);
    size_t sz = 0;
    unsigned char *raw = slurp(tpath("text.bin"), &sz);
    CU_ASSERT_FATAL(raw != NULL);
    CU_ASSERT_EQUAL(sz, 1024 + 2 * want_n);
    const int32_t *h = (const int32_t *)raw;
    CU_ASSERT(h[0] == ZINC_SHARD_MAGIC && h[1] == ZINC_SHARD_VERSION && h[2] == (int32_t)want_n);
    const uint16_t *t = (const uint16_t *)(raw + 1024);
    bool ok = sz == 1024 + 2 * want_n;
    for (size_t i = 0; ok && i < want_n; i++) ok = t[i] == want[i];
    CU_ASSERT(ok);
    free(raw);
    CU_ASSERT(access(tpath("text.bin.tmp"), F_OK) != 0); /* renamed, not left behind */

    /* The shard opens with vocab 256. */
    zinc_data *d = NULL;
    const char *p[] = {tpath("text.bin")};
    CU_ASSERT(zinc_data_open(p, 1, 4, 256, 0, &d) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_data_n_tokens(d), want_n);
    zinc_data_close(d);

    /* No filter: z.txt joins, hidden and build* entries still do not. Writing
     * the output inside the walked tree never tokenizes the output itself. */
    const char *in2[] = {root};
    CU_ASSERT_FATAL(zinc_data_write_shard_from_text(in2, 1, NULL, NULL, tpath("txt/all.bin"), &n) ==
                    ZINC_OK);
    CU_ASSERT_EQUAL(n, 7 + 7 + 3 + 3);
    CU_ASSERT_FATAL(zinc_data_write_shard_from_text(in2, 1, NULL, NULL, tpath("txt/all.bin"), &n) ==
                    ZINC_OK);
    CU_ASSERT_EQUAL(n, 7 + 7 + 3 + 3);

    /* Errors: a missing input, and nothing matching the filter. */
    const char *bad[] = {tpath("txt/missing.c")};
    CU_ASSERT(zinc_data_write_shard_from_text(bad, 1, NULL, NULL, tpath("x.bin"), NULL) == ZINC_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "missing.c"));
    CU_ASSERT(zinc_data_write_shard_from_text(in2, 1, ".rs", NULL, tpath("x.bin"), NULL) == ZINC_ERR_IO);
    CU_ASSERT(access(tpath("x.bin"), F_OK) != 0);
    free(root);
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* 32-bit shards (version 2, llm.c's Llama-3 format): ids past 65535, mixed with 16-bit
 * shards in one stream; the header's version decides the width; info reports it. */
static void test_shard32(void)
{
    static uint32_t t32[300];
    static uint16_t t16[200];
    for (int i = 0; i < 300; i++) t32[i] = 128000u + (uint32_t)i;
    for (int i = 0; i < 200; i++) t16[i] = (uint16_t)(60000 + i);
    CU_ASSERT_FATAL(zinc_data_write_shard32(tpath("w_0.bin"), t32, 300) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("w_1.bin"), t16, 200) == ZINC_OK);
    size_t n = 0;
    unsigned char *raw = slurp(tpath("w_0.bin"), &n);
    CU_ASSERT_FATAL(raw != NULL);
    int32_t hdr[3];
    memcpy(hdr, raw, sizeof hdr);
    CU_ASSERT(n == 1024 + 4 * 300 && hdr[0] == ZINC_SHARD_MAGIC && hdr[1] == 2 && hdr[2] == 300);
    uint32_t t5;
    memcpy(&t5, raw + 1024 + 4 * 5, 4);
    CU_ASSERT(t5 == 128005u);
    free(raw);
    zinc_shard_info in;
    CU_ASSERT_FATAL(zinc_data_shard_info(tpath("w_0.bin"), &in) == ZINC_OK);
    CU_ASSERT(in.version == 2 && in.token_bytes == 4 && in.n_tokens == 300 && in.lo == 128000u && in.hi == 128299u);
    CU_ASSERT_FATAL(zinc_data_shard_info(tpath("w_1.bin"), &in) == ZINC_OK);
    CU_ASSERT(in.version == 1 && in.token_bytes == 2 && in.lo == 60000u && in.hi == 60199u);
    /* one stream over both: samples of T = 10 (no shuffling needed to check: sample ids
     * come back through the tokens) */
    const char *p[] = {tpath("w_*.bin")};
    zinc_data *d = NULL;
    CU_ASSERT_FATAL(zinc_data_open(p, 1, 10, 128300, 3, &d) == ZINC_OK);
    CU_ASSERT(zinc_data_n_tokens(d) == 500);
    int32_t inp[49 * 10], tgt[49 * 10];
    CU_ASSERT_FATAL(zinc_data_get(d, 0, 49, inp, tgt) == ZINC_OK);
    int seen_hi = 0, seen_lo = 0, ok = 1;
    for (int i = 0; i < 49 * 10; i++) {
        seen_hi |= inp[i] >= 128000, seen_lo |= inp[i] >= 60000 && inp[i] < 60200;
        ok &= (inp[i] >= 128000 && inp[i] < 128300) || (inp[i] >= 60000 && inp[i] < 60200);
    }
    CU_ASSERT(ok && seen_hi && seen_lo);
    zinc_data_close(d);
    /* the vocabulary check reads 32-bit ids: 128000 + 299 >= 128200 at index 200 */
    expect_open_error(tpath("w_0.bin"), 4, 128200, ZINC_ERR_CORRUPT, "w_0.bin", "index 200");
    /* a version-2 header over 16-bit data is a size mismatch, named */
    int32_t h2[256] = {ZINC_SHARD_MAGIC, 2, 100};
    unsigned char *b = calloc(1, 1024 + 200);
    memcpy(b, h2, sizeof h2);
    write_raw(tpath("v2short.bin"), b, 1024 + 200);
    free(b);
    expect_open_error(tpath("v2short.bin"), 4, 100, ZINC_ERR_CORRUPT, "v2short.bin", "truncated");
}

/* Version-3 shards (documents with loss masks) beside a plain one: targets never cross a
 * document and honour the loss flags, positions restart per document, and the target
 * count is what a reference built from document ids (not flags) says. */
static void test_docs(void)
{
    enum { ND = 400, NP = 100, NT = ND + NP, T = 16 };
    static uint32_t tok[NT];
    static uint8_t fl[ND];
    static int doc[NT], loss[NT], dstart[NT];
    uint32_t r = 12345;
    int cur = -1, left = 0;
    for (int i = 0; i < NT; i++) {
        tok[i] = 1000u + (uint32_t)i;
        if (i == ND) left = 0; /* the plain shard: one document */
        if (left == 0) {
            cur++;
            r = r * 1103515245u + 12345u;
            left = i < ND ? 1 + (int)((r >> 16) % 25) : NP;
            dstart[i] = i;
        } else {
            dstart[i] = dstart[i - 1];
        }
        left--;
        doc[i] = cur;
        r = r * 1103515245u + 12345u;
        loss[i] = i >= ND || ((r >> 16) & 3) != 0;
        if (i < ND) fl[i] = (uint8_t)((dstart[i] == i ? ZINC_TOK_DOC : 0) | (loss[i] ? ZINC_TOK_LOSS : 0));
    }
    CU_ASSERT_FATAL(zinc_data_write_docs(tpath("d_0.bin"), tok, fl, ND, 2, 32) == ZINC_OK);
    static uint16_t t16[NP];
    for (int i = 0; i < NP; i++) t16[i] = (uint16_t)tok[ND + i];
    CU_ASSERT_FATAL(zinc_data_write_shard(tpath("d_1.bin"), t16, NP) == ZINC_OK);
    zinc_shard_info in;
    CU_ASSERT_FATAL(zinc_data_shard_info(tpath("d_0.bin"), &in) == ZINC_OK);
    int n_docs0 = 0, n_tg0 = 0;
    for (int i = 0; i < ND; i++) n_docs0 += dstart[i] == i, n_tg0 += loss[i] && dstart[i] != i;
    CU_ASSERT(in.version == 3 && in.token_bytes == 2 && in.block == 32 && in.n_tokens == ND &&
              in.n_docs == (uint64_t)n_docs0 && in.n_targets == (uint64_t)n_tg0 && in.file_bytes == 1024 + 3 * ND);

    const char *p[] = {tpath("d_*.bin")};
    zinc_data *d = NULL;
    CU_ASSERT_FATAL(zinc_data_open(p, 1, T, 2000, 7, &d) == ZINC_OK);
    CU_ASSERT(zinc_data_has_docs(d));
    const int n = (int)zinc_data_n_samples(d);
    int32_t *inp = malloc(sizeof(int32_t) * n * T), *tgt = malloc(sizeof(int32_t) * n * T),
            *pos = malloc(sizeof(int32_t) * n * T);
    CU_ASSERT_FATAL(inp && tgt && pos);
    CU_ASSERT_FATAL(zinc_data_get_docs(d, 0, n, inp, tgt, pos) == ZINC_OK);
    uint64_t want = 0;
    int bad = 0, masked = 0, restarted = 0;
    for (int b = 0; b < n; b++) {
        const int g0 = inp[b * T] - 1000;
        for (int t = 0; t < T; t++) {
            const int g = g0 + t, k = b * T + t;
            const int same = doc[g + 1] == doc[g];
            const int32_t wt = same && loss[g + 1] ? (int32_t)tok[g + 1] : -1;
            const int ws = dstart[g] > g0 ? dstart[g] : g0;
            bad += inp[k] != (int32_t)tok[g] || tgt[k] != wt || pos[k] != g - ws;
            want += wt >= 0;
            masked += wt < 0;
            restarted += t > 0 && pos[k] == 0;
        }
    }
    CU_ASSERT(bad == 0);
    CU_ASSERT(masked > 0 && restarted > 0); /* the test exercises both */
    uint64_t cnt = 0;
    CU_ASSERT(zinc_data_count_targets(d, 0, (uint64_t)n, &cnt) == ZINC_OK && cnt == want);
    /* the plain entry point returns the same masked targets */
    int32_t *tgt2 = malloc(sizeof(int32_t) * n * T);
    CU_ASSERT_FATAL(tgt2 && zinc_data_get(d, 0, n, inp, tgt2) == ZINC_OK);
    CU_ASSERT(memcmp(tgt, tgt2, sizeof(int32_t) * n * T) == 0);
    zinc_data_close(d);
    free(tgt2);
    /* without documents: positions 0..T-1, every target counted */
    const char *pp[] = {tpath("d_1.bin")};
    CU_ASSERT_FATAL(zinc_data_open(pp, 1, T, 2000, 7, &d) == ZINC_OK);
    CU_ASSERT(!zinc_data_has_docs(d));
    CU_ASSERT_FATAL(zinc_data_get_docs(d, 0, 2, inp, tgt, pos) == ZINC_OK);
    bad = 0;
    for (int k = 0; k < 2 * T; k++) bad += pos[k] != k % T || tgt[k] < 0;
    CU_ASSERT(bad == 0);
    CU_ASSERT(zinc_data_count_targets(d, 3, 5, &cnt) == ZINC_OK && cnt == 5 * T);
    zinc_data_close(d);
    free(inp);
    free(tgt);
    free(pos);

    /* corrupt version-3 files are named */
    size_t nb = 0;
    unsigned char *raw = slurp(tpath("d_0.bin"), &nb);
    CU_ASSERT_FATAL(raw != NULL);
    write_raw(tpath("dshort.bin"), raw, nb - 1);
    expect_open_error(tpath("dshort.bin"), 4, 2000, ZINC_ERR_CORRUPT, "dshort.bin", "truncated");
    raw[1024 + 2 * ND + 5] |= 0x80;
    write_raw(tpath("dbits.bin"), raw, nb);
    expect_open_error(tpath("dbits.bin"), 4, 2000, ZINC_ERR_CORRUPT, "dbits.bin", "unknown bits");
    raw[1024 + 2 * ND + 5] &= 0x7f;
    raw[1024 + 2 * ND] &= (unsigned char)~ZINC_TOK_DOC;
    write_raw(tpath("dfirst.bin"), raw, nb);
    expect_open_error(tpath("dfirst.bin"), 4, 2000, ZINC_ERR_CORRUPT, "dfirst.bin", "starts no document");
    int32_t h3 = 3;
    memcpy(raw + 12, &h3, 4); /* 3-byte tokens */
    write_raw(tpath("dwidth.bin"), raw, nb);
    expect_open_error(tpath("dwidth.bin"), 4, 2000, ZINC_ERR_CORRUPT, "dwidth.bin", "corrupt header");
    free(raw);
    /* the writer refuses flags that cannot be read back */
    uint8_t f1[2] = {ZINC_TOK_LOSS, ZINC_TOK_LOSS};
    CU_ASSERT(zinc_data_write_docs(tpath("dw.bin"), tok, f1, 2, 2, 0) == ZINC_ERR_INVALID_ARG);
    uint32_t big[1] = {70000};
    uint8_t f2[1] = {ZINC_TOK_DOC};
    CU_ASSERT(zinc_data_write_docs(tpath("dw.bin"), big, f2, 1, 2, 0) == ZINC_ERR_INVALID_ARG);
    CU_ASSERT(access(tpath("dw.bin"), F_OK) != 0);
}

/* a user's batch source: sample k's token t is (k * 7 + t) % 11, target -1 every third
 * position when masked; token 99 (outside a vocabulary of 16) at sample 5 when bad */
typedef struct src_user {
    int bad, calls;
    uint64_t max_index; /* the largest index get was asked for */
} src_user;

static zinc_status src_get(void *u, uint64_t first, int n, int T, int32_t *in, int32_t *tg)
{
    src_user *su = u;
    su->calls++;
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++) {
            uint64_t k = first + (uint64_t)b;
            if (k > su->max_index) su->max_index = k;
            in[b * T + t] = (int32_t)((k * 7 + (uint64_t)t) % 11);
            tg[b * T + t] = t % 3 == 2 ? -1 : (int32_t)((k * 7 + (uint64_t)t + 1) % 11);
            if (su->bad && k == 5 && t == 1) in[b * T + t] = 99;
        }
    return ZINC_OK;
}

static void test_source(void)
{
    enum { T = 6 };
    src_user u = {0, 0, 0};
    zinc_batch_source src = {.get = src_get, .n_samples = 40, .masked = 1, .user = &u};
    zinc_data *d = NULL;
    CU_ASSERT_EQUAL_FATAL(zinc_data_from_source(&src, T, 16, &d), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_data_n_samples(d), 40);
    CU_ASSERT(!zinc_data_has_docs(d)); /* masks, but positions run 0..T-1 */
    CU_ASSERT(zinc_data_has_masks(d));
    int32_t in[3 * T], tg[3 * T], pos[3 * T];
    CU_ASSERT_EQUAL(zinc_data_get_docs(d, 9, 3, in, tg, pos), ZINC_OK);
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < T; t++) {
            CU_ASSERT_EQUAL(in[b * T + t], ((9 + b) * 7 + t) % 11);
            CU_ASSERT_EQUAL(tg[b * T + t], t % 3 == 2 ? -1 : ((9 + b) * 7 + t + 1) % 11);
            CU_ASSERT_EQUAL(pos[b * T + t], t);
        }
    uint64_t c = 0;
    CU_ASSERT_EQUAL(zinc_data_count_targets(d, 0, 4, &c), ZINC_OK);
    CU_ASSERT_EQUAL(c, 4 * 4); /* 4 of every 6 positions */
    /* past the epoch: global 79..81 are samples 39, 0, 1, in two calls */
    u.calls = 0;
    u.max_index = 0;
    CU_ASSERT_EQUAL(zinc_data_get(d, 79, 3, in, tg), ZINC_OK);
    CU_ASSERT_EQUAL(u.calls, 2);
    CU_ASSERT_EQUAL(u.max_index, 39);
    for (int b = 0; b < 3; b++) CU_ASSERT_EQUAL(in[b * T], (int)(((uint64_t)(79 + b) % 40) * 7 % 11));
    zinc_data_close(d);
    /* an id outside the vocabulary names the sample; -1 targets need masked */
    u.bad = 1;
    CU_ASSERT_EQUAL_FATAL(zinc_data_from_source(&src, T, 16, &d), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_data_get(d, 4, 2, in, tg), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "sample 5, position 1: input 99"));
    zinc_data_close(d);
    u.bad = 0;
    src.masked = 0;
    CU_ASSERT_EQUAL_FATAL(zinc_data_from_source(&src, T, 16, &d), ZINC_OK);
    CU_ASSERT(!zinc_data_has_masks(d));
    CU_ASSERT_EQUAL(zinc_data_get(d, 0, 1, in, tg), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "-1 needs masked"));
    zinc_data_close(d);
    src.n_samples = 0;
    CU_ASSERT_EQUAL(zinc_data_from_source(&src, T, 16, &d), ZINC_ERR_INVALID_ARG);
}

/* zinc_data_set_progress: 0 first, then up to the bytes of the text, for both tokenizers */
typedef struct prog_seen {
    uint64_t first, last, total;
    int calls;
} prog_seen;

static void prog_note(uint64_t done, uint64_t total, void *u)
{
    prog_seen *p = u;
    if (p->calls++ == 0) p->first = done;
    if (done < p->last) p->first = UINT64_MAX; /* never backwards */
    p->last = done;
    p->total = total;
}

static void test_text_progress(void)
{
    char a[700], b[700], out[700];
    snprintf(a, sizeof a, "%s/prog_a.txt", g_dir);
    snprintf(b, sizeof b, "%s/prog_b.txt", g_dir);
    snprintf(out, sizeof out, "%s/prog.bin", g_dir);
    FILE *f = fopen(a, "w");
    for (int i = 0; i < 3000; i++) fputs("progress ", f);
    fclose(f);
    f = fopen(b, "w");
    fputs("a second file", f);
    fclose(f);
    const char *in[] = {a, b};
    prog_seen p = {0, 0, 0, 0};
    zinc_data_set_progress(prog_note, &p);
    uint64_t n = 0;
    CU_ASSERT_EQUAL(zinc_data_write_shard_from_text(in, 2, NULL, NULL, out, &n), ZINC_OK);
    zinc_data_set_progress(NULL, NULL);
    CU_ASSERT_EQUAL(p.first, 0);
    CU_ASSERT(p.calls >= 3);
    CU_ASSERT_EQUAL(p.total, 3000 * 9 + 13);
    CU_ASSERT_EQUAL(p.last, p.total);
    CU_ASSERT_EQUAL(n, p.total); /* byte tokens */
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/zinc-test-data-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("data", NULL, NULL);
    CU_add_test(s, "make shards", make_stream_shards);
    CU_add_test(s, "counts and sample contents", test_counts_and_contents);
    CU_add_test(s, "permutation per epoch", test_permutation_per_epoch);
    CU_add_test(s, "determinism", test_determinism);
    CU_add_test(s, "dp slices equal the global batch", test_dp_slices);
    CU_add_test(s, "resume", test_resume);
    CU_add_test(s, "glob and list order", test_glob_and_list_order);
    CU_add_test(s, "open errors", test_errors);
    CU_add_test(s, "text tokenizer", test_text_tokenizer);
    CU_add_test(s, "32-bit shards", test_shard32);
    CU_add_test(s, "document shards with loss masks", test_docs);
    CU_add_test(s, "a user's batch source", test_source);
    CU_add_test(s, "text tokenization progress", test_text_progress);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_failures();
    CU_cleanup_registry();
    remove_tree(g_dir);
    return failures ? 1 : 0;
}
