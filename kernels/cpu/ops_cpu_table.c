/* ops_cpu_table.c - the two CPU op tables: "cpu" (act f32: the fp32 ops of
 * ops_cpu.c / nn_cpu.c / mem_cpu.c as they are) and "cpu-bf16" (act bf16).
 *
 * The bf16 table is one mechanism over the fp32 ops, not a second set of
 * kernels: each op widens its act inputs (and the old value of an act
 * gradient it accumulates into) to fp32 temporaries, runs the fp32 op, and
 * rounds its act outputs to bf16 once. That is the act-bf16 contract of
 * zinc/ops.h word for word, so this table is the reference every act-bf16
 * table is tested against, and CPU training in bf16 keeps its activations
 * in half the memory. The conversions cost time (every act byte is widened
 * and narrowed once per op).
 *
 * The products (linear, linear + GELU, the (out, in) linear) are the exception where the
 * CPU has AVX512_BF16 (cpu_gemm_bf16_native()): they multiply the bf16
 * activations and the fp32 weights (bf16-representable in bf16 training,
 * so rounding them while packing changes nothing) with vdpbf16ps, as the
 * GPU table's tensor cores do: products exact, sums in fp32, in another
 * order than sgemm's. No fp32 temporaries: bias, GELU and the rounding to
 * bf16 of act outputs, and the accumulation of act gradients (dinp =
 * bf16(dinp + delta)), happen in the product's epilogue, on its fp32
 * sums; weight gradients accumulate in fp32. */
#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <omp.h>

#include "zinc/ops.h"
#include "cpu_int.h"

/* ------------------------------------------------------------ act f32 */

static void f32_linear_forward(void *out, const void *inp, const float *weight,
                               const float *bias, int N, int C, int OC)
{
    cpu_linear_forward(out, inp, weight, bias, N, C, OC);
}

static void f32_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                const void *inp, const float *weight, int N, int C, int OC)
{
    cpu_linear_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

static void f32_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                                    const float *bias, int N, int C, int OC)
{
    cpu_linear_gelu_forward(out, pre, inp, weight, bias, N, C, OC);
}

static void f32_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                                     const void *inp, const void *pre, const float *weight,
                                     int N, int C, int OC)
{
    cpu_linear_gelu_backward(dpre, dweight, dbias, dout, inp, pre, weight, N, C, OC);
}

/* out(N,OC) = inp(N,C) @ weight(OC,C)^T + bias */
static void f32_linear_t_forward(void *out, const void *inp, const float *weight, const float *bias, int N, int C,
                                 int OC)
{
    cpu_linear_t_forward(out, inp, weight, bias, N, C, OC);
}

/* dinp(N,C) += dout(N,OC) @ weight(OC,C); dweight(OC,C) += dout^T @ inp; dbias */
static void f32_linear_t_backward(void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                                  const float *weight, int N, int C, int OC)
{
    cpu_linear_t_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

static void f32_embedding_forward(void *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                                  const float *wpe, int B, int T, int C, int v0, int V)
{
    cpu_embedding_forward(out, tokens, pos, wte, wpe, B, T, C, v0, V);
}

static void f32_embedding_backward(float *dwte, float *dwpe, const void *dout,
                                   const int32_t *tokens, const int32_t *pos, int B, int T, int C, int v0, int V)
{
    cpu_embedding_backward(dwte, dwpe, dout, tokens, pos, B, T, C, v0, V);
}

static void f32_layernorm_forward(void *out, float *mean, float *rstd, const void *inp,
                                  const float *weight, const float *bias, int N, int C)
{
    cpu_layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
}

static void f32_layernorm_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                   const void *inp, const float *weight, const float *mean,
                                   const float *rstd, int N, int C)
{
    cpu_layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

static void f32_rmsnorm_forward(void *out, float *rstd, const void *inp, const float *weight, float eps, int N,
                                int C)
{
    cpu_rmsnorm_forward(out, rstd, inp, weight, eps, N, C);
}

static void f32_rmsnorm_backward(void *dinp, float *dweight, const void *dout, const void *inp,
                                 const float *weight, const float *rstd, int N, int C)
{
    cpu_rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C);
}

static void f32_rope(void *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
                     const float *sin_t, int dir)
{
    cpu_rope(x, N, stride, n_heads, HS, T, pos, cos_t, sin_t, dir);
}

static void f32_swiglu_forward(void *out, const void *gu, int N, int F) { cpu_swiglu_forward(out, gu, N, F); }

static void f32_fill_cols(void *x, int N, int ld, int c0, int c1, float v) { cpu_fill_cols(x, N, ld, c0, c1, v); }

static void f32_swiglu_backward(void *dgu, const void *dout, const void *gu, int N, int F)
{
    cpu_swiglu_backward(dgu, dout, gu, N, F);
}

static void f32_gelu_forward(void *out, const void *inp, size_t n)
{
    cpu_gelu_forward(out, inp, n);
}

static void f32_gelu_backward(void *dinp, const void *inp, const void *dout, size_t n)
{
    cpu_gelu_backward(dinp, inp, dout, n);
}

static void f32_attention_forward(void *out, float *lse, const void *qkv, int B, int T, int C,
                                  int NH)
{
    cpu_attention_forward(out, lse, qkv, B, T, C, NH);
}

static void f32_attention_backward(void *dqkv, float *scratch, const void *dout,
                                   const void *qkv, const void *out, const float *lse, int B,
                                   int T, int C, int NH)
{
    cpu_attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
}

static void f32_attention_gqa_forward(void *out, float *lse, const void *qkv, const int32_t *pos, int B, int T, int NH,
                                      int NKV, int HS)
{
    cpu_attention_gqa_forward(out, lse, qkv, pos, B, T, NH, NKV, HS);
}

static void f32_attention_gqa_backward(void *dqkv, float *scratch, const void *dout, const void *qkv, const void *out,
                                       const float *lse, const int32_t *pos, int B, int T, int NH, int NKV, int HS)
{
    cpu_attention_gqa_backward(dqkv, scratch, dout, qkv, out, lse, pos, B, T, NH, NKV, HS);
}

static void f32_residual_forward(void *out, const void *a, const void *b, size_t n)
{
    cpu_residual_forward(out, a, b, n);
}

static void f32_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss,
                             int N, int V)
{
    cpu_softmax_xent(losses, logits, targets, dloss, N, V);
}

static void f32_xent_vp_max(float *rowmax, const void *logits, int N, int V)
{
    cpu_xent_vp_max(rowmax, logits, N, V);
}

static void f32_xent_vp_sums(float *sums, const void *logits, const int32_t *targets,
                             const float *rowmax, int N, int V, int v0)
{
    cpu_xent_vp_sums(sums, logits, targets, rowmax, N, V, v0);
}

static void f32_xent_vp_finish(float *losses, void *logits, const int32_t *targets,
                               const float *rowmax, const float *sums, float dloss, int N,
                               int V, int v0)
{
    cpu_xent_vp_finish(losses, logits, targets, rowmax, sums, dloss, N, V, v0);
}

/* ------------------------------------------------------------ act bf16 */

static atomic_int bf16_failed; /* an op could not allocate its temporaries */

zinc_status zinc_ops_cpu_last_status(void)
{
    if (!atomic_exchange(&bf16_failed, 0))
        return ZINC_OK;
    return zinc_error(ZINC_ERR_NOMEM, "cpu-bf16 op: no memory for the fp32 temporaries of "
                      "its activations");
}

/* The fp32 temporaries of one op: up to 5 act tensors, in slots that each
 * thread keeps and grows (never shrinks) for the life of the process, as
 * the GPU's scratch: a fresh allocation per op would pay page faults on
 * every call (the logits of a big vocabulary are tens of MB). */
enum { WIDEN_SLOTS = 5 };
static _Thread_local struct {
    float *p;
    size_t cap;
} widen_pool[WIDEN_SLOTS];

typedef struct widen {
    int n; /* slots taken */
} widen;

/* Slot w->n as a temporary of n floats holding src widened (src NULL:
 * contents undefined). Returns NULL, with the failure recorded, when out of
 * memory. */
static float *widen_get(widen *w, const void *src, size_t n)
{
    assert(w->n < WIDEN_SLOTS);
    const int k = w->n;
    if (widen_pool[k].cap < n || !widen_pool[k].p) {
        free(widen_pool[k].p);
        widen_pool[k].p = aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) / 64 * 64);
        widen_pool[k].cap = widen_pool[k].p ? n : 0;
        if (!widen_pool[k].p) {
            atomic_store(&bf16_failed, 1);
            return NULL;
        }
    }
    w->n++;
    float *t = widen_pool[k].p;
    if (src)
        cpu_convert(t, ZINC_DTYPE_F32, src, ZINC_DTYPE_BF16, n);
    return t;
}

static void widen_free(widen *w)
{
    w->n = 0; /* the slots stay with the thread */
}

/* dst (bf16) = src rounded, n elements. */
static void narrow(void *dst, const float *src, size_t n)
{
    cpu_convert(dst, ZINC_DTYPE_BF16, src, ZINC_DTYPE_F32, n);
}

/* The temporaries are all taken before any op runs: a failure leaves the
 * outputs untouched. TAKE jumps to done on failure. */
#define TAKE(var, src, n)                                                                   \
    do {                                                                                    \
        if (!((var) = widen_get(&w, (src), (n))))                                           \
            goto done;                                                                      \
    } while (0)

/* ---------------------------- act bf16: products on AVX512_BF16 */

/* What an epilogue writes: rows of ld elements of out (bf16), and the
 * fp32 bias or the bf16 pre (by column / by element) it reads. */
typedef struct b16_epi {
    uint16_t *out;
    uint16_t *pre;
    const float *bias;
    const uint16_t *aux;
    int ld;
} b16_epi;

/* out = bf16(s + bias) */
static void epi_store(void *ctx, const float *s, int ld, int i0, int j0, int mr, int nr)
{
    const b16_epi *e = ctx;
    for (int i = 0; i < mr; i++) {
        const float *restrict si = s + (size_t)i * ld;
        uint16_t *restrict o = e->out + (size_t)(i0 + i) * e->ld + j0;
        if (e->bias) {
            const float *restrict b = e->bias + j0;
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                o[j] = zinc_f32_to_bf16(si[j] + b[j]);
        } else {
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                o[j] = zinc_f32_to_bf16(si[j]);
        }
    }
}

/* p = s + bias; pre = bf16(p) (if kept); out = bf16(gelu(p)) */
static void epi_gelu(void *ctx, const float *s, int ld, int i0, int j0, int mr, int nr)
{
    const b16_epi *e = ctx;
    for (int i = 0; i < mr; i++) {
        const float *restrict si = s + (size_t)i * ld;
        const size_t off = (size_t)(i0 + i) * e->ld + j0;
        uint16_t *restrict o = e->out + off;
        float p[48]; /* nr <= 48 (cpu_gemm_epi) */
        if (e->bias) {
            const float *restrict b = e->bias + j0;
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                p[j] = si[j] + b[j];
        } else {
            memcpy(p, si, (size_t)nr * sizeof *p);
        }
        if (e->pre) {
            uint16_t *restrict q = e->pre + off;
            #pragma omp simd
            for (int j = 0; j < nr; j++)
                q[j] = zinc_f32_to_bf16(p[j]);
        }
        #pragma omp simd
        for (int j = 0; j < nr; j++)
            o[j] = zinc_f32_to_bf16(cpu_gelu(p[j]));
    }
}

/* out = bf16(out + s): an act gradient accumulating */
static void epi_acc(void *ctx, const float *s, int ld, int i0, int j0, int mr, int nr)
{
    const b16_epi *e = ctx;
    for (int i = 0; i < mr; i++) {
        const float *restrict si = s + (size_t)i * ld;
        uint16_t *restrict o = e->out + (size_t)(i0 + i) * e->ld + j0;
        #pragma omp simd
        for (int j = 0; j < nr; j++)
            o[j] = zinc_f32_to_bf16(zinc_bf16_to_f32(o[j]) + si[j]);
    }
}

/* out = bf16(s * gelu'(aux)): dpre, written */
static void epi_dgelu(void *ctx, const float *s, int ld, int i0, int j0, int mr, int nr)
{
    const b16_epi *e = ctx;
    for (int i = 0; i < mr; i++) {
        const float *restrict si = s + (size_t)i * ld;
        const size_t off = (size_t)(i0 + i) * e->ld + j0;
        uint16_t *restrict o = e->out + off;
        const uint16_t *restrict pre = e->aux + off;
        #pragma omp simd
        for (int j = 0; j < nr; j++)
            o[j] = zinc_f32_to_bf16(si[j] * cpu_gelu_grad(zinc_bf16_to_f32(pre[j])));
    }
}

#define BF ZINC_DTYPE_BF16
#define F32 ZINC_DTYPE_F32

/* out(N,OC) = bf16(inp(N,C) @ weight(C,OC) + bias) */
static void nat_linear_forward(void *out, const void *inp, const float *weight,
                               const float *bias, int N, int C, int OC)
{
    b16_epi e = {.out = out, .bias = bias, .ld = OC};
    cpu_gemm_bf16_ex(inp, BF, weight, F32, N, OC, C, 0, 0, epi_store, &e);
}

/* dinp(N,C) = bf16(dinp + dout(N,OC) @ weight(C,OC)^T); dweight += inp^T @ dout; dbias */
static void nat_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                const void *inp, const float *weight, int N, int C, int OC)
{
    if (dinp) {
        b16_epi e = {.out = dinp, .ld = C};
        cpu_gemm_bf16_ex(dout, BF, weight, F32, N, C, OC, 0, 1, epi_acc, &e);
    }
    if (dweight) /* NULL: a frozen weight */
        cpu_gemm_bf16(dweight, inp, BF, dout, BF, C, OC, N, 1, 0, 1.0f, 1.0f);
    if (dbias)
        cpu_colsum_acc_bf16(dbias, dout, N, OC);
}

/* pre = inp @ weight + bias; out = gelu(pre); both rounded to bf16 once */
static void nat_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                                    const float *bias, int N, int C, int OC)
{
    b16_epi e = {.out = out, .pre = pre, .bias = bias, .ld = OC};
    cpu_gemm_bf16_ex(inp, BF, weight, F32, N, OC, C, 0, 0, epi_gelu, &e);
}

/* dpre(N,C) = bf16((dout(N,OC) @ weight(C,OC)^T) * gelu'(pre)); dweight, dbias accumulate */
static void nat_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                                     const void *inp, const void *pre, const float *weight,
                                     int N, int C, int OC)
{
    b16_epi e = {.out = dpre, .aux = pre, .ld = C};
    cpu_gemm_bf16_ex(dout, BF, weight, F32, N, C, OC, 0, 1, epi_dgelu, &e);
    if (dweight) /* NULL: a frozen weight */
        cpu_gemm_bf16(dweight, inp, BF, dout, BF, C, OC, N, 1, 0, 1.0f, 1.0f);
    if (dbias)
        cpu_colsum_acc_bf16(dbias, dout, N, OC);
}

/* out(N,OC) = bf16(inp(N,C) @ weight(OC,C)^T + bias) */
static void nat_linear_t_forward(void *out, const void *inp, const float *weight, const float *bias, int N, int C,
                                 int OC)
{
    b16_epi e = {.out = out, .bias = bias, .ld = OC};
    cpu_gemm_bf16_ex(inp, BF, weight, F32, N, OC, C, 0, 1, epi_store, &e);
}

/* dinp(N,C) = bf16(dinp + dout(N,OC) @ weight(OC,C)); dweight += dout^T @ inp; dbias */
static void nat_linear_t_backward(void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                                  const float *weight, int N, int C, int OC)
{
    if (dinp) {
        b16_epi e = {.out = dinp, .ld = C};
        cpu_gemm_bf16_ex(dout, BF, weight, F32, N, C, OC, 0, 0, epi_acc, &e);
    }
    if (dweight) /* NULL: a frozen weight */
        cpu_gemm_bf16(dweight, dout, BF, inp, BF, OC, C, N, 1, 0, 1.0f, 1.0f);
    if (dbias)
        cpu_colsum_acc_bf16(dbias, dout, N, OC);
}

#undef BF
#undef F32

/* ---------------------------- act bf16: everything else, and the products
 * without AVX512_BF16 */

static void b16_linear_forward(void *out, const void *inp, const float *weight,
                               const float *bias, int N, int C, int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    widen w = {0};
    float *o, *x;
    TAKE(o, NULL, (size_t)N * OC);
    TAKE(x, inp, (size_t)N * C);
    cpu_linear_forward(o, x, weight, bias, N, C, OC);
    narrow(out, o, (size_t)N * OC);
done:
    widen_free(&w);
}

static void b16_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                const void *inp, const float *weight, int N, int C, int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
        return;
    }
    widen w = {0};
    float *di = NULL, *dy, *x;
    if (dinp)
        TAKE(di, dinp, (size_t)N * C);
    TAKE(dy, dout, (size_t)N * OC);
    TAKE(x, inp, (size_t)N * C);
    cpu_linear_backward(di, dweight, dbias, dy, x, weight, N, C, OC);
    if (dinp)
        narrow(dinp, di, (size_t)N * C);
done:
    widen_free(&w);
}

static void b16_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                                    const float *bias, int N, int C, int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_gelu_forward(out, pre, inp, weight, bias, N, C, OC);
        return;
    }
    widen w = {0};
    const size_t n = (size_t)N * OC;
    float *o, *p, *x;
    TAKE(o, NULL, n);
    TAKE(p, NULL, n);
    TAKE(x, inp, (size_t)N * C);
    cpu_linear_gelu_forward(o, p, x, weight, bias, N, C, OC);
    narrow(out, o, n);
    if (pre)
        narrow(pre, p, n);
done:
    widen_free(&w);
}

static void b16_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                                     const void *inp, const void *pre, const float *weight,
                                     int N, int C, int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_gelu_backward(dpre, dweight, dbias, dout, inp, pre, weight, N, C, OC);
        return;
    }
    widen w = {0};
    const size_t n = (size_t)N * C;
    float *dp, *dy, *x, *p;
    TAKE(dp, NULL, n);
    TAKE(dy, dout, (size_t)N * OC);
    TAKE(x, inp, n);
    TAKE(p, pre, n);
    cpu_linear_gelu_backward(dp, dweight, dbias, dy, x, p, weight, N, C, OC);
    narrow(dpre, dp, n);
done:
    widen_free(&w);
}

static void b16_linear_t_forward(void *out, const void *inp, const float *weight, const float *bias, int N, int C,
                                 int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_t_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    widen w = {0};
    float *o, *x;
    TAKE(o, NULL, (size_t)N * OC);
    TAKE(x, inp, (size_t)N * C);
    cpu_linear_t_forward(o, x, weight, bias, N, C, OC);
    narrow(out, o, (size_t)N * OC);
done:
    widen_free(&w);
}

static void b16_linear_t_backward(void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                                  const float *weight, int N, int C, int OC)
{
    if (cpu_gemm_bf16_native()) {
        nat_linear_t_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
        return;
    }
    widen w = {0};
    float *di = NULL, *dy, *x;
    if (dinp)
        TAKE(di, dinp, (size_t)N * C);
    TAKE(dy, dout, (size_t)N * OC);
    TAKE(x, inp, (size_t)N * C);
    cpu_linear_t_backward(di, dweight, dbias, dy, x, weight, N, C, OC);
    if (dinp)
        narrow(dinp, di, (size_t)N * C);
done:
    widen_free(&w);
}

static void b16_embedding_forward(void *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                                  const float *wpe, int B, int T, int C, int v0, int V)
{
    widen w = {0};
    const size_t n = (size_t)B * T * C;
    float *o;
    TAKE(o, NULL, n);
    cpu_embedding_forward(o, tokens, pos, wte, wpe, B, T, C, v0, V);
    narrow(out, o, n);
done:
    widen_free(&w);
}

static void b16_embedding_backward(float *dwte, float *dwpe, const void *dout,
                                   const int32_t *tokens, const int32_t *pos, int B, int T, int C, int v0, int V)
{
    widen w = {0};
    float *dy;
    TAKE(dy, dout, (size_t)B * T * C);
    cpu_embedding_backward(dwte, dwpe, dy, tokens, pos, B, T, C, v0, V);
done:
    widen_free(&w);
}

static void b16_layernorm_forward(void *out, float *mean, float *rstd, const void *inp,
                                  const float *weight, const float *bias, int N, int C)
{
    widen w = {0};
    const size_t n = (size_t)N * C;
    float *o, *x;
    TAKE(o, NULL, n);
    TAKE(x, inp, n);
    cpu_layernorm_forward(o, mean, rstd, x, weight, bias, N, C);
    narrow(out, o, n);
done:
    widen_free(&w);
}

static void b16_layernorm_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                   const void *inp, const float *weight, const float *mean,
                                   const float *rstd, int N, int C)
{
    widen w = {0};
    const size_t n = (size_t)N * C;
    float *di, *dy, *x;
    TAKE(di, dinp, n);
    TAKE(dy, dout, n);
    TAKE(x, inp, n);
    cpu_layernorm_backward(di, dweight, dbias, dy, x, weight, mean, rstd, N, C);
    narrow(dinp, di, n);
done:
    widen_free(&w);
}

static void b16_rmsnorm_forward(void *out, float *rstd, const void *inp, const float *weight, float eps, int N,
                                int C)
{
    widen w = {0};
    const size_t n = (size_t)N * C;
    float *o, *x;
    TAKE(o, NULL, n);
    TAKE(x, inp, n);
    cpu_rmsnorm_forward(o, rstd, x, weight, eps, N, C);
    narrow(out, o, n);
done:
    widen_free(&w);
}

static void b16_rmsnorm_backward(void *dinp, float *dweight, const void *dout, const void *inp,
                                 const float *weight, const float *rstd, int N, int C)
{
    widen w = {0};
    const size_t n = (size_t)N * C;
    float *di, *dy, *x;
    TAKE(di, dinp, n);
    TAKE(dy, dout, n);
    TAKE(x, inp, n);
    cpu_rmsnorm_backward(di, dweight, dy, x, weight, rstd, N, C);
    narrow(dinp, di, n);
done:
    widen_free(&w);
}

/* the rows' span only (x may be the k part of a qkv row: a whole last stride would run
 * past the tensor); the elements between the heads come back unchanged */
static void b16_rope(void *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
                     const float *sin_t, int dir)
{
    if (N <= 0) return;
    widen w = {0};
    const size_t n = (size_t)(N - 1) * stride + (size_t)n_heads * HS;
    float *t;
    TAKE(t, x, n);
    cpu_rope(t, N, stride, n_heads, HS, T, pos, cos_t, sin_t, dir);
    narrow(x, t, n);
done:
    widen_free(&w);
}

static void b16_fill_cols(void *x, int N, int ld, int c0, int c1, float v)
{
    assert(x && N >= 0 && ld > 0 && c0 >= 0 && c0 <= c1 && c1 <= ld);
    const uint16_t h = zinc_f32_to_bf16(v);
    uint16_t *p = x;
    for (int r = 0; r < N; r++)
        for (int c = c0; c < c1; c++) p[(size_t)r * ld + c] = h;
}

static void b16_swiglu_forward(void *out, const void *gu, int N, int F)
{
    widen w = {0};
    float *o, *g;
    TAKE(o, NULL, (size_t)N * F);
    TAKE(g, gu, (size_t)N * 2 * F);
    cpu_swiglu_forward(o, g, N, F);
    narrow(out, o, (size_t)N * F);
done:
    widen_free(&w);
}

static void b16_swiglu_backward(void *dgu, const void *dout, const void *gu, int N, int F)
{
    widen w = {0};
    float *dg, *dy, *g;
    TAKE(dg, dgu, (size_t)N * 2 * F);
    TAKE(dy, dout, (size_t)N * F);
    TAKE(g, gu, (size_t)N * 2 * F);
    cpu_swiglu_backward(dg, dy, g, N, F);
    narrow(dgu, dg, (size_t)N * 2 * F);
done:
    widen_free(&w);
}

static void b16_gelu_forward(void *out, const void *inp, size_t n)
{
    widen w = {0};
    float *o, *x;
    TAKE(o, NULL, n);
    TAKE(x, inp, n);
    cpu_gelu_forward(o, x, n);
    narrow(out, o, n);
done:
    widen_free(&w);
}

static void b16_gelu_backward(void *dinp, const void *inp, const void *dout, size_t n)
{
    widen w = {0};
    float *di, *x, *dy;
    TAKE(di, dinp, n);
    TAKE(x, inp, n);
    TAKE(dy, dout, n);
    cpu_gelu_backward(di, x, dy, n);
    narrow(dinp, di, n);
done:
    widen_free(&w);
}

static void b16_attention_gqa_forward(void *out, float *lse, const void *qkv, const int32_t *pos, int B, int T, int NH,
                                      int NKV, int HS)
{
    widen w = {0};
    const size_t rows = (size_t)B * T, n = rows * NH * HS, nq = rows * (size_t)(NH + 2 * NKV) * HS;
    float *o, *x;
    TAKE(o, NULL, n);
    TAKE(x, qkv, nq);
    cpu_attention_gqa_forward(o, lse, x, pos, B, T, NH, NKV, HS);
    narrow(out, o, n);
done:
    widen_free(&w);
}

static void b16_attention_gqa_backward(void *dqkv, float *scratch, const void *dout, const void *qkv, const void *out,
                                       const float *lse, const int32_t *pos, int B, int T, int NH, int NKV, int HS)
{
    widen w = {0};
    const size_t rows = (size_t)B * T, n = rows * NH * HS, nq = rows * (size_t)(NH + 2 * NKV) * HS;
    float *dx, *dy, *x, *o;
    TAKE(dx, dqkv, nq);
    TAKE(dy, dout, n);
    TAKE(x, qkv, nq);
    TAKE(o, out, n);
    cpu_attention_gqa_backward(dx, scratch, dy, x, o, lse, pos, B, T, NH, NKV, HS);
    narrow(dqkv, dx, nq);
done:
    widen_free(&w);
}

static void b16_attention_forward(void *out, float *lse, const void *qkv, int B, int T, int C, int NH)
{
    b16_attention_gqa_forward(out, lse, qkv, NULL, B, T, NH, NH, C / NH);
}

static void b16_attention_backward(void *dqkv, float *scratch, const void *dout, const void *qkv, const void *out,
                                   const float *lse, int B, int T, int C, int NH)
{
    b16_attention_gqa_backward(dqkv, scratch, dout, qkv, out, lse, NULL, B, T, NH, NH, C / NH);
}

static void b16_residual_forward(void *out, const void *a, const void *b, size_t n)
{
    widen w = {0};
    float *x, *y;
    TAKE(x, a, n);
    TAKE(y, b, n);
    cpu_residual_forward(x, x, y, n);
    narrow(out, x, n);
done:
    widen_free(&w);
}

/* The softmax + cross-entropy ops, row by row: each thread widens a row of
 * logits into its part of one temporary (nth rows, not N: the logits of a
 * big vocabulary are tens of MB, and a row stays in L2 from widening to
 * narrowing), runs the fp32 op on that one row and, for the ops that write
 * the logits, narrows it back. Rows are independent in the fp32 ops, so
 * this is bitwise their result on the whole widened tensor. */
typedef struct xent_args {
    float *out; /* losses (softmax_xent, finish), rowmax (max) or sums (sums) */
    const int32_t *targets;
    const float *rowmax, *sums;
    float dloss;
    int v0;
} xent_args;

/* The fp32 op on row i, widened in x (V floats). */
typedef void (*xent_row)(const xent_args *a, float *x, int i, int V);

static void row_softmax_xent(const xent_args *a, float *x, int i, int V)
{
    cpu_softmax_xent(a->out + i, x, a->targets + i, a->dloss, 1, V);
}

static void row_xent_vp_max(const xent_args *a, float *x, int i, int V)
{
    cpu_xent_vp_max(a->out + i, x, 1, V);
}

static void row_xent_vp_sums(const xent_args *a, float *x, int i, int V)
{
    cpu_xent_vp_sums(a->out + 2 * (size_t)i, x, a->targets + i, a->rowmax + i, 1, V, a->v0);
}

static void row_xent_vp_finish(const xent_args *a, float *x, int i, int V)
{
    cpu_xent_vp_finish(a->out + i, x, a->targets + i, a->rowmax + i, a->sums + 2 * (size_t)i,
                       a->dloss, 1, V, a->v0);
}

/* Runs row on the N rows of logits (N,V) bf16; dst: where the rows go back
 * (logits itself), or NULL for the ops that only read them. */
static void b16_xent_rows(const void *logits, void *dst, int N, int V, xent_row row,
                          const xent_args *a)
{
    widen w = {0};
    const int nth = (size_t)N * V >= CPU_PAR_MIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
    float *x;
    TAKE(x, NULL, (size_t)nth * V);
    #pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1)
    for (int i = 0; i < N; i++) {
        const size_t off = (size_t)i * V;
        float *xr = x + (size_t)omp_get_thread_num() * V;
        cpu_convert(xr, ZINC_DTYPE_F32, (const uint16_t *)logits + off, ZINC_DTYPE_BF16,
                    (size_t)V);
        row(a, xr, i, V);
        if (dst)
            narrow((uint16_t *)dst + off, xr, (size_t)V);
    }
done:
    widen_free(&w);
}

static void b16_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss,
                             int N, int V)
{
    const xent_args a = {.out = losses, .targets = targets, .dloss = dloss};
    b16_xent_rows(logits, logits, N, V, row_softmax_xent, &a);
}

static void b16_xent_vp_max(float *rowmax, const void *logits, int N, int V)
{
    const xent_args a = {.out = rowmax};
    b16_xent_rows(logits, NULL, N, V, row_xent_vp_max, &a);
}

static void b16_xent_vp_sums(float *sums, const void *logits, const int32_t *targets,
                             const float *rowmax, int N, int V, int v0)
{
    const xent_args a = {.out = sums, .targets = targets, .rowmax = rowmax, .v0 = v0};
    b16_xent_rows(logits, NULL, N, V, row_xent_vp_sums, &a);
}

static void b16_xent_vp_finish(float *losses, void *logits, const int32_t *targets,
                               const float *rowmax, const float *sums, float dloss, int N,
                               int V, int v0)
{
    const xent_args a = {.out = losses, .targets = targets, .rowmax = rowmax, .sums = sums,
                         .dloss = dloss, .v0 = v0};
    b16_xent_rows(logits, logits, N, V, row_xent_vp_finish, &a);
}

#undef TAKE

/* ------------------------------------------------------------ LoRA (both tables) */

#define LORA_OPS(p, bf)                                                                                    \
    static void p##_lora_down(float *t, const void *inp, int ldi, const float *A, int N, int C, int r)      \
    {                                                                                                        \
        cpu_lora_down(bf, t, inp, ldi, A, N, C, r);                                                          \
    }                                                                                                        \
    static void p##_lora_up(void *out, int ldo, const float *t, const float *B, float s, int N, int OC, int r) \
    {                                                                                                        \
        cpu_lora_up(bf, out, ldo, t, B, s, N, OC, r);                                                        \
    }                                                                                                        \
    static void p##_lora_grad_up(float *dB, float *dt, const void *dout, int ldo, const float *t,            \
                                 const float *B, float s, int N, int OC, int r)                             \
    {                                                                                                        \
        cpu_lora_grad_up(bf, dB, dt, dout, ldo, t, B, s, N, OC, r);                                          \
    }                                                                                                        \
    static void p##_lora_grad_down(void *dinp, float *dA, const float *dt, const void *inp, int ldi,         \
                                   const float *A, int N, int C, int r)                                     \
    {                                                                                                        \
        cpu_lora_grad_down(bf, dinp, dA, dt, inp, ldi, A, N, C, r);                                          \
    }                                                                                                        \
    static void p##_dropout_forward(void *out, const void *inp, size_t n, float q, uint64_t seed)          \
    {                                                                                                        \
        cpu_dropout_forward(bf, out, inp, n, q, seed);                                                       \
    }                                                                                                        \
    static void p##_dropout_backward(void *dinp, const void *dout, size_t n, float q, uint64_t seed)       \
    {                                                                                                        \
        cpu_dropout_backward(bf, dinp, dout, n, q, seed);                                                    \
    }
LORA_OPS(f32, 0)
LORA_OPS(b16, 1)
#undef LORA_OPS

/* ------------------------------------------------------------ tables */

#define CPU_COMMON_OPS                                                                      \
    .matmul = cpu_matmul, .attention_scratch_floats = cpu_attention_scratch_floats,        \
    .adamw = cpu_adamw, .adamw_mixed = cpu_adamw_mixed, .sumsq = cpu_sumsq, .scale = cpu_scale, .zero = cpu_zero,           \
    .copy = cpu_copy, .convert = cpu_convert, .add_into = cpu_add_into,                     \
    .round_to = cpu_round_to, .sum = cpu_sum

#define CPU_ACT_OPS(p)                                                                      \
    .linear_forward = p##_linear_forward, .linear_backward = p##_linear_backward,           \
    .linear_gelu_forward = p##_linear_gelu_forward,                                         \
    .linear_gelu_backward = p##_linear_gelu_backward, .linear_t_forward = p##_linear_t_forward, .linear_t_backward = p##_linear_t_backward,                   \
    .embedding_forward = p##_embedding_forward,                                             \
    .embedding_backward = p##_embedding_backward,                                           \
    .layernorm_forward = p##_layernorm_forward,                                             \
    .layernorm_backward = p##_layernorm_backward, .gelu_forward = p##_gelu_forward,         \
    .rmsnorm_forward = p##_rmsnorm_forward, .rmsnorm_backward = p##_rmsnorm_backward,       \
    .rope = p##_rope, .swiglu_forward = p##_swiglu_forward,                                 \
    .swiglu_backward = p##_swiglu_backward,                                                 \
    .attention_gqa_forward = p##_attention_gqa_forward, .fill_cols = p##_fill_cols,          \
    .attention_gqa_backward = p##_attention_gqa_backward,                                   \
    .gelu_backward = p##_gelu_backward, .attention_forward = p##_attention_forward,         \
    .attention_backward = p##_attention_backward,                                           \
    .residual_forward = p##_residual_forward, .softmax_xent = p##_softmax_xent,            \
    .xent_vp_max = p##_xent_vp_max, .xent_vp_sums = p##_xent_vp_sums,                      \
    .xent_vp_finish = p##_xent_vp_finish, .lora_down = p##_lora_down, .lora_up = p##_lora_up,  \
    .lora_grad_up = p##_lora_grad_up, .lora_grad_down = p##_lora_grad_down,                   \
    .dropout_forward = p##_dropout_forward,                                                    \
    .dropout_backward = p##_dropout_backward

static const zinc_ops cpu_ops = {
    .name = "cpu", .act = ZINC_DTYPE_F32, CPU_ACT_OPS(f32), CPU_COMMON_OPS,
};

static const zinc_ops cpu_ops_bf16 = {
    .name = "cpu-bf16", .act = ZINC_DTYPE_BF16, CPU_ACT_OPS(b16), CPU_COMMON_OPS,
};

const zinc_ops *zinc_ops_cpu(void)
{
    return &cpu_ops;
}

const zinc_ops *zinc_ops_cpu_bf16(void)
{
    return &cpu_ops_bf16;
}
