/* bench_sgemm - this machine's OpenBLAS sgemm rate: the reference the
 * training benchmark is measured against.
 *   bench_sgemm [N=2048] [threads=2] [repeats=7]
 * Prints "sgemm N=2048 threads=2 median_gflops=..." (median of repeats). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

#include "zinc/blas.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2048;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    int reps = argc > 3 ? atoi(argv[3]) : 7;
    if (n < 1 || threads < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: bench_sgemm [N] [threads] [repeats<=100]\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    size_t nn = (size_t)n * n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "bench_sgemm: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        b[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
    }
    double g[100];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        g[r] = 2.0 * n * (double)n * n / (now_s() - t) / 1e9;
    }
    qsort(g, (size_t)reps, sizeof g[0], cmp_d);
    printf("blas: %s\n", zinc_blas_summary());
    printf("sgemm N=%d threads=%d median_gflops=%.1f\n", n, threads, g[reps / 2]);
    free(a);
    free(b);
    free(c);
    return 0;
}
