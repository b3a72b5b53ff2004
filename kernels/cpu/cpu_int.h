/* cpu_int.h - private to kernels/cpu: the CPU op functions behind
 * zinc_ops_cpu(), and the small vectorizable math helpers they share.
 * Nothing outside kernels/cpu includes this file. */
#ifndef ZINC_CPU_INT_H
#define ZINC_CPU_INT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "zinc/tensor.h"

/* Below this many elements an op runs on the calling thread: a parallel
 * region costs a few microseconds, more than the work it would split. */
#define CPU_PAR_MIN 32768

/* expf for vector loops (Cephes expf: Cody-Waite range reduction, degree-6
 * polynomial, 2^n built in the exponent bits); max error about 2 ulp. It
 * has no branches or calls, so loops over it vectorize. Domain: results
 * below exp(-87) (1.6e-38) are flushed to 0, inputs above 88 are clamped
 * to exp(88) (no inf); callers only use it where that is harmless. */
static inline float cpu_expf(float x)
{
    const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round(xc * log2 e) by the 1.5 * 2^23 trick (exact for |v| < 2^22). */
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = fmaf(n, -0.693359375f, xc);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    const float y = fmaf(p, r * r, r) + 1.0f;
    const int32_t bits = (int32_t)((uint32_t)((int32_t)n + 127) << 23); /* unsigned: n < -127 for NaN input */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : y * scale;
}

/* tanh through exp: 1 - 2 / (exp(2u) + 1). Absolute error ~1e-7, which is
 * what GELU needs (it only uses 1 + tanh and 1 - tanh^2). */
static inline float cpu_tanhf(float u)
{
    return 1.0f - 2.0f / (cpu_expf(2.0f * u) + 1.0f);
}

#define CPU_GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define CPU_GELU_CUBE 0.044715f

/* GELU, tanh form as GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline float cpu_gelu(float x)
{
    const float u = CPU_GELU_SCALE * (x + CPU_GELU_CUBE * x * x * x);
    return 0.5f * x * (1.0f + cpu_tanhf(u));
}

/* gelu'(x), from the same tanh form. */
static inline float cpu_gelu_grad(float x)
{
    const float x2 = x * x;
    const float u = CPU_GELU_SCALE * (x + CPU_GELU_CUBE * x2 * x);
    const float th = cpu_tanhf(u);
    const float sech2 = 1.0f - th * th;
    return 0.5f * (1.0f + th) +
           0.5f * x * sech2 * CPU_GELU_SCALE * (1.0f + 3.0f * CPU_GELU_CUBE * x2);
}

/* ops_cpu.c: dense algebra, elementwise ops, optimizer. */
void cpu_matmul(float *c, const float *a, const float *b, int m, int n, int k,
                int trans_a, int trans_b, float alpha, float beta);
void cpu_linear_forward(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int C, int OC);
void cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int C, int OC);
/* The same with weight stored (OC, C) (nn.Linear's layout): out = inp @ weight^T + bias;
 * dweight(OC,C) += dout^T @ inp. */
void cpu_linear_t_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
void cpu_linear_t_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                           const float *weight, int N, int C, int OC);
void cpu_gelu_forward(float *out, const float *inp, size_t n);
void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);
void cpu_linear_gelu_forward(float *out, float *pre, const float *inp, const float *weight,
                             const float *bias, int N, int C, int OC);
void cpu_linear_gelu_backward(float *dpre, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *pre, const float *weight, int N,
                              int C, int OC);
void cpu_residual_forward(float *out, const float *a, const float *b, size_t n);
/* adamw_cpu.c */
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
               float beta1, float beta2, float eps, float wd, int t);
void cpu_adamw_mixed(float *master, const void *grad, zinc_dtype gdt, float coef, float *m, float *v, void *out,
                     zinc_dtype odt, size_t n, float lr, float beta1, float beta2, float eps, float wd, int t);
/* The vector code AdamW runs: "avx512", "avx2" or "scalar". */
const char *cpu_adamw_isa(void);
/* Tests: caps the variant at level (0 scalar, 1 AVX2, 2 AVX-512; -1: none); returns the
 * level that then runs. */
int cpu_adamw_force_isa(int level);
double cpu_sumsq(const float *x, size_t n);
/* Sum (square 0) or sum of squares (square 1) in double, fixed order. */
double cpu_sum_impl(const float *x, size_t n, int square);
void cpu_scale(float *x, float s, size_t n);

/* mem_cpu.c */
void cpu_zero(void *p, size_t bytes);
void cpu_copy(void *dst, const void *src, size_t bytes);
void cpu_convert(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
void cpu_add_into(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
void cpu_round_to(float *x, zinc_dtype dt, size_t n);
double cpu_sum(const float *x, size_t n);
/* dst(C) += sum over rows of src(N,C); deterministic for any thread count.
 * The bf16 form sums bitwise as the f32 form sums src widened. */
void cpu_colsum_acc(float *dst, const float *src, int N, int C);
void cpu_colsum_acc_bf16(float *dst, const uint16_t *src, int N, int C);

/* nn_cpu.c: the transformer layers and the loss. */
void cpu_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                           const float *wpe, int B, int T, int C, int v0, int V);
void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout,
                            const int32_t *tokens, const int32_t *pos, int B, int T, int C, int v0, int V);
void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, int N, int C);
void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int N, int C);
/* The weight (and bias) gradients of LayerNorm and RMSNorm for the CPU_NORM_BLK columns
 * from c0: dweight += sum_rows (x - mean) rstd dout, dbias += sum_rows dout, rows in order
 * (bitwise the same for any thread count); mean NULL: 0 (RMSNorm), dbias NULL: none. */
#define CPU_NORM_BLK 64
void cpu_norm_param_grads(float *dweight, float *dbias, const float *dout, const float *inp, const float *mean,
                          const float *rstd, int N, int C, int c0);

/* llama_cpu.c: RMSNorm, rotary embeddings, SwiGLU. */
void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, float eps, int N,
                         int C);
void cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C);
void cpu_rope(float *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
              const float *sin_t, int dir);
void cpu_swiglu_forward(float *out, const float *gu, int N, int F);
void cpu_swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int F);
void cpu_fill_cols(float *x, int N, int ld, int c0, int c1, float v);
/* Largest head size the attention ops take (zinc/ops.h: HS <= 128). */
#define ATT_MAX_HS 128
void cpu_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C,
                           int NH);
void cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *out, const float *lse, int B, int T, int C, int NH);
size_t cpu_attention_scratch_floats(int B, int T, int C, int NH);
/* The same with NKV key/value heads (grouped-query attention; NKV = NH: the above). */
void cpu_attention_gqa_forward(float *out, float *lse, const float *qkv, const int32_t *pos, int B, int T, int NH,
                               int NKV, int HS);
void cpu_attention_gqa_backward(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *out,
                                const float *lse, const int32_t *pos, int B, int T, int NH, int NKV, int HS);
void cpu_softmax_xent(float *losses, float *logits, const int32_t *targets, float dloss,
                      int N, int V);
void cpu_xent_vp_max(float *rowmax, const float *logits, int N, int V);
void cpu_xent_vp_sums(float *sums, const float *logits, const int32_t *targets,
                      const float *rowmax, int N, int V, int v0);
void cpu_xent_vp_finish(float *losses, float *logits, const int32_t *targets,
                        const float *rowmax, const float *sums, float dloss, int N, int V,
                        int v0);

/* gemm_bf16.c: products with bf16 operands and fp32 accumulation.
 * c(m,n) = alpha * op(a) @ op(b) + beta * c, row-major, the shapes and
 * transposes of cpu_matmul (a is (m,k) or, if trans_a, stored (k,m); b is
 * (k,n) or, if trans_b, stored (n,k); ldc = n). a and b are each bf16 or
 * f32 (adt, bdt); an f32 operand is rounded to bf16 (nearest even, as
 * cpu_convert) while packing. Every element is one fp32 chain over its k
 * products in a fixed order: bitwise reproducible for any thread count.
 * c is fp32; beta 0 does not read c. Pointers borrowed. */
void cpu_gemm_bf16(float *c, const void *a, zinc_dtype adt, const void *b, zinc_dtype bdt,
                   int m, int n, int k, int trans_a, int trans_b, float alpha, float beta);
/* The sums s(i, j) = (op(a) @ op(b))(i, j) of a product, handed out in
 * blocks: s[r * ld + q] is element (i0 + r, j0 + q), r < mr <= 8, q < nr <=
 * 48. Each element is in exactly one call; calls run on several threads at
 * once (on disjoint blocks), so an epilogue writes only its block. */
typedef void (*cpu_gemm_epi)(void *ctx, const float *s, int ld, int i0, int j0, int mr, int nr);
/* cpu_gemm_bf16 with the store left to epi (ctx passed through): for
 * outputs that are not fp32 (bias, GELU, rounding to bf16 on the way out). */
void cpu_gemm_bf16_ex(const void *a, zinc_dtype adt, const void *b, zinc_dtype bdt, int m,
                      int n, int k, int trans_a, int trans_b, cpu_gemm_epi epi, void *ctx);
/* 1 when cpu_gemm_bf16 runs its AVX512_BF16 path (vdpbf16ps) on this CPU. */
int cpu_gemm_bf16_native(void);
/* Test hook: on 1, cpu_gemm_bf16 runs its portable C path (and
 * cpu_gemm_bf16_native() returns 0) until called with 0. Not thread-safe:
 * call it between products. */
void cpu_gemm_bf16_force_fallback(int on);

/* lora_cpu.c: both tables' LoRA and dropout ops (bf16: act bf16) */
void cpu_lora_down(int bf16, float *t, const void *inp, int ldi, const float *A, int N, int C, int r);
void cpu_lora_up(int bf16, void *out, int ldo, const float *t, const float *B, float s, int N, int OC, int r);
void cpu_lora_grad_up(int bf16, float *dB, float *dt, const void *dout, int ldo, const float *t, const float *B,
                      float s, int N, int OC, int r);
void cpu_lora_grad_down(int bf16, void *dinp, float *dA, const float *dt, const void *inp, int ldi, const float *A,
                        int N, int C, int r);
void cpu_dropout_forward(int bf16, void *out, const void *inp, size_t n, float p, uint64_t seed);
void cpu_dropout_backward(int bf16, void *dinp, const void *dout, size_t n, float p, uint64_t seed);

#endif
