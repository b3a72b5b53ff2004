/* bench_gemm_bf16 - cpu_gemm_bf16 (bf16 products, fp32 accumulation)
 * against cblas_sgemm at the products of the training benchmark's model
 * (GPT-2 L=6, C=384, V=50304, N=B*T=256 rows) and 2048^3.
 *   bench_gemm_bf16 [threads=2] [repeats=15]
 * Each shape runs sgemm and the bf16 product alternately, repeats times
 * each, after one warm-up call of each; prints the median GFLOP/s (2mnk /
 * time) of both and their ratio. Operand dtypes as the cpu-bf16 table
 * passes them: activations bf16, weights f32 (rounded while packing);
 * sgemm gets the same values in fp32. */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cblas.h>

#include "zinc/blas.h"
#include "bench_util.h"
#include "../kernels/cpu/cpu_int.h"

typedef struct shape {
    int m, n, k, ta, tb;
    zinc_dtype adt, bdt;
    float beta;
    const char *what;
} shape;

#define BF ZINC_DTYPE_BF16
#define F32 ZINC_DTYPE_F32

static const shape shapes[] = {
    {256, 1152, 384, 0, 0, BF, F32, 0.0f, "qkv fwd"},
    {256, 384, 1152, 0, 1, BF, F32, 1.0f, "qkv dinp"},
    {384, 1152, 256, 1, 0, BF, BF, 1.0f, "qkv dW"},
    {256, 1536, 384, 0, 0, BF, F32, 0.0f, "fc fwd"},
    {256, 384, 1536, 0, 1, BF, F32, 1.0f, "fcproj dinp"},
    {384, 1536, 256, 1, 0, BF, BF, 1.0f, "fc dW"},
    {256, 50304, 384, 0, 1, BF, F32, 0.0f, "head fwd"},
    {256, 384, 50304, 0, 0, BF, F32, 1.0f, "head dinp"},
    {50304, 384, 256, 1, 0, BF, BF, 1.0f, "head dW"},
    {2048, 2048, 2048, 0, 0, BF, BF, 0.0f, "square"},
};

/* Uniform in [-0.5, 0.5), rounded to bf16 so both products see equal values. */
static void fill(float *x, uint16_t *h, size_t n, uint32_t seed)
{
    uint32_t s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        h[i] = zinc_f32_to_bf16((float)(s >> 8) / 16777216.0f - 0.5f);
        x[i] = zinc_bf16_to_f32(h[i]);
    }
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const int reps = argc > 2 ? atoi(argv[2]) : 15;
    if (threads < 1 || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: bench_gemm_bf16 [threads] [repeats<=1000]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    printf("blas: %s\n", zinc_blas_summary());
    printf("threads=%d repeats=%d native=%d (median GFLOP/s)\n", threads, reps,
           cpu_gemm_bf16_native());
    printf("%-12s %6s %6s %6s %2s %2s %9s %9s %6s\n", "product", "m", "n", "k", "ta", "tb",
           "sgemm", "bf16", "ratio");
    double *ts = malloc((size_t)reps * sizeof *ts), *tb = malloc((size_t)reps * sizeof *tb);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *sh = &shapes[si];
        const size_t na = (size_t)sh->m * sh->k, nb = (size_t)sh->k * sh->n;
        const size_t nc = (size_t)sh->m * sh->n;
        float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b);
        uint16_t *ah = malloc(na * sizeof *ah), *bh = malloc(nb * sizeof *bh);
        float *c1 = calloc(nc, sizeof *c1), *c2 = calloc(nc, sizeof *c2);
        if (!a || !b || !ah || !bh || !c1 || !c2 || !ts || !tb) {
            fprintf(stderr, "bench_gemm_bf16: out of memory\n");
            return 1;
        }
        fill(a, ah, na, 1u + (uint32_t)si);
        fill(b, bh, nb, 101u + (uint32_t)si);
        const void *pa = sh->adt == BF ? (const void *)ah : a;
        const void *pb = sh->bdt == BF ? (const void *)bh : b;
        const int lda = sh->ta ? sh->m : sh->k, ldb = sh->tb ? sh->k : sh->n;
        const double flop = 2.0 * sh->m * sh->n * (double)sh->k;
        for (int r = -1; r < reps; r++) {
            double t = now_s();
            cblas_sgemm(CblasRowMajor, sh->ta ? CblasTrans : CblasNoTrans,
                        sh->tb ? CblasTrans : CblasNoTrans, sh->m, sh->n, sh->k, 1.0f, a, lda,
                        b, ldb, sh->beta, c1, sh->n);
            const double t1 = now_s() - t;
            t = now_s();
            cpu_gemm_bf16(c2, pa, sh->adt, pb, sh->bdt, sh->m, sh->n, sh->k, sh->ta, sh->tb,
                          1.0f, sh->beta);
            const double t2 = now_s() - t;
            if (r >= 0)
                ts[r] = flop / t1 / 1e9, tb[r] = flop / t2 / 1e9;
        }
        const double gs = median(ts, reps), gb = median(tb, reps);
        printf("%-12s %6d %6d %6d %2d %2d %9.1f %9.1f %6.2f\n", sh->what, sh->m, sh->n, sh->k,
               sh->ta, sh->tb, gs, gb, gb / gs);
        fflush(stdout);
        free(a), free(b), free(ah), free(bh), free(c1), free(c2);
    }
    free(ts), free(tb);
    return 0;
}
