/* test_ckpt_box.c - checkpoint pieces as boxes (zinc/ckpt.h: block views, TP boxes, a flat
 * range of a box) under 1..4 real ranks (tests/ckpt/mpi_ranks).
 *
 * The pure part (rank 0) checks the box arithmetic against a naive enumeration: block
 * views, zinc_ckpt_box_tp, the runs of random boxes and ranges, the box checks. The
 * collective part saves a GPT-2-like c_attn tensor (R, 3C) with tp_dim 1 and tp_blocks 3
 * the way a TP 2 x DP 2 run does (four virtual ranks dealt over the real ones: box of the
 * TP rank, a flat DP range inside it, one through the io callback), and loads it as TP 4,
 * as flat ranges into io pieces with dtype conversion, whole through the reader, and from a
 * version-1 manifest; every element is a function of its logical index, so every load is
 * checked bit for bit. The manifest must hold one chunk per (virtual rank, tensor) and its
 * boxes; corrupt boxes are refused naming the file and the tensor; bad save layouts name
 * the tensor and the logical elements. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "../../checkpoint/ckpt_int.h"
#include "zinc/ckpt.h"
#include "zinc/comm.h"
#include "zinc/log.h"

static zinc_comm *g_world;
static zinc_aio *g_aio;
static int g_rank, g_size;
static char g_dir[256];

#define R_ROWS 1000 /* c_attn rows */
#define C_COLS 1200 /* columns per q|k|v block: divisible by TP 4 */
#define NT 4
#define VTP 2 /* the saving run's TP x DP, dealt over the real ranks */
#define VDP 2
#define MAXP 1024

static const zinc_ckpt_tensor g_tensors[NT] = {
    {"h.0.attn.c_attn.weight", "exp_avg", ZINC_DTYPE_F32, 2, {R_ROWS, 3 * C_COLS}, 1, 3},
    {"h.0.attn.c_attn.weight", "param", ZINC_DTYPE_BF16, 2, {R_ROWS, 3 * C_COLS}, 1, 3},
    {"h.0.mlp.c_proj.weight", "exp_avg", ZINC_DTYPE_F32, 2, {64, 100}, 0, 1}, /* row-parallel */
    {"h.0.ln_1.bias", "param", ZINC_DTYPE_F32, 1, {37}, -1, 0},              /* replicated */
};

static int64_t numel(const zinc_ckpt_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* k/8 with |k| <= 125: exact in f32 and bf16. */
static float val(int t, int64_t i, int step)
{
    return (float)((int)((i * 7 + t * 13 + step * 31) % 251) - 125) / 8.0f;
}

/* Naive: the flat element of box element q (a mixed-radix walk of the box, then of the
 * view), independent of box.c. */
static int64_t naive_logical(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t q)
{
    int64_t view[ZINC_CKPT_BOX_DIMS];
    int nd = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (d == t->tp_dim && t->tp_blocks > 1) {
            view[nd++] = t->tp_blocks;
            view[nd++] = t->shape[d] / t->tp_blocks;
        } else {
            view[nd++] = t->shape[d];
        }
    }
    int whole = 1;
    for (int d = 0; d < ZINC_CKPT_BOX_DIMS; d++) whole &= count[d] == 0;
    if (whole) return q;
    int64_t idx[ZINC_CKPT_BOX_DIMS], L = 0;
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = q % count[d];
        q /= count[d];
    }
    for (int d = 0; d < nd; d++) L = L * view[d] + start[d] + idx[d];
    return L;
}

/* n elements of box elements [off, off+n) of tensor ti at step, in dtype dt. */
static void fill_box(void *buf, zinc_dtype dt, int ti, const int64_t *start, const int64_t *count, int64_t off,
                     int64_t n, int step)
{
    for (int64_t k = 0; k < n; k++) {
        float v = val(ti, naive_logical(&g_tensors[ti], start, count, off + k), step);
        if (dt == ZINC_DTYPE_BF16) ((uint16_t *)buf)[k] = zinc_f32_to_bf16(v);
        else ((float *)buf)[k] = v;
    }
}

static int all_true(int ok)
{
    int32_t v = ok ? 1 : 0;
    zinc_comm_all_reduce(g_world, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
    return v == 1;
}

static int err_has(const char *s)
{
    if (strstr(zinc_last_error(), s)) return 1;
    fprintf(stderr, "rank %d: error '%s' lacks '%s'\n", g_rank, zinc_last_error(), s);
    return 0;
}

/* ---- pure: box arithmetic ----------------------------------------------------------------- */

typedef struct runs_seen {
    const zinc_ckpt_tensor *t;
    const int64_t *start, *count;
    int64_t next_pos, prev_end, calls;
    int bad;
} runs_seen;

/* Every run must continue the box order and match the naive enumeration element by
 * element; consecutive runs must not be adjacent in the tensor (maximal). */
static int runs_check(void *u, int64_t pos, int64_t logical, int64_t n)
{
    runs_seen *s = u;
    if (pos != s->next_pos || n <= 0 || (s->calls && logical <= s->prev_end)) s->bad = 1;
    for (int64_t k = 0; k < n && !s->bad; k++)
        if (naive_logical(s->t, s->start, s->count, pos + k) != logical + k) s->bad = 1;
    s->next_pos = pos + n;
    s->prev_end = logical + n;
    s->calls++;
    return 0;
}

static void test_box_math(void)
{
    if (g_rank != 0) return;
    char why[512];
    int64_t view[ZINC_CKPT_BOX_DIMS], st[ZINC_CKPT_BOX_DIMS], ct[ZINC_CKPT_BOX_DIMS];
    zinc_ckpt_tensor t = {"c_attn", "param", ZINC_DTYPE_F32, 2, {4, 6}, 1, 3};
    /* (4, 6) as q|k|v blocks: (4, 3, 2) */
    CU_ASSERT_EQUAL(ckpt_view(&t, view), 3);
    CU_ASSERT(view[0] == 4 && view[1] == 3 && view[2] == 2 && view[3] == 0);
    CU_ASSERT_EQUAL(zinc_ckpt_box_tp(&t, 2, 1, st, ct), ZINC_OK);
    CU_ASSERT(st[0] == 0 && st[1] == 0 && st[2] == 1 && ct[0] == 4 && ct[1] == 3 && ct[2] == 1);
    /* TP rank 1 of 2 keeps column 1 of every block: 12 one-element runs */
    CU_ASSERT_EQUAL(ckpt_box_n_runs(&t, st, ct, 0, 12), 12);
    CU_ASSERT_EQUAL(ckpt_box_logical(&t, st, ct, 0), 1);
    CU_ASSERT_EQUAL(ckpt_box_logical(&t, st, ct, 4), 6 + 3); /* row 1, block 1, column 1 */
    CU_ASSERT_EQUAL(ckpt_box_check(&t, st, ct, 0, 12, why, sizeof why), 0);
    CU_ASSERT_EQUAL(ckpt_box_check(&t, st, ct, 5, 8, why, sizeof why), -1);
    CU_ASSERT(strstr(why, "elements [5, 13) are outside its box of 12") != NULL);
    ct[2] = 2; /* columns 1..3 of a block of 2 */
    CU_ASSERT_EQUAL(ckpt_box_check(&t, st, ct, 0, 0, why, sizeof why), -1);
    CU_ASSERT(strstr(why, "box [0:4, 0:3, 1:3, 0:0, 0:0] is outside the block view [0:4, 0:3, 0:2]") != NULL);
    memset(ct, 0, sizeof ct); /* no counts: the whole tensor, which has no start */
    CU_ASSERT_EQUAL(ckpt_box_check(&t, st, ct, 0, 24, why, sizeof why), -1);
    CU_ASSERT(strstr(why, "has a start but no counts") != NULL);
    st[2] = 0;
    CU_ASSERT_EQUAL(ckpt_box_check(&t, st, ct, 0, 24, why, sizeof why), 0);
    /* TP sizes that do not divide the sub-blocks; bad specs */
    CU_ASSERT_EQUAL(zinc_ckpt_box_tp(&t, 4, 0, st, ct), ZINC_ERR_INVALID_ARG);
    CU_ASSERT(err_has("TP size 4 does not divide dimension 1's sub-blocks of 2"));
    CU_ASSERT_EQUAL(zinc_ckpt_box_tp(&t, 2, 2, st, ct), ZINC_ERR_INVALID_ARG);
    zinc_ckpt_tensor bad = t;
    bad.tp_blocks = 4;
    CU_ASSERT_EQUAL(ckpt_view_check(&bad, why, sizeof why), -1);
    CU_ASSERT(strstr(why, "tp_blocks 4 does not divide dimension 1 (6)") != NULL);
    bad.tp_blocks = 3;
    bad.tp_dim = -1;
    CU_ASSERT_EQUAL(ckpt_view_check(&bad, why, sizeof why), -1);
    /* replicated or TP 1: the whole box */
    CU_ASSERT_EQUAL(zinc_ckpt_box_tp(&bad, 4, 3, st, ct), ZINC_OK);
    CU_ASSERT(ckpt_box_is_whole(ct) && ckpt_box_is_whole(st));

    /* random boxes and ranges of 1..4-d tensors with and without blocks vs the naive walk */
    unsigned seed = 12345;
    int bad_runs = 0, bad_count = 0;
    for (int it = 0; it < 3000; it++) {
        zinc_ckpt_tensor r = {"r", "param", ZINC_DTYPE_F32, 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 4,
                              {0}, -1, 0};
        for (int d = 0; d < r.ndim; d++) r.shape[d] = 1 + ((seed = seed * 1103515245u + 12345u) >> 16) % 5;
        if ((seed >> 20) % 2) {
            r.tp_dim = (int)((seed >> 8) % (unsigned)r.ndim);
            r.tp_blocks = 1 + (int)((seed >> 12) % 3);
            r.shape[r.tp_dim] *= r.tp_blocks;
        }
        int nd = ckpt_view(&r, view);
        int64_t vol = 1;
        memset(st, 0, sizeof st);
        memset(ct, 0, sizeof ct);
        for (int d = 0; d < nd; d++) {
            seed = seed * 1103515245u + 12345u;
            st[d] = (int64_t)((seed >> 16) % (unsigned)view[d]);
            ct[d] = 1 + (int64_t)((seed >> 24) % (unsigned)(view[d] - st[d]));
            vol *= ct[d];
        }
        seed = seed * 1103515245u + 12345u;
        int64_t off = (int64_t)((seed >> 16) % (unsigned)vol), n = 1 + (int64_t)((seed >> 8) % (unsigned)(vol - off));
        CU_ASSERT_EQUAL_FATAL(ckpt_box_check(&r, st, ct, off, n, why, sizeof why), 0);
        runs_seen s = {&r, st, ct, off, 0, 0, 0};
        ckpt_box_runs(&r, st, ct, off, n, runs_check, &s);
        bad_runs += s.bad || s.next_pos != off + n;
        bad_count += s.calls != ckpt_box_n_runs(&r, st, ct, off, n);
    }
    CU_ASSERT_EQUAL(bad_runs, 0);
    CU_ASSERT_EQUAL(bad_count, 0);
}

/* ---- layouts of box pieces ---------------------------------------------------------------- */

typedef struct blay {
    zinc_ckpt_tensor t[NT];
    zinc_ckpt_piece p[MAXP];
    int np;
    uint8_t *mem[MAXP];    /* every piece's elements, in memory or behind io */
    int via_io[MAXP];
    int64_t next[MAXP];    /* io: the next element expected */
    int64_t max_n_bytes;
    int io_bad, io_calls;
    zinc_ckpt_layout L;
} blay;

static zinc_status bio(void *u, int piece, int write, void *buf, int64_t first, int64_t n)
{
    blay *l = u;
    if (piece < 0 || piece >= l->np || !l->via_io[piece] || first != l->next[piece] || n <= 0 ||
        first + n > l->p[piece].n) {
        l->io_bad = 1;
        return zinc_error(ZINC_ERR_INTERNAL, "bio: unexpected call piece %d [%lld, +%lld)", piece, (long long)first,
                          (long long)n);
    }
    size_t esz = zinc_dtype_size(l->t[l->p[piece].tensor].dtype);
    if ((int64_t)(n * (int64_t)esz) > l->max_n_bytes) l->max_n_bytes = n * (int64_t)esz;
    uint8_t *at = l->mem[piece] + (size_t)first * esz;
    if (write) memcpy(at, buf, (size_t)n * esz);
    else memcpy(buf, at, (size_t)n * esz);
    l->next[piece] += n;
    l->io_calls++;
    return ZINC_OK;
}

static void blay_init(blay *l)
{
    memset(l, 0, sizeof *l);
    memcpy(l->t, g_tensors, sizeof l->t);
}

/* Adds elements [off, off+n) of box (start, count; NULL: whole) of tensor ti. */
static void blay_add(blay *l, int ti, const int64_t *start, const int64_t *count, int64_t off, int64_t n, int io)
{
    CU_ASSERT_FATAL(l->np < MAXP);
    int i = l->np++;
    zinc_ckpt_piece *p = &l->p[i];
    memset(p, 0, sizeof *p);
    p->tensor = ti;
    p->offset = off;
    p->n = n;
    if (start) memcpy(p->start, start, sizeof p->start);
    if (count) memcpy(p->count, count, sizeof p->count);
    l->mem[i] = calloc((size_t)n + 1, 4);
    l->via_io[i] = io;
    p->data = io ? NULL : l->mem[i];
}

static void blay_done(blay *l)
{
    for (int i = 0; i < l->np; i++) l->next[i] = 0;
    l->io_bad = l->io_calls = 0;
    l->max_n_bytes = 0;
    l->L = (zinc_ckpt_layout){l->t, NT, l->p, l->np, bio, l};
}

static void blay_free(blay *l)
{
    for (int i = 0; i < l->np; i++) free(l->mem[i]);
    l->np = 0;
}

/* Pieces whose elements differ bitwise from step's (in the layout's dtypes), or io pieces
 * not passed whole. */
static int blay_mismatches(const blay *l, int step)
{
    int bad = l->io_bad;
    for (int i = 0; i < l->np; i++) {
        const zinc_ckpt_piece *p = &l->p[i];
        zinc_dtype dt = l->t[p->tensor].dtype;
        size_t bytes = (size_t)p->n * zinc_dtype_size(dt);
        void *want = malloc(bytes + 1);
        fill_box(want, dt, p->tensor, p->start, p->count, p->offset, p->n, step);
        if (memcmp(want, l->mem[i], bytes) != 0 || (l->via_io[i] && l->next[i] != p->n)) bad++;
        free(want);
    }
    return bad;
}

/* The saving run: virtual rank v = tp * VDP + dp, held by real rank v % size. Tensors
 * split by TP hold their TP box, DP splitting it 2/5 : 3/5 as a flat range of the box; the
 * replicated one comes from TP rank 0 only, DP splitting it. Tensor 0's pieces go through
 * io. Data filled for step. */
static void blay_save(blay *l, int step)
{
    blay_init(l);
    for (int v = 0; v < VTP * VDP; v++) {
        if (v % g_size != g_rank) continue;
        int tp = v / VDP, dp = v % VDP;
        for (int ti = 0; ti < NT; ti++) {
            int64_t st[ZINC_CKPT_BOX_DIMS], ct[ZINC_CKPT_BOX_DIMS];
            if (l->t[ti].tp_dim < 0 && tp > 0) continue;
            CU_ASSERT_FATAL(zinc_ckpt_box_tp(&l->t[ti], VTP, tp, st, ct) == ZINC_OK);
            int64_t vol = ckpt_box_volume(&l->t[ti], ct), a = dp ? vol * 2 / 5 : 0, z = dp ? vol : vol * 2 / 5;
            blay_add(l, ti, st, ct, a, z - a, ti == 0);
        }
    }
    for (int i = 0; i < l->np; i++)
        fill_box(l->mem[i], l->t[l->p[i].tensor].dtype, l->p[i].tensor, l->p[i].start, l->p[i].count,
                 l->p[i].offset, l->p[i].n, step);
    blay_done(l);
}

/* A load as TP tp x DP dp (virtual ranks dealt as for the save), pieces in memory or (io)
 * behind the callback. */
static void blay_tp(blay *l, int tp, int dp, int io)
{
    blay_init(l);
    for (int v = 0; v < tp * dp; v++) {
        if (v % g_size != g_rank) continue;
        for (int ti = 0; ti < NT; ti++) {
            int64_t st[ZINC_CKPT_BOX_DIMS], ct[ZINC_CKPT_BOX_DIMS];
            CU_ASSERT_FATAL(zinc_ckpt_box_tp(&l->t[ti], tp, v / dp, st, ct) == ZINC_OK);
            int64_t vol = ckpt_box_volume(&l->t[ti], ct), a = vol * (v % dp) / dp, z = vol * (v % dp + 1) / dp;
            blay_add(l, ti, st, ct, a, z - a, io);
        }
    }
    blay_done(l);
}

/* A load as flat ranges of B elements dealt round robin (no boxes). */
static void blay_flat(blay *l, int64_t B, int io)
{
    blay_init(l);
    for (int ti = 0; ti < NT; ti++) {
        int64_t N = numel(&l->t[ti]);
        for (int64_t k = 0; k * B < N; k++)
            if (k % g_size == g_rank) blay_add(l, ti, NULL, NULL, k * B, (k + 1) * B < N ? B : N - k * B, io);
    }
    blay_done(l);
}

static void read_text(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    *text = NULL;
    *len = 0;
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *text = calloc((size_t)n + 1, 1);
    if (*text && fread(*text, 1, (size_t)n, f) == (size_t)n) *len = (size_t)n;
    fclose(f);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Replaces the first occurrence of from in s (capacity cap) with to; 0 if not found. */
static int replace1(char *s, size_t cap, const char *from, const char *to)
{
    char *at = strstr(s, from);
    if (!at || strlen(s) - strlen(from) + strlen(to) + 1 > cap) return 0;
    memmove(at + strlen(to), at + strlen(from), strlen(at + strlen(from)) + 1);
    memcpy(at, to, strlen(to));
    return 1;
}

/* Replaces every occurrence (to no longer than from). */
static void replace_all(char *s, const char *from, const char *to)
{
    char *at;
    while ((at = strstr(s, from))) {
        memmove(at + strlen(to), at + strlen(from), strlen(at + strlen(from)) + 1);
        memcpy(at, to, strlen(to));
    }
}

/* ---- collective tests --------------------------------------------------------------------- */

/* Saved as TP 2 x DP 2 boxes (tensor 0 through io), the manifest holds one chunk per
 * (virtual rank, tensor) with its box; loaded as TP 4 (memory and io, dtype converted),
 * as TP 1 x DP 3, as flat ranges into io, whole through the reader: bit for bit. */
static void test_box_roundtrip(void)
{
    char sd[512], p[700];
    snprintf(sd, sizeof sd, "%s/box", g_dir);
    blay s, l;
    blay_save(&s, 3);
    CU_ASSERT_FATAL(all_true(zinc_ckpt_save(g_world, g_aio, sd, "b1", &s.L, "{}", 0) == ZINC_OK));
    CU_ASSERT(all_true(!s.io_bad && s.max_n_bytes <= (int64_t)CKPT_SEG));
    for (int i = 0; i < s.np; i++) CU_ASSERT(!s.via_io[i] || s.next[i] == s.p[i].n);
    blay_free(&s);

    if (g_rank == 0) {
        /* the parsed manifest: one chunk per virtual rank and tensor, the replicated one
         * from TP rank 0's two DP ranks; the boxes stand for all rows' runs */
        char *text;
        size_t len;
        snprintf(p, sizeof p, "%s/b1/manifest.json", sd);
        read_text(p, &text, &len);
        ckpt_manifest m;
        CU_ASSERT_FATAL(text && ckpt_manifest_parse(sd, text, len, &m) == ZINC_OK);
        CU_ASSERT_EQUAL(m.n_tensors, NT);
        CU_ASSERT_EQUAL(m.n_chunks, 3 * VTP * VDP + VDP);
        for (int i = 0; i < m.n_tensors; i++) {
            const ckpt_mtensor *t = &m.tensors[i];
            CU_ASSERT_EQUAL(t->n_chunks, t->t.tp_dim >= 0 ? VTP * VDP : VDP);
            CU_ASSERT_EQUAL(t->t.tp_blocks, g_tensors[i].tp_dim >= 0 ? g_tensors[i].tp_blocks : 1);
            for (int j = 0; j < t->n_chunks; j++) { /* the box of a TP rank, in its virtual rank's file */
                const ckpt_chunk *c = &t->chunks[j];
                int64_t st[ZINC_CKPT_BOX_DIMS], ct[ZINC_CKPT_BOX_DIMS];
                int tp = -1;
                for (int k = 0; k < VTP && tp < 0; k++) {
                    zinc_ckpt_box_tp(&g_tensors[i], VTP, k, st, ct);
                    if (!memcmp(st, c->start, sizeof st) && !memcmp(ct, c->count, sizeof ct)) tp = k;
                }
                char fn[32];
                snprintf(fn, sizeof fn, "rank-%05d.bin", (tp * VDP + (c->bo != 0)) % g_size);
                CU_ASSERT(tp >= 0 && (tp == 0 || g_tensors[i].tp_dim >= 0));
                CU_ASSERT_STRING_EQUAL(m.files[c->file].name, fn);
            }
        }
        /* c_attn: every row's q, k and v columns of each TP rank is a run: 3 R x 2 */
        CU_ASSERT_EQUAL(m.tensors[0].n_runs, (int64_t)3 * R_ROWS * VTP);
        CU_ASSERT(strstr(text, "\"box\": {\"start\": [0, 0, 600], \"count\": [1000, 3, 600]}") != NULL);
        CU_ASSERT(strstr(text, "\"tp_blocks\": 3") != NULL && strstr(text, "\"version\": 2") != NULL);
        ckpt_manifest_free(&m);
        free(text);
        CU_ASSERT_EQUAL(zinc_ckpt_verify(g_aio, sd, NULL, NULL), ZINC_OK);
    }

    /* TP 4 x DP 1, memory */
    blay_tp(&l, 4, 1, 0);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 3) == 0));
    blay_free(&l);
    /* TP 4 x DP 3, io, c_attn wanted in the other float dtype both ways */
    blay_tp(&l, 4, 3, 1);
    l.t[0].dtype = ZINC_DTYPE_BF16;
    l.t[1].dtype = ZINC_DTYPE_F32;
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 3) == 0 && l.max_n_bytes <= (int64_t)CKPT_SEG));
    blay_free(&l);
    /* TP 1 x DP 3 and flat ranges of odd sizes, into io; large ones span several windows */
    blay_tp(&l, 1, 3, 0);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 3) == 0));
    blay_free(&l);
    blay_flat(&l, 2500007, 1);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 3) == 0 && l.max_n_bytes <= (int64_t)CKPT_SEG));
    CU_ASSERT(all_true(g_rank != 0 || l.io_calls > l.np)); /* a 2.5 M f32 piece: two windows */
    blay_free(&l);
    blay_flat(&l, 7777, 0); /* many small pieces in memory */
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 3) == 0));
    blay_free(&l);

    /* the reader (zinc-ckpt export) gives whole tensors in flat order */
    if (g_rank == 0) {
        zinc_ckpt_reader *r = NULL;
        CU_ASSERT_FATAL(zinc_ckpt_reader_open(g_aio, sd, &r) == ZINC_OK);
        for (int ti = 0; ti < NT; ti++) {
            int i = zinc_ckpt_reader_find(r, g_tensors[ti].name, g_tensors[ti].kind);
            int64_t N = numel(&g_tensors[ti]), whole[ZINC_CKPT_BOX_DIMS] = {0};
            float *got = malloc((size_t)N * 4), *want = malloc((size_t)N * 4);
            CU_ASSERT_FATAL(i >= 0 && got && want);
            CU_ASSERT(zinc_ckpt_reader_read(r, i, 0, N, ZINC_DTYPE_F32, got) == ZINC_OK);
            fill_box(want, ZINC_DTYPE_F32, ti, whole, whole, 0, N, 3);
            CU_ASSERT(memcmp(got, want, (size_t)N * 4) == 0);
            /* and a range across the TP boxes */
            CU_ASSERT(zinc_ckpt_reader_read(r, i, N / 3, N / 2, ZINC_DTYPE_F32, got) == ZINC_OK);
            CU_ASSERT(memcmp(got, want + N / 3, (size_t)(N / 2) * 4) == 0);
            free(got);
            free(want);
        }
        zinc_ckpt_reader_close(r);
    }
}

/* A checkpoint in format version 1 (flat chunks, no tp_blocks) loads into TP boxes. */
static void test_version1(void)
{
    char sd[512], p[700];
    snprintf(sd, sizeof sd, "%s/v1", g_dir);
    blay s, l;
    blay_flat(&s, 300007, 0); /* what a version-1 save wrote: flat ranges */
    for (int i = 0; i < s.np; i++)
        fill_box(s.mem[i], s.t[s.p[i].tensor].dtype, s.p[i].tensor, s.p[i].start, s.p[i].count, s.p[i].offset,
                 s.p[i].n, 4);
    for (int ti = 0; ti < NT; ti++) s.t[ti].tp_blocks = 0;
    CU_ASSERT_FATAL(all_true(zinc_ckpt_save(g_world, g_aio, sd, "old", &s.L, "{}", 0) == ZINC_OK));
    blay_free(&s);
    int ok = 1;
    if (g_rank == 0) { /* the same text as version 1 wrote it */
        char *text;
        size_t len;
        snprintf(p, sizeof p, "%s/old/manifest.json", sd);
        read_text(p, &text, &len);
        ok = text && replace1(text, len + 1, "\"version\": 2", "\"version\": 1") && !strstr(text, "\"box\"");
        if (ok) {
            replace_all(text, "\"tp_blocks\": 1, ", "");
            ok = !strstr(text, "tp_blocks");
            write_text(p, text);
        }
        free(text);
        zinc_ckpt_reader *r = NULL;
        CU_ASSERT(zinc_ckpt_reader_open(g_aio, sd, &r) == ZINC_OK);
        CU_ASSERT(r && zinc_ckpt_reader_tensor(r, 0)->tp_blocks == 0);
        zinc_ckpt_reader_close(r);
    }
    CU_ASSERT_FATAL(all_true(ok));
    blay_tp(&l, 2, 2, 0);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "old", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 4) == 0));
    blay_free(&l);
    blay_tp(&l, 4, 1, 1);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "old", &l.L, NULL) == ZINC_OK));
    CU_ASSERT(all_true(blay_mismatches(&l, 4) == 0));
    blay_free(&l);
}

/* One corruption of the text of manifest b1 and what the error must say. */
typedef struct box_damage {
    const char *from, *to, *must;
} box_damage;

/* Corrupt boxes in a manifest are refused naming the file, the tensor and the problem. */
static void test_box_corrupt(void)
{
    char sd[512], p[700];
    snprintf(sd, sizeof sd, "%s/box", g_dir);
    static const box_damage dmg[] = {
        {"\"start\": [0, 0, 600], \"count\": [1000, 3, 600]}", "\"start\": [0, 0, 600], \"count\": [1000, 3, 601]}",
         "is outside the block view [0:1000, 0:3, 0:1200]"},
        {"\"start\": [0, 0, 600]", "\"start\": [0, 0, -1]", "is outside the block view"},
        {"\"count\": [1000, 3, 600]}", "\"count\": [1000, 3]}", "invalid box"},
        {"\"count\": [1000, 3, 600]}", "\"count\": [0, 0, 0]}", "its box is empty"},
        {"\"start\": [0, 0, 600], \"count\": [1000, 3, 600]}", "\"start\": [0, 0, 0], \"count\": [1000, 3, 600]}",
         "chunks do not cover its 3600000 elements exactly"},
        {"\"count\": [1000, 3, 600]}, \"elements\": [720000, 1800000]", "\"count\": [1000, 3, 300]}, \"elements\": [720000, 1800000]",
         "(elements [720000, 1800000) of its box of 900000 in"}, /* n beyond the box */
        {"\"version\": 2", "\"version\": 1", "invalid box (version 2 only"},
        {"\"tp_blocks\": 3", "\"tp_blocks\": 7", "tp_blocks 7 does not divide dimension 1 (3600)"},
    };
    char *orig = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/b1/manifest.json", sd);
    if (g_rank == 0) read_text(p, &orig, &len);
    for (size_t k = 0; k < sizeof dmg / sizeof dmg[0]; k++) {
        if (g_rank == 0) {
            size_t cap = len + 256;
            char *text = calloc(cap, 1);
            ckpt_manifest m;
            CU_ASSERT_FATAL(orig && text);
            memcpy(text, orig, len);
            CU_ASSERT(replace1(text, cap, dmg[k].from, dmg[k].to));
            CU_ASSERT_EQUAL(ckpt_manifest_parse(sd, text, strlen(text), &m), ZINC_ERR_CORRUPT);
            CU_ASSERT(err_has("box/manifest.json") && err_has("h.0.attn.c_attn.weight") && err_has(dmg[k].must));
            if (k == 0) write_text(p, text); /* and through a collective load */
            free(text);
        }
        if (k == 0) {
            blay l;
            blay_tp(&l, 4, 1, 0);
            CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, sd, "b1", &l.L, NULL) == ZINC_ERR_CORRUPT &&
                               err_has("b1/manifest.json: tensor h.0.attn.c_attn.weight (exp_avg): chunk") &&
                               err_has("outside the block view")));
            blay_free(&l);
            if (g_rank == 0) write_text(p, orig);
            CU_ASSERT(all_true(1));
        }
    }
    free(orig);
}

/* Bad save layouts: a box outside the view, a gap and an overlap between boxes of ranks
 * (named in the tensor's flat elements), an invalid tp_blocks. */
static void test_box_save_errors(void)
{
    char sd[512];
    snprintf(sd, sizeof sd, "%s/box-bad", g_dir);
    const zinc_ckpt_tensor *t = &g_tensors[0];
    const int64_t N = numel(t);
    int64_t st[ZINC_CKPT_BOX_DIMS], ct[ZINC_CKPT_BOX_DIMS];
    blay l;

    /* rank 0 holds TP box 0 and all but the last element of TP box 1 */
    blay_init(&l);
    if (g_rank == 0)
        for (int tp = 0; tp < 2; tp++) {
            zinc_ckpt_box_tp(t, 2, tp, st, ct);
            int64_t vol = ckpt_box_volume(t, ct);
            blay_add(&l, 0, st, ct, 0, vol - tp, 0);
        }
    blay_done(&l);
    l.L.n_tensors = 1;
    /* the last element of box 1: row R-1, block 2, column C - 1 */
    char want[128];
    snprintf(want, sizeof want, "elements [%lld, %lld) are saved by no rank", (long long)(N - 1), (long long)N);
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "gap", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has("tensor h.0.attn.c_attn.weight (exp_avg)") && err_has(want)));
    blay_free(&l);

    /* box 0 twice: on every rank, or on rank 0 as a box and as flat ranges */
    blay_init(&l);
    zinc_ckpt_box_tp(t, 2, 0, st, ct);
    if (g_rank == 0) blay_add(&l, 0, st, ct, 0, ckpt_box_volume(t, ct), 0);
    if (g_rank == g_size - 1) {
        zinc_ckpt_box_tp(t, 2, 1, st, ct);
        blay_add(&l, 0, st, ct, 0, ckpt_box_volume(t, ct), 0);
        blay_add(&l, 0, NULL, NULL, 3 * C_COLS + 5, 1, 0); /* row 1, block 0, column 5: box 0 */
    }
    blay_done(&l);
    l.L.n_tensors = 1;
    snprintf(want, sizeof want, "elements [%lld, %lld) are saved twice", (long long)(3 * C_COLS + 5),
             (long long)(3 * C_COLS + 6));
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "twice", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has(want)));
    blay_free(&l);

    /* a box outside the view; a range beyond the box; tp_blocks that do not divide */
    blay_init(&l);
    zinc_ckpt_box_tp(t, 2, 1, st, ct);
    st[2] = 601;
    blay_add(&l, 0, st, ct, 0, 1, 0);
    blay_done(&l);
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "out", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has("piece 0 of tensor h.0.attn.c_attn.weight (exp_avg): box [0:1000, 0:3, 601:1201") &&
                       err_has("outside the block view [0:1000, 0:3, 0:1200]")));
    l.p[0].start[2] = 600;
    l.p[0].offset = ckpt_box_volume(t, ct) - 1;
    l.p[0].n = 2;
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "out", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has("are outside its box of 1800000 elements")));
    l.p[0].n = 1;
    l.t[0].tp_blocks = 7;
    CU_ASSERT(all_true(zinc_ckpt_save(g_world, g_aio, sd, "out", &l.L, NULL, 0) == ZINC_ERR_INVALID_ARG &&
                       err_has("tp_blocks 7 does not divide dimension 1 (3600)")));
    /* and the same on load */
    l.t[0].tp_blocks = 3;
    st[2] = 601;
    memcpy(l.p[0].start, st, sizeof st);
    CU_ASSERT(all_true(zinc_ckpt_load(g_world, g_aio, g_dir, "box", &l.L, NULL) != ZINC_OK));
    blay_free(&l);
}

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
        snprintf(g_dir, sizeof g_dir, "%s/zinc-ckpt-box.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(g_dir)) g_dir[0] = '\0';
    }
    zinc_comm_broadcast(g_world, g_dir, sizeof g_dir, ZINC_DTYPE_U8, 0, NULL);
    if (!g_dir[0]) {
        fprintf(stderr, "cannot create a temp dir\n");
        return 1;
    }

    CU_initialize_registry();
    CU_pSuite s = CU_add_suite("ckpt_box", NULL, NULL);
    CU_add_test(s, "box_math", test_box_math);
    CU_add_test(s, "box_roundtrip", test_box_roundtrip);
    CU_add_test(s, "version1", test_version1);
    CU_add_test(s, "box_corrupt", test_box_corrupt);
    CU_add_test(s, "box_save_errors", test_box_save_errors);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    int failures = (int)CU_get_number_of_failures();
    int all_ok = all_true(failures == 0);
    if (g_rank == 0 && failures) fprintf(stderr, "%d failures on rank 0\n", failures);
    else if (failures) fprintf(stderr, "rank %d: %d failures\n", g_rank, failures);
    CU_cleanup_registry();
    if (g_rank == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    }
    zinc_aio_destroy(g_aio);
    zinc_comm_destroy(g_world);
    return all_ok ? 0 : 1;
}
