/* test_gemm_bf16.c - cpu_gemm_bf16 (bf16 products, fp32 accumulation)
 * against float64 references computed from the bf16-rounded operands.
 *
 * Every case runs the AVX512_BF16 path (where the CPU has it) and the
 * portable C path (cpu_gemm_bf16_force_fallback). Checks:
 *  - random operands, all 4 transpose combos, f32 and bf16 operands,
 *    sizes odd, tiny and ragged against the 8 x 48 microtile and the k
 *    block (384), alpha/beta: every element within the fp32 bound of a
 *    recursive sum of k exact products (Higham): |c - ref| <= |alpha|
 *    gamma_k S + 3u (|alpha ref_s| + |beta c0|), S = sum |a_i b_i|, u =
 *    2^-24, gamma_k = k u / (1 - k u). An f32 operand must be rounded to
 *    bf16 to nearest even while packing: truncating instead moves products
 *    by up to 2^-8 relative, far past that bound at these k.
 *  - small-integer operands, where every partial sum is exact in fp32: c
 *    must equal the reference exactly, so a product lost, doubled or taken
 *    from the wrong row fails even at the benchmark model's shapes (k up
 *    to 50304, where the rounding bound is too loose to see one product).
 *  - beta 0 never reads c (c poisoned with NaN), beta 1 accumulates;
 *    k = 0 gives beta c; m or n = 0 touches nothing.
 *  - bitwise the same results with 1, 2 (and, where small, 3) OpenMP
 *    threads (the tiling differs), at shapes with several tiles and k
 *    blocks and at the model's head products.
 *  - the native and the C path agree within the bound above. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "../../kernels/cpu/cpu_int.h"

#define BF ZINC_DTYPE_BF16
#define F32 ZINC_DTYPE_F32

/* ---------- helpers ---------- */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static double rng_unif(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}

/* One operand in both dtypes: f (f32, as given to cpu_gemm_bf16 when its
 * dtype is f32), h (bf16, the rounded f), r (fp32 value of h: what the
 * reference multiplies). */
typedef struct opnd {
    float *f, *r;
    uint16_t *h;
    size_t n;
} opnd;

/* kind 0: uniform in [-1, 1) (f32 values not bf16-representable);
 * kind 1: integers in [-8, 8] (exact). */
static opnd opnd_make(size_t n, int kind)
{
    opnd o = {malloc((n ? n : 1) * sizeof(float)), malloc((n ? n : 1) * sizeof(float)),
              malloc((n ? n : 1) * sizeof(uint16_t)), n};
    for (size_t i = 0; i < n; i++) {
        o.f[i] = kind ? (float)((int)(rng_next() % 17) - 8) : (float)rng_unif();
        o.h[i] = zinc_f32_to_bf16(o.f[i]);
        o.r[i] = zinc_bf16_to_f32(o.h[i]);
    }
    return o;
}

static void opnd_free(opnd *o)
{
    free(o->f), free(o->r), free(o->h);
}

static const void *opnd_ptr(const opnd *o, zinc_dtype dt)
{
    return dt == BF ? (const void *)o->h : (const void *)o->f;
}

typedef struct gcase {
    int m, n, k, ta, tb;
    zinc_dtype adt, bdt;
    float alpha, beta;
} gcase;

/* Element (i, j) of the reference: s = sum a(i,kk) b(kk,j) in double and
 * S = sum |a(i,kk) b(kk,j)|, from the rounded operands. */
static void ref_elem(const gcase *g, const opnd *a, const opnd *b, int i, int j, double *s,
                     double *S)
{
    double acc = 0.0, abs_acc = 0.0;
    for (int kk = 0; kk < g->k; kk++) {
        const double x = a->r[g->ta ? (size_t)kk * g->m + i : (size_t)i * g->k + kk];
        const double y = b->r[g->tb ? (size_t)j * g->k + kk : (size_t)kk * g->n + j];
        acc += x * y;
        abs_acc += fabs(x * y);
    }
    *s = acc, *S = abs_acc;
}

/* Checks element (i, j) of c; exact: must equal the reference. Prints
 * the first failure. */
static int elem_ok(const char *what, const gcase *g, const opnd *a, const opnd *b,
                   const float *c, const float *c0, int i, int j, int exact)
{
    double s, S;
    ref_elem(g, a, b, i, j, &s, &S);
    const double u = 0x1p-24, gam = g->k * u / (1.0 - g->k * u);
    const double old = g->beta != 0.0f ? (double)g->beta * c0[(size_t)i * g->n + j] : 0.0;
    const double ref = (double)g->alpha * s + old;
    const double tol = exact ? 0.0
                             : fabs(g->alpha) * gam * S +
                                   3.0 * u * (fabs(g->alpha) * (fabs(s) + gam * S) + fabs(old)) +
                                   1e-30;
    const double got = c[(size_t)i * g->n + j];
    if (!(fabs(got - ref) <= tol)) {
        printf("\n  %s: m %d n %d k %d ta %d tb %d adt %s bdt %s alpha %g beta %g: "
               "(%d,%d) got %.9g ref %.9g tol %.3g\n",
               what, g->m, g->n, g->k, g->ta, g->tb, zinc_dtype_name(g->adt),
               zinc_dtype_name(g->bdt), g->alpha, g->beta, i, j, got, ref, tol);
        return 0;
    }
    return 1;
}

/* Runs case g on fresh operands of kind; checks every element, or, when
 * sample, 2 full rows, 2 full columns and 300 random elements. */
static int run_case(const char *what, const gcase *g, int kind, int sample)
{
    opnd a = opnd_make((size_t)g->m * g->k, kind), b = opnd_make((size_t)g->k * g->n, kind);
    const size_t nc = (size_t)g->m * g->n;
    float *c0 = malloc((nc ? nc : 1) * sizeof *c0), *c = malloc((nc ? nc : 1) * sizeof *c);
    for (size_t i = 0; i < nc; i++) {
        c0[i] = kind ? (float)((int)(rng_next() % 9) - 4) : (float)rng_unif();
        c[i] = g->beta == 0.0f ? NAN : c0[i]; /* beta 0 must not read c */
    }
    cpu_gemm_bf16(c, opnd_ptr(&a, g->adt), g->adt, opnd_ptr(&b, g->bdt), g->bdt, g->m, g->n,
                  g->k, g->ta, g->tb, g->alpha, g->beta);
    int ok = 1;
    if (!sample) {
        for (int i = 0; i < g->m && ok; i++)
            for (int j = 0; j < g->n && ok; j++)
                ok = elem_ok(what, g, &a, &b, c, c0, i, j, kind);
    } else {
        for (int r = 0; r < 2 && ok; r++) {
            const int i = r ? g->m - 1 : (int)(rng_next() % (uint64_t)g->m);
            for (int j = 0; j < g->n && ok; j++)
                ok = elem_ok(what, g, &a, &b, c, c0, i, j, kind);
            const int jj = r ? g->n - 1 : (int)(rng_next() % (uint64_t)g->n);
            for (int i2 = 0; i2 < g->m && ok; i2++)
                ok = elem_ok(what, g, &a, &b, c, c0, i2, jj, kind);
        }
        for (int t = 0; t < 300 && ok; t++)
            ok = elem_ok(what, g, &a, &b, c, c0, (int)(rng_next() % (uint64_t)g->m),
                         (int)(rng_next() % (uint64_t)g->n), kind);
    }
    opnd_free(&a), opnd_free(&b);
    free(c0), free(c);
    return ok;
}

/* Calls fn with the native path (if this CPU has it), then the C path. */
static void both_paths(void (*fn)(const char *))
{
    if (cpu_gemm_bf16_native())
        fn("native");
    else
        printf("\n  (no AVX512_BF16 here: the C path only) ");
    cpu_gemm_bf16_force_fallback(1);
    CU_ASSERT_FALSE(cpu_gemm_bf16_native());
    fn("C");
    cpu_gemm_bf16_force_fallback(0);
}

/* ---------- random operands: the rounding bound ---------- */

static const int sizes_mnk[][3] = {
    {1, 1, 1},   {1, 1, 2},    {2, 3, 1},   {7, 5, 3},    {8, 48, 2},   {9, 49, 33},
    {16, 96, 64}, {17, 47, 385}, {33, 97, 31}, {1, 200, 17}, {200, 1, 17}, {64, 50, 767},
    {130, 250, 384}, {31, 130, 769}, {257, 100, 96},
};

static void random_cases(const char *path)
{
    char what[64];
    snprintf(what, sizeof what, "random (%s)", path);
    const zinc_dtype dts[2] = {BF, F32};
    int ok = 1;
    for (size_t si = 0; si < sizeof sizes_mnk / sizeof sizes_mnk[0] && ok; si++)
        for (int tr = 0; tr < 4 && ok; tr++)
            for (int d = 0; d < 4 && ok; d++) {
                /* the big ones in 4 of the 16 (transpose, dtype) combinations */
                if ((double)sizes_mnk[si][0] * sizes_mnk[si][1] * sizes_mnk[si][2] > 1e6 && d != tr)
                    continue;
                /* alpha/beta: plain, accumulate, both scaled */
                const float alphas[3] = {1.0f, 1.0f, -0.75f}, betas[3] = {0.0f, 1.0f, 0.5f};
                const int ab = (int)((si + tr + d) % 3);
                const gcase g = {sizes_mnk[si][0], sizes_mnk[si][1], sizes_mnk[si][2], tr & 1,
                                 tr >> 1, dts[d & 1], dts[d >> 1], alphas[ab], betas[ab]};
                ok = run_case(what, &g, 0, 0);
            }
    CU_ASSERT(ok);
}

static void test_random(void)
{
    both_paths(random_cases);
}

/* ---------- integer operands: exact, at the model's shapes too ---------- */

static void exact_cases(const char *path)
{
    char what[64];
    snprintf(what, sizeof what, "exact (%s)", path);
    int ok = 1;
    for (int tr = 0; tr < 4 && ok; tr++) { /* ragged, several tiles and k blocks */
        const gcase g = {101, 203, 800, tr & 1, tr >> 1, tr == 1 ? F32 : BF,
                         tr == 2 ? F32 : BF, 2.0f, 0.5f};
        ok = run_case(what, &g, 1, 0);
        const gcase g2 = {301, 515, 1000, tr & 1, tr >> 1, tr == 2 ? F32 : BF,
                          tr == 1 ? F32 : BF, 1.0f, 1.0f};
        ok = ok && run_case(what, &g2, 1, 1);
    }
    CU_ASSERT(ok);
    if (strcmp(path, "native"))
        return; /* the model's shapes: the fast path only (seconds in C) */
    /* (m, n, k, ta, tb) of GPT-2 L=6 C=384 V=50304 at N = 256 rows, the
     * dtypes the cpu-bf16 table passes (act bf16, weights f32) */
    static const gcase model[] = {
        {256, 1152, 384, 0, 0, BF, F32, 1.0f, 0.0f},  {256, 384, 1152, 0, 1, BF, F32, 1.0f, 1.0f},
        {384, 1152, 256, 1, 0, BF, BF, 1.0f, 1.0f},   {256, 1536, 384, 0, 0, BF, F32, 1.0f, 0.0f},
        {256, 384, 1536, 0, 1, BF, F32, 1.0f, 1.0f},  {384, 1536, 256, 1, 0, BF, BF, 1.0f, 1.0f},
        {256, 50304, 384, 0, 1, BF, F32, 1.0f, 0.0f}, {256, 384, 50304, 0, 0, BF, F32, 1.0f, 1.0f},
        {50304, 384, 256, 1, 0, BF, BF, 1.0f, 1.0f},
    };
    for (size_t i = 0; i < sizeof model / sizeof model[0] && ok; i++)
        ok = run_case(what, &model[i], 1, 1);
    CU_ASSERT(ok);
}

static void test_exact(void)
{
    both_paths(exact_cases);
}

/* ---------- edges: k = 0, m or n = 0, NaN never read ---------- */

static void edge_cases(const char *path)
{
    (void)path;
    float c[6] = {NAN, NAN, NAN, NAN, NAN, NAN};
    /* k = 0, beta 0: zeros, c not read (NULL operands are allowed) */
    cpu_gemm_bf16(c, NULL, BF, NULL, F32, 2, 3, 0, 0, 0, 1.0f, 0.0f);
    int zeros = 1;
    for (int i = 0; i < 6; i++)
        zeros &= c[i] == 0.0f && !signbit(c[i]);
    CU_ASSERT(zeros);
    /* k = 0, beta 0.5: c halves */
    for (int i = 0; i < 6; i++)
        c[i] = (float)(i + 1);
    cpu_gemm_bf16(c, NULL, BF, NULL, BF, 2, 3, 0, 1, 1, 1.0f, 0.5f);
    int halves = 1;
    for (int i = 0; i < 6; i++)
        halves &= c[i] == 0.5f * (float)(i + 1);
    CU_ASSERT(halves);
    /* m = 0 or n = 0: nothing written */
    const uint16_t one = zinc_f32_to_bf16(1.0f);
    for (int i = 0; i < 6; i++)
        c[i] = 7.0f;
    cpu_gemm_bf16(c, &one, BF, &one, BF, 0, 3, 1, 0, 0, 1.0f, 0.0f);
    cpu_gemm_bf16(c, &one, BF, &one, BF, 2, 0, 1, 0, 0, 1.0f, 0.0f);
    int untouched = 1;
    for (int i = 0; i < 6; i++)
        untouched &= c[i] == 7.0f;
    CU_ASSERT(untouched);
    /* an element's NaN operand reaches exactly its row (and no other) */
    float a[4 * 3], b[3 * 50], cc[4 * 50];
    for (int i = 0; i < 12; i++)
        a[i] = 1.0f;
    for (int i = 0; i < 150; i++)
        b[i] = 0.5f;
    a[2 * 3 + 1] = NAN;
    cpu_gemm_bf16(cc, a, F32, b, F32, 4, 50, 3, 0, 0, 1.0f, 0.0f);
    int nan_ok = 1;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 50; j++)
            nan_ok &= i == 2 ? isnan(cc[i * 50 + j]) : cc[i * 50 + j] == 1.5f;
    CU_ASSERT(nan_ok);
}

static void test_edges(void)
{
    both_paths(edge_cases);
}

/* ---------- thread-count independence ---------- */

static void threads_cases(const char *path)
{
    (void)path;
    static const gcase cases[] = {
        {300, 700, 1000, 0, 1, BF, F32, 1.0f, 1.0f}, /* k blocks, tiles both ways */
        {1000, 100, 50, 1, 0, BF, BF, 1.0f, 1.0f},   /* many row tiles: op(b) shared */
        {70, 2000, 390, 0, 0, F32, F32, -1.0f, 0.5f}, /* many column tiles: op(a) shared */
        {256, 384, 50304, 0, 0, BF, F32, 1.0f, 1.0f}, /* the head's products */
        {50304, 384, 256, 1, 0, BF, BF, 1.0f, 1.0f},
    };
    const int saved = omp_get_max_threads();
    int same = 1;
    const size_t ncase = cpu_gemm_bf16_native() ? sizeof cases / sizeof cases[0] : 3;
    for (size_t ci = 0; ci < ncase; ci++) {
        const gcase *g = &cases[ci];
        opnd a = opnd_make((size_t)g->m * g->k, 0), b = opnd_make((size_t)g->k * g->n, 0);
        const size_t nc = (size_t)g->m * g->n;
        float *c0 = malloc(nc * sizeof *c0), *c[3] = {NULL, NULL, NULL};
        for (size_t i = 0; i < nc; i++)
            c0[i] = (float)rng_unif();
        /* 3 threads (more than this machine may have cores) only where small */
        const int nt = (double)g->m * g->n * g->k < 1e9 ? 3 : 2;
        for (int t = 0; t < nt; t++) {
            c[t] = malloc(nc * sizeof *c[t]);
            memcpy(c[t], c0, nc * sizeof *c0);
            omp_set_num_threads(t + 1);
            cpu_gemm_bf16(c[t], opnd_ptr(&a, g->adt), g->adt, opnd_ptr(&b, g->bdt), g->bdt,
                          g->m, g->n, g->k, g->ta, g->tb, g->alpha, g->beta);
        }
        omp_set_num_threads(saved);
        for (int t = 1; t < nt; t++)
            if (memcmp(c[0], c[t], nc * sizeof *c0)) {
                printf("\n  m %d n %d k %d: %d threads differ from 1\n", g->m, g->n, g->k, t + 1);
                same = 0;
            }
        opnd_free(&a), opnd_free(&b);
        free(c0), free(c[0]), free(c[1]), free(c[2]);
    }
    CU_ASSERT(same);
}

static void test_threads(void)
{
    both_paths(threads_cases);
}

/* ---------- the two paths agree ---------- */

static void test_paths_agree(void)
{
    if (!cpu_gemm_bf16_native()) {
        printf("\n  (no AVX512_BF16 here: nothing to compare) ");
        return;
    }
    const gcase g = {97, 301, 1001, 1, 1, F32, BF, 1.0f, 1.0f};
    opnd a = opnd_make((size_t)g.m * g.k, 0), b = opnd_make((size_t)g.k * g.n, 0);
    const size_t nc = (size_t)g.m * g.n;
    float *c0 = malloc(nc * sizeof *c0), *c1 = malloc(nc * sizeof *c1);
    for (size_t i = 0; i < nc; i++)
        c0[i] = (float)rng_unif();
    memcpy(c1, c0, nc * sizeof *c0);
    cpu_gemm_bf16(c1, a.f, g.adt, b.h, g.bdt, g.m, g.n, g.k, g.ta, g.tb, g.alpha, g.beta);
    float *c2 = malloc(nc * sizeof *c2);
    memcpy(c2, c0, nc * sizeof *c0);
    cpu_gemm_bf16_force_fallback(1);
    cpu_gemm_bf16(c2, a.f, g.adt, b.h, g.bdt, g.m, g.n, g.k, g.ta, g.tb, g.alpha, g.beta);
    cpu_gemm_bf16_force_fallback(0);
    /* both within the bound of the reference: within twice it of each other */
    const double u = 0x1p-24, gam = g.k * u / (1.0 - g.k * u);
    int ok = 1;
    size_t same = 0;
    for (int i = 0; i < g.m && ok; i++)
        for (int j = 0; j < g.n && ok; j++) {
            double s, S;
            ref_elem(&g, &a, &b, i, j, &s, &S);
            const size_t e = (size_t)i * g.n + j;
            const double tol = 2.0 * (gam * S + 3.0 * u * (fabs(s) + gam * S + fabs(c0[e])));
            ok = fabs((double)c1[e] - c2[e]) <= tol;
            same += c1[e] == c2[e];
        }
    CU_ASSERT(ok);
    printf("\n  native and C paths bitwise equal on %zu of %zu elements ", same, nc);
    opnd_free(&a), opnd_free(&b);
    free(c0), free(c1), free(c2);
}

int main(void)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"random", test_random},   {"exact", test_exact},
        {"edges", test_edges},     {"threads", test_threads},
        {"paths_agree", test_paths_agree},
    };
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("gemm_bf16", NULL, NULL);
    if (!s)
        return 1;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (!CU_add_test(s, tests[i].name, tests[i].fn))
            return 1;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    const unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
