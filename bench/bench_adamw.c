/* bench_adamw.c - the CPU optimizer's bandwidth against the host's memory copy
 * bandwidth measured in the same run (issue 17: host AdamW at memory bandwidth).
 *
 *   bench_adamw [ELEMENTS] [REPS]      (default 32M elements, 7 repetitions)
 *
 * Reference: a parallel memcpy over all threads of a buffer the size of the
 * optimizer's traffic, GB/s counting bytes read plus bytes written. Measured: AdamW on
 * bf16 gradients and parameters with fp32 master, m, v (28 bytes an element moved) as
 * one pass (adamw_mixed, in each vector variant the CPU runs) and as the separate
 * passes it replaced (convert, scale, adamw, convert: 48 bytes an element). Each row:
 * median ms, GB/s of the 28 bytes an element the update needs, ratio to memcpy. */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/ops.h"
#include "zinc/tensor.h"
#include "../kernels/cpu/cpu_int.h" /* cpu_adamw_force_isa */
#include "bench_util.h"

enum { MAX_REPS = 64 };

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

static void par_copy(char *dst, const char *src, size_t bytes)
{
    const int nt = omp_get_max_threads();
    #pragma omp parallel for schedule(static)
    for (int k = 0; k < nt; k++) {
        size_t lo = bytes / (size_t)nt * (size_t)k, hi = k + 1 == nt ? bytes : bytes / (size_t)nt * (size_t)(k + 1);
        memcpy(dst + lo, src + lo, hi - lo);
    }
}

int main(int argc, char **argv)
{
    const size_t n = argc > 1 ? parse_size(argv[1]) : (size_t)32 << 20;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    if (n == 0 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "usage: bench_adamw [ELEMENTS] [REPS <= %d]\n", MAX_REPS);
        return 2;
    }
    const zinc_ops *o = zinc_ops_cpu();
    float *p = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4), *g32 = malloc(n * 4);
    uint16_t *g = malloc(n * 2), *out = malloc(n * 2);
    const size_t cbytes = n * 28 / 2; /* copied: read and written, 28 bytes an element in all */
    char *a = malloc(cbytes), *b = malloc(cbytes);
    if (!p || !m || !v || !g32 || !g || !out || !a || !b) {
        fprintf(stderr, "bench_adamw: out of memory for %zu elements\n", n);
        return 1;
    }
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        p[i] = 0.01f * (float)(i % 1000);
        m[i] = 0.0f;
        v[i] = 0.0f;
        g[i] = zinc_f32_to_bf16(1e-3f * (float)(i % 777) - 0.3f);
        out[i] = 0;
        g32[i] = 0.0f;
    }
    memset(a, 1, cbytes);
    memset(b, 2, cbytes);
    double t[MAX_REPS];
    par_copy(b, a, cbytes);
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        par_copy(b, a, cbytes);
        t[r] = now_s() - t0;
    }
    const double copy_s = median(t, reps), copy_gbs = 2.0 * (double)cbytes / copy_s / 1e9;
    const double need = 28.0 * (double)n; /* bytes the update moves */
    printf("bench_adamw: %zu elements (%.0f MB of optimizer traffic), %d threads, %d reps, median\n", n, need / 1e6,
           omp_get_max_threads(), reps);
    printf("%-34s %9s %9s %9s\n", "", "ms", "GB/s", "x memcpy");
    printf("%-34s %9.2f %9.2f %9.2f\n", "memcpy (read + write)", copy_s * 1e3, copy_gbs, 1.0);
    const int top = cpu_adamw_force_isa(-1);
    static const char *const isa[] = {"scalar", "avx2", "avx512"};
    double fused_best = 0;
    for (int k = top; k >= 0; k--) {
        cpu_adamw_force_isa(k);
        for (int r = 0; r <= reps; r++) { /* r 0: warm-up */
            double t0 = now_s();
            o->adamw_mixed(p, g, ZINC_DTYPE_BF16, 0.5f, m, v, out, ZINC_DTYPE_BF16, n, 1e-4f, 0.9f, 0.999f, 1e-8f,
                           0.01f, 1 + r);
            if (r) t[r - 1] = now_s() - t0;
        }
        const double s = median(t, reps), gbs = need / s / 1e9;
        if (k == top) fused_best = gbs;
        char name[64];
        snprintf(name, sizeof name, "one pass, bf16 (%s)", isa[k]);
        printf("%-34s %9.2f %9.2f %9.2f\n", name, s * 1e3, gbs, gbs / copy_gbs);
    }
    cpu_adamw_force_isa(-1);
    for (int r = 0; r <= reps; r++) {
        double t0 = now_s();
        o->convert(g32, ZINC_DTYPE_F32, g, ZINC_DTYPE_BF16, n);
        o->scale(g32, 0.5f, n);
        o->adamw(p, g32, m, v, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 1 + r);
        o->convert(out, ZINC_DTYPE_BF16, p, ZINC_DTYPE_F32, n);
        if (r) t[r - 1] = now_s() - t0;
    }
    const double s = median(t, reps), gbs = need / s / 1e9;
    printf("%-34s %9.2f %9.2f %9.2f\n", "separate passes, bf16", s * 1e3, gbs, gbs / copy_gbs);
    printf("one pass / separate passes: %.2fx; one pass / memcpy: %.2f\n", fused_best / gbs, fused_best / copy_gbs);
    free(p), free(m), free(v), free(g32), free(g), free(out), free(a), free(b);
    return 0;
}
