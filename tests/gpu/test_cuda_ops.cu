/* test_cuda_ops.cu - every op of the CUDA table against the CPU table.
 *
 * For each op: random inputs (fixed seed), the CPU op on host copies, the
 * CUDA op on device copies, outputs compared. Gradients start non-zero so
 * that accumulation (+=) is checked; sizes are odd and cross the CUDA
 * kernels' tile, warp and chunk boundaries (64-row attention tiles, 32-lane
 * rows, embedding buckets). Every backward op, softmax_xent and sumsq also
 * run twice on the GPU and must agree bitwise (no float atomics).
 *
 * Tolerances: |gpu - cpu| <= rtol |cpu| + atol.
 *  - Elementwise ops (gelu, residual, scale, adamw, embedding): rtol 1e-5.
 *    Each output is a short formula of its inputs, a few ulps (6e-8 each)
 *    apart at most; atol 1e-6 x max|cpu| covers GELU's 1 + tanh(u), which
 *    cancels for negative inputs (both sides are exact to ~1e-7 absolute).
 *  - Attention (flash style, exact fp32 on both sides): rtol 1e-5 and atol
 *    1e-5 x max|cpu|.
 *  - The bf16 table's attention (tensor cores, bf16 operands): atol
 *    2e-2 x max|cpu| for out and dqkv, 2e-2 absolute for lse.
 *  - Reductions and products (matmul, linear, layernorm,
 *    softmax_xent): rtol 1e-4 and atol 1e-4 x max|cpu|. Sums of k terms
 *    summed in another order differ by up to ~k eps sum|terms|; an output
 *    that cancels to near zero has no relative accuracy on either side, so
 *    the bound is taken relative to the output's scale (normwise).
 *  - sumsq: both sides add float squares (exact in double) in double:
 *    rtol 1e-9.
 *
 * Exits 0 when all pass, 1 on any failure, 77 (skipped) when no CUDA device
 * is visible. Not run by `make test`; `make test-gpu` runs it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "zinc/ops_cuda.h"

static const zinc_ops *cpu, *gpu, *gpu_bf16;
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

/* Device copy of n floats (n may be 0), with `pad` spare floats before
 * it so callers can test unaligned pointers: returns base + pad. */
static float *dcopy_pad(const float *h, size_t n, size_t pad)
{
    float *d = NULL;
    cudaError_t e = cudaMalloc(&d, (n + pad + 1) * sizeof *d);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    if (n && (e = cudaMemcpy(d + pad, h, n * sizeof *d, cudaMemcpyHostToDevice)) != cudaSuccess)
        die_cuda(e, "cudaMemcpy to device");
    return d + pad;
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

/* Host copy of a device buffer (caller frees). */
static float *fetch(const float *d, size_t n)
{
    float *h = (float *)malloc((n ? n : 1) * sizeof *h);
    cudaError_t e = n ? cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost) : cudaSuccess;
    if (e != cudaSuccess)
        die_cuda(e, "cudaMemcpy to host");
    return h;
}

static double maxabs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

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

/* Compares the device result d against the host reference ref:
 * |gpu - cpu| <= rtol |cpu| + atol for every element. */
static void check_close_atol(const char *what, const float *d, const float *ref, size_t n,
                             double rtol, double atol)
{
    float *got = fetch(d, n);
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
    free(got);
}

/* The same with atol = atol_rel max|cpu| (normwise). */
static void check_close(const char *what, const float *d, const float *ref, size_t n, double rtol,
                        double atol_rel)
{
    check_close_atol(what, d, ref, n, rtol, atol_rel * maxabs(ref, n));
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
    unsigned char *got = (unsigned char *)malloc(bytes);
    if (cudaMemcpy(got, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
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

/* Two device buffers must hold the same bits; pair names them ("two runs",
 * "vector and scalar paths"). */
static void check_bits_pair(const char *what, const float *d1, const float *d2, size_t n,
                            const char *pair)
{
    float *a = fetch(d1, n), *b = fetch(d2, n);
    n_checks++;
    if (memcmp(a, b, n * sizeof *a) != 0) {
        n_fail++;
        printf("FAIL  %-40s %s differ\n", what, pair);
    } else {
        printf("ok    %-40s %s bitwise equal\n", what, pair);
    }
    free(a);
    free(b);
}

/* Two runs of an op must give the same bits (determinism). */
static void check_same_bits(const char *what, const float *d1, const float *d2, size_t n)
{
    check_bits_pair(what, d1, d2, n, "two runs");
}

#define TOL_EW 1e-5, 1e-6
/* products: fp32 table 1e-4; the bf16 table (bf16 operands) 2e-2 of max|cpu| */
static double tol_red_r = 1e-4, tol_red_a = 1e-4;
#define TOL_RED tol_red_r, tol_red_a
#define TOL_ATT 1e-5, 1e-5

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

static void test_linear_case(int N, int C, int OC, int with_bias, size_t bias_pad)
{
    char name[96];
    const size_t nin = (size_t)N * C, nw = (size_t)C * OC, nout = (size_t)N * OC;
    float *inp = hrand(nin, -1, 1), *w = hrand(nw, -1, 1), *bias = hrand(OC, -1, 1);
    float *out = hrand(nout, -1, 1), *dout = hrand(nout, -1, 1);
    float *dinp = hrand(nin, -1, 1), *dw = hrand(nw, -1, 1), *db = hrand(OC, -1, 1);
    float *d_inp = dcopy(inp, nin), *d_w = dcopy(w, nw), *d_bias = dcopy_pad(bias, OC, bias_pad);
    float *d_out = dcopy(out, nout), *d_dout = dcopy(dout, nout);
    float *d_dinp = dcopy(dinp, nin), *d_dw = dcopy(dw, nw), *d_db = dcopy(db, OC);
    float *d_dinp2 = dcopy(dinp, nin), *d_dw2 = dcopy(dw, nw), *d_db2 = dcopy(db, OC);
    const char *tag = !with_bias ? "no bias" : bias_pad ? "unaligned bias" : "bias";

    cpu->linear_forward(out, inp, w, with_bias ? bias : NULL, N, C, OC);
    gpu->linear_forward(d_out, d_inp, d_w, with_bias ? d_bias : NULL, N, C, OC);
    snprintf(name, sizeof name, "linear_forward %s", tag);
    check_status(name);
    check_close(name, d_out, out, nout, TOL_RED);

    cpu->linear_backward(dinp, dw, with_bias ? db : NULL, dout, inp, w, N, C, OC);
    gpu->linear_backward(d_dinp, d_dw, with_bias ? d_db : NULL, d_dout, d_inp, d_w, N, C, OC);
    gpu->linear_backward(d_dinp2, d_dw2, with_bias ? d_db2 : NULL, d_dout, d_inp, d_w, N, C, OC);
    snprintf(name, sizeof name, "linear_backward %s", tag);
    check_status(name);
    snprintf(name, sizeof name, "linear_backward dinp (%s)", tag);
    check_close(name, d_dinp, dinp, nin, TOL_RED);
    snprintf(name, sizeof name, "linear_backward dweight (%s)", tag);
    check_close(name, d_dw, dw, nw, TOL_RED);
    if (with_bias) {
        check_close("linear_backward dbias", d_db, db, OC, TOL_RED);
        check_same_bits("linear_backward dbias", d_db, d_db2, OC);
    }
    /* dinp and dbias may be NULL: dweight alone accumulates again */
    cpu->linear_backward(NULL, dw, NULL, dout, inp, w, N, C, OC);
    gpu->linear_backward(NULL, d_dw, NULL, d_dout, d_inp, d_w, N, C, OC);
    check_status("linear_backward NULL dinp, dbias");
    check_close("linear_backward dweight, NULL dinp/dbias", d_dw, dw, nw, TOL_RED);

    cudaFree(d_inp);
    cudaFree(d_w);
    dfree_pad(d_bias, bias_pad);
    cudaFree(d_out);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_dw);
    cudaFree(d_db);
    cudaFree(d_dinp2);
    cudaFree(d_dw2);
    cudaFree(d_db2);
    free(inp);
    free(w);
    free(bias);
    free(out);
    free(dout);
    free(dinp);
    free(dw);
    free(db);
}

static void test_linear(void)
{
    test_linear_case(37, 29, 53, 1, 0);
    test_linear_case(37, 29, 53, 1, 1);
    test_linear_case(37, 29, 53, 0, 0);
    test_linear_case(300, 96, 160, 1, 0); /* dbias over several row chunks */
}

static void test_embedding(void)
{
    enum { B = 3, T = 17, C = 40, V = 7, MAXT = 20 };
    const size_t nout = (size_t)B * T * C;
    int32_t tokens[B * T];
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int32_t)(rng_next() % V); /* many repeats */
    float *wte = hrand((size_t)V * C, -1, 1), *wpe = hrand((size_t)MAXT * C, -1, 1);
    float *out = hrand(nout, -1, 1), *dout = hrand(nout, -1, 1);
    float *dwte = hrand((size_t)V * C, -1, 1), *dwpe = hrand((size_t)MAXT * C, -1, 1);
    int32_t *d_tok = dcopy_i32(tokens, B * T);
    float *d_wte = dcopy(wte, (size_t)V * C), *d_wpe = dcopy(wpe, (size_t)MAXT * C);
    float *d_out = dcopy(out, nout), *d_dout = dcopy(dout, nout);
    float *d_dwte = dcopy(dwte, (size_t)V * C), *d_dwpe = dcopy(dwpe, (size_t)MAXT * C);
    float *d_dwte2 = dcopy(dwte, (size_t)V * C), *d_dwpe2 = dcopy(dwpe, (size_t)MAXT * C);

    cpu->embedding_forward(out, tokens, wte, wpe, B, T, C);
    gpu->embedding_forward(d_out, d_tok, d_wte, d_wpe, B, T, C);
    check_status("embedding_forward");
    check_close("embedding_forward", d_out, out, nout, TOL_EW);

    cpu->embedding_backward(dwte, dwpe, dout, tokens, B, T, C);
    gpu->embedding_backward(d_dwte, d_dwpe, d_dout, d_tok, B, T, C);
    gpu->embedding_backward(d_dwte2, d_dwpe2, d_dout, d_tok, B, T, C);
    check_status("embedding_backward");
    check_close("embedding_backward dwte", d_dwte, dwte, (size_t)V * C, TOL_EW);
    check_close("embedding_backward dwpe (rows >= T kept)", d_dwpe, dwpe, (size_t)MAXT * C, TOL_EW);
    check_same_bits("embedding_backward dwte", d_dwte, d_dwte2, (size_t)V * C);

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
}

static void test_layernorm(void)
{
    enum { N = 37, C = 300 };
    const size_t n = (size_t)N * C;
    float *inp = hrand(n, 2, 4); /* mean far from 0: the two-pass variance matters */
    float *w = hrand(C, -1, 1), *b = hrand(C, -1, 1), *out = hrand(n, -1, 1);
    float *mean = hrand(N, -1, 1), *rstd = hrand(N, -1, 1), *dout = hrand(n, -1, 1);
    float *dinp = hrand(n, -1, 1), *dw = hrand(C, -1, 1), *db = hrand(C, -1, 1);
    float *d_inp = dcopy(inp, n), *d_w = dcopy(w, C), *d_b = dcopy(b, C), *d_out = dcopy(out, n);
    float *d_mean = dcopy(mean, N), *d_rstd = dcopy(rstd, N), *d_dout = dcopy(dout, n);
    float *d_dinp = dcopy(dinp, n), *d_dw = dcopy(dw, C), *d_db = dcopy(db, C);
    float *d_dinp2 = dcopy(dinp, n), *d_dw2 = dcopy(dw, C), *d_db2 = dcopy(db, C);

    cpu->layernorm_forward(out, mean, rstd, inp, w, b, N, C);
    gpu->layernorm_forward(d_out, d_mean, d_rstd, d_inp, d_w, d_b, N, C);
    check_status("layernorm_forward");
    check_close("layernorm_forward out", d_out, out, n, TOL_RED);
    check_close("layernorm_forward mean", d_mean, mean, N, TOL_RED);
    check_close("layernorm_forward rstd", d_rstd, rstd, N, TOL_RED);

    /* backward from the CPU's saved statistics, so both sides see the same */
    cudaMemcpy(d_mean, mean, N * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(d_rstd, rstd, N * sizeof(float), cudaMemcpyHostToDevice);
    cpu->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    gpu->layernorm_backward(d_dinp, d_dw, d_db, d_dout, d_inp, d_w, d_mean, d_rstd, N, C);
    gpu->layernorm_backward(d_dinp2, d_dw2, d_db2, d_dout, d_inp, d_w, d_mean, d_rstd, N, C);
    check_status("layernorm_backward");
    check_close("layernorm_backward dinp", d_dinp, dinp, n, TOL_RED);
    check_close("layernorm_backward dweight", d_dw, dw, C, TOL_RED);
    check_close("layernorm_backward dbias", d_db, db, C, TOL_RED);
    check_same_bits("layernorm_backward dinp", d_dinp, d_dinp2, n);
    check_same_bits("layernorm_backward dweight", d_dw, d_dw2, C);

    cudaFree(d_inp);
    cudaFree(d_w);
    cudaFree(d_b);
    cudaFree(d_out);
    cudaFree(d_mean);
    cudaFree(d_rstd);
    cudaFree(d_dout);
    cudaFree(d_dinp);
    cudaFree(d_dw);
    cudaFree(d_db);
    cudaFree(d_dinp2);
    cudaFree(d_dw2);
    cudaFree(d_db2);
    free(inp);
    free(w);
    free(b);
    free(out);
    free(mean);
    free(rstd);
    free(dout);
    free(dinp);
    free(dw);
    free(db);
}

static void test_elementwise(void)
{
    enum { N = 10007 };
    float *x = hrand(N, -4, 4), *y = hrand(N, -1, 1), *out = hrand(N, -1, 1);
    float *dinp = hrand(N, -1, 1);
    float *d_x = dcopy(x, N), *d_y = dcopy(y, N), *d_out = dcopy(out, N), *d_dinp = dcopy(dinp, N);

    cpu->gelu_forward(out, x, N);
    gpu->gelu_forward(d_out, d_x, N);
    check_status("gelu_forward");
    check_close("gelu_forward", d_out, out, N, TOL_EW);

    cpu->gelu_backward(dinp, x, y, N);
    gpu->gelu_backward(d_dinp, d_x, d_y, N);
    check_status("gelu_backward");
    check_close("gelu_backward", d_dinp, dinp, N, TOL_EW);

    cpu->residual_forward(out, x, y, N);
    gpu->residual_forward(d_out, d_x, d_y, N);
    check_status("residual_forward");
    check_close("residual_forward", d_out, out, N, TOL_EW);
    cpu->residual_forward(x, x, y, N); /* out aliases a */
    gpu->residual_forward(d_x, d_x, d_y, N);
    check_status("residual_forward aliased");
    check_close("residual_forward out == a", d_x, x, N, TOL_EW);

    cpu->scale(y, 0.37f, N);
    gpu->scale(d_y, 0.37f, N);
    check_status("scale");
    check_close("scale", d_y, y, N, TOL_EW);

    cudaFree(d_x);
    cudaFree(d_y);
    cudaFree(d_out);
    cudaFree(d_dinp);
    free(x);
    free(y);
    free(out);
    free(dinp);
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

/* Flash attention, CUDA vs CPU, both fp32 with exact arithmetic: out, lse
 * and dqkv within 1e-5 (relative, plus 1e-5 x max|cpu| for elements that
 * cancel). Outputs and scratch are NaN-poisoned before every run; forward
 * and backward each run twice and must agree bitwise. The GPU backward
 * starts from the GPU forward's own out and lse (as in training); dqkv
 * starts non-zero (accumulation). */
static void test_attention_case(int B, int T, int C, int NH)
{
    char name[96];
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    const size_t nlse = (size_t)B * NH * T;
    const size_t nscr = gpu->attention_scratch_floats(B, T, C, NH);
    float *qkv = hrand(nqkv, -1, 1), *dout = hrand(nout, -1, 1), *dqkv = hrand(nqkv, -1, 1);
    float *out = (float *)malloc((nout ? nout : 1) * sizeof(float));
    float *lse = (float *)malloc((nlse ? nlse : 1) * sizeof(float));
    float *scratch = (float *)malloc((nlse ? nlse : 1) * sizeof(float));
    float *d_qkv = dcopy(qkv, nqkv), *d_dout = dcopy(dout, nout);
    float *d_dqkv = dcopy(dqkv, nqkv), *d_dqkv2 = dcopy(dqkv, nqkv);
    float *d_out = dpoison(nout), *d_lse = dpoison(nlse), *d_out2 = dpoison(nout);
    float *d_lse2 = dpoison(nlse), *d_scratch = dpoison(nscr);

    n_checks++;
    if (nscr != nlse || cpu->attention_scratch_floats(B, T, C, NH) != nlse) {
        n_fail++;
        printf("FAIL  attention_scratch_floats: %zu, want B*NH*T = %zu\n", nscr, nlse);
    }
    cpu->attention_forward(out, lse, qkv, B, T, C, NH);
    gpu->attention_forward(d_out, d_lse, d_qkv, B, T, C, NH);
    gpu->attention_forward(d_out2, d_lse2, d_qkv, B, T, C, NH);
    snprintf(name, sizeof name, "attention_forward B%d T%d C%d NH%d", B, T, C, NH);
    check_status(name);
    snprintf(name, sizeof name, "attention_forward out T%d HS%d", T, C / NH);
    check_close(name, d_out, out, nout, TOL_ATT);
    check_same_bits(name, d_out, d_out2, nout);
    snprintf(name, sizeof name, "attention_forward lse T%d HS%d", T, C / NH);
    check_close(name, d_lse, lse, nlse, TOL_ATT);
    check_same_bits(name, d_lse, d_lse2, nlse);

    cpu->attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
    gpu->attention_backward(d_dqkv, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    dpoison_again(d_scratch, nscr);
    gpu->attention_backward(d_dqkv2, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    snprintf(name, sizeof name, "attention_backward B%d T%d C%d NH%d", B, T, C, NH);
    check_status(name);
    snprintf(name, sizeof name, "attention_backward dqkv T%d HS%d", T, C / NH);
    check_close(name, d_dqkv, dqkv, nqkv, TOL_ATT);
    check_same_bits(name, d_dqkv, d_dqkv2, nqkv);

    cudaFree(d_qkv);
    cudaFree(d_dout);
    cudaFree(d_dqkv);
    cudaFree(d_dqkv2);
    cudaFree(d_out);
    cudaFree(d_lse);
    cudaFree(d_out2);
    cudaFree(d_lse2);
    cudaFree(d_scratch);
    free(qkv);
    free(dout);
    free(dqkv);
    free(out);
    free(lse);
    free(scratch);
}

static void test_attention(void)
{
    test_attention_case(2, 1024, 768, 12); /* GPT-2 124M: HS 64, 16 x 16 tiles */
    test_attention_case(1, 130, 128, 2);   /* HS 64, 3 x 3 tiles, ragged last (2 rows) */
    test_attention_case(2, 67, 96, 3);     /* HS 32 (zero-padded to 64) */
    test_attention_case(2, 5, 12, 4);      /* HS 3, T below one tile */
    test_attention_case(1, 1, 16, 2);      /* T 1, HS 8 */
    test_attention_case(3, 70, 40, 5);     /* HS 8, B 3 */
    test_attention_case(2, 200, 256, 2);   /* HS 128, the largest */
    test_attention_case(1, 77, 200, 2);    /* HS 100: the 128 kernels, ragged columns */
}

/* The bf16 table's attention (tensor cores, bf16 operands; the exact fp32
 * kernels when HS != 64) vs the CPU op: out and dqkv within 2e-2 x max|cpu|,
 * lse within 2e-2 absolute (bf16 rounds operands, P and dS to 2^-9
 * relative). Outputs and scratch NaN-poisoned; both passes run twice and
 * must agree bitwise. dqkv starts small and non-zero (accumulation is
 * checked without the start values hiding the gradient). pad: qkv and dout
 * one float off 16-byte alignment (the scalar tile loads). */
static void test_attention_bf16_case(int B, int T, int C, int NH, size_t pad)
{
    char name[96];
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    const size_t nlse = (size_t)B * NH * T;
    const size_t nscr = gpu_bf16->attention_scratch_floats(B, T, C, NH);
    const char *tag = pad ? " unaligned" : "";
    float *qkv = hrand(nqkv, -1, 1), *dout = hrand(nout, -1, 1);
    float *dqkv = hrand(nqkv, -0.1f, 0.1f);
    float *out = (float *)malloc((nout ? nout : 1) * sizeof(float));
    float *lse = (float *)malloc((nlse ? nlse : 1) * sizeof(float));
    float *scratch = (float *)malloc((nlse ? nlse : 1) * sizeof(float));
    float *d_qkv = dcopy_pad(qkv, nqkv, pad), *d_dout = dcopy_pad(dout, nout, pad);
    float *d_dqkv = dcopy(dqkv, nqkv), *d_dqkv2 = dcopy(dqkv, nqkv);
    float *d_out = dpoison(nout), *d_lse = dpoison(nlse), *d_out2 = dpoison(nout);
    float *d_lse2 = dpoison(nlse), *d_scratch = dpoison(nscr);

    n_checks++;
    if (nscr != nlse) {
        n_fail++;
        printf("FAIL  bf16 attention_scratch_floats: %zu, want B*NH*T = %zu\n", nscr, nlse);
    }
    cpu->attention_forward(out, lse, qkv, B, T, C, NH);
    gpu_bf16->attention_forward(d_out, d_lse, d_qkv, B, T, C, NH);
    gpu_bf16->attention_forward(d_out2, d_lse2, d_qkv, B, T, C, NH);
    snprintf(name, sizeof name, "bf16 attention_forward B%d T%d C%d NH%d%s", B, T, C, NH, tag);
    check_status(name);
    snprintf(name, sizeof name, "bf16 attention out T%d HS%d%s", T, C / NH, tag);
    check_close(name, d_out, out, nout, 0.0, 2e-2);
    check_same_bits(name, d_out, d_out2, nout);
    snprintf(name, sizeof name, "bf16 attention lse T%d HS%d%s", T, C / NH, tag);
    check_close_atol(name, d_lse, lse, nlse, 0.0, 2e-2);
    check_same_bits(name, d_lse, d_lse2, nlse);

    cpu->attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
    gpu_bf16->attention_backward(d_dqkv, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    dpoison_again(d_scratch, nscr);
    gpu_bf16->attention_backward(d_dqkv2, d_scratch, d_dout, d_qkv, d_out, d_lse, B, T, C, NH);
    snprintf(name, sizeof name, "bf16 attention_backward B%d T%d C%d NH%d%s", B, T, C, NH, tag);
    check_status(name);
    snprintf(name, sizeof name, "bf16 attention dqkv T%d HS%d%s", T, C / NH, tag);
    check_close(name, d_dqkv, dqkv, nqkv, 0.0, 2e-2);
    check_same_bits(name, d_dqkv, d_dqkv2, nqkv);

    dfree_pad(d_qkv, pad);
    dfree_pad(d_dout, pad);
    cudaFree(d_dqkv);
    cudaFree(d_dqkv2);
    cudaFree(d_out);
    cudaFree(d_lse);
    cudaFree(d_out2);
    cudaFree(d_lse2);
    cudaFree(d_scratch);
    free(qkv);
    free(dout);
    free(dqkv);
    free(out);
    free(lse);
    free(scratch);
}

static void test_attention_bf16(void)
{
    test_attention_bf16_case(2, 1024, 768, 12, 0); /* GPT-2 124M: HS 64, 16 x 16 tiles */
    test_attention_bf16_case(1, 130, 128, 2, 0);   /* 3 x 3 tiles, ragged last (2 rows) */
    test_attention_bf16_case(2, 67, 192, 3, 0);    /* ragged, 3 heads */
    test_attention_bf16_case(2, 67, 192, 3, 1);    /* scalar (unaligned) tile loads */
    test_attention_bf16_case(2, 5, 128, 2, 0);     /* T below one tile */
    test_attention_bf16_case(1, 1, 64, 1, 0);      /* T 1 */
    test_attention_bf16_case(1, 77, 200, 2, 0);    /* HS 100: the fp32 fallback */
    /* the tensor-core tiling: 128-row own tiles, 64-row walked tiles */
    test_attention_bf16_case(1, 1024, 128, 2, 0); /* 8 query / key tiles of 128 */
    test_attention_bf16_case(1, 2048, 128, 2, 0); /* 16 tiles, 32 walked steps */
    test_attention_bf16_case(1, 129, 128, 2, 0);  /* one row into the second tile */
    test_attention_bf16_case(1, 193, 128, 2, 0);  /* 65 rows into the second tile */
    test_attention_bf16_case(1, 193, 128, 2, 1);  /* the same, scalar loads */
    test_attention_bf16_case(1, 64, 128, 2, 0);   /* one walked tile, half a block */
    test_attention_bf16_case(1, 16, 128, 2, 0);   /* one warp's rows */
}

/* Milliseconds per call of one table's attention forward and backward at
 * the GPT-2 124M layer shape (B16 T1024 C768 NH12); only with ZINC_ATT_TIME
 * set in the environment. */
static void time_attention(const zinc_ops *t)
{
    enum { B = 16, T = 1024, C = 768, NH = 12, REPS = 20 };
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    const size_t nlse = (size_t)B * NH * T;
    float *qkv = hrand(nqkv, -1, 1), *dout = hrand(nout, -1, 1);
    float *d_qkv = dcopy(qkv, nqkv), *d_dout = dcopy(dout, nout), *d_dqkv = dpoison(nqkv);
    float *d_out = dpoison(nout), *d_lse = dpoison(nlse), *d_scr = dpoison(nlse);
    cudaEvent_t e0, e1, e2;
    float ms_f = 0, ms_b = 0;
    cudaMemset(d_dqkv, 0, nqkv * sizeof(float));
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
}

static void test_softmax_xent_case(int N, int V)
{
    char name[96];
    const size_t n = (size_t)N * V;
    int32_t *tgt = (int32_t *)malloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)(rng_next() % V);
    tgt[N / 2] = -1; /* ignored row */
    float *logits = hrand(n, -4, 4), *losses = hrand(N, -1, 1);
    logits[0] = 30.0f; /* a dominant logit */
    float *d_logits = dcopy(logits, n), *d_logits2 = dcopy(logits, n);
    float *d_losses = dcopy(losses, N);
    int32_t *d_tgt = dcopy_i32(tgt, N);
    const float dloss = 1.0f / (float)N;

    cpu->softmax_xent(losses, logits, tgt, dloss, N, V);
    gpu->softmax_xent(d_losses, d_logits, d_tgt, dloss, N, V);
    gpu->softmax_xent(d_losses, d_logits2, d_tgt, dloss, N, V);
    snprintf(name, sizeof name, "softmax_xent N%d V%d", N, V);
    check_status(name);
    snprintf(name, sizeof name, "softmax_xent losses V%d", V);
    check_close(name, d_losses, losses, N, TOL_RED);
    snprintf(name, sizeof name, "softmax_xent dlogits V%d", V);
    check_close(name, d_logits, logits, n, TOL_RED);
    check_same_bits(name, d_logits, d_logits2, n);

    cudaFree(d_logits);
    cudaFree(d_logits2);
    cudaFree(d_losses);
    cudaFree(d_tgt);
    free(tgt);
    free(logits);
    free(losses);
}

static void test_softmax_xent(void)
{
    test_softmax_xent_case(9, 1000);
    test_softmax_xent_case(3, 50257); /* GPT-2's vocabulary */
    test_softmax_xent_case(4, 7);     /* fewer columns than threads */
    test_softmax_xent_case(3, 50304); /* padded vocabulary: 4-wide gradient */
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

/* The vectorized and the scalar access path must give the same bits. */
static void check_same_dev(const char *what, const float *d1, const float *d2, size_t n)
{
    check_bits_pair(what, d1, d2, n, "vector and scalar paths");
}

static void h2d(void *d, const void *h, size_t bytes)
{
    const cudaError_t e = cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMemcpy to device");
}

/* The elementwise ops take 16-byte accesses on groups of four elements and
 * single elements before and after. n elements; operand k sits off[k]
 * elements past a 256-byte boundary: equal offsets give a scalar head
 * before the groups, unequal ones make the whole op scalar. Residual, scale
 * and the precision ops must equal the CPU bitwise; GELU (not bitwise
 * against the CPU) within tolerance, and bitwise equal to the GPU's
 * all-scalar result (an operand one element off). */
static void test_vector_paths_case(size_t n, const size_t off[3])
{
    const zinc_dtype dts[3] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_F16};
    const size_t slot = ((n + 8) * 4 + 255) / 256 * 256;
    char name[96], tag[48], *arena = NULL;
    cudaError_t e = cudaMalloc(&arena, 4 * slot);
    if (e != cudaSuccess)
        die_cuda(e, "cudaMalloc");
    snprintf(tag, sizeof tag, "n=%zu off %zu,%zu,%zu", n, off[0], off[1], off[2]);
    float *x = hrand(n, -4, 4), *y = hrand(n, -1, 1), *z = hrand(n, -1, 1);
    float *ref = (float *)malloc(n * 4), *xp = hcopy(x, n);
    void *h1 = malloc(n * 4), *h2 = malloc(n * 4);
    xp[0] = NAN;
    if (n > 2)
        xp[n - 2] = 1e30f; /* overflows f16 */
    float *d0 = (float *)(arena + 0 * slot) + off[0], *d1 = (float *)(arena + slot) + off[1];
    float *d2 = (float *)(arena + 2 * slot) + off[2];
    float *ds = (float *)(arena + 3 * slot) + off[1] + 1; /* never aligned with d1 */

    h2d(d1, x, n * 4);
    h2d(d2, y, n * 4);
    cpu->residual_forward(ref, x, y, n);
    gpu->residual_forward(d0, d1, d2, n);
    snprintf(name, sizeof name, "residual %s", tag);
    check_status(name);
    check_same_values(name, d0, ref, n, ZINC_DTYPE_F32);
    cpu->scale(ref, 0.37f, n);
    gpu->scale(d0, 0.37f, n);
    snprintf(name, sizeof name, "scale %s", tag);
    check_status(name);
    check_same_values(name, d0, ref, n, ZINC_DTYPE_F32);

    cpu->gelu_forward(ref, x, n);
    gpu->gelu_forward(d0, d1, n);
    gpu->gelu_forward(ds, d1, n);
    snprintf(name, sizeof name, "gelu_forward %s", tag);
    check_status(name);
    check_close(name, d0, ref, n, TOL_EW);
    check_same_dev(name, d0, ds, n);
    memcpy(ref, z, n * 4);
    h2d(d0, z, n * 4);
    h2d(ds, z, n * 4);
    cpu->gelu_backward(ref, x, y, n);
    gpu->gelu_backward(d0, d1, d2, n);
    gpu->gelu_backward(ds, d1, d2, n);
    snprintf(name, sizeof name, "gelu_backward %s", tag);
    check_status(name);
    check_close(name, d0, ref, n, TOL_EW);
    check_same_dev(name, d0, ds, n);

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
    free(y);
    free(z);
    free(ref);
    free(xp);
    free(h1);
    free(h2);
}

static void test_vector_paths(void)
{
    static const size_t offs[][3] = {{0, 0, 0}, {1, 1, 1}, {3, 3, 3}, {1, 0, 2}, {0, 1, 1}, {2, 2, 0}};
    for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++)
        test_vector_paths_case(4099, offs[k]);
    test_vector_paths_case(1, offs[0]);
    test_vector_paths_case(3, offs[1]);
    test_vector_paths_case(6, offs[1]); /* a head of 3, no group, a tail of 3 */
    test_vector_paths_case(8, offs[2]);
}

/* softmax_xent writes the gradient four at a time when V % 4 == 0 and the
 * logits are 16-byte aligned: the same logits one float off (one at a time)
 * must give the same bits. */
static void test_softmax_xent_unaligned(int N, int V)
{
    char name[96];
    const size_t n = (size_t)N * V;
    int32_t *tgt = (int32_t *)malloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)(rng_next() % V);
    tgt[N - 1] = -1; /* ignored row */
    float *logits = hrand(n, -4, 4);
    float *d_a = dcopy(logits, n), *d_b = dcopy_pad(logits, n, 1);
    float *l_a = dcopy(logits, N), *l_b = dcopy(logits, N);
    int32_t *d_tgt = dcopy_i32(tgt, N);
    gpu->softmax_xent(l_a, d_a, d_tgt, 0.5f, N, V);
    gpu->softmax_xent(l_b, d_b, d_tgt, 0.5f, N, V);
    snprintf(name, sizeof name, "softmax_xent aligned/not N%d V%d", N, V);
    check_status(name);
    check_same_dev(name, d_a, d_b, n);
    check_same_dev(name, l_a, l_b, N);
    cudaFree(d_a);
    dfree_pad(d_b, 1);
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

int main(void)
{
    int n_dev = 0;
    cudaError_t e;
    cpu = zinc_ops_cpu();
    gpu = zinc_ops_cuda();
    gpu_bf16 = zinc_ops_cuda_bf16();
    printf("test_cuda_ops: CUDA op table vs CPU op table\n");

    /* the table itself needs no device */
    if (!gpu->name || strcmp(gpu->name, "cuda") != 0 || !gpu->matmul || !gpu->linear_forward ||
        !gpu->linear_backward || !gpu->embedding_forward || !gpu->embedding_backward ||
        !gpu->layernorm_forward || !gpu->layernorm_backward || !gpu->gelu_forward ||
        !gpu->gelu_backward || !gpu->attention_forward || !gpu->attention_backward ||
        !gpu->attention_scratch_floats ||
        !gpu->residual_forward || !gpu->softmax_xent || !gpu->adamw || !gpu->sumsq ||
        !gpu->scale) {
        printf("FAIL  the CUDA op table is incomplete or misnamed\n");
        return 1;
    }
    if (!gpu_bf16->name || strcmp(gpu_bf16->name, "cuda-bf16") != 0 ||
        !gpu_bf16->attention_forward || !gpu_bf16->attention_backward ||
        !gpu_bf16->attention_scratch_floats) {
        printf("FAIL  the CUDA bf16 op table is misnamed or lacks attention\n");
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

    test_matmul();
    test_linear();
    test_embedding();
    test_layernorm();
    test_elementwise();
    test_attention();
    test_softmax_xent();
    test_adamw();
    test_sumsq();
    test_memory_ops();
    test_vector_paths();
    test_softmax_xent_unaligned(5, 1000);
    test_softmax_xent_unaligned(3, 50304);

    /* the bf16 table: products with bf16 operands, within bf16 tolerance */
    gpu = zinc_ops_cuda_bf16();
    tol_red_r = 0.0;
    tol_red_a = 2e-2;
    printf("-- table %s\n", gpu->name);
    test_matmul();
    test_linear();
    /* products too large to stage at once are split (rows of c, or k) */
    setenv("ZINC_CUDA_STAGE_MAX", "65536", 1);
    test_matmul_case(300, 64, 260, 0, 0, 1.0f, 0.5f, 0);
    test_matmul_case(300, 64, 260, 0, 1, 1.0f, 0.5f, 0);
    test_matmul_case(300, 64, 260, 1, 0, 1.0f, 0.5f, 0);
    test_matmul_case(300, 64, 260, 1, 1, 1.0f, 0.5f, 0); /* not splittable: FAST_16BF */
    unsetenv("ZINC_CUDA_STAGE_MAX");
    test_attention_bf16();
    gpu = zinc_ops_cuda();
    if (getenv("ZINC_ATT_TIME")) {
        time_attention(gpu);
        time_attention(gpu_bf16);
    }

    printf("== %d checks, %d failed ==\n", n_checks, n_fail);
    return n_fail ? 1 : 0;
}
