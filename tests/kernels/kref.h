/* kref.h - helpers of the CPU op tests (test_kernels.c, test_llama_ops.c): a
 * deterministic generator, float64 copies, tolerances against float64
 * references, central finite differences, and the bf16 conversions and
 * tolerance the act-bf16 table is held to. Static: each test program has its own. */
#ifndef ZINC_TESTS_KREF_H
#define ZINC_TESTS_KREF_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/tensor.h"

static uint64_t rng_state __attribute__((unused)) = 0x9E3779B97F4A7C15ull;

static inline uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float rng_unif(void)
{
    return (float)((double)(rng_next() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static inline float *frand(size_t n, float scale)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rng_unif();
    return x;
}

static inline double *to_double(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

static inline float *fcopy(const float *x, size_t n)
{
    float *y = malloc((n ? n : 1) * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* True if |got - ref| <= atol + rtol |ref| everywhere, atol = atol_rel *
 * max|ref| (so that elements near zero are judged on the tensor's scale).
 * Prints the worst element on failure. */
static inline int close_to(const char *what, const float *got, const double *ref, size_t n,
                    double rtol, double atol_rel)
{
    double mx = 0.0;
    for (size_t i = 0; i < n; i++)
        mx = fmax(mx, fabs(ref[i]));
    const double atol = atol_rel * (mx > 0.0 ? mx : 1.0);
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - ref[i]);
        const double lim = atol + rtol * fabs(ref[i]);
        if (!(err <= lim))
            bad++;
        if (!(err - lim <= worst_excess)) {
            worst_excess = err - lim;
            worst = i;
        }
    }
    if (bad)
        printf("\n  %s: %zu/%zu out of tolerance, worst [%zu] got %.9g ref %.9g\n", what, bad,
               n, worst, (double)got[worst], ref[worst]);
    return bad == 0;
}

/* Central differences of f at x (n doubles, perturbed in place and restored). */
static inline void fd_grad(double *grad, double *x, size_t n, double (*f)(void *), void *ctx)
{
    const double h = 1e-5;
    for (size_t i = 0; i < n; i++) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double fp = f(ctx);
        x[i] = x0 - h;
        const double fm = f(ctx);
        x[i] = x0;
        grad[i] = (fp - fm) / (2.0 * h);
    }
}

/* ref[i] = g0[i] + fd[i]: what an accumulating backward must produce. */
static inline double *plus(const float *g0, const double *fd, size_t n)
{
    double *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = (double)g0[i] + fd[i];
    return r;
}

static inline double dot_d(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* bf16 copies of x (rounded) and their fp32 values. */
static inline uint16_t *b16(const float *x, size_t n)
{
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = zinc_f32_to_bf16(x[i]);
    return h;
}

static inline float *wide(const uint16_t *h, size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = zinc_bf16_to_f32(h[i]);
    return x;
}

/* The bf16 result got against the fp32 op's result ref on the same
 * (widened) inputs: one rounding to bf16 apart (2^-8 relative, plus a
 * floor for values near zero). A wrapper that lost an accumulator's old
 * value, widened the wrong tensor or mis-sized one fails by far more. */
static inline int b16_close(const char *what, const uint16_t *got, const float *ref, size_t n)
{
    double amax = 0.0;
    for (size_t i = 0; i < n; i++)
        amax = fmax(amax, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        const double g = zinc_bf16_to_f32(got[i]), r = ref[i];
        if (!(fabs(g - r) <= 0x1p-8 * fabs(r) + 1e-6 * amax)) {
            printf("\n  %s: element %zu: bf16 %.8g, fp32 %.8g\n", what, i, g, r);
            return 0;
        }
    }
    return 1;
}

#endif
