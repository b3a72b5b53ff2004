/* test_ckpt.c - checkpoints under 1..4 real ranks (tests/ckpt/mpi_ranks).
 *
 * Every test is collective: all ranks run the same tests in the same order. Element i of
 * tensor t at step s is a function val(t, i, s) exactly representable in f32, bf16 and
 * f16, so any rank can check any piece it loads, whoever saved it. Saves split tensors one
 * way (contiguous blocks, two pieces per rank, one tensor wholly on the last rank); loads
 * split them another (interleaved odd-sized ranges, or everything on rank 0). Corruption
 * cases damage a file on rank 0 between a save and a load and check that every rank gets
 * the same clear error, never a crash. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "../../checkpoint/ckpt_int.h"
#include "zinc/ckpt.h"
#include "zinc/comm.h"
#include "zinc/log.h"
#include "zinc/safetensors.h"

static zinc_comm *g_world;
static zinc_aio *g_aio;
static int g_rank, g_size;
static char g_dir[256]; /* shared temp dir (same path on every rank) */

/* ---- tensors and values ---------------------------------------------------------------- */

#define NT 6
static const zinc_ckpt_tensor g_tensors[NT] = {
    {"wte.weight", "master", ZINC_DTYPE_F32, 1, {1000003}, -1, 0},
    {"wte.weight", "param", ZINC_DTYPE_BF16, 1, {1000003}, -1, 0},
    {"h.0.attn.c_attn.weight", "exp_avg", ZINC_DTYPE_F32, 2, {321, 963}, 1, 0},
    {"h.0.ln_1.bias", "param", ZINC_DTYPE_F16, 1, {37}, -1, 0},
    {"scalar", "param", ZINC_DTYPE_F32, 0, {0}, -1, 0},
    {"empty", "param", ZINC_DTYPE_F32, 2, {0, 5}, -1, 0},
};

static int64_t numel(const zinc_ckpt_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* k/8 with |k| <= 125: exact in f32, bf16 (8 significant bits) and f16. */
static float val(int t, int64_t i, int step)
{
    return (float)((int)((i * 7 + t * 13 + step * 31) % 251) - 125) / 8.0f;
}

static void fill(void *buf, zinc_dtype dt, int t, int64_t off, int64_t n, int step)
{
    for (int64_t k = 0; k < n; k++) {
        float v = val(t, off + k, step);
        switch (dt) {
        case ZINC_DTYPE_BF16: ((uint16_t *)buf)[k] = zinc_f32_to_bf16(v); break;
        case ZINC_DTYPE_F16: ((uint16_t *)buf)[k] = zinc_f32_to_f16(v); break;
        default: ((float *)buf)[k] = v; break;
        }
    }
}

/* ---- layouts ----------------------------------------------------------------------------- */

typedef struct lay {
    zinc_ckpt_tensor t[NT];
    zinc_ckpt_piece p[4096];
    int np;
    zinc_ckpt_layout L;
} lay;

static void lay_add(lay *l, int t, int64_t off, int64_t n)
{
    zinc_ckpt_piece *p = &l->p[l->np++];
    memset(p, 0, sizeof *p); /* the whole-tensor box */
    p->tensor = t;
    p->offset = off;
    p->n = n;
    p->data = calloc((size_t)(n ? n : 1), zinc_dtype_size(l->t[t].dtype));
}

static void lay_done(lay *l)
{
    l->L = (zinc_ckpt_layout){l->t, NT, l->p, l->np, NULL, NULL};
}

static void lay_free(lay *l)
{
    for (int i = 0; i < l->np; i++) free(l->p[i].data);
    l->np = 0;
}

/* Save layout: each rank holds a contiguous block of every tensor as two pieces; tensor 2
 * lives wholly on the last rank. Data filled for step. */
static void lay_save(lay *l, int step)
{
    memcpy(l->t, g_tensors, sizeof l->t);
    l->np = 0;
    for (int t = 0; t < NT; t++) {
        int64_t N = numel(&l->t[t]);
        if (t == 2) {
            if (g_rank == g_size - 1) lay_add(l, t, 0, N);
            continue;
        }
        int64_t a = N * g_rank / g_size, b = N * (g_rank + 1) / g_size, m = a + (b - a) / 3;
        lay_add(l, t, a, m - a);
        lay_add(l, t, m, b - m);
    }
    for (int i = 0; i < l->np; i++) fill(l->p[i].data, l->t[l->p[i].tensor].dtype, l->p[i].tensor, l->p[i].offset, l->p[i].n, step);
    lay_done(l);
}

/* Load layout: ranges of B elements dealt round robin over the ranks; only ranges that
 * start below limit (all when limit < 0). */
static void lay_interleaved_upto(lay *l, int64_t B, int64_t limit)
{
    memcpy(l->t, g_tensors, sizeof l->t);
    l->np = 0;
    for (int t = 0; t < NT; t++) {
        int64_t N = numel(&l->t[t]);
        for (int64_t k = 0; k * B < N && (limit < 0 || k * B < limit); k++)
            if (k % g_size == g_rank) lay_add(l, t, k * B, (k + 1) * B < N ? B : N - k * B);
    }
    lay_done(l);
}

static void lay_interleaved(lay *l, int64_t B)
{
    lay_interleaved_upto(l, B, -1);
}

/* Load layout: rank 0 wants every tensor whole, the others nothing. */
static void lay_all_on_0(lay *l)
{
    memcpy(l->t, g_tensors, sizeof l->t);
    l->np = 0;
    if (g_rank == 0)
        for (int t = 0; t < NT; t++) lay_add(l, t, 0, numel(&l->t[t]));
    lay_done(l);
}

/* Number of pieces whose data differs bitwise from step's values (in the layout's dtypes). */
static int lay_mismatches(const lay *l, int step)
{
    int bad = 0;
    for (int i = 0; i < l->np; i++) {
        const zinc_ckpt_piece *p = &l->p[i];
        size_t bytes = (size_t)p->n * zinc_dtype_size(l->t[p->tensor].dtype);
        void *want = malloc(bytes + 1);
        fill(want, l->t[p->tensor].dtype, p->tensor, p->offset, p->n, step);
        if (memcmp(want, p->data, bytes) != 0) bad++;
        free(want);
    }
    return bad;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static int all_true(int ok)
{
    int32_t v = ok ? 1 : 0;
    zinc_comm_all_reduce(g_world, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
    return v == 1;
}

static void subdir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static int err_has(const char *s)
{
    if (strstr(zinc_last_error(), s)) return 1;
    fprintf(stderr, "rank %d: error '%s' lacks '%s'\n", g_rank, zinc_last_error(), s);
    return 0;
}

static int save_step(const char *save_dir, const char *tag, int step, const char *meta, int keep)
{
    lay l;
    lay_save(&l, step);
    zinc_status st = zinc_ckpt_save(g_world, g_aio, save_dir, tag, &l.L, meta, keep);
    lay_free(&l);
    return st == ZINC_OK;
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_crc32c(void)
{
    CU_ASSERT_EQUAL(zinc_crc32c(0, "123456789", 9), 0xE3069283u);
    CU_ASSERT_EQUAL(ckpt_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    CU_ASSERT_EQUAL(zinc_crc32c(0, "", 0), 0u);
    uint8_t buf[5000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 131 + (i >> 5));
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n < 300; n += 7) CU_ASSERT_EQUAL(zinc_crc32c(0, buf + off, n), ckpt_crc32c_sw(0, buf + off, n));
    uint32_t whole = zinc_crc32c(0, buf, sizeof buf);
    CU_ASSERT_EQUAL(zinc_crc32c(zinc_crc32c(0, buf, 1234), buf + 1234, sizeof buf - 1234), whole);
    CU_ASSERT_EQUAL(ckpt_crc32c_sw(0, buf, sizeof buf), whole);
}

/* Saved one way, loaded two other ways, bitwise equal; verify passes; latest updated. */
static void test_roundtrip_resharded(void)
{
    char sd[512], p[600], tag[64];
    subdir(sd, sizeof sd, "rt");
    CU_ASSERT_FATAL(all_true(save_step(sd, "step-7", 7, NULL, 0)));
    if (g_rank == 0) {
        CU_ASSERT_EQUAL(zinc_ckpt_resolve_latest(sd, tag, sizeof tag), ZINC_OK);
        CU_ASSERT_STRING_EQUAL(tag, "step-7");
        snprintf(p, sizeof p, "%s/step-7/rank-%05d.bin", sd, g_size - 1);
        CU_ASSERT(file_exists(p));
        snprintf(p, sizeof p, "%s/step-7.partial", sd);
        CU_ASSERT(!file_exists(p));
        CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
    }
    lay l;
    lay_interleaved(&l, 300007);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "step-7", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(lay_mismatches(&l, 7) == 0));
    lay_free(&l);
    lay_interleaved_upto(&l, 3, 2000); /* tiny ranges: many pieces, blocks read repeatedly */
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(lay_mismatches(&l, 7) == 0));
    lay_free(&l);
    lay_all_on_0(&l);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(lay_mismatches(&l, 7) == 0));
    lay_free(&l);
}

/* Stored bf16/f16/f32, wanted in other float dtypes: converted exactly (values are exact). */
static void test_dtype_conversion(void)
{
    char sd[512];
    subdir(sd, sizeof sd, "rt");
    lay l;
    lay_interleaved(&l, 500009);
    l.t[0].dtype = ZINC_DTYPE_BF16; /* stored f32 */
    l.t[1].dtype = ZINC_DTYPE_F32;  /* stored bf16 */
    l.t[3].dtype = ZINC_DTYPE_F32;  /* stored f16 */
    l.t[2].dtype = ZINC_DTYPE_F16;  /* stored f32 */
    for (int i = 0; i < l.np; i++) {
        free(l.p[i].data);
        l.p[i].data = calloc((size_t)l.p[i].n + 1, 4);
    }
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "step-7", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(lay_mismatches(&l, 7) == 0));
    lay_free(&l);
    /* a float tensor cannot become an integer one */
    lay_interleaved(&l, 500009);
    l.t[3].dtype = ZINC_DTYPE_I32;
    for (int i = 0; i < l.np; i++) {
        free(l.p[i].data);
        l.p[i].data = calloc((size_t)l.p[i].n + 1, 4);
    }
    zinc_status st = zinc_ckpt_load(g_world, g_aio, sd, "step-7", &l.L, NULL);
    CU_ASSERT_EQUAL(st, ZINC_ERR_UNSUPPORTED);
    CU_ASSERT(all_true(err_has("h.0.ln_1.bias")));
    lay_free(&l);
}

/* meta comes back byte for byte; latest follows the newest save; replacing a tag works. */
static void test_meta_and_latest(void)
{
    char sd[512], tag[64];
    subdir(sd, sizeof sd, "meta");
    const char *meta = "{\"step\": 12,  \"topology\": {\"pp\": 1, \"dp\": 2, \"tp\": 1, \"zero_stage\": 1},\n"
                       "   \"rng\": [1, 2, 3], \"lr\": 0.1, \"note\": \"x\\ny \\\"q\\\"\", \"meta\": {\"meta\": 1}}";
    CU_ASSERT_FATAL(all_true(save_step(sd, "a", 1, meta, 0)));
    CU_ASSERT_FATAL(all_true(save_step(sd, "b", 2, "[1,2]", 0)));
    char *out = NULL;
    lay l;
    lay_interleaved(&l, 400000);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "a", &l.L, &out) == ZINC_OK));
    CU_ASSERT(all_true(out && !strcmp(out, meta)));
    CU_ASSERT(all_true(lay_mismatches(&l, 1) == 0));
    free(out);
    out = NULL;
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, &out) == ZINC_OK));
    CU_ASSERT(all_true(out && !strcmp(out, "[1,2]")));
    CU_ASSERT(all_true(lay_mismatches(&l, 2) == 0));
    free(out);
    out = NULL;
    /* replace "a" with step 3's data: latest -> a, content is the new one */
    CU_ASSERT_FATAL(all_true(save_step(sd, "a", 3, NULL, 0)));
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, &out) == ZINC_OK));
    CU_ASSERT(all_true(out && !strcmp(out, "{}")));
    CU_ASSERT(all_true(lay_mismatches(&l, 3) == 0));
    free(out);
    lay_free(&l);
    if (g_rank == 0) {
        CU_ASSERT_EQUAL(zinc_ckpt_resolve_latest(sd, tag, sizeof tag), ZINC_OK);
        CU_ASSERT_STRING_EQUAL(tag, "a");
    }
    /* invalid meta, invalid tags: rejected on every rank, nothing written */
    CU_ASSERT(all_true(!save_step(sd, "c", 4, "{\"a\": ", 0) && err_has("meta_json")));
    CU_ASSERT(all_true(!save_step(sd, "../x", 4, NULL, 0) && err_has("tag")));
    CU_ASSERT(all_true(!save_step(sd, "latest", 4, NULL, 0)));
    if (g_rank == 0) {
        char p[600];
        snprintf(p, sizeof p, "%s/c", sd);
        CU_ASSERT(!file_exists(p));
    }
}

static void test_keep_last(void)
{
    char sd[512], p[600];
    subdir(sd, sizeof sd, "keep");
    for (int s = 1; s <= 5; s++) {
        char tag[32];
        snprintf(tag, sizeof tag, "step-%d", s);
        CU_ASSERT_FATAL(all_true(save_step(sd, tag, s, NULL, 2)));
    }
    if (g_rank == 0) {
        for (int s = 1; s <= 5; s++) {
            snprintf(p, sizeof p, "%s/step-%d", sd, s);
            CU_ASSERT_EQUAL(file_exists(p), s >= 4);
        }
        FILE *f = fopen((snprintf(p, sizeof p, "%s/index", sd), p), "r");
        char buf[256] = "";
        CU_ASSERT_FATAL(f != NULL);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        CU_ASSERT_STRING_EQUAL(buf, "step-4\nstep-5\n");
    }
    lay l;
    lay_all_on_0(&l);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(lay_mismatches(&l, 5) == 0));
    lay_free(&l);
}

/* Pieces that leave a gap or overlap: INVALID_ARG naming the tensor and range on every
 * rank; the previous checkpoint and latest stay. */
static void test_coverage_errors(void)
{
    char sd[512], p[600], tag[64];
    subdir(sd, sizeof sd, "cov");
    CU_ASSERT_FATAL(all_true(save_step(sd, "good", 1, NULL, 0)));
    lay l;
    lay_save(&l, 2);
    if (g_rank == 0) l.p[0].n -= 5; /* gap at the end of rank 0's first piece of tensor 0 */
    lay_done(&l);
    zinc_status st = zinc_ckpt_save(g_world, g_aio, sd, "bad", &l.L, NULL, 0);
    CU_ASSERT_EQUAL(st, ZINC_ERR_INVALID_ARG);
    CU_ASSERT(all_true(err_has("wte.weight (master)") && err_has("saved by no rank")));
    lay_free(&l);
    lay_save(&l, 2);
    if (g_rank == g_size - 1) lay_add(&l, 3, 0, 1); /* element 0 of tensor 3 is rank 0's too */
    lay_done(&l);
    st = zinc_ckpt_save(g_world, g_aio, sd, "bad", &l.L, NULL, 0);
    CU_ASSERT_EQUAL(st, ZINC_ERR_INVALID_ARG);
    CU_ASSERT(all_true(err_has("h.0.ln_1.bias (param)") && err_has("elements [0, 1) are saved twice")));
    lay_free(&l);
    /* a piece outside its tensor is caught locally */
    lay_save(&l, 2);
    if (g_rank == 0) l.p[0].offset = 1000003;
    lay_done(&l);
    st = zinc_ckpt_save(g_world, g_aio, sd, "bad", &l.L, NULL, 0);
    CU_ASSERT_EQUAL(st, ZINC_ERR_INVALID_ARG);
    CU_ASSERT(all_true(err_has("outside tensor wte.weight")));
    lay_free(&l);
    if (g_rank == 0) {
        CU_ASSERT_EQUAL(zinc_ckpt_resolve_latest(sd, tag, sizeof tag), ZINC_OK);
        CU_ASSERT_STRING_EQUAL(tag, "good");
        snprintf(p, sizeof p, "%s/bad.partial", sd);
        CU_ASSERT(!file_exists(p));
        snprintf(p, sizeof p, "%s/bad", sd);
        CU_ASSERT(!file_exists(p));
        CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
    }
}

/* Damage helpers, run by rank 0 between a save and a load. */
static void flip_byte(const char *path, off_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char c = 0;
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(pread(fd, &c, 1, off) == 1);
    c ^= 0x5a;
    CU_ASSERT(pwrite(fd, &c, 1, off) == 1);
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* Saves tag in sd, lets rank 0 damage it with fn, then loads (everything, interleaved) and
 * expects status want with every substring of must[] in the detail on every rank. */
static void corrupt_case(const char *tag, void (*fn)(const char *ckdir), zinc_status want, const char *const *must,
                         int wte_missing)
{
    char sd[512], ck[600];
    subdir(sd, sizeof sd, "bad");
    CU_ASSERT_FATAL(all_true(save_step(sd, tag, 5, NULL, 0)));
    snprintf(ck, sizeof ck, "%s/%s", sd, tag);
    if (g_rank == 0) fn(ck);
    zinc_comm_barrier(g_world);
    lay l;
    lay_interleaved(&l, 250007);
    if (wte_missing) snprintf(l.t[1].name, sizeof l.t[1].name, "nope.weight");
    zinc_status st = zinc_ckpt_load(g_world, g_aio, sd, tag, &l.L, NULL);
    CU_ASSERT_EQUAL(st, want);
    int ok = 1;
    for (int i = 0; must[i]; i++) ok &= err_has(must[i]);
    CU_ASSERT(all_true(ok));
    lay_free(&l);
    if (g_rank == 0 && !wte_missing) {
        st = zinc_ckpt_verify(g_aio, ck, NULL, NULL);
        CU_ASSERT(st == ZINC_ERR_CORRUPT || st == ZINC_ERR_IO);
    }
}

static char g_lastfile[32];

static void dmg_flip(const char *ck)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s", ck, g_lastfile);
    flip_byte(p, 4096 + 1000); /* inside the second chunk: tensor 0's later piece */
}

static void dmg_truncate(const char *ck)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s", ck, g_lastfile);
    CU_ASSERT(truncate(p, 5000) == 0);
}

static void dmg_delete(const char *ck)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s", ck, g_lastfile);
    CU_ASSERT(unlink(p) == 0);
}

static void dmg_manifest(const char *ck)
{
    char p[700];
    snprintf(p, sizeof p, "%s/manifest.json", ck);
    write_text(p, "{\"format\": \"zinc-ckpt\", \"version\": 1, \"tensors\": [garbage");
}

static void dmg_manifest_crc(const char *ck)
{
    /* a manifest that parses but lies about a crc must not pass either */
    char p[700];
    snprintf(p, sizeof p, "%s/manifest.json", ck);
    FILE *f = fopen(p, "r+");
    CU_ASSERT_FATAL(f != NULL);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    char *c = strstr(buf, "\"crc32c\": [");
    CU_ASSERT_FATAL(c != NULL);
    c += strlen("\"crc32c\": [");
    *c = *c == '1' ? '2' : '1'; /* change the first digit of the first crc */
    fseek(f, 0, SEEK_SET);
    fwrite(buf, 1, n, f);
    fclose(f);
}

static void dmg_none(const char *ck)
{
    (void)ck;
}

static void test_corruption(void)
{
    /* the last rank's file holds a late piece of wte.weight (master) as its second chunk */
    snprintf(g_lastfile, sizeof g_lastfile, "rank-%05d.bin", g_size - 1);
    {
        const char *must[] = {g_lastfile, "crc32c mismatch", "wte.weight (master)", NULL};
        corrupt_case("flip", dmg_flip, ZINC_ERR_CORRUPT, must, 0);
    }
    {
        const char *must[] = {g_lastfile, "truncated", NULL};
        corrupt_case("trunc", dmg_truncate, ZINC_ERR_CORRUPT, must, 0);
    }
    {
        const char *must[] = {g_lastfile, "missing", "tensor", NULL};
        corrupt_case("deleted", dmg_delete, ZINC_ERR_IO, must, 0);
    }
    {
        const char *must[] = {"manifest.json", "line 1", NULL};
        corrupt_case("garbage", dmg_manifest, ZINC_ERR_CORRUPT, must, 0);
    }
    {
        const char *must[] = {"crc32c mismatch", "wte.weight (master)", NULL};
        corrupt_case("liar", dmg_manifest_crc, ZINC_ERR_CORRUPT, must, 0);
    }
    {
        const char *must[] = {"manifest.json", "no tensor nope.weight (param)", NULL};
        corrupt_case("missing", dmg_none, ZINC_ERR_CORRUPT, must, 1);
    }
    /* shape mismatch, unknown tag, no latest */
    char sd[512], none[512];
    subdir(sd, sizeof sd, "bad");
    lay l;
    lay_interleaved(&l, 250007);
    l.t[2].shape[0] = 963;
    l.t[2].shape[1] = 321;
    CU_ASSERT_EQUAL(zinc_ckpt_load(g_world, g_aio, sd, "missing", &l.L, NULL), ZINC_ERR_CORRUPT);
    CU_ASSERT(all_true(err_has("h.0.attn.c_attn.weight (exp_avg) has shape (321, 963) in the checkpoint, (963, 321) wanted")));
    l.t[2].shape[0] = 321;
    l.t[2].shape[1] = 963;
    CU_ASSERT_EQUAL(zinc_ckpt_load(g_world, g_aio, sd, "never-saved", &l.L, NULL), ZINC_ERR_IO);
    CU_ASSERT(all_true(err_has("never-saved")));
    subdir(none, sizeof none, "empty-dir");
    CU_ASSERT_EQUAL(zinc_ckpt_load(g_world, g_aio, none, NULL, &l.L, NULL), ZINC_ERR_IO);
    CU_ASSERT(all_true(err_has("latest")));
    lay_free(&l);
}


/* ---- safetensors (non-collective: rank 0 only) --------------------------------------------- */

#define ST_BIG 4500001 /* > 16 MiB of f32: the writer pulls it in several pieces */

static zinc_status st_src(void *u, size_t i, uint64_t off, void *dst, size_t n)
{
    const zinc_st_entry *e = u;
    size_t esz = zinc_dtype_size(e[i].dtype);
    fill(dst, e[i].dtype, (int)i, (int64_t)(off / esz), (int64_t)(n / esz), 9);
    return ZINC_OK;
}

static void test_safetensors_roundtrip(void)
{
    if (g_rank != 0) return;
    char p[600];
    subdir(p, sizeof p, "rt.safetensors");
    zinc_st_entry e[4] = {
        {"h.0.attn.c_attn.weight", ZINC_DTYPE_F32, 2, {7, 21}, 0, 0},
        {"wte.weight", ZINC_DTYPE_BF16, 2, {11, 3}, 0, 0},
        {"big", ZINC_DTYPE_F32, 1, {ST_BIG}, 0, 0},
        {"h.0.ln_1.bias", ZINC_DTYPE_F16, 0, {0}, 0, 0},
    };
    const char *meta[] = {"format", "pt", "who", "zinc \"test\""};
    CU_ASSERT_FATAL(zinc_st_write(p, e, 4, st_src, e, meta, 2) == ZINC_OK);
    zinc_st_file *f = NULL;
    CU_ASSERT_FATAL(zinc_st_open(p, &f) == ZINC_OK);
    CU_ASSERT_EQUAL(zinc_st_count(f), 4);
    CU_ASSERT_STRING_EQUAL(zinc_st_metadata(f, "who"), "zinc \"test\"");
    CU_ASSERT_PTR_NULL(zinc_st_metadata(f, "nope"));
    CU_ASSERT_EQUAL(zinc_st_find(f, "nope"), -1);
    uint64_t off = 0;
    for (size_t i = 0; i < 4; i++) {
        const zinc_st_entry *g = zinc_st_entry_at(f, i);
        CU_ASSERT_STRING_EQUAL(g->name, e[i].name);
        CU_ASSERT_EQUAL(zinc_st_find(f, e[i].name), (long)i);
        CU_ASSERT_EQUAL(g->dtype, e[i].dtype);
        CU_ASSERT_EQUAL(g->ndim, e[i].ndim);
        int64_t n = 1;
        for (int d = 0; d < g->ndim; d++) {
            CU_ASSERT_EQUAL(g->shape[d], e[i].shape[d]);
            n *= g->shape[d];
        }
        CU_ASSERT_EQUAL(g->begin, off);
        off += (uint64_t)n * zinc_dtype_size(e[i].dtype);
        CU_ASSERT_EQUAL(g->end, off);
        float *got = malloc((size_t)n * 4), *want = malloc((size_t)n * 4);
        CU_ASSERT_FATAL(zinc_st_read_f32(f, i, got) == ZINC_OK);
        fill(want, ZINC_DTYPE_F32, (int)i, 0, n, 9);
        CU_ASSERT(memcmp(got, want, (size_t)n * 4) == 0);
        free(got);
        free(want);
    }
    zinc_st_close(f);
    /* the header is padded with spaces so the data starts 8-byte aligned */
    FILE *fp = fopen(p, "rb");
    uint64_t hl = 0;
    CU_ASSERT_FATAL(fp && fread(&hl, 8, 1, fp) == 1);
    CU_ASSERT_EQUAL(hl % 8, 0);
    fclose(fp);
    subdir(p, sizeof p, "dup.safetensors");
    zinc_st_entry d2[2] = {e[1], e[1]};
    CU_ASSERT_EQUAL(zinc_st_write(p, d2, 2, st_src, d2, NULL, 0), ZINC_ERR_INVALID_ARG);
    CU_ASSERT(!file_exists(p));
}

/* A safetensors file with this header (unpadded) and data_bytes zero bytes; hl overrides
 * the length field when non-zero. */
static void write_st_raw(const char *path, const char *hdr, size_t data_bytes, uint64_t hl)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    uint64_t n = hl ? hl : strlen(hdr);
    fwrite(&n, 8, 1, f);
    fputs(hdr, f);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, f);
    fclose(f);
}

static void st_bad(const char *name, const char *hdr, size_t data_bytes, uint64_t hl, zinc_status want,
                   const char *must1, const char *must2)
{
    char p[600];
    subdir(p, sizeof p, name);
    write_st_raw(p, hdr, data_bytes, hl);
    zinc_st_file *f = NULL;
    zinc_status st = zinc_st_open(p, &f);
    CU_ASSERT_EQUAL(st, want);
    if (want == ZINC_OK) {
        CU_ASSERT_PTR_NOT_NULL(f);
        zinc_st_close(f);
        return;
    }
    CU_ASSERT_PTR_NULL(f);
    CU_ASSERT(err_has(name));
    if (must1) CU_ASSERT(err_has(must1));
    if (must2) CU_ASSERT(err_has(must2));
    zinc_st_close(f);
}

static void test_safetensors_malformed(void)
{
    if (g_rank != 0) return;
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    st_bad("ok.st", ok, 8, 0, ZINC_OK, NULL, NULL); /* the control case opens */
    st_bad("hdrlen.st", ok, 8, 1000, ZINC_ERR_CORRUPT, "header length 1000", NULL);
    /* truncated header: the JSON is cut short by the end of the file */
    st_bad("trunchdr.st", "{\"a\":{\"dty", 0, 60, ZINC_ERR_CORRUPT, "header length 60 goes beyond", NULL);
    st_bad("json.st", "{\"a\":{\"dtype\":\"F32\",", 8, 0, ZINC_ERR_CORRUPT, "header JSON", NULL);
    st_bad("dupkey.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8, 0, ZINC_ERR_CORRUPT, "duplicate", NULL);
    st_bad("dtype.st", "{\"w.weight\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, ZINC_ERR_CORRUPT,
           "w.weight", "unknown dtype 'Q4'");
    st_bad("size.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0, ZINC_ERR_CORRUPT,
           "w.weight", "need 12");
    st_bad("range.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, 0, ZINC_ERR_CORRUPT,
           "w.weight", "outside the 8 data bytes");
    st_bad("neg.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, 0, ZINC_ERR_CORRUPT,
           "w.weight", "data_offsets");
    st_bad("overlap.st",
           "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},\"y\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
           "\"z\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           16, 0, ZINC_ERR_CORRUPT, "overlap", "tensor z");
    st_bad("fields.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, 0, ZINC_ERR_CORRUPT, "tensor w", NULL);
    st_bad("meta.st", "{\"__metadata__\":{\"k\":1}}", 0, 0, ZINC_ERR_CORRUPT, "__metadata__", NULL);
    /* shape products are checked: [2^32, 2^32] does not wrap to 0 bytes; negative dims */
    st_bad("ovf.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, 0,
           ZINC_ERR_CORRUPT, "tensor w.weight", "overflows");
    st_bad("ovf2.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[281474976710656,281474976710656,0],\"data_offsets\":[0,0]}}",
           0, 0, ZINC_ERR_CORRUPT, "tensor w.weight", "overflows");
    st_bad("negdim.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[-2,-2],\"data_offsets\":[0,16]}}", 16, 0,
           ZINC_ERR_CORRUPT, "tensor w.weight", "invalid shape");
    /* the data section must be fully indexed: no hole before, between or after tensors */
    st_bad("hole.st", "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, 0, ZINC_ERR_CORRUPT,
           "tensor w.weight", "indexed by no tensor");
    st_bad("gap.st",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
           12, 0, ZINC_ERR_CORRUPT, "tensor b", "bytes [4, 8)");
    st_bad("tail.st", ok, 12, 0, ZINC_ERR_CORRUPT, "bytes [8, 12) after tensor a", "indexed by no tensor");
    st_bad("empty_ok.st", "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}}", 0, 0, ZINC_OK, NULL, NULL);
    char p[600];
    /* a named pipe is refused before anything blocks */
    subdir(p, sizeof p, "fifo.st");
    CU_ASSERT_FATAL(mkfifo(p, 0600) == 0);
    zinc_st_file *ff = NULL;
    CU_ASSERT_EQUAL(zinc_st_open(p, &ff), ZINC_ERR_IO);
    CU_ASSERT(err_has("fifo.st") && err_has("named pipe"));
    CU_ASSERT_PTR_NULL(ff);
    /* the writer refuses a shape whose bytes overflow instead of writing a wrapped size */
    subdir(p, sizeof p, "wovf.st");
    zinc_st_entry big = {"w.weight", ZINC_DTYPE_F32, 2, {(int64_t)1 << 32, (int64_t)1 << 32}, 0, 0};
    CU_ASSERT_EQUAL(zinc_st_write(p, &big, 1, st_src, &big, NULL, 0), ZINC_ERR_INVALID_ARG);
    CU_ASSERT(err_has("w.weight") && err_has("overflows"));
    CU_ASSERT(!file_exists(p));
    subdir(p, sizeof p, "tiny.st"); /* not even the 8-byte length */
    FILE *fp = fopen(p, "wb");
    CU_ASSERT_FATAL(fp != NULL);
    fwrite("\x10\0\0", 1, 3, fp);
    fclose(fp);
    zinc_st_file *f0 = NULL;
    CU_ASSERT_EQUAL(zinc_st_open(p, &f0), ZINC_ERR_CORRUPT);
    CU_ASSERT(err_has("tiny.st") && err_has("too short"));
    subdir(p, sizeof p, "nonexistent.st");
    zinc_st_file *f = NULL;
    CU_ASSERT_EQUAL(zinc_st_open(p, &f), ZINC_ERR_IO);
    CU_ASSERT(err_has("nonexistent.st"));
}

/* ---- hostile shapes, versions and files (rank 0: pure parsing) -------------------------------- */

/* A one-tensor manifest with shape (text) and version; no chunks. */
static zinc_status parse_one(const char *shape, int version, ckpt_manifest *m)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\n  \"format\": \"zinc-ckpt\",\n  \"version\": %d,\n  \"tag\": \"t\",\n  \"block_bytes\": %u,\n"
             "  \"align_bytes\": 4096,\n  \"files\": [],\n  \"tensors\": [\n    {\"name\": \"huge.weight\", "
             "\"kind\": \"param\", \"dtype\": \"f32\", \"shape\": %s, \"tp_dim\": -1, \"chunks\": []}\n  ],\n"
             "  \"meta\": {}\n}\n",
             version, ZINC_CKPT_BLOCK_BYTES, shape);
    return ckpt_manifest_parse("/ck", text, strlen(text), m);
}

static void test_hostile_manifest(void)
{
    if (g_rank != 0) return;
    ckpt_manifest m;
    /* 2^32 x 2^32 elements wrapped to 0, which "no chunks" then covered exactly */
    CU_ASSERT_EQUAL(parse_one("[4294967296, 4294967296]", 1, &m), ZINC_ERR_CORRUPT);
    CU_ASSERT(err_has("/ck/manifest.json: tensor huge.weight (param)") && err_has("overflows"));
    CU_ASSERT_EQUAL(parse_one("[2305843009213693952]", 1, &m), ZINC_ERR_CORRUPT); /* 2^61 f32: bytes overflow */
    CU_ASSERT_EQUAL(parse_one("[-4, -4]", 1, &m), ZINC_ERR_CORRUPT);
    CU_ASSERT(err_has("huge.weight") && err_has("invalid shape"));
    CU_ASSERT_EQUAL(parse_one("[0, 4294967296]", 1, &m), ZINC_OK); /* empty: no chunks needed */
    ckpt_manifest_free(&m);
    /* only the versions zinc wrote */
    CU_ASSERT_EQUAL(parse_one("[0]", -1, &m), ZINC_ERR_CORRUPT);
    CU_ASSERT(err_has("format version -1"));
    CU_ASSERT_EQUAL(parse_one("[0]", 0, &m), ZINC_ERR_CORRUPT);
    CU_ASSERT_EQUAL(parse_one("[0]", 3, &m), ZINC_ERR_UNSUPPORTED);
    CU_ASSERT(err_has("format version 3 is newer"));
    CU_ASSERT_EQUAL(parse_one("[0]", 1, &m), ZINC_OK); /* both versions zinc wrote */
    ckpt_manifest_free(&m);
    CU_ASSERT_EQUAL(parse_one("[0]", 2, &m), ZINC_OK);
    ckpt_manifest_free(&m);
    /* the public size helper */
    zinc_ckpt_tensor t = {"x", "param", ZINC_DTYPE_F32, 2, {(int64_t)1 << 32, (int64_t)1 << 32}, -1, 0};
    CU_ASSERT_EQUAL(zinc_ckpt_tensor_numel(&t), -1);
    t.shape[0] = -1;
    t.shape[1] = -1;
    CU_ASSERT_EQUAL(zinc_ckpt_tensor_numel(&t), -1);
    t.ndim = 1;
    t.shape[0] = (int64_t)1 << 61; /* elements fit, bytes do not */
    CU_ASSERT_EQUAL(zinc_ckpt_tensor_numel(&t), -1);
    t.dtype = ZINC_DTYPE_U8;
    CU_ASSERT_EQUAL(zinc_ckpt_tensor_numel(&t), (int64_t)1 << 61);
    t.ndim = 0;
    CU_ASSERT_EQUAL(zinc_ckpt_tensor_numel(&t), 1);
}

/* A save layout with an overflowing shape is refused on every rank. */
static void test_hostile_layout(void)
{
    char sd[512];
    subdir(sd, sizeof sd, "ovf-save");
    zinc_ckpt_tensor t = {"huge.weight", "param", ZINC_DTYPE_F32, 2, {(int64_t)1 << 32, (int64_t)1 << 32}, -1, 0};
    zinc_ckpt_layout L = {&t, 1, NULL, 0, NULL, NULL};
    CU_ASSERT_EQUAL(zinc_ckpt_save(g_world, g_aio, sd, "x", &L, NULL, 0), ZINC_ERR_INVALID_ARG);
    CU_ASSERT(all_true(err_has("huge.weight") && err_has("overflows")));
}

/* Named pipes in place of latest, manifest.json and a rank file: clear errors, no hang. */
static void test_hostile_fifos(void)
{
    char sd[512], p[700], tag[64];
    subdir(sd, sizeof sd, "fifo");
    CU_ASSERT_FATAL(all_true(save_step(sd, "s", 1, NULL, 0)));
    if (g_rank != 0) return;
    zinc_ckpt_reader *r = NULL;
    snprintf(p, sizeof p, "%s/s/rank-00000.bin", sd);
    CU_ASSERT_FATAL(unlink(p) == 0 && mkfifo(p, 0600) == 0);
    CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_ERR_IO);
    CU_ASSERT(err_has("rank-00000.bin: checkpoint rank file is a named pipe"));
    snprintf(p, sizeof p, "%s/s/manifest.json", sd);
    CU_ASSERT_FATAL(unlink(p) == 0 && mkfifo(p, 0600) == 0);
    CU_ASSERT_EQUAL(zinc_ckpt_reader_open(g_aio, sd, &r), ZINC_ERR_IO);
    CU_ASSERT(err_has("manifest.json: checkpoint manifest is a named pipe"));
    CU_ASSERT_PTR_NULL(r);
    snprintf(p, sizeof p, "%s/latest", sd);
    CU_ASSERT_FATAL(unlink(p) == 0 && mkfifo(p, 0600) == 0);
    CU_ASSERT_EQUAL(zinc_ckpt_resolve_latest(sd, tag, sizeof tag), ZINC_ERR_IO);
    CU_ASSERT(err_has("latest: checkpoint latest is a named pipe"));
    /* writers: a named pipe where a temporary file goes is replaced, not opened */
    char p2[720];
    snprintf(p, sizeof p, "%s/out.safetensors", sd);
    snprintf(p2, sizeof p2, "%s.tmp", p);
    CU_ASSERT_FATAL(mkfifo(p2, 0600) == 0);
    zinc_st_entry e = {"w", ZINC_DTYPE_F32, 1, {3}, 0, 0};
    CU_ASSERT_EQUAL(zinc_st_write(p, &e, 1, st_src, &e, NULL, 0), ZINC_OK);
    CU_ASSERT(file_exists(p) && !file_exists(p2));
}

/* A save with named pipes as save_dir/latest.tmp and index.tmp: replaced, not waited on. */
static void test_fifo_tmp_files(void)
{
    char sd[512], p[700];
    subdir(sd, sizeof sd, "fifo-tmp");
    CU_ASSERT_FATAL(all_true(save_step(sd, "s1", 1, NULL, 0)));
    if (g_rank == 0) {
        snprintf(p, sizeof p, "%s/latest.tmp", sd);
        CU_ASSERT(mkfifo(p, 0600) == 0);
        snprintf(p, sizeof p, "%s/index.tmp", sd);
        CU_ASSERT(mkfifo(p, 0600) == 0);
    }
    CU_ASSERT(all_true(save_step(sd, "s2", 2, NULL, 0)));
    if (g_rank == 0) CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
}

static void write_file_in(const char *dir, const char *name, const char *text)
{
    char p[800];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_text(p, text);
}

/* A save removes the stale directories of killed saves (zinc's marker in them) and leaves
 * every other *.partial / *.deleting / *.replaced directory alone. */
static void test_foreign_dirs(void)
{
    char sd[512], p[700], q[700];
    subdir(sd, sizeof sd, "foreign");
    const char *names[] = {"thesis.partial", "photos.deleting", "notes.replaced", "x.partial"};
    if (g_rank == 0) {
        CU_ASSERT_FATAL(mkdir(sd, 0755) == 0);
        for (int i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s", sd, names[i]);
            CU_ASSERT_FATAL(mkdir(p, 0755) == 0);
            write_file_in(p, "mine.txt", "user data\n");
        }
        snprintf(p, sizeof p, "%s/x.partial/.zinc-checkpoint", sd); /* a marker with the wrong text */
        write_text(p, "not zinc's\n");
    }
    CU_ASSERT_FATAL(all_true(save_step(sd, "a", 1, NULL, 0)));
    /* a killed save's partial directory, made by zinc: committed "a" renamed to b.partial */
    if (g_rank == 0) {
        snprintf(p, sizeof p, "%s/a", sd);
        snprintf(q, sizeof q, "%s/b.partial", sd);
        CU_ASSERT(rename(p, q) == 0);
    }
    CU_ASSERT_FATAL(all_true(save_step(sd, "c", 2, NULL, 0)));
    /* a tag whose .partial is a user's directory: refused, the directory kept */
    CU_ASSERT(all_true(!save_step(sd, "thesis", 3, NULL, 0) && err_has("thesis.partial exists")));
    if (g_rank == 0) {
        for (int i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s/mine.txt", sd, names[i]);
            CU_ASSERT(file_exists(p));
        }
        snprintf(p, sizeof p, "%s/notes", sd); /* a foreign .replaced is not "restored" */
        CU_ASSERT(!file_exists(p));
        snprintf(p, sizeof p, "%s/b.partial", sd);
        CU_ASSERT(!file_exists(p));
        snprintf(p, sizeof p, "%s/c/.zinc-checkpoint", sd);
        CU_ASSERT(file_exists(p));
        CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
    }
}

/* ---- direct transfers and the progress hook ---------------------------------------------- */

typedef struct prog_log {
    int calls, bad;
    uint64_t last, total;
} prog_log;

static void prog_cb(uint64_t done, uint64_t total, void *u)
{
    prog_log *p = u;
    if (p->calls == 0 && done != 0) p->bad = 1;           /* starts at 0 */
    if (p->calls > 0 && (done < p->last || total != p->total)) p->bad = 1;
    p->calls++;
    p->last = done;
    p->total = total;
}

/* Per rank: a 4 KiB-aligned f32 slice longer than a segment with a short last block (saved
 * and loaded straight from/to memory) and an unaligned bf16 slice (staged). Loads the same
 * sharding back, then every tensor 0 whole on every rank (direct for rank 0's chunk only),
 * then a flipped byte inside a direct segment. The hook sees 0 first, never goes back, and
 * ends at the rank's total. */
static void test_direct_and_progress(void)
{
    const int64_t per0 = (9 << 20) / 4 + 1001, per1 = 600001;
    zinc_ckpt_tensor t[2] = {
        {"big", "master", ZINC_DTYPE_F32, 1, {per0 * g_size}, -1, 0},
        {"big", "param", ZINC_DTYPE_BF16, 1, {per1 * g_size}, -1, 0},
    };
    char dir[300], p[400];
    subdir(dir, sizeof dir, "direct");
    float *a0 = zinc_aio_buf_alloc((size_t)per0 * 4), *b0 = zinc_aio_buf_alloc((size_t)per0 * 4);
    uint8_t *a1 = malloc((size_t)per1 * 2 + 8), *b1 = malloc((size_t)per1 * 2 + 8);
    float *all = zinc_aio_buf_alloc((size_t)(per0 * g_size) * 4);
    CU_ASSERT_FATAL(a0 && b0 && a1 && b1 && all);
    fill(a0, ZINC_DTYPE_F32, 0, per0 * g_rank, per0, 5);
    fill(a1 + 2, ZINC_DTYPE_BF16, 1, per1 * g_rank, per1, 5);
    zinc_ckpt_piece sp[2] = {{.tensor = 0, .offset = per0 * g_rank, .n = per0, .data = a0},
                             {.tensor = 1, .offset = per1 * g_rank, .n = per1, .data = a1 + 2}};
    zinc_ckpt_piece lp[2] = {{.tensor = 0, .offset = per0 * g_rank, .n = per0, .data = b0},
                             {.tensor = 1, .offset = per1 * g_rank, .n = per1, .data = b1 + 6}};
    zinc_ckpt_layout sl = {t, 2, sp, 2, NULL, NULL}, ll = {t, 2, lp, 2, NULL, NULL};

    prog_log ps = {0}, pl = {0};
    zinc_ckpt_set_progress(prog_cb, &ps);
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, dir, "d1", &sl, NULL, 0) == ZINC_OK));
    struct stat sb;
    snprintf(p, sizeof p, "%s/d1/rank-%05d.bin", dir, g_rank);
    CU_ASSERT(stat(p, &sb) == 0 && (uint64_t)sb.st_size == ps.total);
    CU_ASSERT(!ps.bad && ps.last == ps.total && ps.calls >= 3 && ps.calls <= 103);

    zinc_ckpt_set_progress(prog_cb, &pl);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, dir, "d1", &ll, NULL) == ZINC_OK));
    zinc_ckpt_set_progress(NULL, NULL);
    CU_ASSERT(all_true(memcmp(a0, b0, (size_t)per0 * 4) == 0 && memcmp(a1 + 2, b1 + 6, (size_t)per1 * 2) == 0));
    CU_ASSERT(!pl.bad && pl.last == pl.total && pl.total >= (uint64_t)(per0 * 4 + per1 * 2) && pl.calls >= 3);

    zinc_ckpt_piece wp = {.tensor = 0, .offset = 0, .n = per0 * g_size, .data = all};
    zinc_ckpt_layout wl = {t, 1, &wp, 1, NULL, NULL};
    int ok = zinc_ckpt_load(g_world, g_aio, dir, "d1", &wl, NULL) == ZINC_OK;
    for (int64_t i = 0; ok && i < per0 * g_size; i++) ok = all[i] == val(0, i, 5);
    CU_ASSERT(all_true(ok));

    if (g_rank == 0) {
        snprintf(p, sizeof p, "%s/d1/rank-00000.bin", dir);
        flip_byte(p, (2 << 20) + 5); /* block 2 of tensor 0's chunk: a direct segment */
    }
    zinc_comm_barrier(g_world);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, dir, "d1", &ll, NULL) == ZINC_ERR_CORRUPT &&
                       err_has("crc32c mismatch") && err_has("rank-00000.bin")));
    zinc_aio_buf_free(a0);
    zinc_aio_buf_free(b0);
    zinc_aio_buf_free(all);
    free(a1);
    free(b1);
}

/* ---- pieces behind a callback (optimizer state offloaded to NVMe) ------------------------ */

#define IO_NT 3
#define IO_MAXP 64
#define IO_P0 3300001 /* f32 elements of tensor 0 per rank: a piece spans two staging buffers */

/* The "swap space": one malloc'd array per callback piece that io_cb copies from (save) or
 * into (load), or, with swap set, a per-rank file holding the callback pieces at 4 KiB
 * aligned offsets that io_cb reads and writes through g_aio while the checkpoint's own
 * transfers are in flight on it (as the engine's NVMe offload does). io_cb checks that every call is in bounds and in order (each element once,
 * ascending), records the largest request and (on save) whether buf was 4 KiB aligned, and
 * fails with a clear detail on call fail_call when fail is set. */
typedef struct io_back {
    uint8_t *base[IO_MAXP]; /* NULL: a memory piece */
    int64_t n[IO_MAXP], next[IO_MAXP];
    size_t esz[IO_MAXP];
    uint64_t max_bytes;
    int calls, bad, misaligned, fail, fail_call;
    zinc_aio_file *swap;
    uint64_t soff[IO_MAXP];
} io_back;

static zinc_status io_cb(void *u, int piece, int write, void *buf, int64_t first, int64_t n)
{
    io_back *b = u;
    if (piece < 0 || piece >= IO_MAXP || !b->base[piece] || first != b->next[piece] || n <= 0 ||
        first + n > b->n[piece] || !buf) {
        b->bad = 1;
        return zinc_error(ZINC_ERR_INTERNAL, "io_cb: unexpected call piece %d [%lld, +%lld)", piece, (long long)first,
                          (long long)n);
    }
    uint64_t bytes = (uint64_t)n * b->esz[piece];
    if (bytes > b->max_bytes) b->max_bytes = bytes;
    if (!write && (uintptr_t)buf % 4096) b->misaligned++;
    if (b->fail && b->calls == b->fail_call)
        return zinc_error(ZINC_ERR_IO, "/nvme/opt.swap: read failed on rank %d (test)", g_rank);
    b->calls++;
    b->next[piece] += n;
    if (b->swap) {
        uint64_t off = b->soff[piece] + (uint64_t)first * b->esz[piece];
        return write ? zinc_aio_pwrite(b->swap, buf, (size_t)bytes, off) : zinc_aio_pread(b->swap, buf, (size_t)bytes, off);
    }
    uint8_t *at = b->base[piece] + (size_t)first * b->esz[piece];
    if (write) memcpy(at, buf, (size_t)bytes);
    else memcpy(buf, at, (size_t)bytes);
    return ZINC_OK;
}

typedef struct io_lay {
    zinc_ckpt_tensor t[IO_NT];
    zinc_ckpt_piece p[IO_MAXP];
    int np;
    uint8_t *mem[IO_MAXP]; /* every piece's elements, wherever they live */
    io_back b;
    zinc_ckpt_layout L;
} io_lay;

static void io_init(io_lay *l)
{
    const zinc_ckpt_tensor t[IO_NT] = {
        {"opt.m", "exp_avg", ZINC_DTYPE_F32, 1, {IO_P0 * g_size}, -1, 0},
        {"opt.w", "param", ZINC_DTYPE_BF16, 2, {7 * g_size, 300007}, 0, 0},
        {"ln.bias", "param", ZINC_DTYPE_F16, 1, {37}, -1, 0},
    };
    memset(l, 0, sizeof *l);
    memcpy(l->t, t, sizeof t);
}

/* Adds a piece whose elements live behind io_cb (cb) or in memory. */
static void io_add(io_lay *l, int t, int64_t off, int64_t n, int cb)
{
    int i = l->np++;
    size_t esz = zinc_dtype_size(l->t[t].dtype);
    l->mem[i] = calloc((size_t)n + 1, esz);
    l->p[i] = (zinc_ckpt_piece){.tensor = t, .offset = off, .n = n, .data = cb ? NULL : l->mem[i]};
    l->b.base[i] = cb ? l->mem[i] : NULL;
    l->b.n[i] = n;
    l->b.esz[i] = esz;
}

/* Ends a layout (dtypes final): io_cb on it, counters cleared. */
static void io_done(io_lay *l)
{
    for (int i = 0; i < l->np; i++) {
        l->b.next[i] = 0;
        l->b.esz[i] = zinc_dtype_size(l->t[l->p[i].tensor].dtype);
    }
    l->b.max_bytes = 0;
    l->b.calls = l->b.bad = l->b.misaligned = 0;
    l->L = (zinc_ckpt_layout){l->t, IO_NT, l->p, l->np, io_cb, &l->b};
}

/* Moves the callback pieces into this rank's swap file (call after io_done). */
static void io_swap_open(io_lay *l)
{
    char p[600];
    uint64_t off = 0;
    snprintf(p, sizeof p, "%s/swap-%d", g_dir, g_rank);
    CU_ASSERT_FATAL(zinc_aio_open(g_aio, p, ZINC_AIO_READ | ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC,
                                  &l->b.swap) == ZINC_OK);
    for (int i = 0; i < l->np; i++) {
        if (!l->b.base[i]) continue;
        size_t bytes = (size_t)l->p[i].n * l->b.esz[i];
        l->b.soff[i] = off;
        CU_ASSERT(zinc_aio_pwrite(l->b.swap, l->mem[i], bytes, off) == ZINC_OK);
        off = (off + bytes + 4095) / 4096 * 4096;
    }
}

/* Copies the callback pieces back from the swap file into mem (to compare) and closes it. */
static void io_swap_close(io_lay *l)
{
    for (int i = 0; i < l->np; i++)
        if (l->b.base[i])
            CU_ASSERT(zinc_aio_pread(l->b.swap, l->mem[i], (size_t)l->p[i].n * l->b.esz[i], l->b.soff[i]) == ZINC_OK);
    zinc_aio_close(l->b.swap);
    l->b.swap = NULL;
}

static void io_free(io_lay *l)
{
    if (l->b.swap) zinc_aio_close(l->b.swap);
    l->b.swap = NULL;
    for (int i = 0; i < l->np; i++) free(l->mem[i]);
    l->np = 0;
}

/* Every callback piece passed whole, each element once, within bounds. */
static int io_complete(const io_lay *l)
{
    for (int i = 0; i < l->np; i++)
        if (l->b.base[i] && l->b.next[i] != l->b.n[i]) return 0;
    return !l->b.bad;
}

static int io_mismatches(const io_lay *l, int step)
{
    int bad = 0;
    for (int i = 0; i < l->np; i++) {
        const zinc_ckpt_piece *p = &l->p[i];
        size_t bytes = (size_t)p->n * zinc_dtype_size(l->t[p->tensor].dtype);
        void *want = malloc(bytes + 1);
        fill(want, l->t[p->tensor].dtype, p->tensor, p->offset, p->n, step);
        if (memcmp(want, l->mem[i], bytes) != 0) bad++;
        free(want);
    }
    return bad;
}

/* Save layout: rank r holds tensor 0's block r as a memory piece (its first third) and a
 * callback piece, tensor 1's block r as one callback piece, and the last rank tensor 2 in
 * memory. */
static void io_save_layout(io_lay *l, int step)
{
    io_init(l);
    int64_t a = (int64_t)IO_P0 * g_rank, m = a + IO_P0 / 3, per1 = 7 * 300007;
    io_add(l, 0, a, m - a, 0);
    io_add(l, 0, m, a + IO_P0 - m, 1);
    io_add(l, 1, per1 * g_rank, per1, 1);
    if (g_rank == g_size - 1) io_add(l, 2, 0, 37, 0);
    for (int i = 0; i < l->np; i++) fill(l->mem[i], l->t[l->p[i].tensor].dtype, l->p[i].tensor, l->p[i].offset, l->p[i].n, step);
    io_done(l);
}

/* Load layout: ranges of B elements dealt round robin, every piece behind io_cb (cb) or in
 * memory; or (B 0) every tensor whole on rank 0. */
static void io_load_layout(io_lay *l, int64_t B, int cb)
{
    io_init(l);
    for (int t = 0; t < IO_NT; t++) {
        int64_t N = numel(&l->t[t]);
        if (B == 0) {
            if (g_rank == 0) io_add(l, t, 0, N, cb);
            continue;
        }
        for (int64_t k = 0; k * B < N; k++)
            if (k % g_size == g_rank) io_add(l, t, k * B, (k + 1) * B < N ? B : N - k * B, cb);
    }
    io_done(l);
}

/* Saved partly through a callback, loaded into memory pieces and into callback pieces of
 * other splits (with dtype conversion both ways): bitwise equal, each element passed once
 * and in order, no request above one staging buffer, save buffers 4 KiB aligned. A failing
 * callback on one rank fails the save (or load) on every rank with its detail, and leaves
 * latest and the checkpoint it names intact. */
static void test_io_pieces(void)
{
    char sd[512], tag[64], p[600];
    subdir(sd, sizeof sd, "io");
    io_lay s, l;
    io_save_layout(&s, 11);
    io_swap_open(&s);
    for (int i = 0; i < s.np; i++) /* what is in the swap file is what must be saved */
        if (s.b.base[i]) memset(s.mem[i], 0, (size_t)s.p[i].n * s.b.esz[i]);
    CU_ASSERT_FATAL(all_true(zinc_ckpt_save(g_world, g_aio, sd, "io1", &s.L, NULL, 0) == ZINC_OK));
    CU_ASSERT(all_true(io_complete(&s) && s.b.misaligned == 0 && s.b.calls >= 3));
    CU_ASSERT(all_true(s.b.max_bytes > 0 && s.b.max_bytes <= CKPT_SEG));
    io_swap_close(&s);
    if (g_rank == 0) CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);

    /* into memory, another split */
    io_load_layout(&l, 1000003, 0);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "io1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(io_mismatches(&l, 11) == 0 && l.b.calls == 0));
    io_free(&l);

    /* into callback pieces, another split; tensor 1 stored bf16, wanted f32 */
    io_load_layout(&l, 2500009, 1);
    l.t[1].dtype = ZINC_DTYPE_F32;
    for (int i = 0; i < l.np; i++)
        if (l.p[i].tensor == 1) {
            free(l.mem[i]);
            l.mem[i] = l.b.base[i] = calloc((size_t)l.p[i].n + 1, 4);
        }
    io_done(&l);
    io_swap_open(&l);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "io1", &l.L, NULL) == ZINC_OK));
    io_swap_close(&l);
    CU_ASSERT(all_true(io_complete(&l) && io_mismatches(&l, 11) == 0));
    CU_ASSERT(all_true(l.b.max_bytes <= CKPT_SEG));
    io_free(&l);

    /* everything on rank 0 behind the callback; tensor 0 stored f32, wanted bf16 */
    io_load_layout(&l, 0, 1);
    l.t[0].dtype = ZINC_DTYPE_BF16;
    io_done(&l);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(io_complete(&l) && io_mismatches(&l, 11) == 0));
    /* one call per 8 MiB window of the wanted bf16 at least: 3 pieces at 1 rank */
    CU_ASSERT(all_true(l.b.max_bytes <= CKPT_SEG && (g_rank != 0 || l.b.calls >= 3)));
    io_free(&l);

    /* a NULL data without io is still refused */
    io_save_layout(&l, 12);
    l.L.io = NULL;
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "bad", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has("data is NULL")));
    io_free(&l);

    /* the last rank's callback fails on its second call (inside tensor 0's callback piece) */
    io_save_layout(&l, 12);
    if (g_rank == g_size - 1) {
        l.b.fail = 1;
        l.b.fail_call = 1;
    }
    zinc_status st = zinc_ckpt_save(g_world, g_aio, sd, "bad", &l.L, NULL, 0);
    CU_ASSERT_EQUAL(st, ZINC_ERR_IO);
    CU_ASSERT(all_true(err_has("/nvme/opt.swap: read failed on rank") && err_has("opt.m (exp_avg)")));
    io_free(&l);
    if (g_rank == 0) {
        CU_ASSERT_EQUAL(zinc_ckpt_resolve_latest(sd, tag, sizeof tag), ZINC_OK);
        CU_ASSERT_STRING_EQUAL(tag, "io1");
        snprintf(p, sizeof p, "%s/bad.partial", sd);
        CU_ASSERT(!file_exists(p));
        snprintf(p, sizeof p, "%s/bad", sd);
        CU_ASSERT(!file_exists(p));
        CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
    }

    /* rank 0's callback fails on its first call of a load */
    io_load_layout(&l, 2500009, 1);
    if (g_rank == 0) l.b.fail = 1;
    CU_ASSERT_EQUAL(zinc_ckpt_load(g_world, g_aio, sd, NULL, &l.L, NULL), ZINC_ERR_IO);
    CU_ASSERT(all_true(err_has("/nvme/opt.swap: read failed on rank 0") && err_has("checkpoint load")));
    io_free(&l);
    io_free(&s);
}

/* ---- main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (zinc_comm_init_world("mpi", &argc, &argv, &g_world) != ZINC_OK) {
        fprintf(stderr, "comm init failed: %s\n", zinc_last_error());
        return 1;
    }
    zinc_comm_set_timeout(g_world, 60);
    g_rank = zinc_comm_rank(g_world);
    g_size = zinc_comm_size(g_world);
    zinc_log_set_rank(g_size > 1 ? g_rank : -1);
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    if (zinc_aio_create(&o, &g_aio) != ZINC_OK) {
        fprintf(stderr, "aio: %s\n", zinc_last_error());
        return 1;
    }
    if (g_rank == 0) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/zinc-ckpt-test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(g_dir)) g_dir[0] = '\0';
    }
    zinc_comm_broadcast(g_world, g_dir, sizeof g_dir, ZINC_DTYPE_U8, 0, NULL);
    if (!g_dir[0]) {
        fprintf(stderr, "cannot create a temp dir\n");
        return 1;
    }

    CU_initialize_registry();
    CU_pSuite s = CU_add_suite("ckpt", NULL, NULL);
    CU_add_test(s, "crc32c", test_crc32c);
    CU_add_test(s, "roundtrip_resharded", test_roundtrip_resharded);
    CU_add_test(s, "dtype_conversion", test_dtype_conversion);
    CU_add_test(s, "meta_and_latest", test_meta_and_latest);
    CU_add_test(s, "keep_last", test_keep_last);
    CU_add_test(s, "coverage_errors", test_coverage_errors);
    CU_add_test(s, "corruption", test_corruption);
    CU_add_test(s, "direct_and_progress", test_direct_and_progress);
    CU_add_test(s, "io_pieces", test_io_pieces);
    CU_add_test(s, "safetensors_roundtrip", test_safetensors_roundtrip);
    CU_add_test(s, "safetensors_malformed", test_safetensors_malformed);
    CU_add_test(s, "hostile_manifest", test_hostile_manifest);
    CU_add_test(s, "hostile_layout", test_hostile_layout);
    CU_add_test(s, "hostile_fifos", test_hostile_fifos);
    CU_add_test(s, "fifo_tmp_files", test_fifo_tmp_files);
    CU_add_test(s, "foreign_dirs", test_foreign_dirs);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    int failures = (int)CU_get_number_of_failures();
    CU_cleanup_registry();

    int32_t any = failures;
    zinc_comm_all_reduce(g_world, &any, &any, 1, ZINC_DTYPE_I32, ZINC_REDOP_MAX, NULL);
    if (g_rank == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
        if (failures) fprintf(stderr, "%d failures on rank 0\n", failures);
    } else if (failures) {
        fprintf(stderr, "rank %d: %d failures\n", g_rank, failures);
    }
    zinc_aio_destroy(g_aio);
    zinc_comm_destroy(g_world);
    return any ? 1 : 0;
}
