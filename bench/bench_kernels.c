/* bench_kernels.c - times every CPU op at the benchmark model's sizes
 * (GPT: L=6, C=384, NH=6, V=50304, B=4, T=64; N = B*T rows) with 2 threads
 * (OpenMP and OpenBLAS), median of repeats, and the raw cblas_sgemm rate for
 * a layer-sized product (256x1152x384) and 2048^3 for reference.
 *
 * It then runs the op sequence of one whole training step (forward and
 * backward of 6 layers, the tied LM head, the loss, AdamW over all
 * parameters) back to back, which also shows any cost of OpenMP and
 * OpenBLAS threads handing the cores to each other, and reports the matmul
 * FLOP rate that step time implies as a fraction of the 2048^3 rate.
 * Prints a table; asserts nothing. Usage: bench_kernels [threads=2 [omp_threads=threads]]. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "zinc/ops.h"

enum { B = 4, T = 64, C = 384, NH = 6, V = 50304, L = 6, N = B * T, MAXT = 1024 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *buf(size_t n, float scale)
{
    float *x = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    uint32_t s = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 17, s ^= s << 5;
        x[i] = scale * ((float)(s >> 8) * (1.0f / 8388608.0f) - 1.0f);
    }
    return x;
}

/* Everything an op call needs, so that each timed body is one line. */
static const zinc_ops *ops;
static float *x_in, *x_ln, *x_qkv, *x_att, *x_atty, *x_fc, *x_fcg, *x_out, *d_a, *d_b, *d_c;
static float *w_qkv, *w_proj, *w_fc, *w_fcp, *b_qkv, *b_proj, *b_fc, *b_fcp, *ln_w, *ln_b;
static float *g_qkv, *g_proj, *g_fc, *g_fcp, *gb_qkv, *gb_proj, *gb_fc, *gb_fcp, *gln_w, *gln_b;
static float *wte, *wpe, *dwte, *dwpe, *logits, *losses, *mean, *rstd, *scratch;
static float *params, *grads, *adam_m, *adam_v;
static int32_t tokens[N], targets[N];
static size_t n_params;

typedef void (*op_fn)(void);

/* Median seconds of reps calls of f after one warm-up call. */
static double time_op(op_fn f, int reps)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    f();
    for (int r = 0; r < reps; r++) {
        const double t0 = now();
        f();
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    return t[reps / 2];
}

static void op_emb_f(void) { ops->embedding_forward(x_in, tokens, NULL, wte, wpe, B, T, C, 0, V); }
static void op_emb_b(void) { ops->embedding_backward(dwte, dwpe, d_a, tokens, NULL, B, T, C, 0, V); }
static void op_ln_f(void) { ops->layernorm_forward(x_ln, mean, rstd, x_in, ln_w, ln_b, N, C); }
static void op_ln_b(void)
{
    ops->layernorm_backward(d_b, gln_w, gln_b, d_a, x_in, ln_w, mean, rstd, N, C);
}
static void op_qkv_f(void) { ops->linear_forward(x_qkv, x_ln, w_qkv, b_qkv, N, C, 3 * C); }
static void op_qkv_b(void)
{
    ops->linear_backward(d_b, g_qkv, gb_qkv, d_c, x_ln, w_qkv, N, C, 3 * C);
}
static void op_att_f(void) { ops->attention_forward(x_atty, x_att, x_qkv, B, T, C, NH); }
static void op_att_b(void)
{
    ops->attention_backward(d_c, scratch, d_a, x_qkv, x_atty, x_att, B, T, C, NH);
}
static void op_proj_f(void) { ops->linear_forward(x_out, x_atty, w_proj, b_proj, N, C, C); }
static void op_proj_b(void)
{
    ops->linear_backward(d_b, g_proj, gb_proj, d_a, x_atty, w_proj, N, C, C);
}
static void op_res_f(void) { ops->residual_forward(x_out, x_out, x_in, (size_t)N * C); }
static void op_fc_f(void) { ops->linear_forward(x_fc, x_ln, w_fc, b_fc, N, C, 4 * C); }
static void op_fc_b(void) { ops->linear_backward(d_b, g_fc, gb_fc, d_c, x_ln, w_fc, N, C, 4 * C); }
static void op_gelu_f(void) { ops->gelu_forward(x_fcg, x_fc, (size_t)N * 4 * C); }
static void op_gelu_b(void) { ops->gelu_backward(d_c, x_fc, d_b, (size_t)N * 4 * C); }
static void op_fcp_f(void) { ops->linear_forward(x_out, x_fcg, w_fcp, b_fcp, N, 4 * C, C); }
static void op_fcp_b(void)
{
    ops->linear_backward(d_b, g_fcp, gb_fcp, d_a, x_fcg, w_fcp, N, 4 * C, C);
}
/* Tied LM head: logits(N,V) = x(N,C) wte(V,C)^T. */
static void op_head_f(void) { ops->matmul(logits, x_ln, wte, N, V, C, 0, 1, 1.0f, 0.0f); }
static void op_head_b(void)
{
    ops->matmul(d_a, logits, wte, N, C, V, 0, 0, 1.0f, 1.0f);    /* dx += dlogits wte */
    ops->matmul(dwte, logits, x_ln, V, C, N, 1, 0, 1.0f, 1.0f);  /* dwte += dlogits^T x */
}
static void op_xent(void) { ops->softmax_xent(losses, logits, targets, 1.0f / N, N, V); }
static void op_adamw(void)
{
    ops->adamw(params, grads, adam_m, adam_v, n_params, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
}
static volatile double sink;
static void op_sumsq(void) { sink = ops->sumsq(grads, n_params); }
static void op_scale(void) { ops->scale(grads, 1.0f, n_params); }

/* The op sequence of one training step, in order. */
static void train_step(void)
{
    op_emb_f();
    for (int l = 0; l < L; l++) {
        op_ln_f(), op_qkv_f(), op_att_f(), op_proj_f(), op_res_f();
        op_ln_f(), op_fc_f(), op_gelu_f(), op_fcp_f(), op_res_f();
    }
    op_ln_f();
    op_head_f();
    op_xent();
    op_head_b();
    op_ln_b();
    for (int l = 0; l < L; l++) {
        op_fcp_b(), op_gelu_b(), op_fc_b(), op_ln_b();
        op_proj_b(), op_att_b(), op_qkv_b(), op_ln_b();
    }
    op_emb_b();
    op_sumsq();
    op_adamw();
}

static double sgemm_gflops(int m, int n, int k, int reps)
{
    float *a = buf((size_t)m * k, 1.0f), *b = buf((size_t)k * n, 1.0f);
    float *c = buf((size_t)m * n, 1.0f);
    double t[64];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    for (int r = 0; r < reps; r++) {
        const double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f,
                    c, n);
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    free(a), free(b), free(c);
    return 2.0 * m * n * k / t[reps / 2] * 1e-9;
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const int omp_threads = argc > 2 ? atoi(argv[2]) : threads;
    omp_set_num_threads(omp_threads);
    openblas_set_num_threads(threads);
    ops = zinc_ops_cpu();

    const size_t nC = (size_t)N * C;
    x_in = buf(nC, 1), x_ln = buf(nC, 1), x_qkv = buf(3 * nC, 1), x_atty = buf(nC, 1);
    x_att = buf((size_t)B * NH * T, 1), x_fc = buf(4 * nC, 2), x_fcg = buf(4 * nC, 1);
    x_out = buf(nC, 1), d_a = buf(nC, 0.01f), d_b = buf(4 * nC, 0.01f), d_c = buf(4 * nC, 0.01f);
    scratch = buf(ops->attention_scratch_floats(B, T, C, NH), 1);
    w_qkv = buf((size_t)C * 3 * C, 0.02f), w_proj = buf((size_t)C * C, 0.02f);
    w_fc = buf((size_t)C * 4 * C, 0.02f), w_fcp = buf((size_t)4 * C * C, 0.02f);
    b_qkv = buf(3 * C, 0.01f), b_proj = buf(C, 0.01f), b_fc = buf(4 * C, 0.01f);
    b_fcp = buf(C, 0.01f), ln_w = buf(C, 1), ln_b = buf(C, 0.1f);
    g_qkv = buf((size_t)C * 3 * C, 0), g_proj = buf((size_t)C * C, 0);
    g_fc = buf((size_t)C * 4 * C, 0), g_fcp = buf((size_t)4 * C * C, 0);
    gb_qkv = buf(3 * C, 0), gb_proj = buf(C, 0), gb_fc = buf(4 * C, 0), gb_fcp = buf(C, 0);
    gln_w = buf(C, 0), gln_b = buf(C, 0);
    wte = buf((size_t)V * C, 0.02f), wpe = buf((size_t)MAXT * C, 0.02f);
    dwte = buf((size_t)V * C, 0), dwpe = buf((size_t)MAXT * C, 0);
    logits = buf((size_t)N * V, 2), losses = buf(N, 0), mean = buf(N, 0), rstd = buf(N, 0);
    for (int i = 0; i < N; i++)
        tokens[i] = (int32_t)((i * 7919) % V), targets[i] = (int32_t)((i * 104729 + 1) % V);
    /* GPT-2 parameter count at these sizes (tied head). */
    n_params = (size_t)V * C + (size_t)MAXT * C + 2 * C +
               (size_t)L * (12 * (size_t)C * C + 13 * (size_t)C);
    params = buf(n_params, 0.02f), grads = buf(n_params, 0.001f);
    adam_m = buf(n_params, 0), adam_v = buf(n_params, 0);

    printf("zinc CPU kernels, %d OpenBLAS / %d OpenMP threads, B=%d T=%d C=%d NH=%d V=%d L=%d, "
           "%zu params\n", threads, omp_threads, B, T, C, NH, V, L, n_params);
    const double peak = sgemm_gflops(2048, 2048, 2048, 5);
    const double layer = sgemm_gflops(256, 1152, 384, 41);
    printf("cblas_sgemm 2048^3        %8.1f GFLOP/s\n", peak);
    printf("cblas_sgemm 256x1152x384  %8.1f GFLOP/s (%.0f%% of 2048^3)\n\n", layer,
           100.0 * layer / peak);

    static const struct {
        const char *name;
        op_fn fn;
        int per_step; /* calls in one training step */
        double flops; /* matmul FLOPs per call (0: not a matmul) */
    } tab[] = {
        {"embedding_forward", op_emb_f, 1, 0},
        {"embedding_backward", op_emb_b, 1, 0},
        {"layernorm_forward", op_ln_f, 2 * L + 1, 0},
        {"layernorm_backward", op_ln_b, 2 * L + 1, 0},
        {"linear_forward qkv", op_qkv_f, L, 2.0 * N * C * 3 * C},
        {"linear_backward qkv", op_qkv_b, L, 4.0 * N * C * 3 * C},
        {"attention_forward", op_att_f, L, 0},
        {"attention_backward", op_att_b, L, 0},
        {"linear_forward proj", op_proj_f, L, 2.0 * N * C * C},
        {"linear_backward proj", op_proj_b, L, 4.0 * N * C * C},
        {"residual_forward", op_res_f, 2 * L, 0},
        {"linear_forward fc", op_fc_f, L, 2.0 * N * C * 4 * C},
        {"linear_backward fc", op_fc_b, L, 4.0 * N * C * 4 * C},
        {"gelu_forward", op_gelu_f, L, 0},
        {"gelu_backward", op_gelu_b, L, 0},
        {"linear_forward fcproj", op_fcp_f, L, 2.0 * N * 4 * C * C},
        {"linear_backward fcproj", op_fcp_b, L, 4.0 * N * 4 * C * C},
        {"matmul head fwd", op_head_f, 1, 2.0 * N * C * V},
        {"matmul head bwd (x2)", op_head_b, 1, 4.0 * N * C * V},
        {"softmax_xent", op_xent, 1, 0},
        {"adamw (all params)", op_adamw, 1, 0},
        {"sumsq (all params)", op_sumsq, 1, 0},
        {"scale (all params)", op_scale, 0, 0},
    };
    double sum_mm = 0, sum_other = 0, step_flops = 0;
    printf("%-24s %10s %9s %10s\n", "op", "median ms", "GFLOP/s", "ms/step");
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        const int big = tab[i].fn == op_adamw || tab[i].fn == op_sumsq || tab[i].fn == op_scale ||
                        tab[i].fn == op_head_f || tab[i].fn == op_head_b;
        const double t = time_op(tab[i].fn, big ? 9 : 41);
        const double per_step = t * tab[i].per_step;
        if (tab[i].flops > 0) {
            sum_mm += per_step;
            step_flops += tab[i].flops * tab[i].per_step;
            printf("%-24s %10.3f %9.1f %10.2f\n", tab[i].name, 1e3 * t, tab[i].flops / t * 1e-9,
                   1e3 * per_step);
        } else {
            sum_other += per_step;
            printf("%-24s %10.3f %9s %10.2f\n", tab[i].name, 1e3 * t, "", 1e3 * per_step);
        }
    }
    printf("\nsum over a step: matmul ops %.1f ms, other ops %.1f ms\n", 1e3 * sum_mm,
           1e3 * sum_other);
    const double step = time_op(train_step, 5);
    printf("whole step, ops back to back: %.1f ms (%.0f tokens/s); matmul FLOPs %.1f G -> "
           "%.1f GFLOP/s = %.0f%% of sgemm 2048^3\n",
           1e3 * step, N / step, step_flops * 1e-9, step_flops / step * 1e-9,
           100.0 * step_flops / step * 1e-9 / peak);
    return 0;
}
