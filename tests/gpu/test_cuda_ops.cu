/* test_cuda_ops.cu - every op of the CUDA tables against the CPU tables.
 *
 * Two tables are tested, each against the CPU table of the same act dtype
 * (zinc/ops.h): "cuda" (act f32) against "cpu", and "cuda-bf16" (act bf16)
 * against "cpu-bf16". For each op: random inputs (fixed seed), the reference
 * op on host copies, the CUDA op on device copies, outputs compared (act
 * outputs widened to fp32 first). For the bf16 table the activations are
 * bf16 bits on both sides and the fp32 parameters are bf16-representable, so
 * both sides multiply the same values. Outputs are NaN-poisoned before each
 * op (fp32 all-ones NaN, bf16 0x7FC0), so an element left unwritten fails.
 * Gradients accumulate (+=): they start from random values of about the
 * size of the gradient itself, and a check per accumulated output asserts
 * that an op that overwrote instead of adding would have failed (at least a
 * tenth of the start values lie beyond twice the tolerance). Sizes are odd
 * and cross the CUDA kernels' tile, warp and chunk boundaries (64-row
 * attention tiles, 32-lane rows, embedding buckets). Every backward op,
 * softmax_xent, xent_vp_finish and sumsq also run twice on the GPU and must
 * agree bitwise (no float atomics).
 *
 * Tolerances: |gpu - ref| <= rtol |ref| + atol.
 *  - Elementwise ops (gelu, residual, scale, adamw, embedding): rtol 1e-5.
 *    Each output is a short formula of its inputs, a few ulps (6e-8 each)
 *    apart at most; atol 1e-6 x max|ref| covers GELU's 1 + tanh(u), which
 *    cancels for negative inputs (both sides are exact to ~1e-7 absolute).
 *  - Attention (flash style, exact fp32 on both sides): rtol 1e-5 and atol
 *    1e-5 x max|ref|; dqkv is compared per part (dq, dk, dv: their scales
 *    differ by 5x).
 *  - Reductions and products (matmul, linear, head, layernorm,
 *    softmax_xent and its vocab-parallel ops): rtol 1e-4 and atol 1e-4 x
 *    max|ref|. Sums of k terms summed in another order differ by up to ~k
 *    eps sum|terms|; an output that cancels to near zero has no relative
 *    accuracy on either side, so the bound is taken relative to the
 *    output's scale (normwise).
 *  - The bf16 table, every op: atol 2e-2 x max|ref| (bf16 outputs are
 *    rounded to 2^-9 relative; the tensor-core products and attention round
 *    P and dS to bf16); attention lse 2e-2 absolute.
 *  - sumsq: both sides add float squares (exact in double) in double:
 *    rtol 1e-9.
 *
 * Exits 0 when all pass, 1 on any failure, 77 (skipped) when no CUDA device
 * is visible. Not run by `make test`; `make test-gpu` runs it. */
#include <algorithm>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "zinc/ops_cuda.h"

/* cpu: the reference table of the table under test (gpu); both switch
 * together, and act is their act dtype. */
static const zinc_ops *cpu, *gpu, *cpu_f32, *cpu_bf16, *gpu_f32, *gpu_bf16;
static zinc_dtype act = ZINC_DTYPE_F32;
static int n_checks, n_fail;

/* ---------- helpers ---------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_unif(void)
{
    return (float)((double)(rng_next() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* A failed allocation or copy ends the test program (not the library). */
static void die_cuda(cudaError_t e, const char *what)
{
    fprintf(stderr, "test_cuda_ops: %s: %s\n", what, cudaGetErrorString(e));
    exit(1);
}

static float *hrand(size_t n, float lo, float hi)
{
    float *x = (float *)malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * 0.5f * (rng_unif() + 1.0f);
    return x;
}

static float *hcopy(const float *x, size_t n)
{
    float *y = (float *)malloc((n ? n : 1) * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* Device copy of `bytes` bytes (may be 0), with pad_bytes spare bytes
 * before it so callers can test unaligned pointers: returns base + pad. */
static void *dbytes_pad(const void *h, size_t bytes, size_t pad_bytes)
{
    char *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes + pad_bytes + 16);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    if (bytes && (e = cudaMemcpy(d + pad_bytes, h, bytes, cudaMemcpyHostToDevice)) != cudaSuccess)
        die_cuda(e, "cudaMemcpy to device");
    return d + pad_bytes;
}

/* Device copy of n floats (n may be 0), with `pad` spare floats before it. */
static float *dcopy_pad(const float *h, size_t n, size_t pad)
{
    return (float *)dbytes_pad(h, n * sizeof(float), pad * sizeof(float));
}

static float *dcopy(const float *h, size_t n)
{
    return dcopy_pad(h, n, 0);
}

static int32_t *dcopy_i32(const int32_t *h, size_t n)
{
    int32_t *d = NULL;
    cudaError_t e = cudaMalloc(&d, (n ? n : 1) * sizeof *d);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    if (n && (e = cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice)) != cudaSuccess)
        die_cuda(e, "cudaMemcpy to device");
    return d;
}

static void dfree_pad(void *d, size_t pad_floats)
{
    cudaFree((float *)d - pad_floats);
}

static void h2d(void *d, const void *h, size_t bytes)
{
    const cudaError_t e = cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMemcpy to device");
}

/* Host copy of `bytes` bytes of device memory (caller frees). */
static void *fetch_bytes(const void *d, size_t bytes)
{
    void *h = malloc(bytes ? bytes : 1);
    cudaError_t e = bytes ? cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost) : cudaSuccess;
    if (e != cudaSuccess)
        die_cuda(e, "cudaMemcpy to host");
    return h;
}

/* Host copy of a device buffer of n floats (caller frees). */
static float *fetch(const float *d, size_t n)
{
    return (float *)fetch_bytes(d, n * sizeof(float));
}

/* ---------- act tensors (dtype act: f32 or bf16 bits) ---------- */

static size_t act_size(void)
{
    return zinc_dtype_size(act);
}

/* Random fp32 parameters in [lo, hi), bf16-representable when act is bf16
 * (as in bf16 training), so both sides of a bf16 comparison use the same. */
static float *hparam(size_t n, float lo, float hi)
{
    float *x = hrand(n, lo, hi);
    if (act == ZINC_DTYPE_BF16)
        for (size_t i = 0; i < n; i++)
            x[i] = zinc_bf16_to_f32(zinc_f32_to_bf16(x[i]));
    return x;
}

/* Host act tensor of the fp32 values x (rounded to bf16 when act is bf16). */
static void *hact_of(const float *x, size_t n)
{
    void *a = malloc((n ? n : 1) * act_size());
    if (act == ZINC_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)a)[i] = zinc_f32_to_bf16(x[i]);
    } else {
        memcpy(a, x, n * sizeof(float));
    }
    return a;
}

/* Host act tensor of n random values in [lo, hi). */
static void *hact(size_t n, float lo, float hi)
{
    float *x = hrand(n, lo, hi);
    void *a = hact_of(x, n);
    free(x);
    return a;
}

static void *hact_copy(const void *a, size_t n)
{
    void *b = malloc((n ? n : 1) * act_size());
    memcpy(b, a, n * act_size());
    return b;
}

/* The values of host act tensor a as fp32 (caller frees). */
static float *widen(const void *a, size_t n)
{
    if (act != ZINC_DTYPE_BF16)
        return hcopy((const float *)a, n);
    float *x = (float *)malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = zinc_bf16_to_f32(((const uint16_t *)a)[i]);
    return x;
}

/* Fills n act elements at host h with NaN: fp32 all ones, bf16 0x7FC0. */
static void fill_nan_act(void *h, size_t n)
{
    if (act == ZINC_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)h)[i] = 0x7FC0u;
    } else {
        memset(h, 0xff, n * sizeof(float));
    }
}

/* Host act tensor of n NaN (a reference output: the reference op must write
 * every element too). */
static void *hact_poison(size_t n)
{
    void *h = malloc((n ? n : 1) * act_size());
    fill_nan_act(h, n);
    return h;
}

/* Device copy of host act tensor h, pad elements off its allocation. */
static void *dact_pad(const void *h, size_t n, size_t pad)
{
    return dbytes_pad(h, n * act_size(), pad * act_size());
}

static void *dact(const void *h, size_t n)
{
    return dact_pad(h, n, 0);
}

static void dfree_act(void *d, size_t pad)
{
    cudaFree((char *)d - pad * act_size());
}

/* Overwrites n act elements of device memory d with NaN. */
static void dact_poison_again(void *d, size_t n)
{
    void *h = hact_poison(n);
    h2d(d, h, n * act_size());
    free(h);
}

/* A device act tensor of n NaN: an op that leaves any element of its output
 * unwritten fails the comparisons. */
static void *dact_poison(size_t n)
{
    void *h = hact_poison(n);
    void *d = dact(h, n);
    free(h);
    return d;
}

/* The values of device act tensor d as fp32, on the host (caller frees). */
static float *fetch_act(const void *d, size_t n)
{
    void *h = fetch_bytes(d, n * act_size());
    float *x = widen(h, n);
    free(h);
    return x;
}

static double maxabs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

/* ---------- checks ---------- */

/* Every op must leave no recorded CUDA error. */
static void check_status(const char *what)
{
    const zinc_status st = zinc_cuda_last_status();
    n_checks++;
    if (st != ZINC_OK) {
        n_fail++;
        printf("FAIL  %-40s CUDA status: %s: %s\n", what, zinc_status_str(st), zinc_last_error());
    }
}

/* got (the GPU's, on the host) against the reference ref:
 * |gpu - ref| <= rtol |ref| + atol for every element. */
static void compare(const char *what, const float *got, const float *ref, size_t n, double rtol,
                    double atol)
{
    double worst = 0.0, worst_ratio = 0.0;
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - (double)ref[i]);
        const double lim = rtol * fabs((double)ref[i]) + atol;
        const double ratio = lim > 0 ? err / lim : (err > 0 ? INFINITY : 0.0);
        if (!(err <= lim)) { /* also catches NaN */
            if (!bad)
                first_bad = i;
            bad++;
        }
        worst = err > worst || err != err ? err : worst;
        worst_ratio = ratio > worst_ratio || ratio != ratio ? ratio : worst_ratio;
    }
    n_checks++;
    if (bad) {
        n_fail++;
        printf("FAIL  %-40s %zu/%zu off; first [%zu] gpu %.9g cpu %.9g; max err %.3g\n", what, bad,
               n, first_bad, got[first_bad], ref[first_bad], worst);
    } else {
        printf("ok    %-40s n=%-8zu max err %.3g (%.2f of tolerance)\n", what, n, worst,
               worst_ratio);
    }
}

/* The device result d (n floats) against the host reference ref. */
static void check_close_atol(const char *what, const float *d, const float *ref, size_t n,
                             double rtol, double atol)
{
    float *got = fetch(d, n);
    compare(what, got, ref, n, rtol, atol);
    free(got);
}

/* The same with atol = atol_rel max|ref| (normwise). */
static void check_close(const char *what, const float *d, const float *ref, size_t n, double rtol,
                        double atol_rel)
{
    check_close_atol(what, d, ref, n, rtol, atol_rel * maxabs(ref, n));
}

/* A device act tensor d against the host act reference href, both widened
 * to fp32; atol = atol_rel max|ref|. */
static void check_close_act(const char *what, const void *d, const void *href, size_t n,
                            double rtol, double atol_rel)
{
    float *got = fetch_act(d, n), *ref = widen(href, n);
    compare(what, got, ref, n, rtol, atol_rel * maxabs(ref, n));
    free(got);
    free(ref);
}

/* An accumulated output ref = old + delta is compared within
 * lim = rtol |ref| + atol_rel max|ref|. An op that overwrote (gave delta)
 * would be off by |old| there: the comparison proves accumulation only if
 * many start values exceed the limit (twice it, as the GPU's delta may be
 * off by one limit). Asserts that at least a tenth of them do. */
static void check_old_matters(const char *what, const float *old, const float *ref, size_t n,
                              double rtol, double atol_rel)
{
    const double atol = atol_rel * maxabs(ref, n);
    size_t big = 0;
    for (size_t i = 0; i < n; i++)
        big += fabs((double)old[i]) > 2.0 * (rtol * fabs((double)ref[i]) + atol);
    n_checks++;
    if (n && big * 10 < n) {
        n_fail++;
        printf("FAIL  %-40s start values hide no overwrite: %zu/%zu beyond 2x tolerance\n", what,
               big, n);
    } else {
        printf("ok    %-40s accumulates: %zu/%zu start values beyond 2x tolerance\n", what, big, n);
    }
}

/* An accumulated fp32 output: device d against ref, started from old. */
static void check_acc(const char *what, const float *d, const float *ref, const float *old,
                      size_t n, double rtol, double atol_rel)
{
    check_close(what, d, ref, n, rtol, atol_rel);
    check_old_matters(what, old, ref, n, rtol, atol_rel);
}

/* An accumulated act output: device d against host act href, started from
 * host act hold. */
static void check_acc_act(const char *what, const void *d, const void *href, const void *hold,
                          size_t n, double rtol, double atol_rel)
{
    float *ref = widen(href, n), *old = widen(hold, n);
    check_close_act(what, d, href, n, rtol, atol_rel);
    check_old_matters(what, old, ref, n, rtol, atol_rel);
    free(ref);
    free(old);
}

/* 1 if element i of a dt array is a NaN. */
static int is_nan_at(const void *p, zinc_dtype dt, size_t i)
{
    if (dt == ZINC_DTYPE_F32) {
        uint32_t u;
        memcpy(&u, (const char *)p + 4 * i, 4);
        return (u & 0x7fffffffu) > 0x7f800000u;
    }
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return dt == ZINC_DTYPE_BF16 ? (h & 0x7fffu) > 0x7f80u : (h & 0x7fffu) > 0x7c00u;
}

/* A device array of n dt elements must equal a host one bit for bit, except
 * that any NaN equals any NaN (the payload of a NaN after arithmetic differs
 * between the CPU and the GPU). */
static void check_same_values(const char *what, const void *d, const void *h, size_t n,
                              zinc_dtype dt)
{
    const size_t es = zinc_dtype_size(dt), bytes = n * es;
    unsigned char *got = (unsigned char *)malloc(bytes ? bytes : 1);
    if (bytes && cudaMemcpy(got, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
        die_cuda(cudaGetLastError(), "cudaMemcpy");
    n_checks++;
    size_t i = 0;
    for (; i < n; i++) {
        if (!memcmp(got + i * es, (const char *)h + i * es, es))
            continue;
        if (!(is_nan_at(got, dt, i) && is_nan_at(h, dt, i)))
            break;
    }
    if (i < n) {
        n_fail++;
        printf("FAIL  %-40s differs from the cpu at element %zu\n", what, i);
    } else {
        printf("ok    %-40s bitwise equal to the cpu (%zu elements, NaN = NaN)\n", what, n);
    }
    free(got);
}

/* Two device arrays of n dt elements must hold the same bits; pair names
 * them ("two runs", "vector and scalar paths"). */
static void check_bits_pair(const char *what, const void *d1, const void *d2, size_t n,
                            zinc_dtype dt, const char *pair)
{
    const size_t bytes = n * zinc_dtype_size(dt);
    void *a = fetch_bytes(d1, bytes), *b = fetch_bytes(d2, bytes);
    n_checks++;
    if (memcmp(a, b, bytes) != 0) {
        n_fail++;
        printf("FAIL  %-40s %s differ\n", what, pair);
    } else {
        printf("ok    %-40s %s bitwise equal\n", what, pair);
    }
    free(a);
    free(b);
}

/* Two runs of an op must give the same bits (determinism). */
static void check_same_bits(const char *what, const void *d1, const void *d2, size_t n,
                            zinc_dtype dt)
{
    check_bits_pair(what, d1, d2, n, dt, "two runs");
}

/* The vectorized and the scalar access path must give the same bits. */
static void check_same_dev(const char *what, const void *d1, const void *d2, size_t n,
                           zinc_dtype dt)
{
    check_bits_pair(what, d1, d2, n, dt, "vector and scalar paths");
}

/* Tolerances (rtol, atol relative to max|ref|) of the table under test; see
 * the top of the file. use_table sets them. */
static double tol_ew_r, tol_ew_a, tol_red_r, tol_red_a, tol_att_r, tol_att_a;
#define TOL_EW tol_ew_r, tol_ew_a
#define TOL_RED tol_red_r, tol_red_a
#define TOL_ATT tol_att_r, tol_att_a

/* Makes t the table under test and ref its reference. */
static void use_table(const zinc_ops *t, const zinc_ops *ref)
{
    gpu = t;
    cpu = ref;
    act = t->act;
    if (act == ZINC_DTYPE_BF16) {
        tol_ew_r = tol_red_r = tol_att_r = 0.0;
        tol_ew_a = tol_red_a = tol_att_a = 2e-2;
    } else {
        tol_ew_r = 1e-5;
        tol_ew_a = 1e-6;
        tol_red_r = tol_red_a = 1e-4;
        tol_att_r = tol_att_a = 1e-5;
    }
}

/* A device buffer of n floats filled with NaN (all bits set): an op that
 * leaves any element of its output unwritten fails the comparisons. */
static float *dpoison(size_t n)
{
    float *d = NULL;
    cudaError_t e = cudaMalloc(&d, (n ? n : 1) * sizeof *d);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    if ((e = cudaMemset(d, 0xff, (n ? n : 1) * sizeof *d)) != cudaSuccess)
        die_cuda(e, "cudaMemset");
    return d;
}

static void dpoison_again(float *d, size_t n)
{
    const cudaError_t e = cudaMemset(d, 0xff, (n ? n : 1) * sizeof *d);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMemset");
}

/* Host buffer of n fp32 NaN. */
static float *hpoison(size_t n)
{
    float *x = (float *)malloc((n ? n : 1) * sizeof *x);
    memset(x, 0xff, n * sizeof *x);
    return x;
}

/* ---------- ops ---------- */

static void test_matmul_case(int m, int n, int k, int ta, int tb, float alpha, float beta,
                             size_t pad)
{
    char name[96];
    float *a = hrand((size_t)m * k, -1, 1), *b = hrand((size_t)k * n, -1, 1);
    float *c = hrand((size_t)m * n, -1, 1), *c_ref = hcopy(c, (size_t)m * n);
    float *da = dcopy_pad(a, (size_t)m * k, pad), *db = dcopy_pad(b, (size_t)k * n, pad);
    float *dc = dcopy_pad(c, (size_t)m * n, pad);
    cpu->matmul(c_ref, a, b, m, n, k, ta, tb, alpha, beta);
    gpu->matmul(dc, da, db, m, n, k, ta, tb, alpha, beta);
    snprintf(name, sizeof name, "matmul %dx%dx%d ta=%d tb=%d b=%g%s", m, n, k, ta, tb, beta,
             pad ? " unaligned" : "");
    check_status(name);
    check_close(name, dc, c_ref, (size_t)m * n, TOL_RED);
    dfree_pad(da, pad);
    dfree_pad(db, pad);
    dfree_pad(dc, pad);
    free(a);
    free(b);
    free(c);
    free(c_ref);
}

static void test_matmul(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            test_matmul_case(37, 53, 29, ta, tb, 0.7f, 0.3f, 0);
    test_matmul_case(37, 53, 29, 0, 0, 1.0f, 0.0f, 0);
    test_matmul_case(37, 53, 29, 1, 1, 1.0f, 1.0f, 1); /* 4-byte aligned operands */
    test_matmul_case(256, 384, 200, 0, 1, 1.0f, 1.0f, 0);
    test_matmul_case(8, 9, 0, 0, 0, 1.0f, 0.5f, 0);    /* empty product: c = beta c */
}

/* Linear forward and backward. Gradients start at about their own scale
 * (a sum of K products of two U(-1,1) has deviation sqrt(K)/3; of K U(-1,1),
 * sqrt(K/3)). bias_pad: the bias one float off its allocation. */
static void test_linear_case(int N, int C, int OC, int with_bias, size_t bias_pad)
{
    char name[96];
    const size_t nin = (size_t)N * C, nw = (size_t)C * OC, nout = (size_t)N * OC;
    const float s_dinp = sqrtf((float)OC) / 3, s_dw = sqrtf((float)N) / 3;
    const float s_db = sqrtf(N / 3.0f);
    void *inp = hact(nin, -1, 1), *dout = hact(nout, -1, 1), *out = hact_poison(nout);
    void *dinp = hact(nin, -s_dinp, s_dinp), *dinp0 = hact_copy(dinp, nin);
    float *w = hparam(nw, -1, 1), *bias = hparam(OC, -1, 1);
    float *dw = hrand(nw, -s_dw, s_dw), *db = hrand(OC, -s_db, s_db);
    float *dw0 = hcopy(dw, nw), *db0 = hcopy(db, OC);
    void *d_inp = dact(inp, nin), *d_out = dact_poison(nout), *d_dout = dact(dout, nout);
    void *d_dinp = dact(dinp, nin), *d_dinp2 = dact(dinp, nin);
    float *d_w = dcopy(w, nw), *d_bias = dcopy_pad(bias, OC, bias_pad);
    float *d_dw = dcopy(dw, nw), *d_db = dcopy(db, OC);
    float *d_dw2 = dcopy(dw, nw), *d_db2 = dcopy(db, OC);
    const char *tag = !with_bias ? "no bias" : bias_pad ? "unaligned bias" : "bias";

    cpu->linear_forward(out, inp, w, with_bias ? bias : NULL, N, C, OC);
    gpu->linear_forward(d_out, d_inp, d_w, with_bias ? d_bias : NULL, N, C, OC);
    snprintf(name, sizeof name, "linear_forward %s", tag);
    check_status(name);
    check_close_act(name, d_out, out, nout, TOL_RED);

    cpu->linear_backward(dinp, dw, with_bias ? db : NULL, dout, inp, w, N, C, OC);
    gpu->linear_backward(d_dinp, d_dw, with_bias ? d_db : NULL, d_dout, d_inp, d_w, N, C, OC);
    gpu->linear_backward(d_dinp2, d_dw2, with_bias ? d_db2 : NULL, d_dout, d_inp, d_w, N, C, OC);
    snprintf(name, sizeof name, "linear_backward %s", tag);
    check_status(name);
    snprintf(name, sizeof name, "linear_backward dinp (%s)", tag);
    check_acc_act(name, d_dinp, dinp, dinp0, nin, TOL_RED);
    snprintf(name, sizeof name, "linear_backward dweight (%s)", tag);
    check_acc(name, d_dw, dw, dw0, nw, TOL_RED);
    if (with_bias) {
        snprintf(name, sizeof name, "linear_backward dbias (%s)", tag);
        check_acc(name, d_db, db, db0, OC, TOL_RED);
        check_same_bits(name, d_db, d_db2, OC, ZINC_DTYPE_F32);
    }
    /* dinp may be NULL (and dbias, without a bias): the rest accumulates again */
    cpu->linear_backward(NULL, dw, with_bias ? db : NULL, dout, inp, w, N, C, OC);
    gpu->linear_backward(NULL, d_dw, with_bias ? d_db : NULL, d_dout, d_inp, d_w, N, C, OC);
    snprintf(name, sizeof name, "linear_backward NULL dinp%s", with_bias ? "" : ", dbias");
    check_status(name);
    snprintf(name, sizeof name, "linear_backward dweight, NULL dinp%s", with_bias ? "" : "/dbias");
    check_close(name, d_dw, dw, nw, TOL_RED);
    if (with_bias)
        check_close("linear_backward dbias, NULL dinp", d_db, db, OC, TOL_RED);

    cudaFree(d_inp);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_dinp2);
    cudaFree(d_w);
    dfree_pad(d_bias, bias_pad);
    cudaFree(d_dw);
    cudaFree(d_db);
    cudaFree(d_dw2);
    cudaFree(d_db2);
    free(inp);
    free(dout);
    free(out);
    free(dinp);
    free(dinp0);
    free(w);
    free(bias);
    free(dw);
    free(db);
    free(dw0);
    free(db0);
}

static void test_linear(void)
{
    test_linear_case(37, 29, 53, 1, 0);
    test_linear_case(37, 29, 53, 1, 1);
    test_linear_case(37, 29, 53, 0, 0);
    test_linear_case(300, 96, 160, 1, 0); /* dbias over several row chunks */
}

/* Linear + GELU fused: forward with and without pre kept, and the backward
 * of the second product (dpre written; dweight, dbias accumulate), against
 * the CPU table on the same inputs. */
static void test_linear_gelu_case(int N, int C, int OC, int with_bias)
{
    char name[96];
    const size_t nin = (size_t)N * C, nw = (size_t)C * OC, nout = (size_t)N * OC;
    const float s_dw = sqrtf((float)N) / 3, s_db = sqrtf(N / 3.0f);
    void *inp = hact(nin, -1, 1), *out = hact_poison(nout), *pre = hact_poison(nout);
    float *w = hparam(nw, -1, 1), *bias = hparam(OC, -1, 1);
    void *d_inp = dact(inp, nin), *d_out = dact_poison(nout), *d_pre = dact_poison(nout);
    void *d_out2 = dact_poison(nout);
    float *d_w = dcopy(w, nw), *d_bias = dcopy(bias, OC);
    const char *tag = with_bias ? "bias" : "no bias";

    cpu->linear_gelu_forward(out, pre, inp, w, with_bias ? bias : NULL, N, C, OC);
    gpu->linear_gelu_forward(d_out, d_pre, d_inp, d_w, with_bias ? d_bias : NULL, N, C, OC);
    gpu->linear_gelu_forward(d_out2, NULL, d_inp, d_w, with_bias ? d_bias : NULL, N, C, OC);
    snprintf(name, sizeof name, "linear_gelu_forward %s", tag);
    check_status(name);
    snprintf(name, sizeof name, "linear_gelu_forward out (%s)", tag);
    check_close_act(name, d_out, out, nout, TOL_RED);
    snprintf(name, sizeof name, "linear_gelu_forward pre (%s)", tag);
    check_close_act(name, d_pre, pre, nout, TOL_RED);
    snprintf(name, sizeof name, "linear_gelu_forward out, pre not kept (%s)", tag);
    check_close_act(name, d_out2, out, nout, TOL_RED);

    /* backward of y = out @ w2 + b2: inp = out (N, OC), pre as above */
    const int OC2 = C;
    const size_t nw2 = (size_t)OC * OC2, ny = (size_t)N * OC2;
    void *dout = hact(ny, -1, 1), *dpre = hact_poison(nout);
    float *w2 = hparam(nw2, -1, 1), *dw = hrand(nw2, -s_dw, s_dw), *db = hrand(OC2, -s_db, s_db);
    float *dw0 = hcopy(dw, nw2), *db0 = hcopy(db, OC2);
    void *d_dout = dact(dout, ny), *d_dpre = dact_poison(nout), *d_dpre2 = dact_poison(nout);
    float *d_w2 = dcopy(w2, nw2), *d_dw = dcopy(dw, nw2), *d_db = dcopy(db, OC2);
    float *d_dw2 = dcopy(dw, nw2), *d_db2 = dcopy(db, OC2);
    void *h_pre = fetch_bytes(d_pre, nout * act_size()); /* both sides: the GPU's pre and out */
    void *h_out = fetch_bytes(d_out, nout * act_size());
    cpu->linear_gelu_backward(dpre, dw, with_bias ? db : NULL, dout, h_out, h_pre, w2, N, OC, OC2);
    gpu->linear_gelu_backward(d_dpre, d_dw, with_bias ? d_db : NULL, d_dout, d_out, d_pre, d_w2,
                              N, OC, OC2);
    gpu->linear_gelu_backward(d_dpre2, d_dw2, with_bias ? d_db2 : NULL, d_dout, d_out, d_pre,
                              d_w2, N, OC, OC2);
    snprintf(name, sizeof name, "linear_gelu_backward %s", tag);
    check_status(name);
    snprintf(name, sizeof name, "linear_gelu_backward dpre (%s)", tag);
    check_close_act(name, d_dpre, dpre, nout, TOL_RED);
    check_same_bits(name, d_dpre, d_dpre2, nout, act);
    snprintf(name, sizeof name, "linear_gelu_backward dweight (%s)", tag);
    check_acc(name, d_dw, dw, dw0, nw2, TOL_RED);
    if (with_bias) {
        snprintf(name, sizeof name, "linear_gelu_backward dbias (%s)", tag);
        check_acc(name, d_db, db, db0, OC2, TOL_RED);
    }
    cudaFree(d_inp), cudaFree(d_out), cudaFree(d_pre), cudaFree(d_out2), cudaFree(d_w);
    cudaFree(d_bias), cudaFree(d_dout), cudaFree(d_dpre), cudaFree(d_dpre2), cudaFree(d_w2);
    cudaFree(d_dw), cudaFree(d_db), cudaFree(d_dw2), cudaFree(d_db2);
    free(inp), free(out), free(pre), free(w), free(bias), free(dout), free(dpre), free(w2);
    free(dw), free(db), free(dw0), free(db0), free(h_pre), free(h_out);
}

static void test_linear_gelu(void)
{
    test_linear_gelu_case(37, 29, 53, 1);  /* odd: the composed fallback where no epilogue fits */
    test_linear_gelu_case(37, 29, 53, 0);
    test_linear_gelu_case(256, 64, 256, 1); /* GPT-2-like alignment: the epilogue path */
    test_linear_gelu_case(300, 96, 384, 0);
}

/* The (out, in) linear and the tied LM head: logits = inp @ wte^T (+ bias), and its
 * backward (dinp may be NULL). Gradient start scales as in test_linear_case. */
static void test_head_case(int N, int C, int V, int with_bias)
{
    char name[96];
    const size_t nin = (size_t)N * C, nw = (size_t)V * C, nl = (size_t)N * V;
    const float s_dinp = sqrtf((float)V) / 3, s_dw = sqrtf((float)N) / 3;
    void *inp = hact(nin, -1, 1), *dlogits = hact(nl, -1, 1), *logits = hact_poison(nl);
    void *dinp = hact(nin, -s_dinp, s_dinp), *dinp0 = hact_copy(dinp, nin);
    float *wte = hparam(nw, -1, 1), *dwte = hrand(nw, -s_dw, s_dw), *dwte0 = hcopy(dwte, nw);
    void *d_inp = dact(inp, nin), *d_dlogits = dact(dlogits, nl), *d_logits = dact_poison(nl);
    void *d_dinp = dact(dinp, nin), *d_dinp2 = dact(dinp, nin);
    float *d_wte = dcopy(wte, nw), *d_dwte = dcopy(dwte, nw), *d_dwte2 = dcopy(dwte, nw);
    float *bias = hparam(V, -1, 1), *db = hrand(V, -1, 1), *db0 = hcopy(db, V);
    float *d_bias = dcopy(bias, V), *d_db = dcopy(db, V), *d_db2 = dcopy(db, V);
    const float *hb = with_bias ? bias : NULL, *gb = with_bias ? d_bias : NULL;
    float *hdb = with_bias ? db : NULL, *gdb = with_bias ? d_db : NULL, *gdb2 = with_bias ? d_db2 : NULL;

    cpu->linear_t_forward(logits, inp, wte, hb, N, C, V);
    gpu->linear_t_forward(d_logits, d_inp, d_wte, gb, N, C, V);
    snprintf(name, sizeof name, "linear_t_forward N%d C%d V%d", N, C, V);
    check_status(name);
    snprintf(name, sizeof name, "linear_t_forward logits V%d", V);
    check_close_act(name, d_logits, logits, nl, TOL_RED);

    cpu->linear_t_backward(dinp, dwte, hdb, dlogits, inp, wte, N, C, V);
    gpu->linear_t_backward(d_dinp, d_dwte, gdb, d_dlogits, d_inp, d_wte, N, C, V);
    gpu->linear_t_backward(d_dinp2, d_dwte2, gdb2, d_dlogits, d_inp, d_wte, N, C, V);
    snprintf(name, sizeof name, "linear_t_backward N%d C%d V%d", N, C, V);
    check_status(name);
    snprintf(name, sizeof name, "linear_t_backward dinp V%d", V);
    check_acc_act(name, d_dinp, dinp, dinp0, nin, TOL_RED);
    check_same_bits(name, d_dinp, d_dinp2, nin, act);
    snprintf(name, sizeof name, "linear_t_backward dwte V%d", V);
    check_acc(name, d_dwte, dwte, dwte0, nw, TOL_RED);
    check_same_bits(name, d_dwte, d_dwte2, nw, ZINC_DTYPE_F32);
    if (with_bias) {
        snprintf(name, sizeof name, "linear_t_backward dbias V%d", V);
        check_acc(name, d_db, db, db0, V, TOL_RED);
        check_same_bits(name, d_db, d_db2, V, ZINC_DTYPE_F32);
    }

    /* dinp may be NULL: dwte alone accumulates again */
    cpu->linear_t_backward(NULL, dwte, NULL, dlogits, inp, wte, N, C, V);
    gpu->linear_t_backward(NULL, d_dwte, NULL, d_dlogits, d_inp, d_wte, N, C, V);
    check_status("linear_t_backward NULL dinp");
    snprintf(name, sizeof name, "linear_t_backward dwte, NULL dinp V%d", V);
    check_close(name, d_dwte, dwte, nw, TOL_RED);

    cudaFree(d_inp);
    cudaFree(d_dlogits);
    cudaFree(d_logits);
    cudaFree(d_dinp);
    cudaFree(d_dinp2);
    cudaFree(d_wte);
    cudaFree(d_dwte);
    cudaFree(d_dwte2);
    cudaFree(d_bias);
    cudaFree(d_db);
    cudaFree(d_db2);
    free(bias);
    free(db);
    free(db0);
    free(inp);
    free(dlogits);
    free(logits);
    free(dinp);
    free(dinp0);
    free(wte);
    free(dwte);
    free(dwte0);
}

static void test_head(void)
{
    test_head_case(37, 29, 53, 0);
    test_head_case(37, 29, 53, 1);
    test_head_case(200, 64, 1000, 1);
    test_head_case(8, 768, 50304, 0); /* GPT-2's padded vocabulary */
    test_head_case(300, 256, 768, 1); /* a q_proj with Qwen2's bias */
}

/* skew: per mille of the tokens that are token 0 (a long run after sorting,
 * as the space of source code), the rest uniform over V. The table holds
 * the token rows [v0, v0+Vt) of the V (a slice under tensor parallelism;
 * v0 = 0, Vt = V: the whole table); with_wpe 0 passes NULL for wpe and
 * dwpe. */
static void test_embedding_case(int B, int T, int C, int V, int MAXT, int skew, int v0, int Vt,
                                int with_wpe)
{
    char name[96], what[128];
    const size_t nout = (size_t)B * T * C, nte = (size_t)Vt * C;
    int32_t *tokens = (int32_t *)malloc((size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int)(rng_next() % 1000) < skew ? 0 : (int32_t)(rng_next() % V); /* repeats */
    float *wte = hparam(nte, -1, 1), *wpe = hparam((size_t)MAXT * C, -1, 1);
    void *out = hact_poison(nout), *dout = hact(nout, -1, 1);
    /* start values on the scale of the largest row sum (a token's count of
     * rows), so that an op that overwrote instead of accumulating fails */
    const float s_wte = sqrtf((float)B * T * (skew + 1000.0f / V) / 1000.0f) + 1.0f;
    float *dwte = hrand(nte, -s_wte, s_wte), *dwpe = hrand((size_t)MAXT * C, -1, 1);
    float *dwte0 = hcopy(dwte, nte), *dwpe0 = hcopy(dwpe, (size_t)MAXT * C);
    int32_t *d_tok = dcopy_i32(tokens, B * T);
    float *d_wte = dcopy(wte, nte), *d_wpe = dcopy(wpe, (size_t)MAXT * C);
    void *d_out = dact_poison(nout), *d_dout = dact(dout, nout);
    float *d_dwte = dcopy(dwte, nte), *d_dwpe = dcopy(dwpe, (size_t)MAXT * C);
    float *d_dwte2 = dcopy(dwte, nte), *d_dwpe2 = dcopy(dwpe, (size_t)MAXT * C);
    float *pe = with_wpe ? wpe : NULL, *d_pe = with_wpe ? d_wpe : NULL;
    float *dpe = with_wpe ? dwpe : NULL, *d_dpe = with_wpe ? d_dwpe : NULL;
    float *d_dpe2 = with_wpe ? d_dwpe2 : NULL;
    snprintf(name, sizeof name, "[%d,%d) of %d%s", v0, v0 + Vt, V, with_wpe ? "" : " no wpe");

    cpu->embedding_forward(out, tokens, NULL, wte, pe, B, T, C, v0, Vt);
    gpu->embedding_forward(d_out, d_tok, NULL, d_wte, d_pe, B, T, C, v0, Vt);
    snprintf(what, sizeof what, "embedding_forward %s", name);
    check_status(what);
    check_close_act(what, d_out, out, nout, TOL_EW);

    cpu->embedding_backward(dwte, dpe, dout, tokens, NULL, B, T, C, v0, Vt);
    gpu->embedding_backward(d_dwte, d_dpe, d_dout, d_tok, NULL, B, T, C, v0, Vt);
    gpu->embedding_backward(d_dwte2, d_dpe2, d_dout, d_tok, NULL, B, T, C, v0, Vt);
    snprintf(what, sizeof what, "embedding_backward %s", name);
    check_status(what);
    snprintf(what, sizeof what, "embedding_backward dwte %s", name);
    check_acc(what, d_dwte, dwte, dwte0, nte, TOL_EW);
    check_same_bits(what, d_dwte, d_dwte2, nte, ZINC_DTYPE_F32);
    snprintf(what, sizeof what, "embedding_backward dwpe %s", name);
    if (with_wpe) {
        check_acc(what, d_dwpe, dwpe, dwpe0, (size_t)MAXT * C, TOL_EW); /* rows >= T kept */
        check_same_bits(what, d_dwpe, d_dwpe2, (size_t)MAXT * C, ZINC_DTYPE_F32);
    } else {
        check_same_values(what, d_dwpe, dwpe0, (size_t)MAXT * C, ZINC_DTYPE_F32); /* untouched */
    }

    cudaFree(d_tok);
    cudaFree(d_wte);
    cudaFree(d_wpe);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_dwte);
    cudaFree(d_dwpe);
    cudaFree(d_dwte2);
    cudaFree(d_dwpe2);
    free(wte);
    free(wpe);
    free(out);
    free(dout);
    free(dwte);
    free(dwpe);
    free(dwte0);
    free(dwpe0);
    free(tokens);
}

static void test_embedding(void)
{
    test_embedding_case(3, 17, 40, 7, 20, 0, 0, 7, 1);
    /* runs of one token across many chunks of the sorted tokens, C above a block */
    test_embedding_case(4, 300, 300, 5, 300, 600, 0, 5, 1);
    test_embedding_case(2, 1024, 768, 256, 1024, 300, 0, 256, 1);
    /* slices of the vocabulary: the long run of token 0 in the slice and out
     * of it (its chunks' partials passed over), no wpe, the last slice */
    test_embedding_case(3, 17, 40, 7, 20, 0, 2, 3, 0);
    test_embedding_case(4, 300, 300, 5, 300, 600, 0, 2, 1);
    test_embedding_case(4, 300, 300, 5, 300, 600, 1, 4, 0);
    test_embedding_case(2, 1024, 768, 256, 1024, 300, 128, 128, 0);
    test_embedding_case(2, 1024, 768, 256, 1024, 300, 0, 64, 0);
}

static void test_layernorm(void)
{
    enum { N = 37, C = 300 };
    const size_t n = (size_t)N * C;
    const float s_dwb = sqrtf(N / 3.0f); /* dweight, dbias: sums of N terms */
    void *inp = hact(n, 2, 4); /* mean far from 0: the two-pass variance matters */
    void *out = hact_poison(n), *dout = hact(n, -1, 1);
    void *dinp = hact(n, -1, 1), *dinp0 = hact_copy(dinp, n);
    float *w = hparam(C, -1, 1), *b = hparam(C, -1, 1);
    float *mean = hpoison(N), *rstd = hpoison(N);
    float *dw = hrand(C, -s_dwb, s_dwb), *db = hrand(C, -s_dwb, s_dwb);
    float *dw0 = hcopy(dw, C), *db0 = hcopy(db, C);
    void *d_inp = dact(inp, n), *d_out = dact_poison(n), *d_dout = dact(dout, n);
    void *d_dinp = dact(dinp, n), *d_dinp2 = dact(dinp, n);
    float *d_w = dcopy(w, C), *d_b = dcopy(b, C), *d_mean = dpoison(N), *d_rstd = dpoison(N);
    float *d_dw = dcopy(dw, C), *d_db = dcopy(db, C), *d_dw2 = dcopy(dw, C), *d_db2 = dcopy(db, C);

    cpu->layernorm_forward(out, mean, rstd, inp, w, b, N, C);
    gpu->layernorm_forward(d_out, d_mean, d_rstd, d_inp, d_w, d_b, N, C);
    check_status("layernorm_forward");
    check_close_act("layernorm_forward out", d_out, out, n, TOL_RED);
    check_close("layernorm_forward mean", d_mean, mean, N, TOL_RED);
    check_close("layernorm_forward rstd", d_rstd, rstd, N, TOL_RED);

    /* backward from the CPU's saved statistics, so both sides see the same */
    h2d(d_mean, mean, N * sizeof(float));
    h2d(d_rstd, rstd, N * sizeof(float));
    cpu->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    gpu->layernorm_backward(d_dinp, d_dw, d_db, d_dout, d_inp, d_w, d_mean, d_rstd, N, C);
    gpu->layernorm_backward(d_dinp2, d_dw2, d_db2, d_dout, d_inp, d_w, d_mean, d_rstd, N, C);
    check_status("layernorm_backward");
    check_acc_act("layernorm_backward dinp", d_dinp, dinp, dinp0, n, TOL_RED);
    check_acc("layernorm_backward dweight", d_dw, dw, dw0, C, TOL_RED);
    check_acc("layernorm_backward dbias", d_db, db, db0, C, TOL_RED);
    check_same_bits("layernorm_backward dinp", d_dinp, d_dinp2, n, act);
    check_same_bits("layernorm_backward dweight", d_dw, d_dw2, C, ZINC_DTYPE_F32);
    check_same_bits("layernorm_backward dbias", d_db, d_db2, C, ZINC_DTYPE_F32);

    cudaFree(d_inp);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_dinp2);
    cudaFree(d_w);
    cudaFree(d_b);
    cudaFree(d_mean);
    cudaFree(d_rstd);
    cudaFree(d_dw);
    cudaFree(d_db);
    cudaFree(d_dw2);
    cudaFree(d_db2);
    free(inp);
    free(out);
    free(dout);
    free(dinp);
    free(dinp0);
    free(w);
    free(b);
    free(mean);
    free(rstd);
    free(dw);
    free(db);
    free(dw0);
    free(db0);
}

/* RMSNorm, RoPE (q and k parts of qkv rows, positions given and from t) and SwiGLU. */
static void test_llama_ops(void)
{
    enum { N = 37, C = 300, F = 130, HS = 64, NQ = 4, NK = 2, RS = (NQ + 2 * NK) * HS, T = 8, P = 64 };
    const size_t n = (size_t)N * C, nr = (size_t)N * RS, nf = (size_t)N * F;
    const float s_dw = sqrtf(N / 3.0f);
    void *inp = hact(n, -2, 2), *out = hact_poison(n), *dout = hact(n, -1, 1);
    void *dinp = hact(n, -1, 1), *dinp0 = hact_copy(dinp, n);
    float *w = hparam(C, -1, 1), *rstd = hpoison(N), *dw = hrand(C, -s_dw, s_dw), *dw0 = hcopy(dw, C);
    void *d_inp = dact(inp, n), *d_out = dact_poison(n), *d_dout = dact(dout, n), *d_dinp = dact(dinp, n);
    float *d_w = dcopy(w, C), *d_rstd = dpoison(N), *d_dw = dcopy(dw, C);
    cpu->rmsnorm_forward(out, rstd, inp, w, 1e-5f, N, C);
    gpu->rmsnorm_forward(d_out, d_rstd, d_inp, d_w, 1e-5f, N, C);
    check_status("rmsnorm_forward");
    check_close_act("rmsnorm_forward out", d_out, out, n, TOL_RED);
    check_close("rmsnorm_forward rstd", d_rstd, rstd, N, TOL_RED);
    h2d(d_rstd, rstd, N * sizeof(float));
    cpu->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
    gpu->rmsnorm_backward(d_dinp, d_dw, d_dout, d_inp, d_w, d_rstd, N, C);
    check_status("rmsnorm_backward");
    check_acc_act("rmsnorm_backward dinp", d_dinp, dinp, dinp0, n, TOL_RED);
    check_acc("rmsnorm_backward dweight", d_dw, dw, dw0, C, TOL_RED);

    float *cs = (float *)malloc((size_t)P * HS / 2 * sizeof(float)), *sn = (float *)malloc((size_t)P * HS / 2 * sizeof(float));
    const zinc_rope_scaling l3 = {8, 1, 4, 32};
    zinc_rope_table(cs, sn, P, HS, 500000.0, &l3);
    float *d_cs = dcopy(cs, (size_t)P * HS / 2), *d_sn = dcopy(sn, (size_t)P * HS / 2);
    int32_t pos[N];
    for (int r = 0; r < N; r++) pos[r] = (r * 7) % P;
    int32_t *d_pos = dcopy_i32(pos, N);
    for (int k = 0; k < 4; k++) {
        const int off = k & 1 ? NQ * HS : 0, nh = k & 1 ? NK : NQ, dir = k & 2 ? -1 : 1;
        void *x = hact(nr, -1, 1);
        void *d_x = dact(x, nr);
        cpu->rope((char *)x + (size_t)off * act_size(), N, RS, nh, HS, T, k & 2 ? pos : NULL, cs, sn, dir);
        gpu->rope((char *)d_x + (size_t)off * act_size(), N, RS, nh, HS, T, k & 2 ? d_pos : NULL, d_cs, d_sn, dir);
        check_status("rope");
        check_close_act(k & 1 ? "rope k part" : "rope q part", d_x, x, nr, TOL_EW);
        cudaFree(d_x);
        free(x);
    }

    void *gu = hact(2 * nf, -4, 4), *sw = hact_poison(nf), *dsw = hact(nf, -1, 1);
    void *dgu = hact(2 * nf, -1, 1), *dgu0 = hact_copy(dgu, 2 * nf);
    void *d_gu = dact(gu, 2 * nf), *d_sw = dact_poison(nf), *d_dsw = dact(dsw, nf), *d_dgu = dact(dgu, 2 * nf);
    cpu->swiglu_forward(sw, gu, N, F);
    gpu->swiglu_forward(d_sw, d_gu, N, F);
    check_status("swiglu_forward");
    check_close_act("swiglu_forward", d_sw, sw, nf, TOL_EW);
    cpu->swiglu_backward(dgu, dsw, gu, N, F);
    gpu->swiglu_backward(d_dgu, d_dsw, d_gu, N, F);
    check_status("swiglu_backward");
    check_acc_act("swiglu_backward", d_dgu, dgu, dgu0, 2 * nf, TOL_EW);

    { /* fill_cols (the padded vocabulary's -inf logits) */
        const size_t nf2 = (size_t)N * C;
        void *fx = hact(nf2, -1, 1);
        void *d_fx = dact(fx, nf2);
        cpu->fill_cols(fx, N, C, 200, C, -INFINITY);
        gpu->fill_cols(d_fx, N, C, 200, C, -INFINITY);
        check_status("fill_cols");
        void *back = malloc(nf2 * act_size());
        cudaMemcpy(back, d_fx, nf2 * act_size(), cudaMemcpyDeviceToHost);
        n_checks++;
        if (memcmp(back, fx, nf2 * act_size())) {
            n_fail++;
            printf("FAIL  fill_cols: the device's tensor differs from the CPU's\n");
        }
        free(back);
        cudaFree(d_fx);
        free(fx);
    }
    /* grouped-query attention: with a K/V head per query head the multi-head kernels (vs
     * the CPU's GQA op); shared K/V heads are refused as not done on cuda yet */
    {
        enum { GB = 2, GT = 33, GNH = 4, GHS = 64 };
        const size_t nq = (size_t)GB * GT * 3 * GNH * GHS, no = (size_t)GB * GT * GNH * GHS;
        void *qkv = hact(nq, -1, 1), *ao = hact_poison(no);
        float *lse = hpoison((size_t)GB * GNH * GT);
        void *d_qkv = dact(qkv, nq), *d_ao = dact_poison(no);
        float *d_lse = dpoison((size_t)GB * GNH * GT);
        cpu->attention_gqa_forward(ao, lse, qkv, NULL, GB, GT, GNH, GNH, GHS);
        gpu->attention_gqa_forward(d_ao, d_lse, d_qkv, NULL, GB, GT, GNH, GNH, GHS);
        check_status("attention_gqa_forward (NKV = NH)");
        check_close_act("attention_gqa_forward (NKV = NH)", d_ao, ao, no, TOL_ATT);
        gpu->attention_gqa_forward(d_ao, d_lse, d_qkv, NULL, GB, GT, GNH, 2, GHS);
        const zinc_status gst = zinc_cuda_last_status();
        n_checks++;
        if (gst != ZINC_ERR_UNSUPPORTED) {
            n_fail++;
            printf("FAIL  attention_gqa_forward NKV < NH: status %s, not unsupported\n", zinc_status_str(gst));
        }
        cudaFree(d_qkv), cudaFree(d_ao), cudaFree(d_lse);
        free(qkv), free(ao), free(lse);
    }

    void *dev[] = {d_inp, d_out, d_dout, d_dinp, d_w, d_rstd, d_dw, d_cs, d_sn, d_pos, d_gu, d_sw, d_dsw, d_dgu};
    for (void *q : dev) cudaFree(q);
    void *host[] = {inp, out, dout, dinp, dinp0, w, rstd, dw, dw0, cs, sn, gu, sw, dsw, dgu, dgu0};
    for (void *q : host) free(q);
}

/* The adapter's forward and backward as the models compose them from the four ops. */
static void lora_fwd(const zinc_ops *o, void *out, int ldo, float *t, const void *inp, int ldi, const float *A,
                     const float *B, float s, int N, int C, int OC, int r)
{
    o->lora_down(t, inp, ldi, A, N, C, r);
    o->lora_up(out, ldo, t, B, s, N, OC, r);
}

static void lora_bwd(const zinc_ops *o, void *dinp, float *dA, float *dB, float *dt, const void *dout, int ldo,
                     const void *inp, int ldi, const float *t, const float *A, const float *B, float s, int N, int C,
                     int OC, int r)
{
    o->lora_grad_up(dB, dt, dout, ldo, t, B, s, N, OC, r);
    o->lora_grad_down(dinp, dA, dt, inp, ldi, A, N, C, r);
}

/* LoRA's strided low-rank path and the dropout on its input, against the CPU ops; the
 * dropout masks are the same function of (seed, index) on both devices, and the frozen
 * weight's NULL gradient skips the weight product with the same input gradient. */
static void test_lora(void)
{
    enum { N = 45, C = 96, OC = 70, R = 8, LDI = 100, LDO = 150, C0 = 40 };
    const size_t ni = (size_t)N * LDI, no = (size_t)N * LDO;
    const float s = 2.0f;
    void *x = hact(ni, -1, 1), *y = hact(no, -1, 1), *y0 = hact_copy(y, no), *dy = hact(no, -1, 1);
    void *dx = hact(ni, -1, 1), *dx0 = hact_copy(dx, ni);
    float *A = hparam((size_t)R * C, -0.3f, 0.3f), *B = hparam((size_t)OC * R, -0.3f, 0.3f);
    float *t = hpoison((size_t)N * R), *dt = hpoison((size_t)N * R);
    float *dA = hrand((size_t)R * C, -1, 1), *dA0 = hcopy(dA, (size_t)R * C);
    float *dB = hrand((size_t)OC * R, -1, 1), *dB0 = hcopy(dB, (size_t)OC * R);
    void *d_x = dact(x, ni), *d_y = dact(y, no), *d_dy = dact(dy, no), *d_dx = dact(dx, ni);
    float *d_A = dcopy(A, (size_t)R * C), *d_B = dcopy(B, (size_t)OC * R), *d_t = dpoison((size_t)N * R);
    float *d_dt = dpoison((size_t)N * R), *d_dA = dcopy(dA, (size_t)R * C), *d_dB = dcopy(dB, (size_t)OC * R);
    const size_t az = act_size();
    lora_fwd(cpu, (char *)y + C0 * az, LDO, t, x, LDI, A, B, s, N, C, OC, R);
    lora_fwd(gpu, (char *)d_y + C0 * az, LDO, d_t, d_x, LDI, d_A, d_B, s, N, C, OC, R);
    check_status("lora_forward");
    check_acc_act("lora_forward out", d_y, y, y0, no, TOL_RED);
    check_close("lora_forward t", d_t, t, (size_t)N * R, TOL_RED);
    h2d(d_t, t, (size_t)N * R * sizeof(float));
    lora_bwd(cpu, dx, dA, dB, dt, (char *)dy + C0 * az, LDO, x, LDI, t, A, B, s, N, C, OC, R);
    lora_bwd(gpu, d_dx, d_dA, d_dB, d_dt, (char *)d_dy + C0 * az, LDO, d_x, LDI, d_t, d_A, d_B, s, N, C, OC, R);
    check_status("lora_backward");
    check_acc_act("lora_backward dinp", d_dx, dx, dx0, ni, TOL_RED);
    check_acc("lora_backward dA", d_dA, dA, dA0, (size_t)R * C, TOL_RED);
    check_acc("lora_backward dB", d_dB, dB, dB0, (size_t)OC * R, TOL_RED);
    check_close("lora_backward dt", d_dt, dt, (size_t)N * R, TOL_RED);

    const float p = 0.25f;
    void *dr = hact_poison(ni), *d_dr = dact_poison(ni), *g = hact(ni, -1, 1), *g0 = hact_copy(g, ni);
    void *d_g = dact(g, ni);
    cpu->dropout_forward(dr, x, ni, p, 77);
    gpu->dropout_forward(d_dr, d_x, ni, p, 77);
    check_status("dropout_forward");
    check_close_act("dropout_forward", d_dr, dr, ni, TOL_EW);
    cpu->dropout_backward(g, dy, ni < no ? ni : no, p, 78);
    gpu->dropout_backward(d_g, d_dy, ni < no ? ni : no, p, 78);
    check_status("dropout_backward");
    check_acc_act("dropout_backward", d_g, g, g0, ni, TOL_EW);

    /* a frozen weight: linear_t_backward without dweight gives the same dinp */
    {
        enum { LN = 33, LC = 64, LO = 48 };
        void *li = hact((size_t)LN * LC, -1, 1), *lg = hact((size_t)LN * LO, -1, 1);
        float *lw = hparam((size_t)LO * LC, -1, 1);
        void *d_li = dact(li, (size_t)LN * LC), *d_lg = dact(lg, (size_t)LN * LO);
        float *d_lw = dcopy(lw, (size_t)LO * LC), *d_dw = dpoison((size_t)LO * LC);
        void *d1 = dact_poison((size_t)LN * LC), *d2 = dact_poison((size_t)LN * LC);
        cudaMemset(d1, 0, (size_t)LN * LC * az), cudaMemset(d2, 0, (size_t)LN * LC * az), cudaMemset(d_dw, 0, (size_t)LO * LC * 4);
        gpu->linear_t_backward(d1, d_dw, NULL, d_lg, d_li, d_lw, LN, LC, LO);
        gpu->linear_t_backward(d2, NULL, NULL, d_lg, d_li, d_lw, LN, LC, LO);
        check_status("linear_t_backward dweight NULL");
        void *h1 = malloc((size_t)LN * LC * az), *h2 = malloc((size_t)LN * LC * az);
        cudaMemcpy(h1, d1, (size_t)LN * LC * az, cudaMemcpyDeviceToHost);
        cudaMemcpy(h2, d2, (size_t)LN * LC * az, cudaMemcpyDeviceToHost);
        n_checks++;
        if (memcmp(h1, h2, (size_t)LN * LC * az)) {
            n_fail++;
            printf("FAIL  linear_t_backward: dinp without dweight differs\n");
        }
        void *dv[] = {d_li, d_lg, d_lw, d_dw, d1, d2};
        for (void *q : dv) cudaFree(q);
        void *hv[] = {li, lg, lw, h1, h2};
        for (void *q : hv) free(q);
    }
    void *dev[] = {d_x, d_y, d_dy, d_dx, d_A, d_B, d_t, d_dt, d_dA, d_dB, d_dr, d_g};
    for (void *q : dev) cudaFree(q);
    void *host[] = {x, y, y0, dy, dx, dx0, A, B, t, dt, dA, dA0, dB, dB0, dr, g, g0};
    for (void *q : host) free(q);
}

static void test_elementwise(void)
{
    enum { N = 10007 };
    void *x = hact(N, -4, 4), *y = hact(N, -1, 1), *out = hact_poison(N);
    void *dinp = hact(N, -1, 1), *dinp0 = hact_copy(dinp, N);
    float *s = hrand(N, -1, 1);
    void *d_x = dact(x, N), *d_y = dact(y, N), *d_out = dact_poison(N), *d_dinp = dact(dinp, N);
    float *d_s = dcopy(s, N);

    cpu->gelu_forward(out, x, N);
    gpu->gelu_forward(d_out, d_x, N);
    check_status("gelu_forward");
    check_close_act("gelu_forward", d_out, out, N, TOL_EW);

    cpu->gelu_backward(dinp, x, y, N);
    gpu->gelu_backward(d_dinp, d_x, d_y, N);
    check_status("gelu_backward");
    check_acc_act("gelu_backward", d_dinp, dinp, dinp0, N, TOL_EW);

    fill_nan_act(out, N);
    dact_poison_again(d_out, N);
    cpu->residual_forward(out, x, y, N);
    gpu->residual_forward(d_out, d_x, d_y, N);
    check_status("residual_forward");
    check_close_act("residual_forward", d_out, out, N, TOL_EW);
    cpu->residual_forward(x, x, y, N); /* out aliases a */
    gpu->residual_forward(d_x, d_x, d_y, N);
    check_status("residual_forward aliased");
    check_close_act("residual_forward out == a", d_x, x, N, TOL_EW);

    cpu->scale(s, 0.37f, N);
    gpu->scale(d_s, 0.37f, N);
    check_status("scale");
    check_close("scale", d_s, s, N, TOL_EW);

    cudaFree(d_x);
    cudaFree(d_y);
    cudaFree(d_out);
    cudaFree(d_dinp);
    cudaFree(d_s);
    free(x);
    free(y);
    free(out);
    free(dinp);
    free(dinp0);
    free(s);
}

/* Part p (0 q, 1 k, 2 v) of a (rows, 3C) qkv-shaped array: (rows, C). */
static float *qkv_part(const float *x, size_t rows, int C, int p)
{
    const size_t n = rows * (size_t)C;
    float *y = (float *)malloc((n ? n : 1) * sizeof *y);
    for (size_t r = 0; r < rows; r++)
        memcpy(y + r * C, x + (r * 3 + p) * C, (size_t)C * sizeof *y);
    return y;
}

/* Flash attention, CUDA vs the reference: out, lse and dqkv (per part: dq,
 * dk, dv) within the attention tolerance. Outputs and scratch are
 * NaN-poisoned before every run; forward and backward each run twice and
 * must agree bitwise. The GPU backward starts from the GPU forward's own
 * out and lse (as in training); dqkv starts at U(-0.5, 0.5), about the size
 * of dv (|dv| <= ~2, |dq|, |dk| <= ~0.5 for these inputs). pad: qkv and
 * dout one element off their allocation (the scalar tile loads). */
static void test_attention_case(int B, int T, int C, int NH, size_t pad)
{
    char name[96];
    const size_t rows = (size_t)B * T, nqkv = rows * 3 * C, nout = rows * C;
    const size_t nlse = (size_t)B * NH * T;
    const size_t nscr = gpu->attention_scratch_floats(B, T, C, NH);
    const char *tag = pad ? " unaligned" : "";
    void *qkv = hact(nqkv, -1, 1), *dout = hact(nout, -1, 1), *out = hact_poison(nout);
    void *dqkv = hact(nqkv, -0.5f, 0.5f), *dqkv0 = hact_copy(dqkv, nqkv);
    float *lse = hpoison(nlse), *scratch = hpoison(nlse);
    void *d_qkv = dact_pad(qkv, nqkv, pad), *d_dout = dact_pad(dout, nout, pad);
    void *d_dqkv = dact(dqkv, nqkv), *d_dqkv2 = dact(dqkv, nqkv);
    void *d_out = dact_poison(nout), *d_out2 = dact_poison(nout);
    float *d_lse = dpoison(nlse), *d_lse2 = dpoison(nlse), *d_scratch = dpoison(nscr);

    n_checks++;
    if (nscr != nlse || cpu->attention_scratch_floats(B, T, C, NH) != nlse) {
        n_fail++;
        printf("FAIL  attention_scratch_floats: %zu, want B*NH*T = %zu\n", nscr, nlse);
    }
    cpu->attention_forward(out, lse, qkv, B, T, C, NH);
    gpu->attention_forward(d_out, d_lse, d_qkv, B, T, C, NH);
    gpu->attention_forward(d_out2, d_lse2, d_qkv, B, T, C, NH);
    snprintf(name, sizeof name, "attention_forward B%d T%d C%d NH%d%s", B, T, C, NH, tag);
    check_status(name);
    snprintf(name, sizeof name, "attention_forward out T%d HS%d%s", T, C / NH, tag);
    check_close_act(name, d_out, out, nout, TOL_ATT);
    check_same_bits(name, d_out, d_out2, nout, act);
    snprintf(name, sizeof name, "attention_forward lse T%d HS%d%s", T, C / NH, tag);
    if (act == ZINC_DTYPE_BF16)
        check_close_atol(name, d_lse, lse, nlse, 0.0, 2e-2);
    else
        check_close(name, d_lse, lse, nlse, TOL_ATT);
    check_same_bits(name, d_lse, d_lse2, nlse, ZINC_DTYPE_F32);

    cpu->attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
    gpu->attention_backward(d_dqkv, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    dpoison_again(d_scratch, nscr);
    gpu->attention_backward(d_dqkv2, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    snprintf(name, sizeof name, "attention_backward B%d T%d C%d NH%d%s", B, T, C, NH, tag);
    check_status(name);
    {
        float *got = fetch_act(d_dqkv, nqkv), *ref = widen(dqkv, nqkv), *old = widen(dqkv0, nqkv);
        for (int p = 0; p < 3; p++) {
            float *g = qkv_part(got, rows, C, p), *r = qkv_part(ref, rows, C, p);
            float *o = qkv_part(old, rows, C, p);
            snprintf(name, sizeof name, "attention_backward d%c T%d HS%d%s", "qkv"[p], T, C / NH,
                     tag);
            compare(name, g, r, nout, tol_att_r, tol_att_a * maxabs(r, nout));
            check_old_matters(name, o, r, nout, TOL_ATT);
            free(g);
            free(r);
            free(o);
        }
        free(got);
        free(ref);
        free(old);
    }
    snprintf(name, sizeof name, "attention_backward dqkv T%d HS%d%s", T, C / NH, tag);
    check_same_bits(name, d_dqkv, d_dqkv2, nqkv, act);

    dfree_act(d_qkv, pad);
    dfree_act(d_dout, pad);
    cudaFree(d_dqkv);
    cudaFree(d_dqkv2);
    cudaFree(d_out);
    cudaFree(d_out2);
    cudaFree(d_lse);
    cudaFree(d_lse2);
    cudaFree(d_scratch);
    free(qkv);
    free(dout);
    free(out);
    free(dqkv);
    free(dqkv0);
    free(lse);
    free(scratch);
}

/* The fp32 table: exact fp32 kernels at every head size. */
static void test_attention(void)
{
    test_attention_case(2, 1024, 768, 12, 0); /* GPT-2 124M: HS 64, 16 x 16 tiles */
    test_attention_case(1, 130, 128, 2, 0);   /* HS 64, 3 x 3 tiles, ragged last (2 rows) */
    test_attention_case(2, 67, 96, 3, 0);     /* HS 32 (zero-padded to 64) */
    test_attention_case(2, 5, 12, 4, 0);      /* HS 3, T below one tile */
    test_attention_case(1, 1, 16, 2, 0);      /* T 1, HS 8 */
    test_attention_case(3, 70, 40, 5, 0);     /* HS 8, B 3 */
    test_attention_case(2, 200, 256, 2, 0);   /* HS 128, the largest */
    test_attention_case(1, 77, 200, 2, 0);    /* HS 100: the 128 kernels, ragged columns */
}

/* The bf16 table: tensor cores at HS 64, the fallback kernels otherwise. */
static void test_attention_bf16(void)
{
    test_attention_case(2, 1024, 768, 12, 0); /* GPT-2 124M: HS 64, 16 x 16 tiles */
    test_attention_case(1, 130, 128, 2, 0);   /* 3 x 3 tiles, ragged last (2 rows) */
    test_attention_case(2, 67, 192, 3, 0);    /* ragged, 3 heads */
    test_attention_case(2, 67, 192, 3, 1);    /* scalar (unaligned) tile loads */
    test_attention_case(2, 5, 128, 2, 0);     /* T below one tile */
    test_attention_case(1, 1, 64, 1, 0);      /* T 1 */
    test_attention_case(2, 67, 96, 3, 0);     /* HS 32: the fallback */
    test_attention_case(1, 70, 96, 2, 1);     /* HS 48: the fallback, unaligned */
    test_attention_case(1, 77, 200, 2, 0);    /* HS 100: the fallback */
    /* the tensor-core tiling: 128-row own tiles, 64-row walked tiles */
    test_attention_case(1, 1024, 128, 2, 0); /* 8 query / key tiles of 128 */
    test_attention_case(1, 2048, 128, 2, 0); /* 16 tiles, 32 walked steps */
    test_attention_case(1, 129, 128, 2, 0);  /* one row into the second tile */
    test_attention_case(1, 193, 128, 2, 0);  /* 65 rows into the second tile */
    test_attention_case(1, 193, 128, 2, 1);  /* the same, scalar loads */
    test_attention_case(1, 64, 128, 2, 0);   /* one walked tile, half a block */
    test_attention_case(1, 16, 128, 2, 0);   /* one warp's rows */
}

/* Milliseconds per call of one table's attention forward and backward at
 * the GPT-2 124M layer shape (B16 T1024 C768 NH12); only with ZINC_ATT_TIME
 * set in the environment. */
static void time_attention(const zinc_ops *t)
{
    enum { B = 16, T = 1024, C = 768, NH = 12, REPS = 20 };
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    const size_t nlse = (size_t)B * NH * T;
    const zinc_dtype act_was = act;
    act = t->act;
    void *qkv = hact(nqkv, -1, 1), *dout = hact(nout, -1, 1);
    void *d_qkv = dact(qkv, nqkv), *d_dout = dact(dout, nout), *d_dqkv = dact_poison(nqkv);
    void *d_out = dact_poison(nout);
    float *d_lse = dpoison(nlse), *d_scr = dpoison(nlse);
    cudaEvent_t e0, e1, e2;
    float ms_f = 0, ms_b = 0;
    cudaMemset(d_dqkv, 0, nqkv * act_size());
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventCreate(&e2);
    for (int i = 0; i < 2; i++) { /* warm-up */
        t->attention_forward(d_out, d_lse, d_qkv, B, T, C, NH);
        t->attention_backward(d_dqkv, d_scr, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    }
    cudaEventRecord(e0, 0);
    for (int i = 0; i < REPS; i++)
        t->attention_forward(d_out, d_lse, d_qkv, B, T, C, NH);
    cudaEventRecord(e1, 0);
    for (int i = 0; i < REPS; i++)
        t->attention_backward(d_dqkv, d_scr, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    cudaEventRecord(e2, 0);
    cudaEventSynchronize(e2);
    cudaEventElapsedTime(&ms_f, e0, e1);
    cudaEventElapsedTime(&ms_b, e1, e2);
    check_status("attention timing");
    printf("time  %-10s attention B%d T%d C%d NH%d: forward %.3f ms, backward %.3f ms\n",
           t->name, B, T, C, NH, ms_f / REPS, ms_b / REPS);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
    cudaFree(d_qkv);
    cudaFree(d_dout);
    cudaFree(d_dqkv);
    cudaFree(d_out);
    cudaFree(d_lse);
    cudaFree(d_scr);
    free(qkv);
    free(dout);
    act = act_was;
}

/* Device time of fn() per call (median of 5 batches of reps calls). */
template <class F>
static double time_ms(int reps, F fn)
{
    cudaEvent_t e0, e1;
    float t[5];
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    fn(); /* warm-up: algorithm choice, scratch growth */
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(e0, 0);
        for (int i = 0; i < reps; i++)
            fn();
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(t, t + 5);
    return t[2] / reps;
}

/* Device time of every op of a GPT-2 124M step at B16 T1024 (one call each,
 * per layer shapes), with its rate: TFLOP/s for products, GB/s of act and
 * fp32 traffic for the rest. Only with ZINC_ATT_TIME set. */
static void time_gpt2_ops(const zinc_ops *t)
{
    enum { BT = 16 * 1024, C = 768, V = 50304 };
    const zinc_dtype act_was = act;
    act = t->act;
    const size_t a = act_size(), big = (size_t)BT * 4 * C;
    void *x = dact_poison(big), *y = dact_poison(big), *z = dact_poison(big);
    void *lg = dact_poison((size_t)BT * V);
    float *w = dpoison((size_t)V * C), *g = dpoison((size_t)V * C), *b = dpoison(4 * C);
    float *gb = dpoison(4 * C), *st = dpoison(4 * (size_t)BT);
    int32_t *tok = (int32_t *)malloc(BT * sizeof(int32_t));
    for (int i = 0; i < BT; i++)
        tok[i] = rng_next() % 4 ? (int32_t)(rng_next() % 256) : 32; /* bytes, 1/4 spaces */
    int32_t *dtok = dcopy_i32(tok, BT);
    { /* finite inputs: small random values everywhere */
        void *h = hact(big, -0.5f, 0.5f);
        h2d(x, h, big * a), h2d(y, h, big * a), h2d(z, h, big * a);
        free(h);
        float *hw = hparam((size_t)V * C, -0.02f, 0.02f);
        h2d(w, hw, (size_t)V * C * 4), h2d(g, hw, (size_t)V * C * 4);
        h2d(b, hw, 4 * C * 4), h2d(gb, hw, 4 * C * 4);
        free(hw);
        t->layernorm_forward(z, st, st + BT, x, b, gb, BT, C); /* valid mean/rstd */
        void *hl = hact((size_t)BT * V, -2.0f, 2.0f);
        h2d(lg, hl, (size_t)BT * V * a);
        free(hl);
    }
    static const int shp[4][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
    for (int i = 0; i < 4; i++) {
        const int K = shp[i][0], O = shp[i][1];
        const double fl = 2.0 * BT * K * O;
        double f1 = time_ms(10, [&] { t->linear_forward(y, x, w, b, BT, K, O); });
        double f0 = time_ms(10, [&] { t->linear_forward(y, x, w, NULL, BT, K, O); });
        double b1 = time_ms(10, [&] { t->linear_backward(z, g, gb, y, x, w, BT, K, O); });
        printf("time  %s linear %4dx%-4d: fwd %.3f ms (%.0f TFLOP/s), no bias %.3f ms, bwd %.3f ms "
               "(%.0f TFLOP/s)\n", t->name, K, O, f1, fl / f1 / 1e9, f0, b1, 2 * fl / b1 / 1e9);
    }
    {
        const double fl = 2.0 * BT * C * V;
        double f = time_ms(3, [&] { t->linear_t_forward(lg, x, w, NULL, BT, C, V); });
        double bw = time_ms(3, [&] { t->linear_t_backward(y, g, NULL, lg, x, w, BT, C, V); });
        double bx = time_ms(3, [&] { t->linear_t_backward(NULL, g, NULL, lg, x, w, BT, C, V); });
        printf("time  %s head: fwd %.3f ms (%.0f TFLOP/s), bwd %.3f ms (%.0f TFLOP/s), bwd "
               "without dinp %.3f ms\n", t->name, f, fl / f / 1e9, bw, 2 * fl / bw / 1e9, bx);
    }
    const double gb_ = 1e6; /* bytes per ms -> GB/s */
    const size_t nc = (size_t)BT * C;
    double ms;
    ms = time_ms(3, [&] { t->softmax_xent(st, lg, dtok, 1e-4f, BT, V); });
    printf("time  %s softmax_xent: %.3f ms (%.0f GB/s)\n", t->name, ms, 2.0 * BT * V * a / ms / gb_);
    ms = time_ms(10, [&] { t->layernorm_forward(y, st, st + BT, x, b, gb, BT, C); });
    printf("time  %s layernorm_forward: %.3f ms (%.0f GB/s)\n", t->name, ms, 2.0 * nc * a / ms / gb_);
    ms = time_ms(10, [&] { t->layernorm_backward(z, g, gb, y, x, b, st, st + BT, BT, C); });
    printf("time  %s layernorm_backward: %.3f ms (%.0f GB/s)\n", t->name, ms, 4.0 * nc * a / ms / gb_);
    ms = time_ms(10, [&] { t->gelu_forward(y, x, big); });
    printf("time  %s gelu_forward 4C: %.3f ms (%.0f GB/s)\n", t->name, ms, 2.0 * big * a / ms / gb_);
    ms = time_ms(10, [&] { t->gelu_backward(z, x, y, big); });
    printf("time  %s gelu_backward 4C: %.3f ms (%.0f GB/s)\n", t->name, ms, 4.0 * big * a / ms / gb_);
    ms = time_ms(10, [&] { t->residual_forward(y, y, x, nc); });
    printf("time  %s residual C: %.3f ms (%.0f GB/s)\n", t->name, ms, 3.0 * nc * a / ms / gb_);
    ms = time_ms(10, [&] { t->zero(z, big * a); });
    printf("time  %s zero 4C: %.3f ms (%.0f GB/s)\n", t->name, ms, 1.0 * big * a / ms / gb_);
    ms = time_ms(3, [&] { t->embedding_forward(y, dtok, NULL, w, w, 16, 1024, C, 0, V); });
    printf("time  %s embedding_forward: %.3f ms\n", t->name, ms);
    ms = time_ms(3, [&] {
        t->embedding_backward(g, g + (size_t)1024 * C, x, dtok, NULL, 16, 1024, C, 0, V);
    });
    printf("time  %s embedding_backward (byte tokens, 1/4 one token): %.3f ms\n", t->name, ms);
    {
        const size_t np = 124u << 20; /* about GPT-2 124M's parameters */
        float *p = dpoison(np), *m = dpoison(np), *v = dpoison(np), *gr = dpoison(np);
        cudaMemset(p, 0, np * 4), cudaMemset(m, 0, np * 4), cudaMemset(v, 0, np * 4);
        cudaMemset(gr, 0, np * 4);
        ms = time_ms(3, [&] { t->adamw(p, gr, m, v, np, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 2); });
        printf("time  %s adamw 124M: %.3f ms (%.0f GB/s)\n", t->name, ms, 28.0 * np / ms / gb_);
        cudaFree(p), cudaFree(m), cudaFree(v), cudaFree(gr);
    }
    check_status("gpt2 op timing");
    cudaFree(x), cudaFree(y), cudaFree(z), cudaFree(lg), cudaFree(w), cudaFree(g), cudaFree(b);
    cudaFree(gb), cudaFree(st), cudaFree(dtok);
    free(tok);
    act = act_was;
}

static void test_softmax_xent_case(int N, int V)
{
    char name[96];
    const size_t n = (size_t)N * V;
    int32_t *tgt = (int32_t *)malloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)(rng_next() % V);
    tgt[N / 2] = -1; /* ignored row */
    float *l32 = hrand(n, -4, 4), *losses = hpoison(N);
    l32[0] = 30.0f; /* a dominant logit */
    void *logits = hact_of(l32, n);
    void *d_logits = dact(logits, n), *d_logits2 = dact(logits, n);
    float *d_losses = dpoison(N), *d_losses2 = dpoison(N);
    int32_t *d_tgt = dcopy_i32(tgt, N);
    const float dloss = 1.0f / (float)N;

    cpu->softmax_xent(losses, logits, tgt, dloss, N, V);
    gpu->softmax_xent(d_losses, d_logits, d_tgt, dloss, N, V);
    gpu->softmax_xent(d_losses2, d_logits2, d_tgt, dloss, N, V);
    snprintf(name, sizeof name, "softmax_xent N%d V%d", N, V);
    check_status(name);
    snprintf(name, sizeof name, "softmax_xent losses V%d", V);
    check_close(name, d_losses, losses, N, TOL_RED);
    check_same_bits(name, d_losses, d_losses2, N, ZINC_DTYPE_F32);
    snprintf(name, sizeof name, "softmax_xent dlogits V%d", V);
    check_close_act(name, d_logits, logits, n, TOL_RED);
    check_same_bits(name, d_logits, d_logits2, n, act);

    cudaFree(d_logits);
    cudaFree(d_logits2);
    cudaFree(d_losses);
    cudaFree(d_losses2);
    cudaFree(d_tgt);
    free(tgt);
    free(l32);
    free(logits);
    free(losses);
}

static void test_softmax_xent(void)
{
    test_softmax_xent_case(9, 1000);
    test_softmax_xent_case(3, 50257); /* GPT-2's vocabulary */
    test_softmax_xent_case(4, 7);     /* fewer columns than threads */
    test_softmax_xent_case(3, 50304); /* padded vocabulary: vector-wide gradient */
}

/* The vocab-parallel softmax + cross-entropy ops, each against the CPU's
 * op on the same inputs, over the P parts [V p / P, V (p+1) / P) of N rows
 * of V logits (one "rank" each). The combined statistics (the MAX of the
 * parts' rowmax and the SUM of their sums, as the caller's all-reduces)
 * are the CPU's and go to both sides, so each op is judged alone:
 * xent_vp_max bitwise (a max is exact); xent_vp_sums: the sums of exps
 * within the reduction tolerance, the target logits bitwise; xent_vp_finish:
 * losses and dlogits within the reduction tolerance, and the ops twice on
 * the GPU the same bits. Targets at the parts' edges and one ignored row. */
static void test_xent_vp_case(int N, int V, int P)
{
    char name[96];
    const size_t n = (size_t)N * V, asz = act_size();
    int32_t *tgt = (int32_t *)malloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)(rng_next() % V);
    for (int p = 0; p < P && 2 * p + 1 < N; p++) { /* each part's first and last column */
        tgt[2 * p] = V * p / P;
        tgt[2 * p + 1] = V * (p + 1) / P - 1;
    }
    tgt[N - 1] = -1; /* ignored row */
    float *l32 = hrand(n, -4, 4);
    l32[0] = 30.0f; /* a dominant logit */
    void *logits = hact_of(l32, n);
    float *rowmax = hpoison(N), *sums = (float *)calloc(2 * (size_t)N, sizeof(float));
    float *mx = hpoison(N), *sm = hpoison(2 * (size_t)N), *losses = hpoison(N);
    float *se = hpoison(N), *st = hpoison(N);
    float *d_mx = dpoison(N), *d_sm = dpoison(2 * (size_t)N), *d_l = dpoison(N);
    float *d_l2 = dpoison(N), *d_rowmax = dpoison(N), *d_sums = dpoison(2 * (size_t)N);
    int32_t *d_tgt = dcopy_i32(tgt, N);
    void *part[4], *d_part[4], *d_part2[4];
    const float dloss = 1.0f / (float)N;
    for (int i = 0; i < N; i++)
        rowmax[i] = -INFINITY;
    for (int p = 0; p < P; p++) { /* the parts: max */
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        part[p] = malloc((size_t)N * Vp * asz);
        for (int i = 0; i < N; i++)
            memcpy((char *)part[p] + (size_t)i * Vp * asz, (char *)logits + ((size_t)i * V + v0) * asz,
                   (size_t)Vp * asz);
        d_part[p] = dact(part[p], (size_t)N * Vp);
        d_part2[p] = dact(part[p], (size_t)N * Vp);
        cpu->xent_vp_max(mx, part[p], N, Vp);
        gpu->xent_vp_max(d_mx, d_part[p], N, Vp);
        snprintf(name, sizeof name, "xent_vp_max N%d V%d part %d/%d", N, V, p, P);
        check_status(name);
        check_same_values(name, d_mx, mx, N, ZINC_DTYPE_F32);
        for (int i = 0; i < N; i++)
            rowmax[i] = fmaxf(rowmax[i], mx[i]);
    }
    h2d(d_rowmax, rowmax, N * sizeof(float));
    for (int p = 0; p < P; p++) { /* sums, from the combined rowmax */
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        cpu->xent_vp_sums(sm, part[p], tgt, rowmax, N, Vp, v0);
        gpu->xent_vp_sums(d_sm, d_part[p], d_tgt, d_rowmax, N, Vp, v0);
        snprintf(name, sizeof name, "xent_vp_sums N%d V%d part %d/%d", N, V, p, P);
        check_status(name);
        float *g = fetch(d_sm, 2 * (size_t)N), *ge = hpoison(N), *gt = hpoison(N);
        for (int i = 0; i < N; i++) {
            ge[i] = g[2 * i], gt[i] = g[2 * i + 1];
            se[i] = sm[2 * i], st[i] = sm[2 * i + 1];
        }
        compare(name, ge, se, N, tol_red_r, tol_red_a * maxabs(se, N));
        snprintf(name, sizeof name, "xent_vp_sums target N%d V%d part %d/%d", N, V, p, P);
        compare(name, gt, st, N, 0.0, 0.0);
        free(g), free(ge), free(gt);
        for (int i = 0; i < 2 * N; i++)
            sums[i] += sm[i];
    }
    h2d(d_sums, sums, 2 * (size_t)N * sizeof(float));
    for (int p = 0; p < P; p++) { /* finish, from the combined rowmax and sums */
        const int v0 = V * p / P, Vp = V * (p + 1) / P - v0;
        const size_t np = (size_t)N * Vp;
        cpu->xent_vp_finish(losses, part[p], tgt, rowmax, sums, dloss, N, Vp, v0);
        gpu->xent_vp_finish(d_l, d_part[p], d_tgt, d_rowmax, d_sums, dloss, N, Vp, v0);
        gpu->xent_vp_finish(d_l2, d_part2[p], d_tgt, d_rowmax, d_sums, dloss, N, Vp, v0);
        snprintf(name, sizeof name, "xent_vp_finish N%d V%d part %d/%d", N, V, p, P);
        check_status(name);
        snprintf(name, sizeof name, "xent_vp_finish losses N%d V%d part %d/%d", N, V, p, P);
        check_close(name, d_l, losses, N, TOL_RED);
        check_same_bits(name, d_l, d_l2, N, ZINC_DTYPE_F32);
        snprintf(name, sizeof name, "xent_vp_finish dlogits N%d V%d part %d/%d", N, V, p, P);
        check_close_act(name, d_part[p], part[p], np, TOL_RED);
        check_same_bits(name, d_part[p], d_part2[p], np, act);
        cudaFree(d_part[p]);
        cudaFree(d_part2[p]);
        free(part[p]);
    }
    cudaFree(d_mx), cudaFree(d_sm), cudaFree(d_l), cudaFree(d_l2), cudaFree(d_rowmax);
    cudaFree(d_sums), cudaFree(d_tgt);
    free(tgt), free(l32), free(logits), free(rowmax), free(sums), free(mx), free(sm);
    free(losses), free(se), free(st);
}

static void test_xent_vp(void)
{
    test_xent_vp_case(9, 1000, 1);
    test_xent_vp_case(9, 1000, 4);   /* parts of 250: 16-byte groups for fp32 only */
    test_xent_vp_case(5, 50257, 2);  /* GPT-2's vocabulary: an odd part, element by element */
    test_xent_vp_case(5, 50304, 4);  /* padded vocabulary: vector-wide parts */
    test_xent_vp_case(4, 7, 2);      /* fewer columns than threads */
}

static void test_adamw(void)
{
    enum { N = 10007 };
    float *p = hrand(N, -1, 1), *g = hrand(N, -1, 1), *m = hrand(N, -0.1f, 0.1f);
    float *v = hrand(N, 0, 0.01f);
    float *d_p = dcopy(p, N), *d_g = dcopy(g, N), *d_m = dcopy(m, N), *d_v = dcopy(v, N);
    for (int t = 1; t <= 3; t++) {
        cpu->adamw(p, g, m, v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, t);
        gpu->adamw(d_p, d_g, d_m, d_v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, t);
    }
    check_status("adamw");
    check_close("adamw param (3 steps)", d_p, p, N, TOL_EW);
    check_close("adamw m", d_m, m, N, TOL_EW);
    check_close("adamw v", d_v, v, N, TOL_EW);
    cudaFree(d_p);
    cudaFree(d_g);
    cudaFree(d_m);
    cudaFree(d_v);
    free(p);
    free(g);
    free(m);
    free(v);
}

static void test_sumsq_case(size_t n)
{
    char name[96];
    float *x = hrand(n, -2, 2);
    float *d_x = dcopy(x, n);
    const double want = cpu->sumsq(x, n);
    const double got = gpu->sumsq(d_x, n), again = gpu->sumsq(d_x, n);
    const double err = fabs(got - want);
    snprintf(name, sizeof name, "sumsq n=%zu", n);
    check_status(name);
    n_checks += 2;
    if (!(err <= 1e-9 * fabs(want))) {
        n_fail++;
        printf("FAIL  %-40s gpu %.17g cpu %.17g\n", name, got, want);
    } else {
        printf("ok    %-40s rel err %.3g\n", name, want > 0 ? err / want : err);
    }
    if (memcmp(&got, &again, sizeof got) != 0) {
        n_fail++;
        printf("FAIL  %-40s two runs differ\n", name);
    }
    cudaFree(d_x);
    free(x);
}

/* The memory and precision ops against the CPU's, bitwise (same rounding). */
static void test_memory_ops(void)
{
    const size_t n = 100003;
    const zinc_dtype dts[3] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_F16};
    float *x = hrand(n, -3, 3), *y = hrand(n, -3, 3);
    x[5] = NAN;
    x[6] = 1e30f; /* overflows f16 */
    float *d_x = dcopy(x, n), *d_y = dcopy(y, n);
    void *h1 = malloc(n * 4), *h2 = malloc(n * 4), *d1 = NULL, *d2 = NULL;
    if (cudaMalloc(&d1, n * 4) != cudaSuccess || cudaMalloc(&d2, n * 4) != cudaSuccess)
        die_cuda(cudaGetLastError(), "cudaMalloc");
    char name[96];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            /* convert f32 -> a, then a -> b; then b += a */
            cpu->convert(h1, dts[a], x, ZINC_DTYPE_F32, n);
            gpu->convert(d1, dts[a], d_x, ZINC_DTYPE_F32, n);
            cpu->convert(h2, dts[b], h1, dts[a], n);
            gpu->convert(d2, dts[b], d1, dts[a], n);
            cpu->add_into(h2, dts[b], h1, dts[a], n);
            gpu->add_into(d2, dts[b], d1, dts[a], n);
            snprintf(name, sizeof name, "convert/add_into %s -> %s", zinc_dtype_name(dts[a]),
                     zinc_dtype_name(dts[b]));
            check_status(name);
            check_same_values(name, d2, h2, n, dts[b]);
        }
    for (int a = 1; a < 3; a++) {
        memcpy(h1, y, n * 4);
        cudaMemcpy(d1, d_y, n * 4, cudaMemcpyDeviceToDevice);
        cpu->round_to((float *)h1, dts[a], n);
        gpu->round_to((float *)d1, dts[a], n);
        snprintf(name, sizeof name, "round_to %s", zinc_dtype_name(dts[a]));
        check_status(name);
        check_same_values(name, d1, h1, n, ZINC_DTYPE_F32);
    }
    gpu->copy(d1, d_y, n * 4);
    gpu->zero((float *)d1 + 10, 40);
    memcpy(h1, y, n * 4);
    memset((float *)h1 + 10, 0, 40);
    check_status("copy, zero");
    check_same_values("copy, zero", d1, h1, n, ZINC_DTYPE_F32);
    const double want = cpu->sum(y, n), got = gpu->sum(d_y, n);
    n_checks++;
    if (!(fabs(got - want) <= 1e-9 * (fabs(want) + 1))) {
        n_fail++;
        printf("FAIL  %-40s gpu %.17g cpu %.17g\n", "sum", got, want);
    } else {
        printf("ok    %-40s gpu %.17g cpu %.17g\n", "sum", got, want);
    }
    cudaFree(d1);
    cudaFree(d2);
    cudaFree(d_x);
    cudaFree(d_y);
    free(h1);
    free(h2);
    free(x);
    free(y);
}

/* ------------------------------------------------------------------ */
/* vectorized elementwise paths                                        */
/* ------------------------------------------------------------------ */

/* The elementwise ops take 16-byte accesses on groups of elements (four
 * fp32, eight bf16) and single elements before and after. n elements;
 * operand k sits off[k] elements past a 256-byte boundary: equal offsets
 * give a scalar head before the groups, unequal ones make the whole op
 * scalar. The act ops: residual must equal the reference bitwise (one fp32
 * add, rounded once); GELU (not bitwise against the CPU) within tolerance,
 * and bitwise equal to the GPU's all-scalar result (an operand one element
 * off). */
static void test_act_paths_case(size_t n, const size_t off[3])
{
    const size_t es = act_size(), slot = ((n + 8) * 4 + 255) / 256 * 256;
    char name[96], tag[48], *arena = NULL;
    cudaError_t e = cudaMalloc(&arena, 4 * slot);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    snprintf(tag, sizeof tag, "n=%zu off %zu,%zu,%zu", n, off[0], off[1], off[2]);
    void *x = hact(n, -4, 4), *y = hact(n, -1, 1), *z = hact(n, -1, 1), *ref = hact_poison(n);
    char *d0 = arena + off[0] * es, *d1 = arena + slot + off[1] * es;
    char *d2 = arena + 2 * slot + off[2] * es;
    char *ds = arena + 3 * slot + (off[1] + 1) * es; /* never aligned with d1 */

    h2d(d0, ref, n * es); /* NaN */
    h2d(d1, x, n * es);
    h2d(d2, y, n * es);
    cpu->residual_forward(ref, x, y, n);
    gpu->residual_forward(d0, d1, d2, n);
    snprintf(name, sizeof name, "residual %s", tag);
    check_status(name);
    check_same_values(name, d0, ref, n, act);

    fill_nan_act(ref, n);
    dact_poison_again(d0, n);
    dact_poison_again(ds, n);
    cpu->gelu_forward(ref, x, n);
    gpu->gelu_forward(d0, d1, n);
    gpu->gelu_forward(ds, d1, n);
    snprintf(name, sizeof name, "gelu_forward %s", tag);
    check_status(name);
    check_close_act(name, d0, ref, n, TOL_EW);
    check_same_dev(name, d0, ds, n, act);
    memcpy(ref, z, n * es);
    h2d(d0, z, n * es);
    h2d(ds, z, n * es);
    cpu->gelu_backward(ref, x, y, n);
    gpu->gelu_backward(d0, d1, d2, n);
    gpu->gelu_backward(ds, d1, d2, n);
    snprintf(name, sizeof name, "gelu_backward %s", tag);
    check_status(name);
    check_close_act(name, d0, ref, n, TOL_EW);
    check_same_dev(name, d0, ds, n, act);

    cudaFree(arena);
    free(x);
    free(y);
    free(z);
    free(ref);
}

/* The same placements for scale and the precision ops (fp32 table), all
 * bitwise against the CPU. */
static void test_precision_paths_case(size_t n, const size_t off[3])
{
    const zinc_dtype dts[3] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_F16};
    const size_t slot = ((n + 8) * 4 + 255) / 256 * 256;
    char name[96], tag[48], *arena = NULL;
    cudaError_t e = cudaMalloc(&arena, 4 * slot);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    snprintf(tag, sizeof tag, "n=%zu off %zu,%zu,%zu", n, off[0], off[1], off[2]);
    float *x = hrand(n, -4, 4), *ref = hcopy(x, n), *xp = hcopy(x, n);
    void *h1 = malloc(n * 4), *h2 = malloc(n * 4);
    xp[0] = NAN;
    if (n > 2)
        xp[n - 2] = 1e30f; /* overflows f16 */
    float *d0 = (float *)(arena + 0 * slot) + off[0];
    float *d2 = (float *)(arena + 2 * slot) + off[2];

    h2d(d0, x, n * 4);
    cpu->scale(ref, 0.37f, n);
    gpu->scale(d0, 0.37f, n);
    snprintf(name, sizeof name, "scale %s", tag);
    check_status(name);
    check_same_values(name, d0, ref, n, ZINC_DTYPE_F32);

    /* precision ops: f32 -> a at d0, a -> b at d1, then b += a */
    h2d(d2, xp, n * 4);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            void *pa = arena + off[0] * zinc_dtype_size(dts[a]);
            void *pb = arena + slot + off[1] * zinc_dtype_size(dts[b]);
            cpu->convert(h1, dts[a], xp, ZINC_DTYPE_F32, n);
            gpu->convert(pa, dts[a], d2, ZINC_DTYPE_F32, n);
            cpu->convert(h2, dts[b], h1, dts[a], n);
            gpu->convert(pb, dts[b], pa, dts[a], n);
            cpu->add_into(h2, dts[b], h1, dts[a], n);
            gpu->add_into(pb, dts[b], pa, dts[a], n);
            snprintf(name, sizeof name, "convert/add_into %s->%s %s", zinc_dtype_name(dts[a]),
                     zinc_dtype_name(dts[b]), tag);
            check_status(name);
            check_same_values(name, pb, h2, n, dts[b]);
        }
    for (int a = 1; a < 3; a++) {
        memcpy(h1, xp, n * 4);
        cpu->round_to((float *)h1, dts[a], n);
        gpu->round_to(d2, dts[a], n);
        snprintf(name, sizeof name, "round_to %s %s", zinc_dtype_name(dts[a]), tag);
        check_status(name);
        check_same_values(name, d2, h1, n, ZINC_DTYPE_F32);
        h2d(d2, xp, n * 4);
    }

    cudaFree(arena);
    free(x);
    free(ref);
    free(xp);
    free(h1);
    free(h2);
}

/* The act ops' paths on the table under test; the precision ops' on the
 * fp32 table only. */
static void test_vector_paths(void)
{
    static const size_t offs[][3] = {{0, 0, 0}, {1, 1, 1}, {3, 3, 3}, {7, 7, 7},
                                     {1, 0, 2}, {0, 1, 1}, {2, 2, 0}, {5, 5, 5}};
    static const struct {
        size_t n, k;
    } cases[] = {
        {1, 0}, {3, 1},
        {6, 1},  /* fp32: a head of 3, no group, a tail of 3; bf16: all head */
        {8, 2},  /* fp32: a head of 1, one group, a tail of 3; bf16: 5, none, 3 */
        {17, 3}, /* off 7: a head of 1, then whole groups (fp32 4, bf16 2), no tail */
        {21, 7}, /* off 5: a head of 3, groups (fp32 4, bf16 2), a tail of 2 */
    };
    for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
        test_act_paths_case(4099, offs[k]);
        if (act == ZINC_DTYPE_F32)
            test_precision_paths_case(4099, offs[k]);
    }
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        test_act_paths_case(cases[k].n, offs[cases[k].k]);
        if (act == ZINC_DTYPE_F32)
            test_precision_paths_case(cases[k].n, offs[cases[k].k]);
    }
}

/* softmax_xent writes the gradient a vector at a time when V is a multiple
 * of the vector width and the logits are 16-byte aligned: the same logits
 * one element off (one at a time) must give the same bits. */
static void test_softmax_xent_unaligned(int N, int V)
{
    char name[96];
    const size_t n = (size_t)N * V;
    int32_t *tgt = (int32_t *)malloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)(rng_next() % V);
    tgt[N - 1] = -1; /* ignored row */
    void *logits = hact(n, -4, 4);
    void *d_a = dact(logits, n), *d_b = dact_pad(logits, n, 1);
    float *l_a = dpoison(N), *l_b = dpoison(N);
    int32_t *d_tgt = dcopy_i32(tgt, N);
    gpu->softmax_xent(l_a, d_a, d_tgt, 0.5f, N, V);
    gpu->softmax_xent(l_b, d_b, d_tgt, 0.5f, N, V);
    snprintf(name, sizeof name, "softmax_xent aligned/not N%d V%d", N, V);
    check_status(name);
    check_same_dev(name, d_a, d_b, n, act);
    check_same_dev(name, l_a, l_b, N, ZINC_DTYPE_F32);
    cudaFree(d_a);
    dfree_act(d_b, 1);
    cudaFree(l_a);
    cudaFree(l_b);
    cudaFree(d_tgt);
    free(tgt);
    free(logits);
}

static void test_sumsq(void)
{
    test_sumsq_case(0);
    test_sumsq_case(5);
    test_sumsq_case(((size_t)1 << 22) + 7);
}

/* 1 if every op of t is set. */
static int table_complete(const zinc_ops *t)
{
    return t->name && t->matmul && t->linear_forward && t->linear_backward && t->linear_t_forward &&
           t->linear_t_backward && t->embedding_forward && t->embedding_backward &&
           t->layernorm_forward && t->layernorm_backward && t->gelu_forward &&
           t->gelu_backward && t->attention_forward && t->attention_backward &&
           t->attention_scratch_floats && t->residual_forward && t->softmax_xent &&
           t->xent_vp_max && t->xent_vp_sums && t->xent_vp_finish && t->adamw &&
           t->sumsq && t->scale && t->zero && t->copy && t->convert && t->add_into &&
           t->round_to && t->sum && t->lora_down && t->lora_up && t->lora_grad_up && t->lora_grad_down && t->dropout_forward &&
           t->dropout_backward;
}

int main(void)
{
    int n_dev = 0;
    cudaError_t e;
    cpu_f32 = zinc_ops_cpu();
    cpu_bf16 = zinc_ops_cpu_bf16();
    gpu_f32 = zinc_ops_cuda();
    gpu_bf16 = zinc_ops_cuda_bf16();
    printf("test_cuda_ops: CUDA op tables vs CPU op tables\n");

    /* the tables themselves need no device */
    if (!table_complete(gpu_f32) || strcmp(gpu_f32->name, "cuda") != 0 ||
        gpu_f32->act != ZINC_DTYPE_F32) {
        printf("FAIL  the CUDA op table is incomplete, misnamed or not act f32\n");
        return 1;
    }
    if (!table_complete(gpu_bf16) || strcmp(gpu_bf16->name, "cuda-bf16") != 0 ||
        gpu_bf16->act != ZINC_DTYPE_BF16) {
        printf("FAIL  the CUDA bf16 op table is incomplete, misnamed or not act bf16\n");
        return 1;
    }
    if (!table_complete(cpu_bf16) || cpu_f32->act != ZINC_DTYPE_F32 ||
        cpu_bf16->act != ZINC_DTYPE_BF16) {
        printf("FAIL  the CPU reference tables are incomplete or of the wrong act dtype\n");
        return 1;
    }

    e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        printf("SKIP: no CUDA device visible (%s)\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0");
        return 77;
    }
    {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            printf("device 0: %s, compute capability %d.%d\n", prop.name, prop.major, prop.minor);
    }

    use_table(gpu_f32, cpu_f32);
    printf("-- table %s vs %s\n", gpu->name, cpu->name);
    test_matmul();
    test_linear();
    test_linear_gelu();
    test_head();
    test_embedding();
    test_layernorm();
    test_llama_ops();
    test_lora();
    test_elementwise();
    test_attention();
    test_softmax_xent();
    test_xent_vp();
    test_adamw();
    test_sumsq();
    test_memory_ops();
    test_vector_paths();
    test_softmax_xent_unaligned(5, 1000);
    test_softmax_xent_unaligned(3, 50304);

    /* the bf16 table: bf16 activations, within bf16 tolerance */
    use_table(gpu_bf16, cpu_bf16);
    printf("-- table %s vs %s\n", gpu->name, cpu->name);
    test_matmul();
    test_matmul_case(300, 64, 260, 1, 1, 1.0f, 0.5f, 0);
    test_linear();
    test_linear_gelu();
    test_head();
    test_embedding();
    test_layernorm();
    test_llama_ops();
    test_lora();
    test_elementwise();
    test_attention_bf16();
    test_softmax_xent();
    test_xent_vp();
    test_vector_paths();
    test_softmax_xent_unaligned(5, 1000);
    test_softmax_xent_unaligned(3, 50304);

    use_table(gpu_f32, cpu_f32);
    if (getenv("ZINC_ATT_TIME")) {
        time_attention(gpu_f32);
        time_attention(gpu_bf16);
        time_gpt2_ops(gpu_bf16);
    }

    printf("== %d checks, %d failed ==\n", n_checks, n_fail);
    return n_fail ? 1 : 0;
}
