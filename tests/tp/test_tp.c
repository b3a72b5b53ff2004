/* test_tp.c - tensor-parallel building blocks (tensor_parallel/tp.c) under
 * 1, 2 and 4 ranks (tests/tp/mpi_ranks), the whole world one TP group,
 * against the single-rank computation each rank also runs on the whole
 * weights: a GPT-2 MLP (column-parallel c_fc + GELU, row-parallel c_proj),
 * GPT-2 attention (c_attn column-parallel over the q | k | v blocks, heads
 * split, c_proj row-parallel), forward and backward, the vocab-parallel
 * embedding, tied head and cross-entropy, fp32 within 1e-5 and
 * the act-bf16 table within bf16's tolerance; the sequence-parallel
 * mappings, and the MLP and vocabulary ends with sequence parallelism (row
 * blocks in and out); and the TP bytes against the analytic count.
 * Collective. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/comm.h"
#include "zinc/ops.h"
#include "zinc/rng.h"
#include "zinc/tp.h"

static zinc_comm *g_world;
static int g_rank, g_size;

static float *randn(const char *name, size_t n, float std)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    zinc_rng_normal_range(1234, zinc_hash_str(name), x, 0, (int64_t)n, std);
    return x;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* Act tensors of the table: fp32 arrays stored in act (bf16 tables round). */
static void *to_act(const zinc_ops *o, const float *x, size_t n)
{
    void *a = malloc((n ? n : 1) * zinc_dtype_size(o->act));
    o->convert(a, o->act, x, ZINC_DTYPE_F32, n);
    return a;
}
static float *from_act(const zinc_ops *o, const void *a, size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    o->convert(x, ZINC_DTYPE_F32, a, o->act, n);
    return x;
}
static void *act_zeros(const zinc_ops *o, size_t n)
{
    return calloc(n ? n : 1, zinc_dtype_size(o->act));
}

/* max |a - b| / max(max |b|, 1e-30) */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / m;
}

/* Columns [c0, c0 + w) of the rows x cols matrix a. */
static float *cols(const float *a, int rows, int ncols, int c0, int w)
{
    float *o = malloc((size_t)rows * w * sizeof *o);
    for (int r = 0; r < rows; r++) memcpy(o + (size_t)r * w, a + (size_t)r * ncols + c0, (size_t)w * sizeof *o);
    return o;
}

/* The q | k | v columns of this rank's heads: for qkv weights (C, 3C), the
 * blocks [j*C + r*Cl, j*C + (r+1)*Cl) for j = q, k, v side by side. */
static float *qkv_cols(const float *a, int rows, int C, int rank, int size)
{
    int Cl = C / size;
    float *o = malloc((size_t)rows * 3 * Cl * sizeof *o);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < 3; j++)
            memcpy(o + (size_t)r * 3 * Cl + (size_t)j * Cl, a + (size_t)r * 3 * C + (size_t)j * C +
                   (size_t)rank * Cl, (size_t)Cl * sizeof *o);
    return o;
}

static zinc_tp tp_of(const zinc_ops *o)
{
    return (zinc_tp){.group = g_size > 1 ? g_world : NULL, .size = g_size, .rank = g_rank, .ops = o};
}

/* Element i of an act tensor. */
static void *act_at(const zinc_ops *o, const void *p, size_t i)
{
    return (char *)p + i * zinc_dtype_size(o->act);
}

static void check(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double d = rel_diff(got, want, n);
    if (!(d <= tol)) fprintf(stderr, "rank %d: %s: rel diff %.3g > %.3g\n", g_rank, what, d, tol);
    CU_ASSERT(d <= tol);
}

/* y = gelu(x W1 + b1) W2 + b2, and its backward, whole vs split; with
 * sequence parallelism (sp) x, y, dy and dx hold this rank's N / size rows
 * and the region mappings gather and reduce-scatter them. */
static void mlp_case(const zinc_ops *o, double tol, int sp)
{
    const int N = 24, C = 32, H = 4 * C, Hl = H / g_size;
    float *x = randn("x", (size_t)N * C, 1.0f), *w1 = randn("w1", (size_t)C * H, 0.1f);
    float *b1 = randn("b1", H, 0.1f), *w2 = randn("w2", (size_t)H * C, 0.1f);
    float *b2 = randn("b2", C, 0.1f), *dyf = randn("dy", (size_t)N * C, 1.0f);
    void *xa = to_act(o, x, (size_t)N * C), *dy = to_act(o, dyf, (size_t)N * C);
    /* single rank, whole weights */
    void *pre = act_zeros(o, (size_t)N * H), *h = act_zeros(o, (size_t)N * H);
    void *y = act_zeros(o, (size_t)N * C), *dh = act_zeros(o, (size_t)N * H);
    void *dpre = act_zeros(o, (size_t)N * H), *dx = act_zeros(o, (size_t)N * C);
    float *dw1 = zeros((size_t)C * H), *db1 = zeros(H), *dw2 = zeros((size_t)H * C), *db2 = zeros(C);
    o->linear_forward(pre, xa, w1, b1, N, C, H);
    o->gelu_forward(h, pre, (size_t)N * H);
    o->linear_forward(y, h, w2, b2, N, H, C);
    o->linear_backward(dh, dw2, db2, dy, h, w2, N, H, C);
    o->gelu_backward(dpre, pre, dh, (size_t)N * H);
    o->linear_backward(dx, dw1, db1, dpre, xa, w1, N, C, H);
    /* split: c_fc by columns, c_proj by rows */
    zinc_tp t = tp_of(o);
    t.sequence_parallel = sp;
    const int Nr = zinc_tp_rows(&t, N), r0 = Nr < N ? g_rank * Nr : 0;
    void *full = act_zeros(o, (size_t)N * C), *part = act_zeros(o, (size_t)N * C);
    void *dfull = act_zeros(o, (size_t)N * C);
    float *w1l = cols(w1, C, H, g_rank * Hl, Hl), *b1l = cols(b1, 1, H, g_rank * Hl, Hl);
    const float *w2l = w2 + (size_t)g_rank * Hl * C;
    void *prel = act_zeros(o, (size_t)N * Hl), *hl = act_zeros(o, (size_t)N * Hl);
    void *yl = act_zeros(o, (size_t)N * C), *dhl = act_zeros(o, (size_t)N * Hl);
    void *dprel = act_zeros(o, (size_t)N * Hl), *dxl = act_zeros(o, (size_t)N * C);
    float *dw1l = zeros((size_t)C * Hl), *db1l = zeros(Hl), *dw2l = zeros((size_t)Hl * C), *db2l = zeros(C);
    zinc_comm_reset_bytes(g_world);
    zinc_status st;
    const void *xf = zinc_tp_region_enter(&t, full, act_at(o, xa, (size_t)r0 * C), N, C, &st);
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    zinc_tp_column_forward(&t, prel, xf, w1l, b1l, N, C, Hl);
    o->gelu_forward(hl, prel, (size_t)N * Hl);
    CU_ASSERT_EQUAL(zinc_tp_row_forward(&t, yl, part, hl, w2l, b2, N, Hl, C), ZINC_OK);
    const void *dyw = zinc_tp_region_enter(&t, dfull, act_at(o, dy, (size_t)r0 * C), N, C, &st);
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    zinc_tp_row_backward(&t, dhl, dw2l, db2l, dyw, hl, w2l, N, Hl, C);
    o->gelu_backward(dprel, prel, dhl, (size_t)N * Hl);
    CU_ASSERT_EQUAL(zinc_tp_column_backward(&t, dxl, part, dw1l, db1l, dprel, xf, w1l, N, C, Hl),
                    ZINC_OK);
    /* two all-reduces of N x C act per MLP (forward and backward), ring
     * bytes; with SP an all-gather and a reduce-scatter for each: the same */
    uint64_t want = g_size > 1 ? 2 * (uint64_t)(2.0 * (g_size - 1) / g_size * N * C *
                                                 zinc_dtype_size(o->act)) : 0;
    CU_ASSERT_EQUAL(zinc_tp_bytes(&t), want);
    float *yg = from_act(o, yl, (size_t)Nr * C), *yw = from_act(o, y, (size_t)N * C);
    float *dxg = from_act(o, dxl, (size_t)Nr * C), *dxw = from_act(o, dx, (size_t)N * C);
    float *dw1s = cols(dw1, C, H, g_rank * Hl, Hl), *db1s = cols(db1, 1, H, g_rank * Hl, Hl);
    check("mlp y", yg, yw + (size_t)r0 * C, (size_t)Nr * C, tol);
    check("mlp dx", dxg, dxw + (size_t)r0 * C, (size_t)Nr * C, tol);
    check("mlp dW1 slice", dw1l, dw1s, (size_t)C * Hl, tol);
    check("mlp db1 slice", db1l, db1s, (size_t)Hl, tol);
    check("mlp dW2 rows", dw2l, dw2 + (size_t)g_rank * Hl * C, (size_t)Hl * C, tol);
    check("mlp db2 (replicated)", db2l, db2, (size_t)C, tol);
    void *ptrs[] = {x, w1, b1, w2, b2, dyf, xa, dy, pre, h, y, dh, dpre, dx, dw1, db1, dw2, db2,
                    w1l, b1l, prel, hl, yl, dhl, dprel, dxl, dw1l, db1l, dw2l, db2l, yg, yw, dxg,
                    dxw, dw1s, db1s, full, part, dfull};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) free(ptrs[i]);
}

/* y = c_proj(attention(c_attn(x))), heads split over the ranks. */
static void attn_case(const zinc_ops *o, double tol)
{
    const int B = 2, T = 8, NH = 4, C = 32, N = B * T, Cl = C / g_size, NHl = NH / g_size;
    float *x = randn("ax", (size_t)N * C, 1.0f), *wa = randn("wa", (size_t)C * 3 * C, 0.2f);
    float *ba = randn("ba", 3 * C, 0.1f), *wp = randn("wp", (size_t)C * C, 0.1f);
    float *bp = randn("bp", C, 0.1f), *dyf = randn("ady", (size_t)N * C, 1.0f);
    void *xa = to_act(o, x, (size_t)N * C), *dy = to_act(o, dyf, (size_t)N * C);
    size_t sc = o->attention_scratch_floats(B, T, C, NH);
    /* single rank */
    void *qkv = act_zeros(o, (size_t)N * 3 * C), *att = act_zeros(o, (size_t)N * C);
    void *y = act_zeros(o, (size_t)N * C), *datt = act_zeros(o, (size_t)N * C);
    void *dqkv = act_zeros(o, (size_t)N * 3 * C), *dx = act_zeros(o, (size_t)N * C);
    float *lse = zeros((size_t)B * NH * T), *scr = zeros(sc);
    float *dwa = zeros((size_t)C * 3 * C), *dba = zeros(3 * C), *dwp = zeros((size_t)C * C), *dbp = zeros(C);
    o->linear_forward(qkv, xa, wa, ba, N, C, 3 * C);
    o->attention_forward(att, lse, qkv, B, T, C, NH);
    o->linear_forward(y, att, wp, bp, N, C, C);
    o->linear_backward(datt, dwp, dbp, dy, att, wp, N, C, C);
    o->attention_backward(dqkv, scr, datt, qkv, att, lse, B, T, C, NH);
    o->linear_backward(dx, dwa, dba, dqkv, xa, wa, N, C, 3 * C);
    /* split */
    zinc_tp t = tp_of(o);
    float *wal = qkv_cols(wa, C, C, g_rank, g_size), *bal = qkv_cols(ba, 1, C, g_rank, g_size);
    const float *wpl = wp + (size_t)g_rank * Cl * C;
    size_t scl = o->attention_scratch_floats(B, T, Cl, NHl);
    void *qkvl = act_zeros(o, (size_t)N * 3 * Cl), *attl = act_zeros(o, (size_t)N * Cl);
    void *yl = act_zeros(o, (size_t)N * C), *dattl = act_zeros(o, (size_t)N * Cl);
    void *dqkvl = act_zeros(o, (size_t)N * 3 * Cl), *dxl = act_zeros(o, (size_t)N * C);
    float *lsel = zeros((size_t)B * NHl * T), *scrl = zeros(scl);
    float *dwal = zeros((size_t)C * 3 * Cl), *dbal = zeros(3 * Cl), *dwpl = zeros((size_t)Cl * C), *dbpl = zeros(C);
    zinc_tp_column_forward(&t, qkvl, xa, wal, bal, N, C, 3 * Cl);
    o->attention_forward(attl, lsel, qkvl, B, T, Cl, NHl);
    CU_ASSERT_EQUAL(zinc_tp_row_forward(&t, yl, NULL, attl, wpl, bp, N, Cl, C), ZINC_OK);
    zinc_tp_row_backward(&t, dattl, dwpl, dbpl, dy, attl, wpl, N, Cl, C);
    o->attention_backward(dqkvl, scrl, dattl, qkvl, attl, lsel, B, T, Cl, NHl);
    CU_ASSERT_EQUAL(zinc_tp_column_backward(&t, dxl, NULL, dwal, dbal, dqkvl, xa, wal, N, C, 3 * Cl),
                    ZINC_OK);
    float *yg = from_act(o, yl, (size_t)N * C), *yw = from_act(o, y, (size_t)N * C);
    float *dxg = from_act(o, dxl, (size_t)N * C), *dxw = from_act(o, dx, (size_t)N * C);
    float *dwas = qkv_cols(dwa, C, C, g_rank, g_size), *dbas = qkv_cols(dba, 1, C, g_rank, g_size);
    check("attn y", yg, yw, (size_t)N * C, tol);
    check("attn dx", dxg, dxw, (size_t)N * C, tol);
    check("attn dW_qkv slice", dwal, dwas, (size_t)C * 3 * Cl, tol);
    check("attn db_qkv slice", dbal, dbas, (size_t)3 * Cl, tol);
    check("attn dW_proj rows", dwpl, dwp + (size_t)g_rank * Cl * C, (size_t)Cl * C, tol);
    check("attn db_proj (replicated)", dbpl, dbp, (size_t)C, tol);
    void *ptrs[] = {x, wa, ba, wp, bp, dyf, xa, dy, qkv, att, y, datt, dqkv, dx, lse, scr, dwa,
                    dba, dwp, dbp, wal, bal, qkvl, attl, yl, dattl, dqkvl, dxl, lsel, scrl, dwal,
                    dbal, dwpl, dbpl, yg, yw, dxg, dxw, dwas, dbas};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) free(ptrs[i]);
}

static void test_mlp_f32(void) { mlp_case(zinc_ops_cpu(), 1e-5, 0); }
static void test_mlp_bf16(void) { mlp_case(zinc_ops_cpu_bf16(), 3e-2, 0); }
static void test_mlp_sp_f32(void) { mlp_case(zinc_ops_cpu(), 1e-5, 1); }
static void test_mlp_sp_bf16(void) { mlp_case(zinc_ops_cpu_bf16(), 3e-2, 1); }
static void test_attn_f32(void) { attn_case(zinc_ops_cpu(), 1e-5); }
static void test_attn_bf16(void) { attn_case(zinc_ops_cpu_bf16(), 3e-2); }

/* GPT-2's ends, vocabulary split: embedding (wte rows split, wpe added once),
 * the tied head over this rank's rows and the vocab-parallel cross-entropy
 * equal the whole-vocabulary ops: losses, dx and the wte / wpe gradients. */
static void vocab_case(const zinc_ops *o, double tol, int sp)
{
    enum { B = 2, T = 6, N = B * T };
    const int C = 16, V = 256, Vl = V / g_size, v0 = g_rank * Vl;
    float *wte = randn("wte", (size_t)V * C, 0.5f), *wpe = randn("wpe", (size_t)T * C, 0.1f);
    int32_t tok[N], tgt[N];
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)((i * 53 + 7) % V);
        tgt[i] = i == 3 ? -1 : (int32_t)((i * 97 + 11) % V); /* one ignored row */
    }
    const float dloss = 1.0f / N;
    /* single rank */
    void *x = act_zeros(o, (size_t)N * C), *lg = act_zeros(o, (size_t)N * V);
    void *dx = act_zeros(o, (size_t)N * C);
    float *loss = zeros(N), *dwte = zeros((size_t)V * C), *dwpe = zeros((size_t)T * C);
    o->embedding_forward(x, tok, NULL, wte, wpe, B, T, C, 0, V);
    o->linear_t_forward(lg, x, wte, NULL, N, C, V);
    o->softmax_xent(loss, lg, tgt, dloss, N, V);
    o->linear_t_backward(dx, dwte, NULL, lg, x, wte, N, C, V);
    o->embedding_backward(dwte, dwpe, dx, tok, NULL, B, T, C, 0, V);
    /* split */
    zinc_tp t = tp_of(o);
    t.sequence_parallel = sp;
    const int Nr = zinc_tp_rows(&t, N), r0 = Nr < N ? g_rank * Nr : 0;
    const float *wtel = wte + (size_t)v0 * C;
    void *xl = act_zeros(o, (size_t)N * C), *lgl = act_zeros(o, (size_t)N * Vl);
    void *dxl = act_zeros(o, (size_t)N * C), *part = act_zeros(o, (size_t)N * C);
    void *full = act_zeros(o, (size_t)N * C);
    float *lossl = zeros(N), *dwtel = zeros((size_t)Vl * C), *dwpel = zeros((size_t)T * C);
    float *stats = zeros(3 * (size_t)N);
    /* with SP the embedding's output and the head's input gradient are row
     * blocks; the head reads the gathered whole */
    CU_ASSERT_EQUAL(zinc_tp_embedding_forward(&t, xl, part, tok, NULL, wtel, wpe, B, T, C, Vl), ZINC_OK);
    zinc_status st;
    const void *xf = zinc_tp_region_enter(&t, full, xl, N, C, &st);
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    zinc_tp_column_t_forward(&t, lgl, xf, wtel, NULL, N, C, Vl);
    CU_ASSERT_EQUAL(zinc_tp_softmax_xent(&t, lossl, lgl, tgt, dloss, stats, N, Vl), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_tp_column_t_backward(&t, dxl, part, dwtel, NULL, lgl, xf, wtel, N, C, Vl), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_tp_embedding_backward(&t, dwtel, dwpel, dxl, full, tok, NULL, B, T, C, Vl),
                    ZINC_OK);
    float *xg = from_act(o, xl, (size_t)Nr * C), *xw = from_act(o, x, (size_t)N * C);
    float *dxg = from_act(o, dxl, (size_t)Nr * C), *dxw = from_act(o, dx, (size_t)N * C);
    check("vocab x", xg, xw + (size_t)r0 * C, (size_t)Nr * C, tol);
    check("vocab losses", lossl, loss, (size_t)N, tol);
    CU_ASSERT_EQUAL(lossl[3], 0.0f);
    check("vocab dx", dxg, dxw + (size_t)r0 * C, (size_t)Nr * C, tol);
    check("vocab dwte rows", dwtel, dwte + (size_t)v0 * C, (size_t)Vl * C, tol);
    check("vocab dwpe (replicated)", dwpel, dwpe, (size_t)T * C, tol);
    void *ptrs[] = {wte, wpe, x, lg, dx, loss, dwte, dwpe, xl, lgl, dxl, lossl, dwtel, dwpel, stats,
                    xg, xw, dxg, dxw, part, full};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) free(ptrs[i]);
}

static void test_vocab_f32(void) { vocab_case(zinc_ops_cpu(), 1e-5, 0); }
static void test_vocab_bf16(void) { vocab_case(zinc_ops_cpu_bf16(), 3e-2, 0); }
static void test_vocab_sp_f32(void) { vocab_case(zinc_ops_cpu(), 1e-5, 1); }

/* Sequence parallelism's mappings: gathering the ranks' row blocks gives the
 * whole matrix; reduce-scattering the ranks' contributions gives this
 * rank's rows of their sum. */
static void test_sp_mappings(void)
{
    const zinc_ops *o = zinc_ops_cpu();
    zinc_tp t = tp_of(o);
    t.sequence_parallel = 1;
    const int N = 16, C = 8, Nl = N / g_size;
    float *whole = randn("sp", (size_t)N * C, 1.0f), *got = zeros((size_t)N * C);
    CU_ASSERT_EQUAL(zinc_tp_gather_rows(&t, got, whole + (size_t)g_rank * Nl * C, Nl, C), ZINC_OK);
    CU_ASSERT_EQUAL(memcmp(got, whole, (size_t)N * C * sizeof(float)), 0);
    /* rank r contributes (r + 1) x whole: the sum is size(size+1)/2 x whole */
    float *mine = malloc((size_t)N * C * sizeof(float)), *rows = zeros((size_t)Nl * C);
    for (int i = 0; i < N * C; i++) mine[i] = (float)(g_rank + 1) * whole[i];
    CU_ASSERT_EQUAL(zinc_tp_reduce_scatter_rows(&t, rows, mine, Nl, C), ZINC_OK);
    float k = (float)(g_size * (g_size + 1) / 2);
    double d = 0;
    for (int i = 0; i < Nl * C; i++) d = fmax(d, fabs(rows[i] - k * whole[(size_t)g_rank * Nl * C + i]));
    CU_ASSERT(d <= 1e-5 * k * 4);
    free(whole), free(got), free(mine), free(rows);
}

static void test_slices(void)
{
    int64_t lo;
    CU_ASSERT_EQUAL(zinc_tp_slice(768 * 4, 4, 3, &lo), 768);
    CU_ASSERT_EQUAL(lo, 768 * 3);
    CU_ASSERT_EQUAL(zinc_tp_slice(50304, 1, 0, &lo), 50304);
    CU_ASSERT_EQUAL(lo, 0);
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
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("tensor parallel", NULL, NULL);
    CU_add_test(s, "slices", test_slices);
    CU_add_test(s, "mlp fp32 = single rank", test_mlp_f32);
    CU_add_test(s, "mlp bf16 = single rank", test_mlp_bf16);
    CU_add_test(s, "attention fp32 = single rank", test_attn_f32);
    CU_add_test(s, "attention bf16 = single rank", test_attn_bf16);
    CU_add_test(s, "vocab-parallel embedding, head, xent fp32 = single rank", test_vocab_f32);
    CU_add_test(s, "vocab-parallel embedding, head, xent bf16 = single rank", test_vocab_bf16);
    CU_add_test(s, "sequence-parallel mappings", test_sp_mappings);
    CU_add_test(s, "mlp fp32, sequence parallel = single rank", test_mlp_sp_f32);
    CU_add_test(s, "mlp bf16, sequence parallel = single rank", test_mlp_sp_bf16);
    CU_add_test(s, "vocab-parallel ends fp32, sequence parallel = single rank", test_vocab_sp_f32);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    unsigned n_fail = CU_get_number_of_failures();
    CU_cleanup_registry();
    zinc_comm_destroy(g_world);
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
