/* test_adamw_mixed.c - the CPU's one-pass AdamW (adamw_mixed: gradient read as stored,
 * scaled, parameters written in their 16-bit dtype) against the separate passes it
 * replaces (convert, scale, adamw, convert) on the CPU op table: bitwise equal for every
 * pair of gradient and parameter dtypes, with and without a coefficient, in every vector
 * variant the machine runs (scalar, AVX2, AVX-512: the same bits from each), on 1 and
 * several threads, at an odd offset, with the output written over the gradient's own
 * memory; the inputs hold fp16-subnormal and overflowing parameters, bf16 rounding ties
 * and a few non-finite gradients (the scalar fallback of a vector). And against a float64
 * AdamW within fp32 rounding. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/ops.h"
#include "zinc/tensor.h"
#include "../../kernels/cpu/cpu_int.h" /* cpu_adamw_force_isa */
#include "../unit.h"

enum { N = 40000 + 37 }; /* over the threading threshold; odd */
static const float LR = 1e-2f, B1 = 0.9f, B2 = 0.95f, EPS = 1e-8f, WD = 0.1f;
static const int T = 7;

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float urand(void)
{
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void store_as(void *p, zinc_dtype dt, size_t i, float x)
{
    if (dt == ZINC_DTYPE_F32) ((float *)p)[i] = x;
    else if (dt == ZINC_DTYPE_BF16) ((uint16_t *)p)[i] = zinc_f32_to_bf16(x);
    else ((uint16_t *)p)[i] = zinc_f32_to_f16(x);
}

typedef struct state {
    float p[N], m[N], v[N];
    unsigned char g[N * 4]; /* as gdt */
} state;

static void fill(state *s, zinc_dtype gdt)
{
    for (size_t i = 0; i < N; i++) {
        float p = urand();
        if (i % 97 == 3) p = ldexpf(urand(), -20);      /* an fp16 subnormal once updated */
        if (i % 101 == 5) p = 70000.0f * urand();       /* beyond fp16's range */
        if (i % 89 == 7) p = zinc_bits_f32_(0x3f808000u); /* a bf16 tie */
        s->p[i] = p;
        s->m[i] = 0.1f * urand();
        s->v[i] = 0.01f * fabsf(urand());
        float g = urand();
        if (i % 4099 == 11) g = INFINITY;
        if (i % 5003 == 13) g = NAN;
        store_as(s->g, gdt, i, g);
    }
}

/* the separate passes on the CPU table, scalar variant */
static void reference(const zinc_ops *o, state *s, zinc_dtype gdt, float coef, void *out, zinc_dtype odt, size_t n)
{
    float *g32 = malloc(n * sizeof *g32);
    o->convert(g32, ZINC_DTYPE_F32, s->g, gdt, n);
    if (coef != 1.0f) o->scale(g32, coef, n);
    cpu_adamw_force_isa(0);
    o->adamw(s->p, g32, s->m, s->v, n, LR, B1, B2, EPS, WD, T);
    cpu_adamw_force_isa(-1);
    o->convert(out, odt, s->p, ZINC_DTYPE_F32, n);
    free(g32);
}

static int same_bytes(const char *what, const void *a, const void *b, size_t bytes)
{
    if (!memcmp(a, b, bytes)) return 1;
    const unsigned char *x = a, *y = b;
    size_t i = 0;
    while (x[i] == y[i]) i++;
    printf("\n  %s: first difference at byte %zu\n", what, i);
    return 0;
}

static void test_bitwise(void)
{
    const zinc_ops *o = zinc_ops_cpu();
    CU_ASSERT_PTR_NOT_NULL_FATAL(o->adamw_mixed);
    static state s0, ref, got;
    static unsigned char rout[N * 4], gout[N * 4];
    const zinc_dtype dts[3] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_F16};
    const int top = cpu_adamw_force_isa(-1);
    printf("(variants up to %s) ", cpu_adamw_isa());
    for (int gi = 0; gi < 3; gi++)
        for (int oi = 0; oi < 3; oi++)
            for (int ci = 0; ci < 2; ci++) {
                const zinc_dtype gdt = dts[gi], odt = dts[oi];
                const float coef = ci ? 0.37f : 1.0f;
                const size_t gsz = zinc_dtype_size(gdt), osz = zinc_dtype_size(odt);
                fill(&s0, gdt);
                ref = s0;
                reference(o, &ref, gdt, coef, rout, odt, N);
                for (int isa = 0; isa <= top; isa++)
                    for (int th = 1; th <= 2; th++) {
                        omp_set_num_threads(th);
                        cpu_adamw_force_isa(isa);
                        got = s0;
                        memset(gout, 0xee, sizeof gout);
                        o->adamw_mixed(got.p, got.g, gdt, coef, got.m, got.v, gout, odt, N, LR, B1, B2, EPS, WD, T);
                        char what[96];
                        snprintf(what, sizeof what, "g %s out %s coef %g variant %d threads %d", zinc_dtype_name(gdt),
                                 zinc_dtype_name(odt), coef, isa, th);
                        int ok = same_bytes(what, got.p, ref.p, sizeof got.p) &&
                                 same_bytes(what, got.m, ref.m, sizeof got.m) &&
                                 same_bytes(what, got.v, ref.v, sizeof got.v) &&
                                 same_bytes(what, gout, rout, N * osz);
                        CU_ASSERT(ok);
                        /* at an odd offset, the output over the gradient (same dtype only) */
                        if (gdt == odt) {
                            got = s0;
                            o->adamw_mixed(got.p + 1, got.g + gsz, gdt, coef, got.m + 1, got.v + 1, got.g + gsz, odt,
                                           N - 1, LR, B1, B2, EPS, WD, T);
                            state r1 = s0;
                            static unsigned char r1out[N * 4];
                            state *sub = &r1;
                            float *g32 = malloc(N * sizeof *g32);
                            o->convert(g32, ZINC_DTYPE_F32, sub->g + gsz, gdt, N - 1);
                            if (coef != 1.0f) o->scale(g32, coef, N - 1);
                            cpu_adamw_force_isa(0);
                            o->adamw(sub->p + 1, g32, sub->m + 1, sub->v + 1, N - 1, LR, B1, B2, EPS, WD, T);
                            o->convert(r1out, odt, sub->p + 1, ZINC_DTYPE_F32, N - 1);
                            free(g32);
                            CU_ASSERT(same_bytes("in place, offset 1", got.g + gsz, r1out, (N - 1) * osz));
                            CU_ASSERT(same_bytes("in place, offset 1: master", got.p, r1.p, sizeof got.p));
                        }
                    }
                cpu_adamw_force_isa(-1);
            }
    omp_set_num_threads(omp_get_num_procs());
}

/* float64 AdamW: the fused op within fp32 rounding of it (finite gradients) */
static void test_reference(void)
{
    const zinc_ops *o = zinc_ops_cpu();
    static state s;
    fill(&s, ZINC_DTYPE_BF16);
    for (size_t i = 0; i < N; i++)
        if (!isfinite(zinc_bf16_to_f32(((uint16_t *)s.g)[i]))) ((uint16_t *)s.g)[i] = 0x3f00;
    static double rp[N];
    const double c = 0.5, i1 = 1.0 / (1.0 - pow(B1, T)), i2 = 1.0 / (1.0 - pow(B2, T));
    for (size_t i = 0; i < N; i++) {
        double g = (double)zinc_bf16_to_f32(((uint16_t *)s.g)[i]) * c;
        double m = B1 * (double)s.m[i] + (1.0 - B1) * g, v = B2 * (double)s.v[i] + (1.0 - B2) * g * g;
        rp[i] = s.p[i] - LR * (m * i1 / (sqrt(v * i2) + EPS) + WD * s.p[i]);
    }
    o->adamw_mixed(s.p, s.g, ZINC_DTYPE_BF16, 0.5f, s.m, s.v, NULL, ZINC_DTYPE_BF16, N, LR, B1, B2, EPS, WD, T);
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double e = fabs(s.p[i] - rp[i]) / fmax(fabs(rp[i]), 1e-3);
        if (e > worst) worst = e;
    }
    if (worst > 1e-5) printf("\n  worst relative error %g\n", worst);
    CU_ASSERT(worst <= 1e-5);
}

int main(void)
{
    static const unit_case cases[] = {{"one pass = separate passes, bitwise", test_bitwise},
                                      {"against float64", test_reference}};
    return unit_run("adamw_mixed", cases, sizeof cases / sizeof *cases, 1) ? 1 : 0;
}
